//! The embedded default config, as a newcomer meets it: swaks sends a
//! message and a rewritten copy lands in the capture outbox.

mod common;

use common::relay::{TestRelay, swaks};
use std::time::Duration;

#[test]
fn swaks_message_lands_rewritten_in_the_outbox() {
    // The embedded default with the port made 0 and the outbox in a temp
    // dir: the rest is exactly what `smarthost run` loads without a config.
    let cfg = smarthost::config::DEFAULT_CONFIG
        .replace("127.0.0.1:2525", "127.0.0.1:0")
        .replace("path = \"outbox\"", "path = \"{dir}/outbox\"");
    let relay = TestRelay::start(&cfg);
    let port = relay.port("demo").to_string();
    let out = swaks(&[
        "--server",
        &format!("127.0.0.1:{port}"),
        "--from",
        "a@legacy.test",
        "--to",
        "b@example.com",
    ]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    // The embedded default queues (delivery = "queue"): the reply names
    // the queue id, and the message reaches the outbox in the background.
    assert!(log.contains("<-  250 2.0.0 Ok: queued as "), "{log}");
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert_eq!(
        m.header("From").as_deref(),
        Some("Legacy App via smarthost <relay@smarthost.localhost>")
    );
    assert_eq!(m.header("Reply-To").as_deref(), Some("<a@legacy.test>"));
    assert_eq!(m.json["mail_from"], "relay@smarthost.localhost");
    assert_eq!(m.json["original_mail_from"], "a@legacy.test");
    assert_eq!(m.json["rcpt_to"], serde_json::json!(["b@example.com"]));
    assert_eq!(m.json["application"], "demo");
    let received = m.header("Received").unwrap();
    assert!(
        received.contains("by ") && received.contains("(smarthost) with ESMTP id"),
        "{received}"
    );
    let body = String::from_utf8_lossy(m.without_received()).into_owned();
    assert!(
        body.contains("\r\n\r\nThis is a test mailing\r\n"),
        "{body:?}"
    );
}

#[test]
fn smtplib_sendmail_with_the_embedded_default() {
    let cfg = smarthost::config::DEFAULT_CONFIG
        .replace("127.0.0.1:2525", "127.0.0.1:0")
        .replace("path = \"outbox\"", "path = \"{dir}/outbox\"");
    let relay = TestRelay::start(&cfg);
    let out = common::relay::python(
        relay.port("demo"),
        r#"
s = smtplib.SMTP(HOST, PORT, timeout=20)
refused = s.sendmail("app@legacy.test", ["x@example.com", "y@example.com"],
    b"From: App <app@legacy.test>\r\nSubject: hi\r\n\r\nhello\r\n")
print(json.dumps(refused))
s.quit()
"#,
        &[],
    );
    assert_eq!(out.trim(), "{}");
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert_eq!(
        m.json["rcpt_to"],
        serde_json::json!(["x@example.com", "y@example.com"])
    );
    assert_eq!(
        m.header("From").as_deref(),
        Some("Legacy App via smarthost <relay@smarthost.localhost>")
    );
    assert_eq!(
        m.header("Reply-To").as_deref(),
        Some("App <app@legacy.test>")
    );
}
