//! Out of file descriptors (issue 14, "Also"): the binary runs with a low
//! `RLIMIT_NOFILE` and clients take every descriptor. "accept failed" is
//! logged at most once per 10 s, not every 50 ms, and the file watcher
//! (checking every 100 ms) does not take its failed reads for a config
//! change: no reload is attempted. When the clients leave, the relay
//! serves again. Bounded in count and time.

mod common;

use common::process::Proc;
use common::relay::{Raw, simple_config};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn fd_exhaustion_is_neither_a_log_flood_nor_a_config_change() {
    let relay = Proc::start_with_prefix(
        &simple_config("[reload]\nwatch = true\ninterval = \"100ms\"\nprobe = false\n"),
        &["prlimit", "--nofile=48:48", "--"],
    );
    let addr = relay.addr("main");
    // More connections than descriptors: the relay runs out.
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..80 {
        match TcpStream::connect(addr) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    relay.wait_log("accept never failed", Duration::from_secs(10), |log| {
        log.iter().any(|l| l.contains("accept failed"))
    });
    // Three seconds of exhaustion: 60 accept retries, 30 watcher rounds.
    std::thread::sleep(Duration::from_secs(3));
    let log = relay.log();
    let accept_lines = log.iter().filter(|l| l.contains("accept failed")).count();
    assert!(
        accept_lines <= 2,
        "{accept_lines} \"accept failed\" lines:\n{}",
        log.join("\n")
    );
    assert!(
        !log.iter().any(|l| l.contains("reload")),
        "the watcher took unreadable files for a change:\n{}",
        log.join("\n")
    );
    // The clients leave; the relay serves again.
    drop(held);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Raw::connect_no_greeting(addr);
        let g = c.reply();
        if g.starts_with("220 ") {
            c.expect("QUIT", 221);
            break;
        }
        assert!(Instant::now() < end, "relay did not recover: {g}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
