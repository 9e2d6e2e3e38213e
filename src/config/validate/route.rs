//! `[[route]]`: sender filters that select a server. Checked: the tenant
//! scope exists, the server may be used in that scope, and a route in an
//! included file is scoped to a tenant that file defines.

use super::{Ctx, server};
use crate::config::load::Located;
use crate::config::{Config, Route};

/// Every route into `cfg.routes`, in file order.
pub(super) fn routes(cx: &mut Ctx<'_, '_>, cfg: &mut Config, routes: &[Located<Route>]) {
    for l in routes {
        let r = &l.value;
        let who = format!("route {}", r.sender);
        if let Some(t) = &r.tenant
            && !cfg.tenants.contains_key(t)
        {
            cx.err_ref(
                "tenant",
                t,
                l.file,
                &l.path.clone().key("tenant"),
                format!("{who} names tenant {t:?}, which is not defined"),
            );
            continue;
        }
        let owner = cfg.servers.get(&r.server).and_then(|s| s.tenant.clone());
        let scope = r.tenant.clone().or(owner.clone());
        server::check_use(
            cx,
            cfg,
            l.file,
            &l.path.clone().key("server"),
            &who,
            &r.server,
            scope.as_deref(),
        );
        if l.file > 0 {
            match &scope {
                Some(t) if cx.defined_in_file(l.file, t) => {}
                _ => cx.err(
                    l.file,
                    &l.path.clone().key("tenant"),
                    format!("{who}: routes in an included file must be scoped to a tenant that file defines"),
                ),
            }
        }
        let mut route = r.clone();
        route.tenant = scope;
        cfg.routes.push(route);
    }
}
