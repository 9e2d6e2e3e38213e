//! A 50 MB message goes through without costing 50 MB of memory: past
//! `memory_threshold` it is spooled to a temporary file. The relay's peak
//! RSS is measured and reported.

mod common;

use common::process::Proc;
use common::relay::{Raw, TestRelay, simple_config};
use std::time::Duration;

#[test]
fn fifty_megabytes_with_bounded_memory() {
    let cfg = simple_config("[limits]\nmax_message_size = \"64MB\"\nmemory_threshold = \"1MB\"\n")
        .replace("path = \"outbox\"", "path = \"{dir}/outbox\"")
        .replace(
            "default_server = \"outbox\"",
            "default_server = \"outbox\"\nspool = \"{dir}/spool\"",
        );
    let p = Proc::start(&cfg);
    let before = p.peak_rss_kib();
    let mut c = Raw::connect(p.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(b"Subject: fifty\r\n\r\n");
    // 50 MiB of 100-byte lines, a recognisable pattern, sent in 1 MiB writes.
    let line: Vec<u8> = (0..98u8).map(|i| b'A' + i % 26).chain(*b"\r\n").collect();
    let chunk: Vec<u8> = line.iter().copied().cycle().take(100 * 10_486).collect();
    let mut sent = 0usize;
    while sent < 50 << 20 {
        c.send(&chunk);
        sent += chunk.len();
    }
    c.send(b".\r\n");
    let r = c.reply();
    assert!(r.starts_with("250 "), "{r}");
    let peak = p.peak_rss_kib();
    eprintln!(
        "peak RSS: {} KiB before, {} KiB after a {} MiB message",
        before,
        peak,
        sent >> 20
    );
    // Far below the message size: the body went to disk.
    assert!(peak < 48 * 1024, "peak RSS {peak} KiB");
    let msgs = TestRelay::captured_in(&p.dir.path().join("outbox"));
    assert_eq!(msgs.len(), 1);
    let eml = &msgs[0].eml;
    let body_at = eml.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(eml.len() - body_at, sent);
    assert!(eml[body_at..].chunks(100).all(|l| l == line.as_slice()));
    // The temporary file is gone.
    let left: Vec<_> = std::fs::read_dir(p.dir.path().join("spool/tmp"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let _ = Duration::ZERO;
}
