//! Header rewriting on raw message bytes (PRODUCT §3.2, §3.4). Pure.
//!
//! Only the header section changes: From (address and display name),
//! Reply-To, Sender, Subject (test-mode prefix) and X-Original-To. The
//! caller sends the returned header block followed by the untouched rest of
//! the original bytes, so the body is never copied, re-encoded or even read
//! past the header section. Fields we do not change keep their exact bytes,
//! including folding and malformed lines.
//!
//! The header section ends at the first empty line, or — as in Postfix's
//! cleanup — at the first line that is neither a field nor a continuation;
//! in that case an empty line is written after the new header block, so
//! every parser downstream agrees where the body begins.

mod encode;
mod recipients;

pub use recipients::envelope_recipients_only;

use crate::config::values::normalize_address;
use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue};

/// What to change, computed by `policy` for one hop (one server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteSpec {
    /// Effective sender address: From address and envelope sender. `None`
    /// leaves both as the client sent them.
    pub sender: Option<String>,
    /// Display name for From. `None` keeps the original name.
    pub display_name: Option<String>,
    /// Configured Reply-To. `None`: the original From becomes the Reply-To
    /// when the From address was replaced and the message had no Reply-To.
    pub reply_to: Option<String>,
    /// Test-mode subject prefix.
    pub subject_prefix: Option<String>,
    /// Test mode: the original recipients that were redirected, recorded in
    /// `X-Original-To:`.
    pub original_recipients: Vec<String>,
    /// `Date:` value to add when the message has none (RFC 6409 §8.2).
    pub add_date: Option<String>,
    /// `Message-ID:` value (with angle brackets) to add when the message
    /// has none (RFC 6409 §8.3).
    pub add_message_id: Option<String>,
}

/// The result of [`rewrite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The new header section; send it, then `&raw[body_offset..]`.
    pub header: Vec<u8>,
    /// Where the untouched remainder (empty line and body) starts in the input.
    pub body_offset: usize,
    /// Whether the From address was replaced.
    pub from_replaced: bool,
    /// The From addresses the client wrote.
    pub original_from: Vec<String>,
}

/// One header field in the raw bytes.
#[derive(Debug, Clone, Copy)]
struct Field {
    start: usize,
    /// End of the field including its line ending(s) and continuation lines.
    end: usize,
    name_end: usize,
    /// Offset just after the colon.
    value_start: usize,
}

fn is_field_name_byte(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

/// Splits the header section into fields; returns them and the offset where
/// the header section ends (the empty line, a non-header line, or the end).
fn split_fields(raw: &[u8]) -> (Vec<Field>, usize) {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let line_end = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| pos + i + 1);
        let line = &raw[pos..line_end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            return (fields, pos);
        }
        if matches!(line[0], b' ' | b'\t') {
            match fields.last_mut() {
                Some(f) => {
                    f.end = line_end;
                    pos = line_end;
                    continue;
                }
                None => return (fields, pos),
            }
        }
        let name_len = content
            .iter()
            .take_while(|&&b| is_field_name_byte(b))
            .count();
        let after_name = &content[name_len..];
        let ws = after_name
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if name_len == 0 || after_name.get(ws) != Some(&b':') {
            return (fields, pos);
        }
        fields.push(Field {
            start: pos,
            end: line_end,
            name_end: pos + name_len,
            value_start: pos + name_len + ws + 1,
        });
        pos = line_end;
    }
    (fields, raw.len())
}

impl Field {
    fn is(&self, raw: &[u8], name: &str) -> bool {
        raw[self.start..self.name_end].eq_ignore_ascii_case(name.as_bytes())
    }
    fn value<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        &raw[self.value_start..self.end]
    }
}

/// A mailbox from a parsed address header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mailbox {
    name: Option<String>,
    addr: String,
}

fn safe_addr(a: &str) -> bool {
    !a.is_empty()
        && !a
            .chars()
            .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
}

fn parse_mailboxes(value: &[u8]) -> Vec<Mailbox> {
    let conv = |a: &mail_parser::Addr<'_>| {
        let addr = a.address.as_deref()?.trim();
        safe_addr(addr).then(|| Mailbox {
            name: a
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
                .map(str::to_owned),
            addr: addr.to_owned(),
        })
    };
    match MessageStream::new(value).parse_address() {
        HeaderValue::Address(Address::List(l)) => l.iter().filter_map(conv).collect(),
        HeaderValue::Address(Address::Group(gs)) => gs
            .iter()
            .flat_map(|g| g.addresses.iter().filter_map(conv))
            .collect(),
        _ => Vec::new(),
    }
}

fn decode_unstructured(value: &[u8]) -> String {
    match MessageStream::new(value).parse_unstructured() {
        HeaderValue::Text(t) => t.trim().to_owned(),
        _ => String::new(),
    }
}

/// The line ending the message uses (CRLF unless its first line ends in a bare LF).
fn line_ending(raw: &[u8]) -> &'static str {
    match raw.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && raw[i - 1] == b'\r' => "\r\n",
        Some(_) => "\n",
        None => "\r\n",
    }
}

fn subject_field(raw_value: Option<&[u8]>, prefix: &str, eol: &str) -> Option<Vec<u8>> {
    let Some(raw_value) = raw_value else {
        let p = prefix.trim_end();
        return Some(encode::fold_field(
            "Subject",
            &[encode::unstructured_tokens(p)],
            eol,
        ));
    };
    let decoded = decode_unstructured(raw_value);
    if decoded.starts_with(prefix.trim_end()) && !prefix.trim().is_empty() {
        return None; // already prefixed (a resend or a reply chain)
    }
    let trimmed = {
        let lead = raw_value
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        &raw_value[lead..]
    };
    let starts_encoded = trimmed.starts_with(b"=?");
    let prefix_plain = prefix.is_ascii()
        && !prefix.contains("=?")
        && !prefix.chars().any(|c| c.is_ascii_control());
    if prefix_plain && (prefix.ends_with([' ', '\t']) || !starts_encoded) {
        // Splice: the original value keeps its exact bytes (and encoding).
        let mut out = b"Subject: ".to_vec();
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(trimmed);
        if !out.ends_with(b"\n") {
            out.extend_from_slice(eol.as_bytes());
        }
        return Some(out);
    }
    // An encoded-word cannot follow text without white space, and a
    // non-ASCII prefix needs encoding itself: encode the whole subject.
    let full = format!("{prefix}{decoded}");
    Some(encode::fold_field(
        "Subject",
        &[encode::unstructured_tokens(&full)],
        eol,
    ))
}

/// Appends a field we generated, first ending the previous line if the
/// client's last field had no line ending.
fn push_field(out: &mut Vec<u8>, field: &[u8], eol: &str) {
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(eol.as_bytes());
    }
    out.extend_from_slice(field);
}

/// Rewrites the header section of `raw` per `spec` (see module docs).
pub fn rewrite(raw: &[u8], spec: &RewriteSpec) -> Rewritten {
    let (fields, body_offset) = split_fields(raw);
    let eol = line_ending(raw);

    let froms: Vec<&Field> = fields.iter().filter(|f| f.is(raw, "From")).collect();
    let original: Vec<Mailbox> = froms
        .iter()
        .flat_map(|f| parse_mailboxes(f.value(raw)))
        .collect();
    let original_from: Vec<String> = original.iter().map(|m| m.addr.clone()).collect();
    let has_reply_to = fields.iter().any(|f| f.is(raw, "Reply-To"));

    let new_addr: Option<String> = spec
        .sender
        .clone()
        .or_else(|| (original.len() == 1).then(|| original[0].addr.clone()));
    let from_replaced = match (&spec.sender, original.as_slice()) {
        (None, _) => false,
        (Some(s), [one]) => normalize_address(s) != normalize_address(&one.addr),
        (Some(_), _) => true,
    };
    let new_name: Option<String> = spec
        .display_name
        .clone()
        .or_else(|| original.first().and_then(|m| m.name.clone()));
    let name_changed =
        original.len() == 1 && spec.display_name.is_some() && original[0].name != new_name;
    let rewrite_from = (from_replaced || name_changed || froms.len() > 1) && new_addr.is_some();
    let new_from: Option<Vec<u8>> = match &new_addr {
        Some(a) if rewrite_from || froms.is_empty() => Some(encode::fold_field(
            "From",
            &[encode::mailbox_tokens(new_name.as_deref(), a)],
            eol,
        )),
        _ => None,
    };

    let new_reply_to: Option<Vec<u8>> = if let Some(r) = &spec.reply_to {
        Some(encode::fold_field(
            "Reply-To",
            &[encode::mailbox_tokens(None, r)],
            eol,
        ))
    } else if from_replaced && !has_reply_to && !original.is_empty() {
        let groups: Vec<Vec<String>> = original
            .iter()
            .map(|m| encode::mailbox_tokens(m.name.as_deref(), &m.addr))
            .collect();
        Some(encode::fold_field("Reply-To", &groups, eol))
    } else {
        None
    };

    let subjects: Vec<&Field> = fields.iter().filter(|f| f.is(raw, "Subject")).collect();
    let new_subject = spec
        .subject_prefix
        .as_deref()
        .filter(|p| !p.is_empty())
        .and_then(|p| subject_field(subjects.first().map(|f| f.value(raw)), p, eol));

    let mut out: Vec<u8> = Vec::with_capacity(body_offset + 256);
    if !spec.original_recipients.is_empty() {
        let groups: Vec<Vec<String>> = spec
            .original_recipients
            .iter()
            .map(|r| vec![format!("<{r}>")])
            .collect();
        push_field(
            &mut out,
            &encode::fold_field("X-Original-To", &groups, eol),
            eol,
        );
    }
    let mut from_written = false;
    let mut reply_to_written = false;
    let mut subject_written = false;
    if froms.is_empty()
        && let Some(f) = &new_from
    {
        push_field(&mut out, f, eol);
        from_written = true;
        if let Some(r) = &new_reply_to {
            push_field(&mut out, r, eol);
            reply_to_written = true;
        }
    }
    if subjects.is_empty()
        && let Some(s) = &new_subject
    {
        push_field(&mut out, s, eol);
        subject_written = true;
    }
    for f in &fields {
        let bytes = &raw[f.start..f.end];
        if f.is(raw, "From") && new_from.is_some() {
            if !from_written {
                push_field(&mut out, new_from.as_deref().unwrap_or_default(), eol);
                from_written = true;
                if let Some(r) = &new_reply_to {
                    push_field(&mut out, r, eol);
                    reply_to_written = true;
                }
            }
            continue; // further From fields are merged into the one above
        }
        if f.is(raw, "Sender") && from_replaced {
            continue; // it named the agent of the old From; From is the sender now
        }
        if f.is(raw, "Reply-To") && spec.reply_to.is_some() {
            continue;
        }
        if f.is(raw, "Subject") && new_subject.is_some() {
            if !subject_written {
                push_field(&mut out, new_subject.as_deref().unwrap_or_default(), eol);
                subject_written = true;
            }
            continue;
        }
        out.extend_from_slice(bytes);
        if f.is(raw, "From")
            && !reply_to_written
            && let Some(r) = &new_reply_to
        {
            push_field(&mut out, r, eol);
            reply_to_written = true;
        }
    }
    for (name, value) in [
        ("Date", &spec.add_date),
        ("Message-ID", &spec.add_message_id),
    ] {
        let missing = !fields.iter().any(|f| f.is(raw, name));
        if let Some(v) = value
            .as_deref()
            .filter(|v| missing && !v.chars().any(char::is_control))
        {
            push_field(&mut out, format!("{name}: {v}{eol}").as_bytes(), eol);
        }
    }
    if let Some(r) = new_reply_to.filter(|_| !reply_to_written) {
        push_field(&mut out, &r, eol);
    }
    // The header section ended at a line that is not a header (or there
    // was none): end it explicitly, as Postfix does, so that no parser
    // downstream can take that line for a broken header and read on into
    // fields we did not rewrite.
    if body_offset < raw.len()
        && !raw[body_offset..].starts_with(b"\n")
        && !raw[body_offset..].starts_with(b"\r\n")
    {
        push_field(&mut out, eol.as_bytes(), eol);
    }
    Rewritten {
        header: out,
        body_offset,
        from_replaced,
        original_from,
    }
}

/// The envelope sender for a hop: the effective sender, except that the
/// null sender (`<>`, used by bounces) stays null so no bounce loop starts.
pub fn envelope_sender(original: &str, spec: &RewriteSpec) -> String {
    if original.is_empty() {
        return String::new();
    }
    spec.sender.clone().unwrap_or_else(|| original.to_owned())
}

#[cfg(test)]
mod tests;
