//! Send limits through the binary (PRODUCT §3.7, issue 10): a server over
//! its `limit` is skipped like a down server; the counts survive a
//! restart (even a SIGKILL); `smarthost limits show|reset` talk to the
//! daemon; recipient counting never splits a message; with no server left
//! direct mode answers `451 4.7.0` with when budget returns and queue mode
//! waits exactly until then; no overshoot at 50 concurrent senders;
//! `max_connections` caps the connections an upstream sees, also across
//! two instances sharing a `redis-server` (leases renewed while held,
//! a killed instance's expiring); a message beyond every server's whole
//! limit is refused for good (554 5.5.3, a DSN in queue mode).

mod common;

use common::admin::{cli, request};
use common::postfix::free_port;
use common::process::Proc;
use common::relay::Raw;
use common::sink::Sink;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

const TOKEN: &str = "limits-token-1f4c";
const WAIT: Duration = Duration::from_secs(20);

/// A relay with `primary` (its settings in `primary_extra`) and
/// `fallback` (when given) as the application's chain.
fn config(
    admin: u16,
    primary: u16,
    primary_extra: &str,
    fallback: Option<u16>,
    system_extra: &str,
) -> String {
    let fallback_server = fallback.map_or(String::new(), |p| {
        format!("[server.fallback]\nhost = \"127.0.0.1\"\nport = {p}\nsecurity = \"none\"\n")
    });
    let fallback_key = if fallback.is_some() {
        "fallback = \"fallback\""
    } else {
        ""
    };
    format!(
        r#"
[system]
hostname = "relay.test"
{system_extra}

[admin]
address = "127.0.0.1:{admin}"
token = "{TOKEN}"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.primary]
host = "127.0.0.1"
port = {primary}
security = "none"
{primary_extra}

{fallback_server}

[tenant.t]
sender = "app@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
primary = "primary"
{fallback_key}
"#
    )
}

/// Sends one message to `to`; returns the reply to its content.
fn send(addr: SocketAddr, to: &[&str]) -> String {
    send_from(addr, "app@legacy.test", to)
}

fn send_from(addr: SocketAddr, from: &str, to: &[&str]) -> String {
    let mut c = Raw::connect(addr);
    c.begin(from, to);
    c.send(b"Subject: limits\r\n\r\nhello\r\n.\r\n");
    let r = c.reply();
    c.cmd("QUIT");
    r
}

fn cfg_path(p: &Proc) -> PathBuf {
    p.dir.path().join("smarthost.toml")
}

/// `smarthost ARGS`, expected to succeed; its stdout.
fn run(cfg: &Path, args: &[&str]) -> String {
    let o = cli(cfg, args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `limits show --json` row of `server`.
fn limit_row(cfg: &Path, server: &str) -> Value {
    let v: Value = serde_json::from_str(&run(cfg, &["limits", "show", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["server"] == server)
        .unwrap_or_else(|| panic!("no row for {server} in {v}"))
        .clone()
}

/// SIGKILL (no shutdown flush), then the temp directory back.
fn kill(mut p: Proc) -> TempDir {
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap())
}

fn metric(admin: u16, sample: &str) -> f64 {
    let r = request(
        SocketAddr::from(([127, 0, 0, 1], admin)),
        "GET",
        "/metrics",
        &[],
        None,
    );
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{}", r.body))
}

#[test]
fn three_per_hour_fail_over_survive_a_kill_and_reset() {
    let (primary, fallback) = (Sink::start(), Sink::start());
    let admin = free_port();
    let toml = config(
        admin,
        primary.port(),
        "limit = \"3/hour\"",
        Some(fallback.port()),
        "",
    );
    let d = Proc::start(&toml);
    for i in 0..5 {
        let r = send(d.addr("main"), &[&format!("r{i}@example.com")]);
        assert!(r.starts_with("250 "), "message {i}: {r}");
    }
    assert_eq!(primary.got().len(), 3, "3 via the primary");
    assert_eq!(fallback.got().len(), 2, "2 via the fallback");
    let cfg = cfg_path(&d);
    let row = limit_row(&cfg, "primary");
    assert_eq!(row["used"], 3, "{row}");
    assert_eq!(row["remaining"], 0, "{row}");
    assert_eq!(
        metric(admin, "smarthost_limit_remaining{server=\"primary\"}"),
        0.0
    );
    assert!(metric(admin, "smarthost_limit_hits_total{server=\"primary\"}") >= 2.0);
    assert!(
        d.log()
            .iter()
            .any(|l| l.contains("fallback") && l.contains("primary(limit)")),
        "the delivery log names the skipped server and its class"
    );

    // A SIGKILL: the committed counts were already written (under load the
    // write-behind lags by at most limits::FLUSH_EVERY).
    std::thread::sleep(smarthost::limits::FLUSH_EVERY * 3);
    let dir = kill(d);
    let d = Proc::start_in(dir, &toml);
    let r = send(d.addr("main"), &["after-restart@example.com"]);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(
        primary.got().len(),
        3,
        "still over the limit after a restart"
    );
    assert_eq!(fallback.got().len(), 3);

    // `limits show` in the §4.1 shape, then a reset.
    let cfg = cfg_path(&d);
    let row = limit_row(&cfg, "primary");
    let keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "counts",
        "limit",
        "remaining",
        "resets_in_secs",
        "server",
        "used",
        "window_secs",
    ];
    want.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(keys_sorted, want);
    assert_eq!(row["limit"], "3/hour");
    assert_eq!(row["window_secs"], 3600);
    assert_eq!(row["counts"], "messages");
    assert_eq!(row["used"], 3);
    let resets = row["resets_in_secs"].as_u64().unwrap();
    assert!((3500..=3660).contains(&resets), "{row}");
    let table = run(&cfg, &["limits", "show"]);
    assert!(
        table.contains("primary") && table.contains("3/hour"),
        "{table}"
    );

    run(&cfg, &["limits", "reset", "primary"]);
    d.wait_log("an audit line for the reset", WAIT, |log| {
        log.iter()
            .any(|l| l.contains("audit") && l.contains("limits reset") && l.contains("primary"))
    });
    let r = send(d.addr("main"), &["after-reset@example.com"]);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(primary.got().len(), 4, "the primary again after the reset");
    let row = limit_row(&cfg, "primary");
    assert_eq!(
        (row["used"].as_u64(), row["remaining"].as_u64()),
        (Some(1), Some(2))
    );
    // Resetting a server without a limit is refused.
    let o = cli(&cfg, &["limits", "reset", "fallback"]);
    assert_eq!(o.status.code(), Some(1));

    // A reload that raises the limit keeps the counts.
    let raised = toml.replace("3/hour", "5/hour");
    std::fs::write(&cfg, common::relay::direct_by_default(&raised)).unwrap();
    d.signal("HUP");
    d.wait_log("the reload", WAIT, |log| {
        log.iter().any(|l| l.contains("config reloaded"))
    });
    let end = std::time::Instant::now() + WAIT;
    loop {
        let row = limit_row(&cfg, "primary");
        if row["limit"] == "5/hour" {
            assert_eq!(row["used"], 1, "{row}");
            assert_eq!(row["remaining"], 4, "{row}");
            break;
        }
        assert!(std::time::Instant::now() < end, "the reload did not apply");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn recipients_are_counted_and_a_message_is_never_split() {
    let (primary, fallback) = (Sink::start(), Sink::start());
    let admin = free_port();
    let d = Proc::start(&config(
        admin,
        primary.port(),
        "limit = \"5/hour\"\nlimit_counts = \"recipients\"",
        Some(fallback.port()),
        "",
    ));
    let a = d.addr("main");
    // Two accepted, one refused by the upstream: 2 count. (A null sender:
    // no DSN about the refused one, which would count too.)
    let r = send_from(
        a,
        "",
        &["a1@example.com", "a2@example.com", "perm1@example.com"],
    );
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(primary.got().len(), 1);
    // Four would make 6 > 5: the whole message goes to the fallback.
    let four = [
        "b1@example.com",
        "b2@example.com",
        "b3@example.com",
        "b4@example.com",
    ];
    assert!(send(a, &four).starts_with("250 "));
    let fb = fallback.got();
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0].rcpts.len(), 4, "not split");
    assert_eq!(primary.got().len(), 1);
    // Three fit exactly.
    assert!(send(a, &["c1@example.com", "c2@example.com", "c3@example.com"]).starts_with("250 "));
    assert_eq!(primary.got().len(), 2);
    assert_eq!(primary.got()[1].rcpts.len(), 3);
    let row = limit_row(&cfg_path(&d), "primary");
    assert_eq!(row["counts"], "recipients");
    assert_eq!(
        (row["used"].as_u64(), row["remaining"].as_u64()),
        (Some(5), Some(0))
    );
    // Now even one recipient goes to the fallback.
    assert!(send(a, &["d1@example.com"]).starts_with("250 "));
    assert_eq!(primary.got().len(), 2);
    assert_eq!(fallback.got().len(), 2);

    // `explain` shows the budget: from the daemon while it holds the
    // store, from the store once it is stopped.
    let cfg = cfg_path(&d);
    let explain = |cfg: &Path| {
        run(
            cfg,
            &[
                "explain",
                "--app",
                "app",
                "--from",
                "x@legacy.test",
                "--to",
                "y@example.com",
            ],
        )
    };
    let text = explain(&cfg);
    assert!(
        text.contains("limit 5/hour, budget: 0 of 5 recipients left"),
        "{text}"
    );
    let dir = d.stop();
    let text = explain(&dir.path().join("smarthost.toml"));
    assert!(
        text.contains("limit 5/hour, budget: 0 of 5 recipients left"),
        "{text}"
    );
}

#[test]
fn direct_mode_with_no_server_left_answers_451_with_when_budget_returns() {
    let primary = Sink::start();
    let admin = free_port();
    let d = Proc::start(&config(
        admin,
        primary.port(),
        "limit = \"1/day\"",
        None,
        "",
    ));
    assert!(send(d.addr("main"), &["one@example.com"]).starts_with("250 "));
    let r = send(d.addr("main"), &["two@example.com"]);
    assert!(r.starts_with("451 4.7.0 "), "{r}");
    let secs: u64 = r
        .split("budget returns in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no return time in {r}"));
    assert!((86_300..=86_460).contains(&secs), "{r}");
    assert_eq!(primary.got().len(), 1);
}

#[test]
fn queue_mode_waits_until_the_window_frees() {
    let primary = Sink::start();
    let admin = free_port();
    let d = Proc::start(&config(
        admin,
        primary.port(),
        "limit = \"1/hour\"",
        None,
        "delivery = \"queue\"",
    ));
    let cfg = cfg_path(&d);
    assert!(send(d.addr("main"), &["one@example.com"]).starts_with("250 "));
    primary.wait(WAIT, |g| g.len() == 1);
    let r = send(d.addr("main"), &["two@example.com"]);
    assert!(r.starts_with("250 ") && r.contains("queued as"), "{r}");
    // It waits, with its next attempt when the budget returns.
    let end = std::time::Instant::now() + WAIT;
    let entry = loop {
        let v: Value = serde_json::from_str(&run(&cfg, &["queue", "list", "--json"])).unwrap();
        if let Some(e) = v.as_array().unwrap().first()
            && e["attempts"].as_u64() >= Some(1)
        {
            break e.clone();
        }
        assert!(std::time::Instant::now() < end, "no attempt made: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let row = limit_row(&cfg, "primary");
    let next = entry["next_attempt_secs"].as_u64().unwrap();
    let resets = row["resets_in_secs"].as_u64().unwrap();
    assert!(
        next.abs_diff(resets) <= 2,
        "next attempt {next} s, budget returns in {resets} s"
    );
    assert!(next > 3000, "{entry}");
    assert_eq!(entry["attempts"], 1, "no busy retry: {entry}");
    assert_eq!(primary.got().len(), 1);
    // The window frees (an operator's reset): it is delivered.
    run(&cfg, &["limits", "reset", "primary"]);
    primary.wait(WAIT, |g| g.len() == 2);
    // It leaves the queue once its state is settled.
    let end = std::time::Instant::now() + WAIT;
    loop {
        let v: Value = serde_json::from_str(&run(&cfg, &["queue", "list", "--json"])).unwrap();
        if v.as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < end, "still queued: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(primary.got().len(), 2, "delivered once");
}

#[test]
fn fifty_concurrent_senders_against_100_per_hour_pass_exactly_100() {
    let (primary, fallback) = (Sink::start(), Sink::start());
    let admin = free_port();
    let d = Proc::start(&config(
        admin,
        primary.port(),
        "limit = \"100/hour\"",
        Some(fallback.port()),
        "",
    ));
    let addr = d.addr("main");
    let threads: Vec<_> = (0..50)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..3 {
                    let r = send(addr, &[&format!("t{t}-{i}@example.com")]);
                    assert!(r.starts_with("250 "), "{r}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(primary.got().len(), 100);
    assert_eq!(fallback.got().len(), 50);
    assert_eq!(limit_row(&cfg_path(&d), "primary")["used"], 100);
}

#[test]
fn max_connections_caps_what_a_slow_upstream_sees() {
    let primary = Sink::start();
    primary.set_data_delay(Duration::from_millis(300));
    let admin = free_port();
    let d = Proc::start(&config(
        admin,
        primary.port(),
        "max_connections = 2\nconnect_timeout = \"20s\"",
        None,
        "",
    ));
    let addr = d.addr("main");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let r = send(addr, &[&format!("slow{t}@example.com")]);
                assert!(r.starts_with("250 "), "{r}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(primary.got().len(), 8);
    assert!(
        primary.peak_connections() <= 2,
        "peak {} connections",
        primary.peak_connections()
    );
    assert!(
        metric(
            admin,
            "smarthost_connection_slot_waits_total{server=\"primary\"}"
        ) >= 1.0
    );
}

#[test]
fn no_slot_within_connect_timeout_fails_over() {
    let (primary, fallback) = (Sink::start(), Sink::start());
    primary.set_data_delay(Duration::from_millis(2500));
    let admin = free_port();
    let d = Proc::start(&config(
        admin,
        primary.port(),
        "max_connections = 1\nconnect_timeout = \"1s\"",
        Some(fallback.port()),
        "",
    ));
    let addr = d.addr("main");
    let slow = std::thread::spawn(move || send(addr, &["first@example.com"]));
    // The first holds the only slot for 2.5 s; wait until it is sending.
    let end = std::time::Instant::now() + WAIT;
    while primary.connections() == 0 {
        assert!(std::time::Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = send(addr, &["second@example.com"]);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(fallback.got().len(), 1, "the second went to the fallback");
    assert!(slow.join().unwrap().starts_with("250 "));
    assert_eq!(primary.got().len(), 1);
}

/// A `redis-server` on a free loopback port, nothing saved to disk.
struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        let end = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read(&mut buf)
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < end,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn two_instances_share_one_limit_through_redis_and_fall_back_as_configured() {
    let mut redis = RedisServer::start();
    let (primary, fallback) = (Sink::start(), Sink::start());
    let instance = |on_error: &str| {
        let admin = free_port();
        let toml = format!(
            "{}\n[cluster]\nredis = \"redis://127.0.0.1:{}/\"\non_redis_error = \"{on_error}\"\n",
            config(
                admin,
                primary.port(),
                "limit = \"10/hour\"",
                Some(fallback.port()),
                "",
            ),
            redis.port
        );
        (Proc::start(&toml), admin)
    };
    let (a, admin_a) = instance("local");
    let (b, _) = instance("closed");
    for i in 0..16 {
        let via = if i % 2 == 0 { &a } else { &b };
        let r = send(via.addr("main"), &[&format!("m{i}@example.com")]);
        assert!(r.starts_with("250 "), "message {i}: {r}");
    }
    assert_eq!(
        primary.got().len(),
        10,
        "exactly 10 through the limited server"
    );
    assert_eq!(fallback.got().len(), 6);
    for p in [&a, &b] {
        let row = limit_row(&cfg_path(p), "primary");
        assert_eq!(
            (row["used"].as_u64(), row["remaining"].as_u64()),
            (Some(10), Some(0)),
            "{row}"
        );
    }

    // Concurrent senders on both instances: still not one more.
    let (aa, ba) = (a.addr("main"), b.addr("main"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let addr = if t % 2 == 0 { aa } else { ba };
            std::thread::spawn(move || send(addr, &[&format!("c{t}@example.com")]))
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().starts_with("250 "));
    }
    assert_eq!(primary.got().len(), 10);

    // A reset on one instance frees the shared budget for both.
    run(&cfg_path(&a), &["limits", "reset", "primary"]);
    assert_eq!(limit_row(&cfg_path(&b), "primary")["used"], 0);
    let r = send(b.addr("main"), &["after-reset@example.com"]);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(primary.got().len(), 11);
    assert_eq!(limit_row(&cfg_path(&a), "primary")["used"], 1);

    // Redis goes away: "closed" treats the server as over its limit,
    // "local" counts this instance's own uses (none since the reset).
    redis.stop();
    let r = send(b.addr("main"), &["closed@example.com"]);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(primary.got().len(), 11, "closed: the primary is not used");
    let r = send(a.addr("main"), &["local@example.com"]);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(
        primary.got().len(),
        12,
        "local: counted by this instance alone"
    );
    assert!(
        a.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("send-limit counters in Redis unavailable")),
        "a warning names the fallback"
    );
    assert!(metric(admin_a, "smarthost_limit_redis_unavailable_total") >= 1.0);
    assert!(
        b.log().iter().any(|l| l.contains("primary(limit)")),
        "closed: skipped with class limit"
    );
}

#[test]
fn explain_without_the_admin_api_while_the_daemon_holds_the_store() {
    let primary = Sink::start();
    let toml = config(free_port(), primary.port(), "limit = \"3/hour\"", None, "");
    // No [admin]: explain cannot ask the daemon.
    let start = toml.find("[admin]").unwrap();
    let end = toml[start..].find("[[listener]]").unwrap() + start;
    let toml = format!("{}{}", &toml[..start], &toml[end..]);
    let d = Proc::start(&toml);
    assert!(send(d.addr("main"), &["one@example.com"]).starts_with("250 "));
    let explain = |cfg: &Path| {
        run(
            cfg,
            &[
                "explain",
                "--app",
                "app",
                "--from",
                "x@legacy.test",
                "--to",
                "y@example.com",
            ],
        )
    };
    let text = explain(&cfg_path(&d));
    assert!(
        text.contains(
            "limit 3/hour, budget: unknown (daemon running; see `smarthost limits show`)"
        ),
        "{text}"
    );
    let dir = d.stop();
    let text = explain(&dir.path().join("smarthost.toml"));
    assert!(
        text.contains("limit 3/hour, budget: 2 of 3 messages left"),
        "{text}"
    );
}

/// Two relays on `redis` with `primary` capped by `primary_extra`; the
/// first counts alone, the second gives no slot while Redis is away.
fn cluster_pair(
    redis: &RedisServer,
    primary: u16,
    primary_extra: &str,
    prefix: &[&str],
) -> [(Proc, u16); 2] {
    ["local", "closed"].map(|on_error| {
        let admin = free_port();
        let toml = format!(
            "{}\n[cluster]\nredis = \"redis://127.0.0.1:{}/\"\non_redis_error = \"{on_error}\"\n",
            config(admin, primary, primary_extra, None, ""),
            redis.port
        );
        (Proc::start_with_prefix(&toml, prefix), admin)
    })
}

#[test]
fn max_connections_holds_across_two_instances_through_redis() {
    let mut redis = RedisServer::start();
    let primary = Sink::start();
    primary.set_data_delay(Duration::from_millis(300));
    let [(a, admin_a), (b, admin_b)] = cluster_pair(
        &redis,
        primary.port(),
        "max_connections = 2\nconnect_timeout = \"20s\"",
        &[],
    );
    let (aa, ba) = (a.addr("main"), b.addr("main"));
    let threads: Vec<_> = (0..12)
        .map(|t| {
            let addr = if t % 2 == 0 { aa } else { ba };
            std::thread::spawn(move || send(addr, &[&format!("shared{t}@example.com")]))
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert!(r.starts_with("250 "), "{r}");
    }
    assert_eq!(primary.got().len(), 12, "every message delivered");
    assert!(
        primary.peak_connections() <= 2,
        "peak {} connections at the upstream for max_connections = 2 on two instances",
        primary.peak_connections()
    );
    let waits = |admin| {
        metric(
            admin,
            "smarthost_connection_slot_waits_total{server=\"primary\"}",
        )
    };
    assert!(waits(admin_a) + waits(admin_b) >= 1.0);

    // Redis goes away: "local" counts this instance's slots alone (with a
    // warning), "closed" gives no slot, so the hop fails.
    redis.stop();
    primary.set_data_delay(Duration::ZERO);
    let r = send(aa, &["local@example.com"]);
    assert!(r.starts_with("250 "), "local: {r}");
    assert_eq!(primary.got().len(), 13);
    assert!(
        a.log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains("connection slots in Redis unavailable")),
        "a warning names the fallback"
    );
    assert!(metric(admin_a, "smarthost_limit_redis_unavailable_total") >= 1.0);
    let r = send(ba, &["closed@example.com"]);
    assert!(r.starts_with("451 "), "closed: {r}");
    assert_eq!(primary.got().len(), 13, "closed: nothing sent");
    assert!(
        b.log()
            .iter()
            .any(|l| l.contains("connection slots (max_connections = 2) unavailable")),
        "closed: the failover names the reason"
    );
}

#[test]
fn slot_leases_are_renewed_while_held_and_a_killed_instance_s_expire() {
    let redis = RedisServer::start();
    let primary = Sink::start();
    primary.set_data_delay(Duration::from_millis(2500));
    // A 1.5 s lease (debug builds only; production leases last 30 s).
    let [(a, _), (b, admin_b)] = cluster_pair(
        &redis,
        primary.port(),
        "max_connections = 1\nconnect_timeout = \"15s\"",
        &["env", "SMARTHOST_TEST_SLOT_LEASE_MS=1500"],
    );
    let (aa, ba) = (a.addr("main"), b.addr("main"));
    let connected = |n: usize| {
        let end = std::time::Instant::now() + WAIT;
        while primary.connections() < n {
            assert!(std::time::Instant::now() < end, "no connection {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // A delivery longer than the lease keeps its slot (renewed): the
    // other instance waits for it instead of taking the slot at 1.5 s.
    let first = std::thread::spawn(move || send(aa, &["long@example.com"]));
    connected(1);
    let r = send(ba, &["waits@example.com"]);
    assert!(r.starts_with("250 "), "{r}");
    assert!(first.join().unwrap().starts_with("250 "));
    assert_eq!(primary.peak_connections(), 1, "the lease was renewed");

    // The reply never comes: the instance is killed meanwhile.
    let _orphan = std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| send(aa, &["held@example.com"]));
    });
    connected(3);
    // It holds the only slot; it dies without giving it back.
    drop(kill(a));
    let started = std::time::Instant::now();
    let r = send(ba, &["after-kill@example.com"]);
    assert!(r.starts_with("250 "), "{r}");
    assert!(
        primary
            .got()
            .iter()
            .any(|g| g.rcpts.iter().any(|r| r.contains("after-kill"))),
        "delivered through the capped server"
    );
    assert!(
        metric(
            admin_b,
            "smarthost_connection_slot_waits_total{server=\"primary\"}"
        ) >= 1.0,
        "it waited for the dead instance's slot"
    );
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "reclaimed by lease expiry, not by the connect timeout"
    );
}

#[test]
fn a_message_beyond_every_whole_limit_is_refused_for_good() {
    let (primary, fallback) = (Sink::start(), Sink::start());
    let admin = free_port();
    let every = "limit = \"3/hour\"\nlimit_counts = \"recipients\"";
    let toml = config(admin, primary.port(), every, Some(fallback.port()), "").replace(
        "[server.fallback]\n",
        &format!("[server.fallback]\n{every}\n"),
    );
    let d = Proc::start(&toml);
    let five: Vec<String> = (0..5).map(|i| format!("r{i}@example.com")).collect();
    let five: Vec<&str> = five.iter().map(String::as_str).collect();
    let r = send(d.addr("main"), &five);
    assert!(
        r.starts_with("554 5.5.3 Too many recipients for the send limits: 5 recipients"),
        "{r}"
    );
    assert!(
        r.contains("at most 3: primary 3/hour, fallback 3/hour"),
        "{r}"
    );
    assert!(primary.got().is_empty() && fallback.got().is_empty());
    // Nothing was used: three still fit.
    let r = send(d.addr("main"), &five[..3]);
    assert!(r.starts_with("250 "), "{r}");
    assert_eq!(primary.got().len(), 1);
}

#[test]
fn queue_mode_fails_a_message_beyond_every_whole_limit_with_a_dsn() {
    let primary = Sink::start();
    let admin = free_port();
    let d = Proc::start(&config(
        admin,
        primary.port(),
        "limit = \"3/hour\"\nlimit_counts = \"recipients\"",
        None,
        "delivery = \"queue\"",
    ));
    let five: Vec<String> = (0..5).map(|i| format!("q{i}@example.com")).collect();
    let five: Vec<&str> = five.iter().map(String::as_str).collect();
    let r = send(d.addr("main"), &five);
    assert!(r.starts_with("250 ") && r.contains("queued as"), "{r}");
    // No retry for ever: the recipients fail at once and the sender gets
    // a DSN saying why (one recipient: it fits the budget).
    let got = primary.wait(WAIT, |g| !g.is_empty());
    assert_eq!(got.len(), 1, "only the DSN");
    // To the sender (the tenant's, after the rewrite).
    assert_eq!(got[0].rcpts, ["app@relay.test"]);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("5.5.3"), "{text}");
    assert!(
        text.contains("more than the send limit of every server allows"),
        "{text}"
    );
    let cfg = cfg_path(&d);
    let end = std::time::Instant::now() + WAIT;
    loop {
        let v: Value = serde_json::from_str(&run(&cfg, &["queue", "list", "--json"])).unwrap();
        if v.as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < end, "still queued: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
