//! Connection reuse: sessions go back to the pool after clean transactions
//! (also refused and 4xx ones), broken ones do not; idle sessions expire;
//! changed settings never reuse an old connection; and a pooled connection
//! the server has dropped is replaced once, transparently, with the
//! message delivered exactly once.

mod common;

use common::postfix::{Postfix, SmtpSink};
use common::upstream::*;
use smarthost::config::SmtpServer;
use smarthost::message::Message;
use smarthost::upstream::Upstreams;
use std::time::Duration;

async fn send(up: &Upstreams, s: &SmtpServer, subject: &str) -> smarthost::delivery::HopResult {
    let msg = Message::in_memory(simple_message(subject));
    Mail::new(&msg, &["b@y.test"]).send(up, "up", s).await
}

#[tokio::test]
async fn second_message_reuses_the_connection() {
    let sink = SmtpSink::start();
    let up = Upstreams::default();
    let s = server(sink.port());
    accepted(send(&up, &s, "one").await);
    accepted(send(&up, &s, "two").await);
    assert_eq!(up.stats("up"), (1, 1));
    assert_eq!(sink.wait_for_messages_async(2, WAIT).await.len(), 2);
}

#[tokio::test]
async fn refused_and_deferred_transactions_keep_the_connection() {
    let pf = Postfix::builder()
        .reject_recipient("gone@y.test")
        .defer_recipient("later@y.test")
        .start();
    let up = Upstreams::default();
    let s = server(pf.port());
    let msg = Message::in_memory(simple_message("x"));
    permanent(Mail::new(&msg, &["gone@y.test"]).send(&up, "up", &s).await);
    failover_of(
        "temporary",
        Mail::new(&msg, &["later@y.test"]).send(&up, "up", &s).await,
    );
    accepted(Mail::new(&msg, &["ok@y.test"]).send(&up, "up", &s).await);
    assert_eq!(up.stats("up"), (1, 2));
    pf.wait_for_messages_async(1, WAIT).await;
}

#[tokio::test]
async fn a_broken_connection_is_not_pooled() {
    let sink = SmtpSink::builder().reply_421("RCPT").start();
    let up = Upstreams::default();
    let s = server(sink.port());
    failover_of("connection", send(&up, &s, "one").await);
    failover_of("connection", send(&up, &s, "two").await);
    assert_eq!(up.stats("up"), (2, 0));
}

#[tokio::test]
async fn idle_sessions_expire() {
    let sink = SmtpSink::start();
    let up = Upstreams::default();
    let mut s = server(sink.port());
    s.settings.pool_idle_timeout = Duration::from_millis(200);
    accepted(send(&up, &s, "one").await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    accepted(send(&up, &s, "two").await);
    assert_eq!(up.stats("up"), (2, 0));
}

#[tokio::test]
async fn changed_settings_open_a_new_connection() {
    let sink = SmtpSink::start();
    let up = Upstreams::default();
    let old = server(sink.port());
    let new = SmtpServer {
        helo_name: "reloaded.test".into(),
        ..old.clone()
    };
    accepted(send(&up, &old, "old").await);
    accepted(send(&up, &new, "new").await);
    accepted(send(&up, &new, "new again").await);
    assert_eq!(up.stats("up"), (2, 1));
    let got = sink.wait_for_messages_async(3, WAIT).await;
    let reloaded = got
        .iter()
        .filter(|r| r.helo.as_deref() == Some("reloaded.test"))
        .count();
    assert_eq!(reloaded, 2, "{got:#?}");
}

#[tokio::test]
async fn concurrent_sends_use_separate_connections() {
    let sink = SmtpSink::start();
    let up = Upstreams::default();
    let mut s = server(sink.port());
    s.settings.pool_size = 1;
    let (a, b, c) = tokio::join!(send(&up, &s, "a"), send(&up, &s, "b"), send(&up, &s, "c"));
    for r in [a, b, c] {
        accepted(r);
    }
    assert_eq!(up.stats("up"), (3, 0));
    accepted(send(&up, &s, "d").await);
    accepted(send(&up, &s, "e").await);
    assert_eq!(up.stats("up"), (3, 2));
    assert_eq!(sink.wait_for_messages_async(5, WAIT).await.len(), 5);
}

/// Postfix closes an idle session after `smtpd_timeout` with a 421.
#[tokio::test]
async fn postfix_idle_timeout_is_survived() {
    let pf = Postfix::builder().main_cf("smtpd_timeout", "1s").start();
    let up = Upstreams::default();
    let s = server(pf.port());
    accepted(send(&up, &s, "one").await);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    accepted(send(&up, &s, "two").await);
    assert_eq!(up.stats("up"), (2, 1));
    assert_eq!(pf.wait_for_messages_async(2, WAIT).await.len(), 2);
}

/// A scripted server whose first connection accepts one message, answers
/// the RSET before the second, then closes at its MAIL. The retry must go
/// to a second connection, which accepts.
#[tokio::test]
async fn connection_dying_at_mail_is_replaced() {
    let scripted = Scripted::start("127.0.0.1:0", true).await.unwrap();
    let up = Upstreams::default();
    let s = server(scripted.port);
    accepted(send(&up, &s, "one").await);
    accepted(send(&up, &s, "two").await);
    assert_eq!(up.stats("up"), (2, 1));
    assert_eq!(scripted.delivered(), 2);
}
