//! The whole path with a real SMTP upstream: a client submits to the relay,
//! the first server of the chain is down, the message fails over to the
//! second (smtp-sink) and arrives there rewritten in its header and
//! byte-identical in its body.

mod common;

use common::postfix::{SmtpSink, closed_port};
use common::relay::{Raw, TestRelay, sample_message, simple_config};
use common::upstream::WAIT;

#[test]
fn relay_fails_over_to_a_working_smtp_upstream() {
    let sink = SmtpSink::start();
    let relay = TestRelay::start(&simple_config(&format!(
        r#"primary = "dead"
fallback = "sink"

[server.dead]
host = "127.0.0.1"
port = {}
security = "none"
connect_timeout = "2s"

[server.sink]
host = "127.0.0.1"
port = {}
security = "none"
"#,
        closed_port(),
        sink.port()
    )));
    let body = b"line 1\r\n.leading dot\r\n.\r\nlast\r\n";
    // What the client puts on the wire: the same message, dot-stuffed.
    let stuffed = sample_message(
        "through the chain",
        b"line 1\r\n..leading dot\r\n..\r\nlast\r\n",
    );
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(&stuffed);
    let reply = c.cmd(".");
    assert!(reply.starts_with("250"), "{reply}");
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got[0].mail_from, "sender@relay.test");
    assert_eq!(got[0].rcpt_to, ["rcpt@example.com"]);
    assert!(got[0].data.ends_with(&[b"\r\n".as_slice(), body].concat()));
    let from = got[0].header("From").unwrap();
    assert!(from.contains("sender@relay.test"), "{from}");
}
