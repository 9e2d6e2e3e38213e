//! Reply codes over a real socket: identification (never an open relay),
//! the system switch, limits, sequence and syntax errors, VRFY/EXPN/HELP.

mod common;

use common::relay::{Raw, TestRelay, simple_config};

#[test]
fn unidentified_client_cannot_relay() {
    let relay = TestRelay::start(&simple_config("").replace(
        "client_ips = [\"127.0.0.0/8\"]",
        "client_ips = [\"127.0.0.2\"]",
    ));
    // No AUTH and no bound application: an address nobody owns can never
    // relay, so it is refused at connect (PRODUCT §3.1).
    let mut c = Raw::connect_no_greeting(relay.addr("main"));
    assert_eq!(
        c.reply(),
        "554 5.7.1 Access denied: this address may not send here\r\n"
    );
    assert!(c.closed());
    // From the application's address it works.
    let mut ok = Raw::connect_from(relay.addr("main"), "127.0.0.2");
    ok.expect("EHLO c", 250);
    ok.expect("MAIL FROM:<a@legacy.test>", 250);
}

#[test]
fn system_switch_off_refuses_with_4xx() {
    let relay = TestRelay::start(&simple_config("").replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nenabled = false",
    ));
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    assert_eq!(
        c.cmd("MAIL FROM:<a@legacy.test>"),
        "451 4.3.2 Sending is disabled, try again later\r\n"
    );
}

#[test]
fn limits_and_errors() {
    let relay = TestRelay::start(&simple_config(
        "[limits]\nmax_recipients = 2\nmax_message_size = \"64KB\"\nmax_line_length = 1000\n",
    ));
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("MAIL FROM:<a@legacy.test>", 503);
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.contains("250-SIZE 65536\r\n"), "{ehlo}");
    c.expect("FOO", 500);
    c.expect("VRFY someone", 252);
    c.expect("EXPN list", 502);
    c.expect("HELP", 214);
    c.expect("RCPT TO:<x@example.com>", 503);
    assert!(
        c.cmd("MAIL FROM:<a@legacy.test> SIZE=100000")
            .starts_with("552 5.3.4")
    );
    c.expect("MAIL FROM:<a@legacy.test> SIZE=1000", 250);
    c.expect("MAIL FROM:<a@legacy.test>", 503);
    c.expect("RCPT TO:<x@example.com>", 250);
    c.expect("RCPT TO:<y@example.com>", 250);
    assert_eq!(
        c.cmd("RCPT TO:<z@example.com>"),
        "452 4.5.3 Too many recipients\r\n"
    );
    assert!(
        c.cmd(&format!("NOOP {}", "x".repeat(1200)))
            .starts_with("500 5.5.2 Line too long")
    );
    c.expect("DATA", 354);
    c.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y".repeat(70_000)).as_bytes());
    assert!(c.reply().starts_with("552 5.3.4"));
    c.expect("RSET", 250);
    c.expect("QUIT", 221);
    assert!(relay.captured().is_empty());
}

#[test]
fn pipelined_session_in_one_write() {
    let relay = TestRelay::start(&simple_config(""));
    let mut c = Raw::connect(relay.addr("main"));
    c.send(b"EHLO c\r\nMAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\nSubject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@legacy.test>\r\nRCPT TO:<z@example.com>\r\nDATA\r\nSubject: q\r\n\r\nbody2\r\n.\r\nQUIT\r\n");
    let mut codes = Vec::new();
    loop {
        let r = c.reply();
        if r.is_empty() {
            break;
        }
        codes.push(r[..3].to_owned());
        if r.starts_with("221") {
            break;
        }
    }
    assert_eq!(
        codes,
        [
            "250", "250", "250", "250", "354", "250", "250", "250", "354", "250", "221"
        ]
    );
    assert_eq!(
        relay
            .wait_captured(2, std::time::Duration::from_secs(5))
            .len(),
        2
    );
}

#[test]
fn addresses_that_are_not_utf8_are_refused() {
    let relay = TestRelay::start(&simple_config(""));
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    c.send(b"MAIL FROM:<app\xff@legacy.test>\r\n");
    assert_eq!(c.reply(), "553 5.1.7 Sender address is not valid UTF-8\r\n");
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    c.send(b"RCPT TO:<r\xc3\x28@example.com>\r\n");
    assert_eq!(
        c.reply(),
        "553 5.1.3 Recipient address is not valid UTF-8\r\n"
    );
    // Valid UTF-8 is fine.
    c.expect("RCPT TO:<jörg@example.com>", 250);
}

#[test]
fn recipients_the_relay_cannot_send_get_its_own_refusal_at_rcpt() {
    let relay = TestRelay::start(&simple_config(""));
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    // Valid RFC 5321 syntax, but not put into RCPT TO:<..> upstream: the
    // relay says so itself, instead of "Upstream refused" after DATA.
    assert_eq!(
        c.cmd("RCPT TO:<\"a>b\"@example.com>"),
        "553 5.1.3 This relay cannot send to that address\r\n"
    );
    // An address literal is a policy refusal, not a syntax error.
    assert_eq!(
        c.cmd("RCPT TO:<user@[192.0.2.1]>"),
        "550 5.7.1 Recipients at address literals are not relayed\r\n"
    );
    c.expect("RCPT TO:<ok@example.com>", 250);
}
