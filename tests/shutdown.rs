//! Graceful shutdown: on SIGTERM the relay stops accepting, answers 421 to
//! idle sessions, lets a transaction in flight finish, and exits within
//! the grace period.

mod common;

use common::process::Proc;
use common::relay::{Raw, TestRelay, simple_config};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn sigterm_with_a_transaction_in_flight() {
    let cfg = simple_config("[limits]\nshutdown_grace = \"10s\"\n")
        .replace("path = \"outbox\"", "path = \"{dir}/outbox\"");
    let mut p = Proc::start(&cfg);
    let addr = p.addr("main");
    let mut busy = Raw::connect(addr);
    busy.begin("app@legacy.test", &["rcpt@example.com"]);
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    let mut idle = Raw::connect(addr);
    idle.expect("EHLO c", 250);

    p.signal("TERM");
    // The idle session is told at once.
    assert_eq!(
        idle.reply(),
        "421 4.3.2 Service shutting down, try again later\r\n"
    );
    // New connections are no longer accepted.
    let end = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < end, "still accepting");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The transaction in flight completes and is delivered...
    busy.send(b"second half\r\n.\r\n");
    assert!(busy.reply().starts_with("250 "));
    // ...then the session is closed with 421 rather than waiting for more.
    assert!(busy.reply().starts_with("421 4.3.2"));
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("relay did not exit");
    assert!(status.success(), "{status:?}\n{}", p.log().join("\n"));
    let msgs = TestRelay::captured_in(&p.dir.path().join("outbox"));
    assert_eq!(msgs.len(), 1);
    assert!(String::from_utf8_lossy(&msgs[0].eml).contains("first half\r\nsecond half\r\n"));
}

#[test]
fn grace_period_bounds_the_wait() {
    let cfg = simple_config("[limits]\nshutdown_grace = \"1s\"\n")
        .replace("path = \"outbox\"", "path = \"{dir}/outbox\"");
    let mut p = Proc::start(&cfg);
    let mut stuck = Raw::connect(p.addr("main"));
    stuck.begin("app@legacy.test", &["rcpt@example.com"]);
    stuck.send(b"Subject: never ends\r\n\r\n");
    let started = Instant::now();
    p.signal("TERM");
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("relay did not exit");
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(TestRelay::captured_in(&p.dir.path().join("outbox")).is_empty());
}
