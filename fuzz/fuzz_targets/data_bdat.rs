//! The DATA decoder and BDAT chunking with arbitrary chunk sizes.
//!
//! Mode byte bit 0 clear — the DATA decoder alone: the input is fed in
//! pieces whose sizes come from the input, and the result must equal
//! feeding it at once (same end of data, same bytes, same flags); the end
//! is only ever found right after `<CR><LF>.<CR><LF>` (or `.<CR><LF>` as the
//! first line); the output never exceeds the limit and, within it, has no
//! bare CR or LF.
//!
//! Bit 0 set — BDAT through the session: a transaction whose content is
//! sent as chunks with sizes from the input, including sizes that overflow
//! (which must end the session with `501 5.5.4`) and sizes at the edge of
//! `u64`. A delivered body has no bare CR/LF and, when the chunks had none,
//! equals their concatenation. Replies are whole CRLF lines with a code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::config::{Config, load_str};
use smarthost::session::data::DataDecoder;
use smarthost::session::reply;
use smarthost::session::state::{Event, Session};
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn config() -> Arc<Config> {
    static CFG: OnceLock<Arc<Config>> = OnceLock::new();
    CFG.get_or_init(|| {
        let text = r#"
[system]
hostname = "fuzz.test"
default_server = "o"
[[listener]]
address = "127.0.0.1:2525"
auth = "none"
[limits]
max_message_size = "4KB"
[server.o]
kind = "capture"
path = "/nonexistent"
[tenant.t]
[application.a]
tenant = "t"
client_ips = ["127.0.0.1"]
"#;
        Arc::new(load_str(text, "fuzz.toml", Path::new("/")).expect("fuzz config"))
    })
    .clone()
}

fn no_bare_line_endings(body: &[u8]) -> bool {
    body.iter().enumerate().all(|(i, b)| match b {
        b'\n' => i > 0 && body[i - 1] == b'\r',
        b'\r' => body.get(i + 1) == Some(&b'\n'),
        _ => true,
    })
}

/// Feeds `input` in pieces of the given sizes (cycled; 0 means the rest).
fn decode(input: &[u8], sizes: &[u8], limit: u64) -> (Option<usize>, Vec<u8>, DataDecoder) {
    let mut dec = DataDecoder::new(limit);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < input.len() {
        let s = sizes.get(k % sizes.len().max(1)).copied().unwrap_or(0) as usize;
        k += 1;
        let end = if s == 0 { input.len() } else { input.len().min(pos + s) };
        if let Some(n) = dec.feed(&input[pos..end], &mut out) {
            return (Some(pos + n), out, dec);
        }
        pos = end;
    }
    (None, out, dec)
}

fn data_decoder(data: &[u8]) {
    let Some((&nsizes, rest)) = data.split_first() else { return };
    let (sizes, input) = rest.split_at((nsizes as usize % 8).min(rest.len()));
    let limit = 64 + (nsizes as u64) * 8;
    let (end_whole, out_whole, dec_whole) = decode(input, &[], limit);
    let (end, out, dec) = decode(input, sizes, limit);
    assert_eq!(end, end_whole, "end of data depends on the pieces");
    assert_eq!(out, out_whole, "content depends on the pieces");
    assert_eq!(dec.saw_bare, dec_whole.saw_bare);
    assert_eq!(dec.saw_8bit, dec_whole.saw_8bit);
    assert_eq!(dec.size, dec_whole.size);
    if let Some(n) = end {
        let ok = input[..n].ends_with(b"\r\n.\r\n") || (n == 3 && input.starts_with(b".\r\n"));
        assert!(ok, "end of data after {:?}", String::from_utf8_lossy(&input[..n]));
    }
    assert!(out.len() as u64 <= limit);
    // Content over the limit is cut anywhere (and the message refused).
    if !dec.over_limit() {
        assert!(no_bare_line_endings(&out), "bare CR/LF in decoded content");
    }
}

/// Chunk size literals for the BDAT command.
fn size_literal(b: u8, rest: &[u8]) -> (String, Option<usize>) {
    match b {
        255 => ("184467440737095516163".into(), None),
        254 => ("99999999999999999999999999".into(), None),
        253 => ("18446744073709551615".into(), Some(usize::MAX)),
        _ => {
            let n = (b as usize % 64).min(rest.len());
            (n.to_string(), Some(n))
        }
    }
}

fn bdat(data: &[u8]) {
    let cfg = config();
    let listener = cfg.listeners[0].clone();
    let mut s = Session::new(cfg, listener, "127.0.0.1:1".parse().unwrap(), None);
    s.greet();
    let mut wire = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n".to_vec();
    let mut content = Vec::new();
    let mut rest = data;
    let mut overflowed = false;
    let mut chunks = 0;
    while let Some((&b, tail)) = rest.split_first() {
        chunks += 1;
        let last = tail.is_empty() || chunks == 8;
        let (literal, size) = size_literal(b, tail);
        wire.extend_from_slice(format!("BDAT {literal}{}\r\n", if last { " LAST" } else { "" }).as_bytes());
        match size {
            None => {
                overflowed = true;
                wire.extend_from_slice(tail);
                break;
            }
            Some(n) if n > tail.len() => {
                // A size at the edge of u64: the session waits for content.
                wire.extend_from_slice(tail);
                break;
            }
            Some(n) => {
                wire.extend_from_slice(&tail[..n]);
                content.extend_from_slice(&tail[..n]);
                rest = &tail[n..];
            }
        }
        if last {
            break;
        }
    }
    let mut out = s.take_output();
    let mut p = 0;
    let mut delivered = None;
    while p < wire.len() && !s.closed() {
        let (n, ev) = s.feed(&wire[p..]);
        p += n;
        match ev {
            None | Some(Event::Close) => break,
            Some(Event::Message(_)) => {
                let body = s.take_body();
                assert!(no_bare_line_endings(&body), "bare CR/LF in a delivered body");
                delivered = Some(body);
                s.message_result(reply::delivered("fuzz"));
            }
            Some(_) => unreachable!("no AUTH or STARTTLS on this listener"),
        }
    }
    out.extend(s.take_output());
    if let Some(body) = delivered
        && no_bare_line_endings(&content)
    {
        assert_eq!(body, content, "BDAT content changed");
    }
    let text = String::from_utf8_lossy(&out);
    if overflowed {
        assert!(text.contains("501 5.5.4 "), "an overflowing BDAT size was accepted: {text}");
        assert!(s.closed());
    }
    assert!(out.is_empty() || out.ends_with(b"\r\n"));
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit), "{:?}", String::from_utf8_lossy(line));
        assert!(line.ends_with(b"\r"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        data_decoder(rest);
    } else {
        bdat(rest);
    }
});
