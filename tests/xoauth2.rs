//! AUTH XOAUTH2 against a real SMTP peer (aiosmtpd with an authenticator
//! that checks the exact `user=…\x01auth=Bearer …\x01\x01` string), tokens
//! from the HTTPS fake token endpoint: client-credentials and refresh-token
//! grants, a refused token (535 and 454) costing exactly one refresh and
//! one retry, and failover (class `auth`) when the new token is refused too.

mod common;

use common::graph::GraphFake;
use common::relay::{Raw, TestRelay, simple_config};
use common::xoauth2::XoauthSink;
use std::time::Duration;

const USER: &str = "relay@acme.example";
const SECRET: &str = "SENTINEL-xo-secret-41";
const SCOPE: &str = "https://outlook.office365.com/.default";
const WAIT: Duration = Duration::from_secs(20);

fn config(fake: &GraphFake, sink: &XoauthSink, oauth_extra: &str) -> String {
    simple_config(&format!(
        r#"primary = "xo"
fallback = "outbox"

[server.xo]
host = "127.0.0.1"
port = {port}
security = "none"
auth = "xoauth2"
username = "{USER}"
pool_idle_timeout = "1ms"
ca_file = "{ca}"
oauth = {{ token_url = "{url}", client_id = "client-1", client_secret = "{SECRET}"{oauth_extra} }}
"#,
        port = sink.port(),
        ca = fake.ca_file().display(),
        url = fake.token_url(),
    ))
}

fn send(relay: &TestRelay, subject: &str) -> String {
    // Let the previous message's pooled session pass pool_idle_timeout
    // (1 ms), so every message opens and authenticates a new connection.
    std::thread::sleep(Duration::from_millis(10));
    let mut c = Raw::connect(relay.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    c.reply()
}

fn xoauth2_line(token: &str, result: &str) -> String {
    format!("'user={USER}\\x01auth=Bearer {token}\\x01\\x01' {result}")
}

#[test]
fn client_credentials_and_one_refresh_per_refused_token() {
    let fake = GraphFake::start("tenant-x", "client-1", SECRET, 3600);
    fake.expect_scope(SCOPE);
    let sink = XoauthSink::start(USER);
    let relay = TestRelay::start(&config(&fake, &sink, &format!(", scope = \"{SCOPE}\"")));

    let r = send(&relay, "one");
    assert!(r.starts_with("250 "), "{r}");
    sink.wait_messages(1, WAIT);
    assert_eq!(sink.auth_log(), [xoauth2_line("tok-1", "ok")]);
    assert_eq!(fake.token_requests(), 1);

    // The cached token is reused on the next connection.
    let r = send(&relay, "two");
    assert!(r.starts_with("250 "), "{r}");
    sink.wait_messages(2, WAIT);
    assert_eq!(fake.token_requests(), 1);

    // The token "expires" at the server: 535, one refresh, one retry.
    sink.min_token(2);
    let r = send(&relay, "three");
    assert!(r.starts_with("250 "), "{r}");
    sink.wait_messages(3, WAIT);
    assert_eq!(fake.token_requests(), 2, "{:?}", sink.auth_log());
    assert_eq!(
        sink.auth_log()[2..],
        [
            xoauth2_line("tok-1", "refused"),
            xoauth2_line("tok-2", "ok")
        ]
    );

    // The same with Microsoft's 454 answer.
    sink.min_token(3);
    sink.refuse_with_454();
    let r = send(&relay, "four");
    assert!(r.starts_with("250 "), "{r}");
    sink.wait_messages(4, WAIT);
    assert_eq!(fake.token_requests(), 3);
    assert!(relay.captured().is_empty());

    // The new token is refused too: one refresh only, then the fallback.
    sink.min_token(1000);
    let r = send(&relay, "five");
    assert!(r.starts_with("250 "), "{r}");
    let c = relay.wait_captured(1, WAIT).remove(0);
    assert_eq!(c.json["server"], "outbox");
    assert_eq!(fake.token_requests(), 4);
    assert_eq!(sink.messages().len(), 4);
}

#[test]
fn refresh_token_grant() {
    let fake = GraphFake::start("tenant-g", "client-1", SECRET, 3600);
    fake.accept_refresh_token("rt-secret-1");
    let sink = XoauthSink::start(USER);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("google.token");
    std::fs::write(&token_file, "rt-secret-1\n").unwrap();
    let relay = TestRelay::start(&config(
        &fake,
        &sink,
        &format!(
            ", refresh_token = {{ file = \"{}\" }}",
            token_file.display()
        ),
    ));
    let r = send(&relay, "google");
    assert!(r.starts_with("250 "), "{r}");
    sink.wait_messages(1, WAIT);
    assert_eq!(sink.auth_log(), [xoauth2_line("tok-1", "ok")]);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn token_endpoint_refusal_fails_over_as_auth() {
    let fake = GraphFake::start("tenant-w", "client-1", "another-secret", 3600);
    fake.expect_scope(SCOPE);
    let sink = XoauthSink::start(USER);
    let relay = TestRelay::start(&config(&fake, &sink, &format!(", scope = \"{SCOPE}\"")));
    let r = send(&relay, "x");
    assert!(r.starts_with("250 "), "{r}");
    let c = relay.wait_captured(1, WAIT).remove(0);
    assert_eq!(c.json["server"], "outbox");
    assert!(sink.auth_log().is_empty(), "no AUTH without a token");
    assert!(!r.contains("SENTINEL"));
}

/// Runs the binary with `args` on `toml` (RUST_LOG=debug); (exit code, stdout + stderr).
fn cli(toml: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smarthost.toml");
    std::fs::write(&path, toml.replace("{dir}", dir.path().to_str().unwrap())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smarthost"))
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
fn probe_and_test_server_with_xoauth2() {
    let fake = GraphFake::start("tenant-c", "client-1", SECRET, 3600);
    fake.expect_scope(SCOPE);
    let sink = XoauthSink::start(USER);
    let toml = config(&fake, &sink, &format!(", scope = \"{SCOPE}\""));
    let (code, out) = cli(&toml, &["check-config", "--probe"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("probe xo: ok") && out.contains("AUTH XOAUTH2"),
        "{out}"
    );
    let (code, out) = cli(
        &toml,
        &[
            "test-server",
            "xo",
            "--to",
            "someone@example.com",
            "--from",
            USER,
        ],
    );
    assert_eq!(code, 0, "{out}");
    sink.wait_messages(1, WAIT);
    assert!(!out.contains(SECRET), "{out}");

    // A wrong client secret: the endpoint's code, never the secret.
    let wrong = toml.replace(SECRET, "SENTINEL-wrong-xo");
    let (code, out) = cli(&wrong, &["check-config", "--probe"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("AADSTS7000215") && out.contains("(auth)"),
        "{out}"
    );
    assert!(!out.contains("SENTINEL"), "{out}");
}
