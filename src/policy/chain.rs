//! The server chain (PRODUCT §2 step 4): route filters, then the
//! application's primary and fallback, then the tenant's default server
//! (inherited from parents), then the system default server and the system
//! fallback where the tenant may use system servers. No server appears twice.
//!
//! Skipping servers that are marked down happens at delivery time, on
//! this list (servers over their send limit are skipped there).

use super::Effective;
use crate::config::values::normalize_address;
use crate::config::{Config, Route, Server};

/// Builds the ordered chain for a message from `envelope_from`.
///
/// A route applies when its sender filter matches the client's envelope
/// sender or the effective sender, its tenant scope includes the
/// application's tenant, and the tenant may use its server.
pub fn server_chain<'c>(
    cfg: &'c Config,
    eff: &Effective<'c>,
    envelope_from: &str,
) -> Vec<&'c Server> {
    let tenant = eff.tenant.name.as_str();
    let mut chain: Vec<&Server> = Vec::new();
    let mut push = |s: Option<&'c Server>| {
        if let Some(s) = s
            && cfg.tenant_may_use(tenant, s)
            && !chain.iter().any(|c| c.name == s.name)
        {
            chain.push(s);
        }
    };
    let senders: Vec<String> = [
        Some(envelope_from.to_owned()),
        eff.sender.map(|s| s.to_string()),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .map(|s| normalize_address(&s))
    .collect();
    for r in &cfg.routes {
        let in_scope = r.tenant.as_deref().is_none_or(|t| cfg.is_within(tenant, t));
        if in_scope && senders.iter().any(|s| r.sender.matches(s)) {
            push(cfg.servers.get(&r.server));
        }
    }
    let app = eff.app;
    push(app.primary.as_deref().and_then(|n| cfg.servers.get(n)));
    push(app.fallback.as_deref().and_then(|n| cfg.servers.get(n)));
    push(
        cfg.inherited(tenant, |t| t.default_server.as_deref())
            .and_then(|n| cfg.servers.get(n)),
    );
    if eff.use_system_server {
        push(
            cfg.system
                .default_server
                .as_deref()
                .and_then(|n| cfg.servers.get(n)),
        );
        push(
            cfg.system
                .fallback_server
                .as_deref()
                .and_then(|n| cfg.servers.get(n)),
        );
    }
    chain
}

/// The first route whose filter matches the client's own envelope sender
/// (not only the effective sender) and whose server this tenant may use:
/// that sender is kept for the message (PRODUCT §1 "route"; a route's
/// server with a fixed sender still replaces it on its hop).
pub fn route_kept_sender<'c>(
    cfg: &'c Config,
    eff: &Effective<'c>,
    envelope_from: &str,
) -> Option<&'c Route> {
    if envelope_from.is_empty() {
        return None;
    }
    let tenant = eff.tenant.name.as_str();
    let from = normalize_address(envelope_from);
    cfg.routes.iter().find(|r| {
        r.tenant.as_deref().is_none_or(|t| cfg.is_within(tenant, t))
            && r.sender.matches(&from)
            && cfg
                .servers
                .get(&r.server)
                .is_some_and(|s| cfg.tenant_may_use(tenant, s))
    })
}
