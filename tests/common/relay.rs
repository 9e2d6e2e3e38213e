//! The relay under test, started in-process on port 0, plus client helpers:
//! swaks, Python's smtplib, and a raw socket for malformed input.
//!
//! [`TestRelay::start`] takes the config as inline TOML. `{dir}` is
//! replaced by the relay's temp directory (the config file lives there, so
//! relative paths such as `path = "outbox"` land in it) and `{certs}` by
//! the repository's `certs/` directory. Listener addresses should use port
//! 0; [`TestRelay::port`] tells the port each listener got.
#![allow(dead_code)]

use serde_json::Value;
use smarthost::server::{self, Relay};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The repository's test certificates.
pub fn certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// `toml` with `delivery = "direct"` in `[system]` unless it names a
/// delivery mode: the behaviour tests written for direct mode (the client's
/// reply reflects the upstream) keep testing it; queue tests say
/// `delivery = "queue"`.
pub fn direct_by_default(toml: &str) -> String {
    if toml.contains("delivery =") {
        return toml.to_owned();
    }
    match toml.find("[system]\n") {
        Some(i) => {
            let at = i + "[system]\n".len();
            format!("{}delivery = \"direct\"\n{}", &toml[..at], &toml[at..])
        }
        None => format!("{toml}\n[system]\ndelivery = \"direct\"\n"),
    }
}

/// A minimal config: one plaintext listener `main` on port 0 where loopback
/// clients are the application `app` of tenant `t`, delivering to a
/// capture outbox in `{dir}/outbox`. `extra` is appended.
pub fn simple_config(extra: &str) -> String {
    format!(
        r#"
[system]
delivery = "direct"
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
{extra}
"#
    )
}

/// A queue-mode config: the spool in `spool`, one plaintext listener
/// `main` on port 0 where loopback clients are the application `app` of
/// tenant `t`, delivering to the SMTP server `sink` on
/// `127.0.0.1:sink_port`. `extra` is appended (e.g. `[queue]`,
/// `[reload]`).
pub fn queue_config(sink_port: u16, spool: &str, extra: &str) -> String {
    format!(
        r#"
[system]
delivery = "queue"
hostname = "relay.test"
spool = "{spool}"
default_server = "sink"

[[listener]]
name = "main"
address = "127.0.0.1:0"
auth = "none"

[server.sink]
host = "127.0.0.1"
port = {sink_port}
security = "none"

[tenant.t]
sender = "app@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
{extra}
"#
    )
}

/// The relay under test.
pub struct TestRelay {
    /// The relay's shared state.
    pub relay: Arc<Relay>,
    ports: HashMap<String, u16>,
    /// Its temp directory (config file, outbox, spool).
    pub dir: TempDir,
    rt: Option<tokio::runtime::Runtime>,
    serving: Option<tokio::task::JoinHandle<()>>,
    admin: Option<SocketAddr>,
}

/// A message found in a capture outbox.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The `.eml` bytes.
    pub eml: Vec<u8>,
    /// The `.json` envelope.
    pub json: Value,
}

impl Captured {
    /// The message without the relay's own `Received:` header (the first field).
    pub fn without_received(&self) -> &[u8] {
        assert!(
            self.eml.starts_with(b"Received: "),
            "no Received header on top"
        );
        let mut i = 0;
        loop {
            let nl = self.eml[i..].iter().position(|&b| b == b'\n').unwrap() + i;
            i = nl + 1;
            if !matches!(self.eml.get(i), Some(b' ' | b'\t')) {
                return &self.eml[i..];
            }
        }
    }

    /// The value of the first header field `name` (unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.eml);
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

impl TestRelay {
    /// Loads `toml` (see module docs) and starts serving.
    pub fn start(toml: &str) -> TestRelay {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let text = direct_by_default(toml)
            .replace("{dir}", dir.path().to_str().unwrap())
            .replace("{certs}", certs().to_str().unwrap());
        let path = dir.path().join("smarthost.toml");
        std::fs::write(&path, &text).unwrap();
        let cfg = smarthost::config::load_file(&path).unwrap_or_else(|e| {
            panic!(
                "test config refused:\n{}",
                e.0.iter().map(|e| format!("  {e}\n")).collect::<String>()
            )
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let grace = cfg.limits.shutdown_grace;
        let bound = rt.block_on(server::bind(&cfg)).unwrap();
        let ports = bound
            .iter()
            .map(|b| (b.name.clone(), b.local_addr().unwrap().port()))
            .collect();
        let admin_listener = cfg
            .admin
            .as_ref()
            .map(|a| rt.block_on(smarthost::admin::bind(a.address)).unwrap());
        let admin = admin_listener.as_ref().map(|l| l.local_addr().unwrap());
        let relay = Relay::new(cfg);
        let r = relay.clone();
        let serving = rt.spawn(async move { r.serve(bound, grace).await });
        if let Some(l) = admin_listener {
            rt.spawn(smarthost::admin::serve(l, relay.clone()));
        }
        // Wait (bounded) until the accept loops run, as `run` does before READY.
        let end = Instant::now() + Duration::from_secs(5);
        while relay
            .readiness()
            .is_err_and(|why| why.iter().any(|w| w.contains("listeners")))
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        TestRelay {
            relay,
            ports,
            dir,
            rt: Some(rt),
            serving: Some(serving),
            admin,
        }
    }

    /// The port of listener `name`.
    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// Reloads the config file after `edit` rewrote it (with `{dir}` and
    /// `{certs}` replaced as at start); returns whether the reload went live.
    pub fn reload_with(&self, edit: impl FnOnce(String) -> String, probe: bool) -> bool {
        let path = self.dir.path().join("smarthost.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = edit(text)
            .replace("{dir}", self.dir.path().to_str().unwrap())
            .replace("{certs}", certs().to_str().unwrap());
        std::fs::write(&path, text).unwrap();
        let relay = self.relay.clone();
        self.rt
            .as_ref()
            .unwrap()
            .block_on(async move { relay.reload_and_report(probe, "test").await })
    }

    /// GET `path` on the admin port: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let addr = self.admin.expect("no [admin] in the test config");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one sample on `/metrics`, e.g.
    /// `smarthost_messages_total{tenant="t",...}`; panics when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no sample {sample} in\n{body}"))
            .parse()
            .unwrap()
    }

    /// `127.0.0.1:port` of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(name)))
    }

    /// The outbox directory `{dir}/outbox`.
    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// Messages in the capture outbox `dir` now, oldest first.
    pub fn captured_in(dir: &Path) -> Vec<Captured> {
        let mut ids: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        ids.retain(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        });
        ids.sort();
        ids.iter()
            .map(|j| Captured {
                json: serde_json::from_slice(&std::fs::read(j).unwrap()).unwrap(),
                eml: std::fs::read(j.with_extension("eml")).unwrap(),
            })
            .collect()
    }

    /// Messages in `{dir}/outbox` now.
    pub fn captured(&self) -> Vec<Captured> {
        Self::captured_in(&self.outbox())
    }

    /// Waits (bounded) until the outbox holds `n` messages; returns them.
    pub fn wait_captured(&self, n: usize, timeout: Duration) -> Vec<Captured> {
        let end = Instant::now() + timeout;
        loop {
            let c = self.captured();
            if c.len() >= n || Instant::now() > end {
                assert_eq!(
                    c.len(),
                    n,
                    "outbox holds {} message(s), expected {n}",
                    c.len()
                );
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Begins shutdown and waits (bounded by the grace period) for it to end.
    pub fn stop(mut self) {
        self.relay.shutdown();
        if let (Some(rt), Some(h)) = (self.rt.as_ref(), self.serving.take()) {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), h).await });
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.relay.shutdown();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Runs swaks with `args`, failing clearly when it is not installed.
pub fn swaks(args: &[&str]) -> Output {
    Command::new("swaks")
        .args(args)
        .args(["--timeout", "20"])
        .stdin(Stdio::null())
        .output()
        .expect("swaks is not installed: run tests/run.sh, which installs it")
}

/// Runs a Python script (Python's smtplib as the client). The script gets
/// `HOST`, `PORT`, `CA` (test CA file) and `ARGS` (the extra args) as
/// globals; whatever it prints is returned. Fails when the script fails.
pub fn python(port: u16, script: &str, args: &[&str]) -> String {
    let prelude = format!(
        "import smtplib, ssl, sys, json\nHOST='127.0.0.1'\nPORT={port}\nCA={:?}\nARGS={:?}\n",
        certs().join("ca.crt").to_str().unwrap(),
        args
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .output()
        .expect("python3 is not installed");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw SMTP client for malformed input and exact byte sequences.
pub struct Raw {
    reader: BufReader<TcpStream>,
    /// The socket.
    pub stream: TcpStream,
}

impl Raw {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> Raw {
        let mut r = Self::connect_no_greeting(addr);
        let g = r.reply();
        assert!(g.starts_with("220 "), "greeting: {g}");
        r
    }

    /// Connects without reading anything.
    pub fn connect_no_greeting(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Connects from the loopback address `from` (e.g. 127.0.0.2, to look
    /// like another client) and reads the greeting.
    pub fn connect_from(addr: SocketAddr, from: &str) -> Raw {
        let mut r = Raw::connect_no_greeting_from(addr, from);
        let g = r.reply();
        assert!(g.starts_with("220 "), "greeting: {g}");
        r
    }

    /// Connects from the loopback address `from` without reading anything.
    pub fn connect_no_greeting_from(addr: SocketAddr, from: &str) -> Raw {
        let local: SocketAddr = format!("{from}:0").parse().unwrap();
        let stream = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(local).unwrap();
                sock.connect(addr).await.unwrap().into_std().unwrap()
            });
        stream.set_nonblocking(false).unwrap();
        Raw::from_stream(stream)
    }

    /// Wraps an already connected socket (nothing is read).
    pub fn from_stream(stream: TcpStream) -> Raw {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one complete (possibly multi-line) reply.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() >= 4 && line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }

    /// Sends a command line and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends a command and asserts the reply code.
    pub fn expect(&mut self, line: &str, code: u16) -> String {
        let r = self.cmd(line);
        assert!(
            r.starts_with(&code.to_string()),
            "{line:?} → {r:?}, expected {code}"
        );
        r
    }

    /// EHLO, MAIL, RCPT for each recipient, DATA; each expected to succeed.
    pub fn begin(&mut self, from: &str, to: &[&str]) {
        self.expect("EHLO client.test", 250);
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for t in to {
            self.expect(&format!("RCPT TO:<{t}>"), 250);
        }
        self.expect("DATA", 354);
    }

    /// Whether the server closed the connection (reads until EOF, bounded).
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// The whole-message data a client sent, for byte comparisons.
pub fn sample_message(subject: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: App <app@legacy.test>\r\nTo: <rcpt@example.com>\r\nSubject: {subject}\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

/// Password of the user `user` in [`tls_config`].
pub const PASSWORD: &str = "webshop-secret";

/// A config with TLS: `submission` (STARTTLS, AUTH optional), `smtps`
/// (implicit TLS, AUTH required) and `plain` (no TLS, AUTH optional),
/// applications `authed` (AUTH user `user`, password [`PASSWORD`]) and
/// `local` (loopback by address). `extra` is appended.
pub fn tls_config(extra: &str) -> String {
    format!(
        r#"
[system]
hostname = "relay.test"
default_server = "outbox"

[[listener]]
name = "submission"
address = "127.0.0.1:0"
tls = "starttls"
auth = "optional"

[[listener]]
name = "smtps"
address = "127.0.0.1:0"
tls = "implicit"
auth = "required"

[[listener]]
name = "plain"
address = "127.0.0.1:0"
tls = "none"
auth = "optional"

[tls]
certificate = "{{certs}}/localhost.crt"
private_key = "{{certs}}/localhost.key"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.t]
sender = "sender@relay.test"

[application.authed]
tenant = "t"
auth_user = "user"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$JY4AKD9RcTjChNbtThTUMA$rk7JviL/djMbUfBfn9QJ+4YBCzeaGYZdmQYIM2Ei14M"
display_name = "Authed App"

[application.local]
tenant = "t"
client_ips = ["127.0.0.1"]
{extra}
"#
    )
}

/// SHA-256 (hex) of the certificate the TLS listener on `port` presents.
pub fn peer_certificate_sha256(port: u16) -> String {
    python(
        port,
        r#"
import socket, hashlib
s = socket.create_connection((HOST, PORT), timeout=10)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="localhost")
print(hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest())
"#,
        &[],
    )
    .trim()
    .to_owned()
}
