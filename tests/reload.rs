//! Hot reload: a valid edit changes behaviour for new sessions while open
//! ones finish on their snapshot; broken edits keep the old config and
//! report why; a changed server that fails its probe is not activated;
//! listeners and certificates change without dropping sessions; nothing is
//! lost or duplicated under load; SIGHUP and file changes trigger it.

mod common;

use common::postfix::{Postfix, closed_port};
use common::process::Proc;
use common::relay::{Raw, TestRelay, simple_config};
use smarthost::server::ReloadError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Rewrites a file the way deployment tools do: a new file renamed into
/// place, so a reader never sees it half written.
fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn named(name: &str) -> String {
    simple_config(&format!("display_name = \"{name}\"\n"))
}

fn send_one(c: &mut Raw, subject: &str) -> String {
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    c.expect("RCPT TO:<a@example.com>", 250);
    c.expect("DATA", 354);
    c.send(format!("From: a@legacy.test\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    c.reply()
}

fn from_of(relay: &TestRelay, subject: &str) -> String {
    let m = relay
        .captured()
        .into_iter()
        .find(|m| m.header("Subject").as_deref() == Some(subject))
        .unwrap();
    m.header("From").unwrap()
}

#[test]
fn new_sessions_see_the_edit_open_ones_keep_their_snapshot() {
    let relay = TestRelay::start(&named("Old Name"));
    let mut open = Raw::connect(relay.addr("main"));
    open.expect("EHLO c", 250);
    assert!(relay.reload_with(|t| t.replace("Old Name", "New Name"), true));
    let mut fresh = Raw::connect(relay.addr("main"));
    fresh.expect("EHLO c", 250);
    assert!(send_one(&mut fresh, "fresh").starts_with("250 "));
    assert!(send_one(&mut open, "open").starts_with("250 "));
    relay.wait_captured(2, Duration::from_secs(5));
    assert_eq!(from_of(&relay, "fresh"), "New Name <sender@relay.test>");
    assert_eq!(from_of(&relay, "open"), "Old Name <sender@relay.test>");
    open.expect("QUIT", 221);
}

#[test]
fn broken_edits_keep_the_old_config() {
    let relay = TestRelay::start(&named("Old Name").replace(
        "[tenant.t]",
        "[server.b]\nkind = \"capture\"\npath = \"b\"\n\n[tenant.t]",
    ));
    let before = relay.relay.config().hash.clone();
    type Edit = Box<dyn Fn(String) -> String>;
    let cases: [(&str, Edit, &str); 3] = [
        (
            "syntax error",
            Box::new(|t: String| t.replace("[tenant.t]", "[tenant.t")),
            "TOML syntax error",
        ),
        (
            "dangling reference",
            Box::new(|t: String| t + "primary = \"missing\"\n"),
            "application.app.primary",
        ),
        (
            "primary == fallback",
            Box::new(|t: String| t + "primary = \"b\"\nfallback = \"b\"\n"),
            "must differ",
        ),
    ];
    let original = std::fs::read_to_string(relay.dir.path().join("smarthost.toml")).unwrap();
    for (i, (name, edit, want)) in cases.iter().enumerate() {
        std::fs::write(
            relay.dir.path().join("smarthost.toml"),
            edit(original.clone()),
        )
        .unwrap();
        let r = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(relay.relay.reload(true));
        match r {
            Err(ReloadError::Config(errs)) => {
                let text: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
                assert!(
                    text.iter()
                        .any(|e| e.contains(want) && e.contains("smarthost.toml:")),
                    "{name}: {text:?}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(!relay.reload_with(|t| t, true), "{name}");
        assert_eq!(relay.relay.config().hash, before, "{name}");
        let failures = relay.relay.metrics.encode();
        assert!(
            failures.contains(&format!(
                "smarthost_config_reloads_total{{result=\"failure\"}} {}",
                i + 1
            )),
            "{failures}"
        );
    }
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    assert!(send_one(&mut c, "still old").starts_with("250 "));
    relay.wait_captured(1, Duration::from_secs(5));
    assert_eq!(from_of(&relay, "still old"), "Old Name <sender@relay.test>");
}

#[test]
fn a_changed_server_that_fails_its_probe_is_not_activated() {
    let pf = Postfix::start();
    let cfg = simple_config("primary = \"up\"\n")
        + &format!(
            "[server.up]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nconnect_timeout = \"2s\"\n",
            pf.port()
        );
    let relay = TestRelay::start(&cfg);
    let port = pf.port().to_string();
    let dead = closed_port().to_string();
    assert!(!relay.reload_with(
        |t| t.replace(&format!("port = {port}"), &format!("port = {dead}")),
        true
    ));
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    assert!(send_one(&mut c, "via postfix").starts_with("250 "));
    assert_eq!(pf.wait_for_messages(1, Duration::from_secs(10)).len(), 1);
    // Without the probe the same edit goes live: the dead primary is now
    // skipped over to the system default (the outbox), Postfix gets nothing.
    assert!(relay.reload_with(|t| t, false));
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    assert!(send_one(&mut c, "dead now").starts_with("250 "));
    assert_eq!(relay.wait_captured(1, Duration::from_secs(5)).len(), 1);
    assert_eq!(pf.received().len(), 1);
}

#[test]
fn listeners_come_and_go_without_dropping_sessions() {
    let relay = TestRelay::start(&simple_config(""));
    let old = relay.addr("main");
    let mut open = Raw::connect(old);
    open.expect("EHLO c", 250);
    // Replace the listener by one with another name (another port-0 socket).
    assert!(relay.reload_with(|t| t.replace("name = \"main\"", "name = \"second\""), true));
    let end = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(old).is_ok() {
        assert!(Instant::now() < end, "the removed listener still accepts");
        std::thread::sleep(Duration::from_millis(10));
    }
    let bound = relay.relay.bound_addresses();
    assert_eq!(bound.len(), 1);
    let mut fresh = Raw::connect(bound[0]);
    fresh.expect("EHLO c", 250);
    assert!(send_one(&mut fresh, "new listener").starts_with("250 "));
    // The session on the removed listener goes on.
    assert!(send_one(&mut open, "old listener").starts_with("250 "));
    assert_eq!(relay.wait_captured(2, Duration::from_secs(5)).len(), 2);
}

#[test]
fn a_new_certificate_applies_to_new_handshakes() {
    let cfg = common::relay::tls_config("");
    let relay = TestRelay::start(&cfg);
    let port = relay.port("smtps");
    let subject = || common::relay::peer_certificate_sha256(port);
    let first = subject();
    // A fresh self-signed certificate for localhost.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(relay.dir.path().join("new.crt"), ck.cert.pem()).unwrap();
    std::fs::write(
        relay.dir.path().join("new.key"),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    let certs = common::relay::certs();
    let (crt, key) = (
        format!("{}/localhost.crt", certs.display()),
        format!("{}/localhost.key", certs.display()),
    );
    assert!(relay.reload_with(
        |t| t.replace(&crt, "new.crt").replace(&key, "new.key"),
        true
    ));
    let second = subject();
    assert_ne!(first, second);
    // Same port: the listener was not rebound.
    assert_eq!(relay.port("smtps"), port);
}

#[test]
fn reload_under_load_loses_and_duplicates_nothing() {
    let relay = Arc::new(TestRelay::start(&named("Name 0")));
    let addr = relay.addr("main");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 2000 {
                let mut c = Raw::connect(addr);
                c.expect("EHLO c", 250);
                for _ in 0..5 {
                    let r = send_one(&mut c, &format!("msg {n}"));
                    assert!(r.starts_with("250 "), "{r}");
                    n += 1;
                    sent.store(n, Ordering::SeqCst);
                }
                c.expect("QUIT", 221);
            }
        })
    };
    for i in 1..=8 {
        let before = sent.load(Ordering::SeqCst);
        assert!(relay.reload_with(
            |t| t.replace(&format!("Name {}", i - 1), &format!("Name {i}")),
            true
        ));
        // Let some traffic pass under each config (bounded wait).
        let end = Instant::now() + Duration::from_secs(5);
        while sent.load(Ordering::SeqCst) < before + 10 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let n = sent.load(Ordering::SeqCst);
    let msgs = relay.wait_captured(n, Duration::from_secs(10));
    let mut subjects: Vec<String> = msgs.iter().map(|m| m.header("Subject").unwrap()).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), n, "duplicates or losses");
    let names: std::collections::BTreeSet<String> =
        msgs.iter().map(|m| m.header("From").unwrap()).collect();
    assert!(
        names.len() >= 5,
        "the edits did not take effect along the way: {names:?}"
    );
}

#[test]
fn sighup_and_file_changes_reload_the_running_binary() {
    let cfg = named("First").replace("path = \"outbox\"", "path = \"{dir}/outbox\"")
        + "[reload]\ninterval = \"200ms\"\nwatch = false\n";
    let p = Proc::start(&cfg);
    let path = p.dir.path().join("smarthost.toml");
    let probe = |subject: &str| {
        let mut c = Raw::connect(p.addr("main"));
        c.expect("EHLO c", 250);
        assert!(send_one(&mut c, subject).starts_with("250 "));
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let found = TestRelay::captured_in(&p.dir.path().join("outbox"))
                .into_iter()
                .find(|m| m.header("Subject").as_deref() == Some(subject));
            if let Some(m) = found {
                return m.header("From").unwrap();
            }
            assert!(Instant::now() < end, "message {subject} not captured");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(probe("one"), "First <sender@relay.test>");
    // SIGHUP.
    let text = std::fs::read_to_string(&path).unwrap();
    write_atomic(&path, &text.replace("First", "Second"));
    p.signal("HUP");
    p.wait_log("no reload logged", Duration::from_secs(10), |log| {
        log.iter()
            .any(|l| l.contains("config reloaded") && l.contains("SIGHUP"))
    });
    assert_eq!(probe("two"), "Second <sender@relay.test>");
    // A file change, with watching switched on by the change itself.
    let text = std::fs::read_to_string(&path).unwrap();
    write_atomic(
        &path,
        &text
            .replace("Second", "Third")
            .replace("watch = false", "watch = true"),
    );
    p.signal("HUP");
    p.wait_log(
        "second SIGHUP not handled",
        Duration::from_secs(10),
        |log| {
            log.iter()
                .filter(|l| l.contains("config reloaded") && l.contains("SIGHUP"))
                .count()
                >= 2
        },
    );
    let text = std::fs::read_to_string(&path).unwrap();
    write_atomic(&path, &text.replace("Third", "Fourth"));
    p.wait_log("no reload on file change", Duration::from_secs(10), |log| {
        log.iter()
            .any(|l| l.contains("config reloaded") && l.contains("file change"))
    });
    assert_eq!(probe("three"), "Fourth <sender@relay.test>");
    // A broken edit is reported with file, line and key, and changes nothing.
    let text = std::fs::read_to_string(&path).unwrap();
    write_atomic(
        &path,
        &text.replace(
            "display_name = \"Fourth\"",
            "display_name = \"Fourth\"\nprimary = \"nowhere\"",
        ),
    );
    p.wait_log("no refusal logged", Duration::from_secs(10), |log| {
        log.iter()
            .any(|l| l.contains("config reload refused") && l.contains("application.app.primary"))
    });
    assert_eq!(probe("four"), "Fourth <sender@relay.test>");
}

#[test]
fn a_ca_file_replaced_under_the_same_path_takes_effect_on_reload() {
    let pf = common::postfix::Postfix::builder()
        .tls(common::postfix::TlsMode::StartTls)
        .start();
    let cas = tempfile::tempdir().unwrap();
    let ca = cas.path().join("ca.pem");
    // First a CA that did not sign Postfix's certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&ca, other.cert.pem()).unwrap();
    let cfg = simple_config("primary = \"up\"\n")
        + &format!(
            "[server.up]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"starttls\"\ntls_name = \"localhost\"\nca_file = \"{}\"\n",
            pf.port(),
            ca.display()
        );
    let relay = TestRelay::start(&cfg);
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    // The certificate check fails: the message falls back to the outbox.
    assert!(send_one(&mut c, "untrusted").starts_with("250 "));
    assert_eq!(relay.wait_captured(1, Duration::from_secs(5)).len(), 1);
    // The right CA under the same path; the config text is unchanged.
    std::fs::copy(common::relay::certs().join("ca.crt"), &ca).unwrap();
    assert!(relay.reload_with(|t| t, true));
    assert!(send_one(&mut c, "trusted now").starts_with("250 "));
    assert_eq!(pf.wait_for_messages(1, Duration::from_secs(10)).len(), 1);
    assert_eq!(relay.captured().len(), 1);
}

#[test]
fn lowering_max_connections_holds_once_sessions_end() {
    let relay = TestRelay::start(&simple_config("[limits]\nmax_connections = 5\n"));
    let addr = relay.addr("main");
    let mut open: Vec<Raw> = (0..4).map(|_| Raw::connect(addr)).collect();
    assert!(relay.reload_with(
        |t| t.replace("max_connections = 5", "max_connections = 2"),
        true
    ));
    let refused = |relay: &TestRelay| {
        let mut c = Raw::connect_no_greeting(relay.addr("main"));
        c.reply().starts_with("421 4.3.2")
    };
    assert!(refused(&relay), "4 open, limit 2");
    // Two sessions end: two are still open, which is the limit.
    for mut c in open.drain(..2) {
        c.expect("QUIT", 221);
    }
    let end = Instant::now() + Duration::from_secs(5);
    while relay.relay.active_sessions() > 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(refused(&relay), "2 open, limit 2");
    open.pop().unwrap().expect("QUIT", 221);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Raw::connect_no_greeting(addr);
        if c.reply().starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < end, "the freed slot never came back");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_watcher_notices_a_replaced_certificate() {
    let cfg = common::relay::tls_config("[reload]\ninterval = \"200ms\"\n")
        .replace("path = \"outbox\"", "path = \"{dir}/outbox\"");
    // A copy of the test certificate that the test can replace.
    let staging = tempfile::tempdir().unwrap();
    let crt = staging.path().join("cert.pem");
    let key = staging.path().join("key.pem");
    std::fs::copy(common::relay::certs().join("localhost.crt"), &crt).unwrap();
    std::fs::copy(common::relay::certs().join("localhost.key"), &key).unwrap();
    let cfg = cfg
        .replace("{certs}/localhost.crt", crt.to_str().unwrap())
        .replace("{certs}/localhost.key", key.to_str().unwrap());
    let p = Proc::start(&cfg);
    let fingerprint = || common::relay::peer_certificate_sha256(p.addr("smtps").port());
    let first = fingerprint();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    write_atomic(&key, &ck.signing_key.serialize_pem());
    write_atomic(&crt, &ck.cert.pem());
    p.wait_log(
        "the certificate change was not noticed",
        Duration::from_secs(10),
        |log| {
            log.iter()
                .any(|l| l.contains("config reloaded") && l.contains("file change"))
        },
    );
    assert_ne!(fingerprint(), first);
}
