//! Failover at each stage against the in-process scripted upstream (the
//! fast twin of `failover.rs`, which keeps the real Postfix peers): a 4xx
//! at the greeting, MAIL, RCPT or after the content sends the message
//! through the fallback in the same attempt; a 5xx at RCPT is the
//! recipient's answer and is not retried elsewhere. The sink records a
//! message before it answers 250 and the relay answers its client only
//! after the attempt, so every "nothing else arrived" check is exact at
//! once: no sleeps.

mod common;

use common::relay::TestRelay;
use common::sink::{Sink, Stage};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn relay(primary: &Sink, fallback: &Sink, extra: &str) -> TestRelay {
    TestRelay::start(&format!(
        r#"
[system]
hostname = "relay.test"
delivery = "direct"

[health]
failures = 100

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.primary]
host = "127.0.0.1"
port = {}
security = "none"
{extra}

[server.fallback]
host = "127.0.0.1"
port = {}
security = "none"

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
primary = "primary"
fallback = "fallback"
"#,
        primary.port(),
        fallback.port()
    ))
}

/// One message to `to`; the reply to its content.
fn send(addr: SocketAddr, to: &str) -> String {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    reply();
    for cmd in [
        "EHLO client.test".to_owned(),
        "MAIL FROM:<a@app.test>".to_owned(),
        format!("RCPT TO:<{to}>"),
        "DATA".to_owned(),
    ] {
        write!(w, "{cmd}\r\n").unwrap();
        let got = reply();
        assert!(got.starts_with('2') || got.starts_with('3'), "{cmd}: {got}");
    }
    w.write_all(b"Subject: s\r\n\r\nbody\r\n.\r\n").unwrap();
    let end = reply();
    let _ = w.write_all(b"QUIT\r\n");
    end
}

#[test]
fn a_4xx_at_any_stage_fails_over_once() {
    for (stage, text) in [
        (Stage::Greeting, "421 4.3.2 not now"),
        (Stage::Mail, "451 4.3.0 try later"),
        (Stage::Rcpt, "452 4.2.2 over quota"),
        (Stage::Data, "451 4.3.0 queue full"),
    ] {
        let (primary, fallback) = (Sink::start(), Sink::start());
        primary.reply_at(stage, Some(text));
        let r = relay(&primary, &fallback, "");
        let reply = send(r.addr("main"), "rcpt@example.com");
        assert!(reply.starts_with("250 "), "{stage:?}: {reply}");
        assert!(primary.got().is_empty(), "{stage:?}");
        let got = fallback.got();
        assert_eq!(got.len(), 1, "{stage:?}: delivered once");
        assert_eq!(got[0].rcpts, ["rcpt@example.com"]);
        assert_eq!(got[0].mail_from, "sender@relay.test");
        r.stop();
    }
}

#[test]
fn a_recipient_5xx_is_not_retried_elsewhere() {
    let (primary, fallback) = (Sink::start(), Sink::start());
    primary.reply_at(Stage::Rcpt, Some("550 5.1.1 no such user"));
    let r = relay(&primary, &fallback, "");
    let reply = send(r.addr("main"), "gone@example.com");
    assert!(reply.starts_with("550 5.1.1"), "{reply}");
    assert!(primary.got().is_empty());
    assert!(fallback.got().is_empty());
    // Once the primary answers normally again, mail flows through it.
    primary.reply_at(Stage::Rcpt, None);
    assert!(send(r.addr("main"), "back@example.com").starts_with("250 "));
    assert_eq!(primary.got().len(), 1);
    r.stop();
}

/// A primary that answers MAIL too slowly fails over after
/// `command_timeout` (1s), not later: time is the subject, bounded.
#[test]
fn a_slow_primary_fails_over_after_the_command_timeout() {
    let (primary, fallback) = (Sink::start(), Sink::start());
    primary.delay_at(Stage::Mail, Duration::from_secs(5));
    let r = relay(&primary, &fallback, "command_timeout = \"1s\"");
    let started = Instant::now();
    let reply = send(r.addr("main"), "rcpt@example.com");
    let took = started.elapsed();
    assert!(reply.starts_with("250 "), "{reply}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(fallback.got().len(), 1);
    r.stop();
}
