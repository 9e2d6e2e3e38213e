//! Helpers for the `tests/upstream_*.rs` files: `SmtpServer` settings for a
//! fixture port, a message builder, and one-call sends through
//! `Upstreams::send`.
#![allow(dead_code)]

use smarthost::config::values::Secret;
use smarthost::config::{Security, SmtpServer, SmtpSettings, UpstreamAuth};
use smarthost::delivery::{Failover, HopResult, RefusedRecipient};
use smarthost::message::Message;
use smarthost::upstream::{Outgoing, Upstreams};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::postfix::certs_dir;

/// How long tests wait for a fixture to record a message.
pub const WAIT: Duration = Duration::from_secs(20);

/// Plaintext settings for 127.0.0.1:`port`: no AUTH, 5 s connect and
/// command timeouts, 60 s data timeout, TLS name `localhost` (the test
/// certificate's name), pool of 4 kept 30 s.
pub fn server(port: u16) -> SmtpServer {
    SmtpServer {
        host: "127.0.0.1".into(),
        port,
        ca_file: None,
        tls_name: "localhost".into(),
        helo_name: "relay.test".into(),
        oauth: None,
        settings: SmtpSettings {
            security: Security::None,
            username: None,
            password: None,
            auth: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(60),
            accept_invalid_certs: false,
            pool_size: 4,
            pool_idle_timeout: Duration::from_secs(30),
        },
    }
}

/// `server(port)` with `security` and the test CA trusted.
pub fn tls_server(port: u16, security: Security) -> SmtpServer {
    let mut s = SmtpServer {
        ca_file: Some(ca_file()),
        ..server(port)
    };
    s.settings.security = security;
    s
}

/// `s` with AUTH credentials and mechanism.
pub fn with_auth(
    s: SmtpServer,
    user: &str,
    password: &str,
    auth: Option<UpstreamAuth>,
) -> SmtpServer {
    let mut s = s;
    s.settings.password = Some(Secret::new(password));
    s.settings.username = Some(user.into());
    s.settings.auth = auth;
    s
}

/// The test CA (`certs/ca.crt`).
pub fn ca_file() -> PathBuf {
    certs_dir().join("ca.crt")
}

/// A message exercising what must survive byte for byte: a leading dot, a
/// lone dot line, a dot as the very first body byte after the blank line,
/// 8-bit UTF-8 and non-UTF-8 bytes, a long line, CRLF line endings.
pub fn tricky_message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"From: Sender <a@x.test>\r\nTo: b@y.test\r\nSubject: upstream check\r\n");
    m.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n\r\n");
    m.extend_from_slice(
        b".first line starts with a dot\r\nline 2\r\n.leading dot\r\n..two dots\r\n.\r\n",
    );
    m.extend_from_slice("UTF-8: h\u{e9}llo \u{20ac} \u{1f600}\r\n".as_bytes());
    m.extend_from_slice(b"raw 8-bit: \xff\xfe\x80\r\n");
    m.extend(std::iter::repeat_n(b'x', 1500));
    m.extend_from_slice(b"\r\n\r\nlast line\r\n");
    m
}

/// A small 7-bit message with `subject`.
pub fn simple_message(subject: &str) -> Vec<u8> {
    format!("From: a@x.test\r\nTo: b@y.test\r\nSubject: {subject}\r\n\r\nHello.\r\n").into_bytes()
}

/// What to send.
pub struct Mail<'a> {
    /// Envelope sender.
    pub from: &'a str,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// Header section the relay adds in front of the message.
    pub header: &'a [u8],
    /// The message.
    pub message: &'a Message,
    /// SMTPUTF8 needed.
    pub smtputf8: bool,
    /// 8-bit body.
    pub body_8bit: bool,
    /// 4xx recipients deferred alone (queue mode).
    pub partial: bool,
}

impl<'a> Mail<'a> {
    /// From `a@x.test` to `to`, 7-bit, nothing added in front.
    pub fn new(message: &'a Message, to: &[&str]) -> Self {
        Mail {
            from: "a@x.test",
            to: to.iter().map(|s| s.to_string()).collect(),
            header: b"",
            message,
            smtputf8: false,
            body_8bit: false,
            partial: false,
        }
    }

    /// Sends through `server` named `name`.
    pub async fn send(&self, up: &Upstreams, name: &str, server: &SmtpServer) -> HopResult {
        let out = Outgoing {
            mail_from: self.from,
            rcpt_to: &self.to,
            header: self.header,
            message: self.message,
            body_offset: 0,
            smtputf8: self.smtputf8,
            body_8bit: self.body_8bit,
            partial: self.partial,
            keep: true,
        };
        up.send(name, server, &out).await
    }
}

/// Sends `message` (7-bit flags) from `a@x.test` to `to` through a fresh
/// `Upstreams` (no pooling across calls).
pub async fn send_once(server: &SmtpServer, message: &[u8], to: &[&str]) -> HopResult {
    let msg = Message::in_memory(message.to_vec());
    Mail::new(&msg, to)
        .send(&Upstreams::default(), "up", server)
        .await
}

/// The accepted result's refused recipients; panics on anything else.
pub fn accepted(r: HopResult) -> Vec<RefusedRecipient> {
    match r {
        HopResult::Accepted { refused, .. } => refused,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

/// The failover; panics on anything else.
pub fn failover(r: HopResult) -> Failover {
    match r {
        HopResult::Failover(f) => f,
        other => panic!("expected a failover, got {other:?}"),
    }
}

/// Asserts a failover of `class` and returns it.
pub fn failover_of(class: &str, r: HopResult) -> Failover {
    let f = failover(r);
    assert_eq!(f.class.as_str(), class, "wrong failover class: {f:?}");
    assert_eq!(f.server, "up");
    f
}

/// (code, enhanced, reason) of a permanent result; panics on anything else.
pub fn permanent(r: HopResult) -> (u16, Option<(u8, u16, u16)>, String) {
    match r {
        HopResult::Permanent {
            code,
            enhanced,
            reason,
        } => (code, enhanced, reason),
        other => panic!("expected Permanent, got {other:?}"),
    }
}

/// A minimal in-process SMTP server (on the test's runtime) for cases the
/// fixtures cannot script: any bind address (IPv6), and a first connection
/// that dies at its second MAIL.
pub struct Scripted {
    /// The port it listens on.
    pub port: u16,
    delivered: Arc<AtomicUsize>,
}

impl Scripted {
    /// Listens on `addr` (port 0). With `die_at_second_mail`, the first
    /// connection closes instead of answering its second MAIL.
    pub async fn start(addr: &str, die_at_second_mail: bool) -> std::io::Result<Scripted> {
        let listener = TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let delivered = Arc::new(AtomicUsize::new(0));
        let counter = delivered.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let die = die_at_second_mail && conn == 0;
                tokio::spawn(scripted_session(stream, die, counter.clone()));
            }
        });
        Ok(Scripted { port, delivered })
    }

    /// Messages accepted so far.
    pub fn delivered(&self) -> usize {
        self.delivered.load(Ordering::SeqCst)
    }
}

/// Minimal SMTP: accepts everything; with `die_at_second_mail` it closes
/// the connection instead of answering the second MAIL.
async fn scripted_session(
    stream: tokio::net::TcpStream,
    die_at_second_mail: bool,
    delivered: Arc<AtomicUsize>,
) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let _ = w.write_all(b"220 scripted ESMTP\r\n").await;
    let (mut mails, mut in_data) = (0, false);
    while let Ok(Some(line)) = lines.next_line().await {
        let reply: &[u8] = if in_data {
            if line != "." {
                continue;
            }
            in_data = false;
            delivered.fetch_add(1, Ordering::SeqCst);
            b"250 2.0.0 queued\r\n"
        } else {
            let cmd = line.to_ascii_uppercase();
            if cmd.starts_with("EHLO") {
                b"250-scripted\r\n250 8BITMIME\r\n"
            } else if cmd.starts_with("MAIL") {
                mails += 1;
                if die_at_second_mail && mails == 2 {
                    return;
                }
                b"250 2.1.0 ok\r\n"
            } else if cmd == "DATA" {
                in_data = true;
                b"354 go ahead\r\n"
            } else if cmd == "QUIT" {
                let _ = w.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"250 ok\r\n"
            }
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}
