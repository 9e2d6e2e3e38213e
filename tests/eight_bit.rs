//! SMTPUTF8 envelopes and 8-bit bodies (smtplib with SMTPUTF8 and
//! BODY=8BITMIME): the bytes in the outbox after the header section are
//! exactly the bytes the client sent, and UTF-8 header fields we do not
//! rewrite keep their exact bytes.

mod common;

use common::relay::{TestRelay, python, simple_config};
use std::time::Duration;

#[test]
fn utf8_envelope_and_8bit_body_are_byte_identical() {
    let relay = TestRelay::start(&simple_config(""));
    // Every byte value except NUL, CR and LF (8BITMIME allows them in lines).
    let mut body: Vec<u8> =
        "Grüße aus Zürich — 日本語 — ça va?\r\n.leading dot\r\n..two dots\r\n.\r\n"
            .as_bytes()
            .to_vec();
    body.extend((1u8..=255).filter(|b| *b != b'\r' && *b != b'\n'));
    body.extend_from_slice(b"\r\nlast line\r\n");
    let header =
        "From: Jörg <jörg@bücher.example>\r\nTo: zoë@example.org\r\nSubject: Grüße ✓\r\n\r\n";
    let mut msg = header.as_bytes().to_vec();
    msg.extend_from_slice(&body);
    let hex: String = msg.iter().map(|b| format!("{b:02x}")).collect();
    let out = python(
        relay.port("main"),
        r#"
s = smtplib.SMTP(HOST, PORT, timeout=20)
s.ehlo("client.test")
assert s.has_extn("smtputf8") and s.has_extn("8bitmime")
s.sendmail("jörg@bücher.example", ["zoë@example.org"], bytes.fromhex(ARGS[0]),
           mail_options=["SMTPUTF8", "BODY=8BITMIME"])
print("ok")
"#,
        &[&hex],
    );
    assert_eq!(out.trim(), "ok");
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert_eq!(m.json["original_mail_from"], "jörg@bücher.example");
    assert_eq!(m.json["rcpt_to"], serde_json::json!(["zoë@example.org"]));
    let eml = &m.eml;
    let split = eml.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&eml[split..], &body[..], "body changed");
    let head = String::from_utf8(eml[..split].to_vec()).unwrap();
    assert!(
        head.contains("\r\nTo: zoë@example.org\r\nSubject: Grüße ✓\r\n"),
        "{head}"
    );
    // Display names we write are RFC 2047 encoded even here, so the header
    // stays valid if a fallback server lacks SMTPUTF8.
    assert!(
        head.contains("From: =?utf-8?B?SsO2cmc=?= <sender@relay.test>\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Reply-To: =?utf-8?B?SsO2cmc=?= <jörg@bücher.example>\r\n"),
        "{head}"
    );
    assert!(head.contains(" with UTF8SMTP id "), "{head}");
}
