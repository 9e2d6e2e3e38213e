//! The one catalogue of SMTP replies the listener sends. Every code,
//! enhanced status code and text lives here; the rest of the code names
//! replies, it never writes them.

use std::borrow::Cow;
use std::fmt::Write as _;

/// An enhanced status code (RFC 3463), e.g. `(4, 4, 2)`.
pub type Enhanced = (u8, u16, u16);

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Basic status code.
    pub code: u16,
    /// Enhanced status code (RFC 3463), when the reply has one.
    pub enhanced: Option<(u8, u16, u16)>,
    /// Text lines (at least one).
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    fn new(
        code: u16,
        enhanced: Option<(u8, u16, u16)>,
        text: impl Into<Cow<'static, str>>,
    ) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// Whether the code is 4xx or 5xx.
    pub fn is_negative(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            let mut s = String::with_capacity(line.len() + 16);
            let _ = write!(s, "{}{sep}", self.code);
            if let Some((a, b, c)) = self.enhanced {
                let _ = write!(s, "{a}.{b}.{c} ");
            }
            // Text from elsewhere (an upstream's reason) never breaks the line.
            if line.chars().any(char::is_control) {
                s.extend(line.chars().map(|c| if c.is_control() { ' ' } else { c }));
            } else {
                s.push_str(line);
            }
            s.push_str("\r\n");
            out.extend_from_slice(s.as_bytes());
        }
    }

    /// The wire form as a string (tests and logs).
    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// The reply for a transaction refused before any recipient.
pub fn refusal(r: &crate::policy::Refusal) -> Reply {
    use crate::policy::Refusal;
    match r {
        Refusal::SystemDisabled => system_disabled(),
        Refusal::TenantDisabled => tenant_disabled(),
        Refusal::AuthRequired => auth_required(),
        Refusal::NotIdentified => relay_denied(),
    }
}

/// `220` greeting.
pub fn greeting(hostname: &str) -> Reply {
    Reply::new(220, None, format!("{hostname} ESMTP smarthost"))
}

/// Capabilities for the EHLO reply.
#[derive(Debug, Clone, Default)]
pub struct EhloCaps {
    /// SIZE value.
    pub size: u64,
    /// Offer STARTTLS.
    pub starttls: bool,
    /// Offer AUTH PLAIN LOGIN.
    pub auth: bool,
}

/// `250` multi-line EHLO reply.
pub fn ehlo(hostname: &str, client: &str, caps: &EhloCaps) -> Reply {
    let mut lines: Vec<Cow<'static, str>> = vec![format!("{hostname} greets {client}").into()];
    lines.push("PIPELINING".into());
    lines.push(format!("SIZE {}", caps.size).into());
    lines.push("8BITMIME".into());
    lines.push("SMTPUTF8".into());
    lines.push("ENHANCEDSTATUSCODES".into());
    lines.push("CHUNKING".into());
    if caps.starttls {
        lines.push("STARTTLS".into());
    }
    if caps.auth {
        lines.push("AUTH PLAIN LOGIN".into());
    }
    lines.push("HELP".into());
    Reply {
        code: 250,
        enhanced: None,
        lines,
    }
}

/// `250` HELO reply.
pub fn helo(hostname: &str) -> Reply {
    Reply::new(250, None, hostname.to_owned())
}

/// `250 2.0.0 OK` (NOOP, RSET).
pub fn ok() -> Reply {
    Reply::new(250, Some((2, 0, 0)), "OK")
}
/// `250 2.1.0` MAIL accepted.
pub fn mail_ok() -> Reply {
    Reply::new(250, Some((2, 1, 0)), "Sender OK")
}
/// `250 2.1.5` RCPT accepted.
pub fn rcpt_ok() -> Reply {
    Reply::new(250, Some((2, 1, 5)), "Recipient OK")
}
/// `354` go ahead with DATA.
pub fn data_go_ahead() -> Reply {
    Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")
}
/// `250 2.0.0` BDAT chunk received (not the last).
pub fn chunk_ok(bytes: usize) -> Reply {
    Reply::new(250, Some((2, 0, 0)), format!("{bytes} bytes received"))
}
/// `250 2.0.0` message relayed (direct mode).
pub fn delivered(id: &str) -> Reply {
    Reply::new(250, Some((2, 0, 0)), format!("OK: delivered as {id}"))
}
/// `250 2.0.0 Ok: queued as ID`: durable in the queue (PRODUCT §4.1; the
/// id is the one `smarthost queue list` shows).
pub fn queued(id: &str) -> Reply {
    Reply::new(250, Some((2, 0, 0)), format!("Ok: queued as {id}"))
}
/// `452 4.3.1` the spool is full: nothing was accepted, try again later.
pub fn insufficient_storage() -> Reply {
    Reply::new(
        452,
        Some((4, 3, 1)),
        "Insufficient system storage, try again later",
    )
}
/// `250 2.0.0` accepted, but every recipient was dropped by policy.
pub fn accepted_nothing_to_deliver(id: &str) -> Reply {
    Reply::new(250, Some((2, 0, 0)), format!("OK: accepted as {id}"))
}
/// `221 2.0.0` goodbye.
pub fn bye() -> Reply {
    Reply::new(221, Some((2, 0, 0)), "Bye")
}
/// `214 2.0.0` help.
pub fn help() -> Reply {
    Reply::new(
        214,
        Some((2, 0, 0)),
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP STARTTLS AUTH",
    )
}
/// `252 2.5.0` VRFY is not answered.
pub fn vrfy_refused() -> Reply {
    Reply::new(
        252,
        Some((2, 5, 0)),
        "Cannot VRFY user; send mail and it will be handled",
    )
}
/// `502 5.5.1` EXPN is not answered, and commands we do not implement.
pub fn not_implemented() -> Reply {
    Reply::new(502, Some((5, 5, 1)), "Command not implemented")
}
/// `220 2.0.0` go ahead with TLS.
pub fn starttls_go_ahead() -> Reply {
    Reply::new(220, Some((2, 0, 0)), "Ready to start TLS")
}
/// `334` AUTH continuation with a base64 challenge (empty for PLAIN).
pub fn auth_challenge(b64: &'static str) -> Reply {
    Reply::new(334, None, b64)
}
/// `235 2.7.0` authenticated.
pub fn auth_ok() -> Reply {
    Reply::new(235, Some((2, 7, 0)), "Authentication successful")
}

// --- 4xx ---

/// `421 4.3.2` too many connections (then close).
pub fn too_many_connections() -> Reply {
    Reply::new(
        421,
        Some((4, 3, 2)),
        "Too many connections, try again later",
    )
}
/// `421 4.7.0` the PROXY protocol header was missing, malformed or late (then close).
pub fn proxy_header_invalid() -> Reply {
    Reply::new(
        421,
        Some((4, 7, 0)),
        "Invalid or missing PROXY protocol header",
    )
}
/// `554 5.7.1` a peer that may not speak PROXY protocol to a listener that requires it (then close).
pub fn proxy_untrusted() -> Reply {
    Reply::new(
        554,
        Some((5, 7, 1)),
        "Connection not accepted from this address",
    )
}
/// `421 4.3.2` shutting down (then close).
pub fn shutting_down() -> Reply {
    Reply::new(
        421,
        Some((4, 3, 2)),
        "Service shutting down, try again later",
    )
}
/// `421 4.4.2` idle or data timeout (then close).
pub fn timeout() -> Reply {
    Reply::new(421, Some((4, 4, 2)), "Timeout, closing connection")
}
/// `421 4.4.2` the session lasted `max_session_time` (then close).
pub fn session_too_long() -> Reply {
    Reply::new(
        421,
        Some((4, 4, 2)),
        "Session time limit reached, closing connection",
    )
}
/// `421 4.7.0` this address already holds `max_connections_per_client`
/// sessions, or clients nobody owns hold their whole share (then close).
pub fn too_many_from_client() -> Reply {
    Reply::new(
        421,
        Some((4, 7, 0)),
        "Too many connections from your address, try again later",
    )
}
/// `421 4.7.0` too many failed AUTH attempts from this address (then close).
pub fn auth_locked_out() -> Reply {
    Reply::new(
        421,
        Some((4, 7, 0)),
        "Too many failed authentication attempts, try again later",
    )
}
/// `451 4.3.2` the system switch is off.
pub fn system_disabled() -> Reply {
    Reply::new(451, Some((4, 3, 2)), "Sending is disabled, try again later")
}
/// `451 4.7.1` the tenant's switch is off.
pub fn tenant_disabled() -> Reply {
    Reply::new(
        451,
        Some((4, 7, 1)),
        "Sending is disabled for this sender, try again later",
    )
}
/// `452 4.5.3` too many recipients.
pub fn too_many_recipients() -> Reply {
    Reply::new(452, Some((4, 5, 3)), "Too many recipients")
}
/// `451 4.4.1` every server failed temporarily (direct mode).
pub fn all_servers_failed(tried: usize) -> Reply {
    Reply::new(
        451,
        Some((4, 4, 1)),
        format!("Delivery failed temporarily on {tried} server(s), try again later"),
    )
}
/// `451 4.7.0` no server may take the message now (all over their send
/// limit or marked down).
pub fn no_server_available() -> Reply {
    Reply::new(
        451,
        Some((4, 7, 0)),
        "No upstream server available right now, try again later",
    )
}
/// `451 4.7.0` every server of the chain is over its send limit (or
/// down): says when budget returns.
pub fn over_send_limit(returns_in: std::time::Duration) -> Reply {
    Reply::new(
        451,
        Some((4, 7, 0)),
        format!(
            "No upstream server available: send limit reached, budget returns in {} s, try again later",
            returns_in.as_secs()
        ),
    )
}
/// `554 5.5.3` the message needs more send-limit budget than any server
/// of its chain has in a whole window (`limit_counts = "recipients"`, more
/// recipients than every limit): it can never pass as one message, so
/// retrying is futile; `why` names the numbers (cut to 300 characters:
/// a reply line stays within 512 octets).
pub fn beyond_every_send_limit(why: &str) -> Reply {
    let why: String = why.chars().take(300).collect();
    Reply::new(
        554,
        Some((5, 5, 3)),
        format!(
            "Too many recipients for the send limits: {why}; send it as several smaller messages"
        ),
    )
}
/// `451 4.3.0` a local error (spool, disk) while receiving.
pub fn local_error() -> Reply {
    Reply::new(
        451,
        Some((4, 3, 0)),
        "Local error while processing the message, try again later",
    )
}
/// `454 4.7.0` TLS not available.
pub fn tls_unavailable() -> Reply {
    Reply::new(454, Some((4, 7, 0)), "TLS not available")
}
/// `454 4.7.0` temporary AUTH failure (verifier unavailable).
pub fn auth_temp_failure() -> Reply {
    Reply::new(454, Some((4, 7, 0)), "Temporary authentication failure")
}

// --- 5xx ---

/// `500 5.5.1` unknown command.
pub fn unknown_command() -> Reply {
    Reply::new(500, Some((5, 5, 1)), "Command unrecognized")
}
/// `500 5.5.2` line too long.
pub fn line_too_long(max: usize) -> Reply {
    Reply::new(
        500,
        Some((5, 5, 2)),
        format!("Line too long (limit {max} bytes)"),
    )
}
/// `501 5.5.4` syntax error in parameters.
pub fn syntax_error(what: &str) -> Reply {
    Reply::new(501, Some((5, 5, 4)), format!("Syntax error: {what}"))
}
/// `501 5.1.7` bad sender address.
pub fn bad_sender() -> Reply {
    Reply::new(501, Some((5, 1, 7)), "Bad sender address syntax")
}
/// `501 5.1.3` bad recipient address.
pub fn bad_recipient() -> Reply {
    Reply::new(501, Some((5, 1, 3)), "Bad recipient address syntax")
}
/// `553 5.1.3` (RCPT) or `553 5.1.7` (MAIL): the address is not valid UTF-8.
pub fn address_not_utf8(recipient: bool) -> Reply {
    if recipient {
        Reply::new(553, Some((5, 1, 3)), "Recipient address is not valid UTF-8")
    } else {
        Reply::new(553, Some((5, 1, 7)), "Sender address is not valid UTF-8")
    }
}
/// `550 5.7.1` a recipient at an address literal (`user@[192.0.2.1]`):
/// valid syntax, not relayed by policy.
pub fn address_literal_refused() -> Reply {
    Reply::new(
        550,
        Some((5, 7, 1)),
        "Recipients at address literals are not relayed",
    )
}
/// `553 5.1.3` a valid recipient address the relay cannot send (angle
/// brackets inside a quoted local part).
pub fn unsendable_recipient() -> Reply {
    Reply::new(
        553,
        Some((5, 1, 3)),
        "This relay cannot send to that address",
    )
}
/// `501 5.5.4` a BDAT chunk size that is not a number that fits (then
/// close: the relay can no longer tell where the chunk ends).
pub fn bad_chunk_size() -> Reply {
    Reply::new(
        501,
        Some((5, 5, 4)),
        "Invalid BDAT chunk size, closing connection",
    )
}
/// `555 5.5.4` unsupported MAIL/RCPT parameter.
pub fn unsupported_parameter(p: &str) -> Reply {
    Reply::new(555, Some((5, 5, 4)), format!("Unsupported parameter {p}"))
}
/// `503 5.5.1` bad sequence of commands.
pub fn bad_sequence(what: &'static str) -> Reply {
    Reply::new(503, Some((5, 5, 1)), what)
}
/// `530 5.7.0` authentication required.
pub fn auth_required() -> Reply {
    Reply::new(530, Some((5, 7, 0)), "Authentication required")
}
/// `538 5.7.11` AUTH only over TLS.
pub fn encryption_required() -> Reply {
    Reply::new(
        538,
        Some((5, 7, 11)),
        "Encryption required for requested authentication mechanism",
    )
}
/// `504 5.5.4` unsupported AUTH mechanism.
pub fn auth_mechanism_unsupported() -> Reply {
    Reply::new(504, Some((5, 5, 4)), "Unrecognized authentication type")
}
/// `501 5.5.2` malformed AUTH data.
pub fn auth_malformed() -> Reply {
    Reply::new(501, Some((5, 5, 2)), "Invalid authentication data")
}
/// `501 5.0.0` AUTH cancelled by the client (`*`).
pub fn auth_cancelled() -> Reply {
    Reply::new(501, Some((5, 0, 0)), "Authentication cancelled")
}
/// `535 5.7.8` bad credentials.
pub fn auth_failed() -> Reply {
    Reply::new(535, Some((5, 7, 8)), "Authentication credentials invalid")
}
/// `554 5.7.1` at connect: on a listener without AUTH and without a bound
/// application, a client whose address no application owns can never
/// relay (PRODUCT §3.1), so it is refused at once (then close).
pub fn connection_denied() -> Reply {
    Reply::new(
        554,
        Some((5, 7, 1)),
        "Access denied: this address may not send here",
    )
}
/// `421 4.7.1` the client is not recognised, shortly after a reload that
/// removed an application: that may be a transient state of the config
/// files, so the client is asked to retry rather than to bounce (then close).
pub fn not_recognised_for_now() -> Reply {
    Reply::new(
        421,
        Some((4, 7, 1)),
        "Client not recognised at the moment, try again later",
    )
}
/// `550 5.7.1` the client is not an application: no open relay.
pub fn relay_denied() -> Reply {
    Reply::new(
        550,
        Some((5, 7, 1)),
        "Relaying denied: client not recognised",
    )
}
/// `550 5.7.1` recipient refused by a blacklist.
pub fn recipient_blacklisted() -> Reply {
    Reply::new(550, Some((5, 7, 1)), "Recipient address rejected by policy")
}
/// `550 5.1.1` `<postmaster>` without a configured bounce address.
pub fn no_postmaster() -> Reply {
    Reply::new(
        550,
        Some((5, 1, 1)),
        "No postmaster mailbox is configured here",
    )
}
/// `552 5.3.4` message too big.
pub fn message_too_big(max: u64) -> Reply {
    Reply::new(
        552,
        Some((5, 3, 4)),
        format!("Message size exceeds the limit of {max} bytes"),
    )
}
/// `554 5.6.0` bare CR or LF in the message where the client may not send it.
pub fn bare_line_ending() -> Reply {
    Reply::new(
        554,
        Some((5, 6, 0)),
        "Message refused: bare CR or LF; line endings must be CRLF",
    )
}
/// `554 5.5.0` no valid recipients at DATA.
pub fn no_valid_recipients() -> Reply {
    Reply::new(554, Some((5, 5, 0)), "No valid recipients")
}
/// A permanent upstream refusal, passed back with the upstream's code and
/// (sanitised, shortened) reason.
pub fn upstream_permanent(code: u16, enhanced: Option<(u8, u16, u16)>, reason: &str) -> Reply {
    let code = if (500..600).contains(&code) {
        code
    } else {
        554
    };
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    Reply::new(
        code,
        enhanced.or(Some((5, 0, 0))),
        format!("Upstream refused the message: {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_every_send_limit_is_permanent_and_one_short_line() {
        let r = beyond_every_send_limit(&"x".repeat(2000)).to_wire();
        assert!(r.starts_with("554 5.5.3 Too many recipients for the send limits: xxx"));
        assert!(r.len() <= 512 && r.matches("\r\n").count() == 1, "{r}");
    }

    #[test]
    fn wire_forms() {
        assert_eq!(rcpt_ok().to_wire(), "250 2.1.5 Recipient OK\r\n");
        assert_eq!(greeting("h").to_wire(), "220 h ESMTP smarthost\r\n");
        let e = ehlo(
            "h",
            "c",
            &EhloCaps {
                size: 10,
                starttls: true,
                auth: false,
            },
        )
        .to_wire();
        assert!(e.starts_with("250-h greets c\r\n250-PIPELINING\r\n"));
        assert!(e.contains("250-STARTTLS\r\n") && e.ends_with("250 HELP\r\n"));
        assert!(!e.contains("AUTH"));
    }

    #[test]
    fn upstream_text_cannot_break_lines() {
        let r = upstream_permanent(550, Some((5, 1, 1)), "no such user\r\n250 OK");
        assert_eq!(
            r.to_wire(),
            "550 5.1.1 Upstream refused the message: no such user250 OK\r\n"
        );
        assert_eq!(upstream_permanent(250, None, "x").code, 554);
    }
}
