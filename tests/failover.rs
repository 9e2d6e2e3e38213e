//! Failover inside one delivery attempt, against real Postfix upstreams:
//! each way the primary can fail sends the message through the fallback in
//! the same attempt, and the client (swaks) sees 250 once. A recipient's
//! 5xx is that recipient's answer and is not retried elsewhere. When every
//! server fails, the client gets 451 and nothing is delivered.

mod common;

use common::faults::CuttingProxy;
use common::postfix::{Postfix, Tarpit, TlsMode, closed_port};
use common::relay::{TestRelay, swaks};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn smtp(port: u16, extra: &str) -> String {
    format!(
        "host = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"2s\"\n{extra}"
    )
}

fn relay(primary: &str, fallback: &str) -> TestRelay {
    TestRelay::start(&format!(
        r#"
[system]
hostname = "relay.test"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.primary]
{primary}

[server.fallback]
{fallback}

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
primary = "primary"
fallback = "fallback"
"#
    ))
}

/// Sends one message with swaks; returns (exit ok, transcript).
fn send(relay: &TestRelay, to: &[&str]) -> (bool, String) {
    let server = relay.addr("main").to_string();
    // swaks takes several recipients as one comma-separated --to.
    let to = to.join(",");
    let out = swaks(&[
        "--server",
        &server,
        "--from",
        "app@legacy.test",
        "--h-Subject",
        "failover test",
        "--to",
        &to,
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The final reply to the message (the line after the data's dot).
fn data_reply(log: &str) -> &str {
    log.lines()
        .skip_while(|l| !l.starts_with(" -> ."))
        .nth(1)
        .unwrap_or_else(|| panic!("no reply to DATA in:\n{log}"))
}

/// How many messages `postfix` accepted, by its own account, once every
/// SMTP session it had has ended: smtpd's `disconnect from` line counts the
/// DATA commands of the session that got 250 (`data=1`, or `data=0/1` when
/// the one DATA failed). Call it after the relay is dropped (its pooled
/// connections close with it); waits, bounded, for Postfix to log the ends.
/// A count that is final replaces a sleep "long enough for a duplicate".
fn accepted_after_sessions_end(postfix: &Postfix) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = postfix.maillog();
        let sessions = log.matches(": connect from ").count();
        let ends: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(": disconnect from "))
            .collect();
        if sessions > 0 && ends.len() == sessions {
            return ends
                .iter()
                .map(|l| {
                    assert!(!l.contains(" bdat="), "BDAT is not counted here: {l}");
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("data="))
                        .map_or(0, |n| {
                            let ok = n.split('/').next().unwrap_or(n);
                            ok.parse::<usize>().unwrap_or_else(|_| panic!("{l}"))
                        })
                })
                .sum();
        }
        assert!(
            Instant::now() < deadline,
            "Postfix logged {sessions} connect(s) and {} disconnect(s):\n{log}",
            ends.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one message that the fallback must deliver, and checks it was
/// accepted there exactly once. Consumes the relay: dropping it closes its
/// pooled connections, which ends Postfix's sessions and its accounting.
fn assert_delivered_by_fallback(relay: TestRelay, fallback: &Postfix) {
    let (ok, log) = send(&relay, &["rcpt@example.com"]);
    assert!(ok, "{log}");
    assert!(
        data_reply(&log).starts_with("<-  250 2.0.0 OK: delivered as"),
        "{log}"
    );
    let got = fallback.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "sender@relay.test");
    assert_eq!(got[0].rcpt_to, ["rcpt@example.com"]);
    // Direct mode: the client's reply came after the delivery finished.
    drop(relay);
    assert_eq!(accepted_after_sessions_end(fallback), 1, "delivered twice");
}

#[test]
fn primary_port_closed() {
    let fallback = Postfix::start();
    let r = relay(&smtp(closed_port(), ""), &smtp(fallback.port(), ""));
    assert_delivered_by_fallback(r, &fallback);
}

#[test]
fn primary_never_greets_fails_over_after_the_timeout() {
    let tarpit = Tarpit::start();
    let fallback = Postfix::start();
    let r = relay(
        &smtp(tarpit.port(), "").replace("command_timeout = \"2s\"", "command_timeout = \"1s\""),
        &smtp(fallback.port(), ""),
    );
    let started = Instant::now();
    assert_delivered_by_fallback(r, &fallback);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(tarpit.connections() >= 1);
}

#[test]
fn primary_4xx_at_mail() {
    let primary = Postfix::builder()
        .sender_reply("sender@relay.test", "450 4.7.1 try again later")
        .start();
    let fallback = Postfix::start();
    let r = relay(&smtp(primary.port(), ""), &smtp(fallback.port(), ""));
    assert_delivered_by_fallback(r, &fallback);
    assert!(primary.received().is_empty());
}

#[test]
fn primary_4xx_at_rcpt() {
    let primary = Postfix::builder()
        .defer_recipient("rcpt@example.com")
        .start();
    let fallback = Postfix::start();
    let r = relay(&smtp(primary.port(), ""), &smtp(fallback.port(), ""));
    assert_delivered_by_fallback(r, &fallback);
    assert!(primary.received().is_empty());
}

#[test]
fn primary_421_at_rcpt() {
    let primary = Postfix::builder()
        .all_recipients_reply("421 4.3.2 service not available")
        .start();
    let fallback = Postfix::start();
    let r = relay(&smtp(primary.port(), ""), &smtp(fallback.port(), ""));
    assert_delivered_by_fallback(r, &fallback);
}

#[test]
fn primary_4xx_at_end_of_data() {
    let primary = Postfix::builder()
        .end_of_data_reply("451 4.3.0 temporary problem")
        .start();
    let fallback = Postfix::start();
    let r = relay(&smtp(primary.port(), ""), &smtp(fallback.port(), ""));
    assert_delivered_by_fallback(r, &fallback);
    assert!(primary.received().is_empty());
}

#[test]
fn primary_drops_the_connection_mid_data() {
    let primary = Postfix::start();
    let proxy = CuttingProxy::start(primary.addr(), 40);
    let fallback = Postfix::start();
    let r = relay(&smtp(proxy.port(), ""), &smtp(fallback.port(), ""));
    assert_delivered_by_fallback(r, &fallback);
    assert_eq!(proxy.cuts(), 1);
    // The cut transaction was not accepted; smtpd's accounting is final once
    // the relay is gone (dropped by the call above).
    assert_eq!(accepted_after_sessions_end(&primary), 0);
    assert!(primary.received().is_empty());
}

#[test]
fn primary_tls_required_but_not_offered() {
    let primary = Postfix::start();
    let fallback = Postfix::start();
    let r = relay(
        &smtp(primary.port(), "").replace("security = \"none\"", "security = \"starttls\""),
        &smtp(fallback.port(), ""),
    );
    assert_delivered_by_fallback(r, &fallback);
}

#[test]
fn primary_certificate_not_trusted() {
    // STARTTLS offered, but the test CA is not configured for this server.
    let primary = Postfix::builder().tls(TlsMode::StartTls).start();
    let fallback = Postfix::start();
    let r = relay(
        &smtp(primary.port(), "tls_name = \"localhost\"")
            .replace("security = \"none\"", "security = \"starttls\""),
        &smtp(fallback.port(), ""),
    );
    assert_delivered_by_fallback(r, &fallback);
}

#[test]
fn primary_auth_failure() {
    let primary = Postfix::builder()
        .sasl_user("relay", "right")
        .auth_only_after_tls(false)
        .require_auth(true)
        .start();
    let fallback = Postfix::start();
    let r = relay(
        &smtp(primary.port(), "username = \"relay\"\npassword = \"wrong\""),
        &smtp(fallback.port(), ""),
    );
    assert_delivered_by_fallback(r, &fallback);
}

#[test]
fn a_recipient_5xx_is_not_retried_elsewhere() {
    let primary = Postfix::builder()
        .reject_recipient("gone@example.com")
        .start();
    let fallback = Postfix::start();
    let r = relay(&smtp(primary.port(), ""), &smtp(fallback.port(), ""));
    let (ok, log) = send(&r, &["gone@example.com"]);
    assert!(!ok);
    let reply = data_reply(&log);
    assert!(
        reply.starts_with("<** 550 5.1.1 Upstream refused the message:"),
        "{log}"
    );
    assert!(reply.contains("gone@example.com"), "{reply}");
    drop(r);
    assert_eq!(accepted_after_sessions_end(&primary), 0);
    assert_eq!(accepted_after_sessions_end(&fallback), 0);
    assert!(fallback.received().is_empty());
    assert!(primary.received().is_empty());
}

#[test]
fn partial_refusal_delivers_the_rest_and_sends_a_dsn() {
    let primary = Postfix::builder()
        .reject_recipient("gone@example.com")
        .start();
    let fallback = Postfix::start();
    let r = relay(&smtp(primary.port(), ""), &smtp(fallback.port(), ""));
    let (ok, log) = send(&r, &["rcpt@example.com", "gone@example.com"]);
    assert!(ok, "{log}");
    assert!(data_reply(&log).starts_with("<-  250 "), "{log}");
    // The message for the good recipient, and a DSN to the sender.
    let got = primary.wait_for_messages(2, WAIT);
    let (msg, dsn): (Vec<_>, Vec<_>) = got.iter().partition(|m| !m.mail_from.is_empty());
    assert_eq!(msg[0].rcpt_to, ["rcpt@example.com"]);
    assert_eq!(dsn.len(), 1);
    assert_eq!(dsn[0].rcpt_to, ["sender@relay.test"]);
    let text = String::from_utf8_lossy(&dsn[0].data);
    assert!(
        text.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{text}"
    );
    assert!(
        text.contains(
            "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{text}"
    );
    assert!(fallback.received().is_empty());
}

#[test]
fn all_servers_down_gives_451_and_delivers_nothing() {
    let tarpit = Tarpit::start();
    let r = relay(
        &smtp(closed_port(), ""),
        &smtp(tarpit.port(), "").replace("command_timeout = \"2s\"", "command_timeout = \"1s\""),
    );
    let (ok, log) = send(&r, &["rcpt@example.com"]);
    assert!(!ok);
    assert!(
        data_reply(&log).starts_with("<** 451 4.4.1 Delivery failed temporarily on 2 server(s)"),
        "{log}"
    );
}

#[test]
fn the_rewrite_follows_the_server_actually_used() {
    // The fallback is a provider with a fixed sender: after failing over,
    // the envelope and From carry that sender; only the display name stays.
    let fallback = Postfix::start();
    let r = TestRelay::start(&format!(
        r#"
[system]
hostname = "relay.test"
[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"
[server.primary]
{}
[server.fallback]
{}
sender = "no-reply@provider.example"
[tenant.t]
sender = "sender@relay.test"
display_name = "Tenant T"
[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
primary = "primary"
fallback = "fallback"
"#,
        smtp(closed_port(), ""),
        smtp(fallback.port(), "")
    ));
    let (ok, log) = send(&r, &["rcpt@example.com"]);
    assert!(ok, "{log}");
    let got = fallback.wait_for_messages(1, WAIT).remove(0);
    assert_eq!(got.mail_from, "no-reply@provider.example");
    assert_eq!(
        got.header("From").as_deref(),
        Some("Tenant T <no-reply@provider.example>")
    );
}
