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
