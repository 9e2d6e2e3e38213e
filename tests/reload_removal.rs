//! A reload does not drop applications because an include file is being
//! rewritten (issue 14 item 2): an emptied, missing or half-written file
//! whose application had traffic keeps the old config; a literal include
//! that is missing is an error; a clean removal goes live, and for a while
//! after it clients nobody knows get 4xx, never a bounce-inducing 5xx.

mod common;

use common::relay::{Raw, TestRelay};
use std::time::Duration;

const MAIN: &str = r#"
include = ["tenants/*.toml", "extra.toml"]

[system]
hostname = "relay.test"
default_server = "outbox"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[[listener]]
name = "optional"
address = "127.0.0.1:0"
auth = "optional"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.main]
sender = "sender@relay.test"

[application.local]
tenant = "main"
client_ips = ["127.0.0.1"]
"#;

const ACME: &str = r#"
[tenant.acme]
sender = "shop@acme.example"

[application.shop]
tenant = "acme"
client_ips = ["127.0.0.2"]

[application.pos]
tenant = "acme"
client_ips = ["127.0.0.3"]
"#;

const EXTRA: &str = "[tenant.extra]\nsender = \"x@extra.example\"\n";

fn start() -> TestRelay {
    // The include files are written into the relay's directory, then a
    // reload takes the full config.
    let relay = TestRelay::start(&MAIN.replace(
        "include = [\"tenants/*.toml\", \"extra.toml\"]",
        "include = []",
    ));
    let d = relay.dir.path();
    std::fs::create_dir_all(d.join("tenants")).unwrap();
    std::fs::write(d.join("tenants/acme.toml"), ACME).unwrap();
    std::fs::write(d.join("extra.toml"), EXTRA).unwrap();
    assert!(relay.reload_with(|_| MAIN.to_owned(), false));
    relay
}

/// One message from `from` on listener `main`; the reply to the dot.
fn send_from(relay: &TestRelay, from: &str) -> String {
    let mut c = Raw::connect_from(relay.addr("main"), from);
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(b"Subject: s\r\n\r\nb\r\n.\r\n");
    let r = c.reply();
    c.expect("QUIT", 221);
    r
}

fn reload(relay: &TestRelay) -> bool {
    relay.reload_with(|t| t, false)
}

#[test]
fn transient_include_states_keep_busy_applications() {
    let relay = start();
    let acme = relay.dir.path().join("tenants/acme.toml");
    assert!(send_from(&relay, "127.0.0.2").starts_with("250 "));

    // Emptied, then missing, then half-written: each reload is refused.
    std::fs::write(&acme, "").unwrap();
    assert!(!reload(&relay), "an emptied file dropped shop");
    std::fs::remove_file(&acme).unwrap();
    assert!(!reload(&relay), "a missing file dropped shop");
    std::fs::write(&acme, &ACME[..ACME.len() / 2]).unwrap();
    assert!(!reload(&relay), "a half-written file went live");
    // shop still sends.
    assert!(send_from(&relay, "127.0.0.2").starts_with("250 "));

    // A literal include that is missing is an error, not "no file".
    std::fs::write(&acme, ACME).unwrap();
    let extra = relay.dir.path().join("extra.toml");
    std::fs::remove_file(&extra).unwrap();
    assert!(!reload(&relay), "a missing literal include went unnoticed");
    std::fs::write(&extra, EXTRA).unwrap();
    assert!(reload(&relay));
    assert!(send_from(&relay, "127.0.0.2").starts_with("250 "));
}

#[test]
fn a_clean_removal_goes_live_and_unknown_clients_get_4xx_for_a_while() {
    let relay = start();
    let acme = relay.dir.path().join("tenants/acme.toml");
    assert!(send_from(&relay, "127.0.0.2").starts_with("250 "));
    // shop's definition removed from a file that still holds pos: clean.
    let without_shop = ACME.replace(
        "[application.shop]\ntenant = \"acme\"\nclient_ips = [\"127.0.0.2\"]\n",
        "",
    );
    std::fs::write(&acme, without_shop).unwrap();
    assert!(reload(&relay));
    // At connect (no AUTH, no binding): 421, not 554.
    let mut c = Raw::connect_no_greeting_from(relay.addr("main"), "127.0.0.2");
    assert_eq!(
        c.reply(),
        "421 4.7.1 Client not recognised at the moment, try again later\r\n"
    );
    // At MAIL on a listener with AUTH: 421, not 550.
    let mut c = Raw::connect_from(relay.addr("optional"), "127.0.0.2");
    c.expect("EHLO c", 250);
    assert_eq!(
        c.cmd("MAIL FROM:<a@legacy.test>"),
        "421 4.7.1 Client not recognised at the moment, try again later\r\n"
    );
    assert!(c.closed());
    // Known clients are not affected.
    assert!(send_from(&relay, "127.0.0.3").starts_with("250 "));
    assert_eq!(relay.wait_captured(2, Duration::from_secs(5)).len(), 2);
}
