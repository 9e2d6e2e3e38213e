//! `[[listener]]`: inbound addresses. Checked: the address parses and is
//! not bound twice, TLS has a certificate, the bound application exists,
//! PROXY protocol has trusted peers, and no listener accepts mail from
//! clients it cannot identify or lets anyone send as an application (an
//! open relay). At least one listener must exist.

use super::Ctx;
use crate::config::load::{KeyPath, Located};
use crate::config::raw::{Application, ListenerAuth, ListenerTls};
use crate::config::values::Cidr;
use crate::config::{Config, Listener};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Every listener into `cfg.listeners`, in file order; `has_tls`: a
/// `[tls]` section exists.
pub(super) fn listeners(
    cx: &mut Ctx<'_, '_>,
    cfg: &mut Config,
    listeners: &[Located<Listener>],
    has_tls: bool,
    raw_apps: &[(String, Located<Application>)],
) {
    // By path, not position: a listener left out for its own errors
    // (a bad address) keeps the others' numbers.
    let mut bound: HashMap<SocketAddr, &KeyPath> = HashMap::new();
    for l in listeners {
        let r = &l.value;
        let p = &l.path;
        let address = r.address;
        if address.port() == 0 {
            // Port 0: the OS picks a free port for each (tests do this).
        } else if let Some(prev) = bound.insert(address, p) {
            cx.err(
                l.file,
                &p.clone().key("address"),
                format!("address {address} is already used by {prev}"),
            );
        }
        let tls = r.tls;
        if tls != ListenerTls::None && !has_tls {
            cx.err(
                l.file,
                &p.clone().key("tls"),
                "TLS on a listener needs a [tls] section with certificate and private_key",
            );
        }
        let auth = r.auth;
        if let Some(a) = &r.application
            && !cfg.applications.contains_key(a)
            && !raw_apps.iter().any(|(n, _)| n == a)
        {
            cx.err_ref(
                "application",
                a,
                l.file,
                &p.clone().key("application"),
                format!("listener {address} refers to application {a:?}, which is not defined"),
            );
        }
        if auth == ListenerAuth::Required && !cfg.has_auth_users() {
            cx.err(
                l.file,
                &p.clone().key("auth"),
                "auth = \"required\" but no application has an auth_user: nobody could send",
            );
        }
        let proxy_protocol = r.proxy_protocol;
        if proxy_protocol && r.proxy_trusted.is_empty() {
            cx.err(
                l.file,
                &p.clone().key("proxy_trusted"),
                "proxy_protocol = true needs proxy_trusted: the load balancers allowed to send the header (every other peer is refused)",
            );
        }
        if !proxy_protocol && !r.proxy_trusted.is_empty() {
            cx.warn(
                l.file,
                &p.clone().key("proxy_trusted"),
                "has no effect without proxy_protocol = true",
            );
        }
        if auth == ListenerAuth::None && r.application.is_none() {
            // Behind a proxy, clients may come from anywhere. Applications
            // left out for their own errors count too: this error would
            // only cascade from theirs.
            let can_match = cfg
                .ip_index
                .iter()
                .any(|(c, _)| proxy_protocol || listener_can_see(address.ip(), c))
                || raw_apps.iter().any(|(_, a)| {
                    a.value
                        .client_ips
                        .iter()
                        .any(|c| proxy_protocol || listener_can_see(address.ip(), c))
                })
                || cx.broken.iter().any(|(k, _)| *k == "application");
            if !can_match {
                cx.err(
                    l.file,
                    &p.clone().key("auth"),
                    format!("listener {address} has auth = \"none\", no application binding and no application client_ips it could match: it would accept mail from clients it cannot identify; bind an application, allow AUTH or add client_ips"),
                );
            }
        }
        if r.allow_plaintext_auth && auth == ListenerAuth::None {
            cx.warn(
                l.file,
                &p.clone().key("allow_plaintext_auth"),
                "has no effect with auth = \"none\"",
            );
        }
        let bind_net: Cidr = address
            .ip()
            .to_string()
            .parse()
            .unwrap_or_else(|_| "0.0.0.0/0".parse().expect("valid"));
        let bound_open = r.application.is_some() && auth != ListenerAuth::Required;
        if bound_open && (address.ip().is_unspecified() || !bind_net.is_private()) {
            cx.err(
                l.file,
                &p.clone().key("application"),
                format!("listener {address} binds application {:?} without requiring AUTH on a public or wildcard address: anyone who reaches it could send as the application (an open relay); bind a private or loopback address, require AUTH, or identify clients by client_ips instead", r.application.as_deref().unwrap_or_default()),
            );
        } else if bound_open && !address.ip().is_loopback() {
            cx.warn(
                l.file,
                &p.clone().key("application"),
                format!("every client that reaches {address} without AUTH sends as this application; restrict access to the port"),
            );
        }
        let mut listener = r.clone();
        if listener.name.is_empty() {
            listener.name = address.to_string();
        }
        cfg.listeners.push(listener);
    }

    if listeners.is_empty() && !cx.broken.iter().any(|(k, _)| *k == "listener") {
        cx.err(
            0,
            &KeyPath::new(["listener"]),
            "no [[listener]] is configured: the relay would accept no mail",
        );
    }
}

/// Whether clients from `net` could connect to a listener bound to `bind`.
fn listener_can_see(bind: IpAddr, net: &Cidr) -> bool {
    if bind.is_unspecified() {
        // [::] usually accepts IPv4 too (dual stack); 0.0.0.0 only IPv4.
        return bind.is_ipv6() || net.addr().is_ipv4();
    }
    if bind.is_loopback() {
        return net.addr().is_loopback() || net.contains(bind);
    }
    !net.is_loopback() && net.addr().is_ipv4() == bind.is_ipv4()
}
