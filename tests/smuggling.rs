//! SMTP smuggling (RFC 5321 §4.1.1.4): no bare-LF/CR variant of the end of
//! data is taken as the end, whether the listener tolerates bare LF or not.
//! The commands after it stay message content; no second message appears.

mod common;

use common::relay::{Raw, TestRelay, simple_config};
use std::time::Duration;

const VARIANTS: &[(&str, &[u8])] = &[
    ("<LF>.<LF>", b"\n.\n"),
    ("<CR>.<CR>", b"\r.\r"),
    ("<LF>.<CR><LF>", b"\n.\r\n"),
    ("<CR><LF>.<LF>", b"\r\n.\n"),
    ("<CR>.<CR><LF>", b"\r.\r\n"),
    ("<CR><LF>.<CR>", b"\r\n.\r"),
    ("<CR><LF>.<CR><CR><LF>", b"\r\n.\r\r\n"),
    ("<LF>.<LF> after a bare LF line", b"\nx\n.\n"),
];

fn attempt(relay: &TestRelay, listener: &str, seq: &[u8]) -> String {
    let mut c = Raw::connect(relay.addr(listener));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    let mut data = b"Subject: smuggle\r\n\r\nhello".to_vec();
    data.extend_from_slice(seq);
    data.extend_from_slice(b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSmuggled body\r\n.\r\n");
    c.send(&data);
    let r = c.reply();
    // The next reply must belong to our QUIT: no reply to the smuggled
    // commands was ever produced.
    assert_eq!(c.cmd("QUIT"), "221 2.0.0 Bye\r\n");
    r
}

#[test]
fn lenient_listener_keeps_smuggled_text_as_content() {
    let relay = TestRelay::start(
        &simple_config("").replace("auth = \"none\"", "auth = \"none\"\nallow_bare_lf = true"),
    );
    for (i, (name, seq)) in VARIANTS.iter().enumerate() {
        let r = attempt(&relay, "main", seq);
        assert!(r.starts_with("250 "), "{name}: {r}");
        let msgs = relay.wait_captured(i + 1, Duration::from_secs(5));
        let m = msgs.last().unwrap();
        assert_eq!(
            m.json["rcpt_to"],
            serde_json::json!(["rcpt@example.com"]),
            "{name}"
        );
        let eml = String::from_utf8_lossy(&m.eml);
        assert!(
            eml.contains("MAIL FROM:<evil@attacker.test>\r\n"),
            "{name}: {eml}"
        );
        // Relayed with strict CRLF only.
        let b = m.eml.as_slice();
        for (j, ch) in b.iter().enumerate() {
            if *ch == b'\n' {
                assert_eq!(b[j - 1], b'\r', "{name}: bare LF at {j}");
            }
            if *ch == b'\r' {
                assert_eq!(b.get(j + 1), Some(&b'\n'), "{name}: bare CR at {j}");
            }
        }
    }
    assert_eq!(relay.captured().len(), VARIANTS.len());
}

#[test]
fn strict_listener_refuses_the_message() {
    let relay = TestRelay::start(&simple_config(""));
    for (name, seq) in VARIANTS {
        let r = attempt(&relay, "main", seq);
        assert!(r.starts_with("554 5.6.0"), "{name}: {r}");
    }
    assert!(relay.captured().is_empty());
}
