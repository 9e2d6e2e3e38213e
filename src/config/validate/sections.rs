//! The single tables: `[limits]`, `[tls]`, `[admin]`, `[log]`, `[health]`,
//! `[cluster]`, `[queue]`, `[reload]`. Their keys and defaults are declared
//! in `raw.rs`; here are the checks that need a file position, and the
//! resolution of paths and secrets.

use super::{Ctx, section};
use crate::config::TlsSettings;
use crate::config::load::{KeyPath, Located};
use crate::config::raw::{
    Admin, Cluster, HealthSettings, Limits, Log, QueueSettings, RawTls, ReloadSettings,
};
use std::time::Duration;

/// `[limits]`: every count and timeout above zero, lines of at least 1000.
pub(super) fn limits(cx: &mut Ctx<'_, '_>, l: &Option<Located<Limits>>) -> Limits {
    let limits = section(l);
    if let Some(l) = l {
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

    limits
}

/// `[tls]`: the listener certificate and key, loaded (and watched).
pub(super) fn tls(cx: &mut Ctx<'_, '_>, l: &Option<Located<RawTls>>) -> Option<TlsSettings> {
    l.as_ref().and_then(|l| {
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
    })
}

/// `[admin]`: the token read.
pub(super) fn admin(cx: &mut Ctx<'_, '_>, l: &Option<Located<Admin>>) -> Option<Admin> {
    let l = l.as_ref()?;
    let mut admin = l.value.clone();
    if let Some(token) = &mut admin.token {
        cx.resolve_secret(l.file, &l.path.clone().key("token"), token);
    }
    Some(admin)
}

/// `[log]`: the level must be a valid tracing filter.
pub(super) fn log(cx: &mut Ctx<'_, '_>, l: &Option<Located<Log>>) -> Log {
    let log = section(l);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        let (f, p) = l
            .as_ref()
            .map_or((0, KeyPath::new(["log"])), |l| (l.file, l.path.clone()));
        cx.err(f, &p.key("level"), format!("invalid log filter: {e}"));
    }

    log
}

/// `[health]`: at least one failure before a server is skipped.
pub(super) fn health(cx: &mut Ctx<'_, '_>, l: &Option<Located<HealthSettings>>) -> HealthSettings {
    let health = section(l);
    if let (Some(l), 0) = (l, health.failures) {
        cx.err(
            l.file,
            &l.path.clone().key("failures"),
            "must be greater than zero",
        );
    }
    health
}

/// `[cluster]`: `redis` is required and must be a `redis://` URL.
pub(super) fn cluster(cx: &mut Ctx<'_, '_>, l: &Option<Located<Cluster>>) -> Option<Cluster> {
    l.as_ref().and_then(|l| {
        let key = l.path.clone().key("redis");
        if !l.keys.iter().any(|k| k == "redis") {
            cx.err(l.file, &key, "[cluster] needs `redis`, the Redis URL");
            return None;
        }
        let mut cluster = l.value.clone();
        let errors = cx.errors.len();
        cx.resolve_secret(l.file, &key, &mut cluster.redis);
        if cx.errors.len() > errors {
            return None;
        }
        let parsed = redis::parse_redis_url(cluster.redis.expose());
        if !parsed.is_some_and(|u| matches!(u.scheme(), "redis" | "redis+unix" | "unix")) {
            cx.err(
                l.file,
                &key,
                "not a Redis URL: expected redis://[:password@]host:port[/db] (TLS `rediss://` is not supported)",
            );
            return None;
        }
        Some(cluster)
    })
}

/// `[queue]`: backoffs above zero and in order, at least one worker.
pub(super) fn queue(cx: &mut Ctx<'_, '_>, l: &Option<Located<QueueSettings>>) -> QueueSettings {
    let queue = section(l);
    if let Some(l) = l {
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
    queue
}

/// `[reload]`: the watch interval is at least 100ms.
pub(super) fn reload(cx: &mut Ctx<'_, '_>, l: &Option<Located<ReloadSettings>>) -> ReloadSettings {
    let reload = section(l);
    if let Some(l) = l
        && reload.interval < Duration::from_millis(100)
    {
        cx.err(
            l.file,
            &l.path.clone().key("interval"),
            "must be at least 100ms",
        );
    }
    reload
}
