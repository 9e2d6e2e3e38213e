//! The session driver: the only code that touches a client's socket. It
//! feeds what it reads to the state machine, writes its replies (once per
//! read, so pipelined replies leave together), enforces timeouts, performs
//! the events the state machine asks for, and honours shutdown.

use super::reply;
use super::services::Services;
use super::state::{AuthResult, Envelope, Event, Session, TlsInfo};
use super::throttle::{Attempt, FailureVerdict};
use crate::config::Config;
use crate::message::{Message, Spooler};
use crate::metrics::{ListLabels, ListenerLabel, TlsLabels};
use crate::util;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::TlsStream;

/// A client connection, plaintext or upgraded to TLS.
pub type Conn<S> = crate::tls::MaybeTls<S, TlsStream<S>>;

/// How a session ended (the `outcome` label of `smarthost_sessions_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent QUIT.
    Quit,
    /// The client closed the connection.
    Closed,
    /// Command or data timeout (421 4.4.2).
    Timeout,
    /// The relay shut down (421 4.3.2).
    Shutdown,
    /// Too many AUTH failures (421 4.7.0).
    LockedOut,
    /// Refused and dropped: a client that may not send, or a BDAT size the
    /// relay cannot read (5xx, then close).
    Refused,
    /// A local error.
    Error,
}

impl End {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::Closed => "closed",
            End::Timeout => "timeout",
            End::Shutdown => "shutdown",
            End::LockedOut => "locked_out",
            End::Refused => "refused",
            End::Error => "error",
        }
    }

    fn of(session: &Session) -> End {
        match session.closed_with() {
            Some((221, _)) => End::Quit,
            Some((421, Some((4, 4, 2)))) => End::Timeout,
            Some((421, Some((4, 3, 2)))) => End::Shutdown,
            Some((421, Some((4, 7, 0)))) => End::LockedOut,
            Some((code, _)) if code >= 500 => End::Refused,
            Some(_) => End::Error,
            None => End::Closed,
        }
    }
}

/// What we know of a negotiated TLS session, for `Received:` and logs.
pub fn tls_info<S>(s: &TlsStream<S>) -> TlsInfo {
    let c = s.get_ref().1;
    TlsInfo {
        version: c
            .protocol_version()
            .map_or_else(|| "TLS".to_owned(), crate::tls::version_name),
        cipher: c
            .negotiated_cipher_suite()
            .map_or_else(String::new, |cs| format!("{:?}", cs.suite())),
    }
}

/// Runs the TLS handshake on `s` within `timeout`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    cfg: Arc<rustls::ServerConfig>,
    s: S,
    timeout: Duration,
) -> io::Result<TlsStream<S>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::time::timeout(timeout, acceptor.accept(s))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | ';'))
        .take(255)
        .collect()
}

/// The `Received:` header for a message (RFC 5321 §4.4, RFC 3848 protocol names).
pub fn received_header(
    cfg: &Config,
    env: &Envelope,
    id: &str,
    rcpts: &[String],
    now: i64,
) -> Vec<u8> {
    // RFC 3848 (ESMTP[S][A]) and RFC 6531 §4.3 (UTF8SMTP[S][A]).
    let proto = format!(
        "{}{}{}",
        if env.smtputf8 { "UTF8SMTP" } else { "ESMTP" },
        if env.tls.is_some() { "S" } else { "" },
        if env.auth_user.is_some() { "A" } else { "" }
    );
    let mut h = format!(
        "Received: from {} ([{}])\r\n\tby {} (smarthost) with {proto} id {id}",
        sanitize(&env.helo),
        env.peer.ip(),
        cfg.system.hostname
    );
    if let Some(t) = &env.tls {
        h.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            sanitize(&t.version),
            sanitize(&t.cipher)
        ));
    }
    if let [one] = rcpts {
        h.push_str(&format!("\r\n\tfor <{one}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", util::rfc5322_date(now)));
    h.into_bytes()
}

async fn write_out<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    session: &mut Session,
    timeout: Duration,
) -> io::Result<()> {
    if !session.has_output() {
        return Ok(());
    }
    let out = session.take_output();
    tokio::time::timeout(timeout, async {
        conn.write_all(&out).await?;
        conn.flush().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
}

/// Serves one client until it quits, times out, or the relay shuts down,
/// and logs one line about the session.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    services: &Services,
    session_id: &str,
    listener: &str,
    conn: Conn<S>,
    mut session: Session,
) -> io::Result<End> {
    let started = Instant::now();
    let mut messages = 0u32;
    let result = serve(
        services,
        session_id,
        listener,
        conn,
        &mut session,
        &mut messages,
    )
    .await;
    let end = match &result {
        Ok(end) => end.label(),
        Err(_) => "error",
    };
    let error = result.as_ref().err().map(ToString::to_string);
    tracing::info!(
        listener,
        peer = %session.peer(),
        tls = session.tls().map(|t| t.version.as_str()),
        auth_user = session.auth_user(),
        messages,
        duration_ms = started.elapsed().as_millis() as u64,
        end,
        error,
        "session"
    );
    result
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    services: &Services,
    session_id: &str,
    listener: &str,
    mut conn: Conn<S>,
    session: &mut Session,
    messages: &mut u32,
) -> io::Result<End> {
    let cfg = session.config().clone();
    let limits = cfg.limits.clone();
    let mut shutdown = services.shutdown_signal();
    // One input buffer, filled in place (no zeroing, no second copy):
    // small while commands arrive, grown while message data streams in.
    let mut buf: Vec<u8> = Vec::with_capacity(4 << 10);
    let mut spooler: Option<Spooler> = None;
    let mut data_deadline: Option<tokio::time::Instant> = None;
    let spool_dir = cfg.system.spool.join("tmp");
    // The whole session is capped; each command line (not each read) must
    // arrive within the command timeout of the previous reply, so a client
    // sending a byte at a time cannot hold a slot (issue 14 item 3).
    let session_deadline = tokio::time::Instant::now() + limits.max_session_time;
    let command_deadline = |session: &Session| {
        let idle = if session.identified() {
            limits.command_timeout
        } else {
            limits.command_timeout.min(limits.unidentified_timeout)
        };
        (tokio::time::Instant::now() + idle).min(session_deadline)
    };

    if cfg
        .unknown_transient_until
        .is_some_and(|t| std::time::Instant::now() < t)
    {
        session.unknown_is_transient();
    }
    session.greet();
    write_out(&mut conn, session, limits.command_timeout).await?;
    let mut cmd_deadline = command_deadline(session);
    loop {
        // Feed everything buffered, handling events as they come.
        let mut pos = 0;
        while pos < buf.len() && !session.closed() {
            let (n, ev) = session.feed(&buf[pos..]);
            pos += n;
            // Large messages move to disk while they arrive.
            if session.in_transaction()
                && Spooler::wants_at(limits.memory_threshold, session.body_len())
            {
                let sp = spooler
                    .get_or_insert_with(|| Spooler::new(&spool_dir, limits.memory_threshold));
                if let Err(e) = sp.push(session.take_body()).await {
                    tracing::error!(error = %e, dir = %spool_dir.display(), "cannot spool a message to disk");
                    session.close_with(reply::local_error());
                }
            }
            match ev {
                None => {}
                Some(Event::Close) => break,
                Some(Event::StartTls) => {
                    write_out(&mut conn, session, limits.command_timeout).await?;
                    // Anything pipelined after STARTTLS was sent in the clear
                    // and must not be executed inside TLS (CVE-2011-0411).
                    if pos < buf.len() {
                        tracing::warn!(peer = %session.peer(), bytes = buf.len() - pos, "discarding plaintext pipelined after STARTTLS");
                    }
                    pos = buf.len();
                    let Some(tls) = cfg.tls.as_ref() else {
                        return Ok(End::Error);
                    };
                    // The plaintext stream moves into the handshake; `conn` is
                    // assigned again before it is used.
                    let Conn::Plain(plain) = conn else {
                        return Ok(End::Error);
                    };
                    let stream =
                        handshake(tls.server_config.clone(), plain, limits.command_timeout).await?;
                    let info = tls_info(&stream);
                    services
                        .metrics
                        .tls
                        .get_or_create(&TlsLabels {
                            direction: "inbound",
                            version: info.version.clone(),
                        })
                        .inc();
                    conn = Conn::Tls(Box::new(stream));
                    session.tls_started(info);
                }
                Some(Event::Authenticate { user, password }) => {
                    let r = authenticate(services, listener, &cfg, session, &user, password).await;
                    session.auth_result(&user, r);
                }
                Some(Event::Message(env)) => {
                    data_deadline = None;
                    services.traffic.note(&env.application);
                    *messages += 1;
                    let rest = session.take_body();
                    let msg = match spooler.take() {
                        Some(sp) => sp.finish(rest).await,
                        None => Ok(Message::in_memory(rest)),
                    };
                    let r = match msg {
                        Ok(msg) => deliver(services, session_id, &cfg, env, msg).await,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot spool a message to disk");
                            reply::local_error()
                        }
                    };
                    session.message_result(r);
                }
            }
        }
        for (app, list) in session.take_rejections() {
            if let Some(a) = cfg.applications.get(&app) {
                let l = ListLabels {
                    tenant: a.tenant.clone(),
                    application: app,
                    list: list.label(),
                };
                services.metrics.recipients_rejected.get_or_create(&l).inc();
            }
        }
        buf.drain(..pos.min(buf.len()));
        // The spooled part of a message lives as long as its transaction:
        // BDAT chunks arrive with commands (and replies) between them.
        if !session.in_transaction() {
            spooler = None;
        }
        // A reply ends a command: the next one gets a fresh deadline.
        if session.has_output() {
            cmd_deadline = command_deadline(session);
        }
        write_out(&mut conn, session, limits.command_timeout).await?;
        if session.closed() {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.shutdown()).await;
            return Ok(End::of(session));
        }

        // Between commands a shutdown ends the session; a transfer in
        // progress is allowed to finish first.
        if *shutdown.borrow() && !session.in_data() && buf.is_empty() {
            session.close_with(reply::shutting_down());
            write_out(&mut conn, session, limits.command_timeout).await?;
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.shutdown()).await;
            return Ok(End::of(session));
        }

        // Wait for more input.
        let timeout = if session.in_data() {
            let d = *data_deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + limits.data_timeout);
            d.saturating_duration_since(tokio::time::Instant::now())
        } else {
            data_deadline = None;
            cmd_deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let stopping = *shutdown.borrow();
        let room = if session.in_data() { 64 << 10 } else { 4 << 10 };
        buf.reserve(room);
        tokio::select! {
            r = tokio::time::timeout(timeout, conn.read_buf(&mut buf)) => match r {
                Err(_) if !session.in_data() && tokio::time::Instant::now() >= session_deadline => {
                    session.close_with(reply::session_too_long());
                }
                Err(_) => {
                    session.close_with(reply::timeout());
                }
                Ok(Ok(0)) => return Ok(End::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            },
            _ = shutdown.changed(), if !stopping => {}
        }
        if *shutdown.borrow() && !session.in_data() && !session.closed() && buf.is_empty() {
            session.close_with(reply::shutting_down());
        }
        if session.closed() {
            write_out(&mut conn, session, limits.command_timeout).await?;
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.shutdown()).await;
            return Ok(End::of(session));
        }
    }
}

/// Checks a password, applying and counting the per-address throttle:
/// `auth_failures` counts failed checks, `auth_lockouts` the moments an
/// address gets locked out. The attempt is counted before the check (see
/// `throttle`), and checks run on the relay's verifier threads (at most
/// one per CPU, four at most, each reusing its ~19 MiB argon2 buffer).
async fn authenticate(
    services: &Services,
    listener: &str,
    cfg: &Config,
    session: &Session,
    user: &str,
    password: String,
) -> AuthResult {
    let ll = ListenerLabel {
        listener: listener.to_owned(),
    };
    let ip = session.peer().ip();
    let (max, lockout) = (cfg.limits.auth_failures, cfg.limits.auth_lockout);
    let was_locked = services.throttle.is_locked(ip, Instant::now());
    if services.throttle.begin(ip, Instant::now(), max, lockout) == Attempt::LockedOut {
        tracing::warn!(%ip, "AUTH refused: address locked out");
        if !was_locked {
            // Too many attempts at once locked it just now.
            services.metrics.auth_lockouts.get_or_create(&ll).inc();
        }
        return AuthResult::LockedOut;
    }
    // Unknown users are checked against a dummy hash so the answer takes
    // as long as for a known user.
    let app = cfg.application_by_auth_user(user);
    let hash = app
        .and_then(|a| a.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.to_owned());
    let ok = services.verifier.verify(hash, password).await;
    // A user name that is not an account may be a password typed into the
    // wrong field: only known names are logged.
    let shown = if app.is_some() { user } else { "<unknown>" };
    if ok && app.is_some() {
        services.throttle.succeeded(ip);
        tracing::info!(%ip, user, "AUTH succeeded");
        return AuthResult::Ok;
    }
    services.metrics.auth_failures.get_or_create(&ll).inc();
    match services.throttle.failed(ip, Instant::now(), max, lockout) {
        FailureVerdict::Delay(d) => {
            tracing::warn!(%ip, user = shown, delay_ms = d.as_millis() as u64, "AUTH failed");
            tokio::time::sleep(d).await;
            AuthResult::Failed
        }
        FailureVerdict::LockedOut => {
            services.metrics.auth_lockouts.get_or_create(&ll).inc();
            tracing::warn!(%ip, user = shown, lockout_s = lockout.as_secs(), "AUTH failed; address locked out");
            AuthResult::LockedOut
        }
    }
}

/// An argon2id hash of a random password nobody knows.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$lNk2UO7CQcwBk9zQ8hlNXA$T9HyHENESuJe5oqz5Cobuqf9NzVKn+2ghNMzqAflZBI";

/// Hands a complete message to the delivery engine and returns its verdict.
async fn deliver(
    services: &Services,
    session_id: &str,
    cfg: &Arc<Config>,
    env: Box<Envelope>,
    msg: Message,
) -> reply::Reply {
    let id = services.engine.next_id();
    let now = util::unix_now();
    let mut job = crate::delivery::engine::Job {
        id,
        received_at: now,
        envelope: *env,
        received: String::new(),
        dsn: None,
        session: Some(session_id.to_owned()),
    };
    // `Received: ... for <rcpt>` names the recipient actually delivered to.
    let header = received_header(cfg, &job.envelope, &job.id, &job.deliver_to(), now);
    job.received = String::from_utf8_lossy(&header).into_owned();
    services
        .engine
        .submit(
            cfg,
            crate::delivery::engine::Submission { job, message: msg },
        )
        .await
}
