//! `smarthost queue list|show|hold|release|retry|delete` (PRODUCT §4.1)
//! against the real queue of a running daemon: the JSON shape, the queue
//! ids the clients were given, and the effect of each command on delivery.

mod common;

use common::admin::cli;
use common::postfix::free_port;
use common::process::Proc;
use common::relay::Raw;
use common::sink::{Mode, Sink};
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};

const TOKEN: &str = "queue-cli-token-5e2a";

fn config(sink_port: u16, admin_port: u16) -> String {
    common::relay::queue_config(
        sink_port,
        "{dir}/spool",
        &format!(
            r#"
[queue]
min_backoff = "1h"
max_backoff = "1h"

[admin]
address = "127.0.0.1:{admin_port}"
token = "{TOKEN}"
"#
        ),
    )
}

fn json(o: &Output) -> Value {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn send(p: &Proc, subject: &str) -> String {
    let mut c = Raw::connect(p.addr("main"));
    c.begin("app@legacy.test", &["rcpt@example.com"]);
    c.send(format!("Subject: {subject}\r\n\r\nhi\r\n").as_bytes());
    let r = c.cmd(".");
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    r.trim_end()["250 2.0.0 Ok: queued as ".len()..].to_owned()
}

#[test]
fn queue_commands_control_the_real_queue() {
    let sink = Sink::start();
    sink.set_mode(Mode::Down);
    let p = Proc::start(&config(sink.port(), free_port()));
    let cfg = p.dir.path().join("smarthost.toml");
    let a = send(&p, "a");
    let b = send(&p, "b");
    // Both tried once and deferred for an hour.
    let end = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list = json(&cli(&cfg, &["queue", "list", "--json"]));
        if list.as_array().unwrap().iter().all(|m| m["attempts"] == 1) {
            break list;
        }
        assert!(Instant::now() < end, "{list}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&a.as_str()) && ids.contains(&b.as_str()),
        "{list}"
    );
    let m = &list[0];
    for key in [
        "id",
        "age_secs",
        "sender",
        "attempts",
        "next_attempt_secs",
        "held",
        "recipients",
    ] {
        assert!(m.get(key).is_some(), "{key} missing in {m}");
    }
    assert_eq!(m["sender"], "app@legacy.test");
    assert!(m["next_attempt_secs"].as_u64().unwrap() > 60);
    assert_eq!(m["recipients"][0]["address"], "rcpt@example.com");
    assert_eq!(m["recipients"][0]["state"], "deferred");
    assert!(
        m["recipients"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("421")
    );
    // People get a table.
    let o = cli(&cfg, &["queue", "list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&a), "{:?}", o);

    assert_eq!(
        json(&cli(&cfg, &["queue", "hold", &a, "--json"])),
        serde_json::json!({"ok": true})
    );
    assert_eq!(
        json(&cli(&cfg, &["queue", "show", &a, "--json"]))["held"],
        true
    );
    assert_eq!(
        json(&cli(&cfg, &["queue", "delete", &b, "--json"])),
        serde_json::json!({"ok": true})
    );
    let o = cli(&cfg, &["queue", "delete", &b, "--json"]);
    assert_eq!(o.status.code(), Some(1), "unknown id: exit 1");
    // The upstream is back; a retry of everything delivers the held one too.
    sink.set_mode(Mode::Accept);
    json(&cli(&cfg, &["queue", "release", &a, "--json"]));
    let got = sink.wait(Duration::from_secs(20), |g| !g.is_empty());
    assert_eq!(got[0].header("Subject").as_deref(), Some("a"));
    let end = Instant::now() + Duration::from_secs(20);
    while !json(&cli(&cfg, &["queue", "list", "--json"]))
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.got().len(), 1, "the deleted message is never sent");
    let st = json(&cli(&cfg, &["status", "--json"]));
    assert_eq!(st["queue"]["depth"], 0, "{st}");
}
