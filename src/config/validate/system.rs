//! `[system]`: the global switches and the system side of every inherited
//! setting, with their defaults; and, once the servers are known, the
//! system default and fallback servers.

use super::{Ctx, section, server};
use crate::config::load::{KeyPath, Located};
use crate::config::{Config, System};

/// `[system]` with defaults applied, and where it is (the main file's
/// `system` table, or where it would be).
pub(super) fn system(
    cx: &mut Ctx<'_, '_>,
    l: &Option<Located<System>>,
) -> (System, usize, KeyPath) {
    let (sys_file, sys_path) = match l {
        Some(l) => (l.file, l.path.clone()),
        None => (0, KeyPath::new(["system"])),
    };
    let mut system = section(l);
    system.spool = cx.resolve_path(sys_file, &system.spool.to_string_lossy());
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
