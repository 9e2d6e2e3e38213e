//! SMTP upstreams: one hop of a delivery through one SMTP server, the
//! connection pool, failure classification, and probes (`test-server`,
//! `check-config --probe`, reload).
//!
//! `client` is the only module that imports mail-send.

use crate::config::SmtpServer;
use crate::delivery::{Failover, HopResult};
use crate::message::Message;

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
pub struct Upstreams {}

impl Upstreams {
    /// Sends `msg` through `server` (named `name`).
    pub async fn send(&self, name: &str, server: &SmtpServer, msg: &Outgoing<'_>) -> HopResult {
        let _ = (server, msg);
        HopResult::Failover(Failover {
            server: name.to_owned(),
            class: "temporary",
            reason: "SMTP upstream delivery is not available in this build yet".into(),
        })
    }
}
