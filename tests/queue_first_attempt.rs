//! The queue's first attempt (PRODUCT §3.8): it gets a short head start,
//! then the commit runs alongside it, and the client's `250` waits for
//! whichever settles the message first, the disk (durable) or a server
//! that accepted every recipient (the message is the upstream's). Driven
//! through the binary, with the debug build's fault injection so the
//! order is not left to chance: `SMARTHOST_TEST_COMMIT_DELAY_MS` makes
//! every commit take that long, `SMARTHOST_TEST_HEAD_START_MS` sets the
//! head start.

mod common;

use common::process::Proc;
use common::relay::{Raw, queue_config, sample_message};
use common::sink::{Mode, Sink};
use std::time::{Duration, Instant};

/// How long every commit takes in these tests.
const COMMIT_DELAY: Duration = Duration::from_millis(3000);
const WAIT: Duration = Duration::from_secs(20);

fn config(sink_port: u16) -> String {
    queue_config(
        sink_port,
        "{dir}/spool",
        r#"
[queue]
min_backoff = "100ms"
max_backoff = "200ms"

[reload]
watch = false
"#,
    )
}

fn start(dir: tempfile::TempDir, sink: &Sink, head_start_ms: &str) -> Proc {
    let delay = COMMIT_DELAY.as_millis().to_string();
    Proc::start_in_with_env(
        dir,
        &config(sink.port()),
        &[
            ("SMARTHOST_TEST_COMMIT_DELAY_MS", &delay),
            ("SMARTHOST_TEST_HEAD_START_MS", head_start_ms),
        ],
    )
}

/// Sends one message; returns the reply to its content and how long the
/// client waited for it.
fn send(p: &Proc, subject: &str) -> (String, Duration) {
    let mut c = Raw::connect(p.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(&sample_message(subject, b"hello\r\n"));
    let t = Instant::now();
    let r = c.cmd(".");
    let waited = t.elapsed();
    c.cmd("QUIT");
    (r, waited)
}

/// Two messages a server accepts, sent one after the other; then a
/// restart on the same spool must find neither.
fn accepted_messages_are_answered_at_once_and_never_come_back(head_start_ms: &str) {
    let sink = Sink::start();
    let p = start(tempfile::tempdir().unwrap(), &sink, head_start_ms);
    for (n, subject) in ["first", "second"].into_iter().enumerate() {
        let (reply, waited) = send(&p, subject);
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
        // The upstream had it before the client got its answer, and the
        // answer did not wait for the (slow) commit.
        assert_eq!(
            sink.got().len(),
            n + 1,
            "answered before the upstream had it"
        );
        assert!(
            waited < COMMIT_DELAY,
            "the answer waited {waited:?}, as long as the commit"
        );
    }
    // Each gets its final delivery line ...
    p.wait_log("the final delivery lines", WAIT, |l| {
        l.iter()
            .filter(|l| {
                l.contains("smarthost::delivery")
                    && l.contains(" delivery ")
                    && l.contains("delivered")
            })
            .count()
            == 2
    });
    // ... and neither is left in the spool. A restart on the same spool
    // finds nothing to deliver again.
    let dir = p.stop();
    let p = start(dir, &sink, head_start_ms);
    let (reply, _) = send(&p, "third");
    assert!(reply.starts_with("250 "), "{reply}");
    let got = sink.wait(WAIT, |g| g.len() >= 3);
    assert_eq!(got.len(), 3, "a message came back after a restart");
    assert!(
        !p.log().iter().any(|l| l.contains("queue recovered")),
        "{:#?}",
        p.log()
    );
}

/// Delivered within the head start: the disk is never involved.
#[test]
fn a_message_the_upstream_accepts_within_the_head_start_skips_the_disk() {
    accepted_messages_are_answered_at_once_and_never_come_back("10000");
}

/// No head start: the commit starts at once and the committer "syncs"
/// for 3 s. The first message is written meanwhile and marked done when
/// its writer withdraws it; the second waits behind it and is skipped.
#[test]
fn a_message_the_upstream_accepts_during_its_commit_is_withdrawn() {
    accepted_messages_are_answered_at_once_and_never_come_back("0");
}

#[test]
fn a_deferred_message_is_answered_only_once_it_is_durable_and_survives_a_crash() {
    let sink = Sink::start();
    sink.set_mode(Mode::DeferData);
    let mut p = start(tempfile::tempdir().unwrap(), &sink, "0");
    let (reply, waited) = send(&p, "deferred");
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    // The first attempt failed long before the commit was through: the
    // 250 still waited for the disk.
    assert!(
        waited >= COMMIT_DELAY,
        "answered after {waited:?}, before the commit ({COMMIT_DELAY:?})"
    );
    assert!(sink.got().is_empty());
    p.wait_log("the first attempt's line", WAIT, |l| {
        l.iter()
            .any(|l| l.contains("delivery attempt") && l.contains("deferred"))
    });
    // A crash now: the acknowledged message is in the spool and is
    // delivered after the restart.
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let dir = std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap());
    drop(p);
    sink.set_mode(Mode::Accept);
    let p = start(dir, &sink, "0");
    let got = sink.wait(WAIT, |g| !g.is_empty());
    assert_eq!(got.len(), 1);
    assert!(
        String::from_utf8_lossy(&got[0].data).contains("Subject: deferred"),
        "{}",
        String::from_utf8_lossy(&got[0].data)
    );
    assert!(p.log().iter().any(|l| l.contains("queue recovered")));
}
