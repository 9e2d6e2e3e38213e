//! `[application.NAME]`: sending programs. Checked: the tenant exists and
//! the file may define it, the primary and fallback may be used, the AUTH
//! user is unique with an argon2id hash, the client networks are neither an
//! open relay nor claimed by an unrelated tenant; and, once everything is
//! known, that each application has a server.

use super::{Ctx, server};
use crate::config::load::{KeyPath, Located};
use crate::config::values::Cidr;
use crate::config::{Application, Config};
use std::collections::HashMap;
use std::net::IpAddr;

/// Every application into `cfg.applications`, and the AUTH user and
/// client network indexes.
pub(super) fn applications(
    cx: &mut Ctx<'_, '_>,
    cfg: &mut Config,
    raw_apps: &[(String, Located<Application>)],
) {
    for (n, l) in raw_apps {
        if let Some(p) = cx.src.files.get(l.file).and_then(|f| f.path.clone()) {
            cfg.defined_in.insert(format!("application {n}"), p);
        }
    }
    let mut auth_users: HashMap<String, (String, usize, KeyPath)> = HashMap::new();
    let mut ip_owner: HashMap<Cidr, String> = HashMap::new();
    let mut all_client_ips: Vec<Cidr> = Vec::new();
    let mut union_reported = false;
    for (name, l) in raw_apps {
        let a = &l.value;
        let (file, path) = (l.file, &l.path);
        let who = format!("application {name:?}");
        if !l.keys.iter().any(|k| k == "tenant") {
            cx.err(file, path, format!("{who} needs `tenant`"));
            continue;
        }
        let tenant = a.tenant.clone();
        if !cfg.tenants.contains_key(&tenant) {
            cx.err_ref(
                "tenant",
                &tenant,
                file,
                &path.clone().key("tenant"),
                format!("{who} names tenant {tenant:?}, which is not defined"),
            );
            continue;
        }
        if file > 0 && !cx.defined_in_file(file, &tenant) {
            cx.err(
                file,
                &path.clone().key("tenant"),
                format!("{who} belongs to tenant {tenant:?}, which this file does not define"),
            );
        }
        for (key, srv) in [("primary", &a.primary), ("fallback", &a.fallback)] {
            if let Some(s) = srv {
                server::check_use(
                    cx,
                    cfg,
                    file,
                    &path.clone().key(key),
                    &who,
                    s,
                    Some(&tenant),
                );
            }
        }
        if let (Some(p), Some(f)) = (&a.primary, &a.fallback) {
            if p == f {
                cx.err(
                    file,
                    &path.clone().key("fallback"),
                    format!("{who}: primary and fallback are both {p:?}; they must differ"),
                );
            }
            if cfg.system.default_server.as_deref() == Some(p.as_str()) {
                cx.err(
                    file,
                    &path.clone().key("fallback"),
                    format!("{who}: the primary {p:?} is the system default server, whose fallback is implied; remove `fallback`"),
                );
            }
        }
        if a.fallback.is_some() && a.primary.is_none() {
            cx.err(
                file,
                &path.clone().key("fallback"),
                format!("{who}: a fallback needs a primary"),
            );
        }
        match (&a.auth_user, &a.password_hash) {
            (Some(u), Some(h)) => {
                if u.is_empty() || u.chars().any(char::is_control) {
                    cx.err(file, &path.clone().key("auth_user"), "invalid user name");
                }
                if let Err(m) = check_argon2(h) {
                    cx.err(file, &path.clone().key("password_hash"), m);
                }
                if let Some((other, of, op)) = auth_users.get(u) {
                    let first = cx.src.error(*of, op, "");
                    cx.err(
                        file,
                        &path.clone().key("auth_user"),
                        format!(
                            "auth_user {u:?} is used by application {other:?} ({}:{}) and {name:?}",
                            first.file, first.line
                        ),
                    );
                } else {
                    auth_users.insert(
                        u.clone(),
                        (name.clone(), file, path.clone().key("auth_user")),
                    );
                }
            }
            (Some(_), None) => cx.err(
                file,
                &path.clone().key("auth_user"),
                format!("{who} has auth_user but no password_hash"),
            ),
            (None, Some(_)) => cx.err(
                file,
                &path.clone().key("password_hash"),
                format!("{who} has password_hash but no auth_user"),
            ),
            (None, None) => {}
        }
        for (i, c) in a.client_ips.iter().enumerate() {
            let p = path.clone().key("client_ips").index(i);
            let broad = match c.addr() {
                IpAddr::V4(_) => c.prefix() < 8,
                IpAddr::V6(_) => c.prefix() < 16,
            };
            if broad && !c.is_private() {
                union_reported = true;
                cx.err(
                    file,
                    &p,
                    format!("{c} spans public networks broader than a /8 (IPv6: /16): every client there could send as this application, an open relay"),
                );
            }
            if let Some(other) = ip_owner.get(c) {
                if other != name {
                    cx.err(file, &p, format!("network {c} is claimed by application {other:?} and {name:?}; identification would be ambiguous"));
                }
            } else {
                ip_owner.insert(*c, name.clone());
            }
        }
        // Entries that are each narrow enough may still add up to the
        // Internet: the union of every application's networks so far.
        all_client_ips.extend(a.client_ips.iter().copied());
        let (v4, v6) = Cidr::public_span(&all_client_ips);
        if !union_reported && (v4 > 1 << 24 || v6 > 1 << 112) {
            union_reported = true;
            cx.err(
                file,
                &path.clone().key("client_ips"),
                "together with the client_ips of the applications before it, this spans more public addresses than a /8 (IPv6: /16): every client there could send, an open relay",
            );
        }
        let mut app = a.clone();
        app.name = name.clone();
        cfg.applications.insert(name.clone(), app);
    }
    // Nested networks are how one tenant tells its applications apart
    // (the longest prefix wins); across unrelated tenants they would let
    // one tenant take over the other's clients.
    let mut seen_nets: Vec<(&str, &str, Cidr)> = Vec::new();
    for (name, l) in raw_apps {
        let Some(app) = cfg.applications.get(name) else {
            continue;
        };
        for (i, c) in app.client_ips.iter().enumerate() {
            for (other, other_tenant, oc) in &seen_nets {
                let related = cfg.is_within(&app.tenant, other_tenant)
                    || cfg.is_within(other_tenant, &app.tenant);
                if c != oc && c.overlaps(oc) && !related {
                    cx.err(
                        l.file,
                        &l.path.clone().key("client_ips").index(i),
                        format!("network {c} overlaps {oc} of application {other:?} (tenant {other_tenant:?}); networks of unrelated tenants must not overlap"),
                    );
                }
            }
        }
        for c in &app.client_ips {
            seen_nets.push((name.as_str(), app.tenant.as_str(), *c));
        }
    }
    cfg.auth_index = auth_users
        .into_iter()
        .map(|(u, (a, _, _))| (u, a))
        .collect();
    let mut ip_index: Vec<(Cidr, String)> = ip_owner.into_iter().collect();
    ip_index.sort_by(|a, b| b.0.prefix().cmp(&a.0.prefix()).then(a.1.cmp(&b.1)));
    cfg.ip_index = ip_index;
}

/// Every application ends up with at least one server: its primary, a
/// tenant default server or the system default.
pub(super) fn each_has_a_server(
    cx: &mut Ctx<'_, '_>,
    cfg: &Config,
    raw_apps: &[(String, Located<Application>)],
) {
    let app_names: Vec<String> = cfg.applications.keys().cloned().collect();
    for name in app_names {
        let app = &cfg.applications[&name];
        let tenant_default = cfg.inherited(&app.tenant, |t| t.default_server.as_ref());
        let system_default = cfg
            .system
            .default_server
            .as_ref()
            .filter(|_| cfg.tenant_uses_system_server(&app.tenant));
        if app.primary.is_none() && tenant_default.is_none() && system_default.is_none() {
            let (file, path) = raw_apps
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, l)| (l.file, l.path.clone()))
                .unwrap_or_default();
            let why = if cfg.system.default_server.is_some() {
                format!(
                    " (tenant {:?} may not use the system default server)",
                    app.tenant
                )
            } else {
                String::new()
            };
            cx.err(
                file,
                &path,
                format!("application {name:?} has no server: set primary, a tenant default_server or system.default_server{why}"),
            );
        }
    }
}

fn check_argon2(hash: &str) -> Result<(), String> {
    let parsed = argon2::PasswordHash::new(hash).map_err(|e| {
        format!("not a PHC password hash ({e}); generate one with `smarthost hash-password`")
    })?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "the hash uses {}, expected argon2id; generate one with `smarthost hash-password`",
            parsed.algorithm
        ));
    }
    Ok(())
}
