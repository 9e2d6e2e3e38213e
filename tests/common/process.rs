//! The `smarthost` binary as a child process, for what needs a process of
//! its own: signals, exit codes and memory (RSS) measurements. The listener
//! ports (port 0 in the config) are read from the relay's own log lines.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A running `smarthost run`.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its temp directory (config, outbox).
    pub dir: TempDir,
    ports: HashMap<String, u16>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Writes `toml` (with `{dir}` and `{certs}` replaced) and starts the
    /// binary on it; waits (bounded) until every listener is up.
    pub fn start(toml: &str) -> Proc {
        Proc::start_in(tempfile::tempdir().unwrap(), toml)
    }

    /// Like [`Proc::start`], in `dir` (e.g. the directory of a relay that
    /// was stopped, to start it again on the same spool).
    pub fn start_in(dir: TempDir, toml: &str) -> Proc {
        Self::start_full(dir, toml, &[], &[])
    }

    /// Like [`Proc::start_in`], with extra environment variables (e.g.
    /// the debug build's fault injection, `SMARTHOST_TEST_…`).
    pub fn start_in_with_env(dir: TempDir, toml: &str, env: &[(&str, &str)]) -> Proc {
        Self::start_full(dir, toml, &[], env)
    }

    /// [`Proc::start`], the binary run through `prefix` (e.g. `prlimit
    /// --nofile=64:64 --` to start it with few file descriptors).
    pub fn start_with_prefix(toml: &str, prefix: &[&str]) -> Proc {
        Self::start_full(tempfile::tempdir().unwrap(), toml, prefix, &[])
    }

    fn start_full(dir: TempDir, toml: &str, prefix: &[&str], env: &[(&str, &str)]) -> Proc {
        let text = super::relay::direct_by_default(toml)
            .replace("{dir}", dir.path().to_str().unwrap())
            .replace("{certs}", super::relay::certs().to_str().unwrap());
        let path = dir.path().join("smarthost.toml");
        std::fs::write(&path, &text).unwrap();
        let listeners = smarthost::config::load_file(&path).unwrap().listeners.len();
        let bin = env!("CARGO_BIN_EXE_smarthost");
        let (program, pre) = match prefix.split_first() {
            Some((p, rest)) => (*p, rest.iter().copied().chain([bin]).collect::<Vec<_>>()),
            None => (bin, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(pre)
            .args(["run", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(20);
        let ports = loop {
            let ports: HashMap<String, u16> = log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| listening(l))
                .collect();
            if ports.len() == listeners {
                break ports;
            }
            assert!(
                Instant::now() < end,
                "relay did not start:\n{}",
                log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Proc {
            child,
            dir,
            ports,
            log,
        }
    }

    /// `127.0.0.1:port` of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[name]))
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded by `timeout`) until the log so far satisfies `done`;
    /// otherwise panics with `what` and the whole log.
    pub fn wait_log(&self, what: &str, timeout: Duration, done: impl Fn(&[String]) -> bool) {
        let end = Instant::now() + timeout;
        loop {
            let log = self.log();
            if done(&log) {
                return;
            }
            assert!(Instant::now() < end, "{what}:\n{}", log.join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, waits (bounded) for the exit, and hands back the temp
    /// directory (config, spool, outbox) for a restart.
    pub fn stop(mut self) -> TempDir {
        self.signal("TERM");
        assert!(
            self.wait_exit(Duration::from_secs(30)).is_some(),
            "relay did not stop"
        );
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(listener, port)` from a "listening" log line, text or JSON.
fn listening(line: &str) -> Option<(String, u16)> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v["message"] != "listening" {
            return None;
        }
        let addr: SocketAddr = v["address"].as_str()?.parse().ok()?;
        return Some((v["listener"].as_str()?.to_owned(), addr.port()));
    }
    if !line.contains(" listening ") {
        return None;
    }
    let name = line.split("listener=").nth(1)?.split_whitespace().next()?;
    let addr = line.split("address=").nth(1)?.split_whitespace().next()?;
    Some((name.to_owned(), addr.parse::<SocketAddr>().ok()?.port()))
}
