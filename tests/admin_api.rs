//! The admin API through the real binary: every `/api/v1/` endpoint is 401
//! without the token and with a wrong one, and answers the documented
//! JSON with the right one; `/metrics`, `/healthz`, `/readyz` stay open; a
//! runtime blacklist entry takes effect on the next RCPT and survives a
//! reload and a restart; a file entry cannot be removed; every change
//! leaves an audit line; the token never appears in the log.

mod common;

use common::admin::{api, request};
use common::postfix::free_port;
use common::process::Proc;
use common::relay::{Raw, TestRelay};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "SENTINEL-admin-token-5d1f0c";

fn config(admin_port: u16) -> String {
    format!(
        r#"
[system]
hostname = "relay.test"
default_server = "outbox"
blacklist = ["@file.example"]
blacklist_action = "reject"

[admin]
address = "127.0.0.1:{admin_port}"
token = "{TOKEN}"

[reload]
watch = false

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.outbox]
kind = "capture"
path = "outbox"

[server.limited]
kind = "capture"
path = "outbox-limited"
limit = "100/day"
limit_counts = "recipients"

[tenant.t]
sender = "sender@relay.test"
blacklist = ["former@tenant.example"]

[tenant.qa]
display_name = "QA Team"
test_mode = {{ redirect_to = "qa@relay.test", subject_prefix = "[TEST] " }}

[application.app]
tenant = "t"
client_ips = ["127.0.0.1"]

[application.tester]
tenant = "qa"
client_ips = ["127.0.0.2"]
"#
    )
}

struct Daemon {
    proc: Proc,
    admin: SocketAddr,
    port: u16,
}

impl Daemon {
    fn start() -> Daemon {
        let port = free_port();
        Daemon {
            proc: Proc::start(&config(port)),
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
            port,
        }
    }

    fn restart(self) -> Daemon {
        let dir = self.proc.stop();
        Daemon {
            proc: Proc::start_in(dir, &config(self.port)),
            ..self
        }
    }

    fn get(&self, path: &str) -> Value {
        let r = api(self.admin, "GET", path, Some(TOKEN), None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    fn send(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let r = api(self.admin, method, path, Some(TOKEN), body);
        (r.status, r.json())
    }

    fn rcpt(&self, to: &str) -> u16 {
        let mut c = Raw::connect(self.proc.addr("main"));
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<a@legacy.test>", 250);
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        c.cmd("QUIT");
        r[..3].parse().unwrap()
    }

    fn assert_no_token_in_log(&self) {
        let log = self.proc.log().join("\n");
        assert!(!log.contains(TOKEN), "the admin token is in the log");
    }
}

/// Every API endpoint with a body it would accept.
const ENDPOINTS: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/api/v1/servers", None),
    (
        "POST",
        "/api/v1/servers/outbox/test",
        Some(r#"{"to":"someone@example.com"}"#),
    ),
    ("GET", "/api/v1/limits", None),
    ("POST", "/api/v1/limits/limited/reset", None),
    ("GET", "/api/v1/blacklist", None),
    (
        "POST",
        "/api/v1/blacklist",
        Some(r#"{"entry":"x@y.example"}"#),
    ),
    ("DELETE", "/api/v1/blacklist?entry=x@y.example", None),
    ("GET", "/api/v1/test-mode", None),
    ("GET", "/api/v1/deliveries", None),
    ("GET", "/api/v1/status", None),
    ("POST", "/api/v1/reload", None),
    ("GET", "/api/v1/queue", None),
    ("GET", "/api/v1/queue/q1", None),
    ("POST", "/api/v1/queue/q1/retry", None),
    ("POST", "/api/v1/queue/retry-all", None),
    ("DELETE", "/api/v1/queue/q1", None),
    ("POST", "/api/v1/queue/q1/hold", None),
    ("POST", "/api/v1/queue/q1/release", None),
];

#[test]
fn every_endpoint_is_401_without_or_with_a_wrong_token() {
    let d = Daemon::start();
    let wrong = format!("{TOKEN}x");
    for (method, path, body) in ENDPOINTS {
        for token in [None, Some(wrong.as_str()), Some(""), Some(&TOKEN[..10])] {
            let r = api(d.admin, method, path, token, *body);
            assert_eq!(r.status, 401, "{method} {path} with {token:?}: {}", r.body);
            assert!(r.json()["error"].is_string());
        }
        // The token as HTTP Basic password is for the status page only.
        let r = request(
            d.admin,
            method,
            path,
            &[(
                "Authorization",
                "Basic dXNlcjpTRU5USU5FTC1hZG1pbi10b2tlbi01ZDFmMGM=",
            )],
            body.map(|b| ("application/json", b)),
        );
        assert_eq!(r.status, 401, "{method} {path} with Basic");
    }
    // The open endpoints need nothing.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            request(d.admin, "GET", path, &[], None).status,
            200,
            "{path}"
        );
    }
    d.assert_no_token_in_log();
}

#[test]
fn documented_json_with_the_right_token() {
    let d = Daemon::start();
    // One delivery first, for `deliveries`.
    let mut c = Raw::connect(d.proc.addr("main"));
    c.begin("a@legacy.test", &["customer@example.com"]);
    c.send(b"Subject: hello\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250 "));
    c.cmd("QUIT");

    let servers = d.get("/api/v1/servers");
    assert_eq!(
        servers,
        json!([
            {"name": "limited", "kind": "capture", "tenant": null, "health": "up", "limit_remaining": 100, "last_error": null},
            {"name": "outbox", "kind": "capture", "tenant": null, "health": "up", "limit_remaining": null, "last_error": null},
        ])
    );

    let (status, r) = d.send(
        "POST",
        "/api/v1/servers/outbox/test",
        Some(r#"{"to":"someone@example.com","from":"ops@relay.test"}"#),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["ok"], true);
    assert_eq!(r["server"], "outbox");
    let captured = TestRelay::captured_in(&d.proc.dir.path().join("outbox"));
    assert_eq!(captured.len(), 2);
    assert!(
        captured
            .iter()
            .any(|m| m.json["rcpt_to"] == json!(["someone@example.com"])
                && String::from_utf8_lossy(&m.eml).contains("smarthost test message via outbox"))
    );
    let (status, r) = d.send(
        "POST",
        "/api/v1/servers/nope/test",
        Some(r#"{"to":"a@b.example"}"#),
    );
    assert_eq!(
        (status, r["error"].as_str().unwrap()),
        (404, "no server named \"nope\"")
    );
    let (status, _) = d.send(
        "POST",
        "/api/v1/servers/outbox/test",
        Some(r#"{"to":"not an address"}"#),
    );
    assert_eq!(status, 400);

    assert_eq!(
        d.get("/api/v1/limits"),
        json!([{"server": "limited", "limit": "100/day", "window_secs": 86400, "counts": "recipients", "used": 0, "remaining": 100, "resets_in_secs": 0}])
    );
    assert_eq!(
        d.send("POST", "/api/v1/limits/limited/reset", None),
        (200, json!({"ok": true}))
    );
    assert_eq!(d.send("POST", "/api/v1/limits/outbox/reset", None).0, 409);
    assert_eq!(d.send("POST", "/api/v1/limits/nope/reset", None).0, 404);

    assert_eq!(
        d.get("/api/v1/blacklist"),
        json!([
            {"entry": "@file.example", "action": "reject", "scope": "system", "source": "file"},
            {"entry": "former@tenant.example", "action": "drop", "scope": "t", "source": "file"},
        ])
    );
    assert_eq!(
        d.get("/api/v1/blacklist?tenant=t"),
        json!([{"entry": "former@tenant.example", "action": "drop", "scope": "t", "source": "file"}])
    );
    assert_eq!(d.send("GET", "/api/v1/blacklist?tenant=nope", None).0, 404);

    assert_eq!(
        d.get("/api/v1/test-mode"),
        json!([
            {"kind": "tenant", "name": "qa", "display_name": "QA Team", "redirect_to": "qa@relay.test", "subject_prefix": "[TEST] "},
            {"kind": "application", "name": "tester", "display_name": "QA Team", "redirect_to": "qa@relay.test", "subject_prefix": "[TEST] "},
        ])
    );

    let deliveries = d.get("/api/v1/deliveries");
    let list = deliveries.as_array().unwrap();
    assert_eq!(list.len(), 1, "{deliveries}");
    assert_eq!(list[0]["application"], "app");
    assert_eq!(list[0]["server"], "outbox");
    assert_eq!(list[0]["outcome"], "delivered");
    assert_eq!(list[0]["rcpts"], 1);
    assert!(list[0]["id"].as_str().is_some_and(|i| !i.is_empty()));

    let status = d.get("/api/v1/status");
    assert_eq!(status["servers"], servers);
    assert_eq!(
        status["queue"],
        // The queue always exists: in direct mode it carries the DSNs.
        json!({"depth": 0, "oldest_age_secs": null, "enabled": true})
    );
    assert_eq!(status["test_mode"].as_array().unwrap().len(), 2);

    let (code, r) = d.send("POST", "/api/v1/reload", None);
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["ok"], true);
    assert!(r["hash"].as_str().is_some_and(|h| h.len() == 64));

    // The queue exists in direct mode too (it carries the DSNs): empty
    // here, and an unknown id is 404.
    for (method, path, body) in ENDPOINTS.iter().filter(|e| e.1.contains("/queue")) {
        let r = api(d.admin, method, path, Some(TOKEN), *body);
        match *path {
            "/api/v1/queue" => assert_eq!((r.status, r.json()), (200, json!([]))),
            "/api/v1/queue/retry-all" => assert_eq!(r.status, 200, "{method} {path}"),
            _ => {
                assert_eq!(r.status, 404, "{method} {path}");
                assert!(
                    r.json()["error"]
                        .as_str()
                        .unwrap()
                        .contains("no queued message")
                );
            }
        }
    }
    // Unknown endpoints and oversized bodies.
    assert_eq!(
        api(d.admin, "GET", "/api/v1/nope", Some(TOKEN), None).status,
        404
    );
    let big = format!(r#"{{"entry":"{}@x.example"}}"#, "a".repeat(100_000));
    assert_eq!(
        api(
            d.admin,
            "POST",
            "/api/v1/blacklist",
            Some(TOKEN),
            Some(&big)
        )
        .status,
        413
    );

    let log = d.proc.log().join("\n");
    for what in ["test mail", "limits reset", "reload"] {
        assert!(
            log.contains(&format!("who=\"admin api\" what=\"{what}\"")),
            "no audit line for {what}:\n{log}"
        );
    }
    d.assert_no_token_in_log();
}

#[test]
fn runtime_blacklist_next_rcpt_reload_restart_and_file_entries() {
    let d = Daemon::start();
    assert_eq!(d.rcpt("victim@runtime.example"), 250);
    assert_eq!(d.rcpt("someone@tenant-rt.example"), 250);
    // A session that is already open sees the entry at its next RCPT.
    let mut open = Raw::connect(d.proc.addr("main"));
    open.expect("EHLO client.test", 250);
    open.expect("MAIL FROM:<a@legacy.test>", 250);
    open.expect("RCPT TO:<victim@runtime.example>", 250);

    let (code, r) = d.send(
        "POST",
        "/api/v1/blacklist",
        Some(r#"{"entry":"Victim@Runtime.Example","action":"reject"}"#),
    );
    assert_eq!((code, r), (200, json!({"ok": true})));
    let (code, _) = d.send(
        "POST",
        "/api/v1/blacklist",
        Some(r#"{"entry":"@tenant-rt.example","tenant":"t","action":"reject"}"#),
    );
    assert_eq!(code, 200);
    open.expect("RCPT TO:<victim@runtime.example>", 550);
    open.cmd("QUIT");
    assert_eq!(d.rcpt("victim@runtime.example"), 550);
    assert_eq!(d.rcpt("someone@tenant-rt.example"), 550);

    // Refusals: a file entry, an unknown tenant, a bad entry, an unknown entry.
    let r = api(
        d.admin,
        "DELETE",
        "/api/v1/blacklist?entry=%40file.example",
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("in the config file"),
        "{}",
        r.body
    );
    assert_eq!(d.rcpt("x@file.example"), 550);
    assert_eq!(
        d.send(
            "POST",
            "/api/v1/blacklist",
            Some(r#"{"entry":"a@b.example","tenant":"nope"}"#)
        )
        .0,
        404
    );
    assert_eq!(
        d.send(
            "POST",
            "/api/v1/blacklist",
            Some(r#"{"entry":"not an address"}"#)
        )
        .0,
        400
    );
    assert_eq!(
        d.send(
            "DELETE",
            "/api/v1/blacklist?entry=never@added.example",
            None
        )
        .0,
        404
    );

    let runtime = json!([
        {"entry": "victim@runtime.example", "action": "reject", "scope": "system", "source": "runtime"},
        {"entry": "@tenant-rt.example", "action": "reject", "scope": "t", "source": "runtime"},
    ]);
    let runtime_only = |v: Value| -> Value {
        Value::Array(
            v.as_array()
                .unwrap()
                .iter()
                .filter(|e| e["source"] == "runtime")
                .cloned()
                .collect(),
        )
    };
    assert_eq!(runtime_only(d.get("/api/v1/blacklist")), runtime);

    // A reload keeps them.
    d.proc.signal("HUP");
    d.proc.wait_log("no reload", Duration::from_secs(20), |l| {
        l.iter().any(|l| l.contains("config reloaded"))
    });
    assert_eq!(d.rcpt("victim@runtime.example"), 550);
    assert_eq!(runtime_only(d.get("/api/v1/blacklist")), runtime);
    let log = d.proc.log().join("\n");
    assert!(
        log.contains(
            r#"who="admin api" what="blacklist add" entry=victim@runtime.example scope="system""#
        ),
        "{log}"
    );
    d.assert_no_token_in_log();

    // So does a restart.
    let d = d.restart();
    assert_eq!(d.rcpt("victim@runtime.example"), 550);
    assert_eq!(d.rcpt("someone@tenant-rt.example"), 550);
    assert_eq!(runtime_only(d.get("/api/v1/blacklist")), runtime);

    // Removing a runtime entry lets mail through again.
    assert_eq!(
        d.send(
            "DELETE",
            "/api/v1/blacklist?entry=victim%40runtime.example",
            None
        ),
        (200, json!({"ok": true}))
    );
    assert_eq!(d.rcpt("victim@runtime.example"), 250);
    let log = d.proc.log().join("\n");
    assert!(log.contains(r#"what="blacklist remove""#), "{log}");
    d.assert_no_token_in_log();
}

#[test]
fn without_a_token_the_api_is_off() {
    let port = free_port();
    let p = Proc::start(&config(port).replace(&format!("token = \"{TOKEN}\"\n"), ""));
    let admin = SocketAddr::from(([127, 0, 0, 1], port));
    let r = api(admin, "GET", "/api/v1/servers", Some(TOKEN), None);
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("no [admin] token")
    );
    assert_eq!(request(admin, "GET", "/metrics", &[], None).status, 200);
    drop(p);
}
