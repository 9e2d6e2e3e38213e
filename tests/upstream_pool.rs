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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

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
    let s = SmtpServer {
        pool_idle_timeout: Duration::from_millis(200),
        ..server(sink.port())
    };
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
    let s = SmtpServer {
        pool_size: 1,
        ..server(sink.port())
    };
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

/// smtp-sink closing the connection at RSET is a server that dropped the
/// idle connection: the pooled session fails at RSET and the message goes
/// over a fresh one, once.
#[tokio::test]
async fn dropped_idle_connection_is_replaced_at_rset() {
    let sink = SmtpSink::builder().disconnect_at("RSET").start();
    let up = Upstreams::default();
    let s = server(sink.port());
    accepted(send(&up, &s, "one").await);
    accepted(send(&up, &s, "two").await);
    assert_eq!(up.stats("up"), (2, 1));
    assert_eq!(sink.wait_for_messages_async(2, WAIT).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.messages_seen(), 2);
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let delivered = Arc::new(AtomicUsize::new(0));
    let counter = delivered.clone();
    tokio::spawn(async move {
        for conn in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(scripted_session(stream, conn == 0, counter.clone()));
        }
    });
    let up = Upstreams::default();
    let s = server(port);
    accepted(send(&up, &s, "one").await);
    accepted(send(&up, &s, "two").await);
    assert_eq!(up.stats("up"), (2, 1));
    assert_eq!(delivered.load(Ordering::SeqCst), 2);
}

/// Minimal SMTP: accepts everything; with `die_at_second_mail` it closes
/// the connection instead of answering the second MAIL.
async fn scripted_session(
    stream: tokio::net::TcpStream,
    die_at_second_mail: bool,
    delivered: Arc<AtomicUsize>,
) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let _ = w.write_all(b"220 scripted ESMTP\r\n").await;
    let (mut mails, mut in_data) = (0, false);
    while let Ok(Some(line)) = lines.next_line().await {
        let reply: &[u8] = if in_data {
            if line != "." {
                continue;
            }
            in_data = false;
            delivered.fetch_add(1, Ordering::SeqCst);
            b"250 2.0.0 queued\r\n"
        } else {
            let cmd = line.to_ascii_uppercase();
            if cmd.starts_with("EHLO") {
                b"250-scripted\r\n250 8BITMIME\r\n"
            } else if cmd.starts_with("MAIL") {
                mails += 1;
                if die_at_second_mail && mails == 2 {
                    return;
                }
                b"250 2.1.0 ok\r\n"
            } else if cmd == "DATA" {
                in_data = true;
                b"354 go ahead\r\n"
            } else if cmd == "QUIT" {
                let _ = w.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"250 ok\r\n"
            }
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}
