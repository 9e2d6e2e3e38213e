//! Validation: raw entities → the immutable [`Config`] snapshot.
//!
//! Applies defaults, resolves relative paths and secrets, loads the TLS
//! certificate, and checks every cross-reference and safety rule of PRODUCT
//! §3.9. Every problem is collected with file, line and key; the config is
//! refused if there is any.

use super::load::{KeyPath, Located, RawDoc, Sources};
use super::raw::{
    BlacklistAction, DeliveryMode, LimitCounts, ListenerAuth, ListenerTls, RawServer, RawTestMode,
    Security, ServerKindName, UpstreamAuth,
};
use super::values::Cidr;
use super::{
    Admin, Application, CaptureServer, Config, ConfigError, ConfigErrors, GraphServer, Listener,
    OAuth, OAuthGrant, Route, Server, ServerKind, SmtpServer, System, Tenant, TestMode,
    TestModeSetting, TlsSettings,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Idle connections kept per SMTP server by default. With fewer than the
/// concurrent deliveries, connections are opened and closed per message:
/// at 100 concurrent senders a pool of 32 cost 40% of the throughput
/// (bench/README.md). Idle ones close after `pool_idle_timeout`, so the
/// pool shrinks when the load drops.
const DEFAULT_POOL_SIZE: usize = 100;

struct Ctx<'s, 't> {
    src: &'s Sources<'t>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
    /// Files the config refers to (certificates, keys, CA and secret files).
    referenced: Vec<PathBuf>,
    /// Entities that had errors and could not be built: they count as
    /// defined for references (their own errors are already reported).
    broken: Vec<(&'static str, String)>,
}

impl Ctx<'_, '_> {
    /// An error about a reference to `kind` `name`, unless that entity is
    /// defined but broken (its errors say what is wrong; this would only
    /// cascade).
    fn err_ref(
        &mut self,
        kind: &'static str,
        name: &str,
        file: usize,
        path: &KeyPath,
        msg: impl Into<String>,
    ) {
        if !self.broken.iter().any(|(k, n)| *k == kind && n == name) {
            self.err(file, path, msg);
        }
    }
    fn err(&mut self, file: usize, path: &KeyPath, msg: impl Into<String>) {
        self.errors.push(self.src.error(file, path, msg));
    }
    fn warn(&mut self, file: usize, path: &KeyPath, msg: impl Into<String>) {
        self.warnings.push(self.src.error(file, path, msg));
    }
    /// Reads a secret, remembering its file (if any) for the watcher and
    /// reporting a failure at `path`.
    fn secret(
        &mut self,
        file: usize,
        path: &KeyPath,
        source: &super::values::SecretSource,
    ) -> Option<super::values::Secret> {
        self.secret_with(file, path, source, false)
    }

    /// [`Ctx::secret`], for secrets that may span lines (PEM keys) when `multiline`.
    fn secret_with(
        &mut self,
        file: usize,
        path: &KeyPath,
        source: &super::values::SecretSource,
        multiline: bool,
    ) -> Option<super::values::Secret> {
        let base = self.src.base_dir(file);
        self.referenced.extend(source.file_path(&base));
        let resolved = if multiline {
            source.resolve_multiline(&base)
        } else {
            source.resolve(&base)
        };
        match resolved {
            Ok(s) => Some(s),
            Err(m) => {
                self.err(file, path, m);
                None
            }
        }
    }

    fn resolve_path(&self, file: usize, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.src.base_dir(file).join(p)
        }
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| format!("invalid port in {s:?}"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse().map_err(|_| {
        format!(
            "invalid address {s:?}: expected IP:port such as \"127.0.0.1:2525\" or \"[::]:587\""
        )
    })
}

fn system_hostname() -> String {
    let h = gethostname::gethostname().to_string_lossy().into_owned();
    if h.is_empty() || h.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "localhost".to_owned()
    } else {
        h
    }
}

fn test_mode(
    cx: &mut Ctx<'_, '_>,
    file: usize,
    path: &KeyPath,
    t: &Option<RawTestMode>,
) -> Option<TestModeSetting> {
    let t = t.as_ref()?;
    if t.enabled == Some(false) {
        return Some(TestModeSetting::Off);
    }
    match &t.redirect_to {
        Some(r) => Some(TestModeSetting::On(TestMode {
            redirect_to: r.clone(),
            subject_prefix: t.subject_prefix.clone(),
            allow: t.allow.clone(),
        })),
        None => {
            cx.err(
                file,
                &path.clone().key("test_mode"),
                "test mode needs redirect_to (or enabled = false to switch an inherited test mode off)",
            );
            None
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

fn kind_of(s: &RawServer) -> ServerKindName {
    s.kind.unwrap_or(ServerKindName::Smtp)
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
    o: &super::raw::RawOAuth,
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
    let authority = https_url(
        cx,
        file,
        path,
        "authority",
        s.authority
            .as_deref()
            .unwrap_or("https://login.microsoftonline.com"),
    );
    let graph_url = https_url(
        cx,
        file,
        path,
        "graph_url",
        s.graph_url
            .as_deref()
            .unwrap_or("https://graph.microsoft.com"),
    );
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

/// Keys that only one server kind understands, for "does not apply" errors.
fn kind_specific_keys(s: &RawServer) -> Vec<(&'static str, bool, ServerKindName)> {
    use ServerKindName::{Capture, Graph, Smtp};
    vec![
        ("host", s.host.is_some(), Smtp),
        ("port", s.port.is_some(), Smtp),
        ("security", s.security.is_some(), Smtp),
        ("username", s.username.is_some(), Smtp),
        ("password", s.password.is_some(), Smtp),
        ("auth", s.auth.is_some(), Smtp),
        ("connect_timeout", s.connect_timeout.is_some(), Smtp),
        ("command_timeout", s.command_timeout.is_some(), Smtp),
        ("data_timeout", s.data_timeout.is_some(), Smtp),
        (
            "accept_invalid_certs",
            s.accept_invalid_certs.is_some(),
            Smtp,
        ),
        ("tls_name", s.tls_name.is_some(), Smtp),
        ("helo_name", s.helo_name.is_some(), Smtp),
        ("pool_size", s.pool_size.is_some(), Smtp),
        ("pool_idle_timeout", s.pool_idle_timeout.is_some(), Smtp),
        ("oauth", s.oauth.is_some(), Smtp),
        ("max_connections", s.max_connections.is_some(), Smtp),
        ("path", s.path.is_some(), Capture),
        ("tenant_id", s.tenant_id.is_some(), Graph),
        ("mailbox", s.mailbox.is_some(), Graph),
        ("client_id", s.client_id.is_some(), Graph),
        ("client_secret", s.client_secret.is_some(), Graph),
        ("authority", s.authority.is_some(), Graph),
        ("graph_url", s.graph_url.is_some(), Graph),
        (
            "ca_file",
            s.ca_file.is_some() && kind_of(s) == Capture,
            Smtp,
        ),
    ]
}

fn server(
    cx: &mut Ctx<'_, '_>,
    name: &str,
    l: &Located<RawServer>,
    hostname: &str,
) -> Option<Server> {
    let s = &l.value;
    let (file, path) = (l.file, &l.path);
    let kind_name = s.kind.unwrap_or(ServerKindName::Smtp);
    for (key, set, only) in kind_specific_keys(s) {
        if set && only != kind_name {
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
            let security = s.security.unwrap_or(Security::Auto);
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
            let oauth = match (&s.oauth, s.auth) {
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
            if s.auth == Some(UpstreamAuth::Xoauth2) {
                if s.username.is_none() {
                    cx.err(
                        file,
                        &path.clone().key("auth"),
                        "auth = \"xoauth2\" needs `username` (the mailbox the token acts for)",
                    );
                }
                if s.password.is_some() {
                    cx.err(
                        file,
                        &path.clone().key("password"),
                        "auth = \"xoauth2\" uses tokens, not a password: remove `password`",
                    );
                }
            }
            let wants_auth = s.auth != Some(UpstreamAuth::None);
            if s.username.is_some()
                && s.password.is_none()
                && wants_auth
                && s.auth != Some(UpstreamAuth::Xoauth2)
            {
                cx.err(
                    file,
                    &path.clone().key("username"),
                    "a username needs a password",
                );
            }
            if s.password.is_some() && s.username.is_none() {
                cx.err(
                    file,
                    &path.clone().key("password"),
                    "a password needs a username",
                );
            }
            if matches!(s.auth, Some(UpstreamAuth::Plain | UpstreamAuth::Login))
                && s.username.is_none()
            {
                cx.err(
                    file,
                    &path.clone().key("auth"),
                    "auth is set but no username is given",
                );
            }
            if let Some(u) = &s.username
                && u.chars().any(char::is_control)
            {
                cx.err(
                    file,
                    &path.clone().key("username"),
                    "control characters are not allowed",
                );
            }
            let password = s
                .password
                .as_ref()
                .and_then(|p| cx.secret(file, &path.clone().key("password"), p));
            let ca_file = ca_file(cx, file, path, s);
            if s.accept_invalid_certs == Some(true) {
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
                ("connect_timeout", s.connect_timeout),
                ("command_timeout", s.command_timeout),
                ("data_timeout", s.data_timeout),
            ] {
                if d.is_some_and(|d| d.get().is_zero()) {
                    cx.err(file, &path.clone().key(key), "must be greater than zero");
                }
            }
            if s.pool_size == Some(0) {
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
                security,
                username: s.username.clone(),
                password,
                auth: s.auth,
                connect_timeout: s
                    .connect_timeout
                    .map_or(Duration::from_secs(10), |d| d.get()),
                command_timeout: s
                    .command_timeout
                    .map_or(Duration::from_secs(60), |d| d.get()),
                data_timeout: s.data_timeout.map_or(Duration::from_secs(600), |d| d.get()),
                accept_invalid_certs: s.accept_invalid_certs.unwrap_or(false),
                ca_file,
                helo_name,
                pool_size: s.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
                pool_idle_timeout: s
                    .pool_idle_timeout
                    .map_or(Duration::from_secs(30), |d| d.get()),
                oauth,
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
    if s.limit_counts.is_some() && s.limit.is_none() {
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
        limit_counts: s.limit_counts.unwrap_or(LimitCounts::Messages),
        max_connections: s.max_connections,
        kind,
    })
}

/// A section as written, or its defaults when the file has none.
fn section<T: Clone + Default>(l: &Option<Located<T>>) -> T {
    l.as_ref().map(|l| l.value.clone()).unwrap_or_default()
}

/// Duplicate names across files: the first definition wins, later ones are errors.
fn dedupe<T>(
    cx: &mut Ctx<'_, '_>,
    what: &str,
    items: Vec<(String, Located<T>)>,
) -> Vec<(String, Located<T>)> {
    let mut seen: HashMap<String, (usize, KeyPath)> = HashMap::new();
    let mut out = Vec::new();
    for (name, l) in items {
        if let Some((f, p)) = seen.get(&name) {
            let first = cx.src.error(*f, p, "");
            cx.err(
                l.file,
                &l.path,
                format!(
                    "{what} {name:?} is defined twice (first at {}:{})",
                    first.file, first.line
                ),
            );
            continue;
        }
        seen.insert(name.clone(), (l.file, l.path.clone()));
        out.push((name, l));
    }
    out
}

/// Validates `doc` into a snapshot, or returns every error (those passed in
/// from loading included).
pub(super) fn validate(
    src: &Sources<'_>,
    doc: RawDoc,
    errors: Vec<ConfigError>,
    hash: String,
    files: Vec<PathBuf>,
    source: String,
) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        src,
        errors,
        warnings: Vec::new(),
        referenced: Vec::new(),
        broken: doc.broken.clone(),
    };

    // [system]
    let (sys_file, sys_path, rs) = match &doc.system {
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

    // [limits]
    let limits = section(&doc.limits);
    if let Some(l) = &doc.limits {
        let p = &l.path;
        for (key, bad) in [
            ("max_message_size", limits.max_message_size == 0),
            ("max_recipients", limits.max_recipients == 0),
            ("max_connections", limits.max_connections == 0),
            ("command_timeout", limits.command_timeout.is_zero()),
            ("data_timeout", limits.data_timeout.is_zero()),
            ("auth_failures", limits.auth_failures == 0),
            (
                "max_connections_per_client",
                limits.max_connections_per_client == 0,
            ),
            ("max_session_time", limits.max_session_time.is_zero()),
            (
                "unidentified_timeout",
                limits.unidentified_timeout.is_zero(),
            ),
        ] {
            if bad {
                cx.err(l.file, &p.clone().key(key), "must be greater than zero");
            }
        }
        if limits.max_line_length < 1000 {
            cx.err(
                l.file,
                &p.clone().key("max_line_length"),
                "must be at least 1000 (RFC 5321 §4.5.3.1.6)",
            );
        }
    }

    // [tls]
    let tls = doc.tls.as_ref().and_then(|l| {
        let cert = cx.resolve_path(l.file, &l.value.certificate);
        let key = cx.resolve_path(l.file, &l.value.private_key);
        cx.referenced.push(cert.clone());
        cx.referenced.push(key.clone());
        match crate::tls::server_config(&cert, &key) {
            Ok(server_config) => Some(TlsSettings {
                certificate: cert,
                private_key: key,
                server_config,
            }),
            Err(m) => {
                cx.err(l.file, &l.path.clone().key("certificate"), m);
                None
            }
        }
    });

    // [admin], [log]
    let admin = doc.admin.as_ref().and_then(|l| {
        let address = match parse_socket_addr(&l.value.address) {
            Ok(a) => a,
            Err(m) => {
                cx.err(l.file, &l.path.clone().key("address"), m);
                return None;
            }
        };
        let token = l
            .value
            .token
            .as_ref()
            .and_then(|t| cx.secret(l.file, &l.path.clone().key("token"), t));
        Some(Admin {
            address,
            token,
            status_public: l.value.status_public.unwrap_or(false),
        })
    });
    let log = section(&doc.log);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        let (f, p) = doc
            .log
            .as_ref()
            .map_or((0, KeyPath::new(["log"])), |l| (l.file, l.path.clone()));
        cx.err(f, &p.key("level"), format!("invalid log filter: {e}"));
    }

    let health = section(&doc.health);
    if let (Some(l), 0) = (&doc.health, health.failures) {
        cx.err(
            l.file,
            &l.path.clone().key("failures"),
            "must be greater than zero",
        );
    }
    let queue = section(&doc.queue);
    let cluster = doc.cluster.as_ref().and_then(|l| {
        let key = l.path.clone().key("redis");
        let Some(src) = &l.value.redis else {
            cx.err(l.file, &key, "[cluster] needs `redis`, the Redis URL");
            return None;
        };
        let redis = cx.secret(l.file, &key, src)?;
        let parsed = redis::parse_redis_url(redis.expose());
        if !parsed.is_some_and(|u| matches!(u.scheme(), "redis" | "redis+unix" | "unix")) {
            cx.err(
                l.file,
                &key,
                "not a Redis URL: expected redis://[:password@]host:port[/db] (TLS `rediss://` is not supported)",
            );
            return None;
        }
        Some(super::Cluster {
            redis,
            on_redis_error: l.value.on_redis_error.unwrap_or_default(),
        })
    });
    if let Some(l) = &doc.queue {
        if queue.min_backoff.get().is_zero() {
            cx.err(
                l.file,
                &l.path.clone().key("min_backoff"),
                "must be greater than zero",
            );
        }
        if queue.max_backoff < queue.min_backoff {
            cx.err(
                l.file,
                &l.path.clone().key("max_backoff"),
                "must not be less than min_backoff",
            );
        }
        if queue.concurrency == 0 {
            cx.err(
                l.file,
                &l.path.clone().key("concurrency"),
                "must be at least 1",
            );
        }
    }
    let reload = section(&doc.reload);
    if let Some(l) = &doc.reload
        && reload.interval < Duration::from_millis(100)
    {
        cx.err(
            l.file,
            &l.path.clone().key("interval"),
            "must be at least 100ms",
        );
    }

    // Tenants first: everything else refers to them.
    let raw_tenants = dedupe(&mut cx, "tenant", doc.tenants);
    let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
    let mut tenant_loc: HashMap<String, (usize, KeyPath)> = HashMap::new();
    for (name, l) in &raw_tenants {
        let t = &l.value;
        let tm = test_mode(&mut cx, l.file, &l.path, &t.test_mode);
        tenant_loc.insert(name.clone(), (l.file, l.path.clone()));
        tenants.insert(
            name.clone(),
            Tenant {
                name: name.clone(),
                parent: t.parent.clone(),
                enabled: t.enabled,
                use_system_server: t.use_system_server,
                own_servers: t.own_servers,
                default_server: t.default_server.clone(),
                sender: t.sender.clone(),
                display_name: t.display_name.clone(),
                reply_to: t.reply_to.clone(),
                bounce_address: t.bounce_address.clone(),
                blacklist: t.blacklist.clone(),
                blacklist_action: t.blacklist_action.unwrap_or(BlacklistAction::Drop),
                test_mode: tm,
            },
        );
    }
    // Parents exist and form no cycle.
    let mut cyclic: BTreeSet<String> = BTreeSet::new();
    for (name, l) in &raw_tenants {
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

    // Servers.
    let raw_servers = dedupe(&mut cx, "server", doc.servers);
    let mut servers: BTreeMap<String, Server> = BTreeMap::new();
    let mut server_loc: HashMap<String, (usize, KeyPath)> = HashMap::new();
    for (name, l) in &raw_servers {
        server_loc.insert(name.clone(), (l.file, l.path.clone()));
        if let Some(s) = server(&mut cx, name, l, &system.hostname) {
            servers.insert(name.clone(), s);
        }
    }

    // A partially built snapshot for inheritance lookups during validation.
    let mut cfg = Config {
        source,
        files,
        hash,
        system,
        listeners: Vec::new(),
        tls,
        limits,
        admin,
        log,
        health,
        reload,
        queue,
        cluster,
        servers,
        tenants,
        applications: BTreeMap::new(),
        routes: Vec::new(),
        dkim: Vec::new(),
        warnings: Vec::new(),
        referenced: Vec::new(),
        referenced_hash: String::new(),
        defined_in: raw_tenants
            .iter()
            .map(|(n, l)| (format!("tenant {n}"), l.file))
            .filter_map(|(k, f)| Some((k, src.files.get(f)?.path.clone()?)))
            .collect(),
        nonblank_files: src
            .files
            .iter()
            .filter(|f| !f.text.trim().is_empty())
            .filter_map(|f| f.path.clone())
            .collect(),
        unknown_transient_until: None,
        auth_index: HashMap::new(),
        ip_index: Vec::new(),
    };

    // Tenants defined by each included file (ownership rules, §3.9).
    let mut file_tenants: HashMap<usize, BTreeSet<String>> = HashMap::new();
    for (name, l) in &raw_tenants {
        file_tenants.entry(l.file).or_default().insert(name.clone());
    }
    let defined_in_file = |file: usize, tenant: &str| -> bool {
        file_tenants.get(&file).is_some_and(|s| s.contains(tenant))
    };

    // Server ownership.
    for (name, l) in &raw_servers {
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
        if l.file > 0 && !defined_in_file(l.file, owner) {
            cx.err(
                l.file,
                &l.path.clone().key("tenant"),
                format!(
                    "server {name:?} belongs to tenant {owner:?}, which this file does not define"
                ),
            );
        }
    }

    // Is `server` (referred to by `who` at file/path) usable by `tenant`?
    let check_use = |cx: &mut Ctx<'_, '_>,
                     cfg: &Config,
                     file: usize,
                     path: &KeyPath,
                     who: &str,
                     server: &str,
                     tenant: Option<&str>| {
        let Some(s) = cfg.servers.get(server) else {
            if !server_loc.contains_key(server) {
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
    };

    // System default and fallback servers.
    for key in ["default_server", "fallback_server"] {
        let name = if key == "default_server" {
            &cfg.system.default_server
        } else {
            &cfg.system.fallback_server
        };
        let Some(ds) = name.clone() else { continue };
        let p = sys_path.clone().key(key);
        check_use(
            &mut cx,
            &cfg,
            sys_file,
            &p,
            &format!("system.{key}"),
            &ds,
            None,
        );
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

    // Tenant default servers.
    for (name, l) in &raw_tenants {
        if let Some(ds) = &l.value.default_server {
            let who = format!("tenant {name:?}");
            check_use(
                &mut cx,
                &cfg,
                l.file,
                &l.path.clone().key("default_server"),
                &who,
                ds,
                Some(name),
            );
        }
    }

    // Applications.
    let raw_apps = dedupe(&mut cx, "application", doc.applications);
    for (n, l) in &raw_apps {
        if let Some(p) = src.files.get(l.file).and_then(|f| f.path.clone()) {
            cfg.defined_in.insert(format!("application {n}"), p);
        }
    }
    let mut auth_users: HashMap<String, (String, usize, KeyPath)> = HashMap::new();
    let mut ip_owner: HashMap<Cidr, String> = HashMap::new();
    let mut all_client_ips: Vec<Cidr> = Vec::new();
    let mut union_reported = false;
    for (name, l) in &raw_apps {
        let a = &l.value;
        let (file, path) = (l.file, &l.path);
        let who = format!("application {name:?}");
        let Some(tenant) = a.tenant.clone() else {
            cx.err(file, path, format!("{who} needs `tenant`"));
            continue;
        };
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
        if file > 0 && !defined_in_file(file, &tenant) {
            cx.err(
                file,
                &path.clone().key("tenant"),
                format!("{who} belongs to tenant {tenant:?}, which this file does not define"),
            );
        }
        for (key, srv) in [("primary", &a.primary), ("fallback", &a.fallback)] {
            if let Some(s) = srv {
                check_use(
                    &mut cx,
                    &cfg,
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
        let tm = test_mode(&mut cx, file, path, &a.test_mode);
        cfg.applications.insert(
            name.clone(),
            Application {
                name: name.clone(),
                tenant,
                auth_user: a.auth_user.clone(),
                password_hash: a.password_hash.clone(),
                client_ips: a.client_ips.clone(),
                primary: a.primary.clone(),
                fallback: a.fallback.clone(),
                display_name: a.display_name.clone(),
                sender: a.sender.clone(),
                reply_to: a.reply_to.clone(),
                test_mode: tm,
                allow_bare_lf: a.allow_bare_lf,
            },
        );
    }
    // Nested networks are how one tenant tells its applications apart
    // (the longest prefix wins); across unrelated tenants they would let
    // one tenant take over the other's clients.
    let mut seen_nets: Vec<(&str, &str, Cidr)> = Vec::new();
    for (name, l) in &raw_apps {
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

    // Routes.
    for l in &doc.routes {
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
        check_use(
            &mut cx,
            &cfg,
            l.file,
            &l.path.clone().key("server"),
            &who,
            &r.server,
            scope.as_deref(),
        );
        if l.file > 0 {
            match &scope {
                Some(t) if defined_in_file(l.file, t) => {}
                _ => cx.err(
                    l.file,
                    &l.path.clone().key("tenant"),
                    format!("{who}: routes in an included file must be scoped to a tenant that file defines"),
                ),
            }
        }
        cfg.routes.push(Route {
            sender: r.sender.clone(),
            server: r.server.clone(),
            tenant: scope,
        });
    }

    // DKIM keys.
    for l in &doc.dkim {
        let d = &l.value;
        let p = &l.path;
        let domain = d.domain.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if domain.len() > 253 || !domain.contains('.') || !domain.split('.').all(label_ok) {
            cx.err(
                l.file,
                &p.clone().key("domain"),
                format!("{:?} is not a domain name (write internationalised domains in their xn-- form)", d.domain),
            );
            continue;
        }
        if !d.selector.split('.').all(label_ok) {
            cx.err(
                l.file,
                &p.clone().key("selector"),
                format!(
                    "{:?} is not a valid selector (letters, digits, '-', '_', dots)",
                    d.selector
                ),
            );
            continue;
        }
        if let Some(t) = &d.tenant
            && !cfg.tenants.contains_key(t)
        {
            cx.err(
                l.file,
                &p.clone().key("tenant"),
                format!("DKIM key {domain} names tenant {t:?}, which is not defined"),
            );
            continue;
        }
        if l.file > 0
            && !d
                .tenant
                .as_deref()
                .is_some_and(|t| defined_in_file(l.file, t))
        {
            cx.err(
                l.file,
                &p.clone().key("tenant"),
                "a DKIM key in an included file must name a tenant that file defines",
            );
            continue;
        }
        if let Some(other) = cfg
            .dkim
            .iter()
            .find(|k| k.domain == domain && k.tenant == d.tenant)
        {
            cx.err(
                l.file,
                &p.clone().key("domain"),
                format!("a second key for {domain} (selector {:?} is already defined for it); only one key per domain signs", other.selector),
            );
            continue;
        }
        let Some(pem) = cx.secret_with(l.file, &p.clone().key("private_key"), &d.private_key, true)
        else {
            continue;
        };
        match crate::dkim::DkimKey::from_pem(&domain, &d.selector, d.tenant.clone(), pem.expose()) {
            Ok(k) => cfg.dkim.push(k),
            Err(m) => cx.err(l.file, &p.clone().key("private_key"), m),
        }
    }

    // Every application must end up with at least one server.
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

    // Listeners.
    let mut bound: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, l) in doc.listeners.iter().enumerate() {
        let r = &l.value;
        let p = &l.path;
        let address = match parse_socket_addr(&r.address) {
            Ok(a) => a,
            Err(m) => {
                cx.err(l.file, &p.clone().key("address"), m);
                continue;
            }
        };
        if address.port() == 0 {
            // Port 0: the OS picks a free port for each (tests do this).
        } else if let Some(prev) = bound.insert(address, i) {
            cx.err(
                l.file,
                &p.clone().key("address"),
                format!("address {address} is already used by listener[{prev}]"),
            );
        }
        let tls = r.tls.unwrap_or(ListenerTls::None);
        if tls != ListenerTls::None && doc.tls.is_none() {
            cx.err(
                l.file,
                &p.clone().key("tls"),
                "TLS on a listener needs a [tls] section with certificate and private_key",
            );
        }
        let auth = r.auth.unwrap_or(ListenerAuth::Optional);
        if let Some(a) = &r.application
            && !cfg.applications.contains_key(a)
            && !raw_apps.iter().any(|(n, _)| n == a)
        {
            cx.err_ref(
                "application",
                a,
                l.file,
                &p.clone().key("application"),
                format!("listener {address} refers to application {a:?}, which is not defined"),
            );
        }
        if auth == ListenerAuth::Required && !cfg.has_auth_users() {
            cx.err(
                l.file,
                &p.clone().key("auth"),
                "auth = \"required\" but no application has an auth_user: nobody could send",
            );
        }
        let proxy_protocol = r.proxy_protocol.unwrap_or(false);
        if proxy_protocol && r.proxy_trusted.is_empty() {
            cx.err(
                l.file,
                &p.clone().key("proxy_trusted"),
                "proxy_protocol = true needs proxy_trusted: the load balancers allowed to send the header (every other peer is refused)",
            );
        }
        if !proxy_protocol && !r.proxy_trusted.is_empty() {
            cx.warn(
                l.file,
                &p.clone().key("proxy_trusted"),
                "has no effect without proxy_protocol = true",
            );
        }
        if auth == ListenerAuth::None && r.application.is_none() {
            // Behind a proxy, clients may come from anywhere. Applications
            // left out for their own errors count too: this error would
            // only cascade from theirs.
            let can_match = cfg
                .ip_index
                .iter()
                .any(|(c, _)| proxy_protocol || listener_can_see(address.ip(), c))
                || raw_apps.iter().any(|(_, a)| {
                    a.value
                        .client_ips
                        .iter()
                        .any(|c| proxy_protocol || listener_can_see(address.ip(), c))
                })
                || cx.broken.iter().any(|(k, _)| *k == "application");
            if !can_match {
                cx.err(
                    l.file,
                    &p.clone().key("auth"),
                    format!("listener {address} has auth = \"none\", no application binding and no application client_ips it could match: it would accept mail from clients it cannot identify; bind an application, allow AUTH or add client_ips"),
                );
            }
        }
        if r.allow_plaintext_auth == Some(true) && auth == ListenerAuth::None {
            cx.warn(
                l.file,
                &p.clone().key("allow_plaintext_auth"),
                "has no effect with auth = \"none\"",
            );
        }
        let bind_net: Cidr = address
            .ip()
            .to_string()
            .parse()
            .unwrap_or_else(|_| "0.0.0.0/0".parse().expect("valid"));
        let bound_open = r.application.is_some() && auth != ListenerAuth::Required;
        if bound_open && (address.ip().is_unspecified() || !bind_net.is_private()) {
            cx.err(
                l.file,
                &p.clone().key("application"),
                format!("listener {address} binds application {:?} without requiring AUTH on a public or wildcard address: anyone who reaches it could send as the application (an open relay); bind a private or loopback address, require AUTH, or identify clients by client_ips instead", r.application.as_deref().unwrap_or_default()),
            );
        } else if bound_open && !address.ip().is_loopback() {
            cx.warn(
                l.file,
                &p.clone().key("application"),
                format!("every client that reaches {address} without AUTH sends as this application; restrict access to the port"),
            );
        }
        cfg.listeners.push(Listener {
            name: r.name.clone().unwrap_or_else(|| address.to_string()),
            address,
            tls,
            auth,
            allow_plaintext_auth: r.allow_plaintext_auth.unwrap_or(false),
            application: r.application.clone(),
            allow_bare_lf: r.allow_bare_lf.unwrap_or(false),
            proxy_protocol,
            proxy_trusted: r.proxy_trusted.clone(),
        });
    }

    if doc.listeners.is_empty() && !doc.broken.iter().any(|(k, _)| *k == "listener") {
        cx.err(
            0,
            &KeyPath::new(["listener"]),
            "no [[listener]] is configured: the relay would accept no mail",
        );
    }

    // Test modes are logged when the config goes live; note them here too.
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

    if cx.errors.is_empty() {
        cfg.warnings = cx.warnings;
        cx.referenced.sort();
        cx.referenced.dedup();
        cfg.referenced_hash = super::load::files_hash(&cx.referenced);
        cfg.referenced = cx.referenced;
        Ok(cfg)
    } else {
        // File order: by file (main first, then includes as read), then
        // line; errors with no single place last in their file.
        let order = |e: &ConfigError| {
            let file = src.files.iter().position(|f| f.name == e.file);
            (
                file.unwrap_or(usize::MAX),
                if e.line == 0 { usize::MAX } else { e.line },
            )
        };
        cx.errors.sort_by_key(order);
        // "needs `tenant`" after `tenant` itself was reported (and
        // removed) as invalid only repeats that error.
        let bad: BTreeSet<String> = cx.errors.iter().map(|e| e.key.clone()).collect();
        cx.errors.retain(|e| {
            let needed = e
                .message
                .split_once("needs `")
                .and_then(|(_, r)| r.split_once('`'))
                .map(|(f, _)| format!("{}.{f}", e.key));
            !needed.is_some_and(|k| bad.contains(&k))
        });
        Err(ConfigErrors(cx.errors))
    }
}

/// Whether clients from `net` could connect to a listener bound to `bind`.
fn listener_can_see(bind: IpAddr, net: &Cidr) -> bool {
    if bind.is_unspecified() {
        // [::] usually accepts IPv4 too (dual stack); 0.0.0.0 only IPv4.
        return bind.is_ipv6() || net.addr().is_ipv4();
    }
    if bind.is_loopback() {
        return net.addr().is_loopback() || net.contains(bind);
    }
    !net.is_loopback() && net.addr().is_ipv4() == bind.is_ipv4()
}
