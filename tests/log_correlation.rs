//! What an operator reads in the log, through the real binary: every line
//! of a session carries its `session_id` (a span), the delivery lines of
//! that session carry it too, with the message id; the server health
//! transitions (marked down, half open, back up) log one line each; a
//! delivery that skipped a down server names it with the reason; JSON
//! values are typed. Text and JSON formats. The upstream is the in-process
//! scripted sink; a closed port stands for a dead server.

mod common;

use common::process::Proc;
use common::sink::{Mode, Sink};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn config(format: &str, flaky: u16) -> String {
    format!(
        r#"
[system]
delivery = "direct"
hostname = "relay.test"

[log]
format = "{format}"

[health]
failures = 1
cooldown = "1s"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.flaky]
host = "127.0.0.1"
port = {flaky}
security = "none"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
primary = "flaky"
fallback = "outbox"
"#
    )
}

/// One SMTP session sending `n` messages; returns the final replies.
fn session(addr: SocketAddr, n: usize) -> Vec<String> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    reply();
    w.write_all(b"EHLO client.test\r\n").unwrap();
    reply();
    let mut out = Vec::new();
    for i in 0..n {
        for cmd in [
            "MAIL FROM:<a@app.test>\r\n",
            "RCPT TO:<rcpt@example.com>\r\n",
        ] {
            w.write_all(cmd.as_bytes()).unwrap();
            assert!(reply().starts_with('2'));
        }
        w.write_all(b"DATA\r\n").unwrap();
        assert!(reply().starts_with("354"));
        write!(w, "From: a@app.test\r\nSubject: m{i}\r\n\r\nbody\r\n.\r\n").unwrap();
        out.push(reply());
    }
    w.write_all(b"QUIT\r\n").unwrap();
    reply();
    out
}

/// The session id of the text line `l`, from its `session{session_id=…}` span.
fn text_session_id(l: &str) -> Option<&str> {
    l.split("session_id=").nth(1)?.split(['}', ' ']).next()
}

#[test]
fn text_lines_share_the_session_id_and_health_transitions_log() {
    let sink = Sink::start();
    sink.set_mode(Mode::Down);
    let p = Proc::start(&config("text", sink.port()));
    // Message 1 fails over from flaky (421 at the greeting: marked down at
    // once), message 2 skips flaky, which is down.
    let replies = session(p.addr("main"), 2);
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    p.wait_log("session line", Duration::from_secs(10), |l| {
        l.iter().any(|l| l.contains(" session listener="))
    });
    let log = p.log();
    let session_line = log
        .iter()
        .find(|l| l.contains(" session listener="))
        .unwrap();
    let sid = text_session_id(session_line)
        .expect(session_line)
        .to_owned();
    let deliveries: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("smarthost::delivery") && l.contains(" delivery "))
        .collect();
    assert_eq!(deliveries.len(), 2, "{log:#?}");
    for d in &deliveries {
        assert_eq!(text_session_id(d), Some(sid.as_str()), "{d}");
        assert!(d.contains("delivery{id="), "{d}");
    }
    // Every line logged while the session ran carries it too.
    for l in log.iter().filter(|l| l.contains("hop failed")) {
        assert_eq!(text_session_id(l), Some(sid.as_str()), "{l}");
    }
    assert!(
        deliveries[0].contains("failed_over=flaky(connection)"),
        "{}",
        deliveries[0]
    );
    assert!(
        deliveries[1].contains("failed_over=flaky(down)"),
        "{}",
        deliveries[1]
    );
    let down: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("smarthost::health") && l.contains("marked down"))
        .collect();
    assert_eq!(down.len(), 1, "{log:#?}");
    assert!(down[0].contains("server=flaky"), "{}", down[0]);
    // The cool-down (1s) ends; the sink takes mail again; the next
    // delivery tries flaky half open, succeeds, and flaky is back up.
    sink.set_mode(Mode::Accept);
    let end = Instant::now() + Duration::from_secs(20);
    while sink.got().is_empty() {
        assert!(Instant::now() < end, "flaky never tried again");
        session(p.addr("main"), 1);
        std::thread::sleep(Duration::from_millis(200));
    }
    p.wait_log("back up", Duration::from_secs(10), |l| {
        l.iter().any(|l| l.contains("server back up"))
    });
    let log = p.log();
    let count = |what: &str| {
        log.iter()
            .filter(|l| {
                l.contains("smarthost::health") && l.contains(what) && l.contains("server=flaky")
            })
            .count()
    };
    assert_eq!(count("half open"), 1, "{log:#?}");
    assert_eq!(count("back up"), 1, "{log:#?}");
    assert_eq!(count("marked down"), 1, "{log:#?}");
    p.stop();
}

#[test]
fn json_lines_carry_the_session_id_and_typed_values() {
    let sink = Sink::start();
    sink.set_mode(Mode::Down);
    let p = Proc::start(&config("json", sink.port()));
    let replies = session(p.addr("main"), 2);
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    p.wait_log("session line", Duration::from_secs(10), |l| {
        l.iter().any(|l| l.contains("\"message\":\"session\""))
    });
    let lines: Vec<serde_json::Value> = p
        .log()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let listening = lines.iter().find(|v| v["message"] == "listening").unwrap();
    // A socket address, not `Some(…)`.
    assert!(
        listening["address"]
            .as_str()
            .unwrap()
            .parse::<SocketAddr>()
            .is_ok(),
        "{listening}"
    );
    let span_sid = |v: &serde_json::Value| -> Option<String> {
        v["spans"]
            .as_array()?
            .iter()
            .find_map(|s| s["session_id"].as_str().map(str::to_owned))
    };
    let session_line = lines.iter().find(|v| v["message"] == "session").unwrap();
    let sid = span_sid(session_line).expect("session line has a session span");
    assert_eq!(session_line["messages"], 2, "{session_line}");
    let deliveries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["message"] == "delivery")
        .collect();
    assert_eq!(deliveries.len(), 2);
    for d in &deliveries {
        assert_eq!(d["target"], "smarthost::delivery");
        assert_eq!(span_sid(d).as_deref(), Some(sid.as_str()), "{d}");
        assert_eq!(d["span"]["name"], "delivery", "{d}");
        assert!(d["span"]["id"].is_string(), "{d}");
        assert!(d["size"].is_u64() && d["duration_ms"].is_u64(), "{d}");
        assert_eq!(d["dsn"], false, "{d}");
    }
    assert_eq!(deliveries[1]["failed_over"], "flaky(down)");
    let down = lines
        .iter()
        .find(|v| v["target"] == "smarthost::health")
        .expect("a health line");
    assert_eq!(down["server"], "flaky");
    assert_eq!(down["cooldown_s"], 1);
    p.stop();
}

/// Queue mode: the attempt runs later in a queue worker, outside the
/// session; its delivery line still names the session (kept in the job).
#[test]
fn queued_delivery_lines_name_the_session() {
    let p = Proc::start(
        r#"
[system]
delivery = "queue"
hostname = "relay.test"
default_server = "outbox"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
"#,
    );
    let replies = session(p.addr("main"), 1);
    assert!(replies[0].starts_with("250 "), "{replies:?}");
    p.wait_log("delivery line", Duration::from_secs(20), |l| {
        l.iter()
            .any(|l| l.contains("smarthost::delivery") && l.contains(" delivery "))
            && l.iter().any(|l| l.contains(" session listener="))
    });
    let log = p.log();
    let session_line = log
        .iter()
        .find(|l| l.contains(" session listener="))
        .unwrap();
    let sid = text_session_id(session_line).unwrap();
    let delivery = log
        .iter()
        .find(|l| l.contains("smarthost::delivery") && l.contains(" delivery "))
        .unwrap();
    assert!(
        !delivery.contains("session{"),
        "not inside the session: {delivery}"
    );
    assert_eq!(text_session_id(delivery), Some(sid), "{delivery}");
    p.stop();
}
