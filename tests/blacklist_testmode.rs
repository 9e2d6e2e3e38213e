//! Blacklists at RCPT (`reject` → 550 5.7.1, `drop` → accepted, not
//! delivered) and test mode (redirect, X-Original-To, subject prefix,
//! allow list), seen in the capture outbox.

mod common;

use common::relay::{Raw, TestRelay, simple_config};
use std::time::Duration;

fn config() -> String {
    simple_config(
        r#"
[tenant.store]
parent = "t"
blacklist = ["@closed.example"]
blacklist_action = "reject"
test_mode = { redirect_to = "qa@relay.test", subject_prefix = "[TEST] ", allow = ["@relay.test"] }

[application.store-app]
tenant = "store"
client_ips = ["127.0.0.2"]
"#,
    )
    .replace(
        "[tenant.t]\n",
        "[tenant.t]\nblacklist = [\"former@example.com\"]\n",
    )
    .replace(
        "default_server = \"outbox\"",
        "default_server = \"outbox\"\nblacklist = [\"@example.invalid\"]",
    )
}

#[test]
fn drop_and_reject() {
    let relay = TestRelay::start(&config());
    let mut c = Raw::connect(relay.addr("main"));
    c.expect("EHLO c", 250);
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    c.expect("RCPT TO:<keep@example.com>", 250);
    c.expect("RCPT TO:<Former@Example.com>", 250); // dropped by the tenant list
    c.expect("RCPT TO:<x@example.invalid>", 250); // dropped by the system list
    c.expect("DATA", 354);
    c.send(b"Subject: s\r\n\r\nb\r\n.\r\n");
    assert!(c.reply().starts_with("250 "));
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert_eq!(m.json["rcpt_to"], serde_json::json!(["keep@example.com"]));
    let r = m.json["recipients"].as_array().unwrap();
    assert_eq!(
        (r[1]["action"].as_str(), r[1]["list"].as_str()),
        (Some("drop"), Some("tenant t"))
    );
    assert_eq!(
        (r[2]["action"].as_str(), r[2]["list"].as_str()),
        (Some("drop"), Some("system"))
    );

    // Every recipient dropped: accepted, nothing delivered.
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    c.expect("RCPT TO:<former@example.com>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: s\r\n\r\nb\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 OK: accepted as"));
    assert_eq!(relay.captured().len(), 1);
}

#[test]
fn location_rejects_and_redirects_in_test_mode() {
    let relay = TestRelay::start(&config());
    let mut c = Raw::connect_from(relay.addr("main"), "127.0.0.2");
    c.expect("EHLO c", 250);
    c.expect("MAIL FROM:<till@legacy.test>", 250);
    assert_eq!(
        c.cmd("RCPT TO:<a@closed.example>"),
        "550 5.7.1 Recipient address rejected by policy\r\n"
    );
    c.expect("RCPT TO:<customer@example.com>", 250);
    c.expect("RCPT TO:<other@example.org>", 250);
    c.expect("RCPT TO:<boss@relay.test>", 250);
    c.expect("RCPT TO:<former@example.com>", 250); // the parent's list applies to the location
    c.expect("DATA", 354);
    c.send(b"Subject: Order 42\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250 "));
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert_eq!(m.json["application"], "store-app");
    assert_eq!(
        m.json["rcpt_to"],
        serde_json::json!(["qa@relay.test", "boss@relay.test"])
    );
    assert_eq!(
        m.header("X-Original-To").as_deref(),
        Some("<customer@example.com>, <other@example.org>")
    );
    assert_eq!(m.header("Subject").as_deref(), Some("[TEST] Order 42"));
}

#[test]
fn lookalike_domains_do_not_evade_a_blacklist() {
    // The tenant `store` rejects @closed.example; 127.0.0.2 is its app.
    let relay = TestRelay::start(&config());
    let mut c = Raw::connect_from(relay.addr("main"), "127.0.0.2");
    c.expect("EHLO c", 250);
    c.expect("MAIL FROM:<app@legacy.test>", 250);
    for rcpt in [
        "x@ｃｌｏｓｅｄ.example",         // fullwidth letters
        "x@closed。example",              // ideographic full stop
        "x@CLOSED.Example",               // case
        "x@ｃｌｏｓｅｄ．ｅｘａｍｐｌｅ", // fullwidth full stop too
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with("550 5.7.1"), "{rcpt}: {r}");
    }
}
