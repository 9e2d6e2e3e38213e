//! `check-config` and `explain` as a user runs them: exit codes, the
//! `file:line: key: message` format, and explain's JSON for every example
//! application.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn smarthost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(args)
        .output()
        .expect("run smarthost")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")
}

#[test]
fn the_example_config_checks_out() {
    let out = smarthost(&["check-config", "--config", example().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

/// Writes the example config with one replacement applied and checks that
/// check-config refuses it with exit 64, naming file, line and key.
fn refused(from: &str, to: &str, key: &str, message: &str) {
    let text = std::fs::read_to_string(example()).unwrap();
    assert!(
        text.contains(from),
        "the example no longer contains {from:?}"
    );
    let bad = text.replacen(from, to, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, &bad).unwrap();
    // Relative paths (certificates) resolve against the config's directory.
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs"),
        dir.path().join("certs"),
    )
    .unwrap();
    let out = smarthost(&["check-config", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    let line_no = bad
        .lines()
        .position(|l| l.contains(to.lines().next().unwrap()))
        .unwrap()
        + 1;
    let want = format!("{}:{line_no}: {key}: ", path.display());
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no line starting with {want:?} in:\n{stderr}"));
    assert!(line.contains(message), "{line}");
}

#[test]
fn primary_equal_to_fallback_is_refused() {
    refused(
        "fallback = \"provider\"",
        "fallback = \"acme-smtp\"",
        "application.webshop.fallback",
        "primary and fallback are both \"acme-smtp\"",
    );
}

#[test]
fn a_missing_server_is_refused_naming_who_refers() {
    refused(
        "primary = \"acme-smtp\"                      # the head office's server",
        "primary = \"acme-smtpp\"",
        "application.pos.primary",
        "application \"pos\" refers to server \"acme-smtpp\", which is not defined",
    );
}

#[test]
fn cr_lf_in_a_display_name_is_refused() {
    refused(
        "display_name = \"ACME Webshop\"",
        "display_name = \"ACME Webshop\\r\\nBcc: everyone@example.com\"",
        "application.webshop.display_name",
        "control character",
    );
}

#[test]
fn every_error_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("multi.toml");
    std::fs::write(
        &path,
        "[system]\nhostnme = \"x\"\n[server.a]\nhost = \"h\"\nport = \"x\"\n[tenant.t]\n[application.b]\ntenant = \"t\"\nprimary = \"zz\"\n",
    )
    .unwrap();
    let out = smarthost(&["check-config", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    let p = path.display();
    for want in [
        format!("{p}:2: system.hostnme: unknown field"),
        format!("{p}:5: server.a.port: invalid type"),
        format!("{p}:9: application.b.primary: application \"b\" refers to server \"zz\""),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
}

fn explain(app: &str, from: &str, to: &[&str]) -> Value {
    let mut args = vec![
        "explain",
        "--config",
        example().to_str().unwrap().to_owned().leak(),
        "--app",
        app,
        "--from",
        from,
        "--json",
        "--to",
    ];
    args.extend_from_slice(to);
    let out = smarthost(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain --json prints JSON")
}

fn chain(v: &Value) -> Vec<&str> {
    v["server_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["server"].as_str().unwrap())
        .collect()
}

#[test]
fn explain_webshop() {
    let v = explain(
        "webshop",
        "orders@legacy.test",
        &[
            "customer@example.com",
            "Former@example.com",
            "x@example.invalid",
        ],
    );
    assert_eq!(v["application"], "webshop");
    assert_eq!(v["tenant"], "acme");
    assert_eq!(v["effective_sender"], "shop@acme.example");
    assert_eq!(v["display_name"], "ACME Webshop");
    assert_eq!(v["reply_to"], "support@acme.example");
    let r = v["recipients"].as_array().unwrap();
    assert_eq!(r[0]["action"], "deliver");
    assert_eq!(
        (r[1]["action"].as_str(), r[1]["list"].as_str()),
        (Some("drop"), Some("tenant acme"))
    );
    assert_eq!(
        (r[2]["action"].as_str(), r[2]["list"].as_str()),
        (Some("drop"), Some("system"))
    );
    assert_eq!(v["deliver_to"], serde_json::json!(["customer@example.com"]));
    assert_eq!(chain(&v), ["acme-smtp", "provider"]);
    // The provider has a fixed sender: only the display name is the shop's there.
    let hop2 = &v["server_chain"][1];
    assert_eq!(hop2["envelope_from"], "no-reply@provider.example");
    assert!(
        hop2["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "From: ACME Webshop <no-reply@provider.example>")
    );
}

#[test]
fn explain_pos_location_in_test_mode() {
    let v = explain(
        "pos",
        "till@legacy.test",
        &[
            "customer@example.com",
            "manager@acme.example",
            "a@closed-store.example",
        ],
    );
    assert_eq!(v["tenant"], "acme-berlin");
    assert_eq!(
        v["tenant_chain"],
        serde_json::json!(["acme-berlin", "acme"])
    );
    assert_eq!(v["effective_sender"], "info@acme.example");
    assert_eq!(v["display_name"], "ACME Berlin Kasse");
    assert_eq!(v["reply_to"], "service@acme.example");
    assert_eq!(v["test_mode"]["redirect_to"], "qa@acme.example");
    let r = v["recipients"].as_array().unwrap();
    assert_eq!(
        (r[0]["action"].as_str(), r[0]["to"].as_str()),
        (Some("redirect"), Some("qa@acme.example"))
    );
    assert_eq!(r[1]["action"], "deliver");
    assert_eq!(
        (r[2]["action"].as_str(), r[2]["list"].as_str()),
        (Some("reject"), Some("tenant acme-berlin"))
    );
    assert_eq!(
        v["deliver_to"],
        serde_json::json!(["qa@acme.example", "manager@acme.example"])
    );
    assert_eq!(chain(&v), ["acme-smtp", "provider"]);
    let headers = v["server_chain"][0]["headers"].as_array().unwrap();
    assert!(headers.contains(&Value::from("X-Original-To: <customer@example.com>")));
    assert!(headers.contains(&Value::from("Subject: [TEST] explain")));
}

#[test]
fn explain_scanner_by_client_ip() {
    let out = smarthost(&[
        "explain",
        "--config",
        example().to_str().unwrap(),
        "--client-ip",
        "10.1.44.5",
        "--from",
        "dev@legacy.test",
        "--to",
        "customer@example.com",
        "--json",
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["application"], "scanner");
    assert_eq!(v["identified_by"], "client_ip");
    assert_eq!(v["effective_sender"], "scanner@acme.example");
    assert!(
        v["test_mode"].is_null(),
        "the application switches test mode off"
    );
    assert_eq!(v["recipients"][0]["action"], "deliver");
    assert_eq!(v["reply_to"], "service@acme.example");
    // A route applies when the client's sender matches it.
    let out = smarthost(&[
        "explain",
        "--config",
        example().to_str().unwrap(),
        "--auth-user",
        "webshop",
        "--from",
        "invoice@billing.acme.example",
        "--to",
        "c@example.com",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["identified_by"], "auth_user");
    assert_eq!(chain(&v), ["acme-billing", "acme-smtp", "provider"]);
}

#[test]
fn explain_unidentified_client() {
    let out = smarthost(&[
        "explain",
        "--config",
        example().to_str().unwrap(),
        "--client-ip",
        "203.0.113.9",
        "--from",
        "a@b.test",
        "--to",
        "c@d.test",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["application"].is_null());
    // The first listener (submission) offers AUTH after STARTTLS: the
    // relay answers 530 there, not 550 (tests/cli_output.rs has more).
    assert_eq!(v["refused"]["reason"], "auth_required");
    assert_eq!(v["listener"], "submission");
}

#[test]
fn explain_text_output() {
    let out = smarthost(&[
        "explain",
        "--config",
        example().to_str().unwrap(),
        "--app",
        "webshop",
        "--from",
        "a@legacy.test",
        "--to",
        "b@example.com",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("application:    webshop"), "{text}");
    assert!(text.contains("1. acme-smtp"), "{text}");
}

#[test]
fn hash_password_round_trips() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(smarthost::auth::verify_password(
        hash.trim(),
        "correct horse"
    ));
    assert!(!smarthost::auth::verify_password(
        hash.trim(),
        "correct horse\n"
    ));
}

#[test]
fn many_public_eights_that_add_up_to_the_internet_are_refused() {
    // Each /8 alone passes the per-entry check; together they are an
    // open relay (issue 14 item 7).
    let eights: Vec<String> = (1..=223u8)
        .filter(|i| ![10, 127].contains(i))
        .map(|i| format!("\"{i}.0.0.0/8\""))
        .collect();
    refused(
        "client_ips = [\"10.1.0.0/16\", \"192.0.2.10\"]",
        &format!("client_ips = [{}]", eights.join(", ")),
        "application.scanner.client_ips",
        "spans more public addresses than a /8",
    );
}

#[test]
fn a_few_narrow_public_networks_pass() {
    let text = std::fs::read_to_string(example()).unwrap().replacen(
        "client_ips = [\"10.1.0.0/16\", \"192.0.2.10\"]",
        "client_ips = [\"10.1.0.0/16\", \"192.0.2.10\", \"198.51.100.0/24\", \"44.0.0.0/9\"]",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, &text).unwrap();
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs"),
        dir.path().join("certs"),
    )
    .unwrap();
    let out = smarthost(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A spool the relay may not write (here under /sys; under the shipped
/// unit, `/etc/smarthost/spool`) stops `run` at once, with a message that
/// says which directory is writable there.
#[test]
fn run_refuses_a_spool_it_cannot_write_and_says_where_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("smarthost.toml");
    let text = common::relay::simple_config("").replace(
        "[system]\n",
        "[system]\nspool = \"/sys/smarthost-test-spool\"\n",
    );
    assert!(
        text.contains("spool = "),
        "the helper's [system] table moved"
    );
    std::fs::write(&cfg, text).unwrap();
    let out = smarthost(&["run", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("/sys/smarthost-test-spool"), "{err}");
    assert!(
        err.contains(r#"spool = "/var/lib/smarthost/spool""#),
        "{err}"
    );
}
