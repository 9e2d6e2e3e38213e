//! Bare LF in DATA: refused on a strict listener, accepted and normalised
//! to CRLF where the listener or the application allows it.

mod common;

use common::relay::{Raw, TestRelay, simple_config};
use std::time::Duration;

const MSG: &[u8] = b"Subject: lf\nX-Legacy: yes\n\nline one\nline two\r\n.\r\n";

#[test]
fn refused_by_default() {
    let relay = TestRelay::start(&simple_config(""));
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(MSG);
    assert_eq!(
        c.reply(),
        "554 5.6.0 Message refused: bare CR or LF; line endings must be CRLF\r\n"
    );
    // The session goes on.
    c.expect("NOOP", 250);
    assert!(relay.captured().is_empty());
}

#[test]
fn normalised_when_the_listener_allows_it() {
    let relay = TestRelay::start(
        &simple_config("").replace("auth = \"none\"", "auth = \"none\"\nallow_bare_lf = true"),
    );
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(MSG);
    assert!(c.reply().starts_with("250 "));
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    // The relay adds Date and Message-ID after the client's header fields
    // (RFC 6409 §8); the body is normalised to CRLF.
    let eml = String::from_utf8_lossy(&m.eml);
    assert!(eml.contains("\r\nX-Legacy: yes\r\nDate: "), "{eml}");
    assert!(
        m.eml.ends_with(b"\r\n\r\nline one\r\nline two\r\n"),
        "{}",
        String::from_utf8_lossy(&m.eml)
    );
}

#[test]
fn normalised_when_the_application_allows_it() {
    let relay = TestRelay::start(&simple_config("allow_bare_lf = true\n"));
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(MSG);
    assert!(c.reply().starts_with("250 "));
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert!(m.eml.ends_with(b"line one\r\nline two\r\n"));
}

/// A legacy client that sends every line with a bare LF.
fn lf_session(relay: &TestRelay) -> Raw {
    let mut c = Raw::connect(relay.addr("main"));
    for (line, code) in [
        ("EHLO legacy.test\n", "250"),
        ("MAIL FROM:<app@legacy.test>\n", "250"),
        ("RCPT TO:<rcpt@example.com>\n", "250"),
        ("DATA\n", "354"),
    ] {
        c.send(line.as_bytes());
        let r = c.reply();
        assert!(r.starts_with(code), "{line:?} → {r}");
    }
    c
}

fn lenient_config() -> String {
    simple_config("").replace("auth = \"none\"", "auth = \"none\"\nallow_bare_lf = true")
}

#[test]
fn lf_only_client_ends_data_with_lf_dot_lf() {
    let relay = TestRelay::start(&lenient_config());
    let mut c = lf_session(&relay);
    let started = std::time::Instant::now();
    c.send(b"Subject: lf only\nX-Legacy: yes\n\nline one\n..dotted\n.\n");
    let r = c.reply();
    assert!(r.starts_with("250 "), "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
    c.send(b"QUIT\n");
    assert_eq!(c.reply(), "221 2.0.0 Bye\r\n");
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    // Relayed with strict CRLF, dot-stuffing removed (Date and Message-ID
    // added after the client's fields).
    assert!(
        String::from_utf8_lossy(&m.eml).contains("\r\nX-Legacy: yes\r\nDate: "),
        "{}",
        String::from_utf8_lossy(&m.eml)
    );
    assert!(
        m.eml.ends_with(b"\r\n\r\nline one\r\n.dotted\r\n"),
        "{}",
        String::from_utf8_lossy(&m.eml)
    );
    for (j, ch) in m.eml.iter().enumerate() {
        if *ch == b'\n' {
            assert_eq!(m.eml[j - 1], b'\r', "bare LF at {j}");
        }
    }
}

#[test]
fn lf_dot_lf_is_content_once_the_client_sent_crlf() {
    let relay = TestRelay::start(&lenient_config());
    // One command line with CRLF, the rest LF-only.
    let mut c = Raw::connect(relay.addr("main"));
    c.send(b"EHLO legacy.test\r\n");
    assert!(c.reply().starts_with("250"));
    for line in [
        "MAIL FROM:<app@legacy.test>\n",
        "RCPT TO:<rcpt@example.com>\n",
    ] {
        c.send(line.as_bytes());
        assert!(c.reply().starts_with("250"));
    }
    c.send(b"DATA\n");
    assert!(c.reply().starts_with("354"));
    c.send(b"Subject: mixed\n\nhello\n.\nMAIL FROM:<evil@attacker.test>\n\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    let eml = String::from_utf8_lossy(&m.eml);
    assert!(
        eml.contains("hello\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n"),
        "{eml}"
    );

    // A CRLF inside the content counts too.
    let mut c = lf_session(&relay);
    c.send(b"Subject: mixed\r\n\nhello\n.\nMAIL FROM:<evil@attacker.test>\n\r\n.\r\n");
    assert!(c.reply().starts_with("250 "));
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    let m = relay.wait_captured(2, Duration::from_secs(5)).remove(1);
    assert!(String::from_utf8_lossy(&m.eml).contains("MAIL FROM:<evil@attacker.test>\r\n"));
}

#[test]
fn lf_dot_lf_never_ends_data_on_a_strict_listener() {
    let relay = TestRelay::start(&simple_config(""));
    let mut c = lf_session(&relay);
    c.send(b"Subject: lf\n\nhello\n.\nQUIT\n\r\n.\r\n");
    // The whole thing was one message, refused for its bare LFs.
    assert!(c.reply().starts_with("554 5.6.0"));
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    assert!(relay.captured().is_empty());
}
