//! A full spool (PRODUCT §3.8, RFC 3463 4.3.1): new mail gets `452 4.3.1`,
//! nothing already acknowledged is lost, and sending resumes when space
//! returns. The spool is a small tmpfs mounted by the test (needs root, as
//! the whole suite does).

mod common;

use common::relay::{Raw, TestRelay, sample_message};
use common::sink::{Mode, Sink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Mount {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount(8)");
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (tests/run.sh runs as root)"
        );
        Mount(dir.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn send(addr: std::net::SocketAddr, subject: &str) -> String {
    let mut c = Raw::connect(addr);
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(&sample_message(subject, &vec![b'x'; 8000]));
    c.send(b"\r\n");
    let r = c.cmd(".");
    c.cmd("QUIT");
    r
}

#[test]
fn a_full_spool_refuses_with_452_and_loses_nothing() {
    let sink = Sink::start();
    sink.set_mode(Mode::Down);
    let base = tempfile::tempdir().unwrap();
    let spool = base.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let _m = Mount::tmpfs(&spool, "256k");
    let relay = TestRelay::start(&common::relay::queue_config(
        sink.port(),
        &spool.display().to_string(),
        r#"
[queue]
min_backoff = "100ms"
max_backoff = "200ms"

[health]
failures = 1000
"#,
    ));
    // Fill the spool with messages (the upstream is down) until it is full.
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let subject = format!("full-{i}");
        let r = send(relay.addr("main"), &subject);
        if r.starts_with("250 ") {
            accepted.push(subject);
        } else {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the spool never filled up");
    assert!(refused.starts_with("452 4.3.1 "), "{refused}");
    assert!(!accepted.is_empty());
    // Space returns: the upstream comes back and drains the queue, and new
    // mail is accepted again.
    sink.set_mode(Mode::Accept);
    sink.wait(Duration::from_secs(30), |g| g.len() >= accepted.len());
    let r = send(relay.addr("main"), "after");
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let got = sink.wait(Duration::from_secs(30), |g| g.len() > accepted.len());
    let mut subjects: Vec<String> = got.iter().filter_map(|g| g.header("Subject")).collect();
    subjects.sort();
    let mut want = accepted.clone();
    want.push("after".into());
    want.sort();
    assert_eq!(subjects, want, "every acknowledged message, once");
    relay.stop();
}

/// A full spool refuses new mail even when the upstream would take it at
/// once: the first attempt's head start (which skips the disk for a
/// message a server accepts quickly) is given only when the spool has
/// room, so the client learns the disk is full. Through the binary.
#[test]
fn a_full_spool_refuses_with_452_while_the_upstream_is_up() {
    let sink = Sink::start();
    let base = tempfile::tempdir().unwrap();
    let spool = base.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let _m = Mount::tmpfs(&spool, "256k");
    // A head start long enough that only the spool's lack of room can
    // make the relay refuse.
    let p = common::process::Proc::start_in_with_env(
        tempfile::tempdir().unwrap(),
        &common::relay::queue_config(
            sink.port(),
            &spool.display().to_string(),
            "[reload]\nwatch = false\n",
        ),
        &[("SMARTHOST_TEST_HEAD_START_MS", "10000")],
    );
    // Fill what is left of the file system.
    let filler = spool.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
    }
    let r = send(p.addr("main"), "refused");
    assert!(r.starts_with("452 4.3.1 "), "{r}");
    assert!(sink.got().is_empty(), "a refused message was delivered");
    // Space returns: mail flows again.
    std::fs::remove_file(&filler).unwrap();
    let r = send(p.addr("main"), "accepted");
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let got = sink.wait(Duration::from_secs(20), |g| !g.is_empty());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("Subject").as_deref(), Some("accepted"));
}
