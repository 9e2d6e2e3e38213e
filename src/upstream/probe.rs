//! Talking to an upstream without relaying a client's mail: [`probe`]
//! (connect, TLS, EHLO, AUTH, QUIT — for `check-config --probe` and
//! reload), [`probe_all`] (every server at once, bounded) and
//! [`test_message`] (one real message, for `smarthost test-server`).
//!
//! Probes always use a fresh connection, never the pool, and are not
//! counted in the pool's statistics. [`compose_test_message`] builds what
//! `test-server` sends, with the same sender policy a delivery through
//! that server would get.

use super::classify::{enhanced, sanitize};
use super::client::TxOutcome;
use super::pool::Key;
use super::{Outgoing, Upstreams};
use crate::config::values::EmailAddress;
use crate::config::{Config, SmtpServer};
use crate::message::Message;
use crate::outcome::{Failover, RefusedRecipient};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// What an upstream connection negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The address connected to.
    pub connected_to: SocketAddr,
    /// TLS protocol version and cipher suite, e.g. (`TLSv1.3`,
    /// `TLS13_AES_256_GCM_SHA384`); `None` for plaintext.
    pub tls: Option<(String, String)>,
    /// The AUTH mechanism used, if any.
    pub auth: Option<&'static str>,
    /// EHLO keywords, e.g. `SIZE 10240000`, `AUTH PLAIN LOGIN`, `8BITMIME`.
    pub capabilities: Vec<String>,
    /// The greeting text (after the 220).
    pub greeting: String,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "connected:    {}", self.connected_to)?;
        writeln!(f, "greeting:     {}", sanitize(&self.greeting, None))?;
        match &self.tls {
            Some((version, cipher)) => writeln!(f, "TLS:          {version} {cipher}")?,
            None => writeln!(f, "TLS:          none")?,
        }
        writeln!(f, "AUTH:         {}", self.auth.unwrap_or("none"))?;
        writeln!(f, "capabilities: {}", self.capabilities.join(", "))
    }
}

/// Connects to `server` as a delivery would (TCP, TLS, EHLO, AUTH), then
/// QUITs without sending mail.
pub async fn probe(
    upstreams: &Upstreams,
    name: &str,
    server: &SmtpServer,
) -> Result<ProbeReport, Failover> {
    let secret = super::secret_of(server);
    match upstreams.open(&Key::new(name, server), server).await {
        Ok(session) => {
            let report = session.report().clone();
            session.quit().await;
            Ok(report)
        }
        Err(e) => Err(e.to_failover(name, secret)),
    }
}

/// Probes every server, at most `concurrency` at a time; results in the
/// order given.
pub async fn probe_all(
    upstreams: Arc<Upstreams>,
    servers: Vec<(String, SmtpServer)>,
    concurrency: usize,
) -> Vec<(String, Result<ProbeReport, Failover>)> {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (name, server)) in servers.into_iter().enumerate() {
        let (upstreams, limit) = (upstreams.clone(), limit.clone());
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = limit.acquire_owned().await;
            let result = probe(&upstreams, &name, &server).await;
            (i, name, result)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(r) => out.push(r),
            Err(e) => tracing::error!(error = %e, "a probe task failed"),
        }
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, n, r)| (n, r)).collect()
}

/// Why a test message was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TestFailure {
    /// The server refused the message (or every recipient) permanently.
    #[error("refused: {code} {reason}")]
    Refused {
        /// Reply code.
        code: u16,
        /// Enhanced status code.
        enhanced: Option<(u8, u16, u16)>,
        /// Reply text.
        reason: String,
    },
    /// The hop failed as a delivery would fail over.
    #[error("{} failure: {}", .0.class, .0.reason)]
    Failed(Failover),
}

/// The dialogue summary of a test message.
#[derive(Debug, Clone)]
pub struct TestReport {
    /// The connection, when one was established.
    pub session: Option<ProbeReport>,
    /// Recipients refused while others were accepted.
    pub refused: Vec<RefusedRecipient>,
    /// The final reply text (with the server's queue id, usually), or why
    /// the message was not accepted.
    pub result: Result<String, TestFailure>,
}

/// Sends one message (`content`: a complete message, CRLF line endings)
/// from `mail_from` to `rcpt` through `server` on a fresh connection.
pub async fn test_message(
    upstreams: &Upstreams,
    name: &str,
    server: &SmtpServer,
    mail_from: &str,
    rcpt: &str,
    content: Vec<u8>,
) -> TestReport {
    let secret = super::secret_of(server);
    let mut session = match upstreams.open(&Key::new(name, server), server).await {
        Ok(s) => s,
        Err(e) => {
            return TestReport {
                session: None,
                refused: Vec::new(),
                result: Err(TestFailure::Failed(e.to_failover(name, secret))),
            };
        }
    };
    let rcpts = [rcpt.to_owned()];
    let smtputf8 = !mail_from.is_ascii() || !rcpt.is_ascii() || !header_of(&content).is_ascii();
    let body_8bit = !content.is_ascii();
    let message = Message::in_memory(content);
    let out = Outgoing {
        mail_from,
        rcpt_to: &rcpts,
        header: &[],
        message: &message,
        body_offset: 0,
        smtputf8,
        body_8bit,
        partial: false,
        keep: true,
    };
    let tx = session.deliver(server, &out).await;
    let report = session.report().clone();
    if tx.reusable {
        session.quit().await;
    }
    let (refused, result) = match tx.outcome {
        TxOutcome::Accepted { refused, reply, .. } => (
            refused,
            Ok(format!(
                "{} {}",
                reply.code,
                sanitize(&reply.message, secret)
            )),
        ),
        TxOutcome::Refused(r) => (
            Vec::new(),
            Err(TestFailure::Refused {
                code: r.code,
                enhanced: enhanced(&r),
                reason: sanitize(&r.message, secret),
            }),
        ),
        TxOutcome::Failed(e) => (
            Vec::new(),
            Err(TestFailure::Failed(e.to_failover(name, secret))),
        ),
        TxOutcome::Interrupted { error, refused } => (
            refused,
            Err(TestFailure::Failed(error.to_failover(name, secret))),
        ),
    };
    TestReport {
        session: Some(report),
        refused,
        result,
    }
}

/// The header section of a message (up to the first empty line).
fn header_of(content: &[u8]) -> &[u8] {
    memchr::memmem::find(content, b"\r\n\r\n").map_or(content, |p| &content[..p])
}

/// What `test-server` sends: envelope sender and the complete message.
#[derive(Debug, Clone)]
pub struct TestMessage {
    /// MAIL FROM.
    pub mail_from: String,
    /// The message, CRLF line endings.
    pub content: Vec<u8>,
}

/// Builds the test message for server `name` of `cfg`, to `to`. The sender
/// follows policy as far as it applies without an application: the
/// server's fixed sender wins (providers refuse anything else), then
/// `from`, then the owning tenant's sender (inherited), then the system
/// default sender; the display name is the tenant's or the system's. The
/// header section goes through the same rewrite a real delivery gets.
pub fn compose_test_message(
    cfg: &Config,
    name: &str,
    to: &str,
    from: Option<&str>,
    now: i64,
    id: &str,
) -> Result<TestMessage, String> {
    let server = cfg
        .servers
        .get(name)
        .ok_or_else(|| format!("no server named {name:?}"))?;
    to.parse::<EmailAddress>()?;
    if let Some(f) = from {
        f.parse::<EmailAddress>()?;
    }
    let tenant = server.tenant.as_deref();
    let tenant_sender = tenant.and_then(|t| cfg.inherited(t, |x| x.sender.as_ref()));
    let sender = server
        .sender
        .as_ref()
        .map(ToString::to_string)
        .or_else(|| from.map(str::to_owned))
        .or_else(|| tenant_sender.map(ToString::to_string))
        .or_else(|| cfg.system.default_sender.as_ref().map(ToString::to_string))
        .ok_or("no sender address: give --from (no server, tenant or system sender is set)")?;
    let display_name = tenant
        .and_then(|t| cfg.inherited(t, |x| x.display_name.as_ref()))
        .or(cfg.system.display_name.as_ref())
        .map(|d| d.as_str().to_owned());
    let sample = format!(
        "From: {}\r\nTo: {to}\r\nSubject: smarthost test message via {name}\r\n\
         Date: {}\r\nMessage-ID: <{id}@{}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         This is a test message sent by `smarthost test-server {name}`.\r\n",
        from.unwrap_or(&sender),
        crate::util::rfc5322_date(now),
        cfg.system.hostname,
    );
    let spec = crate::rewrite::RewriteSpec {
        sender: Some(sender.clone()),
        display_name,
        ..Default::default()
    };
    let rw = crate::rewrite::rewrite(sample.as_bytes(), &spec);
    let mut content = rw.header;
    content.extend_from_slice(&sample.as_bytes()[rw.body_offset..]);
    Ok(TestMessage {
        mail_from: sender,
        content,
    })
}
