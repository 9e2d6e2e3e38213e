//! Microsoft Graph upstream through the relay, against the HTTPS fake of
//! the token endpoint and Graph (tests/common/graph.rs): small messages as
//! base64 MIME, 3.9 MB and 20 MB messages through the draft path (direct
//! attachment, upload session), exactly the envelope recipients (dropped,
//! test-mode-redirected, Bcc-only), token refresh under concurrency,
//! failover on 401 and 429, the CLI probe and test-server, and the client
//! secret never shown.

mod common;

use base64::Engine;
use common::graph::{GraphFake, Via};
use common::relay::{Raw, TestRelay, simple_config};
use std::process::Command;
use std::time::Duration;

const TENANT: &str = "tenant-1";
const CLIENT: &str = "client-1";
/// A sentinel secret: it must never appear in any output.
const SECRET: &str = "SENTINEL-s3cr3t-7f1d";
const MAILBOX: &str = "relay@acme.example";
const WAIT: Duration = Duration::from_secs(20);

fn fake() -> GraphFake {
    GraphFake::start(TENANT, CLIENT, SECRET, 3600)
}

/// Application `app` (loopback) sends through Graph `m365`, falling back
/// to the capture outbox; tenant `t` drops `former@example.com`.
fn config(fake: &GraphFake, tenant_extra: &str) -> String {
    simple_config(&format!(
        "primary = \"m365\"\nfallback = \"outbox\"\n\n[limits]\nmax_message_size = \"30MB\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{}",
        fake.server_toml("m365", MAILBOX, &format!("\"{SECRET}\""))
    ))
    .replace(
        "[tenant.t]\n",
        &format!("[tenant.t]\nblacklist = [\"former@example.com\"]\n{tenant_extra}\n"),
    )
}

fn send(relay: &TestRelay, rcpts: &[&str], data: &[u8]) -> String {
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", rcpts);
    c.send(data);
    c.send(b".\r\n");
    c.reply()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A message with one attachment of `size` bytes (base64, 76 per line).
fn with_attachment(size: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let mut lines = String::with_capacity(b64.len() * 78 / 76 + 2);
    for chunk in b64.as_bytes().chunks(76) {
        lines.push_str(std::str::from_utf8(chunk).unwrap());
        lines.push_str("\r\n");
    }
    let msg = format!(
        "From: App <app@legacy.test>\r\nTo: Keep <keep@example.com>, former@example.com\r\n\
Cc: cc@example.com\r\nSubject: big one\r\nX-Order: 42\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\n--BOUND\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n<p>See the attachment.</p>\r\n--BOUND\r\n\
Content-Type: application/octet-stream; name=\"data.bin\"\r\n\
Content-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
{lines}--BOUND--\r\n"
    );
    (msg.into_bytes(), data)
}

#[test]
fn small_message_goes_as_mime_to_exactly_the_envelope() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    let msg = b"From: App <app@legacy.test>\r\nTo: Keep <keep@example.com>, former@example.com\r\n\
Cc: cc@example.com, notinenvelope@example.com\r\nBcc: leaked@example.com\r\nSubject: hello graph\r\n\r\nline 1\r\nline 2\r\n";
    let reply = send(
        &relay,
        &[
            "keep@example.com",
            "former@example.com",
            "cc@example.com",
            "hidden@example.com",
        ],
        msg,
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let sent = fake.wait_sent(1, WAIT).remove(0);
    assert!(matches!(sent.via, Via::Mime));
    assert_eq!(
        sorted(sent.recipients()),
        ["cc@example.com", "hidden@example.com", "keep@example.com"]
    );
    let text = String::from_utf8_lossy(&sent.mime).into_owned();
    assert!(text.ends_with("\r\n\r\nline 1\r\nline 2\r\n"), "{text}");
    assert!(!text.contains("former@example.com"), "{text}");
    assert!(!text.contains("leaked@example.com"), "{text}");
    assert!(!text.contains("notinenvelope@example.com"), "{text}");
    assert_eq!(sent.header("Subject").as_deref(), Some("hello graph"));
    assert!(sent.header("From").unwrap().contains(MAILBOX));
    assert!(sent.header("Received").is_some());
    assert_eq!(fake.token_requests(), 1);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    assert!(relay.captured().is_empty());
}

#[test]
fn test_mode_redirect_reaches_only_the_redirect_address() {
    let fake = fake();
    let relay = TestRelay::start(&config(
        &fake,
        "test_mode = { redirect_to = \"qa@acme.example\", subject_prefix = \"[TEST] \" }",
    ));
    let msg = b"From: app@legacy.test\r\nTo: Alice <alice@customer.example>\r\nCc: bob@customer.example\r\nSubject: s\r\n\r\nbody\r\n";
    let reply = send(
        &relay,
        &["alice@customer.example", "bob@customer.example"],
        msg,
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let sent = fake.wait_sent(1, WAIT).remove(0);
    assert_eq!(sent.recipients(), ["qa@acme.example"]);
    assert_eq!(sent.header("Subject").as_deref(), Some("[TEST] s"));
    let head = String::from_utf8_lossy(&sent.mime)
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_owned();
    for line in head.lines().filter(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("to:") || l.starts_with("cc:") || l.starts_with("bcc:")
    }) {
        assert!(!line.contains("customer.example"), "{head}");
    }
}

#[test]
fn message_of_3_9_mb_goes_through_a_draft_with_a_direct_attachment() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    let (msg, data) = with_attachment(2_850_000);
    assert!(
        msg.len() > 3_800_000 && msg.len() < 4_000_000,
        "{}",
        msg.len()
    );
    let reply = send(
        &relay,
        &[
            "keep@example.com",
            "former@example.com",
            "cc@example.com",
            "bcc-only@example.com",
        ],
        &msg,
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let sent = fake.wait_sent(1, WAIT).remove(0);
    assert!(matches!(sent.via, Via::Draft));
    assert_eq!(sent.draft["subject"], "big one");
    assert_eq!(sent.draft["body"]["contentType"], "HTML");
    assert_eq!(
        sent.draft["toRecipients"][0]["emailAddress"]["address"],
        "keep@example.com"
    );
    assert_eq!(
        sent.draft["ccRecipients"][0]["emailAddress"]["address"],
        "cc@example.com"
    );
    assert_eq!(
        sent.draft["bccRecipients"][0]["emailAddress"]["address"],
        "bcc-only@example.com"
    );
    assert_eq!(
        sorted(sent.recipients()),
        ["bcc-only@example.com", "cc@example.com", "keep@example.com"]
    );
    let headers = sent.draft["internetMessageHeaders"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h["name"] == "X-Order" && h["value"] == "42")
    );
    assert_eq!(sent.attachments.len(), 1);
    let (name, ctype, bytes, uploaded) = &sent.attachments[0];
    assert_eq!(
        (name.as_str(), ctype.as_str(), *uploaded),
        ("data.bin", "application/octet-stream", false)
    );
    assert!(bytes == &data, "attachment bytes differ");
    assert_eq!(fake.direct_attachments(), 1);
    assert!(fake.chunks().is_empty());
    // Chosen by size, not after a refused sendMail.
    assert!(!fake.requests().iter().any(|r| r.ends_with("/sendMail")));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn message_of_20_mb_uploads_the_attachment_in_ranges() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    let (msg, data) = with_attachment(14_700_000);
    assert!(msg.len() > 20_000_000, "{}", msg.len());
    let reply = send(&relay, &["keep@example.com"], &msg);
    assert!(reply.starts_with("250 "), "{reply}");
    let sent = fake.wait_sent(1, WAIT).remove(0);
    assert!(matches!(sent.via, Via::Draft));
    let (_, _, bytes, uploaded) = &sent.attachments[0];
    assert!(*uploaded);
    assert!(bytes == &data, "uploaded bytes differ");
    let chunks = fake.chunks();
    assert_eq!(chunks.len(), data.len().div_ceil(12 * 320 * 1024));
    let mut at = 0;
    for c in &chunks {
        assert_eq!((c.start, c.total), (at, data.len()));
        at += c.len;
    }
    assert_eq!(at, data.len());
    assert_eq!(fake.open_drafts(), 0);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn answer_413_switches_to_the_draft_path() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    fake.fail_next_send(413, None);
    let reply = send(
        &relay,
        &["keep@example.com"],
        b"To: keep@example.com\r\nSubject: s\r\n\r\nsmall\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let sent = fake.wait_sent(1, WAIT).remove(0);
    assert!(matches!(sent.via, Via::Draft));
    assert_eq!(sent.recipients(), ["keep@example.com"]);
    assert_eq!(sent.draft["body"]["content"], "small\r\n");
}

#[test]
fn expired_token_is_refreshed_once_for_20_concurrent_deliveries() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    let reply = send(&relay, &["a@example.com"], b"Subject: first\r\n\r\nx\r\n");
    assert!(reply.starts_with("250 "), "{reply}");
    fake.wait_sent(1, WAIT);
    assert_eq!(fake.token_requests(), 1);
    fake.revoke_tokens();
    std::thread::scope(|s| {
        let relay = &relay;
        let handles: Vec<_> = (0..20)
            .map(|i| {
                s.spawn(move || {
                    let to = format!("r{i}@example.com");
                    send(
                        relay,
                        &[&to],
                        format!("Subject: m{i}\r\n\r\nx\r\n").as_bytes(),
                    )
                })
            })
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert!(r.starts_with("250 "), "{r}");
        }
    });
    let sent = fake.wait_sent(21, WAIT);
    assert_eq!(sent.len(), 21);
    assert_eq!(fake.token_requests(), 2, "exactly one refresh");
    // Deliveries that started after the refresh never saw the old token.
    assert!((1..=20).contains(&fake.refused_tokens()));
    assert!(fake.token_valid(&fake.last_token()));
    assert!(relay.captured().is_empty(), "nothing failed over");
}

#[test]
fn token_is_refreshed_before_it_expires() {
    // Lifetime 2 s: the relay refreshes after 1.5 s, before the fake
    // would refuse the token.
    let fake = GraphFake::start(TENANT, CLIENT, SECRET, 2);
    let relay = TestRelay::start(&config(&fake, ""));
    let reply = send(&relay, &["a@example.com"], b"Subject: first\r\n\r\nx\r\n");
    assert!(reply.starts_with("250 "), "{reply}");
    std::thread::sleep(Duration::from_millis(1600));
    std::thread::scope(|s| {
        let relay = &relay;
        for i in 0..20 {
            s.spawn(move || {
                let to = format!("r{i}@example.com");
                let r = send(relay, &[&to], b"Subject: m\r\n\r\nx\r\n");
                assert!(r.starts_with("250 "), "{r}");
            });
        }
    });
    fake.wait_sent(21, WAIT);
    assert_eq!(fake.token_requests(), 2, "one refresh for 20 deliveries");
    assert_eq!(
        fake.refused_tokens(),
        0,
        "no request went out with an expired token"
    );
}

#[test]
fn fails_over_to_the_fallback_on_401() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    fake.fail_every_send(401);
    let reply = send(&relay, &["keep@example.com"], b"Subject: s\r\n\r\nx\r\n");
    assert!(reply.starts_with("250 "), "{reply}");
    let c = relay.wait_captured(1, WAIT).remove(0);
    assert_eq!(c.json["server"], "outbox");
    assert!(fake.sent().is_empty());
    // One forced refresh and one retry, then the fallback.
    assert_eq!(fake.token_requests(), 2);
    let sends = fake
        .requests()
        .iter()
        .filter(|r| r.ends_with("/sendMail"))
        .count();
    assert_eq!(sends, 2);
    assert_eq!(relay.metric(&failovers("auth")), 1.0);
}

fn failovers(class: &str) -> String {
    format!(
        "smarthost_failovers_total{{from_server=\"m365\",to_server=\"outbox\",class=\"{class}\"}}"
    )
}

#[test]
fn fails_over_as_auth_on_403() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    fake.fail_every_send(403);
    let reply = send(&relay, &["keep@example.com"], b"Subject: s\r\n\r\nx\r\n");
    assert!(reply.starts_with("250 "), "{reply}");
    let c = relay.wait_captured(1, WAIT).remove(0);
    assert_eq!(c.json["server"], "outbox");
    assert_eq!(relay.metric(&failovers("auth")), 1.0);
    // 403 is not a token problem: no refresh.
    assert_eq!(fake.token_requests(), 1);
}

#[test]
fn fails_over_to_the_fallback_on_429() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    fake.fail_next_send(429, Some(30));
    let reply = send(&relay, &["keep@example.com"], b"Subject: s\r\n\r\nx\r\n");
    assert!(reply.starts_with("250 "), "{reply}");
    let c = relay.wait_captured(1, WAIT).remove(0);
    assert_eq!(c.json["server"], "outbox");
    assert!(fake.sent().is_empty());
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(relay.metric(&failovers("temporary")), 1.0);
}

#[test]
fn invalid_recipient_is_refused_and_the_others_get_it() {
    let fake = fake();
    let relay = TestRelay::start(&config(&fake, ""));
    fake.refuse_recipient("bad@example.com");
    let reply = send(
        &relay,
        &["good@example.com", "bad@example.com"],
        b"To: good@example.com, bad@example.com\r\nSubject: s\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let sent = fake.wait_sent(1, WAIT);
    assert_eq!(sent[0].recipients(), ["good@example.com"]);
    // Only the bad one: refused permanently, no failover.
    let reply = send(&relay, &["bad@example.com"], b"Subject: s\r\n\r\nx\r\n");
    assert!(reply.starts_with("550 "), "{reply}");
    assert!(relay.captured().is_empty());
}

/// Runs the binary with `args` on `toml` (RUST_LOG=debug); (exit code, stdout + stderr).
fn cli(toml: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smarthost.toml");
    std::fs::write(&path, toml.replace("{dir}", dir.path().to_str().unwrap())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(args)
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn probe_and_test_server_and_the_secret_never_shows() {
    let fake = fake();
    let toml = config(&fake, "");
    let (code, out) = cli(&toml, &["check-config", "--probe"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("probe m365: ok"), "{out}");
    assert!(out.contains(MAILBOX), "{out}");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r == &format!("GET /v1.0/users/{MAILBOX}"))
    );

    let (code, out) = cli(
        &toml,
        &["test-server", "m365", "--to", "someone@example.com"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("accepted"), "{out}");
    let sent = fake.wait_sent(1, WAIT);
    assert_eq!(sent[0].recipients(), ["someone@example.com"]);
    assert!(!out.contains(SECRET), "{out}");

    // Missing permission: named.
    fake.deny_user_read();
    let (code, out) = cli(&toml, &["check-config", "--probe"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("User.Read.All"), "{out}");
    assert!(!out.contains(SECRET), "{out}");

    // A wrong secret: the endpoint's error code, never the secret.
    let wrong = toml.replace(SECRET, "SENTINEL-wrong-9c2e");
    let (code, out) = cli(&wrong, &["check-config", "--probe"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("AADSTS7000215"), "{out}");
    assert!(out.contains("(auth)"), "{out}");
    assert!(!out.contains("SENTINEL"), "{out}");
    let (code, out) = cli(
        &wrong,
        &["test-server", "m365", "--to", "someone@example.com"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("AADSTS7000215") && !out.contains("SENTINEL"),
        "{out}"
    );
}

#[test]
fn secret_not_in_the_relay_log_when_graph_fails() {
    let fake = fake();
    let wrong = config(&fake, "").replace(SECRET, "SENTINEL-wrong-9c2e");
    let relay = common::process::Proc::start(&wrong);
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", &["keep@example.com"]);
    c.send(b"Subject: s\r\n\r\nx\r\n.\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("250 "), "{reply}");
    relay.wait_log("the failover", WAIT, |log| {
        log.iter().any(|l| l.contains("AADSTS7000215"))
    });
    let log = relay.log().join("\n");
    assert!(!log.contains("SENTINEL"), "{log}");
    assert!(!reply.contains("SENTINEL"));
}

#[test]
fn secret_from_a_file_is_watched_and_a_new_one_gets_a_new_token() {
    let fake = fake();
    let toml = simple_config(&format!(
        "primary = \"m365\"\nfallback = \"outbox\"\n\n{}",
        fake.server_toml("m365", MAILBOX, "{ file = \"graph.secret\" }")
    ));
    let dir = tempfile::tempdir().unwrap();
    // TestRelay writes the config into its own directory; the secret file
    // is named relative to it, so write it there before the relay starts.
    let toml = toml.replace(
        "graph.secret",
        &dir.path().join("graph.secret").display().to_string(),
    );
    std::fs::write(dir.path().join("graph.secret"), "SENTINEL-old-secret\n").unwrap();
    let relay = TestRelay::start(&toml);
    let cfg = relay.relay.config();
    assert!(
        cfg.referenced.contains(&dir.path().join("graph.secret")),
        "the watcher must see the secret file: {:?}",
        cfg.referenced
    );
    // The old secret is refused by the token endpoint: failover.
    let reply = send(&relay, &["keep@example.com"], b"Subject: one\r\n\r\nx\r\n");
    assert!(reply.starts_with("250 "), "{reply}");
    relay.wait_captured(1, WAIT);
    assert!(fake.sent().is_empty());
    // The rotated secret takes effect at the reload.
    std::fs::write(dir.path().join("graph.secret"), format!("{SECRET}\n")).unwrap();
    assert!(relay.reload_with(|t| t, false));
    let reply = send(&relay, &["keep@example.com"], b"Subject: two\r\n\r\nx\r\n");
    assert!(reply.starts_with("250 "), "{reply}");
    fake.wait_sent(1, WAIT);
    assert_eq!(fake.token_requests(), 2);
}
