//! One tenant's message cannot take a shared server down for everyone
//! (issue 14.4): a Postfix without PIPELINING that refuses many unknown
//! recipients and then hits its error limit (421 and close) reacted to the
//! message, not to a server problem. Such failures do not count towards
//! marking the server down, so another client's mail still goes through.

mod common;

use common::postfix::Postfix;
use common::relay::{Raw, TestRelay};

#[test]
fn recipient_errors_then_421_do_not_mark_the_server_down() {
    let mut b = Postfix::builder().main_cf("smtpd_discard_ehlo_keywords", "pipelining");
    for i in 0..25 {
        b = b.reject_recipient(&format!("unknown{i}@example.com"));
    }
    let pf = b.start();
    let relay = TestRelay::start(&format!(
        r#"
[system]
hostname = "relay.test"
default_server = "shared"

[health]
failures = 2
cooldown = "10m"

[admin]
address = "127.0.0.1:0"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.shared]
host = "127.0.0.1"
port = {}
security = "none"

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
"#,
        pf.port()
    ));
    let unknown: Vec<String> = (0..25).map(|i| format!("unknown{i}@example.com")).collect();
    for _ in 0..3 {
        let mut c = Raw::connect(relay.addr("main"));
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<app@legacy.test>", 250);
        for u in &unknown {
            c.expect(&format!("RCPT TO:<{u}>"), 250);
        }
        c.expect("DATA", 354);
        c.send(b"Subject: many unknown\r\n\r\nbody\r\n");
        let r = c.cmd(".");
        // Every recipient was refused by the upstream: a 5xx for the
        // message, never a 4xx that would make the client retry for ever.
        assert!(r.starts_with("5"), "{r}");
        c.cmd("QUIT");
    }
    // The server was not marked down: the next message goes through.
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(b"Subject: another tenant\r\n\r\nbody\r\n");
    let r = c.cmd(".");
    assert!(
        r.starts_with("250 "),
        "the shared server was marked down: {r}"
    );
    assert!(pf.maillog().contains("too many errors") || !pf.received().is_empty());
}
