//! The shipped unit `packaging/smarthost.service`, hardening and all, under
//! a real systemd as PID 1.
//!
//! The test boots the host's own systemd in a `systemd-nspawn` container
//! whose root is a throwaway overlay of `/` (mounted in a private mount
//! namespace, so it vanishes with the container), installs the debug binary,
//! the unit unchanged and a config there as the unit file's header says
//! (system user `smarthost`, `/etc/smarthost` 0750 root:smarthost), and
//! drives `systemctl` inside through `nsenter`:
//!
//! * `start` returns only once systemd got READY=1 from the main PID
//!   (`Type=notify`, `NotifyAccess=main`); the relay answers on the host's
//!   loopback (the container shares its network) and a message goes through
//!   the spool under `/var/lib/smarthost` (the only writable path) to the
//!   capture outbox, written as the `smarthost` user.
//! * `reload` (`ExecReload` sends SIGHUP): systemd logs RELOADING=1 with a
//!   `MONOTONIC_USEC` on its own CLOCK_MONOTONIC, then READY=1; the edited
//!   config is live (the greeting names the new hostname).
//! * `stop`: STOPPING=1, the process exits 0, the port closes.
//!
//! On systemd 253 or later the same runs again with the drop-in the unit
//! file's comment recommends (`Type=notify-reload`, no `ExecReload`), where
//! systemd sends SIGHUP itself and finishes the reload job only after the
//! relay's RELOADING=1 (with a fresh `MONOTONIC_USEC`) and READY=1.
//! Debian 12 has systemd 252; to run that part there without touching the
//! host, point `SMARTHOST_TEST_SYSTEMD_DEBS` at a directory holding a newer
//! systemd's .debs (bookworm-backports: systemd, libsystemd-shared,
//! libsystemd0, systemd-dev), which are installed into the throwaway root.
//!
//! Needs root, `systemd-nspawn` (Debian: systemd-container), a writable
//! cgroup2 hierarchy and overlayfs; without them the test says SKIP, loudly
//! and naming what is missing, and passes. Every wait is bounded; the
//! container is powered off (or killed through its cgroup) and its cgroups
//! removed on every exit path, panics included.

mod common;

use common::relay::{Raw, TestRelay, sample_message};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs in a private mount namespace (`unshare --mount`): mounts the
/// overlay root, installs smarthost as the unit file's header says, and
/// becomes `systemd-nspawn`. Arguments: work dir, binary, unit, config,
/// machine name, then the `cgroup.procs` files to join first.
const BOOT: &str = r#"
set -eu
work=$1 bin=$2 unit=$3 config=$4 machine=$5
shift 5
# Into the test's own cgroups: nspawn makes its payload/supervisor groups
# under them, and the test can kill whatever is left through them.
for procs in "$@"; do echo $$ > "$procs"; done
m=$work/mnt
mount -t tmpfs tmpfs "$m"
mkdir "$m/lower" "$m/upper" "$m/work" "$m/root"
mount --bind / "$m/lower"
mount -t overlay overlay -o "lowerdir=$m/lower,upperdir=$m/upper,workdir=$m/work" "$m/root"
r=$m/root
# Optionally a newer systemd, into the throwaway root only.
if [ -n "${SMARTHOST_TEST_SYSTEMD_DEBS:-}" ]; then
  chroot "$r" dpkg -i --force-depends,breaks "$SMARTHOST_TEST_SYSTEMD_DEBS"/*.deb >/dev/null
fi
useradd --root "$r" --system --home-dir /var/lib/smarthost --shell /usr/sbin/nologin smarthost
install -m 0755 "$bin" "$r/usr/local/bin/smarthost"
install -m 0644 "$unit" "$r/etc/systemd/system/smarthost.service"
chroot "$r" install -d -m 0750 -o root -g smarthost /etc/smarthost
install -m 0640 "$config" "$r/etc/smarthost/smarthost.toml"
chroot "$r" chgrp smarthost /etc/smarthost/smarthost.toml
# sysinit.target: journald and the basics, none of the host's services
# (its Postfix, Redis ... are enabled for multi-user.target).
# timeout: a backstop should the test itself be killed (SIGTERM makes
# nspawn power the container off).
exec timeout --kill-after=10 120 systemd-nspawn --directory="$r" --machine="$machine" --register=no --keep-unit \
  --console=passive --boot -- systemd.unit=sysinit.target
"#;

/// Checks that mounting the overlay works here (in a throwaway namespace).
const PROBE: &str = r#"
set -eu
m=$1
mount -t tmpfs tmpfs "$m"
mkdir "$m/lower" "$m/upper" "$m/work" "$m/root"
mount --bind / "$m/lower"
mount -t overlay overlay -o "lowerdir=$m/lower,upperdir=$m/upper,workdir=$m/work" "$m/root"
test -x "$m/root/bin/sh"
"#;

/// The relay's config: a queue in the state directory, a capture outbox
/// next to it, and no file watching (only SIGHUP reloads).
fn config(port: u16, hostname: &str) -> String {
    format!(
        r#"
[system]
hostname = "{hostname}"
spool = "/var/lib/smarthost/spool"
default_server = "outbox"

[reload]
watch = false

[[listener]]
name = "main"
address = "127.0.0.1:{port}"
auth = "none"

[server.outbox]
kind = "capture"
path = "/var/lib/smarthost/outbox"

[tenant.t]
sender = "sender@relay.test"

[application.app]
tenant = "t"
client_ips = ["127.0.0.0/8"]
"#
    )
}

/// Says SKIP where `cargo test` does not swallow it (straight to fd 2, not
/// through the captured `eprintln!`).
fn skip(why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n********************************************************************\n\
         SKIP tests/systemd_unit.rs: {why}\n\
         The shipped systemd unit was NOT tested under a real systemd.\n\
         ********************************************************************"
    );
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// The effective uid, from /proc (no unsafe, no extra crate).
fn euid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The directories of this process's cgroup in the cgroup2 hierarchy and,
/// on a hybrid host, in the named `systemd` v1 hierarchy (systemd in the
/// container needs both there).
fn own_cgroups() -> Result<Vec<PathBuf>, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let path_of = |controllers: &str| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            (c == controllers).then(|| p.to_string())
        })
    };
    let mut v2 = None;
    let mut v1 = None;
    for line in mounts.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, point, fstype, opts) = (pre[3], pre[4], post[0], post[2]);
        let dir = |p: String| {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .trim_start_matches('/')
                .to_string();
            Path::new(point).join(rel)
        };
        if fstype == "cgroup2" && v2.is_none() {
            v2 = path_of("").map(dir);
        } else if fstype == "cgroup" && v1.is_none() && opts.split(',').any(|o| o == "name=systemd")
        {
            v1 = path_of("name=systemd").map(dir);
        }
    }
    let v2 = v2.ok_or("no cgroup2 hierarchy is mounted (systemd needs one)")?;
    Ok(std::iter::once(v2).chain(v1).collect())
}

/// A booted container with smarthost installed; powered off on drop.
struct Container {
    /// `timeout 120 systemd-nspawn …`.
    nspawn: Child,
    /// The container's PID 1, as the host sees it.
    leader: u32,
    /// Our cgroups, the first one cgroup2.
    cgroups: Vec<PathBuf>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Container {
    /// Boots, or says why this machine cannot (the test then skips).
    /// Failures after the environment checks panic.
    fn boot(config: &str) -> Result<Container, String> {
        if euid() != Some(0) {
            return Err("not running as root (mounts, cgroups and nspawn need it)".into());
        }
        for cmd in [
            "systemd-nspawn",
            "unshare",
            "nsenter",
            "useradd",
            "chroot",
            "timeout",
            "systemctl",
            "bash",
        ] {
            if !on_path(cmd) {
                let pkg = if cmd == "systemd-nspawn" {
                    " (Debian package systemd-container; tests/run.sh installs it)"
                } else {
                    ""
                };
                return Err(format!("`{cmd}` is not installed{pkg}"));
            }
        }
        if !Path::new("/lib/systemd/systemd").exists() {
            return Err("/lib/systemd/systemd is missing (package systemd)".into());
        }
        let parents = own_cgroups()?;
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::create_dir(&probe).unwrap();
        let out = Command::new("timeout")
            .args([
                "20",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "bash",
                "-c",
                PROBE,
                "probe",
            ])
            .arg(&probe)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "cannot mount an overlay of / in a private mount namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let name = format!("smarthost-test-{}", std::process::id());
        // Empty groups of earlier runs that were killed (SIGKILL skips Drop;
        // the timeout backstop then ends their containers).
        for p in &parents {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.strip_prefix("smarthost-test-")
                    .is_some_and(|pid| !Path::new("/proc").join(pid).exists())
                {
                    remove_cgroups(&[e.path()], Duration::ZERO);
                }
            }
        }
        let mut cgroups = Vec::new();
        for p in &parents {
            let cg = p.join(&name);
            if let Err(e) = std::fs::create_dir(&cg) {
                remove_cgroups(&cgroups, Duration::ZERO);
                return Err(format!("cannot create the cgroup {}: {e}", cg.display()));
            }
            cgroups.push(cg);
        }

        // From here on, failures are failures.
        let cfg = dir.path().join("smarthost.toml");
        std::fs::write(&cfg, config).unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/smarthost.service");
        let log = dir.path().join("nspawn.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            BOOT,
            "boot",
        ])
        .arg(dir.path())
        .arg(env!("CARGO_BIN_EXE_smarthost"))
        .arg(&unit)
        .arg(&cfg)
        .arg(&name);
        for cg in &cgroups {
            cmd.arg(cg.join("cgroup.procs"));
        }
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut c = Container {
            leader: 0,
            nspawn,
            cgroups,
            log,
            _dir: dir,
        };
        // The container's PID 1: nspawn's (under timeout) child running
        // systemd.
        let end = Instant::now() + Duration::from_secs(20);
        while c.leader == 0 {
            if let Some(st) = c.nspawn.try_wait().unwrap() {
                panic!(
                    "systemd-nspawn exited ({st}) before booting:\n{}",
                    c.nspawn_log()
                );
            }
            assert!(
                Instant::now() < end,
                "no container PID 1 within 20 s:\n{}",
                c.nspawn_log()
            );
            c.leader = child_running(c.nspawn.id(), "systemd-nspawn")
                .and_then(|n| child_running(n, "systemd"))
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(50));
        }
        // Booted: the manager answers and its start-up jobs are done.
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let out = c.run(&["systemctl", "is-system-running", "--wait"], 10);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            if let Some(st) = c.nspawn.try_wait().unwrap() {
                panic!(
                    "systemd-nspawn exited ({st}) while booting:\n{}",
                    c.nspawn_log()
                );
            }
            assert!(
                Instant::now() < end,
                "the container's systemd did not finish booting within 30 s (state {state:?}):\n{}",
                c.nspawn_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// Runs a command inside the container, killed after `secs`.
    fn run(&self, args: &[&str], secs: u32) -> Output {
        Command::new("timeout")
            .args([
                "--kill-after=2",
                &secs.to_string(),
                "nsenter",
                "-t",
                &self.leader.to_string(),
                "-a",
            ])
            .args(args)
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `systemctl ARGS`, bounded by 20 s; panics (with diagnostics) when it
    /// fails.
    fn systemctl(&self, args: &[&str]) {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        let out = self.run(&all, 20);
        assert!(
            out.status.success(),
            "systemctl {} failed ({}): {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.diagnostics()
        );
    }

    /// Properties of smarthost.service.
    fn show(&self) -> HashMap<String, String> {
        let out = self.run(&["systemctl", "show", "smarthost.service"], 20);
        assert!(
            out.status.success(),
            "systemctl show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The journal of smarthost.service: the relay's lines and systemd's
    /// about it (message text only).
    fn journal(&self) -> Vec<String> {
        let out = self.run(
            &[
                "journalctl",
                "-u",
                "smarthost.service",
                "-o",
                "cat",
                "--no-pager",
            ],
            20,
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits (bounded) until the unit's journal satisfies `done`.
    fn wait_journal(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let j = self.journal();
            if done(&j) {
                return j;
            }
            assert!(
                Instant::now() < end,
                "{what}; the unit's journal:\n{}",
                j.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container's root directory, seen from the host.
    fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader))
    }

    fn nspawn_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn diagnostics(&self) -> String {
        let status = self.run(
            &[
                "systemctl",
                "status",
                "--no-pager",
                "-l",
                "smarthost.service",
            ],
            20,
        );
        format!(
            "--- systemctl status:\n{}\n--- journal of smarthost.service:\n{}",
            String::from_utf8_lossy(&status.stdout),
            self.journal().join("\n")
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.leader != 0 {
            let _ = self.run(&["systemctl", "poweroff", "--no-block"], 10);
        }
        let end = Instant::now() + Duration::from_secs(20);
        while self.nspawn.try_wait().ok().flatten().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.nspawn.try_wait().ok().flatten().is_none() {
            let _ = writeln!(
                std::io::stderr(),
                "systemd_unit: the container did not power off; killing it"
            );
            // Everything nspawn started is in our cgroup2 group; without
            // cgroup.kill (Linux < 5.14), the container dies with nspawn.
            let _ = std::fs::write(self.cgroups[0].join("cgroup.kill"), "1");
            if let Some(n) = child_running(self.nspawn.id(), "systemd-nspawn") {
                let _ = Command::new("kill")
                    .args(["-KILL", &n.to_string()])
                    .status();
            }
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        remove_cgroups(&self.cgroups, Duration::from_secs(10));
    }
}

/// Removes cgroups, innermost first, once their processes are gone
/// (waiting up to `wait`).
fn remove_cgroups(cgroups: &[PathBuf], wait: Duration) {
    for cg in cgroups {
        let end = Instant::now() + wait;
        loop {
            let mut dirs = Vec::new();
            collect_dirs(cg, &mut dirs);
            // Deepest first.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in &dirs {
                let _ = std::fs::remove_dir(d);
            }
            if !cg.exists() || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if cg.exists() && !wait.is_zero() {
            let _ = writeln!(
                std::io::stderr(),
                "systemd_unit: could not remove the cgroup {}",
                cg.display()
            );
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
        out.push(dir.to_path_buf());
    }
}

/// The pid of a child of `parent` whose command name is `comm`.
fn child_running(parent: u32, comm: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && &stat[open + 1..close] == comm {
            return Some(pid);
        }
    }
    None
}

/// The fields of systemd's debug line for a notification datagram from the
/// service: `smarthost.service: Got notification message from PID 51 (RELOADING=1, MONOTONIC_USEC=…)`.
fn notification(line: &str) -> Option<&str> {
    let at = line.find("Got notification message from PID ")?;
    line[at..]
        .split_once(" (")
        .map(|(_, rest)| rest.trim_end_matches(')'))
}

/// CLOCK_MONOTONIC in microseconds, read here independently of
/// `smarthost::notify`: the clock systemd compares `MONOTONIC_USEC` with
/// (the container has no time namespace of its own).
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// The relay's greeting line.
fn greeting(addr: SocketAddr) -> String {
    let mut c = Raw::connect_no_greeting(addr);
    let g = c.reply();
    let _ = c.cmd("QUIT");
    g
}

/// The journal lines after the first `n`.
fn after(j: &[String], n: usize) -> &[String] {
    &j[n.min(j.len())..]
}

/// One start / reload / stop cycle; `notify_reload` when the unit runs as
/// `Type=notify-reload`.
fn cycle(c: &Container, port: u16, notify_reload: bool, round: &str) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg_path = c.root().join("etc/smarthost/smarthost.toml");
    std::fs::write(&cfg_path, config(port, &format!("before-{round}.test"))).unwrap();
    let seen = c.journal().len();

    // Start: systemctl returns once READY=1 came from the main PID.
    c.systemctl(&["start", "smarthost.service"]);
    let s = c.show();
    let want_type = if notify_reload {
        "notify-reload"
    } else {
        "notify"
    };
    assert_eq!(s["Type"], want_type);
    assert_eq!(s["NotifyAccess"], "main");
    assert_eq!(
        (
            s["ActiveState"].as_str(),
            s["SubState"].as_str(),
            s["StatusText"].as_str()
        ),
        ("active", "running", "serving"),
        "{}",
        c.diagnostics()
    );
    let g = greeting(addr);
    assert!(g.starts_with(&format!("220 before-{round}.test ")), "{g}");
    // A message goes through the spool and the capture server, both under
    // the state directory, written as the unit's user.
    let subject = format!("via systemd {round}");
    let mut smtp = Raw::connect(addr);
    smtp.begin("app@legacy.test", &["rcpt@example.com"]);
    smtp.send(&sample_message(&subject, b"hello\r\n"));
    smtp.expect(".", 250);
    let _ = smtp.cmd("QUIT");
    let outbox = c.root().join("var/lib/smarthost/outbox");
    let end = Instant::now() + Duration::from_secs(10);
    let captured = loop {
        let found = TestRelay::captured_in(&outbox)
            .into_iter()
            .find(|m| m.header("Subject").as_deref() == Some(subject.as_str()));
        if let Some(m) = found {
            break m;
        }
        assert!(
            Instant::now() < end,
            "message not captured within 10 s\n{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let from = captured.header("From").unwrap_or_default();
    assert!(from.contains("<sender@relay.test>"), "From: {from}");
    let passwd = std::fs::read_to_string(c.root().join("etc/passwd")).unwrap();
    let uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("smarthost:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|u| u.parse().ok())
        .expect("no smarthost user in the container");
    let eml = std::fs::read_dir(&outbox)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .unwrap();
    assert_eq!(
        eml.metadata().unwrap().uid(),
        uid,
        "outbox file not written by the smarthost user"
    );

    // Reload after an edit.
    std::fs::write(&cfg_path, config(port, &format!("after-{round}.test"))).unwrap();
    let t0 = monotonic_usec();
    c.systemctl(&["reload", "smarthost.service"]);
    if notify_reload {
        // systemd finished the reload job only after RELOADING=1 (with a
        // MONOTONIC_USEC not older than its own SIGHUP) and READY=1: the
        // new config is live now, no waiting.
        let g = greeting(addr);
        assert!(g.starts_with(&format!("220 after-{round}.test ")), "{g}");
        let j = c.journal();
        assert!(
            after(&j, seen)
                .iter()
                .any(|l| l.contains("Changed reload-signal -> reload-notify")),
            "systemd did not take RELOADING=1 as the answer to its SIGHUP:\n{}",
            after(&j, seen).join("\n")
        );
    }
    // With Type=notify the job ends when `kill -HUP` returns, so wait for
    // READY=1 after RELOADING=1.
    let j = c.wait_journal("no RELOADING=1 then READY=1 after the reload", |j| {
        let n: Vec<&str> = after(j, seen)
            .iter()
            .filter_map(|l| notification(l))
            .collect();
        let r = n.iter().position(|m| m.starts_with("RELOADING=1"));
        r.is_some_and(|r| n[r + 1..].iter().any(|m| m.starts_with("READY=1")))
    });
    let t1 = monotonic_usec();
    let j = after(&j, seen);
    let reloading = j
        .iter()
        .filter_map(|l| notification(l))
        .find(|m| m.starts_with("RELOADING=1"))
        .unwrap();
    let usec: u64 = reloading
        .split(", ")
        .find_map(|f| f.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading}"))
        .parse()
        .unwrap();
    assert!(
        t0 <= usec && usec <= t1,
        "MONOTONIC_USEC={usec} not within the reload ({t0}..{t1})"
    );
    assert!(
        j.iter()
            .any(|l| l.contains("config reloaded") && l.contains("SIGHUP")),
        "the relay did not log the reload:\n{}",
        j.join("\n")
    );
    assert!(
        !j.iter().any(|l| l.contains("reception only permitted")),
        "systemd refused a notification:\n{}",
        j.join("\n")
    );
    let g = greeting(addr);
    assert!(g.starts_with(&format!("220 after-{round}.test ")), "{g}");
    let s = c.show();
    assert_eq!(
        (
            s["ActiveState"].as_str(),
            s["SubState"].as_str(),
            s["StatusText"].as_str()
        ),
        ("active", "running", "serving"),
        "{}",
        c.diagnostics()
    );

    // Stop: STOPPING=1, a clean exit, the port closed.
    c.systemctl(&["stop", "smarthost.service"]);
    let s = c.show();
    assert_eq!(
        (s["ActiveState"].as_str(), s["Result"].as_str()),
        ("inactive", "success"),
        "{}",
        c.diagnostics()
    );
    // Exit status 0 (systemd counts death by SIGTERM as success too).
    let j = c.wait_journal("no STOPPING=1 then exit status 0", |j| {
        let j = after(j, seen);
        let stopping = j
            .iter()
            .position(|l| notification(l).is_some_and(|m| m.starts_with("STOPPING=1")));
        stopping.is_some_and(|i| {
            j[i..]
                .iter()
                .any(|l| l.contains("Main process exited, code=exited, status=0/SUCCESS"))
        })
    });
    assert!(
        after(&j, seen)
            .iter()
            .any(|l| l.contains("smarthost stopped")),
        "the relay did not log its stop"
    );

    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "port {port} still open after stop"
    );
}

#[test]
fn the_shipped_unit_starts_reloads_and_stops_under_systemd() {
    let port = common::postfix::free_port();
    let c = match Container::boot(&config(port, "boot.test")) {
        Ok(c) => c,
        Err(why) => {
            skip(&why);
            return;
        }
    };
    // systemd's debug log shows each notification datagram it accepted.
    c.systemctl(&["log-level", "debug"]);
    cycle(&c, port, false, "notify");

    let version = c.run(&["systemctl", "--version"], 10);
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("systemctl --version");
    if version >= 253 {
        // What the unit file's comment recommends there.
        let dropin = c.root().join("etc/systemd/system/smarthost.service.d");
        std::fs::create_dir_all(&dropin).unwrap();
        std::fs::write(
            dropin.join("notify-reload.conf"),
            "[Service]\nType=notify-reload\nExecReload=\n",
        )
        .unwrap();
        c.systemctl(&["daemon-reload"]);
        cycle(&c, port, true, "notify-reload");
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "systemd_unit: systemd {version} < 253 has no Type=notify-reload; only Type=notify was tested"
        );
    }
}
