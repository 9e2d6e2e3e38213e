//! Session slots go to clients that can send (issue 14 item 3, PRODUCT
//! §3.1 last bullet), through the binary:
//!
//! * a flood from loopback addresses no application owns (127.0.0.x),
//!   each connection dripping a byte at a time, cannot take the slots of
//!   an identified client, which keeps sending;
//! * `max_connections_per_client` per address (`421 4.7.0`);
//! * the whole command line must arrive within `command_timeout` (a byte
//!   now and then no longer resets it);
//! * unidentified sessions get `unidentified_timeout` and are dropped
//!   after their first refused MAIL;
//! * `max_session_time` ends a session that keeps going.
//!
//! Every loop here is bounded in count and time.

mod common;

use common::process::Proc;
use common::relay::Raw;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// An `auth = "optional"` listener (strangers are let in: they could
/// authenticate), where 127.0.0.1 alone is the application `app`.
fn config(limits: &str) -> String {
    format!(
        r#"
[system]
hostname = "relay.test"
default_server = "outbox"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "optional"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.1/32"]

[limits]
{limits}
"#
    )
}

/// Connects from the loopback address `from` without reading anything.
fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    let stream = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(local).unwrap();
            sock.connect(addr).await.unwrap().into_std().unwrap()
        });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// The first reply line on a fresh connection.
fn greeting(stream: &TcpStream) -> String {
    let mut r = Raw::from_stream(stream.try_clone().unwrap());
    r.reply()
}

/// One message from 127.0.0.1; returns the reply to the final dot.
fn send_one(addr: SocketAddr) -> String {
    let mut c = Raw::connect(addr);
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(b"Subject: flood\r\n\r\nhello\r\n.\r\n");
    let r = c.reply();
    c.expect("QUIT", 221);
    r
}

#[test]
fn a_flood_from_strangers_leaves_slots_for_identified_clients() {
    let relay = Proc::start(&config(
        "max_connections = 20\nmax_connections_per_client = 3\ncommand_timeout = \"60s\"\nunidentified_timeout = \"60s\"",
    ));
    let addr = relay.addr("main");
    let stop = Arc::new(AtomicBool::new(false));
    let mut held = Vec::new();
    let mut per_client_refusals = 0;
    let mut other_refusals = 0;
    // 10 addresses × 4 connections: 40 attempts, bounded.
    for host in 2..=11 {
        for _ in 0..4 {
            let s = connect_from(addr, &format!("127.0.0.{host}"));
            let g = greeting(&s);
            if g.starts_with("220 ") {
                held.push((host, s));
            } else if g.starts_with("421 4.7.0 Too many connections from your address") {
                per_client_refusals += 1;
            } else {
                assert!(g.starts_with("421 "), "{g}");
                other_refusals += 1;
            }
        }
    }
    // Each held connection drips a byte every 200 ms (a partial command).
    let drippers: Vec<_> = held
        .iter()
        .map(|(_, s)| {
            let mut s = s.try_clone().unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(20);
                for b in b"EHLO slowly-but-surely".iter().cycle() {
                    if stop.load(Ordering::SeqCst) || Instant::now() > end {
                        return;
                    }
                    if s.write_all(&[*b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    // No address holds more than 3; strangers hold at most 15 of 20.
    for host in 2..=11 {
        assert!(held.iter().filter(|(h, _)| *h == host).count() <= 3);
    }
    assert!(held.len() <= 15, "strangers hold {} slots", held.len());
    assert!(per_client_refusals >= 10, "{per_client_refusals}");
    assert!(held.len() + per_client_refusals + other_refusals == 40);
    // The identified client still gets slots, five at once.
    let senders: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || send_one(addr)))
        .collect();
    for s in senders {
        let r = s.join().unwrap();
        assert!(r.starts_with("250 "), "{r}");
    }
    stop.store(true, Ordering::SeqCst);
    for d in drippers {
        d.join().unwrap();
    }
    let outbox = relay.dir.path().join("outbox");
    let n = std::fs::read_dir(outbox)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "eml")
        })
        .count();
    assert_eq!(n, 5);
}

#[test]
fn a_command_dripped_byte_by_byte_times_out_as_a_whole() {
    let relay = Proc::start(&config("command_timeout = \"2s\""));
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    let started = Instant::now();
    // Each byte comes well within the timeout, the whole line does not.
    let mut stream = c.stream.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        for b in b"NOOP and some more words\r\n" {
            if stream.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let r = c.reply();
    assert_eq!(r, "421 4.4.2 Timeout, closing connection\r\n");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "{took:?}"
    );
    dripper.join().unwrap();
}

#[test]
fn unidentified_sessions_get_a_short_idle_time() {
    let relay = Proc::start(&config(
        "command_timeout = \"60s\"\nunidentified_timeout = \"1s\"",
    ));
    let addr = relay.addr("main");
    let s = connect_from(addr, "127.0.0.7");
    assert!(greeting(&s).starts_with("220 "));
    let mut c = Raw::from_stream(s);
    c.expect("EHLO c", 250);
    let started = Instant::now();
    assert_eq!(c.reply(), "421 4.4.2 Timeout, closing connection\r\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The identified client keeps the normal command timeout.
    let mut known = Raw::connect(addr);
    known.expect("EHLO c", 250);
    std::thread::sleep(Duration::from_millis(1500));
    known.expect("NOOP", 250);
}

#[test]
fn an_unidentified_client_is_dropped_after_its_refused_mail() {
    let relay = Proc::start(&config(""));
    let s = connect_from(relay.addr("main"), "127.0.0.8");
    assert!(greeting(&s).starts_with("220 "));
    let mut c = Raw::from_stream(s);
    c.expect("EHLO c", 250);
    let r = c.cmd("MAIL FROM:<a@legacy.test>");
    assert!(r.starts_with("550 5.7.1 "), "{r}");
    assert!(c.closed());
}

#[test]
fn max_session_time_ends_a_busy_session() {
    let relay = Proc::start(&config("max_session_time = \"2s\""));
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    let started = Instant::now();
    let end = started + Duration::from_secs(10);
    let last = loop {
        assert!(Instant::now() < end, "session never ended");
        let r = c.cmd("NOOP");
        if !r.starts_with("250") {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The NOOP that crossed the limit may be answered 421 or find the
    // connection closing.
    assert!(
        last.is_empty() || last.starts_with("421 4.4.2 Session time limit reached"),
        "{last:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1800));
}
