//! Upstream AUTH against Postfix with Cyrus SASL (sasldb): PLAIN and LOGIN,
//! chosen or forced, right and wrong passwords, AUTH missing, AUTH only
//! after STARTTLS, and `auth = "none"`.

mod common;

use common::postfix::{Postfix, TlsMode};
use common::upstream::*;
use smarthost::config::{Security, UpstreamAuth};
use smarthost::upstream::Upstreams;
use smarthost::upstream::probe::probe;

const USER: &str = "relay";
const PASSWORD: &str = "s3cret-Pa55";

fn sasl_postfix() -> Postfix {
    Postfix::builder()
        .sasl_user(USER, PASSWORD)
        .require_auth(true)
        .start()
}

#[tokio::test]
async fn plain_is_preferred_and_login_can_be_forced() {
    let pf = sasl_postfix();
    let up = Upstreams::default();
    for (auth, mechanism) in [
        (None, "PLAIN"),
        (Some(UpstreamAuth::Plain), "PLAIN"),
        (Some(UpstreamAuth::Login), "LOGIN"),
    ] {
        let s = with_auth(server(pf.port()), USER, PASSWORD, auth);
        let report = probe(&up, "up", &s).await.expect("probe");
        assert_eq!(report.auth, Some(mechanism), "{auth:?}");
        // require_auth: without a successful AUTH every RCPT would get 554.
        accepted(send_once(&s, &simple_message(mechanism), &["b@y.test"]).await);
    }
    assert_eq!(pf.wait_for_messages_async(3, WAIT).await.len(), 3);
    let log = pf.maillog();
    for m in ["sasl_method=PLAIN", "sasl_method=LOGIN"] {
        assert!(log.contains(m), "{m} not in the Postfix log:\n{log}");
    }
}

#[tokio::test]
async fn wrong_password_fails_over_as_auth_without_leaking_it() {
    let pf = sasl_postfix();
    for auth in [None, Some(UpstreamAuth::Login)] {
        let s = with_auth(server(pf.port()), USER, "wrong-password-123", auth);
        let f = failover_of(
            "auth",
            send_once(&s, &simple_message("x"), &["b@y.test"]).await,
        );
        assert!(f.reason.contains("535"), "{f:?}");
        assert!(!f.reason.contains("wrong-password-123"), "{f:?}");
        let probed = probe(&Upstreams::default(), "up", &s).await.unwrap_err();
        assert_eq!(probed.class.as_str(), "auth");
    }
}

#[tokio::test]
async fn credentials_without_auth_on_offer_fail_over_as_auth() {
    let pf = Postfix::start();
    let s = with_auth(server(pf.port()), USER, PASSWORD, None);
    let f = failover_of(
        "auth",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
    assert!(f.reason.contains("AUTH"), "{f:?}");
}

#[tokio::test]
async fn auth_none_sends_no_credentials() {
    let pf = Postfix::start();
    let s = with_auth(server(pf.port()), USER, PASSWORD, Some(UpstreamAuth::None));
    let report = probe(&Upstreams::default(), "up", &s).await.unwrap();
    assert_eq!(report.auth, None);
    accepted(send_once(&s, &simple_message("x"), &["b@y.test"]).await);
}

#[tokio::test]
async fn auth_after_starttls() {
    let pf = Postfix::builder()
        .tls(TlsMode::StartTls)
        .sasl_user(USER, PASSWORD)
        .auth_only_after_tls(true)
        .require_auth(true)
        .start();
    let s = with_auth(
        tls_server(pf.port(), Security::Starttls),
        USER,
        PASSWORD,
        None,
    );
    let report = probe(&Upstreams::default(), "up", &s).await.unwrap();
    assert!(report.tls.is_some());
    assert_eq!(report.auth, Some("PLAIN"));
    accepted(send_once(&s, &simple_message("x"), &["b@y.test"]).await);
    // Without TLS the server offers no AUTH: a clear auth failure.
    let plain = with_auth(server(pf.port()), USER, PASSWORD, None);
    failover_of(
        "auth",
        send_once(&plain, &simple_message("x"), &["b@y.test"]).await,
    );
    pf.wait_for_messages_async(1, WAIT).await;
}

#[tokio::test]
async fn auth_over_implicit_tls() {
    let pf = Postfix::builder()
        .tls(TlsMode::Implicit)
        .sasl_user(USER, PASSWORD)
        .require_auth(true)
        .start();
    let s = with_auth(
        tls_server(pf.port(), Security::Implicit),
        USER,
        PASSWORD,
        Some(UpstreamAuth::Login),
    );
    accepted(send_once(&s, &simple_message("x"), &["b@y.test"]).await);
    pf.wait_for_messages_async(1, WAIT).await;
}

/// Opportunistic modes never send the password in the clear: a server
/// without STARTTLS (or an attacker stripping it) gets no credentials.
#[tokio::test]
async fn no_plaintext_auth_unless_security_is_none() {
    let pf = sasl_postfix();
    for security in [Security::Auto, Security::StarttlsWhenAvailable] {
        let s = with_auth(tls_server(pf.port(), security), USER, PASSWORD, None);
        let f = failover_of(
            "auth",
            send_once(&s, &simple_message("x"), &["b@y.test"]).await,
        );
        assert!(f.reason.contains("without TLS"), "{f:?}");
    }
    assert!(
        !pf.maillog().contains("sasl_method"),
        "credentials were sent"
    );
}
