//! Secrets never leave the process: a sentinel password (inline), a secret
//! file and an admin token from the environment are used for real — AUTH
//! against Postfix fails, deliveries fail over, probes and test messages
//! run — and none of them, nor their base64 forms, appears in any log line
//! (debug level, text and JSON), error message or CLI output.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::postfix::{Postfix, TlsMode};
use common::relay::Raw;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SENTINEL: &str = "SENTINEL-p4ss-7f3a9c";
const FILE_SENTINEL: &str = "FILESECRET-11b2e0";
const TOKEN_SENTINEL: &str = "TOKEN-SENTINEL-55d1";

fn forms(secret: &str) -> Vec<String> {
    vec![
        secret.to_owned(),
        B64.encode(secret),
        B64.encode(format!("\0relay\0{secret}")),
        B64.encode(format!("\0user\0{secret}")),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for s in [SENTINEL, FILE_SENTINEL, TOKEN_SENTINEL] {
        for f in forms(s) {
            assert!(!text.contains(&f), "{what} leaks {f:?}:\n{text}");
        }
    }
}

fn smarthost(args: &[&str], cwd: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(args)
        .current_dir(cwd)
        .env("SMARTHOST_TEST_TOKEN", TOKEN_SENTINEL)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sentinel_secrets_appear_nowhere() {
    let pf = Postfix::builder()
        .tls(TlsMode::StartTls)
        .sasl_user("relay", "the-right-one")
        .require_auth(true)
        .start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("second.pw"), format!("{FILE_SENTINEL}\n")).unwrap();
    let cfg = format!(
        r#"
[system]
delivery = "direct"
hostname = "relay.test"
default_server = "up"
fallback_server = "second"

[admin]
address = "127.0.0.1:0"
token = {{ env = "SMARTHOST_TEST_TOKEN" }}

[log]
level = "debug"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.up]
host = "127.0.0.1"
port = {port}
security = "starttls"
tls_name = "localhost"
ca_file = "{certs}/ca.crt"
username = "relay"
password = "{SENTINEL}"

[server.second]
host = "127.0.0.1"
port = {port}
security = "starttls"
tls_name = "localhost"
ca_file = "{certs}/ca.crt"
username = "relay"
password = {{ file = "second.pw" }}
auth = "login"

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
"#,
        port = pf.port(),
        certs = common::relay::certs().display()
    );
    let path = dir.path().join("smarthost.toml");
    std::fs::write(&path, &cfg).unwrap();
    let p = path.to_str().unwrap();

    // CLI: every command that reads the config.
    assert_clean(
        "check-config",
        &smarthost(&["check-config", "--config", p], dir.path()),
    );
    let probe = smarthost(&["check-config", "--config", p, "--probe"], dir.path());
    assert!(probe.contains("FAILED"), "{probe}");
    assert_clean("check-config --probe", &probe);
    let test = smarthost(
        &["test-server", "up", "--to", "x@example.com", "--config", p],
        dir.path(),
    );
    assert_clean("test-server", &test);
    assert_clean(
        "explain",
        &smarthost(
            &[
                "explain", "--config", p, "--app", "app", "--from", "a@b.test", "--to", "c@d.test",
                "--json",
            ],
            dir.path(),
        ),
    );
    // A broken config's errors.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        cfg.replace("username = \"relay\"\npassword = \"", "password = \""),
    )
    .unwrap();
    assert_clean(
        "refused config",
        &smarthost(
            &["check-config", "--config", broken.to_str().unwrap()],
            dir.path(),
        ),
    );

    // The running relay, text and JSON logs, at debug level.
    for format in ["text", "json"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_smarthost"))
            .args(["run", "--config", p, "--log-format", format])
            .env("SMARTHOST_TEST_TOKEN", TOKEN_SENTINEL)
            .env("RUST_LOG", "debug")
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let l2 = lines.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                l2.lock().unwrap().push(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(10);
        let port: u16 = loop {
            let found = lines.lock().unwrap().iter().find_map(|l| {
                if !l.contains("listening") || !l.contains("main") {
                    return None;
                }
                let after = l.split("127.0.0.1:").nth(1)?;
                after
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            });
            if let Some(p) = found {
                break p;
            }
            assert!(
                Instant::now() < end,
                "relay did not start: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut c = Raw::connect(([127, 0, 0, 1], port).into());
        c.expect("EHLO c", 250);
        c.expect("MAIL FROM:<a@legacy.test>", 250);
        c.expect("RCPT TO:<b@example.com>", 250);
        c.expect("DATA", 354);
        c.send(b"Subject: s\r\n\r\nx\r\n.\r\n");
        let r = c.reply();
        assert!(r.starts_with("451 4.4.1"), "{r}");
        assert_clean("reply", &r);
        c.expect("QUIT", 221);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        reader.join().unwrap();
        let log = lines.lock().unwrap().join("\n");
        assert!(
            log.contains("AUTH") || log.contains("auth"),
            "the AUTH failure was not logged:\n{log}"
        );
        if format == "json" {
            for l in log.lines() {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            }
            assert!(log.contains("\"message\":\"delivery\""), "{log}");
        }
        assert_clean(&format!("{format} log"), &log);
    }
}
