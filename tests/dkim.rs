//! DKIM signing, checked by an independent verifier (Python dkimpy, with
//! PyNaCl for Ed25519): relayed messages with 8-bit bodies and long
//! non-ASCII display names, RSA and Ed25519 keys, a spooled body, the
//! parent-domain key, and failover to a server with a fixed sender in
//! another domain (that domain's key signs, or nothing does). The DNS
//! records come from `smarthost dkim-record --json`.

mod common;

use common::relay::{Captured, Raw, TestRelay};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Generates a PEM key with openssl: `rsa` or `ed25519`.
fn genkey(dir: &Path, name: &str, alg: &str) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("openssl");
    cmd.arg("genpkey");
    if alg == "rsa" {
        cmd.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    } else {
        cmd.args(["-algorithm", "ED25519"]);
    }
    let out = cmd.arg("-out").arg(&path).output().expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// An upstream that refuses every session at the greeting (421), in-process.
fn failing_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(b"421 4.3.2 busy, try later\r\n");
            let mut b = [0u8; 64];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut b);
        }
    });
    port
}

fn config(keys: &Path, failing: u16) -> String {
    config_with(keys, failing, "")
}

/// [`config`] with `extra` TOML appended.
fn config_with(keys: &Path, failing: u16, extra: &str) -> String {
    format!(
        r#"
[system]
hostname = "relay.test"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[limits]
memory_threshold = "64KB"

[server.outbox]
kind = "capture"
path = "outbox"

[server.dead]
host = "127.0.0.1"
port = {failing}
security = "none"
connect_timeout = "2s"
command_timeout = "2s"

[server.provider]
kind = "capture"
path = "provider"
sender = "no-reply@provider.example"

[server.nokey]
kind = "capture"
path = "nokey"
sender = "no-reply@unsigned.example"

[tenant.acme]
sender = "shop@acme.example"

[tenant.ed]
sender = "info@ed.example"

[tenant.other]
sender = "info@other.example"

[application.shop]
tenant = "acme"
client_ips = ["127.0.0.1"]
primary = "outbox"
display_name = "Bäckerei Müller – Filiale Zürich Hauptbahnhof Nord, Öffnungszeiten täglich von früh bis spät"

[application.sub]
tenant = "acme"
client_ips = ["127.0.0.2"]
primary = "outbox"
sender = "news@mail.acme.example"

[application.edapp]
tenant = "ed"
client_ips = ["127.0.0.3"]
primary = "outbox"
display_name = "Édition Spéciale"

[application.failover]
tenant = "acme"
client_ips = ["127.0.0.4"]
primary = "dead"
fallback = "provider"

[application.failover-unsigned]
tenant = "acme"
client_ips = ["127.0.0.5"]
primary = "dead"
fallback = "nokey"

[application.other]
tenant = "other"
client_ips = ["127.0.0.6"]
primary = "outbox"
sender = "spoof@acme.example"

[[dkim]]
domain = "acme.example"
selector = "s2026"
private_key = {{ file = "{acme}" }}
tenant = "acme"

[[dkim]]
domain = "ed.example"
selector = "ed1"
private_key = {{ file = "{ed}" }}

[[dkim]]
domain = "provider.example"
selector = "relay"
private_key = {{ file = "{provider}" }}
{extra}
"#,
        acme = genkey(keys, "acme.pem", "rsa").display(),
        ed = genkey(keys, "ed.pem", "ed25519").display(),
        provider = genkey(keys, "provider.pem", "rsa").display(),
    )
}

/// `smarthost dkim-record --json` for the relay's config file.
fn records(relay: &TestRelay) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["dkim-record", "--json", "--config"])
        .arg(relay.dir.path().join("smarthost.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// dkimpy's verdict on `eml` with the DNS answers from `records`.
fn dkimpy_verifies(eml: &[u8], records: &Value) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, eml).unwrap();
    let script = r#"
import sys, json, dkim
recs = {r["name"]: r["value"].encode() for r in json.loads(sys.argv[2])}
def dns(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    return recs.get(n.rstrip("."))
msg = open(sys.argv[1], "rb").read()
print("PASS" if dkim.verify(msg, dnsfunc=dns) else "FAIL")
"#;
    // Debian's python3-dkim lives in the system Python (not a pyenv one).
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&msg)
        .arg(records.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "dkimpy is not installed (tests/run.sh installs python3-dkim, python3-nacl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim() == "PASS"
}

fn send(relay: &TestRelay, from_ip: &str, body: &[u8]) {
    let mut c = Raw::connect_from(relay.addr("main"), from_ip);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<app@legacy.test> BODY=8BITMIME", 250);
    c.expect("RCPT TO:<rcpt@example.com>", 250);
    c.expect("DATA", 354);
    let mut data = "From: Legacy App <app@legacy.test>\r\nTo: <rcpt@example.com>\r\nSubject: Grüße aus der Backstube\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".as_bytes().to_vec();
    data.extend_from_slice(body);
    data.extend_from_slice(b".\r\n");
    c.send(&data);
    let r = c.reply();
    assert!(r.starts_with("250 "), "{r}");
    c.cmd("QUIT");
}

fn one(relay: &TestRelay, dir: &str, n: usize) -> Captured {
    let path = relay.dir.path().join(dir);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = TestRelay::captured_in(&path);
        if c.len() >= n || std::time::Instant::now() > end {
            assert_eq!(c.len(), n, "messages in {dir}");
            return c.into_iter().last().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signature(m: &Captured) -> String {
    m.header("DKIM-Signature").expect("no DKIM-Signature")
}

const BODY: &[u8] =
    "Frische Brötchen, Käsekuchen und Spätzle – heute für 3,50 €.\r\n\r\nGrüße\r\n".as_bytes();

#[test]
fn rsa_signature_on_an_8bit_message_with_a_long_non_ascii_name_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&config(keys.path(), failing_upstream()));
    let recs = records(&relay);
    send(&relay, "127.0.0.1", BODY);
    let m = one(&relay, "outbox", 1);
    assert!(
        m.eml.starts_with(b"DKIM-Signature: "),
        "the signature goes on top"
    );
    let sig = signature(&m);
    assert!(
        sig.contains("a=rsa-sha256") && sig.contains("d=acme.example"),
        "{sig}"
    );
    assert!(
        sig.contains("s=s2026") && sig.contains("c=relaxed/relaxed"),
        "{sig}"
    );
    // From is oversigned: listed once more than it occurs (a From added
    // later breaks the signature wherever it is put).
    let h = sig
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .replace([' ', '\t'], "");
    assert_eq!(h.to_ascii_lowercase().matches("from").count(), 2, "{h}");
    // The relay adds the missing Date and Message-ID (RFC 6409 §8) before
    // signing, so they are signed too.
    assert!(h.to_ascii_lowercase().contains("message-id"), "{h}");
    assert!(h.to_ascii_lowercase().contains("date"), "{h}");
    assert!(
        m.header("From").unwrap().contains("=?utf-8?"),
        "the long name is encoded"
    );
    assert!(dkimpy_verifies(&m.eml, &recs));
    // A changed byte in the body breaks it: the check can fail.
    let mut tampered = m.eml.clone();
    let j = tampered.len() - 5;
    tampered[j] = b'X';
    assert!(!dkimpy_verifies(&tampered, &recs));
}

#[test]
fn ed25519_signature_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&config(keys.path(), failing_upstream()));
    let recs = records(&relay);
    send(&relay, "127.0.0.3", BODY);
    let m = one(&relay, "outbox", 1);
    let sig = signature(&m);
    assert!(
        sig.contains("a=ed25519-sha256") && sig.contains("d=ed.example"),
        "{sig}"
    );
    assert!(dkimpy_verifies(&m.eml, &recs));
}

#[test]
fn a_spooled_body_and_a_subdomain_sender_use_the_parent_domain_key() {
    let keys = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&config(keys.path(), failing_upstream()));
    let recs = records(&relay);
    // 400 KB: well past the 64 KB memory threshold, so the body is hashed
    // from the spool file piece by piece.
    let mut body = Vec::new();
    for i in 0..8000 {
        body.extend_from_slice(format!("Zeile {i}: Äpfel, Birnen und Bücher   \t \r\n").as_bytes());
    }
    send(&relay, "127.0.0.2", &body);
    let m = one(&relay, "outbox", 1);
    assert!(m.eml.len() > 300_000);
    let sig = signature(&m);
    assert!(sig.contains("d=acme.example"), "{sig}");
    assert!(m.header("From").unwrap().contains("news@mail.acme.example"));
    assert!(dkimpy_verifies(&m.eml, &recs));
}

#[test]
fn failover_to_a_fixed_sender_in_another_domain_gets_that_domains_signature_or_none() {
    let keys = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&config(keys.path(), failing_upstream()));
    let recs = records(&relay);
    send(&relay, "127.0.0.4", BODY);
    let m = one(&relay, "provider", 1);
    assert!(
        m.header("From")
            .unwrap()
            .contains("no-reply@provider.example")
    );
    let sig = signature(&m);
    assert!(
        sig.contains("d=provider.example") && sig.contains("s=relay"),
        "{sig}"
    );
    assert!(dkimpy_verifies(&m.eml, &recs));

    // No key for the fallback's domain: no signature at all (never the
    // primary's domain on another domain's From).
    send(&relay, "127.0.0.5", BODY);
    let m = one(&relay, "nokey", 1);
    assert!(
        m.header("From")
            .unwrap()
            .contains("no-reply@unsigned.example")
    );
    assert!(m.header("DKIM-Signature").is_none());
}

#[test]
fn failover_to_an_smtp_upstream_delivers_a_signature_that_verifies() {
    let sink = common::postfix::SmtpSink::start();
    let keys = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"
[server.sink]
host = "127.0.0.1"
port = {}
security = "none"
sender = "no-reply@provider.example"
display_name = "Provider Relay für Bäckereien und Konditoreien in der ganzen Region"

[application.failover-smtp]
tenant = "acme"
client_ips = ["127.0.0.7"]
primary = "dead"
fallback = "sink"
"#,
        sink.port()
    );
    let relay = TestRelay::start(&config_with(keys.path(), failing_upstream(), &extra));
    let recs = records(&relay);
    send(&relay, "127.0.0.7", BODY);
    let got = sink.wait_for_messages(1, Duration::from_secs(20));
    let m = &got[0];
    assert_eq!(m.mail_from, "no-reply@provider.example");
    assert!(
        m.header("DKIM-Signature")
            .unwrap()
            .contains("d=provider.example")
    );
    let kaese = "Käsekuchen".as_bytes();
    assert!(
        m.data.windows(kaese.len()).any(|w| w == kaese),
        "the 8-bit body arrived as it was"
    );
    assert!(dkimpy_verifies(&m.data, &recs));
}

#[test]
fn explain_names_the_key_of_each_hop() {
    let keys = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&config(keys.path(), failing_upstream()));
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args([
            "explain",
            "--json",
            "--app",
            "failover-unsigned",
            "--from",
            "a@legacy.test",
            "--to",
            "b@example.com",
            "--config",
        ])
        .arg(relay.dir.path().join("smarthost.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hops: Vec<(&str, &Value)> = v["server_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["server"].as_str().unwrap(), &h["dkim"]))
        .collect();
    assert_eq!(
        hops,
        [
            ("dead", &Value::from("d=acme.example s=s2026")),
            ("nokey", &Value::Null)
        ]
    );
}

#[test]
fn a_tenant_key_never_signs_another_tenants_mail() {
    let keys = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&config(keys.path(), failing_upstream()));
    // Tenant "other" sends as spoof@acme.example: acme's key is acme's own.
    send(&relay, "127.0.0.6", BODY);
    let m = one(&relay, "outbox", 1);
    assert!(m.header("From").unwrap().contains("spoof@acme.example"));
    assert!(m.header("DKIM-Signature").is_none());
}

#[test]
fn dkim_record_prints_the_txt_records() {
    let keys = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(&config(keys.path(), failing_upstream()));
    let recs = records(&relay);
    let names: Vec<&str> = recs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "s2026._domainkey.acme.example",
            "ed1._domainkey.ed.example",
            "relay._domainkey.provider.example"
        ]
    );
    assert!(
        recs[0]["value"]
            .as_str()
            .unwrap()
            .starts_with("v=DKIM1; k=rsa; p=MIIBIjAN")
    );
    assert!(
        recs[1]["value"]
            .as_str()
            .unwrap()
            .starts_with("v=DKIM1; k=ed25519; p=")
    );
    // The public key matches the private key openssl made.
    let pubkey = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(keys.path().join("acme.pem"))
        .output()
        .unwrap()
        .stdout;
    use base64::Engine;
    let p = base64::engine::general_purpose::STANDARD.encode(pubkey);
    assert_eq!(recs[0]["value"], format!("v=DKIM1; k=rsa; p={p}"));
    // The zone-file form splits the value into strings of at most 255.
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["dkim-record", "--config"])
        .arg(relay.dir.path().join("smarthost.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("s2026._domainkey.acme.example. IN TXT ( \"v=DKIM1; k=rsa; p="),
        "{first}"
    );
    assert!(first.split('"').all(|s| s.len() <= 255));
}
