//! The run-time commands (`status`, `limits`, `blacklist`, `queue`)
//! against a running daemon, as tables and with `--json`, and their exit
//! statuses: 0 done, 1 refused, 69 daemon unreachable (one line), 64
//! usage or config error. The admin token never appears in any output.
//!
//! The queue commands run against a relay whose `QueueControl` is a test
//! double (the durable queue plugs in its own): what is tested here is the
//! command → API → answer path.

mod common;

use common::admin::cli;
use common::postfix::{closed_port, free_port};
use common::process::Proc;
use common::relay::TestRelay;
use serde_json::{Value, json};
use smarthost::admin::types::{
    BoxFut, ControlError, QueueControl, QueueEntry, QueueRecipient, QueueSummary,
};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

const TOKEN: &str = "SENTINEL-cli-token-93be77";

fn config(admin_port: u16) -> String {
    format!(
        r#"
[system]
hostname = "relay.test"
default_server = "outbox"
blacklist = ["@file.example"]

[admin]
address = "127.0.0.1:{admin_port}"
token = "{TOKEN}"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.outbox]
kind = "capture"
path = "outbox"
limit = "500/hour"

[tenant.t]
sender = "sender@relay.test"
display_name = "Tenant T"
test_mode = {{ redirect_to = "qa@relay.test" }}

[application.app]
tenant = "t"
client_ips = ["127.0.0.1"]
"#
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command; checks the token is not in its output.
fn run(config: &Path, args: &[&str]) -> Output {
    let o = cli(config, args);
    assert!(
        !stdout(&o).contains(TOKEN) && !stderr(&o).contains(TOKEN),
        "token in the output of {args:?}"
    );
    o
}

/// `--json` output: exactly one JSON document.
fn json_of(o: &Output) -> Value {
    serde_json::from_str(&stdout(o))
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", stdout(o)))
}

#[test]
fn status_limits_and_blacklist_against_the_daemon() {
    let port = free_port();
    let d = Proc::start(&config(port));
    let cfg = d.dir.path().join("smarthost.toml");

    let o = run(&cfg, &["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("SERVER"), "{text}");
    assert!(
        text.contains("outbox") && text.contains("up") && text.contains("500"),
        "{text}"
    );
    // Direct mode still has a queue: it carries the DSNs.
    assert!(text.contains("queue: 0 message(s)"), "{text}");
    assert!(
        text.contains("test mode: tenant t (Tenant T) -> qa@relay.test"),
        "{text}"
    );
    let o = run(&cfg, &["status", "--json"]);
    assert_eq!(code(&o), 0);
    assert_eq!(
        json_of(&o),
        json!({
            "servers": [{"name": "outbox", "kind": "capture", "tenant": null, "health": "up", "limit_remaining": 500, "last_error": null}],
            "queue": {"depth": 0, "oldest_age_secs": null, "enabled": true},
            "test_mode": [
                {"kind": "tenant", "name": "t", "display_name": "Tenant T", "redirect_to": "qa@relay.test", "subject_prefix": null},
                {"kind": "application", "name": "app", "display_name": "Tenant T", "redirect_to": "qa@relay.test", "subject_prefix": null},
            ],
        })
    );

    let o = run(&cfg, &["limits", "show"]);
    assert_eq!(code(&o), 0);
    assert_eq!(
        stdout(&o),
        "SERVER  LIMIT     COUNTS    USED  REMAINING  RESETS_IN\noutbox  500/hour  messages  0     500        0s\n"
    );
    let o = run(&cfg, &["limits", "show", "--json"]);
    assert_eq!(
        json_of(&o),
        json!([{"server": "outbox", "limit": "500/hour", "window_secs": 3600, "counts": "messages", "used": 0, "remaining": 500, "resets_in_secs": 0}])
    );
    let o = run(&cfg, &["limits", "reset", "outbox"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "ok\n"));
    let o = run(&cfg, &["limits", "reset", "outbox", "--json"]);
    assert_eq!(json_of(&o), json!({"ok": true}));
    let o = run(&cfg, &["limits", "reset", "nope"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("no server named \"nope\""),
        "{}",
        stderr(&o)
    );
    let o = run(&cfg, &["limits", "reset", "nope", "--json"]);
    assert_eq!(
        (code(&o), json_of(&o)),
        (1, json!({"error": "no server named \"nope\""}))
    );

    let o = run(
        &cfg,
        &[
            "blacklist",
            "add",
            "Gone@Example.COM",
            "--tenant",
            "t",
            "--action",
            "reject",
        ],
    );
    assert_eq!(
        (code(&o), stdout(&o).as_str()),
        (0, "ok\n"),
        "{}",
        stderr(&o)
    );
    let o = run(&cfg, &["blacklist", "add", "@spam.example", "--json"]);
    assert_eq!(json_of(&o), json!({"ok": true}));
    let o = run(&cfg, &["blacklist", "list"]);
    assert_eq!(
        stdout(&o),
        "ENTRY             ACTION  SCOPE   SOURCE\n\
         @file.example     drop    system  file\n\
         @spam.example     drop    system  runtime\n\
         gone@example.com  reject  t       runtime\n"
    );
    let o = run(&cfg, &["blacklist", "list", "--tenant", "t", "--json"]);
    assert_eq!(
        json_of(&o),
        json!([{"entry": "gone@example.com", "action": "reject", "scope": "t", "source": "runtime"}])
    );
    let o = run(&cfg, &["blacklist", "remove", "@file.example"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("file entries cannot be removed at run time"),
        "{}",
        stderr(&o)
    );
    let o = run(&cfg, &["blacklist", "add", "not-an-address", "--json"]);
    assert_eq!(code(&o), 1);
    assert!(json_of(&o)["error"].is_string());
    let o = run(
        &cfg,
        &[
            "blacklist",
            "remove",
            "gone@example.com",
            "--tenant",
            "t",
            "--json",
        ],
    );
    assert_eq!((code(&o), json_of(&o)), (0, json!({"ok": true})));
    let o = run(&cfg, &["blacklist", "remove", "@spam.example"]);
    assert_eq!(code(&o), 0);
    let o = run(&cfg, &["blacklist", "list", "--json"]);
    assert_eq!(
        json_of(&o),
        json!([{"entry": "@file.example", "action": "drop", "scope": "system", "source": "file"}])
    );

    // Direct mode still has a queue (for DSNs): empty here; an unknown id
    // is refused with exit 1.
    let o = run(&cfg, &["queue", "list", "--json"]);
    assert_eq!((code(&o), json_of(&o)), (0, json!([])));
    let o = run(&cfg, &["queue", "retry", "nope"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));

    let log = d.log().join("\n");
    assert!(!log.contains(TOKEN), "token in the daemon's log");
}

/// A queue double: two messages, one of them known.
#[derive(Default)]
struct FakeQueue {
    calls: Mutex<Vec<String>>,
}

fn entry() -> QueueEntry {
    QueueEntry {
        id: "q1".into(),
        age_secs: 75,
        sender: "a@legacy.test".into(),
        attempts: 2,
        next_attempt_secs: 30,
        held: false,
        recipients: vec![QueueRecipient {
            address: "b@example.com".into(),
            state: "deferred".into(),
            last_error: Some("451 4.3.0 try later".into()),
        }],
    }
}

impl FakeQueue {
    fn known(&self, what: &str, id: &str) -> Result<(), ControlError> {
        self.calls.lock().unwrap().push(format!("{what} {id}"));
        if id == "q1" {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!(
                "no message {id:?} in the queue"
            )))
        }
    }
}

impl QueueControl for FakeQueue {
    fn list(&self) -> BoxFut<'_, Result<Vec<QueueEntry>, ControlError>> {
        Box::pin(async { Ok(vec![entry()]) })
    }
    fn show<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<QueueEntry, ControlError>> {
        Box::pin(async move { self.known("show", id).map(|_| entry()) })
    }
    fn retry<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { self.known("retry", id) })
    }
    fn retry_all(&self) -> BoxFut<'_, Result<u64, ControlError>> {
        Box::pin(async move { self.known("retry-all", "q1").map(|_| 1) })
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { self.known("delete", id) })
    }
    fn hold<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { self.known("hold", id) })
    }
    fn release<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { self.known("release", id) })
    }
    fn summary(&self) -> BoxFut<'_, Result<QueueSummary, ControlError>> {
        Box::pin(async {
            Ok(QueueSummary {
                depth: 1,
                oldest_age_secs: Some(75),
                enabled: true,
            })
        })
    }
}

#[test]
fn queue_commands_through_the_api() {
    let port = free_port();
    let relay = TestRelay::start(&config(port));
    let q = Arc::new(FakeQueue::default());
    relay.relay.set_queue_control(q.clone());
    let cfg = relay.dir.path().join("smarthost.toml");

    let o = run(&cfg, &["queue", "list"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ID  AGE  SENDER         ATTEMPTS  NEXT  HELD  RECIPIENTS\n\
         q1  75s  a@legacy.test  2         30s   no    b@example.com (deferred)\n"
    );
    let o = run(&cfg, &["queue", "list", "--json"]);
    assert_eq!(
        json_of(&o),
        json!([{"id": "q1", "age_secs": 75, "sender": "a@legacy.test", "attempts": 2, "next_attempt_secs": 30, "held": false,
                "recipients": [{"address": "b@example.com", "state": "deferred", "last_error": "451 4.3.0 try later"}]}])
    );
    let o = run(&cfg, &["queue", "show", "q1"]);
    assert!(
        stdout(&o).contains("b@example.com: 451 4.3.0 try later"),
        "{}",
        stdout(&o)
    );
    let o = run(&cfg, &["queue", "show", "q1", "--json"]);
    assert_eq!(json_of(&o)["recipients"][0]["state"], "deferred");
    let o = run(&cfg, &["queue", "show", "q9", "--json"]);
    assert_eq!(
        (code(&o), json_of(&o)),
        (1, json!({"error": "no message \"q9\" in the queue"}))
    );
    for args in [
        &["queue", "retry", "q1"][..],
        &["queue", "retry", "--all"],
        &["queue", "delete", "q1"],
        &["queue", "hold", "q1"],
        &["queue", "release", "q1"],
    ] {
        let o = run(&cfg, args);
        assert_eq!(
            (code(&o), stdout(&o).as_str()),
            (0, "ok\n"),
            "{args:?}: {}",
            stderr(&o)
        );
        let mut with_json = args.to_vec();
        with_json.push("--json");
        let o = run(&cfg, &with_json);
        assert_eq!(
            (code(&o), json_of(&o)),
            (0, json!({"ok": true})),
            "{args:?}"
        );
        let o = run(&cfg, &[args[0], args[1], "q9"]);
        if args[2] != "--all" {
            assert_eq!(code(&o), 1, "{args:?} on an unknown id");
            assert!(stderr(&o).contains("no message \"q9\""), "{}", stderr(&o));
        }
    }
    assert_eq!(
        q.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.as_str() == "delete q1")
            .count(),
        2
    );
    let o = run(&cfg, &["status", "--json"]);
    assert_eq!(
        json_of(&o)["queue"],
        json!({"depth": 1, "oldest_age_secs": 75, "enabled": true})
    );
    let o = run(&cfg, &["status"]);
    assert!(
        stdout(&o).contains("queue: 1 message(s), oldest 75s"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn daemon_down_usage_and_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("smarthost.toml");
    std::fs::write(&cfg, config(closed_port())).unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["limits", "show"],
        &["blacklist", "list"],
        &["queue", "list"],
    ] {
        let o = run(&cfg, args);
        assert_eq!(code(&o), 69, "{args:?}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("cannot reach the smarthost daemon"), "{err}");
    }
    // Usage errors.
    assert_eq!(code(&run(&cfg, &["queue", "retry"])), 64);
    assert_eq!(
        code(&run(
            &cfg,
            &["blacklist", "add", "x@y.example", "--action", "bounce"]
        )),
        64
    );
    // Config errors: no token, no [admin], an invalid file.
    std::fs::write(
        &cfg,
        config(closed_port()).replace(&format!("token = \"{TOKEN}\""), ""),
    )
    .unwrap();
    let o = run(&cfg, &["status"]);
    assert_eq!(code(&o), 64);
    assert!(stderr(&o).contains("no [admin] token"), "{}", stderr(&o));
    std::fs::write(&cfg, "[system]\nnonsense = 1\n").unwrap();
    assert_eq!(code(&run(&cfg, &["status"])), 64);

    // A token the daemon does not accept is a config error too.
    let port = free_port();
    let d = Proc::start(&config(port));
    let other = dir.path().join("other.toml");
    std::fs::write(&other, config(port).replace(TOKEN, "not-the-token")).unwrap();
    let o = cli(&other, &["status"]);
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("refused the [admin] token"),
        "{}",
        stderr(&o)
    );
    drop(d);
}
