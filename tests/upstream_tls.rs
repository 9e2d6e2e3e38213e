//! Upstream security modes (`none`, `auto`, `implicit`, `starttls`,
//! `starttls-when-available`) and certificate verification, against
//! Postfix offering STARTTLS, requiring it, running in wrapper (implicit
//! TLS) mode, or offering no TLS at all.

mod common;

use common::postfix::{Postfix, SmtpSink, TlsMode};
use common::upstream::*;
use smarthost::config::{Security, SmtpServer};
use smarthost::upstream::Upstreams;
use smarthost::upstream::probe::{ProbeReport, probe};

/// Probes `s`, then sends one message through it; returns the probe report.
async fn probe_and_send(pf: &Postfix, s: &SmtpServer) -> ProbeReport {
    let up = Upstreams::default();
    let report = probe(&up, "up", s)
        .await
        .unwrap_or_else(|f| panic!("probe failed: {f:?}"));
    accepted(send_once(s, &simple_message("tls"), &["b@y.test"]).await);
    pf.wait_for_messages_async(1, WAIT).await;
    report
}

fn tls_version(r: &ProbeReport) -> Option<&str> {
    r.tls.as_ref().map(|(v, _)| v.as_str())
}

#[tokio::test]
async fn implicit_tls_to_wrapper_mode_postfix() {
    let pf = Postfix::builder().tls(TlsMode::Implicit).start();
    let r = probe_and_send(&pf, &tls_server(pf.port(), Security::Implicit)).await;
    assert_eq!(tls_version(&r), Some("TLSv1.3"));
    let (_, cipher) = r.tls.clone().unwrap();
    assert!(cipher.starts_with("TLS13_"), "{cipher}");
    assert!(r.greeting.contains("postfix-fixture.test"), "{r:?}");
}

#[tokio::test]
async fn starttls_required_and_offered() {
    let pf = Postfix::builder().tls(TlsMode::StartTlsRequired).start();
    let r = probe_and_send(&pf, &tls_server(pf.port(), Security::Starttls)).await;
    assert_eq!(tls_version(&r), Some("TLSv1.3"));
    // The capabilities are those of the EHLO after STARTTLS.
    assert!(!r.capabilities.iter().any(|c| c == "STARTTLS"), "{r:?}");
}

#[tokio::test]
async fn starttls_required_but_not_offered_fails_over_as_tls() {
    let pf = Postfix::start();
    let s = tls_server(pf.port(), Security::Starttls);
    let f = failover_of(
        "tls",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
    assert!(f.reason.contains("STARTTLS"), "{f:?}");
}

#[tokio::test]
async fn opportunistic_uses_tls_when_offered_and_plaintext_otherwise() {
    for security in [Security::StarttlsWhenAvailable, Security::Auto] {
        let with = Postfix::builder().tls(TlsMode::StartTls).start();
        let r = probe_and_send(&with, &tls_server(with.port(), security)).await;
        assert_eq!(tls_version(&r), Some("TLSv1.3"), "{security:?}");
        let without = Postfix::start();
        let r = probe_and_send(&without, &tls_server(without.port(), security)).await;
        assert_eq!(r.tls, None, "{security:?}");
    }
}

#[tokio::test]
async fn none_stays_plaintext_even_when_tls_is_offered() {
    let pf = Postfix::builder().tls(TlsMode::StartTls).start();
    let r = probe_and_send(&pf, &tls_server(pf.port(), Security::None)).await;
    assert_eq!(r.tls, None);
    assert!(r.capabilities.iter().any(|c| c == "STARTTLS"), "{r:?}");
}

/// `none` against a server that requires STARTTLS: MAIL gets "530 Must
/// issue a STARTTLS command first", which is about this server's
/// requirements, not the message: fail over, class `tls`.
#[tokio::test]
async fn plaintext_to_a_tls_only_server_fails_over() {
    let pf = Postfix::builder().tls(TlsMode::StartTlsRequired).start();
    let s = server(pf.port());
    let f = failover_of(
        "tls",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
    assert!(f.reason.contains("530"), "{f:?}");
}

#[tokio::test]
async fn unknown_issuer_fails_over_as_tls() {
    let pf = Postfix::builder().tls(TlsMode::StartTls).start();
    let s = SmtpServer {
        ca_file: None,
        ..tls_server(pf.port(), Security::Starttls)
    };
    let f = failover_of(
        "tls",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
    assert!(
        f.reason
            .contains("the server's certificate is signed by an unknown certificate authority"),
        "{f:?}"
    );
    // Opportunistic TLS verifies too: no silent fallback to plaintext.
    let mut s = s;
    s.settings.security = Security::StarttlsWhenAvailable;
    failover_of(
        "tls",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
}

#[tokio::test]
async fn accept_invalid_certs_skips_verification() {
    let pf = Postfix::builder().tls(TlsMode::Implicit).start();
    let mut s = SmtpServer {
        ca_file: None,
        tls_name: "not-the-name.example".into(),
        ..tls_server(pf.port(), Security::Implicit)
    };
    s.settings.accept_invalid_certs = true;
    let r = probe_and_send(&pf, &s).await;
    assert!(r.tls.is_some());
}

#[tokio::test]
async fn tls_name_is_verified() {
    let pf = Postfix::builder().tls(TlsMode::Implicit).start();
    let wrong = SmtpServer {
        tls_name: "mail.example".into(),
        ..tls_server(pf.port(), Security::Implicit)
    };
    let f = failover_of(
        "tls",
        send_once(&wrong, &simple_message("x"), &["b@y.test"]).await,
    );
    assert!(
        f.reason.contains(
            "the server's certificate does not name \"mail.example\" (it names localhost, 127.0.0.1"
        ),
        "{f:?}"
    );
    // The test certificate also names 127.0.0.1.
    let ip = SmtpServer {
        tls_name: "127.0.0.1".into(),
        ..wrong
    };
    probe_and_send(&pf, &ip).await;
}

#[tokio::test]
async fn implicit_tls_to_a_plaintext_server_fails_over_as_tls() {
    let sink = SmtpSink::start();
    let s = tls_server(sink.port(), Security::Implicit);
    failover_of(
        "tls",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
}

#[tokio::test]
async fn unreadable_ca_file_fails_over_as_tls() {
    let pf = Postfix::builder().tls(TlsMode::StartTls).start();
    let s = SmtpServer {
        ca_file: Some("/nonexistent/ca.crt".into()),
        ..tls_server(pf.port(), Security::Starttls)
    };
    failover_of(
        "tls",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
}
