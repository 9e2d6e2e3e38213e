//! Configuration: the one immutable, validated snapshot every other module
//! reads, and the load path that builds it.
//!
//! `load` reads the main file and its includes, deserialises every entity on
//! its own so that one mistake does not hide the next, and `validate` checks
//! references, ownership and safety rules, collecting every error with file,
//! line and key. Nothing outside this module sees unvalidated config.
//!
//! Each key is declared once, in `raw`, with its type and default; where no
//! resolution against the rest of the config is needed (`[system]`,
//! `[limits]`, `[health]`, `[reload]`, `[log]`, `[queue]`, listeners,
//! tenants, applications, routes, and `[admin]`/`[cluster]`, whose secrets
//! are read in place) that declaration is the validated type re-exported
//! here. The structs defined below are the validated twins of entities
//! that need resolution (servers, certificates, keys); [`SmtpServer`]
//! embeds the declared [`SmtpSettings`] instead of copying them.

mod load;
pub mod raw;
pub mod removal;
mod validate;
pub mod values;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use load::{
    DEFAULT_CONFIG, files_hash, load_default, load_file, load_str, source_hash, watch_hash,
};
pub use raw::{
    Admin, Application, BlacklistAction, Cluster, DeliveryMode, HealthSettings, LimitCounts,
    Limits, Listener, ListenerAuth, ListenerTls, Log, LogFormat, OnRedisError, QueueSettings,
    ReloadSettings, Route, Security, SmtpSettings, System, Tenant, UpstreamAuth,
};
use values::{BlacklistEntry, Cidr, EmailAddress, HeaderText, Limit, Secret};

/// One problem found while loading a config: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given or as found by an include glob.
    pub file: String,
    /// 1-based line, or 0 when the problem has no single place.
    pub line: usize,
    /// Dotted key path, e.g. `application.webshop.primary`.
    pub key: String,
    /// What is wrong, naming who refers to what.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.key, self.message
        )
    }
}

/// Every error of a refused config, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} configuration error(s); first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The validated configuration. Immutable; shared as `Arc<Config>`; a
/// session pins one for its whole life.
#[derive(Debug)]
pub struct Config {
    /// The main file (or `<embedded default>`), as named in messages.
    pub source: String,
    /// Every file read, main first: what a reload watches.
    pub files: Vec<PathBuf>,
    /// SHA-256 over the content of every file read, hex.
    pub hash: String,
    /// `[system]`.
    pub system: System,
    /// `[[listener]]`, in file order.
    pub listeners: Vec<Listener>,
    /// `[tls]`, loaded and checked.
    pub tls: Option<TlsSettings>,
    /// `[limits]` with defaults applied.
    pub limits: Limits,
    /// `[admin]`.
    pub admin: Option<Admin>,
    /// `[log]`.
    pub log: Log,
    /// `[health]`.
    pub health: HealthSettings,
    /// `[reload]`.
    pub reload: ReloadSettings,
    /// `[queue]`.
    pub queue: QueueSettings,
    /// `[cluster]`: Redis for shared send-limit counters, when set.
    pub cluster: Option<Cluster>,
    /// Every `[server.NAME]`.
    pub servers: BTreeMap<String, Server>,
    /// Every `[tenant.NAME]`.
    pub tenants: BTreeMap<String, Tenant>,
    /// Every `[application.NAME]`.
    pub applications: BTreeMap<String, Application>,
    /// `[[route]]`, in file order.
    pub routes: Vec<Route>,
    /// `[[dkim]]` keys, loaded.
    pub dkim: Vec<crate::dkim::DkimKey>,
    /// Things that are allowed but probably not meant (printed by check-config).
    pub warnings: Vec<ConfigError>,
    /// Files the config refers to: certificates, keys, CA and secret files.
    /// A reload re-reads them; the file watcher watches them too.
    pub referenced: Vec<PathBuf>,
    /// SHA-256 over the content of `referenced` at load time.
    pub referenced_hash: String,
    /// The file that defines each tenant (`"tenant NAME"`) and application
    /// (`"application NAME"`): a reload refuses to drop one that had
    /// traffic unless its file is still there and not blank.
    pub defined_in: BTreeMap<String, PathBuf>,
    /// The files read that hold more than white space.
    pub nonblank_files: BTreeSet<PathBuf>,
    /// Set by a reload that removed an application: until then, a client
    /// no application knows gets a 4xx (the removal may be a transient
    /// state of the files), never a 5xx that would make it bounce mail.
    pub unknown_transient_until: Option<std::time::Instant>,
    auth_index: HashMap<String, String>,
    ip_index: Vec<(Cidr, String)>,
}

/// The listener certificate, loaded.
#[derive(Clone)]
pub struct TlsSettings {
    /// Certificate path.
    pub certificate: PathBuf,
    /// Key path.
    pub private_key: PathBuf,
    /// The ready server config (TLS 1.2+ only).
    pub server_config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("certificate", &self.certificate)
            .field("private_key", &self.private_key)
            .finish_non_exhaustive()
    }
}

/// An upstream.
#[derive(Debug, Clone)]
pub struct Server {
    /// Its name.
    pub name: String,
    /// Owner tenant; `None` for a system server.
    pub tenant: Option<String>,
    /// Fixed sender.
    pub sender: Option<EmailAddress>,
    /// Fixed From display name.
    pub display_name: Option<HeaderText>,
    /// Fixed Reply-To.
    pub reply_to: Option<EmailAddress>,
    /// Send limit.
    pub limit: Option<Limit>,
    /// What the limit counts.
    pub limit_counts: LimitCounts,
    /// SMTP: most concurrent transactions (connections in use) at this
    /// server; `None`: no cap.
    pub max_connections: Option<usize>,
    /// Kind-specific settings.
    pub kind: ServerKind,
}

/// Kind-specific server settings.
#[derive(Debug, Clone)]
pub enum ServerKind {
    /// An SMTP upstream.
    Smtp(SmtpServer),
    /// A capture outbox.
    Capture(CaptureServer),
    /// Microsoft Graph sendMail.
    Graph(GraphServer),
}

/// OAuth2 token settings of a server (SMTP XOAUTH2, or derived for Graph).
#[derive(Debug, Clone, PartialEq)]
pub struct OAuth {
    /// The token endpoint (`https://`).
    pub token_url: String,
    /// Client (application) id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Secret,
    /// How a token is obtained.
    pub grant: OAuthGrant,
}

/// OAuth2 grant.
#[derive(Debug, Clone, PartialEq)]
pub enum OAuthGrant {
    /// Client credentials with a scope (Microsoft 365).
    ClientCredentials {
        /// E.g. `https://outlook.office365.com/.default`.
        scope: String,
    },
    /// A long-lived refresh token (Google).
    RefreshToken {
        /// The refresh token.
        refresh_token: Secret,
        /// Optional scope.
        scope: Option<String>,
    },
}

/// Microsoft Graph upstream settings, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphServer {
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// The mailbox (user id or UPN) that sends.
    pub mailbox: String,
    /// Graph base URL without a trailing slash, e.g. `https://graph.microsoft.com`.
    pub graph_url: String,
    /// Token settings: `{authority}/{tenant_id}/oauth2/v2.0/token`, scope
    /// `{graph_url}/.default`, client credentials.
    pub oauth: OAuth,
    /// Extra CA file for the token endpoint and Graph.
    pub ca_file: Option<PathBuf>,
}

/// SMTP upstream settings, defaults applied: the keys used as written are
/// the embedded [`SmtpSettings`], declared once in `raw.rs` (and read
/// through `Deref`, e.g. `server.connect_timeout`); the fields here are
/// the ones `validate::server` resolves from other keys or from files.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpServer {
    /// Host name or IP.
    pub host: String,
    /// Port (default from `security`).
    pub port: u16,
    /// Extra CA file, resolved against the config's directory.
    pub ca_file: Option<PathBuf>,
    /// TLS name to verify (default: `host`).
    pub tls_name: String,
    /// EHLO name (default: `system.hostname`).
    pub helo_name: String,
    /// Token settings for `auth = "xoauth2"`.
    pub oauth: Option<OAuth>,
    /// Every other SMTP key, as written or defaulted.
    pub settings: SmtpSettings,
}

impl std::ops::Deref for SmtpServer {
    type Target = SmtpSettings;
    fn deref(&self) -> &SmtpSettings {
        &self.settings
    }
}

/// Capture outbox settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureServer {
    /// Directory written to.
    pub path: PathBuf,
}

/// Test mode as resolved for a tenant or application: read from a
/// `test_mode = { ... }` table through [`raw::RawTestMode`], which refuses
/// one without `redirect_to` unless it is `enabled = false`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(try_from = "raw::RawTestMode")]
pub enum TestModeSetting {
    /// Explicitly off (overrides an inherited test mode).
    Off,
    /// On.
    On(TestMode),
}

/// An active test mode.
#[derive(Debug, Clone, PartialEq)]
pub struct TestMode {
    /// The test address.
    pub redirect_to: EmailAddress,
    /// Subject prefix.
    pub subject_prefix: Option<HeaderText>,
    /// Recipients still delivered normally.
    pub allow: Vec<BlacklistEntry>,
}

impl Config {
    /// The tenant and its ancestors, nearest first. Cycles were refused at
    /// load, but the walk is bounded anyway.
    pub fn tenant_chain<'a>(&'a self, tenant: &str) -> Vec<&'a Tenant> {
        let mut out: Vec<&Tenant> = Vec::new();
        let mut next = self.tenants.get(tenant);
        while let Some(t) = next {
            if out.iter().any(|o| o.name == t.name) || out.len() > self.tenants.len() {
                break;
            }
            out.push(t);
            next = t.parent.as_deref().and_then(|p| self.tenants.get(p));
        }
        out
    }

    /// Whether `tenant` is `ancestor` or one of its locations.
    pub fn is_within(&self, tenant: &str, ancestor: &str) -> bool {
        self.tenant_chain(tenant).iter().any(|t| t.name == ancestor)
    }

    /// The nearest value set along the tenant chain.
    pub fn inherited<'a, T: ?Sized>(
        &'a self,
        tenant: &str,
        get: impl Fn(&'a Tenant) -> Option<&'a T>,
    ) -> Option<&'a T> {
        self.tenant_chain(tenant).into_iter().find_map(get)
    }

    /// Whether the tenant may use system servers (inherited, default true).
    pub fn tenant_uses_system_server(&self, tenant: &str) -> bool {
        self.tenant_chain(tenant)
            .iter()
            .find_map(|t| t.use_system_server)
            .unwrap_or(true)
    }

    /// Whether the tenant may own servers (inherited, default true).
    pub fn tenant_owns_servers(&self, tenant: &str) -> bool {
        self.tenant_chain(tenant)
            .iter()
            .find_map(|t| t.own_servers)
            .unwrap_or(true)
    }

    /// Whether `tenant` may send through `server`: its own or an ancestor's
    /// server, or a system server when allowed.
    pub fn tenant_may_use(&self, tenant: &str, server: &Server) -> bool {
        match &server.tenant {
            Some(owner) => self.is_within(tenant, owner),
            None => self.tenant_uses_system_server(tenant),
        }
    }

    /// The application that authenticates as `user`.
    pub fn application_by_auth_user(&self, user: &str) -> Option<&Application> {
        self.auth_index
            .get(user)
            .and_then(|n| self.applications.get(n))
    }

    /// The application whose `client_ips` hold `ip`, longest prefix first.
    pub fn application_by_ip(&self, ip: IpAddr) -> Option<&Application> {
        self.ip_index
            .iter()
            .find(|(c, _)| c.contains(ip))
            .and_then(|(_, n)| self.applications.get(n))
    }

    /// Whether some client can be identified without AUTH: an application
    /// owns addresses, or a listener is bound to one.
    pub fn identifies_without_auth(&self) -> bool {
        !self.ip_index.is_empty() || self.listeners.iter().any(|l| l.application.is_some())
    }

    /// Whether any application can authenticate.
    pub fn has_auth_users(&self) -> bool {
        !self.auth_index.is_empty()
    }
}
#[cfg(test)]
mod tests;
