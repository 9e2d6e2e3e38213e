//! Capabilities a message needs from its upstream (PRODUCT §3.5): 8-bit
//! content needs 8BITMIME, non-ASCII addresses need SMTPUTF8. A server
//! without them is skipped for the next one; when no server of the chain
//! can take the message the client gets a permanent 5xx (a 451 would be
//! retried for ever). Legacy 8-bit headers without a declared SMTPUTF8
//! pass through, as Postfix passes them.

mod common;

use common::postfix::{Postfix, SmtpSink};
use common::relay::{Raw, TestRelay};
use std::time::Duration;

fn relay(primary_port: u16, fallback: Option<u16>) -> TestRelay {
    let server = |name: &str, port: u16| {
        format!("[server.{name}]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\n")
    };
    let mut cfg = format!(
        "[system]\nhostname = \"relay.test\"\n[[listener]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\nauth = \"none\"\n{}",
        server("first", primary_port)
    );
    if let Some(p) = fallback {
        cfg += &server("second", p);
    }
    cfg += "[tenant.t]\n[application.app]\ntenant = \"t\"\nclient_ips = [\"127.0.0.0/8\"]\nprimary = \"first\"\n";
    if fallback.is_some() {
        cfg += "fallback = \"second\"\n";
    }
    TestRelay::start(&cfg)
}

fn send(relay: &TestRelay, mail: &str, rcpt: &str, data: &[u8]) -> String {
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    c.expect(&format!("MAIL FROM:<{mail}>"), 250);
    c.expect(&format!("RCPT TO:<{rcpt}>"), 250);
    c.expect("DATA", 354);
    c.send(data);
    c.send(b"\r\n.\r\n");
    c.reply()
}

#[test]
fn eight_bit_content_without_8bitmime_anywhere_is_refused_permanently() {
    let sink = SmtpSink::builder().no_8bitmime().start();
    let r = relay(sink.port(), None);
    let reply = send(
        &r,
        "a@legacy.test",
        "b@example.com",
        "Subject: x\r\n\r\nGrüße".as_bytes(),
    );
    assert!(reply.starts_with("554 5.6.3 "), "{reply}");
    assert!(reply.contains("8BITMIME"), "{reply}");
    // 7-bit content goes through the same server.
    let reply = send(
        &r,
        "a@legacy.test",
        "b@example.com",
        b"Subject: x\r\n\r\nplain",
    );
    assert!(reply.starts_with("250 "), "{reply}");
}

#[test]
fn eight_bit_content_fails_over_to_a_server_with_8bitmime() {
    let sink = SmtpSink::builder().no_8bitmime().start();
    let pf = Postfix::start();
    let r = relay(sink.port(), Some(pf.port()));
    let reply = send(
        &r,
        "a@legacy.test",
        "b@example.com",
        "Subject: x\r\n\r\nGrüße".as_bytes(),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(pf.wait_for_messages(1, Duration::from_secs(10)).len(), 1);
}

#[test]
fn utf8_addresses_need_smtputf8() {
    // smtp-sink does not offer SMTPUTF8.
    let sink = SmtpSink::start();
    let r = relay(sink.port(), None);
    let reply = send(
        &r,
        "jörg@bücher.example",
        "b@example.com",
        b"Subject: x\r\n\r\nbody",
    );
    assert!(reply.starts_with("554 5.6.7 "), "{reply}");
}

#[test]
fn legacy_8bit_headers_pass_without_smtputf8() {
    let sink = SmtpSink::start();
    let r = relay(sink.port(), None);
    // A Latin-1 subject from a client that declared nothing.
    let reply = send(
        &r,
        "a@legacy.test",
        "b@example.com",
        b"Subject: Gr\xfc\xdfe\r\n\r\nbody",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let got = sink.wait_for_messages(1, Duration::from_secs(10));
    assert!(got[0].data.windows(5).any(|w| w == b"Gr\xfc\xdfe"));
}
