//! The config file's shape as serde sees it (PRODUCT §4): one struct per
//! table, `deny_unknown_fields` everywhere, value types parsed on the way in.
//!
//! Every key is declared here once: its doc comment, its type (a value
//! type from `values` that parses itself) and its default, beside it.
//! Three kinds of struct:
//!
//! - **Sections declared with `section!`** (`[system]`, `[limits]`,
//!   `[health]`, `[reload]`, `[log]`, `[queue]`): one line per key,
//!   `name: Type = default`. Missing keys take the default, unknown keys
//!   are refused, and the struct *is* the validated type the rest of the
//!   code reads (`Config::limits` is a [`Limits`]); `validate` only adds
//!   range checks that need a file position. Adding a key with a default
//!   touches this file only.
//! - **Entities that are their own validated type** ([`Listener`],
//!   [`Tenant`], [`Application`], [`Route`], [`Admin`], [`Cluster`]):
//!   defaults on the fields with `#[serde(default)]`; `validate` fills in
//!   what comes from elsewhere (the name from the table key, a listener's
//!   name from its address, a route's scope from its server), reads
//!   secrets in place ([`Secret`] deserialises its source) and checks
//!   references.
//! - **[`SmtpSettings`]**, declared with `section!`: the SMTP server keys
//!   used as written. `load` reads them from the `[server.NAME]` table as
//!   a part of their own; the validated `SmtpServer` embeds the struct.
//! - **`Raw*` structs** for entities whose validated form needs the file
//!   system or a different shape ([`RawServer`]: the rest of a server's
//!   keys, each tagged with its kinds, becomes per-kind settings with
//!   secrets, CA files and defaults computed from other keys; [`RawTls`],
//!   [`RawDkim`]: keys loaded): defaults are still on the raw fields, and
//!   `validate` builds their twins in `config/mod.rs`.

use super::values::{
    BlacklistEntry, Cidr, Dur, EmailAddress, HeaderText, Limit, Secret, SecretSource,
};
use super::{TestMode, TestModeSetting};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Declares a config table whose keys all have defaults, one line per key:
///
/// ```text
/// section! {
///     /// `[health]`: ...
///     pub struct HealthSettings {
///         /// Consecutive failures before a server is skipped. Default 3.
///         pub failures: u32 = 3,
///     }
/// }
/// ```
///
/// It expands to the struct (`Debug`, `Clone`, `Deserialize` with
/// `deny_unknown_fields` and `default`) and its `Default` impl built from
/// the `= default` of each key. Field attributes (e.g.
/// `#[serde(deserialize_with = "...")]`) pass through.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }
        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }
    };
}

section! {
    /// `[system]`: global switches and the system side of every inherited
    /// setting. Declared once; `validate::system` resolves `spool` against
    /// the config's directory and checks the rest.
    pub struct System {
        /// Name used in the greeting, in EHLO upstream and in `Received:`.
        /// Default: the machine's host name.
        #[serde(deserialize_with = "super::values::plain::header_text")]
        pub hostname: String = machine_hostname(),
        /// `false` refuses all sending with a 4xx, whatever tenants configure.
        /// Default `true`.
        pub enabled: bool = true,
        /// `"queue"` (default: the client's 250 follows the message's sync to
        /// the spool, or a server's acceptance of every recipient on the
        /// first attempt, whichever comes first; then it is delivered in the
        /// background with retries) or
        /// `"direct"` (the client's reply waits for the upstream's answer).
        pub delivery: DeliveryMode = DeliveryMode::Queue,
        /// Directory for the queue and persistent state (relative to the
        /// config). Default `"spool"`.
        pub spool: PathBuf = PathBuf::from("spool"),
        /// The system default server, last in every chain that may use it.
        pub default_server: Option<String> = None,
        /// The system's own fallback, tried after `default_server`. This is the
        /// fallback PRODUCT §3.6 calls implied: an application whose primary is
        /// the system default server may not set its own.
        pub fallback_server: Option<String> = None,
        /// Sender used when neither server, application nor tenant sets one.
        pub default_sender: Option<EmailAddress> = None,
        /// Display name used when neither application nor tenant sets one.
        pub display_name: Option<HeaderText> = None,
        /// Reply-To used when neither application nor tenant sets one.
        pub reply_to: Option<EmailAddress> = None,
        /// Where delivery status notifications go when the envelope sender is
        /// empty or when a tenant routes bounces centrally.
        pub bounce_address: Option<EmailAddress> = None,
        /// System-wide suppression list: addresses or `@domain`.
        pub blacklist: Vec<BlacklistEntry> = Vec::new(),
        /// What happens to a recipient on the system list: `drop` (default)
        /// or `reject`.
        pub blacklist_action: BlacklistAction = BlacklistAction::Drop,
        /// Threads of the async runtime. Default: one per CPU. Read at start
        /// only (a reload does not change it).
        pub worker_threads: Option<usize> = None,
    }
}

/// The default of `system.hostname`: the machine's host name, or
/// `localhost` when it is empty or not usable in SMTP.
fn machine_hostname() -> String {
    let h = gethostname::gethostname().to_string_lossy().into_owned();
    if h.is_empty() || h.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "localhost".to_owned()
    } else {
        h
    }
}

/// Delivery mode (PRODUCT §3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Synchronous relay: the DATA reply reflects the upstream result.
    Direct,
    /// Store and forward through the durable spool.
    Queue,
}

/// Action of a blacklist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlacklistAction {
    /// Accept the RCPT, deliver nothing to it; logged and counted.
    #[default]
    Drop,
    /// Refuse the RCPT with `550 5.7.1`.
    Reject,
}

/// `[[listener]]`: one inbound address. Declared once: this is also the
/// validated type (`Config::listeners`); each key's default is written on
/// it (`#[serde(default)]`: `false`, empty, or the enum's `#[default]`
/// variant). `validate::listener` checks it against the rest of the config
/// and fills in `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name used in logs and metric labels. Default (also when empty): the
    /// address, e.g. `127.0.0.1:2525`.
    #[serde(default)]
    pub name: String,
    /// `host:port` to bind, e.g. `"127.0.0.1:2525"` or `"[::]:587"`.
    #[serde(deserialize_with = "super::values::plain::socket_addr")]
    pub address: SocketAddr,
    /// `none` (default), `starttls` (offered) or `implicit` (TLS from the first byte).
    #[serde(default)]
    pub tls: ListenerTls,
    /// `none` (no AUTH offered), `optional` (default) or `required`.
    #[serde(default)]
    pub auth: ListenerAuth,
    /// Offer AUTH without TLS (legacy LAN clients). Default `false`.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// Every client on this listener is this application (unless it
    /// authenticates as another one).
    pub application: Option<String>,
    /// Accept bare LF line endings in DATA and normalise them to CRLF.
    /// Default `false` (refused with 500 5.6.0 unless the application allows it).
    #[serde(default)]
    pub allow_bare_lf: bool,
    /// Require a PROXY protocol v1 or v2 header (from a TCP load balancer)
    /// before SMTP; its client address then stands for the client. Default `false`.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Peers (addresses or networks) allowed to send the PROXY header; any
    /// other peer is refused. Required with `proxy_protocol = true`.
    #[serde(default)]
    pub proxy_trusted: Vec<Cidr>,
}

/// TLS mode of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plaintext only (the default).
    #[default]
    None,
    /// Plaintext with STARTTLS offered.
    Starttls,
    /// TLS handshake first (port 465 style).
    Implicit,
}

/// AUTH requirement of a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerAuth {
    /// AUTH is not offered; clients are identified by listener or address.
    None,
    /// AUTH offered; unauthenticated clients are identified by listener or
    /// address (the default).
    #[default]
    Optional,
    /// AUTH required before MAIL.
    Required,
}

/// `[tls]`: the listener certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub certificate: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
}

section! {
    /// `[limits]`: inbound limits. Declared once, here, with the defaults;
    /// `validate::sections` checks the ranges.
    pub struct Limits {
        /// Largest message accepted (SIZE and DATA). Default `"25MB"`.
        #[serde(deserialize_with = "super::values::plain::bytes")]
        pub max_message_size: u64 = 25 << 20,
        /// Most recipients per message. Default 100.
        pub max_recipients: usize = 100,
        /// Most concurrent sessions over all listeners. Default 1000.
        pub max_connections: usize = 1000,
        /// Time allowed for each whole command line, counted from the previous
        /// reply (not reset by each byte that arrives). Default `"5m"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub command_timeout: Duration = Duration::from_secs(300),
        /// Time allowed for the whole DATA/BDAT phase. Default `"10m"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub data_timeout: Duration = Duration::from_secs(600),
        /// Longest command line in bytes (RFC 5321 asks for at least 512).
        /// Default 4096. Message lines are not limited: the body is relayed as
        /// it is, and an upstream's refusal is passed back.
        pub max_line_length: usize = 4096,
        /// Messages larger than this are spooled to a temporary file instead of
        /// memory. Default `"1MB"`.
        #[serde(deserialize_with = "super::values::plain::bytes")]
        pub memory_threshold: u64 = 1 << 20,
        /// Failed AUTH attempts per client address before a lockout. Default 5.
        pub auth_failures: u32 = 5,
        /// How long an address stays locked out after too many failures. Default `"15m"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub auth_lockout: Duration = Duration::from_secs(900),
        /// At shutdown, how long transactions in progress may take to finish. Default `"30s"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub shutdown_grace: Duration = Duration::from_secs(30),
        /// Most concurrent sessions from one client address that no application
        /// owns (IPv6: per /64), like Postfix's
        /// `smtpd_client_connection_count_limit`. Default 50 (Postfix's too).
        pub max_connections_per_client: usize = 50,
        /// Longest a session may last; at the next command after it, the client
        /// gets `421 4.4.2` (a message in transfer may finish). Default `"1h"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub max_session_time: Duration = Duration::from_secs(3600),
        /// Idle time allowed between commands while a session is neither
        /// authenticated nor identified by its address or listener. Default `"20s"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub unidentified_timeout: Duration = Duration::from_secs(20),
    }
}

/// `[admin]`: the admin and metrics port. Declared once: this is also the
/// validated type (`Config::admin`); `validate::sections` reads the token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `host:port` for `/metrics`, `/healthz`, `/readyz` and the admin API.
    #[serde(deserialize_with = "super::values::plain::socket_addr")]
    pub address: SocketAddr,
    /// Bearer token for the admin API (`/api/v1/…`; a secret: string,
    /// `{ env }` or `{ file }`); without one the API is off.
    pub token: Option<Secret>,
    /// Serve the status page (`GET /`) without the token even when the
    /// admin address is not loopback. Default `false`: open on a loopback
    /// address, behind the token otherwise.
    #[serde(default)]
    pub status_public: bool,
}

/// `[cluster]`: several instances sharing state (PRODUCT §3.10). Declared
/// once: this is also the validated type (`Config::cluster`);
/// `validate::sections` reads `redis` and checks it is a Redis URL.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Redis URL (`redis://[:password@]host:port[/db]`; a secret: string,
    /// `{ env }` or `{ file }`). Send-limit counters are shared through it.
    /// Required (`validate` says so when the file did not set it).
    #[serde(default)]
    pub redis: Secret,
    /// When Redis cannot be reached: `local` (default; count in this
    /// instance alone, with a warning and a metric) or `closed` (treat
    /// every limited server as over its limit).
    #[serde(default)]
    pub on_redis_error: OnRedisError,
}

/// What send limits do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Count locally (this instance's uses only).
    #[default]
    Local,
    /// Treat every limited server as over its limit.
    Closed,
}

section! {
    /// `[health]`: when an upstream is considered down (PRODUCT §3.6).
    pub struct HealthSettings {
        /// Consecutive connection, TLS or AUTH failures before a server is
        /// skipped. Default 3.
        pub failures: u32 = 3,
        /// How long a server that is down is skipped before it is tried again.
        /// Default `"30s"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub cooldown: Duration = Duration::from_secs(30),
    }
}

section! {
    /// `[queue]`: retries of queued messages (PRODUCT §3.8).
    pub struct QueueSettings {
        /// First retry after about this long (jittered by ±20%). Default `"1m"`.
        pub min_backoff: Dur = Dur(Duration::from_secs(60)),
        /// Retries back off exponentially (doubling) up to this. Default `"1h"`.
        pub max_backoff: Dur = Dur(Duration::from_secs(3600)),
        /// A message still not delivered after this long gets a DSN and leaves
        /// the queue. Default `"5d"`.
        pub max_age: Dur = Dur(Duration::from_secs(5 * 86400)),
        /// Deliveries from the queue that may run at once. Default 100.
        pub concurrency: u32 = 100,
    }
}

section! {
    /// `[reload]`: hot reload (PRODUCT §3.9).
    pub struct ReloadSettings {
        /// Reload when the content of the config file, an included file, or a
        /// certificate, key, CA or secret file they name changes (checked every
        /// `interval`). Default `true`. SIGHUP always reloads.
        pub watch: bool = true,
        /// How often the files are checked. Default `"2s"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub interval: Duration = Duration::from_secs(2),
        /// Probe new or changed SMTP servers (connect, TLS, AUTH) before a new
        /// config goes live; a server that fails keeps the old config in place.
        /// Default `true`.
        pub probe: bool = true,
    }
}

section! {
    /// `[log]`: log output.
    pub struct Log {
        /// `text` (default) or `json`.
        pub format: LogFormat = LogFormat::Text,
        /// A tracing filter such as `"info"` or `"smarthost=debug"`. Default `"info"`.
        pub level: String = "info".to_owned(),
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable key=value lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Declares `RawServer` with each key's kinds written before it, once:
/// `[Smtp] pub host: Option<String>`, `[Smtp, Graph] pub ca_file: …`, or
/// `[]` for a key of every kind. It expands to the struct (attributes pass
/// through) and `RawServer::kinds_of`, which answers from these tags (and
/// from [`SmtpSettings`], whose keys are all SMTP keys) for the "does not
/// apply to a server of kind" check. Keys are the field names: no field
/// may be renamed with `#[serde(rename)]`.
macro_rules! server_table {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                [$($kind:ident),*] pub $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }
        impl $name {
            /// The kinds a kind-specific key applies to (`None`: every
            /// kind, or not a key of a server).
            pub fn kinds_of(key: &str) -> Option<&'static [ServerKindName]> {
                if keys_of::<SmtpSettings>().contains(&key) {
                    return Some(&[ServerKindName::Smtp]);
                }
                $(
                    if key == stringify!($field) {
                        let kinds: &'static [ServerKindName] = &[$(ServerKindName::$kind),*];
                        return (!kinds.is_empty()).then_some(kinds);
                    }
                )*
                None
            }
        }
    };
}

server_table! {
    /// `[server.NAME]`: an upstream. One flat table for every kind, so keys
    /// of another kind can be refused by name. `load` reads it in two parts:
    /// the keys of [`SmtpSettings`] (found by [`keys_of`]) into `smtp`, the
    /// rest into this struct, each with its own errors at the server's path.
    /// `validate::server` resolves what depends on other keys or on files
    /// (`port`, `tls_name`, `helo_name`, `ca_file`, `oauth`), reads the
    /// password in `smtp` and embeds `smtp` in the validated
    /// [`super::SmtpServer`]. The
    /// `[Kind]` before each key is the kinds it applies to (`[]`: every
    /// kind), read by `RawServer::kinds_of`; a key of another kind is found
    /// by the keys the file set (`Located::keys`), so it is refused even
    /// when it has a default.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RawServer {
        /// `smtp` (default), `capture` or `graph`.
        #[serde(default)]
        [] pub kind: ServerKindName,
        /// Owning tenant; system servers name none.
        [] pub tenant: Option<String>,
        /// SMTP: host name or IP address.
        [Smtp] pub host: Option<String>,
        /// SMTP: port. Default 465 for `implicit`, else 587 (25 for `none`).
        [Smtp] pub port: Option<u16>,
        /// Fixed sender: every message through this server uses it; only the
        /// display name is customised.
        [] pub sender: Option<EmailAddress>,
        /// From display name on every message through this server; wins over
        /// the application's, the tenant's and the system's.
        [] pub display_name: Option<HeaderText>,
        /// Reply-To on every message through this server; wins over the
        /// application's, the tenant's and the system's.
        [] pub reply_to: Option<EmailAddress>,
        /// Send limit such as `"10000/day"`.
        [] pub limit: Option<Limit>,
        /// What the limit counts: `messages` (default) or `recipients`.
        #[serde(default)]
        [] pub limit_counts: LimitCounts,
        /// SMTP: extra PEM CA certificates to trust for this server.
        [Smtp, Graph] pub ca_file: Option<String>,
        /// SMTP: TLS server name to verify, when `host` is an IP address.
        [Smtp] pub tls_name: Option<String>,
        /// SMTP: name sent in EHLO. Default: `system.hostname`.
        [Smtp] pub helo_name: Option<String>,
        /// SMTP: most concurrent connections (transactions) to this server
        /// across every session and the queue; a delivery waits for a slot up
        /// to `connect_timeout`, then fails over (direct) or defers (queue).
        /// Default: no cap.
        [Smtp] pub max_connections: Option<usize>,
        /// Capture: the directory messages are written to (relative to the config).
        [Capture] pub path: Option<String>,
        /// Graph: Azure AD tenant id.
        [Graph] pub tenant_id: Option<String>,
        /// Graph: application (client) id.
        [Graph] pub client_id: Option<String>,
        /// Graph: client secret (string, `{ env }` or `{ file }`).
        [Graph] pub client_secret: Option<SecretSource>,
        /// Graph: the mailbox (user id or UPN) that sends; also the server's
        /// fixed sender unless `sender` is set.
        [Graph] pub mailbox: Option<EmailAddress>,
        /// Graph: token authority. Default `"https://login.microsoftonline.com"`.
        #[serde(default = "authority")]
        [Graph] pub authority: String,
        /// Graph: API base URL. Default `"https://graph.microsoft.com"`.
        #[serde(default = "graph_url")]
        [Graph] pub graph_url: String,
        /// SMTP with `auth = "xoauth2"`: where and how tokens are fetched.
        [Smtp] pub oauth: Option<RawOAuth>,
        /// The SMTP keys declared in [`SmtpSettings`]: not keys of this struct
        /// (`load` deserialises them on their own and puts them here).
        #[serde(skip)]
        [] pub smtp: SmtpSettings,
    }
}

section! {
    /// The keys of an SMTP `[server.NAME]` whose value is used as written:
    /// declared once, here, with the defaults. `load` reads them from the
    /// server's table (`RawServer::smtp`), the "does not apply to a server
    /// of kind" check knows them by [`keys_of`], the validated
    /// [`super::SmtpServer`] embeds this struct as it is (and derefs to
    /// it), and the pool's fingerprint hashes all of it but the pool's own
    /// two keys. Adding an SMTP key with a default is one line here;
    /// `validate::server` has only the range checks.
    #[derive(PartialEq, Eq, Hash)]
    pub struct SmtpSettings {
        /// SMTP: `none`, `auto`, `implicit`, `starttls`, `starttls-when-available`. Default `auto`.
        pub security: Security = Security::Auto,
        /// SMTP: AUTH user name; AUTH is used when set.
        pub username: Option<String> = None,
        /// SMTP: AUTH password (a secret: string, `{ env }` or `{ file }`,
        /// read by `validate` relative to the config file).
        pub password: Option<Secret> = None,
        /// SMTP: `none`, `plain`, `login`, `xoauth2`. Default: what the server offers.
        pub auth: Option<UpstreamAuth> = None,
        /// SMTP: TCP connect timeout. Default `"10s"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub connect_timeout: Duration = Duration::from_secs(10),
        /// SMTP: timeout for the greeting and each command. Default `"60s"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub command_timeout: Duration = Duration::from_secs(60),
        /// SMTP: timeout for the data phase. Default `"10m"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub data_timeout: Duration = Duration::from_secs(600),
        /// SMTP: skip certificate verification (lab servers only). Default `false`.
        pub accept_invalid_certs: bool = false,
        /// SMTP: most idle connections kept open to this server for reuse.
        /// Default 100: with fewer than the concurrent deliveries, connections
        /// are opened and closed per message (at 100 concurrent senders a pool
        /// of 32 cost 40% of the throughput, bench/README.md); idle ones close
        /// after `pool_idle_timeout`, so the pool shrinks when the load drops.
        pub pool_size: usize = 100,
        /// SMTP: how long an idle pooled connection is kept. Default `"30s"`.
        #[serde(deserialize_with = "super::values::plain::duration")]
        pub pool_idle_timeout: Duration = Duration::from_secs(30),
    }
}

/// The keys a `#[derive(Deserialize)]` struct reads, in declaration order:
/// serde hands them to `deserialize_struct`, and this deserializer does
/// nothing but record them. So a list of keys (which table a key belongs
/// to, which server kind it applies to) is derived from the struct, never
/// written a second time.
pub fn keys_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor, value};
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Error::custom("keys recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut keys));
    keys
}

/// Default of a Graph server's `authority`.
fn authority() -> String {
    "https://login.microsoftonline.com".to_owned()
}

/// Default of a Graph server's `graph_url`.
fn graph_url() -> String {
    "https://graph.microsoft.com".to_owned()
}

/// `oauth = { ... }` of an SMTP server with `auth = "xoauth2"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    /// The token endpoint (`https://`).
    pub token_url: String,
    /// Client (application) id.
    pub client_id: String,
    /// Client secret (string, `{ env }` or `{ file }`).
    pub client_secret: SecretSource,
    /// Client-credentials grant: the scope, e.g.
    /// `"https://outlook.office365.com/.default"`.
    pub scope: Option<String>,
    /// Refresh-token grant (Google): the refresh token (string, `{ env }`
    /// or `{ file }`). With it, `scope` is optional.
    pub refresh_token: Option<SecretSource>,
}

/// Upstream kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKindName {
    /// An SMTP server (the default).
    #[default]
    Smtp,
    /// A local capture outbox.
    Capture,
    /// Microsoft Graph sendMail.
    Graph,
}

/// Upstream TLS mode (PRODUCT §3.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Security {
    /// Plaintext only.
    None,
    /// Port 465: implicit; otherwise STARTTLS when offered (the default).
    #[default]
    Auto,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// STARTTLS required; fail (and fail over) when not offered.
    Starttls,
    /// STARTTLS when offered, plaintext otherwise.
    StarttlsWhenAvailable,
}

/// Upstream AUTH mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamAuth {
    /// No AUTH even when a username is set.
    None,
    /// AUTH PLAIN.
    Plain,
    /// AUTH LOGIN.
    Login,
    /// AUTH XOAUTH2 with tokens fetched by the relay.
    Xoauth2,
}

/// What a send limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitCounts {
    /// One per message (the default).
    #[default]
    Messages,
    /// One per recipient (as most providers count).
    Recipients,
}

/// Test mode of a tenant or application (PRODUCT §3.4) as written; it
/// becomes a [`TestModeSetting`] as it is read.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestMode {
    /// `false` switches off a test mode inherited from a tenant. Default `true`.
    pub enabled: Option<bool>,
    /// Every recipient not on `allow` is replaced by this address.
    pub redirect_to: Option<EmailAddress>,
    /// Prepended to the Subject, e.g. `"[TEST] "`.
    pub subject_prefix: Option<HeaderText>,
    /// Recipients (address or `@domain`) that still receive mail normally.
    #[serde(default)]
    pub allow: Vec<BlacklistEntry>,
}

impl TryFrom<RawTestMode> for TestModeSetting {
    type Error = &'static str;
    fn try_from(t: RawTestMode) -> Result<Self, Self::Error> {
        if t.enabled == Some(false) {
            return Ok(TestModeSetting::Off);
        }
        match t.redirect_to {
            Some(redirect_to) => Ok(TestModeSetting::On(TestMode {
                redirect_to,
                subject_prefix: t.subject_prefix,
                allow: t.allow,
            })),
            None => Err(
                "test mode needs redirect_to (or enabled = false to switch an inherited test mode off)",
            ),
        }
    }
}

/// `[tenant.NAME]`: a customer or one of its locations. Declared once:
/// this is also the validated type (`Config::tenants`). Values stay as
/// written — `None` means "not set here", so it is inherited from the
/// parent; the defaults at the end of the chain are applied where they are
/// read (`Config::tenant_uses_system_server` and `policy`).
/// `validate::tenant` checks parents, cycles and default servers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Its name: the table's key (set by `validate`, not a key of its own).
    #[serde(skip)]
    pub name: String,
    /// Head office this location inherits from.
    pub parent: Option<String>,
    /// `false` refuses this tenant's mail with a 4xx. Inherited. Default `true`.
    pub enabled: Option<bool>,
    /// May this tenant's mail go through system servers? Inherited. Default `true`.
    pub use_system_server: Option<bool>,
    /// May this tenant define servers? Inherited. Default `true`.
    pub own_servers: Option<bool>,
    /// The tenant's default server, after the application's own. Inherited.
    pub default_server: Option<String>,
    /// Sender address. Inherited.
    pub sender: Option<EmailAddress>,
    /// From display name. Inherited.
    pub display_name: Option<HeaderText>,
    /// Reply-To address. Inherited.
    pub reply_to: Option<EmailAddress>,
    /// Where this tenant's delivery status notifications go. Inherited.
    pub bounce_address: Option<EmailAddress>,
    /// This tenant's suppression list (a location also gets its parent's).
    #[serde(default)]
    pub blacklist: Vec<BlacklistEntry>,
    /// Action for this tenant's list: `drop` (default) or `reject`.
    #[serde(default)]
    pub blacklist_action: BlacklistAction,
    /// Test mode. Inherited as a whole.
    pub test_mode: Option<TestModeSetting>,
}

/// `[application.NAME]`: a sending program of a tenant. Declared once:
/// this is also the validated type (`Config::applications`);
/// `validate::application` checks it and builds the AUTH-user and
/// client-network indexes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// Its name: the table's key (set by `validate`, not a key of its own).
    #[serde(skip)]
    pub name: String,
    /// The tenant it belongs to. Required (`validate` says so when the key
    /// is missing).
    #[serde(default)]
    pub tenant: String,
    /// SMTP AUTH user that identifies it.
    pub auth_user: Option<String>,
    /// argon2id hash of its password (`smarthost hash-password`).
    pub password_hash: Option<String>,
    /// Client networks that identify it without AUTH.
    #[serde(default)]
    pub client_ips: Vec<Cidr>,
    /// Its primary server.
    pub primary: Option<String>,
    /// Its fallback server.
    pub fallback: Option<String>,
    /// From display name.
    pub display_name: Option<HeaderText>,
    /// Sender address.
    pub sender: Option<EmailAddress>,
    /// Reply-To address.
    pub reply_to: Option<EmailAddress>,
    /// Test mode; overrides the tenant's as a whole.
    pub test_mode: Option<TestModeSetting>,
    /// Accept bare LF line endings from this application. Default: the listener's setting.
    pub allow_bare_lf: Option<bool>,
}

/// `[[dkim]]`: a DKIM signing key (PRODUCT §3.2, §4.1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDkim {
    /// Signing domain (`d=`): signs mail whose From domain is this domain
    /// or below it (the nearest key wins).
    pub domain: String,
    /// Selector (`s=`): the record lives at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// PEM private key, RSA (2048-4096 bits) or Ed25519; normally
    /// `{ file = "dkim/DOMAIN.pem" }`.
    pub private_key: SecretSource,
    /// Owner tenant: the key signs only that tenant's (and its locations')
    /// mail. Required for keys in included files. Default: a system key.
    pub tenant: Option<String>,
}

/// `[[route]]`: a sender filter that selects a server. Declared once: this
/// is also the validated type (`Config::routes`), where `tenant` holds the
/// resolved scope.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Full address or `@domain`.
    pub sender: BlacklistEntry,
    /// The server it selects.
    pub server: String,
    /// Restrict the route to one tenant and its locations. Default: the
    /// server's owner (filled in by `validate`), or every tenant (`None`)
    /// for a system server.
    pub tenant: Option<String>,
}
