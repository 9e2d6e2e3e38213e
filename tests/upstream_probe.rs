//! Probes and test messages: `probe` reports what a connection negotiated
//! without sending mail, `probe_all` keeps the given order, `test_message`
//! relays one real message, and the CLI commands built on them
//! (`check-config --probe`, `test-server`) print the summary and exit 0
//! only on success.

mod common;

use common::postfix::{Postfix, TlsMode, certs_dir, closed_port};
use common::upstream::*;
use smarthost::config::Security;
use smarthost::upstream::Upstreams;
use smarthost::upstream::probe::{TestFailure, probe, probe_all, test_message};
use std::process::Command;
use std::sync::Arc;

#[tokio::test]
async fn probe_reports_tls_auth_and_capabilities_without_sending() {
    let pf = Postfix::builder()
        .tls(TlsMode::StartTls)
        .sasl_user("relay", "pw-123456")
        .start();
    let s = with_auth(
        tls_server(pf.port(), Security::Starttls),
        "relay",
        "pw-123456",
        None,
    );
    let r = probe(&Upstreams::default(), "up", &s).await.unwrap();
    assert_eq!(r.connected_to, pf.addr());
    assert_eq!(r.auth, Some("PLAIN"));
    assert!(r.greeting.contains("postfix-fixture.test"), "{r:?}");
    for cap in ["8BITMIME", "SMTPUTF8", "PIPELINING", "SIZE 104857600"] {
        assert!(r.capabilities.iter().any(|c| c == cap), "{cap}: {r:?}");
    }
    assert!(
        r.capabilities.iter().any(|c| c.starts_with("AUTH ")),
        "{r:?}"
    );
    let text = r.to_string();
    assert!(
        text.contains("TLSv1.3") && text.contains("AUTH:         PLAIN"),
        "{text}"
    );
    assert!(pf.received().is_empty());
}

#[tokio::test]
async fn probe_all_keeps_order_and_reports_failures() {
    let pf = Postfix::start();
    let servers = vec![
        ("dead".to_owned(), server(closed_port())),
        ("alive".to_owned(), server(pf.port())),
    ];
    let results = probe_all(Arc::new(Upstreams::default()), servers, 1).await;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].0, "dead");
    let f = results[0].1.as_ref().unwrap_err();
    assert_eq!(
        (f.server.as_str(), f.class.as_str()),
        ("dead", "connection")
    );
    assert_eq!(results[1].0, "alive");
    assert!(results[1].1.is_ok());
}

#[tokio::test]
async fn test_message_relays_and_reports() {
    let pf = Postfix::builder().reject_recipient("gone@y.test").start();
    let up = Upstreams::default();
    let s = server(pf.port());
    let msg = simple_message("test-server");
    let ok = test_message(&up, "up", &s, "a@x.test", "b@y.test", msg.clone()).await;
    assert!(ok.session.is_some());
    let reply = ok.result.unwrap();
    assert!(reply.starts_with("250 "), "{reply}");
    let got = pf.wait_for_messages_async(1, WAIT).await;
    assert_eq!(got[0].data_without_postfix_received(), msg.as_slice());
    let refused = test_message(&up, "up", &s, "a@x.test", "gone@y.test", msg).await;
    match refused.result {
        Err(TestFailure::Refused { code: 550, .. }) => {}
        other => panic!("expected a 550 refusal, got {other:?}"),
    }
    let dead = test_message(
        &up,
        "up",
        &server(closed_port()),
        "a@x.test",
        "b@y.test",
        vec![],
    )
    .await;
    assert!(dead.session.is_none());
    assert!(matches!(dead.result, Err(TestFailure::Failed(f)) if f.class.as_str() == "connection"));
}

fn config(dir: &std::path::Path, servers: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[system]
hostname = "relay.test"
default_server = "good"
default_sender = "system@relay.test"
display_name = "Relay Test"

[[listener]]
address = "127.0.0.1:0"
auth = "none"

[tenant.t]

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
{servers}
"#
    );
    let path = dir.join("smarthost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn smarthost(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(args)
        .output()
        .expect("run smarthost");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_test_server_sends_with_the_server_policy() {
    let pf = Postfix::builder()
        .tls(TlsMode::StartTls)
        .sasl_user("relay", "pw-123456")
        .require_auth(true)
        .start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            r#"
[server.good]
host = "127.0.0.1"
port = {}
security = "starttls"
tls_name = "localhost"
ca_file = "{}"
username = "relay"
password = "pw-123456"
auth = "{}"
sender = "fixed@provider.test"
"#,
            pf.port(),
            certs_dir().join("ca.crt").display(),
            "login"
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = smarthost(&[
        "--config",
        cfg,
        "test-server",
        "good",
        "--to",
        "b@y.test",
        "--from",
        "me@x.test",
    ]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "TLSv1.3",
        "AUTH:         LOGIN",
        "accepted: 250",
        "MAIL FROM:<fixed@provider.test>",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let got = pf.wait_for_messages(1, WAIT);
    assert_eq!(got[0].mail_from, "fixed@provider.test");
    assert_eq!(got[0].rcpt_to, ["b@y.test"]);
    let from = got[0].header("From").unwrap();
    assert!(
        from.contains("fixed@provider.test") && from.contains("Relay Test"),
        "{from}"
    );
    // The address the user gave is kept as Reply-To.
    assert_eq!(got[0].header("Reply-To").as_deref(), Some("<me@x.test>"));
}

#[test]
fn cli_test_server_fails_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[server.good]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n",
            closed_port()
        ),
    );
    let (code, out, _) = smarthost(&[
        "--config",
        cfg.to_str().unwrap(),
        "test-server",
        "good",
        "--to",
        "b@y.test",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("NOT accepted: connection failure"), "{out}");
    let (code, _, err) = smarthost(&[
        "--config",
        cfg.to_str().unwrap(),
        "test-server",
        "nope",
        "--to",
        "b@y.test",
    ]);
    assert_eq!(code, Some(64), "{err}");
}

#[test]
fn cli_check_config_probe() {
    let pf = Postfix::start();
    let dir = tempfile::tempdir().unwrap();
    let servers = format!(
        "[server.good]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\n\n\
         [server.dead]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"none\"\nconnect_timeout = \"2s\"\n",
        pf.port(),
        closed_port()
    );
    let cfg = config(dir.path(), &servers);
    let (code, out, err) =
        smarthost(&["--config", cfg.to_str().unwrap(), "check-config", "--probe"]);
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("probe good: ok (127.0.0.1:"), "{out}");
    assert!(out.contains("probe dead: FAILED (connection)"), "{out}");
    // Without --probe nothing is contacted.
    let (code, _, _) = smarthost(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(code, Some(0));
}

/// A server offering AUTH PLAIN that echoes the client's AUTH line in its
/// 535 reply, as some do. Serves a bounded number of connections.
fn echoing_server() -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut w) = stream else { return };
            let _ = w.set_read_timeout(Some(WAIT));
            let mut r = BufReader::new(w.try_clone().unwrap());
            let _ = w.write_all(b"220 echo ESMTP\r\n");
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let cmd = line.trim_end().to_owned();
                line.clear();
                let reply = if cmd.starts_with("EHLO") {
                    "250-echo\r\n250 AUTH PLAIN LOGIN\r\n".to_owned()
                } else if cmd.starts_with("AUTH") {
                    format!("535 5.7.8 Authentication failed: {cmd}\r\n")
                } else if cmd.starts_with("QUIT") {
                    let _ = w.write_all(b"221 bye\r\n");
                    break;
                } else {
                    "250 ok\r\n".to_owned()
                };
                if w.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    port
}

#[test]
fn an_echoed_auth_blob_is_redacted_in_test_server_output() {
    use base64::Engine;
    let port = echoing_server();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[server.good]\nhost = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\nusername = \"relay\"\npassword = \"s3cret-pw\"\nauth = \"plain\"\n"
        ),
    );
    let (code, out, err) = smarthost(&[
        "--config",
        cfg.to_str().unwrap(),
        "test-server",
        "good",
        "--to",
        "b@y.test",
    ]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(out.contains("<redacted>"), "{out}");
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    for leak in [
        "s3cret-pw".to_owned(),
        b64(b"\0relay\0s3cret-pw"),
        b64(b"relay\0relay\0s3cret-pw"),
        b64(b"s3cret-pw"),
    ] {
        let leak = leak.trim_end_matches('=');
        assert!(!out.contains(leak), "{leak} in:\n{out}");
        assert!(!err.contains(leak), "{leak} in:\n{err}");
    }
}
