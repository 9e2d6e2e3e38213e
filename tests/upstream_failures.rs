//! Every way an upstream hop can fail, driven by smtp-sink faults, a
//! tarpit and a closed port, and how each is classified: `connection`,
//! `temporary`, `capability`, or a permanent refusal (never a failover).
//! Timeouts are 1 s here, so each case ends within about two seconds.

mod common;

use common::postfix::{SmtpSink, SmtpSinkBuilder, Tarpit, closed_port};
use common::upstream::*;
use smarthost::config::SmtpServer;
use smarthost::delivery::HopResult;
use smarthost::message::Message;
use smarthost::upstream::Upstreams;
use std::time::{Duration, Instant};

const ONE_SECOND: Duration = Duration::from_secs(1);

/// `server(port)` with 1 s connect and command timeouts.
fn quick(port: u16) -> SmtpServer {
    let mut s = server(port);
    s.settings.connect_timeout = ONE_SECOND;
    s.settings.command_timeout = ONE_SECOND;
    s
}

/// Sends a small message through a sink built by `b`; returns the result,
/// the time it took, and the sink.
async fn via(b: SmtpSinkBuilder) -> (HopResult, Duration, SmtpSink) {
    let sink = b.start();
    let started = Instant::now();
    let r = send_once(&quick(sink.port()), &simple_message("fault"), &["b@y.test"]).await;
    (r, started.elapsed(), sink)
}

#[tokio::test]
async fn greeting_421_is_a_connection_failure() {
    let (r, _, _) = via(SmtpSink::builder().reply_421("CONNECT")).await;
    failover_of("connection", r);
}

#[tokio::test]
async fn slow_greeting_times_out_as_connection_failure() {
    let (r, took, _) = via(SmtpSink::builder().delay("CONNECT", 5)).await;
    let f = failover_of("connection", r);
    assert!(f.reason.contains("greeting"), "{f:?}");
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

#[tokio::test]
async fn tarpit_times_out_as_connection_failure() {
    let pit = Tarpit::start();
    let started = Instant::now();
    let r = send_once(&quick(pit.port()), &simple_message("x"), &["b@y.test"]).await;
    failover_of("connection", r);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pit.connections(), 1);
}

#[tokio::test]
async fn closed_port_is_a_connection_failure() {
    let r = send_once(&quick(closed_port()), &simple_message("x"), &["b@y.test"]).await;
    let f = failover_of("connection", r);
    assert!(f.reason.contains("connect"), "{f:?}");
}

#[tokio::test]
async fn unresolvable_host_is_a_connection_failure() {
    let s = SmtpServer {
        host: "no-such-host.invalid".into(),
        ..quick(25)
    };
    let started = Instant::now();
    let f = failover_of(
        "connection",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
    assert!(f.reason.contains("resolve"), "{f:?}");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn soft_reject_at_mail_rcpt_data_and_end_is_temporary() {
    for cmd in ["MAIL", "RCPT", "DATA", "."] {
        let (r, _, _) = via(SmtpSink::builder().soft_reject(cmd)).await;
        let f = failover_of("temporary", r);
        assert!(f.reason.contains("450"), "{cmd}: {f:?}");
    }
}

#[tokio::test]
async fn hard_reject_at_mail_rcpt_data_and_end_is_permanent() {
    for cmd in ["MAIL", "RCPT", "DATA", "."] {
        let (r, _, _) = via(SmtpSink::builder().hard_reject(cmd)).await;
        let (code, enhanced, _) = permanent(r);
        assert_eq!((code, enhanced), (500, Some((5, 3, 0))), "{cmd}");
    }
}

#[tokio::test]
async fn reply_421_anywhere_is_a_connection_failure() {
    for cmd in ["EHLO", "MAIL", "RCPT", "DATA", "."] {
        let (r, _, _) = via(SmtpSink::builder().reply_421(cmd)).await;
        let f = failover_of("connection", r);
        assert!(f.reason.contains("421"), "{cmd}: {f:?}");
    }
}

#[tokio::test]
async fn disconnects_are_connection_failures() {
    for cmd in ["EHLO", "MAIL", "RCPT", "DATA", "."] {
        let (r, took, _) = via(SmtpSink::builder().disconnect_at(cmd)).await;
        failover_of("connection", r);
        assert!(
            took < ONE_SECOND,
            "{cmd}: an EOF must not wait for a timeout ({took:?})"
        );
    }
}

#[tokio::test]
async fn slow_final_reply_is_awaited_within_the_data_timeout() {
    // A server slow to answer after "." may already have the message;
    // failing over would deliver it twice, so the final reply is given the
    // data timeout, not the command timeout.
    let sink = SmtpSink::builder().delay(".", 2).start();
    let mut s = quick(sink.port());
    s.settings.command_timeout = ONE_SECOND;
    s.settings.data_timeout = Duration::from_secs(10);
    accepted(send_once(&s, &simple_message("x"), &["b@y.test"]).await);
    assert_eq!(sink.wait_for_messages_async(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn data_timeout_bounds_the_whole_data_phase() {
    let sink = SmtpSink::builder().delay(".", 5).start();
    let mut s = quick(sink.port());
    s.settings.command_timeout = Duration::from_secs(10);
    s.settings.data_timeout = ONE_SECOND;
    let started = Instant::now();
    let f = failover_of(
        "connection",
        send_once(&s, &simple_message("x"), &["b@y.test"]).await,
    );
    assert!(f.reason.contains("DATA"), "{f:?}");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

/// RFC 6152: no 8-bit content to a server without 8BITMIME.
#[tokio::test]
async fn eight_bit_body_needs_8bitmime() {
    let sink = SmtpSink::builder().no_8bitmime().start();
    let message = Message::in_memory(tricky_message());
    let mut mail = Mail::new(&message, &["b@y.test"]);
    mail.body_8bit = true;
    let f = failover_of(
        "capability",
        mail.send(&Upstreams::default(), "up", &quick(sink.port()))
            .await,
    );
    assert!(f.reason.contains("8BITMIME"), "{f:?}");
    // A 7-bit message still goes to the same server.
    mail.body_8bit = false;
    let simple = Message::in_memory(simple_message("7bit"));
    mail.message = &simple;
    accepted(
        mail.send(&Upstreams::default(), "up", &quick(sink.port()))
            .await,
    );
    assert_eq!(sink.wait_for_messages_async(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn smtputf8_is_required_when_needed() {
    let sink = SmtpSink::start();
    let message = Message::in_memory(simple_message("utf8"));
    let mut mail = Mail::new(&message, &["jörg@bücher.example"]);
    mail.smtputf8 = true;
    let f = failover_of(
        "capability",
        mail.send(&Upstreams::default(), "up", &quick(sink.port()))
            .await,
    );
    assert!(f.reason.contains("SMTPUTF8"), "{f:?}");
    assert_eq!(sink.messages_seen(), 0);
}

/// A server that refuses EHLO gets HELO (and no extensions).
#[tokio::test]
async fn helo_fallback_without_esmtp() {
    let sink = SmtpSink::builder().no_esmtp().start();
    let s = quick(sink.port());
    accepted(send_once(&s, &simple_message("helo"), &["b@y.test"]).await);
    let got = sink.wait_for_messages_async(1, WAIT).await;
    assert!(got[0].mail_params.is_empty(), "{:?}", got[0]);
    let message = Message::in_memory(tricky_message());
    let mut mail = Mail::new(&message, &["b@y.test"]);
    mail.body_8bit = true;
    failover_of(
        "capability",
        mail.send(&Upstreams::default(), "up", &s).await,
    );
}
