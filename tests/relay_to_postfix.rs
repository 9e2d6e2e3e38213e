//! swaks → smarthost → Postfix (→ smtp-sink): the envelope and headers
//! arrive rewritten exactly as `explain` predicts, and the body arrives
//! byte for byte — 8-bit, UTF-8, dot-stuffed lines, and 20 MB.

mod common;

use common::postfix::{Postfix, PostfixDelivery};
use common::relay::{TestRelay, python, swaks};
use smarthost::explain::{self, Request, Who};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn config(port: u16) -> String {
    format!(
        r#"
[system]
hostname = "relay.test"
default_server = "pf"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.pf]
host = "127.0.0.1"
port = {port}
security = "none"

[tenant.acme]
sender = "info@acme.example"
reply_to = "service@acme.example"
display_name = "ACME"

[application.shop]
tenant = "acme"
client_ips = ["127.0.0.0/8"]
display_name = "ACME Webshop – Zürich"
sender = "shop@acme.example"
"#
    )
}

#[test]
fn headers_and_envelope_as_explain_predicts() {
    let pf = Postfix::start();
    let relay = TestRelay::start(&config(pf.port()));
    let server = relay.addr("main").to_string();
    let out = swaks(&[
        "--server",
        &server,
        "--from",
        "orders@legacy.test",
        "--to",
        "customer@example.com",
        "--h-From",
        "Legacy Shop <orders@legacy.test>",
        "--h-Subject",
        "Order 42",
        "--body",
        "Thanks for your order.",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = pf.wait_for_messages(1, WAIT).remove(0);

    let cfg = relay.relay.config();
    let report = explain::explain(
        &cfg,
        &Request {
            who: Who::App("shop".into()),
            from: "orders@legacy.test".into(),
            to: vec!["customer@example.com".into()],
            subject: "Order 42".into(),
        },
    )
    .unwrap();
    let hop = &report.server_chain[0];
    assert_eq!(hop.server, "pf");
    assert_eq!(got.mail_from, hop.envelope_from);
    assert_eq!(got.rcpt_to, report.deliver_to);
    // Every header explain shows for From and Reply-To is what Postfix got.
    let data = String::from_utf8_lossy(got.data_without_postfix_received()).into_owned();
    for field in ["From:", "Reply-To:"] {
        let want = hop.headers.iter().find(|h| h.starts_with(field)).unwrap();
        assert!(
            data.contains(&format!("\r\n{want}\r\n")),
            "{want:?} not in\n{data}"
        );
    }
    assert_eq!(
        got.header("From").as_deref(),
        Some("=?utf-8?B?QUNNRSBXZWJzaG9wIOKAkyBaw7xyaWNo?= <shop@acme.example>")
    );
    assert_eq!(
        got.header("Reply-To").as_deref(),
        Some("<service@acme.example>")
    );
    // Our trace header is there, below Postfix's.
    assert!(data.starts_with("Received: from "), "{data}");
    assert!(data.contains("by relay.test (smarthost) with ESMTP id"));
}

#[test]
fn body_is_byte_identical() {
    let pf = Postfix::builder().delivery(PostfixDelivery::Pipe).start();
    let relay = TestRelay::start(&config(pf.port()));
    let mut body: Vec<u8> =
        "UTF-8: Grüße, 日本語, emoji ✉\r\n.a line with a leading dot\r\n..two\r\n.\r\nnext\r\n"
            .as_bytes()
            .to_vec();
    body.extend((0x80u8..=0xff).chain(0x20..0x7f));
    body.extend_from_slice(b"\r\nFrom: not a header\r\n\r\nlast\r\n");
    let mut msg = b"From: Legacy <orders@legacy.test>\r\nSubject: bytes\r\n\r\n".to_vec();
    msg.extend_from_slice(&body);
    let hex: String = msg.iter().map(|b| format!("{b:02x}")).collect();
    python(
        relay.port("main"),
        r#"
s = smtplib.SMTP(HOST, PORT, timeout=30)
s.sendmail("orders@legacy.test", ["customer@example.com"], bytes.fromhex(ARGS[0]), mail_options=["BODY=8BITMIME"])
"#,
        &[&hex],
    );
    let got = pf.wait_for_messages(1, WAIT).remove(0);
    let data = got.data_without_postfix_received();
    let split = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&data[split..], &body[..]);
}

#[test]
fn twenty_megabytes_arrive_intact() {
    let pf = Postfix::start();
    let relay = TestRelay::start(&(config(pf.port()) + "[limits]\nmax_message_size = \"32MB\"\n"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.eml");
    let line: Vec<u8> = (0..76u8).map(|i| b'A' + i % 26).chain(*b"\r\n").collect();
    let mut msg = b"Subject: twenty\r\n\r\n.dot first\r\n".to_vec();
    while msg.len() < 20 << 20 {
        msg.extend_from_slice(&line);
    }
    std::fs::write(&path, &msg).unwrap();
    let server = relay.addr("main").to_string();
    // swaks --data appends CRLF.CRLF itself, so the file holds the message
    // without its last CRLF.
    std::fs::write(&path, &msg[..msg.len() - 2]).unwrap();
    let out = swaks(&[
        "--server",
        &server,
        "--from",
        "orders@legacy.test",
        "--to",
        "customer@example.com",
        "--data",
        &format!("@{}", path.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = pf.wait_for_messages(1, WAIT).remove(0);
    let data = got.data_without_postfix_received();
    let split = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(data.len() - split, msg.len() - 19);
    assert!(data[split..] == msg[19..], "20 MB body differs");
}
