//! Writing header values: display names as RFC 5322 phrases or RFC 2047
//! encoded-words, mailboxes, address lists, and unstructured text, folded
//! so no line exceeds 78 characters where the content allows.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Longest encoded-word (RFC 2047 §2).
const MAX_ENCODED_WORD: usize = 75;
/// Characters of a line before we fold (RFC 5322 §2.1.1 "SHOULD").
const FOLD_AT: usize = 78;

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// Splits `text` into RFC 2047 B-encoded words of at most 75 characters,
/// never splitting a UTF-8 character.
pub fn encoded_words(text: &str) -> Vec<String> {
    // "=?utf-8?B?" + "?=" = 12 characters of overhead; 63 left for base64,
    // i.e. 15 groups of 4 = 45 input bytes per word.
    let max_bytes = (MAX_ENCODED_WORD - 12) / 4 * 3;
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + max_bytes).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        out.push(format!(
            "=?utf-8?B?{}?=",
            B64.encode(&text.as_bytes()[start..end])
        ));
        start = end;
    }
    out
}

/// Whether `text` would be taken for an encoded-word by a decoder.
fn looks_encoded(text: &str) -> bool {
    text.contains("=?")
}

/// A display name as the tokens of a phrase: plain atoms, one quoted
/// string, or encoded-words for non-ASCII text.
pub fn phrase_tokens(name: &str) -> Vec<String> {
    let name = name.trim();
    if name.is_empty() {
        return Vec::new();
    }
    if !name.is_ascii() || looks_encoded(name) {
        return encoded_words(name);
    }
    if name
        .split(' ')
        .all(|w| !w.is_empty() && w.chars().all(is_atext))
    {
        return name.split(' ').map(str::to_owned).collect();
    }
    let mut q = String::with_capacity(name.len() + 2);
    q.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    vec![q]
}

/// A mailbox `name <addr>` (or `<addr>` without a name) as tokens.
pub fn mailbox_tokens(name: Option<&str>, addr: &str) -> Vec<String> {
    let mut t = name.map(phrase_tokens).unwrap_or_default();
    t.push(format!("<{addr}>"));
    t
}

/// Joins tokens into a field `Name: tok tok, tok` folded with `eol` + space
/// whenever the line would pass 78 characters. `groups` separates mailboxes
/// with commas. The result ends with `eol`.
pub fn fold_field(name: &str, groups: &[Vec<String>], eol: &str) -> Vec<u8> {
    let mut out = String::with_capacity(64);
    out.push_str(name);
    out.push(':');
    let mut col = out.len();
    for (gi, group) in groups.iter().enumerate() {
        for (ti, tok) in group.iter().enumerate() {
            let mut piece = tok.clone();
            if ti + 1 == group.len() && gi + 1 < groups.len() {
                piece.push(',');
            }
            if col + 1 + piece.chars().count() > FOLD_AT && col > name.len() + 1 {
                out.push_str(eol);
                col = 0;
            }
            out.push(' ');
            out.push_str(&piece);
            col += 1 + piece.chars().count();
        }
    }
    out.push_str(eol);
    out.into_bytes()
}

/// Unstructured text (a Subject) as tokens: plain words when it is
/// printable ASCII and holds nothing a decoder would misread, else
/// encoded-words.
pub fn unstructured_tokens(text: &str) -> Vec<String> {
    if text.is_ascii() && !looks_encoded(text) && !text.chars().any(|c| c.is_ascii_control()) {
        // Keep runs of spaces as they are by attaching them to the next word.
        let mut toks = Vec::new();
        let mut cur = String::new();
        for c in text.chars() {
            if c == ' ' && !cur.is_empty() && !cur.ends_with(' ') {
                toks.push(std::mem::take(&mut cur));
                continue;
            }
            cur.push(c);
        }
        if !cur.is_empty() {
            toks.push(cur);
        }
        toks
    } else {
        encoded_words(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_words(s: &str) -> String {
        s.split_whitespace()
            .map(|w| {
                let b = w
                    .strip_prefix("=?utf-8?B?")
                    .and_then(|w| w.strip_suffix("?="))
                    .unwrap();
                String::from_utf8(B64.decode(b).unwrap()).unwrap()
            })
            .collect()
    }

    #[test]
    fn phrases() {
        assert_eq!(phrase_tokens("ACME Webshop"), vec!["ACME", "Webshop"]);
        assert_eq!(phrase_tokens("Doe, John"), vec!["\"Doe, John\""]);
        assert_eq!(phrase_tokens("say \"hi\""), vec!["\"say \\\"hi\\\"\""]);
        let t = phrase_tokens("Jörg Müller");
        assert_eq!(decode_words(&t.join(" ")), "Jörg Müller");
        // Text that a decoder would read as an encoded-word is encoded itself.
        assert!(phrase_tokens("=?x?Q?y?=")[0].starts_with("=?utf-8?B?"));
    }

    #[test]
    fn long_names_split_on_char_boundaries() {
        let name = "Ünïcödé ".repeat(20);
        let words = encoded_words(name.trim());
        assert!(words.len() > 1);
        assert!(words.iter().all(|w| w.len() <= MAX_ENCODED_WORD));
        assert_eq!(decode_words(&words.join(" ")), name.trim());
    }

    #[test]
    fn folding_keeps_lines_short() {
        let groups: Vec<Vec<String>> = (0..10)
            .map(|i| mailbox_tokens(Some("Some Person"), &format!("person{i}@example.com")))
            .collect();
        let f = String::from_utf8(fold_field("X-Original-To", &groups, "\r\n")).unwrap();
        assert!(f.ends_with("\r\n"));
        for line in f.split("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
        assert!(f.starts_with("X-Original-To: Some Person <person0@example.com>,"));
    }
}
