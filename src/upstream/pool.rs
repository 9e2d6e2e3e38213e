//! Idle upstream sessions kept for reuse, and the per-server counters.
//!
//! A pool is keyed by server name *and* a fingerprint of the settings the
//! connection was opened with ([`Key`]), so after a config reload that
//! changes a server, an old connection (other host, credentials, TLS
//! settings...) is never reused; the old key's sessions are handed back
//! for closing the next time the server is used.
//!
//! Policy, all decided here and nothing else: at most `pool_size` idle
//! sessions per key; checkout takes the most recently returned one (LIFO,
//! so surplus sessions age out) if it has been idle less than
//! `pool_idle_timeout`; expired ones are handed back to the caller to close
//! (lazily, on checkout: there is no background sweeper). Pure apart from
//! a mutex that is never held across an await: the time is passed in and
//! sessions are opaque, so it is unit-tested without sockets.

use crate::config::SmtpServer;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Identifies the connections that may serve a server as configured now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    name: String,
    fingerprint: [u8; 32],
}

impl Key {
    /// The key of `server` named `name`: SHA-256 over every setting that
    /// shapes an open connection (the pool's own size and idle timeout do
    /// not). The password is part of the digest, never stored.
    pub fn new(name: &str, server: &SmtpServer) -> Key {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        };
        field(server.host.as_bytes());
        field(&server.port.to_le_bytes());
        field(format!("{:?}", server.security).as_bytes());
        field(server.username.as_deref().unwrap_or("\0none").as_bytes());
        field(
            server
                .password
                .as_ref()
                .map_or("\0none", |p| p.expose())
                .as_bytes(),
        );
        field(format!("{:?}", server.auth).as_bytes());
        for d in [
            server.connect_timeout,
            server.command_timeout,
            server.data_timeout,
        ] {
            field(&d.as_nanos().to_le_bytes());
        }
        field(&[u8::from(server.accept_invalid_certs)]);
        field(
            server
                .ca_file
                .as_deref()
                .map_or("\0none".into(), |p| p.to_string_lossy())
                .as_bytes(),
        );
        field(server.tls_name.as_bytes());
        field(server.helo_name.as_bytes());
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(ctx.finish().as_ref());
        Key {
            name: name.to_owned(),
            fingerprint,
        }
    }

    /// The server name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Connection counters of one server (all its keys together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections opened for deliveries.
    pub opened: u64,
    /// Deliveries that started on a pooled connection.
    pub reused: u64,
}

struct Idle<S> {
    session: S,
    since: Instant,
}

struct Inner<S> {
    idle: HashMap<Key, Vec<Idle<S>>>,
    stats: HashMap<String, Stats>,
}

/// A checkout: maybe a session to use, and sessions to close.
pub struct Checkout<S> {
    /// An idle session for the key, if one was fresh enough.
    pub session: Option<S>,
    /// Expired sessions and sessions of outdated settings: close them.
    pub close: Vec<S>,
}

/// Idle sessions of every server.
pub struct Pools<S> {
    inner: Mutex<Inner<S>>,
}

impl<S> Default for Pools<S> {
    fn default() -> Self {
        Pools {
            inner: Mutex::new(Inner {
                idle: HashMap::new(),
                stats: HashMap::new(),
            }),
        }
    }
}

impl<S> Pools<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S>> {
        // A panic while holding this lock cannot leave the maps inconsistent
        // (every change is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the freshest idle session of `key` younger than `idle_timeout`.
    pub fn checkout(&self, key: &Key, idle_timeout: Duration, now: Instant) -> Checkout<S> {
        let mut inner = self.lock();
        let mut close = Vec::new();
        let outdated: Vec<Key> = inner
            .idle
            .keys()
            .filter(|k| k.name == key.name && k.fingerprint != key.fingerprint)
            .cloned()
            .collect();
        for k in outdated {
            if let Some(v) = inner.idle.remove(&k) {
                close.extend(v.into_iter().map(|i| i.session));
            }
        }
        let mut session = None;
        if let Some(list) = inner.idle.get_mut(key) {
            let (fresh, expired): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|i| now.saturating_duration_since(i.since) < idle_timeout);
            close.extend(expired.into_iter().map(|i| i.session));
            *list = fresh;
            session = list.pop().map(|i| i.session);
        }
        Checkout { session, close }
    }

    /// Returns a clean, idle session. Gives it back when the pool of `key`
    /// already holds `pool_size` sessions (the caller closes it).
    pub fn checkin(&self, key: &Key, session: S, pool_size: usize, now: Instant) -> Option<S> {
        let mut inner = self.lock();
        let list = inner.idle.entry(key.clone()).or_default();
        if list.len() >= pool_size {
            return Some(session);
        }
        list.push(Idle {
            session,
            since: now,
        });
        None
    }

    /// Counts a connection opened for `name`.
    pub fn count_opened(&self, name: &str) {
        self.lock().stats.entry(name.to_owned()).or_default().opened += 1;
    }

    /// Counts a delivery started on a pooled connection of `name`.
    pub fn count_reused(&self, name: &str) {
        self.lock().stats.entry(name.to_owned()).or_default().reused += 1;
    }

    /// The counters of `name` (zero when never used).
    pub fn stats(&self, name: &str) -> Stats {
        self.lock().stats.get(name).copied().unwrap_or_default()
    }

    /// How many idle sessions `key` holds.
    pub fn idle(&self, key: &Key) -> usize {
        self.lock().idle.get(key).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Security;
    use std::path::PathBuf;

    fn server() -> SmtpServer {
        SmtpServer {
            host: "mx.example".into(),
            port: 587,
            security: Security::Starttls,
            username: Some("u".into()),
            password: Some(crate::config::values::Secret::new("p")),
            auth: None,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(600),
            accept_invalid_certs: false,
            ca_file: None,
            tls_name: "mx.example".into(),
            helo_name: "relay.test".into(),
            pool_size: 2,
            pool_idle_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn keys_follow_connection_settings_only() {
        let base = Key::new("up", &server());
        let mut s = server();
        s.pool_size = 9;
        s.pool_idle_timeout = Duration::from_secs(1);
        assert_eq!(Key::new("up", &s), base);
        let changes: [fn(&mut SmtpServer); 5] = [
            |s| s.password = Some(crate::config::values::Secret::new("q")),
            |s| s.port = 465,
            |s| s.accept_invalid_certs = true,
            |s| s.ca_file = Some(PathBuf::from("/ca.pem")),
            |s| s.username = None,
        ];
        for change in changes {
            let mut s = server();
            change(&mut s);
            assert_ne!(Key::new("up", &s), base);
        }
        assert_ne!(Key::new("other", &server()), base);
    }

    #[test]
    fn bounded_lifo_with_expiry() {
        let pools: Pools<u32> = Pools::default();
        let key = Key::new("up", &server());
        let t0 = Instant::now();
        let idle = Duration::from_secs(30);
        assert_eq!(pools.checkin(&key, 1, 2, t0), None);
        assert_eq!(pools.checkin(&key, 2, 2, t0 + Duration::from_secs(5)), None);
        assert_eq!(pools.checkin(&key, 3, 2, t0), Some(3), "pool is full");
        let c = pools.checkout(&key, idle, t0 + Duration::from_secs(10));
        assert_eq!((c.session, c.close), (Some(2), vec![]));
        // Session 1 has been idle for 31 s: closed, nothing handed out.
        let c = pools.checkout(&key, idle, t0 + Duration::from_secs(31));
        assert_eq!((c.session, c.close), (None, vec![1]));
        assert_eq!(pools.idle(&key), 0);
    }

    #[test]
    fn changed_settings_never_reuse_old_sessions() {
        let pools: Pools<u32> = Pools::default();
        let old = Key::new("up", &server());
        let mut s = server();
        s.host = "mx2.example".into();
        let new = Key::new("up", &s);
        let t0 = Instant::now();
        pools.checkin(&old, 1, 2, t0);
        let c = pools.checkout(&new, Duration::from_secs(30), t0);
        assert_eq!((c.session, c.close), (None, vec![1]));
        assert_eq!(pools.idle(&old), 0);
    }

    #[test]
    fn counters() {
        let pools: Pools<u32> = Pools::default();
        pools.count_opened("a");
        pools.count_reused("a");
        pools.count_reused("a");
        assert_eq!(
            pools.stats("a"),
            Stats {
                opened: 1,
                reused: 2
            }
        );
        assert_eq!(pools.stats("b"), Stats::default());
    }
}
