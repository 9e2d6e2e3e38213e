//! Policy: who is sending, what their effective settings are, what happens
//! to each recipient, and which servers may carry the message. Pure: no I/O,
//! no clock; everything comes from the config snapshot and the arguments.
//!
//! Outcomes are typed; each variant's doc comment names the SMTP reply the
//! session turns it into (the wording lives in `session::reply`).

mod chain;
#[cfg(test)]
mod tests;

pub use chain::{route_kept_sender, server_chain};

use crate::blacklist::{RuntimeBlacklist, Scope};
use crate::config::values::{EmailAddress, normalize_address};
use crate::config::{
    Application, BlacklistAction, Config, Listener, ListenerAuth, Server, Tenant, TestMode,
    TestModeSetting,
};
use crate::rewrite::RewriteSpec;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;

/// How an application was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentifiedBy {
    /// SMTP AUTH user name.
    AuthUser,
    /// The listener binds an application.
    Listener,
    /// The client address is in the application's `client_ips`.
    ClientIp,
}

/// Identifies the application behind a client: AUTH user first, then the
/// listener's binding, then the client address (longest prefix wins).
pub fn identify<'c>(
    cfg: &'c Config,
    listener: Option<&Listener>,
    auth_user: Option<&str>,
    client_ip: IpAddr,
) -> Option<(&'c Application, IdentifiedBy)> {
    if let Some(u) = auth_user {
        // An authenticated user that no longer maps to an application (a
        // reload removed it) is not silently re-identified by address.
        return cfg
            .application_by_auth_user(u)
            .map(|a| (a, IdentifiedBy::AuthUser));
    }
    if let Some(a) = listener
        .and_then(|l| l.application.as_deref())
        .and_then(|n| cfg.applications.get(n))
    {
        return Some((a, IdentifiedBy::Listener));
    }
    cfg.application_by_ip(client_ip)
        .map(|a| (a, IdentifiedBy::ClientIp))
}

/// Identifies the sender of a transaction exactly as the live relay does
/// at MAIL FROM (the session and `explain` both call this): a listener
/// with `auth = "required"` wants AUTH first; a client that is no
/// application gets `AuthRequired` (530) where it could authenticate
/// (AUTH offered: `auth` is not "none", TLS is up or plaintext AUTH is
/// allowed, and some application has an AUTH user), else `NotIdentified`
/// (550).
pub fn identify_client<'c>(
    cfg: &'c Config,
    listener: &Listener,
    auth_user: Option<&str>,
    client_ip: IpAddr,
    tls: bool,
) -> Result<(&'c Application, IdentifiedBy), Refusal> {
    if listener.auth == ListenerAuth::Required && auth_user.is_none() {
        return Err(Refusal::AuthRequired);
    }
    match identify(cfg, Some(listener), auth_user, client_ip) {
        Some(found) => Ok(found),
        None if auth_offered(cfg, listener, tls) => Err(Refusal::AuthRequired),
        None => Err(Refusal::NotIdentified),
    }
}

/// Whether a listener offers AUTH to a client (TLS up or not).
pub fn auth_offered(cfg: &Config, listener: &Listener, tls: bool) -> bool {
    listener.auth != ListenerAuth::None
        && (tls || listener.allow_plaintext_auth)
        && cfg.has_auth_users()
}

impl IdentifiedBy {
    /// For people: how it was recognised, with the config key.
    pub fn describe(self) -> &'static str {
        match self {
            IdentifiedBy::AuthUser => "AUTH user (auth_user)",
            IdentifiedBy::Listener => "listener (its application key)",
            IdentifiedBy::ClientIp => "client address (client_ips)",
        }
    }
}

/// Where a blacklist comes from. Shown and serialised as `system` or
/// `tenant NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOrigin {
    /// `[system] blacklist`.
    System,
    /// A tenant's list (the application's tenant or one of its parents).
    Tenant(String),
}

impl std::fmt::Display for ListOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListOrigin::System => f.write_str("system"),
            ListOrigin::Tenant(t) => write!(f, "tenant {t}"),
        }
    }
}

impl ListOrigin {
    /// The metrics `list` label: `system` or the tenant's name.
    pub fn label(&self) -> String {
        match self {
            ListOrigin::System => "system".to_owned(),
            ListOrigin::Tenant(t) => t.clone(),
        }
    }
}

impl Serialize for ListOrigin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListOrigin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.strip_prefix("tenant ") {
            Some(t) => ListOrigin::Tenant(t.to_owned()),
            None => ListOrigin::System,
        })
    }
}

/// Where an identity value (sender, display name, Reply-To) comes from.
/// `explain` shows it; the precedence is: a server's fixed value, then the
/// client's own sender kept by a route, then the application, the tenant
/// chain, the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Source {
    /// `[server.NAME]` `sender` / `display_name` / `reply_to`.
    Server(String),
    /// A `[[route]]` matched the client's envelope sender, which is kept.
    Route(String),
    /// `[application.NAME]`.
    Application(String),
    /// `[tenant.NAME]` (the application's tenant or a parent).
    Tenant(String),
    /// `[system]`.
    System,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Server(n) => write!(f, "server {n}"),
            Source::Route(r) => write!(f, "route {r} (the client's sender)"),
            Source::Application(n) => write!(f, "application {n}"),
            Source::Tenant(n) => write!(f, "tenant {n}"),
            Source::System => f.write_str("system"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sourced {
    /// The value.
    pub value: String,
    /// Its source.
    pub source: Source,
}

/// The sender identity one hop gets (PRODUCT §3.2, per-server identity):
/// each value with its source; `None` leaves the message's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Envelope sender and From address.
    pub sender: Option<Sourced>,
    /// From display name.
    pub display_name: Option<Sourced>,
    /// Reply-To.
    pub reply_to: Option<Sourced>,
}

/// Where the application-side values of [`Effective`] came from.
#[derive(Debug, Clone, Default)]
pub struct EffectiveSources {
    /// Of `sender`.
    pub sender: Option<Source>,
    /// Of `display_name`.
    pub display_name: Option<Source>,
    /// Of `reply_to`.
    pub reply_to: Option<Source>,
}

/// The nearest value on application → tenant chain → system, with its source.
fn nearest<'c, T: ?Sized>(
    app: &'c Application,
    chain: &[&'c Tenant],
    get_app: impl Fn(&'c Application) -> Option<&'c T>,
    get_tenant: impl Fn(&'c Tenant) -> Option<&'c T>,
    system: Option<&'c T>,
) -> Option<(&'c T, Source)> {
    get_app(app)
        .map(|v| (v, Source::Application(app.name.clone())))
        .or_else(|| {
            chain
                .iter()
                .find_map(|t| get_tenant(t).map(|v| (v, Source::Tenant(t.name.clone()))))
        })
        .or_else(|| system.map(|v| (v, Source::System)))
}

/// The settings that apply to one application after inheritance
/// (application → tenant → parent tenants → system).
#[derive(Debug, Clone)]
pub struct Effective<'c> {
    /// The application.
    pub app: &'c Application,
    /// Its tenant.
    pub tenant: &'c Tenant,
    /// The tenant and its parents, nearest first.
    pub tenant_chain: Vec<&'c Tenant>,
    /// Whether the tenant chain allows sending.
    pub tenant_enabled: bool,
    /// Sender before any server's fixed sender.
    pub sender: Option<&'c EmailAddress>,
    /// From display name.
    pub display_name: Option<&'c str>,
    /// Reply-To.
    pub reply_to: Option<&'c EmailAddress>,
    /// Where delivery status notifications go when the envelope sender is null.
    pub bounce_address: Option<&'c EmailAddress>,
    /// Active test mode, if any.
    pub test_mode: Option<&'c TestMode>,
    /// May system servers be used.
    pub use_system_server: bool,
    /// Where `sender`, `display_name` and `reply_to` came from.
    pub sources: EffectiveSources,
}

/// Resolves the effective settings of `app`.
pub fn resolve<'c>(cfg: &'c Config, app: &'c Application) -> Effective<'c> {
    let chain = cfg.tenant_chain(&app.tenant);
    let tenant = chain
        .first()
        .copied()
        .expect("validated: an application's tenant exists");
    let from_chain =
        |get: &dyn Fn(&'c Tenant) -> Option<&'c EmailAddress>| chain.iter().find_map(|t| get(t));
    let test_mode = app
        .test_mode
        .as_ref()
        .or_else(|| chain.iter().find_map(|t| t.test_mode.as_ref()))
        .and_then(|s| match s {
            TestModeSetting::On(tm) => Some(tm),
            TestModeSetting::Off => None,
        });
    let sender = nearest(
        app,
        &chain,
        |a| a.sender.as_ref(),
        |t| t.sender.as_ref(),
        cfg.system.default_sender.as_ref(),
    );
    let display_name = nearest(
        app,
        &chain,
        |a| a.display_name.as_ref(),
        |t| t.display_name.as_ref(),
        cfg.system.display_name.as_ref(),
    );
    let reply_to = nearest(
        app,
        &chain,
        |a| a.reply_to.as_ref(),
        |t| t.reply_to.as_ref(),
        cfg.system.reply_to.as_ref(),
    );
    Effective {
        app,
        tenant,
        tenant_enabled: chain.iter().find_map(|t| t.enabled).unwrap_or(true),
        sender: sender.as_ref().map(|s| s.0),
        display_name: display_name.as_ref().map(|d| d.0.as_str()),
        reply_to: reply_to.as_ref().map(|r| r.0),
        bounce_address: from_chain(&|t| t.bounce_address.as_ref())
            .or(cfg.system.bounce_address.as_ref()),
        test_mode,
        use_system_server: cfg.tenant_uses_system_server(&app.tenant),
        sources: EffectiveSources {
            sender: sender.map(|s| s.1),
            display_name: display_name.map(|d| d.1),
            reply_to: reply_to.map(|r| r.1),
        },
        tenant_chain: chain,
    }
}

/// Why a transaction is refused before any recipient is looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Refusal {
    /// `530 5.7.0 Authentication required`: the listener requires AUTH, or
    /// AUTH is offered and the client could not be identified otherwise.
    AuthRequired,
    /// `550 5.7.1 Relaying denied`: the client is not any application and
    /// cannot authenticate here. smarthost is never an open relay.
    NotIdentified,
    /// `451 4.3.2 Sending is disabled`: the system switch is off.
    SystemDisabled,
    /// `451 4.7.1 Sending is disabled for this tenant`.
    TenantDisabled,
}

/// Checks at MAIL FROM: system switch and tenant switch.
pub fn check_mail(cfg: &Config, eff: &Effective<'_>) -> Result<(), Refusal> {
    if !cfg.system.enabled {
        return Err(Refusal::SystemDisabled);
    }
    if !eff.tenant_enabled {
        return Err(Refusal::TenantDisabled);
    }
    Ok(())
}

/// What happens to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum RcptVerdict {
    /// `250 2.1.5`: delivered as addressed.
    Deliver,
    /// `250 2.1.5`: accepted; test mode delivers to `to` instead.
    Redirect {
        /// The test address.
        to: String,
    },
    /// `250 2.1.5`: accepted and not delivered (blacklist `drop`); logged and counted.
    Drop {
        /// The list that matched.
        list: ListOrigin,
        /// The entry that matched.
        entry: String,
    },
    /// `550 5.7.1 Recipient address rejected by policy` (blacklist `reject`).
    Reject {
        /// The list that matched.
        list: ListOrigin,
        /// The entry that matched.
        entry: String,
    },
}

/// Decides one recipient: blacklists first (system list and the tenant
/// chain's lists; when several match, `reject` wins over `drop`), then test
/// mode (every recipient not on the allow list is redirected).
pub fn check_rcpt(cfg: &Config, eff: &Effective<'_>, rcpt: &str) -> RcptVerdict {
    check_rcpt_with(cfg, eff, rcpt, &RuntimeBlacklist::default())
}

/// [`check_rcpt`] with the runtime blacklist entries (admin API, CLI)
/// merged into the file's lists: a runtime entry of a list counts as that
/// list's entry, with its own action when it has one.
pub fn check_rcpt_with(
    cfg: &Config,
    eff: &Effective<'_>,
    rcpt: &str,
    runtime: &RuntimeBlacklist,
) -> RcptVerdict {
    let n = normalize_address(rcpt);
    let lists = std::iter::once((
        ListOrigin::System,
        &cfg.system.blacklist,
        cfg.system.blacklist_action,
    ))
    .chain(eff.tenant_chain.iter().map(|t| {
        (
            ListOrigin::Tenant(t.name.clone()),
            &t.blacklist,
            t.blacklist_action,
        )
    }));
    let mut drop: Option<RcptVerdict> = None;
    for (origin, list, list_action) in lists {
        let file = list
            .iter()
            .find(|e| e.matches(&n))
            .map(|e| (e.to_string(), list_action));
        let scope = match &origin {
            ListOrigin::System => Scope::System,
            ListOrigin::Tenant(t) => Scope::Tenant(t.clone()),
        };
        let rt = || {
            runtime
                .find(&scope, &n)
                .map(|e| (e.entry.to_string(), e.action.unwrap_or(list_action)))
        };
        // A reject from either source wins over a drop.
        let hit = match file {
            Some((_, BlacklistAction::Drop)) => {
                rt().filter(|(_, a)| *a == BlacklistAction::Reject).or(file)
            }
            Some(f) => Some(f),
            None => rt(),
        };
        if let Some((entry, action)) = hit {
            match action {
                BlacklistAction::Reject => {
                    return RcptVerdict::Reject {
                        list: origin,
                        entry,
                    };
                }
                BlacklistAction::Drop => {
                    drop.get_or_insert(RcptVerdict::Drop {
                        list: origin,
                        entry,
                    });
                }
            }
        }
    }
    if let Some(d) = drop {
        return d;
    }
    match eff.test_mode {
        Some(tm) if !tm.allow.iter().any(|e| e.matches(&n)) => RcptVerdict::Redirect {
            to: tm.redirect_to.to_string(),
        },
        _ => RcptVerdict::Deliver,
    }
}

/// One accepted recipient and what policy made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientPlan {
    /// As the client gave it.
    pub original: String,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: RcptVerdict,
}

/// Everything decided for one message before delivery. Owned data (no
/// borrow of the config), so it can be stored and moved between tasks: it
/// holds the config snapshot it was computed against (an `Arc`, not a
/// copy) and names into it, and values copied out of it (a few short
/// strings). Delivery computes it again on every attempt against the
/// current snapshot, so a server a reload removed is not in the chain.
#[derive(Clone)]
pub struct Plan {
    /// The snapshot this plan was computed against: the chain's servers
    /// and the DKIM keys are looked up in it.
    config: Arc<Config>,
    /// The application.
    pub application: String,
    /// The application's tenant and its parents, nearest first.
    pub tenant_chain: Vec<String>,
    /// Sender before any server's fixed sender (application → tenant
    /// chain → system), with its source.
    pub sender: Option<Sourced>,
    /// From display name, with its source.
    pub display_name: Option<Sourced>,
    /// Reply-To, with its source.
    pub reply_to: Option<Sourced>,
    /// The Subject prefix of an active test mode.
    pub subject_prefix: Option<String>,
    /// MAIL FROM as the client sent it (empty = null sender).
    pub envelope_from: String,
    /// Every accepted recipient with its verdict.
    pub recipients: Vec<RecipientPlan>,
    /// The envelope recipients to deliver to (redirects applied, duplicates
    /// removed, drops left out). Empty: nothing to deliver.
    pub deliver_to: Vec<String>,
    /// Original recipients replaced by the test address (for X-Original-To).
    pub redirected: Vec<String>,
    /// Names of the servers to try, in order; each is in `config`.
    chain: Vec<String>,
    /// This plan carries a delivery status notification we generated.
    pub dsn: bool,
    /// A route matched the client's envelope sender: that sender is kept
    /// (the route's filter is named), unless a hop's server has a fixed one.
    pub kept_sender: Option<String>,
}

/// Builds the plan for a message whose recipients have each been through
/// [`check_rcpt`] (rejected ones are not passed in). `eff` is the
/// application's [`resolve`]d settings in `cfg`.
pub fn plan(
    cfg: &Arc<Config>,
    eff: &Effective<'_>,
    envelope_from: &str,
    recipients: Vec<RecipientPlan>,
) -> Plan {
    let mut deliver_to: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut redirected = Vec::new();
    for r in &recipients {
        let target = match &r.verdict {
            RcptVerdict::Deliver => &r.original,
            RcptVerdict::Redirect { to } => {
                redirected.push(r.original.clone());
                to
            }
            RcptVerdict::Drop { .. } | RcptVerdict::Reject { .. } => continue,
        };
        if seen.insert(normalize_address(target)) {
            deliver_to.push(target.clone());
        }
    }
    let chain = server_chain(cfg, eff, envelope_from)
        .into_iter()
        .map(|s| s.name.clone())
        .collect();
    let kept_sender = route_kept_sender(cfg, eff, envelope_from).map(|r| r.sender.to_string());
    let sourced = |v: Option<String>, src: &Option<Source>| {
        v.zip(src.clone())
            .map(|(value, source)| Sourced { value, source })
    };
    Plan {
        config: cfg.clone(),
        application: eff.app.name.clone(),
        tenant_chain: eff.tenant_chain.iter().map(|t| t.name.clone()).collect(),
        sender: sourced(eff.sender.map(ToString::to_string), &eff.sources.sender),
        display_name: sourced(
            eff.display_name.map(str::to_owned),
            &eff.sources.display_name,
        ),
        reply_to: sourced(eff.reply_to.map(ToString::to_string), &eff.sources.reply_to),
        subject_prefix: eff
            .test_mode
            .and_then(|t| t.subject_prefix.as_ref())
            .map(|p| p.as_str().to_owned()),
        envelope_from: envelope_from.to_owned(),
        recipients,
        deliver_to,
        redirected,
        chain,
        dsn: false,
        kept_sender,
    }
}

/// Shows the snapshot by its hash, not the whole config.
impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("config", &self.config.hash)
            .field("application", &self.application)
            .field("tenant_chain", &self.tenant_chain)
            .field("sender", &self.sender)
            .field("display_name", &self.display_name)
            .field("reply_to", &self.reply_to)
            .field("subject_prefix", &self.subject_prefix)
            .field("envelope_from", &self.envelope_from)
            .field("recipients", &self.recipients)
            .field("deliver_to", &self.deliver_to)
            .field("redirected", &self.redirected)
            .field("chain", &self.chain)
            .field("dsn", &self.dsn)
            .field("kept_sender", &self.kept_sender)
            .finish()
    }
}

impl Plan {
    /// The config snapshot the plan was computed against.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The application's tenant.
    pub fn tenant(&self) -> &str {
        self.tenant_chain.first().map_or("", String::as_str)
    }

    /// The servers to try, in order.
    pub fn chain(&self) -> Vec<&Server> {
        self.chain
            .iter()
            .filter_map(|n| self.config.servers.get(n))
            .collect()
    }

    /// The names of the servers to try, in order.
    pub fn server_names(&self) -> &[String] {
        &self.chain
    }

    /// The plan for a DSN to `to` about this message: null sender, the
    /// same servers starting with `first` (the one that accepted the
    /// message), no test mode.
    pub fn dsn_plan(self, to: String, first: &str) -> Plan {
        let mut chain = self.chain;
        if let Some(i) = chain.iter().position(|s| s == first) {
            chain.rotate_left(i);
        }
        Plan {
            envelope_from: String::new(),
            recipients: vec![RecipientPlan {
                original: to.clone(),
                verdict: RcptVerdict::Deliver,
            }],
            deliver_to: vec![to],
            redirected: Vec::new(),
            chain,
            dsn: true,
            kept_sender: None,
            subject_prefix: None,
            ..self
        }
    }

    /// The sender identity of a hop through `server`, each value with its
    /// source: the server's fixed values first, then the client's own
    /// sender when a route kept it, then application → tenant → system.
    pub fn identity(&self, server: &Server) -> Identity {
        let sourced = |v: String, source: Source| Sourced { value: v, source };
        let from_server =
            |v: Option<String>| v.map(|v| sourced(v, Source::Server(server.name.clone())));
        let sender = from_server(server.sender.as_ref().map(ToString::to_string))
            .or_else(|| {
                self.kept_sender
                    .as_ref()
                    .map(|r| sourced(self.envelope_from.clone(), Source::Route(r.clone())))
            })
            .or_else(|| self.sender.clone());
        let display_name = from_server(server.display_name.as_ref().map(|d| d.as_str().to_owned()))
            .or_else(|| self.display_name.clone());
        let reply_to = from_server(server.reply_to.as_ref().map(ToString::to_string))
            .or_else(|| self.reply_to.clone());
        Identity {
            sender,
            display_name,
            reply_to,
        }
    }

    /// The rewrite for a hop through `server` (see [`Plan::identity`]): a
    /// server's fixed sender wins over the application's, so failing over
    /// to another server can change the sender (PRODUCT §3.2). A sender a
    /// route kept is left as the client wrote it, envelope and From alike.
    pub fn rewrite_spec(&self, server: &Server) -> RewriteSpec {
        if self.dsn {
            // Our own report: only a server's fixed sender is applied, since
            // such a server refuses any other From.
            return RewriteSpec {
                sender: server.sender.as_ref().map(ToString::to_string),
                display_name: server
                    .sender
                    .as_ref()
                    .map(|_| "Mail Delivery System".to_owned()),
                ..RewriteSpec::default()
            };
        }
        let id = self.identity(server);
        RewriteSpec {
            sender: id
                .sender
                .filter(|s| !matches!(s.source, Source::Route(_)))
                .map(|s| s.value),
            display_name: id.display_name.map(|d| d.value),
            reply_to: id.reply_to.map(|r| r.value),
            // The prefix marks every message of a tenant in test mode,
            // also the copies that reach allow-listed recipients.
            subject_prefix: self.subject_prefix.clone(),
            original_recipients: self.redirected.clone(),
            ..RewriteSpec::default()
        }
    }
}
