//! Upstream security modes and AUTH against real Postfix instances using
//! the test CA: what Postfix records in its `Received:` header (ESMTP,
//! ESMTPS, ESMTPSA) shows what the relay negotiated.

mod common;

use common::postfix::{Postfix, TlsMode};
use common::relay::{TestRelay, swaks};
use std::time::Duration;

fn relay(server: &str) -> TestRelay {
    TestRelay::start(&format!(
        r#"
[system]
hostname = "relay.test"
default_server = "up"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.up]
host = "127.0.0.1"
tls_name = "localhost"
ca_file = "{{certs}}/ca.crt"
connect_timeout = "2s"
command_timeout = "5s"
{server}

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
"#
    ))
}

/// Sends a message and returns the `with …` protocol Postfix recorded.
fn protocol(pf: &Postfix, relay: &TestRelay) -> String {
    let server = relay.addr("main").to_string();
    let out = swaks(&[
        "--server",
        &server,
        "--from",
        "app@legacy.test",
        "--to",
        "rcpt@example.com",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        pf.maillog()
    );
    let got = pf.wait_for_messages(1, Duration::from_secs(15)).remove(0);
    let rcvd = got.header("Received").unwrap();
    rcvd.split(" with ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn implicit_tls() {
    let pf = Postfix::builder().tls(TlsMode::Implicit).start();
    let r = relay(&format!("port = {}\nsecurity = \"implicit\"", pf.port()));
    assert_eq!(protocol(&pf, &r), "ESMTPS");
}

#[test]
fn starttls_required_and_offered() {
    let pf = Postfix::builder().tls(TlsMode::StartTlsRequired).start();
    let r = relay(&format!("port = {}\nsecurity = \"starttls\"", pf.port()));
    assert_eq!(protocol(&pf, &r), "ESMTPS");
}

#[test]
fn opportunistic_uses_tls_when_offered() {
    let pf = Postfix::builder().tls(TlsMode::StartTls).start();
    let r = relay(&format!(
        "port = {}\nsecurity = \"starttls-when-available\"",
        pf.port()
    ));
    assert_eq!(protocol(&pf, &r), "ESMTPS");
}

#[test]
fn opportunistic_falls_back_to_plaintext() {
    let pf = Postfix::start();
    let r = relay(&format!(
        "port = {}\nsecurity = \"starttls-when-available\"",
        pf.port()
    ));
    assert_eq!(protocol(&pf, &r), "ESMTP");
}

#[test]
fn auto_on_a_submission_port_uses_starttls() {
    let pf = Postfix::builder().tls(TlsMode::StartTls).start();
    let r = relay(&format!("port = {}\nsecurity = \"auto\"", pf.port()));
    assert_eq!(protocol(&pf, &r), "ESMTPS");
}

#[test]
fn none_never_uses_tls() {
    let pf = Postfix::builder().tls(TlsMode::StartTls).start();
    let r = relay(&format!("port = {}\nsecurity = \"none\"", pf.port()));
    assert_eq!(protocol(&pf, &r), "ESMTP");
}

#[test]
fn auth_plain_and_login() {
    for mech in ["plain", "login"] {
        let pf = Postfix::builder()
            .tls(TlsMode::StartTls)
            .sasl_user("relay", "s3cret")
            .require_auth(true)
            .start();
        let r = relay(&format!(
            "port = {}\nsecurity = \"starttls\"\nusername = \"relay\"\npassword = \"s3cret\"\nauth = \"{mech}\"",
            pf.port()
        ));
        assert_eq!(protocol(&pf, &r), "ESMTPSA", "{mech}");
        assert!(
            pf.maillog()
                .contains(&format!("sasl_method={}", mech.to_uppercase())),
            "{mech}: {}",
            pf.maillog()
        );
    }
}

#[test]
fn wrong_password_defers() {
    let pf = Postfix::builder()
        .tls(TlsMode::StartTls)
        .sasl_user("relay", "s3cret")
        .require_auth(true)
        .start();
    let r = relay(&format!(
        "port = {}\nsecurity = \"starttls\"\nusername = \"relay\"\npassword = \"wrong\"",
        pf.port()
    ));
    let server = r.addr("main").to_string();
    let out = swaks(&[
        "--server",
        &server,
        "--from",
        "app@legacy.test",
        "--to",
        "rcpt@example.com",
    ]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        log.contains("<** 451 4.4.1 Delivery failed temporarily on 1 server(s)"),
        "{log}"
    );
    assert!(pf.received().is_empty());
}
