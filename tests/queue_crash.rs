//! The queue's promise under crashes (PRODUCT §3.8 "no acknowledged
//! message is ever lost"): senders submit tagged messages while the relay
//! binary is SIGKILLed at random moments, 20 times, and restarted on the
//! same spool. Every message that got a 250 must reach the upstream.
//! Duplicates (possible for messages in flight at the kill) are counted
//! and printed. Bounded: 20 cycles of at most ~0.5 s of traffic each.

mod common;

use common::process::Proc;
use common::sink::Sink;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CYCLES: usize = 20;
const SENDERS: usize = 4;

fn config(sink_port: u16, spool: &std::path::Path) -> String {
    common::relay::queue_config(
        sink_port,
        &spool.display().to_string(),
        r#"
[queue]
min_backoff = "100ms"
max_backoff = "300ms"

[reload]
watch = false
"#,
    )
}

fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        all.push_str(&line);
        if line.len() >= 4 && line.as_bytes()[3] == b' ' {
            return Ok(all);
        }
    }
}

/// One message tagged `tag`; Ok(true) when the relay answered 250.
fn send_one(addr: SocketAddr, tag: &str) -> std::io::Result<bool> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    reply(&mut r)?;
    for cmd in [
        "EHLO c.test",
        "MAIL FROM:<app@legacy.test>",
        "RCPT TO:<rcpt@example.com>",
        "DATA",
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes())?;
        reply(&mut r)?;
    }
    w.write_all(format!("Subject: {tag}\r\n\r\nbody of {tag}\r\n.\r\n").as_bytes())?;
    let r = reply(&mut r)?;
    let _ = w.write_all(b"QUIT\r\n");
    Ok(r.starts_with("250 "))
}

/// A small deterministic generator for the kill moments.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn no_acknowledged_message_is_lost_across_sigkills() {
    let sink = Sink::start();
    let spool = tempfile::tempdir().unwrap();
    let cfg = config(sink.port(), spool.path());
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut rng = Lcg(0x5eed_1234);
    let started = Instant::now();
    for cycle in 0..CYCLES {
        let mut p = Proc::start(&cfg);
        let addr = p.addr("main");
        let kill_after = Duration::from_millis(50 + rng.next() % 400);
        let deadline = Instant::now() + kill_after;
        let senders: Vec<_> = (0..SENDERS)
            .map(|t| {
                let acked = acked.clone();
                std::thread::spawn(move || {
                    for n in 0..300 {
                        let tag = format!("c{cycle}-s{t}-m{n}");
                        match send_one(addr, &tag) {
                            Ok(true) => {
                                acked.lock().unwrap().insert(tag);
                            }
                            Ok(false) => {}
                            Err(_) => return,
                        }
                        if Instant::now() > deadline + Duration::from_secs(2) {
                            return;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        for s in senders {
            s.join().unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > CYCLES,
        "too little traffic to mean anything: {}",
        acked.len()
    );
    // A last start delivers whatever is still queued.
    let p = Proc::start(&cfg);
    let got = sink.wait(Duration::from_secs(60), |g| {
        let seen: HashSet<String> = g.iter().filter_map(|m| m.header("Subject")).collect();
        acked.iter().all(|t| seen.contains(t))
    });
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &got {
        if let Some(s) = m.header("Subject") {
            *counts.entry(s).or_default() += 1;
        }
    }
    let lost = acked.iter().filter(|t| !counts.contains_key(*t)).count();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let unacked_delivered = counts.keys().filter(|t| !acked.contains(*t)).count();
    println!(
        "crash loop: {CYCLES} SIGKILLs in {:?}; acknowledged {}, lost {lost}, duplicates {duplicates}, delivered without a 250 (killed before the reply) {unacked_delivered}",
        started.elapsed(),
        acked.len()
    );
    assert_eq!(lost, 0);
    drop(p);
}
