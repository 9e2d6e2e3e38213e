//! The session state machine: bytes in, replies and events out. Pure — no
//! sockets, no clock, no files. The driver feeds it what it reads, writes
//! what it produces, and performs the events (TLS handshake, password
//! check, delivery) it asks for, reporting the results back.
//!
//! Commands are parsed by smtp-proto one complete line at a time (we split
//! lines ourselves to enforce `max_line_length` and to pipeline); message
//! content goes through our own DATA decoder (see `data`).

use super::data::DataDecoder;
use super::reply::{self, EhloCaps, Reply};
use crate::config::values::EmailAddress;
use crate::config::{Config, Listener, ListenerAuth, ListenerTls};
use crate::policy::{self, IdentifiedBy, RcptVerdict, RecipientPlan};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use memchr::memchr;
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ProtoError, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, Request,
};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the driver must do before feeding more input.
pub enum Event {
    /// Write the pending output, drop any input that came after STARTTLS,
    /// run the TLS handshake and call [`Session::tls_started`].
    StartTls,
    /// Check the password (blocking work) and call [`Session::auth_result`].
    Authenticate {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// A complete message: take the body with [`Session::take_body`],
    /// deliver, and call [`Session::message_result`].
    Message(Box<Envelope>),
    /// Write the pending output and close.
    Close,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::StartTls => f.write_str("StartTls"),
            // Never the password, even in a debug dump.
            Event::Authenticate { user, .. } => {
                write!(f, "Authenticate {{ user: {user:?}, password: <redacted> }}")
            }
            Event::Message(env) => f.debug_tuple("Message").field(env).finish(),
            Event::Close => f.write_str("Close"),
        }
    }
}

pub use crate::envelope::{Envelope, TlsInfo};

/// Result of a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// Credentials valid.
    Ok,
    /// Credentials invalid.
    Failed,
    /// Too many failures from this address: reply 421 and close.
    LockedOut,
}

#[derive(Debug)]
enum Phase {
    Command,
    Data(DataDecoder),
    Bdat {
        left: usize,
        last: bool,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass {
        user: String,
    },
    /// An event is out; nothing is fed until its result comes back.
    Waiting,
    Closed,
}

#[derive(Debug)]
struct Tx {
    mail_from: String,
    smtputf8: bool,
    body_8bit: bool,
    app: String,
    by: IdentifiedBy,
    rcpts: Vec<RecipientPlan>,
    /// BDAT: total size so far, and whether the message is being thrown away.
    bdat_size: u64,
    bdat_started: bool,
    bdat_discard: bool,
    /// A bare CR/LF was seen in BDAT content; a CR ended the last chunk.
    bdat_bare: bool,
    bdat_cr: bool,
}

/// One SMTP session's protocol state.
pub struct Session {
    /// The client address or listener identifies an application.
    owned: bool,
    /// A reload removed an application a moment ago: refusing an unknown
    /// client is not final (4xx instead of 5xx).
    unknown_transient: bool,
    cfg: Arc<Config>,
    listener: Listener,
    peer: SocketAddr,
    tls: Option<TlsInfo>,
    helo: Option<String>,
    auth_user: Option<String>,
    phase: Phase,
    tx: Option<Tx>,
    body: Vec<u8>,
    out: Vec<u8>,
    line: Vec<u8>,
    line_too_long: bool,
    closed_with: Option<(u16, Option<reply::Enhanced>)>,
    rejections: Vec<(String, crate::policy::ListOrigin)>,
    /// The runtime blacklist, read at each RCPT (unlike the config, it is
    /// not pinned: an entry added at run time applies to the next RCPT).
    runtime_blacklist: Option<RuntimeHandle>,
    /// Some line of this client (command or content) ended in CRLF: its
    /// `<LF>.<LF>` never ends DATA (see `data`).
    sent_crlf: bool,
}

/// Where a session reads the current runtime blacklist snapshot.
pub type RuntimeHandle = std::sync::Arc<arc_swap::ArcSwap<crate::blacklist::RuntimeBlacklist>>;

fn proto_error_reply(e: &ProtoError) -> Reply {
    match e {
        ProtoError::UnknownCommand => reply::unknown_command(),
        ProtoError::InvalidSenderAddress => reply::bad_sender(),
        ProtoError::InvalidRecipientAddress => reply::bad_recipient(),
        ProtoError::SyntaxError { syntax } => reply::syntax_error(syntax),
        ProtoError::InvalidParameter { param } => reply::syntax_error(param),
        ProtoError::UnsupportedParameter { param } => reply::unsupported_parameter(param),
        ProtoError::ResponseTooLong
        | ProtoError::NeedsMoreData { .. }
        | ProtoError::InvalidResponse { .. } => reply::syntax_error("malformed command"),
    }
}

/// Whether the address in a MAIL/RCPT line ends in an address literal
/// (`@[...]>`).
fn has_address_literal(line: &[u8]) -> bool {
    let Some(open) = memchr(b'<', line) else {
        return false;
    };
    let Some(close) = line.iter().rposition(|b| *b == b'>') else {
        return false;
    };
    let addr = &line[open + 1..close.max(open + 1)];
    addr.ends_with(b"]") && addr.windows(2).any(|w| w == b"@[")
}

/// The chunk size of a `BDAT size [LAST]` line: digits only, and a number
/// that fits (RFC 3030 §2: `1*DIGIT`). `None` for anything else.
fn bdat_size(line: &[u8]) -> Option<usize> {
    let rest = line.get(4..)?;
    if !rest.starts_with(b" ") {
        return None;
    }
    let rest = rest.trim_ascii_start();
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    let digits = std::str::from_utf8(&rest[..end]).ok()?;
    if digits.is_empty() {
        return None;
    }
    digits.parse::<u64>().ok()?.try_into().ok()
}

/// smtp-proto returns quoted local parts without their quotes; put them
/// back where the local part is not a dot-atom, so the address we relay is
/// the address the client meant.
fn requote(addr: &str) -> String {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return addr.to_owned();
    };
    let atom_ok =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_atom = !local.is_empty()
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| c == '.' || atom_ok(c));
    if dot_atom || (local.starts_with('"') && local.ends_with('"') && local.len() > 1) {
        return addr.to_owned();
    }
    let mut q = String::with_capacity(addr.len() + 4);
    q.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push_str("\"@");
    q.push_str(domain);
    q
}

/// Writes `chunk` (BDAT content) into `out` with strict CRLF line endings,
/// tracking a CR at the end of the previous chunk. Returns whether a bare
/// CR or LF was seen.
fn normalize_crlf(chunk: &[u8], pending_cr: &mut bool, out: &mut Vec<u8>) -> bool {
    let mut bare = false;
    let mut start = 0;
    for (i, &b) in chunk.iter().enumerate() {
        match b {
            b'\n' if *pending_cr => {
                out.extend_from_slice(&chunk[start..i]);
                out.extend_from_slice(b"\r\n");
                start = i + 1;
                *pending_cr = false;
            }
            b'\n' => {
                out.extend_from_slice(&chunk[start..i]);
                out.extend_from_slice(b"\r\n");
                start = i + 1;
                bare = true;
            }
            _ if *pending_cr => {
                // The CR before this byte was bare.
                out.extend_from_slice(&chunk[start..i]);
                out.extend_from_slice(b"\r\n");
                start = i;
                bare = true;
                *pending_cr = b == b'\r';
                if *pending_cr {
                    start = i + 1;
                }
            }
            b'\r' => {
                out.extend_from_slice(&chunk[start..i]);
                start = i + 1;
                *pending_cr = true;
            }
            _ => {}
        }
    }
    out.extend_from_slice(&chunk[start..]);
    bare
}

impl Session {
    /// A new session on `listener` for a client at `peer`, pinned to `cfg`.
    /// `tls` is set for implicit-TLS listeners (the handshake came first).
    pub fn new(
        cfg: Arc<Config>,
        listener: Listener,
        peer: SocketAddr,
        tls: Option<TlsInfo>,
    ) -> Self {
        let owned = policy::identify(&cfg, Some(&listener), None, peer.ip()).is_some();
        Session {
            owned,
            unknown_transient: false,
            cfg,
            listener,
            peer,
            tls,
            helo: None,
            auth_user: None,
            phase: Phase::Command,
            tx: None,
            body: Vec::new(),
            out: Vec::new(),
            line: Vec::new(),
            line_too_long: false,
            closed_with: None,
            rejections: Vec::new(),
            runtime_blacklist: None,
            sent_crlf: false,
        }
    }

    /// Merges the runtime blacklist (admin API) into RCPT checks.
    pub fn with_runtime_blacklist(mut self, handle: RuntimeHandle) -> Self {
        self.runtime_blacklist = Some(handle);
        self
    }

    /// The greeting; the driver sends it first.
    pub fn greet(&mut self) {
        self.reply(reply::greeting(&self.cfg.system.hostname));
    }

    /// The pinned config.
    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// Replies waiting to be written; the driver takes them.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether the client is inside DATA or BDAT (the driver uses the data
    /// timeout then, and lets the transfer finish on shutdown).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Bdat { .. })
            || self.tx.as_ref().is_some_and(|t| t.bdat_started)
    }

    /// Whether a mail transaction is open (from MAIL until its end): its
    /// content may be spread over several BDAT chunks with commands between.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether the session is between commands (shutdown may close it now).
    pub fn idle(&self) -> bool {
        matches!(self.phase, Phase::Command) && self.line.is_empty()
    }

    /// Whether the session has ended.
    pub fn closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Bytes of message content held in memory.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Takes the message content received so far (the driver spools large
    /// messages to disk piece by piece, and takes the rest at the end).
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    /// The negotiated TLS session, if any.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The AUTH user, once authenticated.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    fn reply_none(&mut self, r: Reply) -> Option<Event> {
        self.reply(r);
        None
    }

    fn reply(&mut self, r: Reply) {
        r.write_to(&mut self.out);
    }

    /// Shortly after a reload that removed an application, a client nobody
    /// knows gets `421 4.7.1` at MAIL instead of a 5xx: its application may
    /// only be missing while the config files are being rewritten.
    pub fn unknown_is_transient(&mut self) {
        self.unknown_transient = true;
    }

    /// Whether the client is known: authenticated, or identified by its
    /// address or listener. Unknown clients get a shorter idle time and
    /// are dropped after their first refused MAIL.
    pub fn identified(&self) -> bool {
        self.owned || self.auth_user.is_some()
    }

    /// Replies and closes (421s, QUIT).
    pub fn close_with(&mut self, r: Reply) {
        self.closed_with = Some((r.code, r.enhanced));
        self.reply(r);
        self.phase = Phase::Closed;
    }

    /// The code and enhanced code of the reply the session closed with.
    pub fn closed_with(&self) -> Option<(u16, Option<reply::Enhanced>)> {
        self.closed_with
    }

    /// Recipients refused by a blacklist since the last call: (application, list).
    pub fn take_rejections(&mut self) -> Vec<(String, crate::policy::ListOrigin)> {
        std::mem::take(&mut self.rejections)
    }

    fn auth_offered(&self) -> bool {
        policy::auth_offered(&self.cfg, &self.listener, self.tls.is_some())
    }

    fn reset_tx(&mut self) {
        self.tx = None;
        self.body.clear();
    }

    /// Feeds input. Returns how many bytes were consumed and the event the
    /// driver must handle, if any; unconsumed bytes are fed again after the
    /// event's result.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let mut pos = 0;
        while pos < input.len() {
            match &mut self.phase {
                Phase::Waiting | Phase::Closed => return (pos, None),
                Phase::Data(dec) => match dec.feed(&input[pos..], &mut self.body) {
                    Some(n) => {
                        pos += n;
                        if let Some(ev) = self.end_of_data() {
                            return (pos, Some(ev));
                        }
                    }
                    None => pos = input.len(),
                },
                Phase::Bdat { left, last } => {
                    let take = (*left).min(input.len() - pos);
                    let last = *last;
                    *left -= take;
                    let done = *left == 0;
                    let chunk = &input[pos..pos + take];
                    pos += take;
                    let max = self.cfg.limits.max_message_size;
                    if let Some(tx) = self.tx.as_mut() {
                        tx.bdat_size += take as u64;
                        if tx.bdat_size > max {
                            tx.bdat_discard = true;
                        }
                        if !tx.bdat_discard {
                            tx.bdat_bare |= normalize_crlf(chunk, &mut tx.bdat_cr, &mut self.body);
                            tx.body_8bit = tx.body_8bit || chunk.iter().any(|b| *b >= 0x80);
                        }
                    }
                    if done && let Some(ev) = self.end_of_chunk(last) {
                        return (pos, Some(ev));
                    }
                }
                Phase::Command
                | Phase::AuthPlain
                | Phase::AuthLoginUser
                | Phase::AuthLoginPass { .. } => {
                    let rest = &input[pos..];
                    let max = self.cfg.limits.max_line_length;
                    match memchr(b'\n', rest) {
                        None => {
                            if self.line.len() + rest.len() > max {
                                self.line_too_long = true;
                                self.line.clear();
                            } else {
                                self.line.extend_from_slice(rest);
                            }
                            pos = input.len();
                        }
                        Some(i) => {
                            pos += i + 1;
                            if self.line.len() + i + 1 > max + 2 {
                                self.line_too_long = true;
                            }
                            if std::mem::take(&mut self.line_too_long) {
                                self.line.clear();
                                self.reply(reply::line_too_long(max));
                                if !matches!(self.phase, Phase::Command) {
                                    self.phase = Phase::Command;
                                }
                                continue;
                            }
                            let mut line = std::mem::take(&mut self.line);
                            line.extend_from_slice(&rest[..=i]);
                            self.sent_crlf |= line.ends_with(b"\r\n");
                            let ev = if matches!(self.phase, Phase::Command) {
                                self.command(&line)
                            } else {
                                self.auth_line(&line)
                            };
                            if ev.is_some() {
                                return (pos, ev);
                            }
                            if self.closed() {
                                return (pos, Some(Event::Close));
                            }
                        }
                    }
                }
            }
        }
        (pos, None)
    }

    fn command(&mut self, line: &[u8]) -> Option<Event> {
        // smtp-proto decodes addresses lossily: an address that is not
        // UTF-8 would be relayed with U+FFFD in it.
        if std::str::from_utf8(line).is_err() {
            let verb = line.get(..4).map(<[u8]>::to_ascii_uppercase);
            match verb.as_deref() {
                Some(b"MAIL") => return self.reply_none(reply::address_not_utf8(false)),
                Some(b"RCPT") => return self.reply_none(reply::address_not_utf8(true)),
                _ => {}
            }
        }
        let req = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            // smtp-proto does not parse address literals (`user@[192.0.2.1]`,
            // valid RFC 5321 syntax): a policy refusal, not a syntax error.
            Err(ProtoError::InvalidRecipientAddress) if has_address_literal(line) => {
                self.reply(reply::address_literal_refused());
                return None;
            }
            Err(e) => {
                self.reply(proto_error_reply(&e));
                return None;
            }
        };
        match req {
            Request::Ehlo { host } => {
                self.reset_tx();
                let caps = EhloCaps {
                    size: self.cfg.limits.max_message_size,
                    starttls: self.listener.tls == ListenerTls::Starttls && self.tls.is_none(),
                    auth: self.auth_offered() && self.auth_user.is_none(),
                };
                self.reply(reply::ehlo(&self.cfg.system.hostname, &host, &caps));
                self.helo = Some(host);
            }
            Request::Helo { host } => {
                self.reset_tx();
                self.reply(reply::helo(&self.cfg.system.hostname));
                self.helo = Some(host);
            }
            Request::Lhlo { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.reply(reply::not_implemented()),
            Request::Noop { .. } => self.reply(reply::ok()),
            Request::Rset => {
                self.reset_tx();
                self.reply(reply::ok());
            }
            Request::Quit => self.close_with(reply::bye()),
            Request::Help { .. } => self.reply(reply::help()),
            Request::Vrfy { .. } => self.reply(reply::vrfy_refused()),
            Request::Expn { .. } => self.reply(reply::not_implemented()),
            Request::StartTls => {
                if self.listener.tls != ListenerTls::Starttls || self.tls.is_some() {
                    self.reply(reply::tls_unavailable());
                } else {
                    self.reply(reply::starttls_go_ahead());
                    self.phase = Phase::Waiting;
                    return Some(Event::StartTls);
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth_start(mechanism, initial_response),
            Request::Mail { from } => self.mail(from, line),
            Request::Rcpt { to } => self.rcpt(&to.address, line),
            Request::Data => match &self.tx {
                None => self.reply(reply::bad_sequence("Need MAIL command")),
                Some(tx) if tx.rcpts.is_empty() => self.reply(reply::no_valid_recipients()),
                Some(tx) if tx.bdat_started => self.reply(reply::bad_sequence("DATA after BDAT")),
                Some(tx) => {
                    let mut dec = DataDecoder::new(self.cfg.limits.max_message_size);
                    // A legacy client that has only ever sent bare LF may
                    // end with <LF>.<LF> where bare LF is allowed.
                    dec.lf_end = !self.sent_crlf && self.allow_bare_lf(&tx.app);
                    self.body.clear();
                    self.reply(reply::data_go_ahead());
                    self.phase = Phase::Data(dec);
                }
            },
            Request::Bdat { is_last, .. } => {
                // smtp-proto saturates an overlong size; read it ourselves.
                // A size we cannot read leaves us out of step with the byte
                // stream, so the session ends.
                let Some(chunk_size) = bdat_size(line) else {
                    self.close_with(reply::bad_chunk_size());
                    return Some(Event::Close);
                };
                // The chunk is read in every case, so the byte stream stays in step.
                if let Some(tx) = self.tx.as_mut() {
                    tx.bdat_started = true;
                    if tx.rcpts.is_empty() {
                        tx.bdat_discard = true;
                    }
                }
                self.phase = Phase::Bdat {
                    left: chunk_size,
                    last: is_last,
                };
                if chunk_size == 0 {
                    return self.end_of_chunk(is_last);
                }
            }
        }
        None
    }

    fn identify(&self) -> Result<(String, IdentifiedBy), Reply> {
        policy::identify_client(
            &self.cfg,
            &self.listener,
            self.auth_user.as_deref(),
            self.peer.ip(),
            self.tls.is_some(),
        )
        .map(|(app, by)| (app.name.clone(), by))
        .map_err(|r| reply::refusal(&r))
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>, _line: &[u8]) {
        if self.helo.is_none() {
            return self.reply(reply::bad_sequence("Send EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return self.reply(reply::bad_sequence("Nested MAIL command"));
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            // Not offered: its content would need BDAT without CRLF rules.
            return self.reply(reply::unsupported_parameter("BODY=BINARYMIME"));
        }
        if from.size as u64 > self.cfg.limits.max_message_size {
            return self.reply(reply::message_too_big(self.cfg.limits.max_message_size));
        }
        let (app, by) = match self.identify() {
            Ok(x) => x,
            // A client nobody knows that tries to send without AUTH is done:
            // keeping its session open would only hold a slot.
            Err(_) if !self.identified() && self.unknown_transient => {
                return self.close_with(reply::not_recognised_for_now());
            }
            Err(r) if !self.identified() => return self.close_with(r),
            Err(r) => return self.reply(r),
        };
        let Some(application) = self.cfg.applications.get(&app) else {
            return self.reply(reply::relay_denied());
        };
        let eff = policy::resolve(&self.cfg, application);
        if let Err(r) = policy::check_mail(&self.cfg, &eff) {
            return self.reply(reply::refusal(&r));
        }
        let address = if from.address.is_empty() {
            String::new()
        } else {
            let a = requote(&from.address);
            if a.parse::<EmailAddress>().is_err() {
                return self.reply(reply::bad_sender());
            }
            a
        };
        self.tx = Some(Tx {
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0 || !address.is_ascii(),
            // Set from the content itself at its end: a declared
            // BODY=8BITMIME on ASCII content needs no 8BITMIME upstream,
            // undeclared 8-bit content (legacy clients) does.
            body_8bit: false,
            mail_from: address,
            app,
            by,
            rcpts: Vec::new(),
            bdat_size: 0,
            bdat_started: false,
            bdat_discard: false,
            bdat_bare: false,
            bdat_cr: false,
        });
        self.reply(reply::mail_ok());
    }

    fn rcpt(&mut self, address: &str, line: &[u8]) {
        let Some(tx) = self.tx.as_ref() else {
            return self.reply(reply::bad_sequence("Need MAIL before RCPT"));
        };
        if tx.rcpts.len() >= self.cfg.limits.max_recipients {
            return self.reply(reply::too_many_recipients());
        }
        let address = if address.is_empty() {
            // smtp-proto returns "" for both <> and <postmaster>.
            let upper = String::from_utf8_lossy(line).to_ascii_uppercase();
            if !upper.contains("<POSTMASTER>") {
                return self.reply(reply::bad_recipient());
            }
            match &self.cfg.system.bounce_address {
                Some(b) => b.to_string(),
                None => return self.reply(reply::no_postmaster()),
            }
        } else {
            let a = requote(address);
            if a.parse::<EmailAddress>().is_err() {
                return self.reply(reply::bad_recipient());
            }
            // Valid, but the upstream client would refuse to put it into
            // `RCPT TO:<..>`: refuse it here, in the relay's own words,
            // rather than blame an upstream after DATA.
            if a.contains(['<', '>']) {
                return self.reply(reply::unsendable_recipient());
            }
            a
        };
        let app = &tx.app;
        let Some(application) = self.cfg.applications.get(app) else {
            return self.reply(reply::relay_denied());
        };
        let eff = policy::resolve(&self.cfg, application);
        let runtime = self.runtime_blacklist.as_ref().map(|h| h.load_full());
        let verdict = policy::check_rcpt_with(
            &self.cfg,
            &eff,
            &address,
            runtime.as_deref().unwrap_or(&Default::default()),
        );
        if let RcptVerdict::Reject { list, .. } = verdict {
            tracing::info!(peer = %self.peer, app = %app, rcpt = %address, list = %list, "recipient rejected by blacklist");
            self.rejections.push((app.clone(), list));
            return self.reply(reply::recipient_blacklisted());
        }
        let smtputf8 = !address.is_ascii();
        if let Some(tx) = self.tx.as_mut() {
            tx.smtputf8 |= smtputf8;
            tx.rcpts.push(RecipientPlan {
                original: address,
                verdict,
            });
        }
        self.reply(reply::rcpt_ok());
    }

    fn allow_bare_lf(&self, app: &str) -> bool {
        self.cfg
            .applications
            .get(app)
            .and_then(|a| a.allow_bare_lf)
            .unwrap_or(self.listener.allow_bare_lf)
    }

    fn envelope(&mut self) -> Option<Box<Envelope>> {
        let tx = self.tx.as_ref()?;
        Some(Box::new(Envelope {
            mail_from: tx.mail_from.clone(),
            recipients: tx.rcpts.clone(),
            application: tx.app.clone(),
            identified_by: tx.by,
            smtputf8: tx.smtputf8,
            body_8bit: tx.body_8bit,
            helo: self.helo.clone().unwrap_or_default(),
            auth_user: self.auth_user.clone(),
            tls: self.tls.clone(),
            peer: self.peer,
        }))
    }

    fn end_of_data(&mut self) -> Option<Event> {
        let Phase::Data(dec) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return None;
        };
        let app = self.tx.as_ref().map(|t| t.app.clone()).unwrap_or_default();
        self.sent_crlf |= dec.saw_crlf;
        if dec.over_limit() {
            self.reset_tx();
            self.reply(reply::message_too_big(self.cfg.limits.max_message_size));
            return None;
        }
        if dec.saw_bare && !self.allow_bare_lf(&app) {
            tracing::info!(peer = %self.peer, app = %app, "message refused: bare CR or LF");
            self.reset_tx();
            self.reply(reply::bare_line_ending());
            return None;
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.body_8bit = dec.saw_8bit;
        }
        let env = self.envelope()?;
        self.phase = Phase::Waiting;
        Some(Event::Message(env))
    }

    fn end_of_chunk(&mut self, last: bool) -> Option<Event> {
        self.phase = Phase::Command;
        let Some(tx) = self.tx.as_mut() else {
            self.reply(reply::bad_sequence("Need MAIL command"));
            return None;
        };
        if !last {
            let discard = tx.bdat_discard;
            let size = tx.bdat_size as usize;
            if discard {
                // Keep reading chunks; the refusal comes with LAST.
                self.body.clear();
            }
            self.reply(reply::chunk_ok(size));
            return None;
        }
        if tx.bdat_cr {
            tx.bdat_cr = false;
            tx.bdat_bare = true;
            self.body.extend_from_slice(b"\r\n");
        }
        let (discard, bare, app, no_rcpt) = (
            tx.bdat_discard,
            tx.bdat_bare,
            tx.app.clone(),
            tx.rcpts.is_empty(),
        );
        if no_rcpt {
            self.reset_tx();
            self.reply(reply::no_valid_recipients());
            return None;
        }
        if discard {
            self.reset_tx();
            self.reply(reply::message_too_big(self.cfg.limits.max_message_size));
            return None;
        }
        if bare && !self.allow_bare_lf(&app) {
            self.reset_tx();
            self.reply(reply::bare_line_ending());
            return None;
        }
        let env = self.envelope()?;
        self.phase = Phase::Waiting;
        Some(Event::Message(env))
    }

    /// Reports the outcome of a delivery: the reply to send. The transaction
    /// ends either way; the session goes on.
    pub fn message_result(&mut self, r: Reply) {
        self.reset_tx();
        self.phase = Phase::Command;
        self.reply(r);
    }

    /// The TLS handshake succeeded: the session starts over (RFC 3207 §4.2).
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.helo = None;
        self.auth_user = None;
        self.reset_tx();
        self.line.clear();
        self.phase = Phase::Command;
    }

    fn auth_start(&mut self, mechanism: u64, initial: String) -> Option<Event> {
        if self.helo.is_none() {
            self.reply(reply::bad_sequence("Send EHLO first"));
            return None;
        }
        if self.auth_user.is_some() {
            self.reply(reply::bad_sequence("Already authenticated"));
            return None;
        }
        if self.tx.is_some() {
            self.reply(reply::bad_sequence(
                "AUTH not allowed during a mail transaction",
            ));
            return None;
        }
        if self.listener.auth == ListenerAuth::None || !self.cfg.has_auth_users() {
            self.reply(reply::not_implemented());
            return None;
        }
        if self.tls.is_none() && !self.listener.allow_plaintext_auth {
            self.reply(reply::encryption_required());
            return None;
        }
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.reply(reply::auth_challenge(""));
                self.phase = Phase::AuthPlain;
                None
            }
            AUTH_PLAIN => self.auth_plain(initial.as_bytes()),
            AUTH_LOGIN if initial.is_empty() => {
                self.reply(reply::auth_challenge("VXNlcm5hbWU6"));
                self.phase = Phase::AuthLoginUser;
                None
            }
            AUTH_LOGIN => {
                self.phase = Phase::AuthLoginUser;
                self.auth_line(initial.as_bytes())
            }
            _ => {
                self.reply(reply::auth_mechanism_unsupported());
                None
            }
        }
    }

    fn auth_plain(&mut self, b64: &[u8]) -> Option<Event> {
        self.phase = Phase::Command;
        let Ok(raw) = B64.decode(b64) else {
            self.reply(reply::auth_malformed());
            return None;
        };
        let mut parts = raw.split(|b| *b == 0);
        let (Some(authz), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.reply(reply::auth_malformed());
            return None;
        };
        let (Ok(authz), Ok(user), Ok(pass)) = (
            std::str::from_utf8(authz),
            std::str::from_utf8(user),
            std::str::from_utf8(pass),
        ) else {
            self.reply(reply::auth_malformed());
            return None;
        };
        if !authz.is_empty() && authz != user {
            self.reply(reply::auth_failed());
            return None;
        }
        self.phase = Phase::Waiting;
        Some(Event::Authenticate {
            user: user.to_owned(),
            password: pass.to_owned(),
        })
    }

    fn auth_line(&mut self, line: &[u8]) -> Option<Event> {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"*" {
            self.phase = Phase::Command;
            self.reply(reply::auth_cancelled());
            return None;
        }
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthPlain => self.auth_plain(text),
            Phase::AuthLoginUser => match B64
                .decode(text)
                .ok()
                .and_then(|u| String::from_utf8(u).ok())
            {
                Some(user) => {
                    self.reply(reply::auth_challenge("UGFzc3dvcmQ6"));
                    self.phase = Phase::AuthLoginPass { user };
                    None
                }
                None => {
                    self.reply(reply::auth_malformed());
                    None
                }
            },
            Phase::AuthLoginPass { user } => match B64
                .decode(text)
                .ok()
                .and_then(|p| String::from_utf8(p).ok())
            {
                Some(password) => {
                    self.phase = Phase::Waiting;
                    Some(Event::Authenticate { user, password })
                }
                None => {
                    self.reply(reply::auth_malformed());
                    None
                }
            },
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// Reports the password check.
    pub fn auth_result(&mut self, user: &str, r: AuthResult) {
        self.phase = Phase::Command;
        match r {
            AuthResult::Ok => {
                self.auth_user = Some(user.to_owned());
                self.reply(reply::auth_ok());
            }
            AuthResult::Failed => self.reply(reply::auth_failed()),
            AuthResult::LockedOut => self.close_with(reply::auth_locked_out()),
        }
    }
}

#[cfg(test)]
mod tests;
