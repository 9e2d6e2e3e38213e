//! Upstreams: one hop of a delivery through one SMTP server (or Microsoft
//! Graph), the connection pool, failure classification, and probes
//! (`test-server`, `check-config --probe`, reload).
//!
//! * `client` — one connection: TLS, EHLO, AUTH, a transaction; the only
//!   module that imports mail-send.
//! * `classify` — errors and replies sorted into failover classes.
//! * `pool` — idle sessions per server and settings, counters.
//! * `caps` — EHLO capabilities against what a message needs.
//! * `tls` — the client TLS settings; `stuffing` — DATA transparency.
//! * `probe` — connect without sending, and a real test message.
//! * `graph` — the Microsoft Graph upstream; `https` — its HTTPS client
//!   (also used for OAuth token endpoints, see [`crate::oauth`]).
//!
//! [`Upstreams::send`] ties them together: take a pooled session (RSET
//! first, which also proves it is alive) or open one, run the transaction,
//! and put the session back when it ended cleanly. A pooled session that
//! turns out dead before the server accepted anything (at RSET or MAIL) is
//! not a reason to fail over: the hop is retried once on a fresh connection.

mod caps;
pub mod classify;
mod client;
pub mod graph;
pub mod https;
pub mod pool;
pub mod probe;
mod stuffing;
mod tls;

use crate::config::{SmtpServer, UpstreamAuth};
use crate::message::Message;
use crate::outcome::Failover;
use crate::outcome::HopResult;
use classify::{Class, Stage, UpstreamError, enhanced, sanitize};
use client::{Session, TxOutcome};
use pool::{Key, Pools};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_rustls::TlsConnector;

/// A message to send on one hop, already rewritten for that hop's server.
pub struct Outgoing<'a> {
    /// MAIL FROM (empty: null sender).
    pub mail_from: &'a str,
    /// RCPT TO, in order.
    pub rcpt_to: &'a [String],
    /// The new header section (trace header and rewritten fields).
    pub header: &'a [u8],
    /// The received message; its content from `body_offset` follows `header`.
    pub message: &'a Message,
    /// Where the untouched remainder starts in `message.head`.
    pub body_offset: usize,
    /// The message needs SMTPUTF8 (non-ASCII addresses or headers).
    pub smtputf8: bool,
    /// The message has 8-bit content (BODY=8BITMIME).
    pub body_8bit: bool,
    /// A 4xx for one recipient defers only that recipient (queue mode,
    /// which keeps per-recipient state) instead of failing the whole
    /// message over (direct mode: one reply for the client).
    pub partial: bool,
    /// The session may go back to the pool afterwards. `false`: it is
    /// closed (QUIT, and the server's close awaited) before the hop ends;
    /// a `max_connections` shared through Redis counts open connections,
    /// and an idle pooled one would hold no slot.
    pub keep: bool,
}

impl Outgoing<'_> {
    /// Size of what is sent: header plus the remainder of the message.
    pub fn size(&self) -> u64 {
        self.header.len() as u64 + self.message.len()
            - self.body_offset.min(self.message.head.len()) as u64
    }
}

/// Every SMTP upstream's connection pool; shared by all sessions.
#[derive(Default)]
pub struct Upstreams {
    roots: tls::SystemRoots,
    /// TLS connectors by server and settings, built on first TLS use.
    connectors: Mutex<HashMap<Key, TlsConnector>>,
    pools: Pools<Session>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// OAuth2 access tokens (XOAUTH2 and Graph), per server.
    pub tokens: crate::oauth::Tokens,
    /// HTTPS clients by extra CA file (token endpoints and Graph).
    https: Mutex<HashMap<Option<std::path::PathBuf>, https::Https>>,
}

/// What to redact from an SMTP server's error texts: its password or its
/// OAuth client secret.
pub(crate) fn secret_of(server: &SmtpServer) -> Option<&str> {
    server
        .password
        .as_ref()
        .or(server.oauth.as_ref().map(|o| &o.client_secret))
        .map(|p| p.expose())
}

impl Upstreams {
    /// Upstreams that count connections and TLS versions in `metrics`.
    pub fn with_metrics(metrics: Arc<crate::metrics::Metrics>) -> Self {
        Upstreams {
            metrics: Some(metrics),
            ..Default::default()
        }
    }

    fn count(&self, name: &str, session: &Session, reused: bool) {
        let Some(m) = &self.metrics else { return };
        let label = crate::metrics::ServerLabel {
            server: name.to_owned(),
        };
        if reused {
            m.upstream_reused.get_or_create(&label).inc();
            return;
        }
        m.upstream_opened.get_or_create(&label).inc();
        if let Some((version, _)) = &session.report().tls {
            m.tls
                .get_or_create(&crate::metrics::TlsLabels {
                    direction: "outbound",
                    version: version.clone(),
                })
                .inc();
        }
    }

    /// Sends `msg` through `server` (named `name`).
    pub async fn send(&self, name: &str, server: &SmtpServer, msg: &Outgoing<'_>) -> HopResult {
        let key = Key::new(name, server);
        let secret = secret_of(server);
        let mut may_reuse = true;
        loop {
            let pooled = if may_reuse {
                self.checkout(&key, server)
            } else {
                None
            };
            let reused = pooled.is_some();
            let mut session = match pooled {
                Some(s) => s,
                None => match self.open(&key, server).await {
                    Ok(s) => {
                        self.pools.count_opened(name);
                        self.count(name, &s, false);
                        s
                    }
                    Err(e) => return HopResult::Failover(e.to_failover(name, secret)),
                },
            };
            if reused {
                // No RSET first: pooled sessions are idle (they come back
                // only after a clean or RSET-aborted transaction), and a
                // connection the server closed meanwhile fails at MAIL,
                // before anything was accepted, and is retried below.
                self.pools.count_reused(name);
                self.count(name, &session, true);
            }
            let tx = session.deliver(server, msg).await;
            if reused && !tx.reusable && died_before_mail(&tx.outcome) {
                tracing::debug!(server = name, outcome = ?tx.outcome, "pooled connection died at MAIL; opening a new one");
                may_reuse = false;
                continue;
            }
            if tx.reusable && msg.keep {
                self.checkin(&key, server, session);
            } else if tx.reusable {
                session.close().await;
            }
            return hop_result(name, secret, tx.outcome);
        }
    }

    /// Closes idle pooled sessions older than their server's
    /// `pool_idle_timeout`, and every idle session of servers `cfg` no longer
    /// has. The relay calls it periodically, so idle connections do not
    /// linger (in CLOSE_WAIT) on servers that receive no more mail.
    pub fn sweep(&self, cfg: &crate::config::Config) {
        let closed = self.pools.sweep(Instant::now(), |name| {
            match cfg.servers.get(name).map(|s| &s.kind) {
                Some(crate::config::ServerKind::Smtp(s)) => Some(s.pool_idle_timeout),
                _ => None,
            }
        });
        if !closed.is_empty() {
            tracing::debug!(closed = closed.len(), "closed idle upstream connections");
        }
        close_all(closed);
    }

    /// Forgets the cached TLS client configurations, so CA files are read
    /// again (a reload calls this: a CA file replaced under the same path
    /// then takes effect for new connections).
    pub fn forget_tls_configs(&self) {
        self.lock_connectors().clear();
        self.https.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The HTTPS client trusting the system roots plus `ca_file`, built
    /// once per CA file.
    pub fn https(&self, ca_file: Option<&std::path::Path>) -> Result<https::Https, String> {
        let key = ca_file.map(std::path::Path::to_path_buf);
        if let Some(h) = self
            .https
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(h.clone());
        }
        let h = https::Https::new(&self.roots, ca_file)?;
        self.https
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h.clone());
        Ok(h)
    }

    /// Connection counters of server `name`: (opened, reused).
    pub fn stats(&self, name: &str) -> (u64, u64) {
        let s = self.pools.stats(name);
        (s.opened, s.reused)
    }

    /// Opens a new session (not pooled, not counted).
    /// With `auth = "xoauth2"`, a cached token is used; when the server
    /// refuses it (535 or 454 at AUTH), one new token is fetched and the
    /// connection tried once more.
    async fn open(&self, key: &Key, server: &SmtpServer) -> Result<Session, UpstreamError> {
        let oauth = match &server.oauth {
            Some(o) if server.auth == Some(UpstreamAuth::Xoauth2) => Some((
                o,
                self.https(server.ca_file.as_deref())
                    .map_err(UpstreamError::TlsSetup)?,
            )),
            _ => None,
        };
        let token = match &oauth {
            Some((o, h)) => Some(
                self.tokens
                    .get(key.name(), o, h)
                    .await
                    .map_err(UpstreamError::OAuth)?,
            ),
            None => None,
        };
        let first = client::connect(server, || self.connector(key, server), token.as_ref()).await;
        let session = match (first, &oauth, &token) {
            (Err(e), Some((o, h)), Some(stale)) if token_refused(&e) => {
                tracing::info!(server = key.name(), reply = %e, "XOAUTH2 token refused; fetching a new one and retrying once");
                let fresh = self
                    .tokens
                    .refresh(key.name(), o, h, stale)
                    .await
                    .map_err(UpstreamError::OAuth)?;
                client::connect(server, || self.connector(key, server), Some(&fresh)).await?
            }
            (r, _, _) => r?,
        };
        let r = session.report();
        tracing::debug!(
            server = key.name(),
            peer = %r.connected_to,
            tls = r.tls.as_ref().map(|t| t.0.as_str()),
            auth = r.auth,
            "upstream connection opened"
        );
        Ok(session)
    }

    /// The TLS connector of `key`, built once per server and settings.
    fn connector(&self, key: &Key, server: &SmtpServer) -> Result<TlsConnector, String> {
        let cached = self.lock_connectors().get(key).cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = tls::connector(&self.roots, server)?;
        let mut map = self.lock_connectors();
        // Settings changed by a reload: the old connector is of no use.
        map.retain(|k, _| k.name() != key.name());
        map.insert(key.clone(), c.clone());
        Ok(c)
    }

    fn lock_connectors(&self) -> std::sync::MutexGuard<'_, HashMap<Key, TlsConnector>> {
        // Only whole-value inserts and removals happen under this lock.
        self.connectors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkout(&self, key: &Key, server: &SmtpServer) -> Option<Session> {
        let c = self
            .pools
            .checkout(key, server.pool_idle_timeout, Instant::now());
        close_all(c.close);
        c.session
    }

    fn checkin(&self, key: &Key, server: &SmtpServer, session: Session) {
        if let Some(extra) = self
            .pools
            .checkin(key, session, server.pool_size, Instant::now())
        {
            close_all(vec![extra]);
        }
    }
}

/// QUITs sessions in the background: nobody waits for it.
fn close_all(sessions: Vec<Session>) {
    for s in sessions {
        tokio::spawn(s.quit());
    }
}

/// The server refused an XOAUTH2 token: 535 (invalid credentials) or 454
/// (temporary authentication failure, Microsoft's answer to an expired
/// token) at AUTH.
fn token_refused(e: &UpstreamError) -> bool {
    e.stage() == Stage::Auth
        && e.server_reply()
            .is_some_and(|r| matches!(r.code, 535 | 454))
}

/// A pooled session that failed at MAIL with a connection-class error
/// (EOF, reset, timeout, 421) was dead before anything was accepted.
fn died_before_mail(outcome: &TxOutcome) -> bool {
    matches!(outcome, TxOutcome::Failed(e) if e.stage() == Stage::Mail && e.class() == Class::Connection)
}

/// A transaction's outcome as the delivery code sees it.
fn hop_result(name: &str, secret: Option<&str>, outcome: TxOutcome) -> HopResult {
    match outcome {
        TxOutcome::Accepted {
            refused,
            deferred,
            reply,
        } => {
            tracing::debug!(server = name, reply = %sanitize(&reply.message, secret), "upstream accepted");
            HopResult::Accepted { refused, deferred }
        }
        TxOutcome::Refused(r) => HopResult::Permanent {
            code: r.code,
            enhanced: enhanced(&r),
            reason: sanitize(&r.message, secret),
        },
        TxOutcome::Failed(e) => HopResult::Failover(e.to_failover(name, secret)),
        TxOutcome::Interrupted { error, refused } => HopResult::Failover(Failover {
            refused,
            ..error.to_failover(name, secret)
        }),
    }
}
