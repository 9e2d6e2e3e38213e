//! Per-server sender identity (a server's fixed sender, display name and
//! Reply-To win over the application's, tenant's and system's) and route
//! sender keeping (a route that matched the client's sender keeps it,
//! unless the route's server has a fixed sender); `explain` names the
//! source of each value.

mod common;

use common::relay::{Raw, TestRelay};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const CONFIG: &str = r#"
[system]
hostname = "relay.test"
default_server = "outbox"
display_name = "System Name"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.outbox]
kind = "capture"
path = "outbox"

[server.provider]
kind = "capture"
path = "provider"
sender = "no-reply@provider.example"
display_name = "ACME via Provider"
reply_to = "service@acme.example"

[server.billing]
kind = "capture"
path = "billing"
tenant = "acme"

[server.billing-fixed]
kind = "capture"
path = "billing-fixed"
tenant = "acme"
sender = "fixed@provider.example"

[tenant.acme]
sender = "info@acme.example"
reply_to = "tenant-reply@acme.example"

[application.shop]
tenant = "acme"
client_ips = ["127.0.0.1"]
display_name = "ACME Shop"
sender = "shop@acme.example"

[application.pos]
tenant = "acme"
client_ips = ["127.0.0.2"]
primary = "provider"

[[route]]
sender = "@billing.acme.example"
server = "billing"

[[route]]
sender = "invoices@fixed.acme.example"
server = "billing-fixed"
"#;

fn send(relay: &TestRelay, from_ip: &str, mail_from: &str, from_header: &str) {
    let mut c = Raw::connect_from(relay.addr("main"), from_ip);
    c.begin(mail_from, &["rcpt@example.com"]);
    c.send(
        format!(
            "From: {from_header}\r\nTo: <rcpt@example.com>\r\nSubject: id\r\n\r\nbody\r\n.\r\n"
        )
        .as_bytes(),
    );
    let r = c.reply();
    assert!(r.starts_with("250 "), "{r}");
    c.cmd("QUIT");
}

fn one(relay: &TestRelay, dir: &str) -> common::relay::Captured {
    let path = relay.dir.path().join(dir);
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = TestRelay::captured_in(&path);
        if !c.is_empty() || std::time::Instant::now() > end {
            assert_eq!(c.len(), 1, "messages in {dir}");
            return c.remove(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn server_identity_wins_over_application_tenant_and_system() {
    let relay = TestRelay::start(CONFIG);
    // pos has no identity of its own; its primary server fixes all three.
    send(
        &relay,
        "127.0.0.2",
        "pos@legacy.test",
        "Till 3 <pos@legacy.test>",
    );
    let m = one(&relay, "provider");
    assert_eq!(m.json["mail_from"], "no-reply@provider.example");
    assert_eq!(
        m.header("From").unwrap(),
        "ACME via Provider <no-reply@provider.example>"
    );
    assert_eq!(m.header("Reply-To").unwrap(), "<service@acme.example>");

    // shop: application sender and name, tenant Reply-To (system name unused).
    send(
        &relay,
        "127.0.0.1",
        "shop@legacy.test",
        "Web <shop@legacy.test>",
    );
    let m = one(&relay, "outbox");
    assert_eq!(m.json["mail_from"], "shop@acme.example");
    assert_eq!(m.header("From").unwrap(), "ACME Shop <shop@acme.example>");
    assert_eq!(m.header("Reply-To").unwrap(), "<tenant-reply@acme.example>");
}

#[test]
fn a_route_keeps_the_sender_it_matched() {
    let relay = TestRelay::start(CONFIG);
    send(
        &relay,
        "127.0.0.1",
        "invoices@billing.acme.example",
        "Invoices <invoices@billing.acme.example>",
    );
    let m = one(&relay, "billing");
    assert_eq!(m.json["mail_from"], "invoices@billing.acme.example");
    // The address stays; the application's display name still applies.
    assert_eq!(
        m.header("From").unwrap(),
        "ACME Shop <invoices@billing.acme.example>"
    );
    assert!(m.header("Sender").is_none());

    // A route whose server has a fixed sender: that one wins.
    send(
        &relay,
        "127.0.0.1",
        "invoices@fixed.acme.example",
        "<invoices@fixed.acme.example>",
    );
    let m = one(&relay, "billing-fixed");
    assert_eq!(m.json["mail_from"], "fixed@provider.example");
    assert_eq!(
        m.header("From").unwrap(),
        "ACME Shop <fixed@provider.example>"
    );
    assert_eq!(m.header("Reply-To").unwrap(), "<tenant-reply@acme.example>");
}

fn explain(dir: &std::path::Path, args: &[&str]) -> Value {
    let path = dir.join("explain.toml");
    std::fs::write(
        &path,
        CONFIG.replace("path = \"", &format!("path = \"{}/", dir.display())),
    )
    .unwrap();
    let mut all = vec!["explain", "--config", path.to_str().unwrap(), "--json"];
    all.extend_from_slice(args);
    let out = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(&all)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn explain_names_the_source_of_each_value() {
    let dir = tempfile::tempdir().unwrap();
    let v = explain(
        dir.path(),
        &[
            "--app",
            "pos",
            "--from",
            "pos@legacy.test",
            "--to",
            "a@example.com",
        ],
    );
    assert_eq!(
        v["sources"]["sender"],
        serde_json::json!({"kind": "server", "name": "provider"})
    );
    assert_eq!(v["sources"]["display_name"]["kind"], "server");
    assert_eq!(v["sources"]["reply_to"]["kind"], "server");
    assert_eq!(v["display_name"], "ACME via Provider");
    // The second hop (system default) falls back to tenant and system.
    let hop = &v["server_chain"][1];
    assert_eq!(hop["server"], "outbox");
    assert_eq!(hop["identity"]["sender"]["value"], "info@acme.example");
    assert_eq!(
        hop["identity"]["sender"]["source"],
        serde_json::json!({"kind": "tenant", "name": "acme"})
    );
    assert_eq!(hop["identity"]["display_name"]["source"]["kind"], "system");

    let v = explain(
        dir.path(),
        &[
            "--app",
            "shop",
            "--from",
            "x@billing.acme.example",
            "--to",
            "a@example.com",
        ],
    );
    assert_eq!(v["effective_sender"], "x@billing.acme.example");
    assert_eq!(
        v["sources"]["sender"],
        serde_json::json!({"kind": "route", "name": "@billing.acme.example"})
    );
    assert_eq!(
        v["sources"]["display_name"],
        serde_json::json!({"kind": "application", "name": "shop"})
    );
    assert_eq!(
        v["server_chain"][0]["envelope_from"],
        "x@billing.acme.example"
    );
}
