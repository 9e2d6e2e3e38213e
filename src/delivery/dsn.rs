//! Delivery status notifications (RFC 3464): the `multipart/report`
//! message sent when an upstream accepted a message for some recipients
//! and refused others permanently. Pure: builds bytes.
//!
//! Who gets it ([`recipient`]): never anyone for a message that was itself
//! a bounce (null sender); otherwise the tenant's `bounce_address`, else
//! the application's or tenant's own sender, else the system
//! `bounce_address`, else the system default sender, else the client's
//! envelope sender.

use super::RefusedRecipient;
use crate::policy::Plan;
use crate::util::rfc5322_date;
use std::fmt::Write as _;

/// Where the DSN for `plan` goes, or `None` when none may be sent (the
/// settings are read from the snapshot the plan was computed against).
pub fn recipient(plan: &Plan) -> Option<String> {
    if plan.envelope_from.is_empty() {
        return None;
    }
    let cfg = plan.config();
    let tenants: Vec<&crate::config::Tenant> = plan
        .tenant_chain
        .iter()
        .filter_map(|t| cfg.tenants.get(t))
        .collect();
    // The application's or tenant's own sender is a mailbox of theirs; the
    // system default sender is usually a no-reply address, so the system
    // bounce address comes before it.
    let own_sender = cfg
        .applications
        .get(&plan.application)
        .and_then(|a| a.sender.as_ref())
        .or_else(|| tenants.iter().find_map(|t| t.sender.as_ref()));
    tenants
        .iter()
        .find_map(|t| t.bounce_address.as_ref())
        .or(own_sender)
        .or(cfg.system.bounce_address.as_ref())
        .or(cfg.system.default_sender.as_ref())
        .map(ToString::to_string)
        .or_else(|| Some(plan.envelope_from.clone()))
}

/// What the report is about.
pub struct Report<'a> {
    /// Reporting host (`system.hostname`).
    pub hostname: &'a str,
    /// Id of the original message.
    pub id: &'a str,
    /// When the original message arrived (seconds since the epoch).
    pub arrival: i64,
    /// Now (seconds since the epoch).
    pub now: i64,
    /// The server that refused.
    pub server: &'a str,
    /// Its host name, for `Remote-MTA`.
    pub remote_host: Option<&'a str>,
    /// The refused recipients with the server's answers.
    pub refused: &'a [RefusedRecipient],
    /// The DSN's recipient.
    pub to: &'a str,
    /// The original header section (included as text/rfc822-headers).
    pub original_header: &'a [u8],
    /// What happened, for the human-readable part: the text after
    /// "Your message ID ".
    pub summary: &'a str,
}

/// The summary when a server accepted the message for some recipients.
pub const SUMMARY_PARTIAL: &str =
    "was delivered to some recipients, but these were\r\nrefused permanently:";

/// The summary when the queue gave up on recipients.
pub const SUMMARY_FAILED: &str = "could not be delivered to the following recipients:";

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(500).collect()
}

/// The status code for `Status:`: the upstream's enhanced code, else one
/// found at the start of its text, else `5.0.0`.
fn status(r: &RefusedRecipient) -> String {
    if let Some((a, b, c)) = r.enhanced.filter(|e| e.0 == 5 || e.0 == 4) {
        return format!("{a}.{b}.{c}");
    }
    let esc = r.reason.split_whitespace().next().filter(|w| {
        let p: Vec<&str> = w.split('.').collect();
        p.len() == 3
            && p.iter()
                .all(|x| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit()))
            && p[0] == "5"
    });
    esc.map_or_else(|| "5.0.0".to_owned(), str::to_owned)
}

/// Builds the DSN message (CRLF line endings).
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let boundary = format!("{}/{}", r.id, r.hostname);
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n\
         Your message {id} {summary}\r\n\
         \r\n",
        host = r.hostname,
        to = r.to,
        date = rfc5322_date(r.now),
        id = r.id,
        summary = r.summary,
    );
    for f in r.refused {
        let _ = write!(
            m,
            "<{}>: {} {}\r\n",
            clean(&f.rcpt),
            f.code,
            clean(&f.reason)
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Smarthost-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        host = r.hostname,
        id = r.id,
        arrival = rfc5322_date(r.arrival),
    );
    for f in r.refused {
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            clean(&f.rcpt),
            status(f)
        );
        if let Some(h) = r.remote_host {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", clean(h));
        }
        let _ = write!(
            m,
            "Diagnostic-Code: smtp; {} {}\r\n",
            f.code,
            clean(&f.reason)
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(r.original_header);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_a_parseable_multipart_report() {
        let refused = vec![
            RefusedRecipient {
                rcpt: "gone@example.com".into(),
                code: 550,
                enhanced: None,
                reason: "5.1.1 <gone@example.com>: no such user".into(),
            },
            RefusedRecipient {
                rcpt: "full@example.com".into(),
                code: 552,
                enhanced: Some((5, 2, 2)),
                reason: "mailbox full\r\nInjected: x".into(),
            },
        ];
        let r = Report {
            hostname: "relay.test",
            id: "abc-1",
            arrival: 1_795_395_723,
            now: 1_795_395_724,
            server: "provider",
            remote_host: Some("smtp.provider.example"),
            refused: &refused,
            to: "shop@acme.example",
            original_header: b"From: a@b.test\r\nSubject: Order\r\n",
            summary: SUMMARY_PARTIAL,
        };
        let bytes = build(&r);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("Status: 5.1.1\r\n"), "{text}");
        assert!(text.contains("Status: 5.2.2\r\n"), "{text}");
        assert!(
            !text.contains("\r\nInjected:"),
            "control characters must not start lines: {text}"
        );
        let msg = mail_parser::MessageParser::new().parse(&bytes).unwrap();
        assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
        assert_eq!(msg.parts.len(), 4, "root + three parts");
        assert!(text.contains("Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\n"));
        assert!(text.ends_with("--abc-1/relay.test--\r\n"));
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(bytes[i - 1], b'\r');
            }
        }
    }
}
