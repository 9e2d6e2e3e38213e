//! `[server.NAME]`: upstreams. The flat table becomes the settings of its
//! kind (`smtp`, with `oauth` for XOAUTH2; `capture`; `graph`): secrets
//! read, `ca_file` resolved, and the defaults that depend on other keys
//! (`port`, `tls_name`, `helo_name`; the others are on the fields in
//! `raw.rs`). The SMTP keys used as written (`raw::SmtpSettings`) are
//! embedded as they are, with range checks here; a key the file set for
//! another kind is an error (`RawServer::kinds_of`, from the kind tags in
//! `raw.rs`). Then, once tenants are known: ownership (included files,
//! `own_servers`) and [`check_use`], the one rule for who may refer to a
//! server.

use super::Ctx;
use crate::config::load::{KeyPath, Located};
use crate::config::raw::{RawServer, Security, ServerKindName, UpstreamAuth};
use crate::config::{
    CaptureServer, Config, GraphServer, OAuth, OAuthGrant, Server, ServerKind, SmtpServer,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Every server that could be built (the others reported their errors).
pub(super) fn servers(
    cx: &mut Ctx<'_, '_>,
    raw_servers: &[(String, Located<RawServer>)],
    hostname: &str,
) -> BTreeMap<String, Server> {
    let mut servers = BTreeMap::new();
    for (name, l) in raw_servers {
        cx.server_names.insert(name.clone());
        if let Some(s) = server(cx, name, l, hostname) {
            servers.insert(name.clone(), s);
        }
    }
    servers
}

/// A `https://` URL without a trailing slash, or an error at `key`.
fn https_url(
    cx: &mut Ctx<'_, '_>,
    file: usize,
    path: &KeyPath,
    key: &str,
    url: &str,
) -> Option<String> {
    let url = url.trim_end_matches('/');
    match crate::upstream::https::Url::parse(url) {
        Ok(_) => Some(url.to_owned()),
        Err(e) => {
            cx.err(file, &path.clone().key(key), e.to_string());
            None
        }
    }
}

/// `ca_file`, resolved, read once to report problems, and watched.
fn ca_file(cx: &mut Ctx<'_, '_>, file: usize, path: &KeyPath, s: &RawServer) -> Option<PathBuf> {
    let ca = cx.resolve_path(file, s.ca_file.as_ref()?);
    cx.referenced.push(ca.clone());
    if let Err(m) = crate::tls::read_certs(&ca) {
        cx.err(file, &path.clone().key("ca_file"), m);
    }
    Some(ca)
}

fn plain_value(cx: &mut Ctx<'_, '_>, file: usize, path: &KeyPath, key: &str, v: &str) -> bool {
    if v.is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        cx.err(
            file,
            &path.clone().key(key),
            "must be non-empty, without spaces or control characters",
        );
        return false;
    }
    true
}

/// `oauth = { ... }` of an SMTP server.
fn smtp_oauth(
    cx: &mut Ctx<'_, '_>,
    file: usize,
    path: &KeyPath,
    o: &crate::config::raw::RawOAuth,
) -> Option<OAuth> {
    let p = path.clone().key("oauth");
    let token_url = https_url(cx, file, &p, "token_url", &o.token_url);
    let id_ok = plain_value(cx, file, &p, "client_id", &o.client_id);
    let secret = cx.secret(file, &p.clone().key("client_secret"), &o.client_secret);
    let grant = match (&o.refresh_token, &o.scope) {
        (Some(rt), scope) => {
            cx.secret(file, &p.clone().key("refresh_token"), rt)
                .map(|refresh_token| OAuthGrant::RefreshToken {
                    refresh_token,
                    scope: scope.clone(),
                })
        }
        (None, Some(scope)) => {
            plain_value(cx, file, &p, "scope", scope).then(|| OAuthGrant::ClientCredentials {
                scope: scope.clone(),
            })
        }
        (None, None) => {
            cx.err(
                file,
                &p,
                "oauth needs `scope` (client-credentials grant) or `refresh_token` (refresh-token grant)",
            );
            None
        }
    };
    Some(OAuth {
        token_url: token_url?,
        client_id: id_ok.then(|| o.client_id.clone())?,
        client_secret: secret?,
        grant: grant?,
    })
}

/// A `kind = "graph"` server.
fn graph_server(
    cx: &mut Ctx<'_, '_>,
    file: usize,
    path: &KeyPath,
    s: &RawServer,
) -> Option<GraphServer> {
    let mut missing = Vec::new();
    for (key, set) in [
        ("tenant_id", s.tenant_id.is_some()),
        ("client_id", s.client_id.is_some()),
        ("client_secret", s.client_secret.is_some()),
        ("mailbox", s.mailbox.is_some()),
    ] {
        if !set {
            missing.push(key);
        }
    }
    if !missing.is_empty() {
        cx.err(
            file,
            path,
            format!("a graph server needs {}", missing.join(", ")),
        );
    }
    let tenant_ok = s.tenant_id.as_deref().is_some_and(|t| {
        plain_value(cx, file, path, "tenant_id", t) && {
            let ok = !t.contains(['/', '?', '#', '%']);
            if !ok {
                cx.err(file, &path.clone().key("tenant_id"), "not a tenant id");
            }
            ok
        }
    });
    let client_ok = s
        .client_id
        .as_deref()
        .is_some_and(|c| plain_value(cx, file, path, "client_id", c));
    let secret = s
        .client_secret
        .as_ref()
        .and_then(|p| cx.secret(file, &path.clone().key("client_secret"), p));
    let authority = https_url(cx, file, path, "authority", &s.authority);
    let graph_url = https_url(cx, file, path, "graph_url", &s.graph_url);
    let ca_file = ca_file(cx, file, path, s);
    let (tenant_id, client_id) = (s.tenant_id.clone()?, s.client_id.clone()?);
    if !(tenant_ok && client_ok) {
        return None;
    }
    let (authority, graph_url) = (authority?, graph_url?);
    Some(GraphServer {
        oauth: OAuth {
            token_url: format!("{authority}/{tenant_id}/oauth2/v2.0/token"),
            client_id,
            client_secret: secret?,
            grant: OAuthGrant::ClientCredentials {
                scope: format!("{graph_url}/.default"),
            },
        },
        tenant_id,
        mailbox: s.mailbox.as_ref()?.to_string(),
        graph_url,
        ca_file,
    })
}

fn server(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    l: &Located<RawServer>,
    hostname: &str,
) -> Option<Server> {
    let s = &l.value;
    let (file, path) = (l.file, &l.path);
    let kind_name = s.kind;
    for key in &l.keys {
        if RawServer::kinds_of(key).is_some_and(|kinds| !kinds.contains(&kind_name)) {
            cx.err(
                file,
                &path.clone().key(key),
                format!("`{key}` does not apply to a server of kind {kind_name:?}").to_lowercase(),
            );
        }
    }
    let kind = match kind_name {
        ServerKindName::Graph => ServerKind::Graph(graph_server(cx, file, path, s)?),
        ServerKindName::Capture => {
            let Some(p) = &s.path else {
                cx.err(
                    file,
                    path,
                    "a capture server needs `path` (the outbox directory)",
                );
                return None;
            };
            ServerKind::Capture(CaptureServer {
                path: cx.resolve_path(file, p),
            })
        }
        ServerKindName::Smtp => {
            let Some(host) = s.host.clone() else {
                cx.err(file, path, "an SMTP server needs `host`");
                return None;
            };
            if host.is_empty() || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
                cx.err(file, &path.clone().key("host"), "invalid host name");
            }
            let security = s.smtp.security;
            let port = s.port.unwrap_or(match security {
                Security::Implicit => 465,
                Security::None => 25,
                _ => 587,
            });
            if port == 0 {
                cx.err(
                    file,
                    &path.clone().key("port"),
                    "port 0 is not a valid upstream port",
                );
            }
            let oauth = match (&s.oauth, s.smtp.auth) {
                (Some(o), Some(UpstreamAuth::Xoauth2)) => smtp_oauth(cx, file, path, o),
                (None, Some(UpstreamAuth::Xoauth2)) => {
                    cx.err(
                        file,
                        &path.clone().key("auth"),
                        "auth = \"xoauth2\" needs `oauth = { token_url, client_id, client_secret, scope | refresh_token }`",
                    );
                    None
                }
                (Some(_), _) => {
                    cx.err(
                        file,
                        &path.clone().key("oauth"),
                        "`oauth` is used only with auth = \"xoauth2\"",
                    );
                    None
                }
                (None, _) => None,
            };
            if s.smtp.auth == Some(UpstreamAuth::Xoauth2) {
                if s.smtp.username.is_none() {
                    cx.err(
                        file,
                        &path.clone().key("auth"),
                        "auth = \"xoauth2\" needs `username` (the mailbox the token acts for)",
                    );
                }
                if s.smtp.password.is_some() {
                    cx.err(
                        file,
                        &path.clone().key("password"),
                        "auth = \"xoauth2\" uses tokens, not a password: remove `password`",
                    );
                }
            }
            let wants_auth = s.smtp.auth != Some(UpstreamAuth::None);
            if s.smtp.username.is_some()
                && s.smtp.password.is_none()
                && wants_auth
                && s.smtp.auth != Some(UpstreamAuth::Xoauth2)
            {
                cx.err(
                    file,
                    &path.clone().key("username"),
                    "a username needs a password",
                );
            }
            if s.smtp.password.is_some() && s.smtp.username.is_none() {
                cx.err(
                    file,
                    &path.clone().key("password"),
                    "a password needs a username",
                );
            }
            if matches!(s.smtp.auth, Some(UpstreamAuth::Plain | UpstreamAuth::Login))
                && s.smtp.username.is_none()
            {
                cx.err(
                    file,
                    &path.clone().key("auth"),
                    "auth is set but no username is given",
                );
            }
            if let Some(u) = &s.smtp.username
                && u.chars().any(char::is_control)
            {
                cx.err(
                    file,
                    &path.clone().key("username"),
                    "control characters are not allowed",
                );
            }
            let mut settings = s.smtp.clone();
            if let Some(p) = &mut settings.password {
                cx.resolve_secret(file, &path.clone().key("password"), p);
            }
            let ca_file = ca_file(cx, file, path, s);
            if s.smtp.accept_invalid_certs {
                cx.warn(
                    file,
                    &path.clone().key("accept_invalid_certs"),
                    "certificate verification is off for this server",
                );
            }
            let helo_name = s.helo_name.clone().unwrap_or_else(|| hostname.to_owned());
            if helo_name.is_empty()
                || helo_name
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                cx.err(file, &path.clone().key("helo_name"), "invalid EHLO name");
            }
            for (key, d) in [
                ("connect_timeout", s.smtp.connect_timeout),
                ("command_timeout", s.smtp.command_timeout),
                ("data_timeout", s.smtp.data_timeout),
            ] {
                if d.is_zero() {
                    cx.err(file, &path.clone().key(key), "must be greater than zero");
                }
            }
            if s.smtp.pool_size == 0 {
                cx.err(
                    file,
                    &path.clone().key("pool_size"),
                    "pool_size must be at least 1",
                );
            }
            ServerKind::Smtp(SmtpServer {
                tls_name: s.tls_name.clone().unwrap_or_else(|| host.clone()),
                host,
                port,
                ca_file,
                helo_name,
                oauth,
                settings,
            })
        }
    };
    if s.max_connections == Some(0) {
        cx.err(
            file,
            &path.clone().key("max_connections"),
            "max_connections must be at least 1",
        );
    }
    if l.keys.iter().any(|k| k == "limit_counts") && s.limit.is_none() {
        cx.warn(
            file,
            &path.clone().key("limit_counts"),
            "limit_counts has no effect without `limit`",
        );
    }
    // A Graph mailbox can only send as itself (or as a configured `sender`
    // it has SendAs rights for): it is the server's fixed sender.
    let sender = match (&s.sender, &kind) {
        (None, ServerKind::Graph(_)) => s.mailbox.clone(),
        _ => s.sender.clone(),
    };
    Some(Server {
        name: name.to_owned(),
        tenant: s.tenant.clone(),
        sender,
        display_name: s.display_name.clone(),
        reply_to: s.reply_to.clone(),
        limit: s.limit,
        limit_counts: s.limit_counts,
        max_connections: s.max_connections,
        kind,
    })
}

/// Who owns each server: a tenant that exists and may own servers, and
/// that the server's own file defines when it is an included file.
pub(super) fn ownership(
    cx: &mut Ctx<'_, '_>,
    cfg: &Config,
    raw_servers: &[(String, Located<RawServer>)],
) {
    for (name, l) in raw_servers {
        let Some(owner) = &l.value.tenant else {
            if l.file > 0 {
                cx.err(l.file, &l.path, format!("server {name:?} has no `tenant`: included files may only define their own tenants' servers"));
            }
            continue;
        };
        if !cfg.tenants.contains_key(owner) {
            cx.err_ref(
                "tenant",
                owner,
                l.file,
                &l.path.clone().key("tenant"),
                format!("server {name:?} names tenant {owner:?}, which is not defined"),
            );
            continue;
        }
        if !cfg.tenant_owns_servers(owner) {
            cx.err(
                l.file,
                &l.path.clone().key("tenant"),
                format!("server {name:?} belongs to tenant {owner:?}, which may not define its own servers (own_servers = false)"),
            );
        }
        if l.file > 0 && !cx.defined_in_file(l.file, owner) {
            cx.err(
                l.file,
                &l.path.clone().key("tenant"),
                format!(
                    "server {name:?} belongs to tenant {owner:?}, which this file does not define"
                ),
            );
        }
    }
}

/// Is `server` (referred to by `who` at `file`/`path`) defined, and usable
/// by `tenant` (its own, an ancestor's, or a system server when allowed)?
pub(super) fn check_use(
    cx: &mut Ctx<'_, '_>,
    cfg: &Config,
    file: usize,
    path: &KeyPath,
    who: &str,
    server: &str,
    tenant: Option<&str>,
) {
    let Some(s) = cfg.servers.get(server) else {
        if !cx.server_names.contains(server) {
            cx.err_ref(
                "server",
                server,
                file,
                path,
                format!("{who} refers to server {server:?}, which is not defined"),
            );
        }
        return;
    };
    let Some(tenant) = tenant else { return };
    match &s.tenant {
        Some(owner) if !cfg.is_within(tenant, owner) => cx.err(
            file,
            path,
            format!("{who} refers to server {server:?} of tenant {owner:?}; tenant {tenant:?} may use only its own, its head office's and system servers"),
        ),
        None if !cfg.tenant_uses_system_server(tenant) => cx.err(
            file,
            path,
            format!("{who} refers to system server {server:?}, but tenant {tenant:?} may not use system servers (use_system_server = false)"),
        ),
        _ => {}
    }
}
