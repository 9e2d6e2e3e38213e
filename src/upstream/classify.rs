//! What went wrong on an upstream hop and what it means for failover.
//!
//! [`UpstreamError`] names the failure and the SMTP stage it happened in;
//! [`classify`] sorts every `mail_send::Error` with an exhaustive `match`
//! (no catch-all arm: a new variant in mail-send must break the build, since
//! failover depends on it), and [`reply_class`] sorts SMTP replies by code
//! and stage. [`sanitize`] makes any text fit for a log line or a client
//! reply: no control characters, bounded, no password.
//!
//! This module decides nothing about connections or retries; `client` and
//! the pool do, based on the [`Class`].

use super::client::SmtpError;
use crate::outcome::{Capability, Failover, FailureClass};
use std::fmt;
use std::io;

/// The SMTP stage a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Name resolution and TCP connect.
    Connect,
    /// The TLS handshake (implicit TLS or after STARTTLS).
    Tls,
    /// Waiting for the 220 greeting.
    Greeting,
    /// EHLO (or the HELO fallback).
    Ehlo,
    /// The STARTTLS command.
    StartTls,
    /// AUTH.
    Auth,
    /// RSET before reusing a pooled connection or after an aborted transaction.
    Rset,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA command and the message transfer.
    Data,
    /// The reply to the final `.`.
    EndOfData,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Tls => "TLS handshake",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Rset => "RSET",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of data",
        })
    }
}

/// A failed hop, before it is turned into a [`Failover`] or a permanent
/// refusal.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The host name did not resolve (or resolved to nothing).
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The configured host.
        host: String,
        /// Resolver text.
        reason: String,
    },
    /// TCP connect did not finish within `connect_timeout`.
    #[error("connect to {addr} timed out")]
    ConnectTimeout {
        /// Address tried.
        addr: String,
    },
    /// TCP connect failed (refused, unreachable...).
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Address tried.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// The SMTP client failed or got an unwanted reply at `stage`.
    #[error("{stage}: {}", describe(.source))]
    Smtp {
        /// Where.
        stage: Stage,
        /// What (replies are `SmtpError::UnexpectedReply`).
        source: SmtpError,
    },
    /// `security = "starttls"` but the server does not offer STARTTLS.
    #[error("the server does not offer STARTTLS (security = \"starttls\" requires it)")]
    NoStartTls,
    /// The TLS client settings could not be built (bad `tls_name`, unreadable `ca_file`).
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// Credentials are configured but the server does not offer AUTH.
    #[error("the server does not offer AUTH")]
    NoAuth,
    /// Credentials are configured, the connection is not encrypted, and
    /// `security` is not `none`: the password is not sent.
    #[error(
        "refusing to send AUTH credentials without TLS (the server did not offer STARTTLS; set security = \"none\" to allow plaintext AUTH)"
    )]
    AuthWithoutTls,
    /// The wanted AUTH mechanism is not offered (or not available here).
    #[error("AUTH {0} is not available with this server")]
    NoAuthMechanism(&'static str),
    /// The message needs an extension the server lacks, or exceeds its SIZE.
    #[error("{1}")]
    Capability(Capability, String),
    /// The message could not be read from memory or the spool file.
    #[error("reading the message: {0}")]
    Local(io::Error),
    /// No OAuth2 token for AUTH XOAUTH2 (the token endpoint failed).
    #[error("XOAUTH2: {0}")]
    OAuth(crate::oauth::OAuthError),
}

impl UpstreamError {
    /// An unwanted reply at `stage`.
    pub fn reply(stage: Stage, reply: smtp_proto::Response<String>) -> Self {
        UpstreamError::Smtp {
            stage,
            source: SmtpError::UnexpectedReply(reply),
        }
    }

    /// The stage this error happened in.
    pub fn stage(&self) -> Stage {
        match self {
            UpstreamError::Resolve { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. } => Stage::Connect,
            UpstreamError::Smtp { stage, .. } => *stage,
            UpstreamError::NoStartTls | UpstreamError::TlsSetup(_) => Stage::StartTls,
            UpstreamError::NoAuth
            | UpstreamError::NoAuthMechanism(_)
            | UpstreamError::AuthWithoutTls
            | UpstreamError::OAuth(_) => Stage::Auth,
            UpstreamError::Capability(..) => Stage::Mail,
            UpstreamError::Local(_) => Stage::Data,
        }
    }

    /// The failover class of this error.
    pub fn class(&self) -> Class {
        match self {
            UpstreamError::Resolve { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. } => Class::Connection,
            UpstreamError::Smtp { stage, source } => classify(*stage, source),
            UpstreamError::NoStartTls | UpstreamError::TlsSetup(_) => Class::Tls,
            UpstreamError::NoAuth
            | UpstreamError::NoAuthMechanism(_)
            | UpstreamError::AuthWithoutTls
            | UpstreamError::OAuth(_) => Class::Auth,
            UpstreamError::Capability(..) => Class::Capability,
            UpstreamError::Local(_) => Class::Local,
        }
    }

    /// The SMTP reply behind this error, if the server sent one.
    pub fn server_reply(&self) -> Option<&smtp_proto::Response<String>> {
        match self {
            UpstreamError::Smtp {
                source: SmtpError::UnexpectedReply(r) | SmtpError::AuthenticationFailed(r),
                ..
            } => Some(r),
            _ => None,
        }
    }

    /// Whether the connection can no longer be used after this error
    /// (the server went away, closed with 421, or the stream is in an
    /// unknown state).
    pub fn breaks_connection(&self) -> bool {
        match self.server_reply() {
            Some(r) => r.code == 421,
            None => !matches!(
                self,
                UpstreamError::Capability(..)
                    | UpstreamError::NoAuth
                    | UpstreamError::NoAuthMechanism(_)
                    | UpstreamError::AuthWithoutTls
                    | UpstreamError::OAuth(_)
            ),
        }
    }

    /// This error as a [`Failover`] for `server`, its text sanitised and
    /// `secret` (the AUTH password) removed.
    pub fn to_failover(&self, server: &str, secret: Option<&str>) -> Failover {
        let class = match self {
            UpstreamError::Capability(need, _) => FailureClass::Capability(*need),
            _ => self.class().failover_class(),
        };
        Failover::new(server, class, sanitize(&self.to_string(), secret))
    }
}

/// mail-send's error in words fit for a failover reason: replies as
/// `code x.y.z text`, an EOF as what it usually is.
fn describe(e: &SmtpError) -> String {
    let reply = |r: &smtp_proto::Response<String>| match enhanced(r) {
        Some((a, b, c)) => format!("{} {a}.{b}.{c} {}", r.code, r.message),
        None => format!("{} {}", r.code, r.message),
    };
    match e {
        SmtpError::UnexpectedReply(r) => reply(r),
        SmtpError::AuthenticationFailed(r) => format!("authentication failed: {}", reply(r)),
        SmtpError::UnparseableReply => {
            "connection closed by the server (or an unparseable reply)".into()
        }
        SmtpError::Timeout => "timed out".into(),
        SmtpError::Tls(t) => super::tls::describe_error(t),
        other => other.to_string(),
    }
}

/// How a failure counts for failover (PRODUCT §3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The server could not be reached, went away, timed out, or said 421.
    Connection,
    /// A 4xx reply: try the next server.
    Temporary,
    /// A 5xx reply to MAIL, RCPT or the message: the answer stands.
    Permanent,
    /// TLS could not be negotiated or the certificate was refused.
    Tls,
    /// AUTH failed or is impossible.
    Auth,
    /// The message needs something the server does not offer.
    Capability,
    /// A local problem (the message could not be read).
    Local,
}

impl Class {
    /// The [`FailureClass`] of a failover. A permanent class only reaches a
    /// failover for replies outside a transaction, which are about the
    /// server, not the message: they count as `connection`. (Capability
    /// errors carry which capability; see [`UpstreamError::to_failover`].)
    pub fn failover_class(self) -> FailureClass {
        match self {
            Class::Connection | Class::Permanent => FailureClass::Connection,
            Class::Temporary => FailureClass::Temporary,
            Class::Tls => FailureClass::Tls,
            Class::Auth => FailureClass::Auth,
            Class::Capability => FailureClass::Capability(Capability::Size),
            Class::Local => FailureClass::Local,
        }
    }
}

/// Sorts a mail-send error seen at `stage`. Exhaustive on purpose.
pub fn classify(stage: Stage, e: &SmtpError) -> Class {
    use SmtpError as E;
    match e {
        // An EOF is `UnparseableReply` in mail-send (CRATES.md pitfall 3).
        E::Io(_) | E::UnparseableReply | E::Timeout => {
            if stage == Stage::Tls {
                Class::Tls
            } else {
                Class::Connection
            }
        }
        E::Tls(_) | E::InvalidTLSName | E::MissingStartTls => Class::Tls,
        E::Base64(_)
        | E::Auth(_)
        | E::AuthenticationFailed(_)
        | E::MissingCredentials
        | E::UnsupportedAuthMechanism => Class::Auth,
        // "530 Must issue a STARTTLS command first" is about TLS, other
        // 530s ("authentication required") about AUTH.
        E::UnexpectedReply(r)
            if r.code == 530 && r.message.to_ascii_uppercase().contains("STARTTLS") =>
        {
            Class::Tls
        }
        E::UnexpectedReply(r) => reply_class(stage, r.code),
        // Only mail-send's own `send()` raises these; we never call it.
        E::MissingMailFrom | E::MissingRcptTo => Class::Local,
    }
}

/// Sorts an unwanted SMTP reply by stage and code.
///
/// 421 means the server is closing the channel: a connection failure
/// wherever it comes. Before a transaction every refusal is about the
/// server (connection, TLS or AUTH). `530` at MAIL ("authentication / TLS
/// required") is a configuration mismatch with this server, not a verdict
/// on the message, so it counts as `auth` (or `tls` when its text asks for
/// STARTTLS, see [`classify`]). Inside a transaction 4xx is
/// temporary and 5xx permanent.
pub fn reply_class(stage: Stage, code: u16) -> Class {
    match (stage, code) {
        (_, 421) => Class::Connection,
        (Stage::Auth, _) => Class::Auth,
        (Stage::StartTls | Stage::Tls, _) => Class::Tls,
        (Stage::Mail | Stage::Rcpt | Stage::Data, 530) => Class::Auth,
        (Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::Rset, _) => Class::Connection,
        (Stage::Mail | Stage::Rcpt | Stage::Data | Stage::EndOfData, 400..=499) => Class::Temporary,
        (Stage::Mail | Stage::Rcpt | Stage::Data | Stage::EndOfData, 500..=599) => Class::Permanent,
        // 1xx, 3xx or garbage where 2xx/4xx/5xx belong: a protocol error.
        _ => Class::Connection,
    }
}

/// Longest reason text kept, in characters.
const MAX_REASON: usize = 300;

/// Makes `text` fit for logs and client replies: control characters become
/// spaces (runs collapse), at most [`MAX_REASON`] characters are kept, and
/// every occurrence of `secret` (three characters or more; shorter ones
/// would mangle the text and cannot be told apart from it) is redacted.
pub fn sanitize(text: &str, secret: Option<&str>) -> String {
    let mut owned = text.to_owned();
    if let Some(s) = secret.filter(|s| s.chars().count() >= 3) {
        if owned.contains(s) {
            owned = owned.replace(s, "<redacted>");
        }
        owned = redact_base64(&owned, s.as_bytes());
    }
    let text = owned.as_str();
    let mut out = String::with_capacity(text.len().min(MAX_REASON));
    let mut last_space = false;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if out.chars().count() >= MAX_REASON {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out.trim().to_owned()
}

/// Replaces every base64 word of `text` whose decoded bytes contain
/// `secret`: the password's own encoding (AUTH LOGIN) and every blob it was
/// sent in (AUTH PLAIN's `authzid\0user\0password`, XOAUTH2), whichever
/// of them a server echoes in its reply.
fn redact_base64(text: &str, secret: &[u8]) -> String {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(is_b64) {
        out.push_str(&rest[..start]);
        let word_len = rest[start..]
            .find(|c| !is_b64(c))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        let hides_secret = word.len() >= 4
            && LENIENT
                .decode(word.trim_end_matches('='))
                .is_ok_and(|bytes| bytes.windows(secret.len()).any(|w| w == secret));
        out.push_str(if hides_secret { "<redacted>" } else { word });
        rest = &rest[start + word_len..];
    }
    out.push_str(rest);
    out
}

/// The enhanced status code of a reply, if it had one.
pub fn enhanced(r: &smtp_proto::Response<String>) -> Option<(u8, u16, u16)> {
    (r.esc[0] != 0).then(|| (r.esc[0], u16::from(r.esc[1]), u16::from(r.esc[2])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> SmtpError {
        SmtpError::UnexpectedReply(smtp_proto::Response {
            code,
            esc: [0, 0, 0],
            message: "x".into(),
        })
    }

    #[test]
    fn replies_by_stage_and_code() {
        let cases = [
            (Stage::Mail, 421, Class::Connection),
            (Stage::Rcpt, 421, Class::Connection),
            (Stage::Rcpt, 450, Class::Temporary),
            (Stage::Rcpt, 550, Class::Permanent),
            (Stage::Mail, 530, Class::Auth),
            (Stage::Rcpt, 530, Class::Auth),
            (Stage::Mail, 553, Class::Permanent),
            (Stage::EndOfData, 451, Class::Temporary),
            (Stage::EndOfData, 554, Class::Permanent),
            (Stage::Greeting, 554, Class::Connection),
            (Stage::Ehlo, 500, Class::Connection),
            (Stage::StartTls, 454, Class::Tls),
            (Stage::Auth, 535, Class::Auth),
            (Stage::Data, 354, Class::Connection),
        ];
        for (stage, code, class) in cases {
            assert_eq!(classify(stage, &reply(code)), class, "{stage} {code}");
        }
    }

    #[test]
    fn starttls_required_is_tls() {
        let r = SmtpError::UnexpectedReply(smtp_proto::Response {
            code: 530,
            esc: [5, 7, 0],
            message: "Must issue a STARTTLS command first".into(),
        });
        assert_eq!(classify(Stage::Mail, &r), Class::Tls);
    }

    #[test]
    fn client_errors() {
        let eof = SmtpError::UnparseableReply;
        assert_eq!(classify(Stage::Mail, &eof), Class::Connection);
        assert_eq!(classify(Stage::Tls, &eof), Class::Tls);
        assert_eq!(
            classify(Stage::Greeting, &SmtpError::Timeout),
            Class::Connection
        );
        assert_eq!(
            classify(Stage::Auth, &SmtpError::UnsupportedAuthMechanism),
            Class::Auth
        );
        assert_eq!(
            classify(Stage::StartTls, &SmtpError::MissingStartTls),
            Class::Tls
        );
    }

    #[test]
    fn sanitizing() {
        assert_eq!(sanitize("a\r\nb\t\tc", None), "a b c");
        assert_eq!(
            sanitize("bad password hunter2 given", Some("hunter2")),
            "bad password <redacted> given"
        );
        assert_eq!(sanitize("ab", Some("a")), "ab");
        // aHVudGVyMg== is base64 of hunter2 (AUTH LOGIN).
        assert_eq!(
            sanitize("535 bad aHVudGVyMg== here", Some("hunter2")),
            "535 bad <redacted> here"
        );
        // AUTH PLAIN's blob, as Postfix-like servers may echo it.
        use base64::Engine;
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        for blob in [
            &b"relay\0relay\0hunter2"[..],
            b"\0relay\0hunter2",
            b"\0u\0hunter2",
        ] {
            let text = format!("535 5.7.8 AUTH PLAIN {} failed", b64(blob));
            assert_eq!(
                sanitize(&text, Some("hunter2")),
                "535 5.7.8 AUTH PLAIN <redacted> failed",
                "{text}"
            );
        }
        // Words that do not hide the password stay.
        assert_eq!(
            sanitize(
                "535 5.7.8 Error: authentication failed: UGFzc3dvcmQ6",
                Some("hunter2")
            ),
            "535 5.7.8 Error: authentication failed: UGFzc3dvcmQ6"
        );
        let long = "x".repeat(1000);
        assert_eq!(sanitize(&long, None).chars().count(), MAX_REASON + 1);
    }

    #[test]
    fn failover_text_names_no_secret() {
        let e = UpstreamError::reply(
            Stage::Auth,
            smtp_proto::Response {
                code: 535,
                esc: [5, 7, 8],
                message: "bad credentials for s3cret\r\n".into(),
            },
        );
        let f = e.to_failover("up", Some("s3cret"));
        assert_eq!(f.class, FailureClass::Auth);
        assert!(!f.reason.contains("s3cret"), "{}", f.reason);
    }
}
