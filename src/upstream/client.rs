//! One SMTP client connection to an upstream: connect, TLS, EHLO, AUTH,
//! and one transaction at a time. The only module that imports mail-send.
//!
//! mail-send supplies the wire pieces (reply parsing, EHLO parsing, the SASL
//! exchange); the flow is ours, because its convenience calls do not fit a
//! relay (CRATES.md §2b and pitfalls 1–8): `connect()` forgets the EHLO
//! capabilities and never times the plaintext greeting, `send()` stops at
//! the first refused recipient, and `data()` needs the whole message in
//! memory and adds an extra CRLF. So this module:
//!
//! * connects the TCP stream itself (every resolved address, each within
//!   `connect_timeout`) and wraps it in `mail_send::SmtpClient`;
//! * negotiates TLS per `security` (see [`wants_starttls`]), keeps the EHLO
//!   capabilities (EHLO again after STARTTLS, HELO when EHLO is refused);
//! * authenticates with exactly one mechanism;
//! * sends MAIL, each RCPT on its own, and streams DATA from the message's
//!   chunks with our own dot-stuffing.
//!
//! Every command is bounded by `command_timeout` (the greeting and the TLS
//! handshake too), the whole data phase by `data_timeout`.

use super::caps::{capability_names, check_capabilities, mail_params};
use super::classify::{Class, Stage, UpstreamError, reply_class};
use super::probe::ProbeReport;
use super::stuffing::DotStuffer;
use super::{Outgoing, tls};
use crate::config::{Security, SmtpServer, UpstreamAuth};
use crate::outcome::RefusedRecipient;
use mail_send::{Credentials, SmtpClient};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, AUTH_XOAUTH2, EXT_AUTH, EXT_PIPELINING, EXT_START_TLS, EhloResponse,
    Response,
};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// mail-send's error type, for `classify` (which must not import mail-send).
pub use mail_send::Error as SmtpError;

/// An SMTP reply.
pub type Reply = Response<String>;

/// At most this many resolved addresses are tried per connection attempt,
/// so a host with many dead addresses cannot multiply `connect_timeout`
/// without bound.
const MAX_ADDRESSES: usize = 4;

/// Size of the DATA write buffer.
const WRITE_BUFFER: usize = 64 << 10;

/// How long a best-effort QUIT may take.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection under the SMTP client: plaintext or TLS, one type so a
/// pooled session does not care how it was opened.
pub type Stream = crate::tls::MaybeTls<TcpStream, TlsStream<TcpStream>>;

/// An open, greeted, EHLO'd (and, when configured, authenticated) connection.
pub struct Session {
    client: SmtpClient<Stream>,
    caps: EhloResponse<String>,
    report: ProbeReport,
}

/// How a transaction ended.
#[derive(Debug)]
pub enum TxOutcome {
    /// The message was accepted for at least one recipient.
    Accepted {
        /// Recipients refused with 5xx.
        refused: Vec<RefusedRecipient>,
        /// Recipients refused with 4xx (only with `Outgoing::partial`).
        deferred: Vec<RefusedRecipient>,
        /// The reply to the final `.`.
        reply: Reply,
    },
    /// Refused permanently: 5xx at MAIL, DATA or end of data, or every
    /// recipient refused (the first refusal).
    Refused(Reply),
    /// Anything else: fail over.
    Failed(UpstreamError),
    /// The transaction failed (a 4xx, a 421 or a cut connection) after the
    /// server had refused some recipients with 5xx: those refusals stand
    /// (they get a DSN), the other recipients fail over.
    Interrupted {
        /// Why the transaction failed.
        error: UpstreamError,
        /// Recipients refused permanently before it failed.
        refused: Vec<RefusedRecipient>,
    },
}

/// A transaction's outcome and whether the connection may be used again.
#[derive(Debug)]
pub struct Tx {
    /// The outcome.
    pub outcome: TxOutcome,
    /// The session is idle and in a clean state (no transaction open).
    pub reusable: bool,
}

impl Tx {
    fn failed(e: UpstreamError, reusable: bool) -> Tx {
        Tx {
            outcome: TxOutcome::Failed(e),
            reusable,
        }
    }

    /// This transaction's failure, keeping the recipients the server had
    /// already refused permanently (a refusal of the whole message stays one).
    fn keeping(self, refused: Vec<RefusedRecipient>) -> Tx {
        let outcome = match self.outcome {
            TxOutcome::Failed(error) if !refused.is_empty() => {
                TxOutcome::Interrupted { error, refused }
            }
            other => other,
        };
        Tx { outcome, ..self }
    }
}

/// What the RCPT phase left: how many were accepted, who was refused.
#[derive(Default)]
struct Recipients {
    accepted: usize,
    refused: Vec<RefusedRecipient>,
    deferred: Vec<RefusedRecipient>,
    first_refusal: Option<Reply>,
    first_deferral: Option<Reply>,
}

impl Recipients {
    /// Files a negative RCPT reply. `Err` when it ends the transaction: a
    /// 4xx without `partial`, or anything that is not a recipient's answer.
    fn file(&mut self, rcpt: &str, reply: Reply, partial: bool) -> Result<(), Reply> {
        let entry = |reply: &Reply| RefusedRecipient {
            rcpt: rcpt.to_owned(),
            code: reply.code,
            enhanced: super::classify::enhanced(reply),
            reason: super::classify::sanitize(&reply.message, None),
        };
        match reply_class(Stage::Rcpt, reply.code) {
            Class::Permanent => {
                self.refused.push(entry(&reply));
                self.first_refusal.get_or_insert(reply);
                Ok(())
            }
            Class::Temporary if partial => {
                self.deferred.push(entry(&reply));
                self.first_deferral.get_or_insert(reply);
                Ok(())
            }
            _ => Err(reply),
        }
    }

    /// When no recipient was accepted: a 4xx for one of them makes the
    /// whole message temporary, else the first 5xx refuses it.
    fn none_accepted(self) -> TxOutcome {
        match (self.first_deferral, self.first_refusal) {
            (Some(d), _) => TxOutcome::Failed(UpstreamError::reply(Stage::Rcpt, d)),
            (None, r) => TxOutcome::Refused(
                r.unwrap_or_else(|| local_reply(554, [5, 5, 1], "no valid recipients")),
            ),
        }
    }
}

/// Opens a session to `server`: TCP, TLS per `security`, greeting, EHLO,
/// AUTH. `connector` is asked for the TLS settings only when TLS is used;
/// `token` is the access token for `auth = "xoauth2"`.
pub async fn connect(
    server: &SmtpServer,
    connector: impl FnOnce() -> Result<TlsConnector, String>,
    token: Option<&crate::oauth::AccessToken>,
) -> Result<Session, UpstreamError> {
    let (tcp, connected_to) = tcp_connect(server).await?;
    let mut connector = Some(connector);
    let mut tls = || {
        connector.take().map_or_else(
            || Err(UpstreamError::TlsSetup("TLS negotiated twice".into())),
            |f| f().map_err(UpstreamError::TlsSetup),
        )
    };
    let (mut client, greeting, caps) = if implicit_tls(server) {
        let stream = handshake(tcp, &tls()?, server).await?;
        greet(smtp_client(Stream::Tls(Box::new(stream)), server), server).await?
    } else {
        let (mut plain, greeting, caps) = greet(smtp_client(tcp, server), server).await?;
        if wants_starttls(server.security, &caps)? {
            starttls(&mut plain).await?;
            let stream = handshake(plain.stream, &tls()?, server).await?;
            let mut c = smtp_client(Stream::Tls(Box::new(stream)), server);
            let caps = ehlo(&mut c, &server.helo_name).await?;
            (c, greeting, caps)
        } else {
            (
                smtp_client(Stream::Plain(plain.stream), server),
                greeting,
                caps,
            )
        }
    };
    let auth = authenticate(&mut client, server, &caps, token).await?;
    let report = ProbeReport {
        connected_to,
        tls: tls_info(&client.stream),
        auth,
        capabilities: capability_names(&caps),
        greeting,
    };
    Ok(Session {
        client,
        caps,
        report,
    })
}

fn smtp_client<T: AsyncRead + AsyncWrite>(stream: T, server: &SmtpServer) -> SmtpClient<T> {
    SmtpClient {
        stream,
        timeout: server.command_timeout,
    }
}

/// `auto` means implicit TLS on port 465 (the SMTPS port) and opportunistic
/// STARTTLS anywhere else.
fn implicit_tls(server: &SmtpServer) -> bool {
    match server.security {
        Security::Implicit => true,
        Security::Auto => server.port == 465,
        Security::None | Security::Starttls | Security::StarttlsWhenAvailable => false,
    }
}

/// Whether to issue STARTTLS on a plaintext connection with these
/// capabilities: required for `starttls` (an error when not offered), when
/// offered for `auto` and `starttls-when-available`, never for `none`.
/// Opportunistic TLS still verifies the certificate: a failed verification
/// fails the hop (class `tls`) rather than silently sending in plaintext.
pub fn wants_starttls(
    security: Security,
    caps: &EhloResponse<String>,
) -> Result<bool, UpstreamError> {
    let offered = caps.has_capability(EXT_START_TLS);
    match security {
        Security::None | Security::Implicit => Ok(false),
        Security::Starttls if !offered => Err(UpstreamError::NoStartTls),
        Security::Starttls => Ok(true),
        Security::Auto | Security::StarttlsWhenAvailable => Ok(offered),
    }
}

/// Resolves `host` and connects to the first address that answers, each
/// attempt bounded by `connect_timeout`.
async fn tcp_connect(server: &SmtpServer) -> Result<(TcpStream, SocketAddr), UpstreamError> {
    // IPv6 literals may be written with brackets; lookup_host wants them bare.
    let host = server.host.trim_start_matches('[').trim_end_matches(']');
    let resolve_error = |reason: String| UpstreamError::Resolve {
        host: server.host.clone(),
        reason,
    };
    let addrs: Vec<SocketAddr> = timeout(
        server.connect_timeout,
        tokio::net::lookup_host((host, server.port)),
    )
    .await
    .map_err(|_| resolve_error("timed out".into()))?
    .map_err(|e| resolve_error(e.to_string()))?
    .take(MAX_ADDRESSES)
    .collect();
    let mut last = resolve_error("no addresses".into());
    for addr in addrs {
        match timeout(server.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                // Commands are small and lock-step: do not let Nagle hold them.
                let _ = s.set_nodelay(true);
                return Ok((s, addr));
            }
            Ok(Err(source)) => {
                last = UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                }
            }
            Err(_) => {
                last = UpstreamError::ConnectTimeout {
                    addr: addr.to_string(),
                }
            }
        }
    }
    Err(last)
}

/// The TLS handshake, bounded by `command_timeout`.
async fn handshake(
    tcp: TcpStream,
    connector: &TlsConnector,
    server: &SmtpServer,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let name = tls::server_name(server).map_err(UpstreamError::TlsSetup)?;
    let err = |source| UpstreamError::Smtp {
        stage: Stage::Tls,
        source,
    };
    match timeout(server.command_timeout, connector.connect(name, tcp)).await {
        Err(_) => Err(err(SmtpError::Timeout)),
        Ok(Err(e)) => Err(err(tls_io_error(e))),
        Ok(Ok(s)) => Ok(s),
    }
}

/// tokio-rustls reports rustls errors (bad certificate...) inside an
/// `io::Error`; take them out so they classify and print as TLS errors.
fn tls_io_error(e: io::Error) -> SmtpError {
    let kind = e.kind();
    match e.into_inner() {
        Some(inner) => match inner.downcast::<rustls::Error>() {
            Ok(tls) => SmtpError::Tls(tls),
            Err(other) => SmtpError::Io(io::Error::new(kind, other)),
        },
        None => SmtpError::Io(io::Error::from(kind)),
    }
}

/// Reads the greeting (bounded: mail-send does not time it, pitfall 2) and
/// says EHLO. Returns the greeting text and the capabilities.
async fn greet<T: AsyncRead + AsyncWrite + Unpin>(
    mut client: SmtpClient<T>,
    server: &SmtpServer,
) -> Result<(SmtpClient<T>, String, EhloResponse<String>), UpstreamError> {
    let err = |source| UpstreamError::Smtp {
        stage: Stage::Greeting,
        source,
    };
    let greeting = match timeout(client.timeout, client.read()).await {
        Err(_) => return Err(err(SmtpError::Timeout)),
        Ok(Err(e)) => return Err(err(e)),
        Ok(Ok(r)) if r.code == 220 => r.message,
        Ok(Ok(r)) => return Err(UpstreamError::reply(Stage::Greeting, r)),
    };
    let caps = ehlo(&mut client, &server.helo_name).await?;
    Ok((client, greeting, caps))
}

/// EHLO; falls back to HELO (no capabilities) when the server refuses EHLO
/// as a command it does not know.
async fn ehlo<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    name: &str,
) -> Result<EhloResponse<String>, UpstreamError> {
    let err = |source| UpstreamError::Smtp {
        stage: Stage::Ehlo,
        source,
    };
    match client.ehlo(name).await {
        Ok(caps) => Ok(caps),
        Err(SmtpError::UnexpectedReply(r)) if (500..=504).contains(&r.code) => {
            let r = client
                .cmd(format!("HELO {name}\r\n").as_bytes())
                .await
                .map_err(err)?;
            if (200..300).contains(&r.code) {
                Ok(EhloResponse::new(String::new()))
            } else {
                Err(UpstreamError::reply(Stage::Ehlo, r))
            }
        }
        Err(e) => Err(err(e)),
    }
}

async fn starttls(client: &mut SmtpClient<TcpStream>) -> Result<(), UpstreamError> {
    let r = client
        .cmd(b"STARTTLS\r\n")
        .await
        .map_err(|source| UpstreamError::Smtp {
            stage: Stage::StartTls,
            source,
        })?;
    if r.code == 220 {
        Ok(())
    } else {
        Err(UpstreamError::reply(Stage::StartTls, r))
    }
}

/// AUTH when a username is set and `auth` is not `none`; over plaintext
/// only with `security = "none"`. Exactly one
/// mechanism is tried: the configured one, or PLAIN when offered, else
/// LOGIN. (mail-send would try PLAIN before LOGIN on its own; handing it
/// capabilities with a single mechanism forces the choice, pitfall 8.)
/// XOAUTH2 sends `user={username}\x01auth=Bearer {token}\x01\x01`.
async fn authenticate(
    client: &mut SmtpClient<Stream>,
    server: &SmtpServer,
    caps: &EhloResponse<String>,
    token: Option<&crate::oauth::AccessToken>,
) -> Result<Option<&'static str>, UpstreamError> {
    let Some(user) = &server.username else {
        return Ok(None);
    };
    let offered = caps.auth_mechanisms;
    let (bit, name) = match server.auth {
        Some(UpstreamAuth::None) => return Ok(None),
        _ if !caps.has_capability(EXT_AUTH) && offered == 0 => return Err(UpstreamError::NoAuth),
        Some(UpstreamAuth::Plain) => (AUTH_PLAIN, "PLAIN"),
        Some(UpstreamAuth::Login) => (AUTH_LOGIN, "LOGIN"),
        Some(UpstreamAuth::Xoauth2) => (AUTH_XOAUTH2, "XOAUTH2"),
        None if offered & AUTH_PLAIN != 0 => (AUTH_PLAIN, "PLAIN"),
        None if offered & AUTH_LOGIN != 0 => (AUTH_LOGIN, "LOGIN"),
        None => return Err(UpstreamError::NoAuthMechanism("PLAIN or LOGIN")),
    };
    if offered & bit == 0 {
        return Err(UpstreamError::NoAuthMechanism(name));
    }
    // A STARTTLS-stripping attacker must not be able to harvest the
    // password: without TLS, credentials go out only when the admin chose
    // plaintext explicitly.
    if !matches!(client.stream, Stream::Tls(_)) && server.security != Security::None {
        return Err(UpstreamError::AuthWithoutTls);
    }
    let mut only = EhloResponse::new(String::new());
    only.capabilities = EXT_AUTH;
    only.auth_mechanisms = bit;
    let credentials = match (server.auth, token) {
        (Some(UpstreamAuth::Xoauth2), Some(t)) => {
            Credentials::new_xoauth2(user.as_str(), t.expose())
        }
        (Some(UpstreamAuth::Xoauth2), None) => {
            return Err(UpstreamError::NoAuthMechanism("XOAUTH2 (no token)"));
        }
        _ => Credentials::new(
            user.as_str(),
            server.password.as_ref().map_or("", |p| p.expose()),
        ),
    };
    client
        .authenticate(&credentials, &only)
        .await
        .map_err(|source| UpstreamError::Smtp {
            stage: Stage::Auth,
            source,
        })?;
    Ok(Some(name))
}

fn tls_info(stream: &Stream) -> Option<(String, String)> {
    let Stream::Tls(s) = stream else { return None };
    let conn = s.get_ref().1;
    let version = crate::tls::version_name(conn.protocol_version()?);
    let cipher = conn
        .negotiated_cipher_suite()
        .map_or_else(String::new, |c| format!("{:?}", c.suite()));
    Some((version, cipher))
}

/// Whether an address may go into `MAIL FROM:<..>` / `RCPT TO:<..>` as it
/// is: no control characters (no command injection, pitfall 6) and no angle
/// brackets.
fn safe_address(a: &str) -> bool {
    !a.chars().any(|c| c.is_control() || c == '<' || c == '>')
}

fn local_reply(code: u16, esc: [u8; 3], text: &str) -> Reply {
    Response {
        code,
        esc,
        message: text.to_owned(),
    }
}

/// Reads `n` replies to pipelined commands (they may share a segment, which
/// mail-send's `read()` would lose). When the connection fails first, the
/// replies that did arrive are returned with the error.
async fn read_replies<T: AsyncRead + Unpin>(
    stream: &mut T,
    n: usize,
) -> (Vec<Reply>, Option<SmtpError>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(n);
    let mut parser = smtp_proto::response::parser::ResponseReceiver::default();
    while out.len() < n {
        let read = match stream.read(&mut buf).await {
            Ok(0) => return (out, Some(SmtpError::UnparseableReply)),
            Ok(r) => r,
            Err(e) => return (out, Some(SmtpError::Io(e))),
        };
        let mut bytes = buf[..read].iter();
        while out.len() < n {
            match parser.parse(&mut bytes) {
                Ok(reply) => {
                    out.push(reply);
                    parser.reset();
                }
                Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                Err(_) => return (out, Some(SmtpError::UnparseableReply)),
            }
        }
    }
    (out, None)
}

/// A transaction given up at `stage` because of `reply` while the server
/// already waits for content: the connection must be dropped.
fn abandoned(stage: Stage, reply: Reply) -> Tx {
    let outcome = match reply_class(stage, reply.code) {
        Class::Permanent => TxOutcome::Refused(reply),
        _ => TxOutcome::Failed(UpstreamError::reply(stage, reply)),
    };
    Tx {
        outcome,
        reusable: false,
    }
}

/// A pipelined transaction whose connection failed before every reply
/// arrived (typically a 421 after too many refused recipients, then EOF).
/// That is a connection failure whatever did arrive: a 5xx to MAIL still
/// refuses the message, recipients refused with 5xx stay refused, and the
/// rest fail over. It must never turn into a refusal of the whole message.
fn cut_short(rcpt_to: &[String], sent: &[bool], replies: Vec<Reply>, source: SmtpError) -> Tx {
    let mut replies = replies.into_iter();
    let cut = |stage| Tx::failed(UpstreamError::Smtp { stage, source }, false);
    match replies.next() {
        None => return cut(Stage::Mail),
        Some(r) if is_positive(&r) => {}
        Some(r) => return abandoned(Stage::Mail, r),
    }
    let mut refused = Vec::new();
    for (rcpt, ok) in rcpt_to.iter().zip(sent) {
        let reply = if *ok {
            match replies.next() {
                Some(r) => r,
                None => return cut(Stage::Rcpt).keeping(refused),
            }
        } else {
            not_sent()
        };
        if is_positive(&reply) {
            continue;
        }
        if reply_class(Stage::Rcpt, reply.code) != Class::Permanent {
            // A 421 (or 4xx): what came after it does not count.
            return Tx::failed(UpstreamError::reply(Stage::Rcpt, reply), false).keeping(refused);
        }
        refused.push(refusal(rcpt, &reply));
    }
    cut(Stage::Data).keeping(refused)
}

/// The local refusal of a recipient that could not be sent safely.
fn not_sent() -> Reply {
    local_reply(553, [5, 1, 3], "invalid recipient address (not sent)")
}

/// A recipient's permanent refusal as delivery reports it.
fn refusal(rcpt: &str, reply: &Reply) -> RefusedRecipient {
    RefusedRecipient {
        rcpt: rcpt.to_owned(),
        code: reply.code,
        enhanced: super::classify::enhanced(reply),
        reason: super::classify::sanitize(&reply.message, None),
    }
}

fn is_positive(r: &Reply) -> bool {
    (200..300).contains(&r.code)
}

impl Session {
    /// What was negotiated when the session was opened.
    pub fn report(&self) -> &ProbeReport {
        &self.report
    }

    async fn command(&mut self, stage: Stage, line: &[u8]) -> Result<Reply, UpstreamError> {
        self.client
            .cmd(line)
            .await
            .map_err(|source| UpstreamError::Smtp { stage, source })
    }

    /// RSET: clears any transaction; before reuse it also proves the pooled
    /// connection is still alive.
    pub async fn reset(&mut self) -> Result<(), UpstreamError> {
        let r = self.command(Stage::Rset, b"RSET\r\n").await?;
        if is_positive(&r) {
            Ok(())
        } else {
            Err(UpstreamError::reply(Stage::Rset, r))
        }
    }

    /// QUIT, best effort and briefly bounded; the connection is closed either way.
    pub async fn quit(mut self) {
        let _ = timeout(QUIT_TIMEOUT, self.client.cmd(b"QUIT\r\n")).await;
        let _ = timeout(QUIT_TIMEOUT, self.client.stream.shutdown()).await;
    }

    /// QUIT, our side shut down, then waits (briefly bounded) until the
    /// server closed the connection too: when this returns the connection
    /// is gone at the server, which a connection cap shared between
    /// instances counts on.
    pub async fn close(mut self) {
        use tokio::io::AsyncReadExt;
        let _ = timeout(QUIT_TIMEOUT, self.client.cmd(b"QUIT\r\n")).await;
        let _ = timeout(QUIT_TIMEOUT, self.client.stream.shutdown()).await;
        let mut buf = [0u8; 256];
        let stream = &mut self.client.stream;
        let _ = timeout(QUIT_TIMEOUT, async {
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }

    /// One mail transaction (the session must be idle). Recipients are sent
    /// one by one: 5xx refusals are collected, anything else aborts the
    /// whole transaction so no recipient can be delivered twice after a
    /// failover.
    pub async fn deliver(&mut self, server: &SmtpServer, msg: &Outgoing<'_>) -> Tx {
        if let Err(e) = check_capabilities(&self.caps, msg) {
            return Tx::failed(e, true);
        }
        if !safe_address(msg.mail_from) {
            return Tx {
                outcome: TxOutcome::Refused(local_reply(553, [5, 1, 7], "invalid sender address")),
                reusable: true,
            };
        }
        let mail = format!(
            "MAIL FROM:<{}>{}\r\n",
            msg.mail_from,
            mail_params(&self.caps, msg)
        );
        if self.caps.capabilities & EXT_PIPELINING != 0 {
            return self.deliver_pipelined(server, msg, mail).await;
        }
        match self.command(Stage::Mail, mail.as_bytes()).await {
            Err(e) => return Tx::failed(e, false),
            Ok(r) if is_positive(&r) => {}
            Ok(r) => return self.abort(Stage::Mail, r).await,
        }
        let rcpts = match self.recipients(msg.rcpt_to, msg.partial).await {
            Ok(r) => r,
            Err(tx) => return tx,
        };
        if rcpts.accepted == 0 {
            let reusable = self.reset().await.is_ok();
            return Tx {
                outcome: rcpts.none_accepted(),
                reusable,
            };
        }
        match self.command(Stage::Data, b"DATA\r\n").await {
            Err(e) => return Tx::failed(e, false).keeping(rcpts.refused),
            Ok(r) if r.code == 354 => {}
            Ok(r) => return self.abort(Stage::Data, r).await.keeping(rcpts.refused),
        }
        self.finish_data(server, msg, rcpts.refused, rcpts.deferred)
            .await
    }

    /// The same transaction with PIPELINING (RFC 2920): MAIL, every RCPT
    /// and DATA leave in one write and their replies are read in order, so
    /// a message costs two round trips instead of three plus one per
    /// recipient. When DATA was already answered 354 but the transaction
    /// must not go on (a 4xx for one recipient, no recipient accepted, a
    /// failed MAIL), the connection is dropped: the server then discards
    /// the transaction, whereas sending "." would deliver an empty message.
    async fn deliver_pipelined(
        &mut self,
        server: &SmtpServer,
        msg: &Outgoing<'_>,
        mail: String,
    ) -> Tx {
        let sent: Vec<bool> = msg.rcpt_to.iter().map(|r| safe_address(r)).collect();
        let mut batch = mail;
        for (rcpt, ok) in msg.rcpt_to.iter().zip(&sent) {
            if *ok {
                batch.push_str("RCPT TO:<");
                batch.push_str(rcpt);
                batch.push_str(">\r\n");
            }
        }
        batch.push_str("DATA\r\n");
        let expected = 2 + sent.iter().filter(|ok| **ok).count();
        let (replies, cut) = match timeout(self.client.timeout, async {
            self.client.stream.write_all(batch.as_bytes()).await?;
            self.client.stream.flush().await?;
            Ok::<_, io::Error>(read_replies(&mut self.client.stream, expected).await)
        })
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => (Vec::new(), Some(SmtpError::Io(e))),
            Err(_) => (Vec::new(), Some(SmtpError::Timeout)),
        };
        if let Some(source) = cut {
            return cut_short(msg.rcpt_to, &sent, replies, source);
        }
        let mut replies = replies.into_iter();
        let (Some(mail_reply), Some(data_reply)) = (replies.next(), replies.next_back()) else {
            return Tx::failed(
                UpstreamError::Smtp {
                    stage: Stage::Mail,
                    source: SmtpError::UnparseableReply,
                },
                false,
            );
        };
        let in_data = data_reply.code == 354;
        if !is_positive(&mail_reply) {
            return if in_data {
                abandoned(Stage::Mail, mail_reply)
            } else {
                self.abort(Stage::Mail, mail_reply).await
            };
        }
        let mut rcpts = Recipients::default();
        for (rcpt, ok) in msg.rcpt_to.iter().zip(&sent) {
            let reply = if *ok {
                match replies.next() {
                    Some(r) => r,
                    None => {
                        return Tx::failed(
                            UpstreamError::Smtp {
                                stage: Stage::Rcpt,
                                source: SmtpError::UnparseableReply,
                            },
                            false,
                        );
                    }
                }
            } else {
                not_sent()
            };
            if is_positive(&reply) {
                rcpts.accepted += 1;
            } else if let Err(reply) = rcpts.file(rcpt, reply, msg.partial) {
                let tx = if in_data {
                    abandoned(Stage::Rcpt, reply)
                } else {
                    self.abort(Stage::Rcpt, reply).await
                };
                return tx.keeping(rcpts.refused);
            }
        }
        if rcpts.accepted == 0 {
            if in_data {
                return Tx {
                    outcome: rcpts.none_accepted(),
                    reusable: false,
                };
            }
            let reusable = self.reset().await.is_ok();
            return Tx {
                outcome: rcpts.none_accepted(),
                reusable,
            };
        }
        if !in_data {
            return self
                .abort(Stage::Data, data_reply)
                .await
                .keeping(rcpts.refused);
        }
        self.finish_data(server, msg, rcpts.refused, rcpts.deferred)
            .await
    }

    /// RCPT TO for each recipient on its own. 5xx refusals (and 4xx ones
    /// when `partial`) are collected; any other failure ends the
    /// transaction (the `Err` is its outcome).
    async fn recipients(&mut self, rcpt_to: &[String], partial: bool) -> Result<Recipients, Tx> {
        let mut out = Recipients::default();
        for rcpt in rcpt_to {
            let reply = if safe_address(rcpt) {
                let line = format!("RCPT TO:<{rcpt}>\r\n");
                match self.command(Stage::Rcpt, line.as_bytes()).await {
                    Ok(r) => r,
                    Err(e) => return Err(Tx::failed(e, false).keeping(out.refused)),
                }
            } else {
                not_sent()
            };
            if is_positive(&reply) {
                out.accepted += 1;
            } else if let Err(reply) = out.file(rcpt, reply, partial) {
                return Err(self.abort(Stage::Rcpt, reply).await.keeping(out.refused));
            }
        }
        Ok(out)
    }

    /// Sends the content and reads the final reply.
    async fn finish_data(
        &mut self,
        server: &SmtpServer,
        msg: &Outgoing<'_>,
        refused: Vec<RefusedRecipient>,
        deferred: Vec<RefusedRecipient>,
    ) -> Tx {
        let reply = match self.transfer(server, msg).await {
            Err(e) => return Tx::failed(e, false).keeping(refused),
            Ok(r) => r,
        };
        if is_positive(&reply) {
            return Tx {
                outcome: TxOutcome::Accepted {
                    refused,
                    deferred,
                    reply,
                },
                reusable: true,
            };
        }
        // The transaction is over either way; no RSET needed.
        match reply_class(Stage::EndOfData, reply.code) {
            Class::Permanent => Tx {
                outcome: TxOutcome::Refused(reply),
                reusable: true,
            },
            Class::Temporary => {
                Tx::failed(UpstreamError::reply(Stage::EndOfData, reply), true).keeping(refused)
            }
            _ => Tx::failed(UpstreamError::reply(Stage::EndOfData, reply), false).keeping(refused),
        }
    }

    /// Ends a transaction after an unwanted reply at `stage`: RSET when the
    /// connection is still usable, then a refusal (5xx) or a failure.
    async fn abort(&mut self, stage: Stage, reply: Reply) -> Tx {
        let class = reply_class(stage, reply.code);
        if class == Class::Connection {
            return Tx::failed(UpstreamError::reply(stage, reply), false);
        }
        let reusable = self.reset().await.is_ok();
        let outcome = match class {
            Class::Permanent => TxOutcome::Refused(reply),
            _ => TxOutcome::Failed(UpstreamError::reply(stage, reply)),
        };
        Tx { outcome, reusable }
    }

    /// Writes header and content, dot-stuffed and terminated, and reads the
    /// final reply, all within `data_timeout`. The final reply gets the
    /// rest of that budget rather than `command_timeout`: a server that is
    /// slow to answer after "." (RFC 5321 §4.5.3.2.6 allows 10 minutes) may
    /// already have accepted the message, and failing over then would
    /// deliver it twice.
    async fn transfer(
        &mut self,
        server: &SmtpServer,
        msg: &Outgoing<'_>,
    ) -> Result<Reply, UpstreamError> {
        let phase = async {
            self.write_content(msg).await?;
            self.client
                .read()
                .await
                .map_err(|source| UpstreamError::Smtp {
                    stage: Stage::EndOfData,
                    source,
                })
        };
        match timeout(server.data_timeout, phase).await {
            Err(_) => Err(UpstreamError::Smtp {
                stage: Stage::Data,
                source: SmtpError::Timeout,
            }),
            Ok(r) => r,
        }
    }

    async fn write_content(&mut self, msg: &Outgoing<'_>) -> Result<(), UpstreamError> {
        let io_err = |e| UpstreamError::Smtp {
            stage: Stage::Data,
            source: SmtpError::Io(e),
        };
        let mut stuffer = DotStuffer::default();
        let mut buf = Vec::with_capacity(WRITE_BUFFER + WRITE_BUFFER / 8);
        stuffer.push(msg.header, &mut buf);
        let mut chunks = msg.message.chunks(msg.body_offset);
        while let Some(chunk) = chunks.next().await.map_err(UpstreamError::Local)? {
            for piece in chunk.chunks(WRITE_BUFFER) {
                stuffer.push(piece, &mut buf);
                if buf.len() >= WRITE_BUFFER {
                    self.client.stream.write_all(&buf).await.map_err(io_err)?;
                    buf.clear();
                }
            }
        }
        stuffer.finish(&mut buf);
        self.client.stream.write_all(&buf).await.map_err(io_err)?;
        self.client.stream.flush().await.map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(bits: u32) -> EhloResponse<String> {
        let mut c = EhloResponse::new("x".to_owned());
        c.capabilities = bits;
        c
    }

    #[test]
    fn starttls_decision() {
        let with = caps(EXT_START_TLS);
        let without = caps(0);
        assert!(!wants_starttls(Security::None, &with).unwrap());
        assert!(wants_starttls(Security::Auto, &with).unwrap());
        assert!(!wants_starttls(Security::Auto, &without).unwrap());
        assert!(wants_starttls(Security::StarttlsWhenAvailable, &with).unwrap());
        assert!(!wants_starttls(Security::StarttlsWhenAvailable, &without).unwrap());
        assert!(wants_starttls(Security::Starttls, &with).unwrap());
        assert!(matches!(
            wants_starttls(Security::Starttls, &without),
            Err(UpstreamError::NoStartTls)
        ));
    }

    #[test]
    fn auto_is_implicit_only_on_465() {
        let server = |security, port| SmtpServer {
            host: "h".into(),
            port,
            ca_file: None,
            tls_name: "h".into(),
            helo_name: "me".into(),
            oauth: None,
            settings: crate::config::SmtpSettings {
                security,
                ..Default::default()
            },
        };
        assert!(implicit_tls(&server(Security::Auto, 465)));
        assert!(!implicit_tls(&server(Security::Auto, 587)));
        assert!(implicit_tls(&server(Security::Implicit, 2465)));
        assert!(!implicit_tls(&server(Security::Starttls, 465)));
    }

    #[test]
    fn addresses_cannot_inject() {
        assert!(safe_address("a@b.example"));
        assert!(safe_address("jörg@bücher.example"));
        assert!(safe_address(""));
        assert!(!safe_address("a@b\r\nRCPT TO:<x@y>"));
        assert!(!safe_address("a@b>"));
    }
}
