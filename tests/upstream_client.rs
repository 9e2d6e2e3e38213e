//! `Upstreams::send` over plaintext: the body arrives byte for byte, the
//! envelope and MAIL parameters are right, large spooled messages stream,
//! and recipient-level results (one refused, all refused, one deferred)
//! come back as the delivery code needs them.

mod common;

use common::postfix::{Postfix, SmtpSink};
use common::upstream::*;
use smarthost::message::{Message, Spooler};
use smarthost::upstream::Upstreams;
use std::time::{Duration, Instant};

#[tokio::test]
async fn relays_byte_identical_through_postfix() {
    let pf = Postfix::start();
    let message = Message::in_memory(tricky_message());
    let header = b"X-Relayed-By: smarthost test\r\n";
    let mut mail = Mail::new(&message, &["b@y.test"]);
    mail.header = header;
    mail.body_8bit = true;
    let refused = accepted(
        mail.send(&Upstreams::default(), "up", &server(pf.port()))
            .await,
    );
    assert!(refused.is_empty());
    let got = pf.wait_for_messages_async(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "a@x.test");
    assert_eq!(got[0].rcpt_to, ["b@y.test"]);
    let mut expected = header.to_vec();
    expected.extend_from_slice(&tricky_message());
    assert!(
        got[0].data_without_postfix_received() == expected.as_slice(),
        "body differs: {:?}",
        got[0]
    );
}

#[tokio::test]
async fn envelope_and_mail_parameters_reach_the_sink() {
    let sink = SmtpSink::start();
    let message = Message::in_memory(tricky_message());
    let mut mail = Mail::new(&message, &["b@y.test", "c@y.test"]);
    mail.from = "";
    mail.body_8bit = true;
    accepted(
        mail.send(&Upstreams::default(), "up", &server(sink.port()))
            .await,
    );
    let got = sink.wait_for_messages_async(1, WAIT).await;
    assert_eq!(got[0].mail_from, "", "null sender");
    assert_eq!(got[0].mail_params, ["BODY=8BITMIME"]);
    assert_eq!(got[0].rcpt_to, ["b@y.test", "c@y.test"]);
    assert_eq!(got[0].helo.as_deref(), Some("relay.test"));
    assert!(
        got[0].data == tricky_message(),
        "body differs: {:?}",
        got[0]
    );
}

/// Postfix offers `SIZE 2000`: a bigger message is not even tried (class
/// `capability`), a smaller one goes through with `SIZE=n` declared.
#[tokio::test]
async fn size_limit_is_honoured() {
    let pf = Postfix::builder()
        .main_cf("message_size_limit", "2000")
        .start();
    let s = server(pf.port());
    let mut big = simple_message("too big");
    big.extend(std::iter::repeat_n(b'y', 3000));
    big.extend_from_slice(b"\r\n");
    let f = failover_of("capability", send_once(&s, &big, &["b@y.test"]).await);
    assert!(f.reason.contains("SIZE"), "{f:?}");
    accepted(send_once(&s, &simple_message("small"), &["b@y.test"]).await);
    pf.wait_for_messages_async(1, WAIT).await;
}

#[tokio::test]
async fn content_without_final_crlf_gets_one() {
    let sink = SmtpSink::start();
    let r = send_once(
        &server(sink.port()),
        b"Subject: x\r\n\r\nno newline",
        &["b@y.test"],
    )
    .await;
    accepted(r);
    let got = sink.wait_for_messages_async(1, WAIT).await;
    assert_eq!(got[0].data, b"Subject: x\r\n\r\nno newline\r\n");
}

/// 20 MB, spooled to a file (the spooler keeps only the header in memory),
/// with dot-led lines throughout so stuffing across chunk boundaries is
/// exercised.
#[tokio::test]
async fn twenty_megabytes_from_the_spool() {
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spooler::new(dir.path(), 1 << 20);
    let mut expected = b"Subject: big\r\n\r\n".to_vec();
    spool.push(expected.clone()).await.unwrap();
    let line = b".a line that starts with a dot and is long enough to matter here ....\r\n";
    let mut piece = Vec::with_capacity(1 << 20);
    while expected.len() < 20 << 20 {
        piece.clear();
        while piece.len() < (1 << 20) - line.len() {
            piece.extend_from_slice(line);
        }
        expected.extend_from_slice(&piece);
        spool.push(piece.clone()).await.unwrap();
    }
    let message = spool.finish(Vec::new()).await.unwrap();
    assert!(message.is_spooled());
    assert_eq!(message.len(), expected.len() as u64);
    let started = Instant::now();
    accepted(
        Mail::new(&message, &["b@y.test"])
            .send(&Upstreams::default(), "up", &server(sink.port()))
            .await,
    );
    eprintln!("20 MB sent in {:?}", started.elapsed());
    let got = sink.wait_for_messages_async(1, WAIT).await;
    assert_eq!(got[0].data.len(), expected.len());
    assert!(got[0].data == expected, "20 MB body differs");
}

#[tokio::test]
async fn one_refused_recipient_of_two_is_reported_not_failed_over() {
    let pf = Postfix::builder().reject_recipient("gone@y.test").start();
    let r = send_once(
        &server(pf.port()),
        &simple_message("partial"),
        &["gone@y.test", "ok@y.test"],
    )
    .await;
    let refused = accepted(r);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].rcpt, "gone@y.test");
    assert_eq!(refused[0].code, 550);
    assert!(refused[0].reason.contains("no such user"), "{refused:?}");
    let got = pf.wait_for_messages_async(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, ["ok@y.test"]);
}

#[tokio::test]
async fn every_recipient_refused_is_permanent() {
    let pf = Postfix::builder()
        .reject_recipient("gone@y.test")
        .reject_recipient("left@y.test")
        .start();
    let r = send_once(
        &server(pf.port()),
        &simple_message("none"),
        &["gone@y.test", "left@y.test"],
    )
    .await;
    let (code, enhanced, reason) = permanent(r);
    assert_eq!((code, enhanced), (550, Some((5, 1, 1))));
    assert!(
        reason.contains("gone@y.test"),
        "first refusal wanted: {reason}"
    );
}

/// A 4xx for one recipient fails the whole message over (after RSET), so a
/// later server gets every recipient and nobody receives it twice.
#[tokio::test]
async fn one_deferred_recipient_fails_over_the_whole_message() {
    let pf = Postfix::builder().defer_recipient("later@y.test").start();
    let up = Upstreams::default();
    let s = server(pf.port());
    let first = Message::in_memory(simple_message("deferred"));
    let r = Mail::new(&first, &["ok@y.test", "later@y.test"])
        .send(&up, "up", &s)
        .await;
    let f = failover_of("temporary", r);
    assert!(f.reason.contains("450"), "{f:?}");
    // Postfix offers PIPELINING, so DATA was already answered 354 when the
    // 450 came: the connection is dropped (sending "." would deliver an
    // empty message) and the next message opens a new one.
    let second = Message::in_memory(simple_message("after"));
    accepted(Mail::new(&second, &["ok@y.test"]).send(&up, "up", &s).await);
    assert_eq!(up.stats("up"), (2, 0));
    pf.wait_for_messages_async(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = pf.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].header("Subject").as_deref(), Some("after"));
}

#[tokio::test]
async fn sender_refusals() {
    let pf = Postfix::builder()
        .sender_reply("banned@x.test", "553 5.7.1 not allowed")
        .sender_reply("busy@x.test", "451 4.3.0 busy")
        .start();
    let s = server(pf.port());
    let message = Message::in_memory(simple_message("sender"));
    let up = Upstreams::default();
    let mut mail = Mail::new(&message, &["b@y.test"]);
    mail.from = "banned@x.test";
    let (code, enhanced, _) = permanent(mail.send(&up, "up", &s).await);
    assert_eq!((code, enhanced), (553, Some((5, 7, 1))));
    mail.from = "busy@x.test";
    failover_of("temporary", mail.send(&up, "up", &s).await);
}

#[tokio::test]
async fn end_of_data_replies() {
    let refuse = Postfix::builder()
        .end_of_data_reply("554 5.7.1 content refused")
        .start();
    let defer = Postfix::builder()
        .end_of_data_reply("451 4.3.0 try later")
        .start();
    let msg = simple_message("eod");
    let (code, _, reason) = permanent(send_once(&server(refuse.port()), &msg, &["b@y.test"]).await);
    assert_eq!(code, 554);
    assert!(reason.contains("content refused"), "{reason}");
    failover_of(
        "temporary",
        send_once(&server(defer.port()), &msg, &["b@y.test"]).await,
    );
}

/// Addresses that could inject commands never reach the wire.
#[tokio::test]
async fn unsafe_addresses_are_refused_locally() {
    let sink = SmtpSink::start();
    let s = server(sink.port());
    let r = send_once(
        &s,
        &simple_message("x"),
        &["ok@y.test", "evil@y.test>\r\nRSET"],
    )
    .await;
    let refused = accepted(r);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].code, 553);
    let got = sink.wait_for_messages_async(1, WAIT).await;
    assert_eq!(got[0].rcpt_to, ["ok@y.test"]);
    let message = Message::in_memory(simple_message("y"));
    let mut mail = Mail::new(&message, &["ok@y.test"]);
    mail.from = "a@x.test>\r\nRSET";
    let (code, _, _) = permanent(mail.send(&Upstreams::default(), "up", &s).await);
    assert_eq!(code, 553);
}

/// IPv6 literals work as `host` (with or without brackets). Skipped where
/// the machine has no IPv6 loopback.
#[tokio::test]
async fn ipv6_literal_host() {
    let Ok(scripted) = Scripted::start("[::1]:0", false).await else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    for host in ["::1", "[::1]"] {
        let s = smarthost::config::SmtpServer {
            host: host.into(),
            ..server(scripted.port)
        };
        accepted(send_once(&s, &simple_message("v6"), &["b@y.test"]).await);
    }
    assert_eq!(scripted.delivered(), 2);
}
