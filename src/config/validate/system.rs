//! `[system]`: the global switches and the system side of every inherited
//! setting, with their defaults; and, once the servers are known, the
//! system default and fallback servers.

use super::{Ctx, server};
use crate::config::load::{KeyPath, Located};
use crate::config::raw::{BlacklistAction, DeliveryMode, RawSystem};
use crate::config::{Config, System};

/// `[system]` with defaults applied, and where it is (the main file's
/// `system` table, or where it would be).
pub(super) fn system(
    cx: &mut Ctx<'_, '_>,
    l: &Option<Located<RawSystem>>,
) -> (System, usize, KeyPath) {
    let (sys_file, sys_path, rs) = match l {
        Some(l) => (l.file, l.path.clone(), l.value.clone()),
        None => (0, KeyPath::new(["system"]), Default::default()),
    };
    let delivery = rs.delivery.unwrap_or(DeliveryMode::Queue);
    let system = System {
        hostname: rs
            .hostname
            .as_ref()
            .map_or_else(system_hostname, |h| h.as_str().to_owned()),
        enabled: rs.enabled.unwrap_or(true),
        delivery,
        spool: cx.resolve_path(sys_file, rs.spool.as_deref().unwrap_or("spool")),
        default_server: rs.default_server.clone(),
        fallback_server: rs.fallback_server.clone(),
        default_sender: rs.default_sender.clone(),
        display_name: rs.display_name.clone(),
        reply_to: rs.reply_to.clone(),
        bounce_address: rs.bounce_address.clone(),
        worker_threads: rs.worker_threads,
        blacklist: rs.blacklist.clone(),
        blacklist_action: rs.blacklist_action.unwrap_or(BlacklistAction::Drop),
    };
    if system.worker_threads == Some(0) {
        cx.err(
            sys_file,
            &sys_path.clone().key("worker_threads"),
            "must be at least 1",
        );
    }
    if system.hostname.contains(char::is_whitespace) || system.hostname.is_empty() {
        cx.err(
            sys_file,
            &sys_path.clone().key("hostname"),
            "the host name may not be empty or contain spaces",
        );
    }

    (system, sys_file, sys_path)
}

/// `system.default_server` and `system.fallback_server`: defined, system
/// servers, and different.
pub(super) fn servers(cx: &mut Ctx<'_, '_>, cfg: &Config, sys_file: usize, sys_path: &KeyPath) {
    for key in ["default_server", "fallback_server"] {
        let name = if key == "default_server" {
            &cfg.system.default_server
        } else {
            &cfg.system.fallback_server
        };
        let Some(ds) = name.clone() else { continue };
        let p = sys_path.clone().key(key);
        server::check_use(cx, cfg, sys_file, &p, &format!("system.{key}"), &ds, None);
        if let Some(owner) = cfg.servers.get(&ds).and_then(|s| s.tenant.clone()) {
            cx.err(
                sys_file,
                &p,
                format!(
                    "system.{key} {ds:?} belongs to tenant {owner:?}; it must be a system server"
                ),
            );
        }
    }
    match (&cfg.system.default_server, &cfg.system.fallback_server) {
        (None, Some(_)) => cx.err(
            sys_file,
            &sys_path.clone().key("fallback_server"),
            "a system fallback_server needs a default_server",
        ),
        (Some(d), Some(f)) if d == f => cx.err(
            sys_file,
            &sys_path.clone().key("fallback_server"),
            format!("default_server and fallback_server are both {d:?}; they must differ"),
        ),
        _ => {}
    }
}

fn system_hostname() -> String {
    let h = gethostname::gethostname().to_string_lossy().into_owned();
    if h.is_empty() || h.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "localhost".to_owned()
    } else {
        h
    }
}
