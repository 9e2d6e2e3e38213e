//! `[tenant.NAME]`: tenants and their locations. Values stay as written
//! (inheritance is resolved by `policy`); checked here: parents exist and
//! form no cycle, default servers may be used. (A test mode without
//! `redirect_to` is refused as it is read: `TestModeSetting`.)

use super::{Ctx, server};
use crate::config::load::{KeyPath, Located};
use crate::config::{Config, Tenant, TestModeSetting};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where each tenant is defined (file, key path).
pub(super) type TenantLocations = HashMap<String, (usize, KeyPath)>;

/// Every tenant, with its parent checked (a cyclic parent is cut so later
/// checks terminate; the config is refused anyway).
pub(super) fn tenants(
    cx: &mut Ctx<'_, '_>,
    raw_tenants: &[(String, Located<Tenant>)],
) -> (BTreeMap<String, Tenant>, TenantLocations) {
    let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
    let mut tenant_loc: HashMap<String, (usize, KeyPath)> = HashMap::new();
    for (name, l) in raw_tenants {
        tenant_loc.insert(name.clone(), (l.file, l.path.clone()));
        let mut t = l.value.clone();
        t.name = name.clone();
        tenants.insert(name.clone(), t);
    }
    // Parents exist and form no cycle.
    let mut cyclic: BTreeSet<String> = BTreeSet::new();
    for (name, l) in raw_tenants {
        if let Some(p) = &l.value.parent {
            if !tenants.contains_key(p) {
                cx.err_ref(
                    "tenant",
                    p,
                    l.file,
                    &l.path.clone().key("parent"),
                    format!("tenant {name:?} names parent {p:?}, which is not defined"),
                );
                continue;
            }
            let mut seen = vec![name.as_str()];
            let mut cur = p.as_str();
            loop {
                if seen.contains(&cur) {
                    seen.push(cur);
                    cyclic.insert(name.clone());
                    cx.err(
                        l.file,
                        &l.path.clone().key("parent"),
                        format!("parent cycle: {}", seen.join(" -> ")),
                    );
                    break;
                }
                seen.push(cur);
                match tenants.get(cur).and_then(|t| t.parent.as_deref()) {
                    Some(n) if tenants.contains_key(n) => cur = n,
                    _ => break,
                }
            }
        }
    }
    // A cyclic parent chain would make inheritance meaningless; cut it so
    // later checks run on something finite (the config is refused anyway).
    for n in &cyclic {
        if let Some(t) = tenants.get_mut(n) {
            t.parent = None;
        }
    }

    (tenants, tenant_loc)
}

/// Each tenant's `default_server` is defined and usable by it.
pub(super) fn default_servers(
    cx: &mut Ctx<'_, '_>,
    cfg: &Config,
    raw_tenants: &[(String, Located<Tenant>)],
) {
    for (name, l) in raw_tenants {
        if let Some(ds) = &l.value.default_server {
            let who = format!("tenant {name:?}");
            server::check_use(
                cx,
                cfg,
                l.file,
                &l.path.clone().key("default_server"),
                &who,
                ds,
                Some(name),
            );
        }
    }
}

/// A warning for each tenant in test mode (logged again when the config
/// goes live).
pub(super) fn test_mode_warnings(cx: &mut Ctx<'_, '_>, cfg: &Config, tenant_loc: &TenantLocations) {
    for t in cfg.tenants.values() {
        if let Some(TestModeSetting::On(tm)) = &t.test_mode
            && let Some((f, p)) = tenant_loc.get(&t.name)
        {
            cx.warn(
                *f,
                &p.clone().key("test_mode"),
                format!(
                    "tenant {:?} is in test mode: mail goes to {}",
                    t.name, tm.redirect_to
                ),
            );
        }
    }
}
