//! Visible recipients limited to the envelope, for upstreams that take the
//! recipients from the header section instead of an envelope (Microsoft
//! Graph's MIME `sendMail`). Pure.
//!
//! To and Cc keep only addresses that are envelope recipients (a field
//! whose addresses all are keeps its exact bytes; a field left empty is
//! removed); Bcc fields are removed; every envelope recipient not visible
//! in To or Cc is listed in one new Bcc field, which such an upstream sends
//! to and strips. So a blacklisted or test-mode-redirected address that is
//! still written in To gets nothing, and a Bcc-only recipient gets the
//! message.

use super::{encode, line_ending, normalize_address, parse_mailboxes, push_field, split_fields};
use std::collections::HashSet;

/// The header section `header` (fields only, no empty line) with To, Cc
/// and Bcc fitted to the envelope recipients `rcpts` (see module docs).
pub fn envelope_recipients_only(header: &[u8], rcpts: &[String]) -> Vec<u8> {
    let eol = line_ending(header);
    let wanted: HashSet<String> = rcpts.iter().map(|r| normalize_address(r)).collect();
    let (fields, end) = split_fields(header);
    let mut visible: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(header.len() + 64);
    let mut copied = 0;
    for f in &fields {
        let name = if f.is(header, "To") {
            "To"
        } else if f.is(header, "Cc") {
            "Cc"
        } else if f.is(header, "Bcc") {
            out.extend_from_slice(&header[copied..f.start]);
            copied = f.end;
            continue;
        } else {
            continue;
        };
        let all = parse_mailboxes(f.value(header));
        let kept: Vec<_> = all
            .iter()
            .filter(|m| wanted.contains(&normalize_address(&m.addr)))
            .filter(|m| visible.insert(normalize_address(&m.addr)))
            .collect();
        if kept.len() == all.len() {
            continue; // nothing to remove: the field keeps its bytes
        }
        out.extend_from_slice(&header[copied..f.start]);
        copied = f.end;
        if !kept.is_empty() {
            let groups: Vec<Vec<String>> = kept
                .iter()
                .map(|m| encode::mailbox_tokens(m.name.as_deref(), &m.addr))
                .collect();
            push_field(&mut out, &encode::fold_field(name, &groups, eol), eol);
        }
    }
    out.extend_from_slice(&header[copied..end]);
    let mut bcc_seen = HashSet::new();
    let bcc: Vec<Vec<String>> = rcpts
        .iter()
        .filter(|r| !visible.contains(&normalize_address(r)))
        .filter(|r| bcc_seen.insert(normalize_address(r)))
        .map(|r| encode::mailbox_tokens(None, r))
        .collect();
    if !bcc.is_empty() {
        push_field(&mut out, &encode::fold_field("Bcc", &bcc, eol), eol);
    }
    out.extend_from_slice(&header[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(header: &str, rcpts: &[&str]) -> String {
        let r: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
        String::from_utf8(envelope_recipients_only(header.as_bytes(), &r)).unwrap()
    }

    #[test]
    fn unchanged_when_the_header_matches_the_envelope() {
        let h = "From: a@x\r\nTo: B <b@y>,\r\n c@y\r\nSubject: s\r\n";
        assert_eq!(run(h, &["b@y", "C@Y"]), h);
    }

    #[test]
    fn dropped_recipient_removed_from_to() {
        let h = "From: a@x\r\nTo: Bee <b@y>, gone@y\r\nCc: gone2@y\r\nSubject: s\r\n";
        assert_eq!(
            run(h, &["b@y"]),
            "From: a@x\r\nTo: Bee <b@y>\r\nSubject: s\r\n"
        );
    }

    #[test]
    fn redirected_recipient_becomes_bcc() {
        let h = "From: a@x\r\nTo: alice@cust.example\r\nCc: bob@cust.example\r\nSubject: s\r\n";
        assert_eq!(
            run(h, &["qa@acme.example"]),
            "From: a@x\r\nSubject: s\r\nBcc: <qa@acme.example>\r\n"
        );
    }

    #[test]
    fn bcc_only_recipient_listed_and_old_bcc_removed() {
        let h = "From: a@x\r\nTo: b@y\r\nBcc: hidden@z, other@z\r\nSubject: s\r\n";
        assert_eq!(
            run(h, &["b@y", "hidden@z", "hidden@z"]),
            "From: a@x\r\nTo: b@y\r\nSubject: s\r\nBcc: <hidden@z>\r\n"
        );
    }

    #[test]
    fn duplicate_visible_address_kept_once() {
        let h = "To: b@y\r\nCc: b@y, x@y\r\n";
        assert_eq!(run(h, &["b@y"]), "To: b@y\r\n");
    }

    #[test]
    fn undisclosed_recipients_group_is_kept() {
        let h = "To: undisclosed-recipients:;\r\nSubject: s\r\n";
        assert_eq!(
            run(h, &["b@y"]),
            "To: undisclosed-recipients:;\r\nSubject: s\r\nBcc: <b@y>\r\n"
        );
    }
}
