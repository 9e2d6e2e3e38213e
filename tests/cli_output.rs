//! What a person reads from the commands: config spellings and plain
//! words instead of Rust names; `explain` prints the reply the live relay
//! gives (the same decision function); a closed pipe ends the output
//! quietly; usage errors exit 64 (EX_USAGE) for every command; check-config
//! says what it checked.

mod common;

use common::sink::Sink;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn smarthost_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run smarthost")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The example's first listener (`submission`) offers AUTH after
/// STARTTLS (`auth = "optional"`): an unidentified client gets 530 5.7.0
/// there, as the live relay answers; on `pos` (auth = "none") it is the
/// bound application; a listener without AUTH and no binding says 550.
#[test]
fn explain_prints_the_live_reply_for_unidentified_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ex = example();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--config",
            ex.to_str().unwrap(),
            "--client-ip",
            "203.0.113.9",
            "--from",
            "a@b.test",
            "--to",
            "c@d.test",
        ];
        args.extend_from_slice(extra);
        smarthost_in(dir.path(), &args)
    };
    let o = run(&[]);
    assert!(o.status.success());
    assert_eq!(
        text(&o),
        "not identified on listener submission: the relay answers MAIL FROM with 530 5.7.0 Authentication required\n  (a client that does not use STARTTLS: 550 5.7.1 Relaying denied: client not recognised)\n"
    );
    let o = run(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["refused"]["reason"], "auth_required");
    assert_eq!(v["refused_reply"], "530 5.7.0 Authentication required");
    let o = run(&["--listener", "pos"]);
    let t = text(&o);
    assert!(
        t.starts_with(
            "application:    pos (identified by listener (its application key) on listener pos)\n"
        ),
        "{t}"
    );
    // A live session on such a listener answers the same way.
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        r#"
[system]
hostname = "relay.test"
default_server = "outbox"
[[listener]]
name = "lan"
address = "0.0.0.0:0"
auth = "none"
[server.outbox]
kind = "capture"
path = "outbox"
[tenant.t]
sender = "s@relay.test"
[application.a]
tenant = "t"
client_ips = ["10.0.0.0/8"]
"#,
    )
    .unwrap();
    let o = smarthost_in(
        dir.path(),
        &[
            "explain",
            "--config",
            "c.toml",
            "--client-ip",
            "192.0.2.1",
            "--from",
            "a@b.test",
            "--to",
            "c@d.test",
        ],
    );
    assert_eq!(
        text(&o),
        "not identified on listener lan: the relay answers MAIL FROM with 550 5.7.1 Relaying denied: client not recognised\n"
    );
    let o = smarthost_in(
        dir.path(),
        &[
            "explain",
            "--config",
            "c.toml",
            "--client-ip",
            "10.1.2.3",
            "--from",
            "a@b.test",
            "--to",
            "c@d.test",
        ],
    );
    assert!(
        text(&o).starts_with(
            "application:    a (identified by client address (client_ips) on listener lan)\n"
        ),
        "{}",
        text(&o)
    );
}

#[test]
fn explain_shows_refusals_as_replies_not_rust_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(example()).unwrap().replacen(
        "\nenabled = true ",
        "\nenabled = false ",
        1,
    );
    std::fs::write(dir.path().join("smarthost.toml"), cfg).unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    for f in std::fs::read_dir(&certs).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join("certs").join(f.file_name())).unwrap();
    }
    let o = smarthost_in(
        dir.path(),
        &[
            "explain",
            "--app",
            "webshop",
            "--from",
            "a@legacy.test",
            "--to",
            "b@example.com",
        ],
    );
    let t = text(&o);
    assert!(
        t.contains("REFUSED:        451 4.3.2 Sending is disabled, try again later\n"),
        "{t}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!t.contains("SystemDisabled"), "{t}");
    assert!(t.contains("(identified by name (--app))"), "{t}");
}

/// `smarthost explain … | head -1`: the pipe closes early; no panic text,
/// exit 0.
#[test]
fn explain_into_a_closed_pipe_exits_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args([
            "explain",
            "--config",
            example().to_str().unwrap(),
            "--app",
            "webshop",
            "--from",
            "a@legacy.test",
            "--to",
        ])
        .args((0..2000).map(|i| format!("r{i}@example.com")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close our end, as `head -1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn usage_errors_exit_64_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["frobnicate"][..],
        &["run", "--log-format", "xml"],
        &["check-config", "--unknown"],
        &["explain", "--app", "a"],
        &["test-server"],
        &["hash-password", "extra"],
        &["limits"],
        &[],
    ] {
        let o = smarthost_in(dir.path(), args);
        assert_eq!(o.status.code(), Some(64), "{args:?}");
    }
    assert_eq!(smarthost_in(dir.path(), &["--help"]).status.code(), Some(0));
}

#[test]
fn check_config_says_it_checked_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let o = smarthost_in(dir.path(), &["check-config"]);
    assert!(o.status.success());
    assert!(
        text(&o).starts_with(
            "no --config given and no ./smarthost.toml here: the embedded default config: ok ("
        ),
        "{}",
        text(&o)
    );
}

/// test-server names the security mode as the config spells it.
#[test]
fn test_server_prints_config_spellings() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("smarthost.toml"),
        format!(
            r#"
[system]
hostname = "relay.test"
default_sender = "s@relay.test"
default_server = "up"
[[listener]]
address = "127.0.0.1:0"
auth = "none"
[tenant.t]
[application.a]
tenant = "t"
client_ips = ["127.0.0.1/32"]
[server.up]
host = "127.0.0.1"
port = {}
security = "starttls-when-available"
"#,
            sink.port()
        ),
    )
    .unwrap();
    let o = smarthost_in(dir.path(), &["test-server", "up", "--to", "r@example.com"]);
    let t = text(&o);
    assert!(
        t.starts_with(&format!(
            "server:       up (127.0.0.1:{}, security = \"starttls-when-available\")\n",
            sink.port()
        )),
        "{t}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!t.contains("StarttlsWhenAvailable"), "{t}");
}
