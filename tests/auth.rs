//! AUTH PLAIN and LOGIN against the applications' argon2id hashes: success,
//! failure, and the lockout of an address after repeated failures.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::relay::{PASSWORD, Raw, TestRelay, python, swaks, tls_config};
use std::time::{Duration, Instant};

fn swaks_auth(relay: &TestRelay, mech: &str, password: &str) -> (bool, String) {
    let server = relay.addr("submission").to_string();
    let out = swaks(&[
        "--server",
        &server,
        "--tls",
        "--auth",
        mech,
        "--auth-user",
        "user",
        "--auth-password",
        password,
        "--from",
        "a@legacy.test",
        "--to",
        "b@example.com",
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn plain_and_login_succeed_with_swaks() {
    let relay = TestRelay::start(&tls_config(""));
    for mech in ["PLAIN", "LOGIN"] {
        let (ok, log) = swaks_auth(&relay, mech, PASSWORD);
        assert!(ok, "{mech}: {log}");
        assert!(
            log.contains("<~  235 2.7.0 Authentication successful"),
            "{log}"
        );
    }
    let msgs = relay.wait_captured(2, Duration::from_secs(5));
    assert!(msgs.iter().all(|m| m.json["application"] == "authed"));
}

#[test]
fn wrong_password_fails_with_535() {
    let relay = TestRelay::start(&tls_config(""));
    let (ok, log) = swaks_auth(&relay, "LOGIN", "wrong");
    assert!(!ok);
    assert!(
        log.contains("<~* 535 5.7.8 Authentication credentials invalid"),
        "{log}"
    );
    // An unknown user gets the same answer.
    let out = python(
        relay.port("submission"),
        r#"
s = smtplib.SMTP(HOST, PORT, timeout=20)
s.starttls(context=ssl.create_default_context(cafile=CA))
try:
    s.login("nobody", "x")
except smtplib.SMTPAuthenticationError as e:
    print(e.smtp_code)
"#,
        &[],
    );
    assert_eq!(out.trim(), "535");
    assert!(relay.captured().is_empty());
}

#[test]
fn plaintext_auth_only_where_allowed() {
    let cfg = tls_config("").replace(
        "name = \"plain\"\naddress = \"127.0.0.1:0\"\ntls = \"none\"\nauth = \"optional\"",
        "name = \"plain\"\naddress = \"127.0.0.1:0\"\ntls = \"none\"\nauth = \"optional\"\nallow_plaintext_auth = true",
    );
    let relay = TestRelay::start(&cfg);
    let out = python(
        relay.port("plain"),
        r#"
s = smtplib.SMTP(HOST, PORT, timeout=20)
s.login("user", ARGS[0])
s.sendmail("a@legacy.test", ["b@example.com"], b"Subject: x\r\n\r\ny\r\n")
print("sent")
"#,
        &[PASSWORD],
    );
    assert_eq!(out.trim(), "sent");
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert!(m.header("Received").unwrap().contains("with ESMTPA"));
}

#[test]
fn repeated_failures_lock_the_address_out() {
    let relay = TestRelay::start(&tls_config(
        "[limits]\nauth_failures = 3\nauth_lockout = \"10m\"\n",
    ));
    let bad = B64.encode("\0user\0wrong");
    let good = B64.encode(format!("\0user\0{PASSWORD}"));
    // AUTH goes over STARTTLS, as clients on the submission port do.
    let started = Instant::now();
    let out = python(
        relay.port("submission"),
        r#"
import base64
s = smtplib.SMTP(HOST, PORT, timeout=20)
s.starttls(context=ssl.create_default_context(cafile=CA))
s.ehlo("c")
print(s.docmd("AUTH", "PLAIN " + ARGS[0])[0])
print(s.docmd("AUTH", "PLAIN " + ARGS[0])[0])
code, text = s.docmd("AUTH", "PLAIN " + ARGS[0])
print(code, text.decode()[:5])
# A new connection from the same address is locked out too, even with the right password.
s2 = smtplib.SMTP(HOST, PORT, timeout=20)
s2.starttls(context=ssl.create_default_context(cafile=CA))
s2.ehlo("c")
print(s2.docmd("AUTH", "PLAIN " + ARGS[1])[0])
"#,
        &[&bad, &good],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["535", "535", "421 4.7.0", "421"]
    );
    // The failures were delayed (250 ms, then 500 ms), not answered at once.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let m = relay.relay.metrics.encode();
    assert!(
        m.contains("smarthost_auth_failures_total{listener=\"submission\"} 3\n"),
        "{m}"
    );
    assert!(
        m.contains("smarthost_auth_lockouts_total{listener=\"submission\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("smarthost_tls_sessions_total{direction=\"inbound\",version=\"TLSv1.3\"} 2\n"),
        "{m}"
    );
}

#[test]
fn auth_exchange_over_a_raw_socket() {
    // Pipelined AUTH LOGIN continuation lines and a cancelled exchange.
    let cfg = tls_config("").replace(
        "tls = \"none\"\nauth = \"optional\"",
        "tls = \"none\"\nauth = \"optional\"\nallow_plaintext_auth = true",
    );
    let relay = TestRelay::start(&cfg);
    let mut c = Raw::connect(relay.addr("plain"));
    let ehlo = c.expect("EHLO c", 250);
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(c.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(c.cmd("*"), "501 5.0.0 Authentication cancelled\r\n");
    c.send(
        format!(
            "AUTH LOGIN {}\r\n{}\r\n",
            B64.encode("user"),
            B64.encode(PASSWORD)
        )
        .as_bytes(),
    );
    assert_eq!(c.reply(), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(c.reply(), "235 2.7.0 Authentication successful\r\n");
    c.expect("AUTH PLAIN", 503);
}

#[test]
fn simultaneous_attempts_cannot_bypass_the_lockout() {
    // 20 connections try a wrong password at the same moment: only
    // auth_failures of them get their password checked.
    let cfg = tls_config("[limits]\nauth_failures = 3\n").replace(
        "tls = \"none\"\nauth = \"optional\"",
        "tls = \"none\"\nauth = \"optional\"\nallow_plaintext_auth = true",
    );
    let relay = TestRelay::start(&cfg);
    let addr = relay.addr("plain");
    let bad = B64.encode("\0user\0wrong");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(20));
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (bad, barrier) = (bad.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = Raw::connect(addr);
                c.expect("EHLO c", 250);
                barrier.wait();
                c.cmd(&format!("AUTH PLAIN {bad}"))[..3].to_owned()
            })
        })
        .collect();
    let codes: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(codes.iter().all(|c| c == "535" || c == "421"), "{codes:?}");
    let m = relay.relay.metrics.encode();
    let checked: u32 = m
        .lines()
        .find_map(|l| l.strip_prefix("smarthost_auth_failures_total{listener=\"plain\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(checked <= 3, "{checked} passwords checked: {codes:?}");
    assert!(
        codes.iter().filter(|c| *c == "421").count() >= 17,
        "{codes:?}"
    );
}
