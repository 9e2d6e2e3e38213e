//! A 421 (or a cut connection) in the middle of pipelined RCPT replies is
//! a connection failure, not a refusal of the message (issue 14 item 1):
//! recipients the server had refused with 5xx stay refused (DSN), every
//! other recipient goes to the next server, and the client gets 250.
//!
//! Two upstreams cut that way: a real Postfix with its default
//! `smtpd_hard_error_limit` (20) given 20 unknown recipients, and an
//! in-process scripted server that answers 250, 550, then 421 and closes.

mod common;

use common::postfix::Postfix;
use common::relay::{TestRelay, swaks};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// A relay whose `primary` server is SMTP on `port` and whose fallback is
/// the capture outbox.
fn relay(port: u16) -> TestRelay {
    TestRelay::start(&format!(
        r#"
[system]
hostname = "relay.test"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.primary]
host = "127.0.0.1"
port = {port}
security = "none"
connect_timeout = "2s"
command_timeout = "5s"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
primary = "primary"
fallback = "outbox"
"#
    ))
}

/// Sends one message with swaks; returns (exit ok, transcript).
fn send(relay: &TestRelay, to: &[String]) -> (bool, String) {
    let server = relay.addr("main").to_string();
    let to = to.join(",");
    let out = swaks(&[
        "--server",
        &server,
        "--from",
        "app@legacy.test",
        "--to",
        &to,
        "--h-Subject",
        "cut after refusals",
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The message went to the outbox for `good` alone, and a DSN for the
/// refused ones to the tenant's sender.
fn assert_rest_failed_over(relay: &TestRelay, log: &str, good: &str, refused: usize) {
    let reply = log
        .lines()
        .skip_while(|l| !l.starts_with(" -> ."))
        .nth(1)
        .unwrap_or_else(|| panic!("no reply to DATA in:\n{log}"));
    assert!(reply.starts_with("<-  250 "), "{log}");
    let got = relay.wait_captured(2, WAIT);
    let message = got
        .iter()
        .find(|c| c.json["original_mail_from"] == "app@legacy.test")
        .expect("the message");
    assert_eq!(message.json["rcpt_to"], serde_json::json!([good]));
    let dsn = got
        .iter()
        .find(|c| c.json["mail_from"] == "")
        .expect("a DSN");
    assert_eq!(
        dsn.json["rcpt_to"],
        serde_json::json!(["sender@relay.test"])
    );
    let text = String::from_utf8_lossy(&dsn.eml);
    let listed = text.matches("Final-Recipient: rfc822;").count();
    assert_eq!(listed, refused, "{text}");
}

#[test]
fn postfix_hard_error_limit_mid_pipeline_fails_over_the_valid_recipient() {
    let mut b = Postfix::builder();
    let unknown: Vec<String> = (0..20).map(|i| format!("unknown{i}@example.com")).collect();
    for u in &unknown {
        b = b.reject_recipient(u);
    }
    let primary = b.start();
    let r = relay(primary.port());
    let mut to = vec!["real@example.com".to_owned()];
    to.extend(unknown.iter().cloned());
    let (ok, log) = send(&r, &to);
    assert!(ok, "{log}");
    assert_rest_failed_over(&r, &log, "real@example.com", 20);
    assert!(primary.received().is_empty());
    assert!(
        primary.maillog().contains("too many errors"),
        "Postfix did not hit its error limit:\n{}",
        primary.maillog()
    );
}

/// Answers the greeting and EHLO, then reads the pipelined batch up to
/// DATA and answers MAIL 250, good@ 250, bad@ 550, then 421 and closes.
fn scripted_cutter() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Serve a bounded number of connections: the relay opens one.
        for stream in listener.incoming().take(4) {
            let Ok(mut w) = stream else { return };
            let _ = w.set_read_timeout(Some(WAIT));
            let mut r = BufReader::new(w.try_clone().unwrap());
            let _ = w.write_all(b"220 cutter ESMTP\r\n");
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let cmd = line.trim_end().to_ascii_uppercase();
                if cmd.starts_with("EHLO") {
                    let _ = w.write_all(b"250-cutter\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
                } else if cmd == "DATA" {
                    // Everything so far was read: answer the batch and cut.
                    let _ = w.write_all(
                        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n421 4.7.0 too many errors\r\n",
                    );
                    break;
                } else if cmd.starts_with("QUIT") {
                    let _ = w.write_all(b"221 bye\r\n");
                    break;
                } else if !cmd.starts_with("MAIL") && !cmd.starts_with("RCPT") {
                    let _ = w.write_all(b"250 ok\r\n");
                }
            }
        }
    });
    port
}

#[test]
fn scripted_421_after_a_refusal_fails_over_the_rest() {
    let port = scripted_cutter();
    let r = relay(port);
    let to = [
        "good@example.com".to_owned(),
        "bad@example.com".to_owned(),
        "later@example.com".to_owned(),
    ];
    let (ok, log) = send(&r, &to);
    assert!(ok, "{log}");
    let reply = log
        .lines()
        .skip_while(|l| !l.starts_with(" -> ."))
        .nth(1)
        .unwrap_or_else(|| panic!("no reply to DATA in:\n{log}"));
    assert!(reply.starts_with("<-  250 "), "{log}");
    let got = r.wait_captured(2, WAIT);
    let message = got
        .iter()
        .find(|c| c.json["original_mail_from"] == "app@legacy.test")
        .expect("the message");
    // good@ was accepted by the server that went away, later@ never got a
    // reply: both fail over; bad@ was refused and stays refused.
    assert_eq!(
        message.json["rcpt_to"],
        serde_json::json!(["good@example.com", "later@example.com"])
    );
    let dsn = got.iter().find(|c| c.json["mail_from"] == "").expect("DSN");
    let text = String::from_utf8_lossy(&dsn.eml);
    assert!(text.contains("bad@example.com"), "{text}");
    assert!(!text.contains("Final-Recipient: rfc822;good@"), "{text}");
}
