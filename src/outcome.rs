//! Delivery outcome types shared by the delivery engine, the upstream
//! kinds, server health, metrics and the queue. A leaf module: it imports
//! nothing of the crate, so no two modules need each other for these types.
//!
//! A failure class stays this enum from the classifier to the client's
//! reply, the health tracker, the metric label and the log field; nothing
//! decides by searching an error's text.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// A capability a message needs and a server may lack (PRODUCT §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// RFC 1870 SIZE: the message is larger than the server takes.
    Size,
    /// RFC 6531 SMTPUTF8.
    Smtputf8,
    /// RFC 6152 8BITMIME.
    EightBitMime,
}

/// Why a hop failed and the next server was tried (or the queue deferred).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Connect, greeting, timeout, 421, a cut connection.
    Connection,
    /// A 4xx answer about this message.
    Temporary,
    /// TLS handshake or STARTTLS trouble.
    Tls,
    /// AUTH refused or impossible, or an OAuth token could not be had.
    Auth,
    /// The server lacks what the message needs.
    Capability(Capability),
    /// A local problem (the message could not be read, the outbox not written).
    Local,
    /// The server's send limit is used up (PRODUCT §3.7).
    Limit,
    /// The server is marked down and was skipped (PRODUCT §3.6).
    Down,
}

impl FailureClass {
    /// Every class, for priming metrics.
    pub const ALL: &'static [FailureClass] = &[
        FailureClass::Connection,
        FailureClass::Temporary,
        FailureClass::Tls,
        FailureClass::Auth,
        FailureClass::Capability(Capability::Size),
        FailureClass::Local,
        FailureClass::Limit,
        FailureClass::Down,
    ];

    /// The name used in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Connection => "connection",
            FailureClass::Temporary => "temporary",
            FailureClass::Tls => "tls",
            FailureClass::Auth => "auth",
            FailureClass::Capability(_) => "capability",
            FailureClass::Local => "local",
            FailureClass::Limit => "limit",
            FailureClass::Down => "down",
        }
    }

    /// Whether the failure says something about the server itself, so it
    /// counts towards marking the server down. Answers about one message
    /// (4xx, capabilities, limits) do not.
    pub fn counts_for_health(self) -> bool {
        matches!(
            self,
            FailureClass::Connection | FailureClass::Tls | FailureClass::Auth
        )
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FailureClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a hop failed and the next server was tried.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// The server that failed.
    pub server: String,
    /// Failure class.
    pub class: FailureClass,
    /// What happened (sanitised; no secrets).
    pub reason: String,
    /// The failure was caused by the message rather than the server (for
    /// example a connection the server cut after refusing many of its
    /// recipients): it does not count against the server's health.
    #[serde(skip)]
    pub message_caused: bool,
    /// The server asked not to be tried again before this long (HTTP
    /// `Retry-After`); the queue defers at least that long.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// Recipients this server refused permanently before the hop failed
    /// (e.g. a 421 after some 550s): their refusal stands, and only the
    /// other recipients go to the next server.
    #[serde(skip)]
    pub refused: Vec<RefusedRecipient>,
}

impl Failover {
    /// A failover of `class` at `server`.
    pub fn new(server: &str, class: FailureClass, reason: impl Into<String>) -> Failover {
        Failover {
            server: server.to_owned(),
            class,
            reason: reason.into(),
            message_caused: false,
            retry_after: None,
            refused: Vec::new(),
        }
    }

    /// Whether this failure counts against the server's health.
    pub fn counts_for_health(&self) -> bool {
        self.class.counts_for_health() && !self.message_caused
    }
}

/// A recipient an upstream refused permanently although others were accepted.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RefusedRecipient {
    /// The recipient.
    pub rcpt: String,
    /// The upstream's code.
    pub code: u16,
    /// The upstream's enhanced status code, if it gave one.
    pub enhanced: Option<(u8, u16, u16)>,
    /// The upstream's text.
    pub reason: String,
}

/// The result of one hop.
#[derive(Debug)]
pub enum HopResult {
    /// Accepted for some recipients; `refused` were refused permanently.
    Accepted {
        /// Permanently refused recipients.
        refused: Vec<RefusedRecipient>,
        /// Recipients refused with 4xx, to be retried (queue mode only;
        /// see `upstream::Outgoing::partial`).
        deferred: Vec<RefusedRecipient>,
    },
    /// Refused permanently for every recipient (or the message as a whole).
    Permanent {
        /// Code.
        code: u16,
        /// Enhanced status code.
        enhanced: Option<(u8, u16, u16)>,
        /// Text.
        reason: String,
    },
    /// Try the next server.
    Failover(Failover),
}
