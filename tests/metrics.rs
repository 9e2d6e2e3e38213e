//! `/metrics`, `/healthz` and `/readyz` on the admin port: exact counter
//! values after deliveries, failovers, blacklist drops and test-mode
//! redirects; every series present at zero before the first event; the
//! output passes `promtool check metrics`; readiness follows the health of
//! the system chain.

mod common;

use common::postfix::closed_port;
use common::relay::{Raw, TestRelay};
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn config() -> String {
    format!(
        r#"
[system]
hostname = "relay.test"
default_server = "outbox"
blacklist = ["@example.invalid"]

[admin]
address = "127.0.0.1:0"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[health]
failures = 100

[server.dead]
host = "127.0.0.1"
port = {dead}
security = "none"
connect_timeout = "2s"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.t]
sender = "sender@relay.test"
blacklist = ["former@example.com"]

[tenant.store]
parent = "t"
test_mode = {{ redirect_to = "qa@relay.test", allow = ["@relay.test"] }}

[application.app]
tenant = "t"
client_ips = ["127.0.0.1"]
primary = "dead"

[application.till]
tenant = "store"
client_ips = ["127.0.0.2"]
"#,
        dead = closed_port()
    )
}

fn send(c: &mut Raw, to: &[&str]) {
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    for t in to {
        c.expect(&format!("RCPT TO:<{t}>"), 250);
    }
    c.expect("DATA", 354);
    c.send(b"Subject: m\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250 "));
}

#[test]
fn counters_after_deliveries_failovers_drops_and_redirects() {
    let relay = TestRelay::start(&config());
    let app = r#"tenant="t",application="app""#;
    let till = r#"tenant="store",application="till""#;
    // Present at zero before anything happened.
    assert_eq!(
        relay.metric(&format!("smarthost_messages_received_total{{{app}}}")),
        0.0
    );
    assert_eq!(
        relay.metric(&format!(
            "smarthost_messages_total{{{app},server=\"outbox\",outcome=\"delivered\"}}"
        )),
        0.0
    );
    assert_eq!(
        relay.metric(
            r#"smarthost_failovers_total{from_server="dead",to_server="outbox",class="connection"}"#
        ),
        0.0
    );
    assert_eq!(relay.metric(&format!("smarthost_test_mode{{{till}}}")), 1.0);
    assert_eq!(relay.metric(&format!("smarthost_test_mode{{{app}}}")), 0.0);

    // Three messages from "app": each fails over from the dead primary.
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    send(&mut c, &["a@example.com"]);
    send(
        &mut c,
        &["b@example.com", "former@example.com", "x@example.invalid"],
    );
    send(&mut c, &["former@example.com"]); // every recipient dropped
    c.expect("QUIT", 221);
    // Two from "till", in test mode: three recipients redirected, one allowed.
    let mut t = Raw::connect_from(relay.addr("main"), "127.0.0.2");
    t.expect("EHLO c", 250);
    send(&mut t, &["c1@example.com", "c2@example.com"]);
    send(&mut t, &["c3@example.com", "boss@relay.test"]);
    t.expect("RCPT TO:<x@y.test>", 503);
    t.expect("QUIT", 221);
    relay.wait_captured(4, Duration::from_secs(5));

    let checks: Vec<(String, f64)> = vec![
        (format!("smarthost_messages_received_total{{{app}}}"), 3.0),
        (format!("smarthost_messages_received_total{{{till}}}"), 2.0),
        (format!("smarthost_messages_total{{{app},server=\"outbox\",outcome=\"delivered\"}}"), 2.0),
        (format!("smarthost_messages_total{{{app},server=\"none\",outcome=\"dropped\"}}"), 1.0),
        (format!("smarthost_messages_total{{{till},server=\"outbox\",outcome=\"delivered\"}}"), 2.0),
        (r#"smarthost_failovers_total{from_server="dead",to_server="outbox",class="connection"}"#.into(), 2.0),
        (format!("smarthost_recipients_dropped_total{{{app},list=\"t\"}}"), 2.0),
        (format!("smarthost_recipients_dropped_total{{{app},list=\"system\"}}"), 1.0),
        (format!("smarthost_test_mode_redirects_total{{{till}}}"), 3.0),
        (format!("smarthost_test_mode_redirects_total{{{app}}}"), 0.0),
        (r#"smarthost_upstream_delivery_seconds_count{server="outbox"}"#.into(), 4.0),
        (r#"smarthost_connections_total{listener="main",outcome="accepted"}"#.into(), 2.0),
        (r#"smarthost_sessions_total{listener="main",outcome="quit"}"#.into(), 2.0),
        (r#"smarthost_sessions_active{listener="main"}"#.into(), 0.0),
        (r#"smarthost_config_reloads_total{result="success"}"#.into(), 0.0),
    ];
    for (sample, want) in checks {
        assert_eq!(relay.metric(&sample), want, "{sample}");
    }
}

#[test]
fn output_passes_promtool() {
    let relay = TestRelay::start(&config());
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    send(&mut c, &["a@example.com"]);
    let (status, body) = relay.admin_get("/metrics");
    assert_eq!(status, 200);
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run tests/run.sh, which installs it");
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Label values are config names and fixed words only.
    assert!(!body.contains("example.com") && !body.contains("legacy.test"));
}

#[test]
fn health_and_readiness() {
    let relay = TestRelay::start(
        &config()
            .replace("default_server = \"outbox\"", "default_server = \"dead\"")
            .replace("failures = 100", "failures = 1\ncooldown = \"1h\"")
            .replace("primary = \"dead\"", ""),
    );
    assert_eq!(relay.admin_get("/healthz"), (200, "ok\n".into()));
    assert_eq!(relay.admin_get("/readyz"), (200, "ready\n".into()));
    assert_eq!(relay.admin_get("/nothing").0, 404);
    assert_eq!(relay.metric("smarthost_server_up{server=\"dead\"}"), 1.0);
    // One failed delivery marks the only system server down.
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    c.expect("RCPT TO:<a@example.com>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: m\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("451 4.4.1"));
    let (status, body) = relay.admin_get("/readyz");
    assert_eq!(status, 503);
    assert!(
        body.contains("every server of the system chain is marked down: dead"),
        "{body}"
    );
    assert_eq!(relay.metric("smarthost_server_up{server=\"dead\"}"), 0.0);
    // While it is down it is skipped: no second connection attempt.
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    c.expect("RCPT TO:<a@example.com>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: m\r\n\r\nbody\r\n.\r\n");
    assert!(
        c.reply()
            .starts_with("451 4.7.0 No upstream server available")
    );
    let _ = TcpStream::connect(relay.addr("main"));
}
