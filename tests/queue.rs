//! Queue mode (PRODUCT §3.8): durable before 250, background delivery
//! with retries, per-recipient state, DSNs, expiry, operator controls.
//! Against the in-process scripted sink (switchable down/up) and, for the
//! mixed 4xx/5xx case, a real Postfix.

mod common;

use common::relay::{Raw, TestRelay, sample_message};
use common::sink::{Mode, Sink};
use smarthost::queue::spool::RcptStatus;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn config(sink_port: u16, extra: &str) -> String {
    format!(
        r#"
[system]
delivery = "queue"
hostname = "relay.test"
default_server = "sink"
bounce_address = "postmaster@relay.test"

[queue]
min_backoff = "200ms"
max_backoff = "400ms"
max_age = "1h"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.sink]
host = "127.0.0.1"
port = {sink_port}
security = "none"
connect_timeout = "2s"
command_timeout = "5s"

[tenant.t]
sender = "app@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
{extra}
"#
    )
}

/// Sends one message; returns the final reply line.
fn send(relay: &TestRelay, subject: &str, to: &[&str]) -> String {
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", to);
    c.send(&sample_message(subject, b"hello\r\n"));
    let r = c.cmd(".");
    c.cmd("QUIT");
    r
}

fn queued_id(reply: &str) -> String {
    assert!(
        reply.starts_with("250 2.0.0 Ok: queued as "),
        "not queued: {reply:?}"
    );
    reply.trim_end()["250 2.0.0 Ok: queued as ".len()..].to_owned()
}

fn queue(relay: &TestRelay) -> std::sync::Arc<smarthost::queue::Queue> {
    relay.relay.queue().expect("queue open")
}

fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let end = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_reply_names_the_queue_id_and_the_message_is_delivered_at_once() {
    let sink = Sink::start();
    let relay = TestRelay::start(&config(sink.port(), ""));
    let started = Instant::now();
    let id = queued_id(&send(&relay, "queued-1", &["rcpt@example.com"]));
    let got = sink.wait(WAIT, |g| g.len() == 1);
    let took = started.elapsed();
    assert_eq!(got[0].rcpts, ["rcpt@example.com"]);
    assert_eq!(got[0].mail_from, "app@relay.test", "rewritten sender");
    // The queue id is the message id the relay adds (RFC 6409 §8).
    let mid = got[0].header("Message-ID").expect("Message-ID added");
    assert_eq!(mid, format!("<{id}@relay.test>"));
    assert!(got[0].header("Date").is_some(), "Date added");
    // Delivered in the background, promptly (no polling interval): the
    // bound is generous for a loaded CI machine; bench/ measures latency.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    wait_until("the queue to empty", WAIT, || queue(&relay).depth() == 0);
    // A message delivered at once never got a file of its own (it was
    // durable in the commit log, `spool/queue/wal/`); nothing is left.
    let spool = relay.dir.path().join("spool/queue");
    let left: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "wal")
        .collect();
    assert!(left.is_empty(), "spool files left after delivery: {left:?}");
}

#[test]
fn upstream_down_then_back_messages_wait_back_off_and_arrive_once() {
    let sink = Sink::start();
    sink.set_mode(Mode::Down);
    let relay = TestRelay::start(&config(
        sink.port(),
        "[health]\nfailures = 100\n[admin]\naddress = \"127.0.0.1:0\"\n",
    ));
    let ids: Vec<String> = (0..3)
        .map(|i| queued_id(&send(&relay, &format!("wait-{i}"), &["rcpt@example.com"])))
        .collect();
    let q = queue(&relay);
    // Deferred, with attempts counted and a next attempt in the future.
    wait_until("two attempts each", WAIT, || {
        q.list().iter().all(|m| m.attempts >= 2) && q.list().len() == 3
    });
    let listed = q.list();
    for m in &listed {
        assert!(ids.contains(&m.id));
        assert_eq!(m.recipients[0].state, RcptStatus::Deferred);
        let err = m.recipients[0].last_error.as_deref().unwrap_or("");
        assert!(err.contains("sink") && err.contains("421"), "{err}");
        assert_eq!(m.sender, "app@legacy.test");
    }
    assert!(relay.metric("smarthost_queue_deferrals_total{class=\"connection\"}") >= 6.0);
    assert!(relay.metric("smarthost_queue_attempts_total") >= 6.0);
    sink.set_mode(Mode::Accept);
    let got = sink.wait(WAIT, |g| g.len() >= 3);
    wait_until("the queue to empty", WAIT, || q.depth() == 0);
    // Exactly once each.
    std::thread::sleep(Duration::from_millis(600));
    let got = if sink.got().len() > got.len() {
        sink.got()
    } else {
        got
    };
    let mut subjects: Vec<String> = got.iter().map(|g| g.header("Subject").unwrap()).collect();
    subjects.sort();
    assert_eq!(subjects, ["wait-0", "wait-1", "wait-2"]);
}

#[test]
fn mixed_result_delivers_now_reports_5xx_once_and_retries_4xx() {
    let sink = Sink::start();
    let relay = TestRelay::start(&config(sink.port(), ""));
    let id = queued_id(&send(
        &relay,
        "mixed",
        &["ok@example.com", "perm@example.com", "temp@example.com"],
    ));
    let q = queue(&relay);
    // At once: ok delivered, perm in one DSN (to the application's
    // sender), temp deferred and kept in the queue.
    let got = sink.wait(WAIT, |g| g.len() == 2);
    assert_eq!(got[0].rcpts, ["ok@example.com"]);
    assert_eq!(got[1].mail_from, "", "a DSN has a null sender");
    assert_eq!(got[1].rcpts, ["app@relay.test"]);
    let dsn = String::from_utf8_lossy(&got[1].data);
    assert!(
        dsn.contains("Final-Recipient: rfc822; perm@example.com"),
        "{dsn}"
    );
    assert!(!dsn.contains("rfc822; temp@example.com"), "{dsn}");
    assert!(!dsn.contains("rfc822; ok@example.com"), "{dsn}");
    let m = q.show(&id).unwrap();
    let state = |a: &str| m.recipients.iter().find(|r| r.address == a).unwrap().state;
    assert_eq!(state("ok@example.com"), RcptStatus::Delivered);
    assert_eq!(state("perm@example.com"), RcptStatus::Failed);
    assert_eq!(state("temp@example.com"), RcptStatus::Deferred);
    // Later: temp alone, once.
    sink.accept_temp(true);
    let got = sink.wait(WAIT, |g| g.len() == 3);
    assert_eq!(got[2].rcpts, ["temp@example.com"]);
    wait_until("the queue to empty", WAIT, || q.depth() == 0);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(sink.got().len(), 3, "nothing sent twice");
}

#[test]
fn mixed_result_against_postfix() {
    use common::postfix::Postfix;
    let pf = Postfix::builder()
        .reject_recipient("gone@example.com")
        .defer_recipient("busy@example.com")
        .start();
    let relay = TestRelay::start(&config(pf.port(), ""));
    let id = queued_id(&send(
        &relay,
        "mixed-postfix",
        &["rcpt@example.com", "gone@example.com", "busy@example.com"],
    ));
    // The good recipient's copy and one DSN for the 5xx recipient.
    let got = pf.wait_for_messages(2, WAIT);
    let (msg, dsn): (Vec<_>, Vec<_>) = got.iter().partition(|m| !m.mail_from.is_empty());
    assert_eq!(msg.len(), 1);
    assert_eq!(msg[0].rcpt_to, ["rcpt@example.com"]);
    assert_eq!(dsn.len(), 1);
    let text = String::from_utf8_lossy(&dsn[0].data);
    assert!(
        text.contains(
            "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{text}"
    );
    assert!(!text.contains("busy@example.com>:"), "{text}");
    // The 4xx recipient waits in the queue with Postfix's answer, retried.
    let q = queue(&relay);
    wait_until("a retry of the 4xx recipient", WAIT, || {
        q.show(&id).is_ok_and(|m| m.attempts >= 2)
    });
    let m = q.show(&id).unwrap();
    assert_eq!(m.recipients.len(), 3);
    let busy = m
        .recipients
        .iter()
        .find(|r| r.address == "busy@example.com")
        .unwrap();
    assert_eq!(busy.state, RcptStatus::Deferred);
    assert!(
        busy.last_error.as_deref().unwrap_or("").contains("450 "),
        "{busy:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        pf.received().len(),
        2,
        "no copy twice: {:?}",
        pf.received()
            .iter()
            .map(|m| m.rcpt_to.clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn an_expired_message_gets_a_dsn_and_leaves_the_queue() {
    let sink = Sink::start();
    sink.set_mode(Mode::DeferData);
    let relay =
        TestRelay::start(&config(sink.port(), "").replace("max_age = \"1h\"", "max_age = \"1s\""));
    let id = queued_id(&send(&relay, "expires", &["rcpt@example.com"]));
    let q = queue(&relay);
    wait_until("the message to expire", WAIT, || q.show(&id).is_err());
    // The DSN itself is queued and waits for the sink like any message.
    sink.set_mode(Mode::Accept);
    let got = sink.wait(WAIT, |g| g.iter().any(|m| m.mail_from.is_empty()));
    let dsn = got.iter().find(|m| m.mail_from.is_empty()).unwrap();
    assert_eq!(dsn.rcpts, ["app@relay.test"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("Status: 4.4.7"), "{text}");
    assert!(
        !got.iter().any(|m| m.rcpts == ["rcpt@example.com"]),
        "never delivered"
    );
}

#[test]
fn operators_hold_release_retry_and_delete() {
    let sink = Sink::start();
    sink.set_mode(Mode::Down);
    let relay = TestRelay::start(
        &config(sink.port(), "")
            .replace("min_backoff = \"200ms\"", "min_backoff = \"1h\"")
            .replace("max_backoff = \"400ms\"", "max_backoff = \"1h\""),
    );
    let a = queued_id(&send(&relay, "held", &["rcpt@example.com"]));
    let b = queued_id(&send(&relay, "deleted", &["rcpt@example.com"]));
    let q = queue(&relay);
    wait_until("first attempts", WAIT, || {
        q.list().iter().all(|m| m.attempts == 1)
    });
    assert!(
        q.list().iter().all(|m| m.next_attempt_secs > 600),
        "backed off: {:?}",
        q.list()
    );
    q.hold(&a).unwrap();
    assert!(q.show(&a).unwrap().held);
    q.delete(&b).unwrap();
    assert_eq!(
        q.delete(&b),
        Err(smarthost::queue::ControlError::NotFound(b.clone()))
    );
    sink.set_mode(Mode::Accept);
    assert_eq!(q.retry_all(), 1);
    // A retry releases a held message too; nothing else is left.
    let got = sink.wait(WAIT, |g| g.len() == 1);
    assert_eq!(got[0].header("Subject").as_deref(), Some("held"));
    wait_until("the queue to empty", WAIT, || q.depth() == 0);
    assert!(q.retry("nope").is_err());
}

#[test]
fn queued_messages_survive_a_restart() {
    let sink = Sink::start();
    sink.set_mode(Mode::Down);
    let spool = tempfile::tempdir().unwrap();
    let cfg = config(sink.port(), "").replace(
        "hostname = \"relay.test\"",
        &format!(
            "hostname = \"relay.test\"\nspool = \"{}\"",
            spool.path().display()
        ),
    );
    let relay = TestRelay::start(&cfg);
    let mut ids: Vec<String> = (0..3)
        .map(|i| {
            queued_id(&send(
                &relay,
                &format!("restart-{i}"),
                &["rcpt@example.com"],
            ))
        })
        .collect();
    relay.stop();
    sink.set_mode(Mode::Accept);
    let relay = TestRelay::start(&cfg);
    let got = sink.wait(WAIT, |g| g.len() >= 3);
    let mut delivered: Vec<String> = got
        .iter()
        .map(|g| {
            let mid = g.header("Message-ID").unwrap();
            mid.trim_start_matches('<')
                .split('@')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    delivered.sort();
    assert_eq!(
        ids, delivered,
        "each queued message delivered with its queue id"
    );
    wait_until("the queue to empty", WAIT, || queue(&relay).depth() == 0);
    // Delivered messages stay delivered across a clean restart: their
    // "done" marks reach the commit log before the relay stops, so the
    // replay at the next start brings none of them back.
    relay.stop();
    let relay = TestRelay::start(&cfg);
    assert_eq!(queue(&relay).depth(), 0, "nothing delivered comes back");
    assert_eq!(sink.got().len(), 3);
    relay.stop();
}

#[test]
fn a_returning_upstream_drains_the_messages_that_waited_for_it_at_once() {
    let sink = Sink::start();
    sink.set_mode(Mode::Down);
    let relay = TestRelay::start(
        &config(
            sink.port(),
            "[health]\nfailures = 1\ncooldown = \"300ms\"\n",
        )
        .replace("min_backoff = \"200ms\"", "min_backoff = \"1h\"")
        .replace("max_backoff = \"400ms\"", "max_backoff = \"1h\""),
    );
    let ids: Vec<String> = (0..3)
        .map(|i| queued_id(&send(&relay, &format!("parked-{i}"), &["rcpt@example.com"])))
        .collect();
    let q = queue(&relay);
    wait_until("first attempts", WAIT, || {
        q.list().iter().all(|m| m.attempts >= 1) && q.list().len() == 3
    });
    assert!(
        q.list().iter().all(|m| m.next_attempt_secs > 600),
        "{:?}",
        q.list()
    );
    // The upstream returns; after the cool-down the next message is the
    // probe, and its success wakes the three waiting for an hour.
    sink.set_mode(Mode::Accept);
    std::thread::sleep(Duration::from_millis(400));
    queued_id(&send(&relay, "probe", &["rcpt@example.com"]));
    let got = sink.wait(WAIT, |g| g.len() == 4);
    let mut subjects: Vec<String> = got.iter().filter_map(|g| g.header("Subject")).collect();
    subjects.sort();
    assert_eq!(subjects, ["parked-0", "parked-1", "parked-2", "probe"]);
    wait_until("the queue to empty", WAIT, || q.depth() == 0);
    assert_eq!(ids.len(), 3);
}

/// How often header `name` starts a line of the header section.
fn count_header(data: &[u8], name: &str) -> usize {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .count()
}

#[test]
fn date_and_message_id_are_present_exactly_once_on_every_path() {
    // Direct mode, the first server down (421): the failover hop, and a
    // DSN for a refused recipient. Then the queue path.
    let down = Sink::start();
    down.set_mode(Mode::Down);
    let up = Sink::start();
    let cfg = config(
        up.port(),
        &format!(
            "primary = \"down\"\nfallback = \"sink\"\n\n[server.down]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n",
            down.port()
        ),
    );
    let direct = TestRelay::start(&cfg.replace("delivery = \"queue\"", "delivery = \"direct\""));
    let r = send(
        &direct,
        "failover",
        &["rcpt@example.com", "perm@example.com"],
    );
    assert!(r.starts_with("250 "), "{r}");
    let got = up.wait(WAIT, |g| g.len() == 2);
    for g in &got {
        assert_eq!(
            count_header(&g.data, "Date"),
            1,
            "{}",
            String::from_utf8_lossy(&g.data)
        );
        assert_eq!(
            count_header(&g.data, "Message-ID"),
            1,
            "{}",
            String::from_utf8_lossy(&g.data)
        );
    }
    assert!(got.iter().any(|g| g.mail_from.is_empty()), "a DSN");
    // A message that has both keeps its own.
    let queued = TestRelay::start(&cfg);
    let mut c = Raw::connect(queued.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <own@legacy.test>\r\nSubject: own\r\n\r\nx\r\n");
    let r = c.cmd(".");
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let got = up.wait(WAIT, |g| g.len() == 3);
    let own = &got[2];
    assert_eq!(count_header(&own.data, "Date"), 1);
    assert_eq!(
        own.header("Message-ID").as_deref(),
        Some("<own@legacy.test>")
    );
}
