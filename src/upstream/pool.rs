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
//! a sharded map whose locks are never held across an await: the time is passed in and
//! sessions are opaque, so it is unit-tested without sockets.

use crate::config::{SmtpServer, SmtpSettings};
use dashmap::DashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Identifies the connections that may serve a server as configured now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    name: String,
    fingerprint: u64,
}

impl Key {
    /// The key of server `name` with these settings: every setting that
    /// shapes a connection (address, TLS, credentials, timeouts, EHLO name)
    /// goes into the fingerprint; pool size and idle timeout do not. The
    /// declared SMTP keys ([`SmtpSettings`]) go in whole, so a key added
    /// there is in the fingerprint without a line here. A SipHash over the
    /// fields, cheap enough to compute per delivery.
    pub fn new(name: &str, server: &SmtpServer) -> Key {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        server.host.hash(&mut h);
        server.port.hash(&mut h);
        server.ca_file.hash(&mut h);
        server.tls_name.hash(&mut h);
        server.helo_name.hash(&mut h);
        SmtpSettings {
            pool_size: 0,
            pool_idle_timeout: Duration::ZERO,
            ..server.settings.clone()
        }
        .hash(&mut h);
        if let Some(o) = &server.oauth {
            (&o.token_url, &o.client_id, o.client_secret.expose()).hash(&mut h);
        }
        Key {
            name: name.to_owned(),
            fingerprint: h.finish(),
        }
    }

    /// The server name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Connection counters of one server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections opened for deliveries.
    pub opened: u64,
    /// Pooled sessions reused.
    pub reused: u64,
}

struct Idle<S> {
    session: S,
    since: Instant,
}

/// The idle sessions of one server, all opened with one fingerprint.
struct Slot<S> {
    fingerprint: u64,
    idle: Vec<Idle<S>>,
}

/// The result of a checkout.
pub struct Checkout<S> {
    /// A session to use, if one was idle and fresh.
    pub session: Option<S>,
    /// Sessions to close (expired, or opened with outdated settings).
    pub close: Vec<S>,
}

/// Idle sessions of every server, sharded by server name so deliveries to
/// different servers never wait for each other.
pub struct Pools<S> {
    slots: DashMap<String, Slot<S>>,
    stats: DashMap<String, Stats>,
}

impl<S> Default for Pools<S> {
    fn default() -> Self {
        Pools {
            slots: DashMap::new(),
            stats: DashMap::new(),
        }
    }
}

impl<S> Pools<S> {
    /// Takes the most recently returned fresh session of `key`; hands back
    /// for closing everything expired or opened with other settings.
    pub fn checkout(&self, key: &Key, idle_timeout: Duration, now: Instant) -> Checkout<S> {
        let mut close = Vec::new();
        let Some(mut slot) = self.slots.get_mut(&key.name) else {
            return Checkout {
                session: None,
                close,
            };
        };
        if slot.fingerprint != key.fingerprint {
            close.extend(slot.idle.drain(..).map(|i| i.session));
            slot.fingerprint = key.fingerprint;
            return Checkout {
                session: None,
                close,
            };
        }
        let mut i = 0;
        while i < slot.idle.len() {
            if now.saturating_duration_since(slot.idle[i].since) >= idle_timeout {
                close.push(slot.idle.remove(i).session);
            } else {
                i += 1;
            }
        }
        Checkout {
            session: slot.idle.pop().map(|i| i.session),
            close,
        }
    }

    /// Returns a session; gives it back when the pool of `key` is full (the
    /// caller closes it).
    pub fn checkin(&self, key: &Key, session: S, pool_size: usize, now: Instant) -> Option<S> {
        let mut slot = self.slots.entry(key.name.clone()).or_insert_with(|| Slot {
            fingerprint: key.fingerprint,
            idle: Vec::new(),
        });
        if slot.fingerprint != key.fingerprint || slot.idle.len() >= pool_size {
            return Some(session);
        }
        slot.idle.push(Idle {
            session,
            since: now,
        });
        None
    }

    /// Takes out every session idle longer than its server's idle timeout
    /// (`idle_timeout(name)`; `None`: the server is gone, close them all).
    pub fn sweep(&self, now: Instant, idle_timeout: impl Fn(&str) -> Option<Duration>) -> Vec<S> {
        let mut close = Vec::new();
        self.slots.retain(|name, slot| {
            match idle_timeout(name) {
                None => close.extend(slot.idle.drain(..).map(|i| i.session)),
                Some(limit) => {
                    let mut i = 0;
                    while i < slot.idle.len() {
                        if now.saturating_duration_since(slot.idle[i].since) >= limit {
                            close.push(slot.idle.remove(i).session);
                        } else {
                            i += 1;
                        }
                    }
                }
            }
            !slot.idle.is_empty()
        });
        close
    }

    /// Counts a connection opened for `name`.
    pub fn count_opened(&self, name: &str) {
        self.stats.entry(name.to_owned()).or_default().opened += 1;
    }

    /// Counts a pooled session reused for `name`.
    pub fn count_reused(&self, name: &str) {
        self.stats.entry(name.to_owned()).or_default().reused += 1;
    }

    /// The counters of `name`.
    pub fn stats(&self, name: &str) -> Stats {
        self.stats.get(name).map(|s| *s).unwrap_or_default()
    }

    /// How many idle sessions `key` holds.
    pub fn idle(&self, key: &Key) -> usize {
        self.slots
            .get(&key.name)
            .filter(|s| s.fingerprint == key.fingerprint)
            .map_or(0, |s| s.idle.len())
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
            ca_file: None,
            tls_name: "mx.example".into(),
            helo_name: "relay.test".into(),
            oauth: None,
            settings: SmtpSettings {
                security: Security::Starttls,
                username: Some("u".into()),
                password: Some(crate::config::values::Secret::new("p")),
                pool_size: 2,
                ..SmtpSettings::default()
            },
        }
    }

    #[test]
    fn keys_follow_connection_settings_only() {
        let base = Key::new("up", &server());
        let mut s = server();
        s.settings.pool_size = 9;
        s.settings.pool_idle_timeout = Duration::from_secs(1);
        assert_eq!(Key::new("up", &s), base);
        let changes: [fn(&mut SmtpServer); 9] = [
            |s| s.settings.password = Some(crate::config::values::Secret::new("q")),
            |s| s.port = 465,
            |s| s.settings.accept_invalid_certs = true,
            |s| s.ca_file = Some(PathBuf::from("/ca.pem")),
            |s| s.settings.username = None,
            |s| s.settings.security = Security::Implicit,
            |s| s.settings.connect_timeout = Duration::from_secs(3),
            |s| s.tls_name = "other.example".into(),
            |s| s.helo_name = "other.test".into(),
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
    fn sweep_closes_expired_and_orphaned_sessions() {
        let pools: Pools<u32> = Pools::default();
        let t0 = Instant::now();
        let up = Key::new("up", &server());
        let gone = Key::new("gone", &server());
        pools.checkin(&up, 1, 5, t0);
        pools.checkin(&up, 2, 5, t0 + Duration::from_secs(20));
        pools.checkin(&gone, 3, 5, t0 + Duration::from_secs(20));
        let mut closed = pools.sweep(t0 + Duration::from_secs(31), |name| {
            (name == "up").then_some(Duration::from_secs(30))
        });
        closed.sort();
        assert_eq!(closed, vec![1, 3]);
        assert_eq!(pools.idle(&up), 1);
        assert_eq!(pools.idle(&gone), 0);
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
