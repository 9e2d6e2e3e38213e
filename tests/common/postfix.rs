//! Mail-server fixtures for integration tests.
//!
//! * [`Postfix`]: a private, unprivileged-port Postfix instance on 127.0.0.1
//!   (own config, queue and data directories in a [`TempDir`]) that relays
//!   everything it accepts to an [`SmtpSink`] (default) or hands it to a
//!   `pipe(8)` transport ([`PostfixDelivery::Pipe`]). Its smtpd can offer or
//!   require STARTTLS, run in implicit-TLS (wrapper) mode, offer Cyrus SASL
//!   AUTH PLAIN/LOGIN backed by a private sasldb, and answer chosen
//!   recipients/senders/everyone with chosen failure replies.
//! * [`SmtpSink`]: Postfix's `smtp-sink(1)` alone, as a fast upstream that
//!   records each transaction to a file and can be told to fail at given
//!   commands.
//! * [`Tarpit`]: a TCP listener that accepts and never says anything.
//! * [`closed_port`]: a port on 127.0.0.1 where nothing listens.
//!
//! Everything here is blocking std code (plus `*_async` waiting helpers for
//! tokio tests whose server runs on the same runtime). All ports are picked by
//! binding `127.0.0.1:0`; every directory is a fresh temp dir, so fixtures may
//! run in parallel in one test binary and across binaries. Every spawned
//! process runs in its own process group under `timeout(1)` (a backstop for
//! leaked processes) and the whole group is killed on `Drop`.
//!
//! Postfix needs root (the fixture chowns its queue to the `postfix` user);
//! [`SmtpSink`] also works unprivileged.
//!
//! # What a [`Received`] holds
//!
//! `smtp-sink` writes each message as text lines ending in LF: CRLF becomes
//! LF, dot-stuffing is already undone, a bare CR is lost. [`Received::data`]
//! turns every LF back into CRLF, so any message whose lines all end in CRLF
//! and that has no bare CR/LF comes back byte for byte (8-bit and UTF-8 bytes,
//! long lines and leading dots included). When Postfix is in front it
//! prepends exactly one header, its own `Received:` trace field
//! (`by postfix-fixture.test (Postfix) with ESMTP(S)(A) id ...`); strip it with
//! [`Received::data_without_postfix_received`]. Postfix is configured not to
//! add Message-ID, Date, From or To (`local_header_rewrite_clients =`), not to
//! convert 8-bit MIME and not to fold long lines.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

/// `myhostname` of every fixture Postfix instance; it appears in its banner,
/// its EHLO reply and its `Received:` header (`by postfix-fixture.test (Postfix)`).
pub const FIXTURE_HOSTNAME: &str = "postfix-fixture.test";

/// Cyrus SASL realm the fixture's users are created in (equal to
/// [`FIXTURE_HOSTNAME`] and set as `smtpd_sasl_local_domain`), so clients log
/// in with the bare user name.
pub const SASL_REALM: &str = FIXTURE_HOSTNAME;

/// How often waiting helpers poll.
const POLL: Duration = Duration::from_millis(50);
/// How long a fixture may take to start accepting connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Backstop: every spawned process is killed by `timeout(1)` after this many
/// seconds even if its fixture is never dropped (e.g. the test process is
/// killed).
const MAX_PROCESS_LIFETIME_SECS: u64 = 1800;
/// Port-collision retries for fixtures that pick their ports before spawning.
const START_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// The repository's `certs/` directory (test CA and `localhost` certificate,
/// see `certs/README.md`).
pub fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
/// released). Never returns the same port twice within one process.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if handed_out.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

/// A port on 127.0.0.1 on which nothing listens, so connecting to it is
/// refused at once (picked like [`free_port`]; the race with another process
/// binding it is accepted).
pub fn closed_port() -> u16 {
    free_port()
}

/// Finds a system binary in the usual places (the CI environment may lack
/// `/usr/sbin` in `PATH`); panics naming the Debian package if missing.
fn find_binary(name: &str, package: &str) -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ] {
        candidates.push(Path::new(dir).join(name));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found; install it with `apt-get install {package}`")
        })
}

/// Postfix's daemon directory (where `master` lives), from `postconf -d`.
fn postfix_daemon_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let postconf = find_binary("postconf", "postfix");
        let out = Command::new(postconf)
            .args(["-d", "-h", "daemon_directory"])
            .output()
            .expect("run postconf");
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dir = if dir.is_empty() {
            PathBuf::from("/usr/lib/postfix/sbin")
        } else {
            PathBuf::from(dir)
        };
        assert!(
            dir.join("master").is_file(),
            "Postfix master not found in {}; install it with `apt-get install postfix`",
            dir.display()
        );
        dir
    })
    .clone()
}

/// Whether this process runs with effective uid 0.
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Looks up a numeric id in `/etc/passwd` or `/etc/group`.
fn lookup_id(file: &str, name: &str) -> u32 {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {file}: {e}"));
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[0] == name)
        .and_then(|f| f[2].parse().ok())
        .unwrap_or_else(|| panic!("`{name}` not found in {file}; is postfix installed?"))
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

fn mkdir(path: &Path, mode: u32, owner: Option<(u32, u32)>) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
    set_mode(path, mode);
}

/// Writes a file and backdates its mtime by a minute: Postfix's
/// `dict_load_file()` (main.cf, master.cf, texthash maps) sleeps in 300 ms
/// steps until a file's mtime is in the past, which cost ~2 s per start.
fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let past = SystemTime::now() - Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(past))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
}

/// A fresh temp dir that other users (postfix, nobody) may traverse.
fn world_traversable_tempdir(prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir");
    set_mode(dir.path(), 0o755);
    dir
}

/// Last `max` bytes of a file, lossily decoded (for failure messages).
fn file_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("(no {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Tries to connect until `deadline`; with `expect_greeting`, also requires
/// the first reply line to start with `220`. Returns the last error.
fn probe(addr: SocketAddr, expect_greeting: bool) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    if expect_greeting {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .map_err(|e| format!("read greeting from {addr}: {e}"))?;
        if !line.starts_with("220") {
            return Err(format!("greeting from {addr} was {line:?}"));
        }
        let _ = stream.write_all(b"QUIT\r\n");
    }
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A spawned process tree: `timeout(1)` as the leader of a new process group,
/// with the real program as its child. Stopping signals the whole group.
struct Proc {
    child: Child,
    name: String,
    stopped: bool,
}

impl Proc {
    /// Spawns `program args` under `timeout` in a new process group.
    fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        stdout: Stdio,
        stderr: Stdio,
    ) -> io::Result<Self> {
        let timeout = find_binary("timeout", "coreutils");
        let child = Command::new(timeout)
            .arg("--kill-after=5")
            .arg(MAX_PROCESS_LIFETIME_SECS.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()?;
        Ok(Self {
            child,
            name: name.to_string(),
            stopped: false,
        })
    }

    /// Whether the process (group leader) is still running.
    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new(find_binary("kill", "procps"))
            .args(["-s", signal, "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM to the group, up to 3 s for it to exit, then SIGKILL to
    /// whatever is left of the group.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        if self.is_running() {
            self.signal_group("TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Sweep stragglers (e.g. Postfix daemons) even if the leader is gone.
        self.signal_group("KILL");
        if let Err(e) = self.child.wait() {
            eprintln!("fixture: waiting for {} failed: {e}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// Received messages
// ---------------------------------------------------------------------------

/// One mail transaction as recorded by the upstream (smtp-sink dump or the
/// Postfix pipe transport).
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    /// Envelope sender without angle brackets (`""` for the null sender).
    pub mail_from: String,
    /// ESMTP parameters that followed `MAIL FROM:<...>`, e.g. `BODY=8BITMIME`.
    pub mail_params: Vec<String>,
    /// Envelope recipients without angle brackets, in RCPT order.
    pub rcpt_to: Vec<String>,
    /// ESMTP parameters of each RCPT (same order as `rcpt_to`), e.g.
    /// `ORCPT=rfc822;b@y.test` as added by Postfix.
    pub rcpt_params: Vec<Vec<String>>,
    /// Argument of the last HELO/EHLO seen by smtp-sink (behind Postfix that
    /// is Postfix's own `postfix-fixture.test`); `None` with pipe delivery.
    pub helo: Option<String>,
    /// The message as received (headers and body, CRLF line endings, no
    /// dot-stuffing, no terminating `.` line).
    pub data: Vec<u8>,
    /// The dump file this was parsed from.
    pub file: PathBuf,
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.data[..self.data.len().min(300)];
        f.debug_struct("Received")
            .field("mail_from", &self.mail_from)
            .field("mail_params", &self.mail_params)
            .field("rcpt_to", &self.rcpt_to)
            .field("rcpt_params", &self.rcpt_params)
            .field("helo", &self.helo)
            .field("data_len", &self.data.len())
            .field("data_start", &String::from_utf8_lossy(shown))
            .field("file", &self.file)
            .finish()
    }
}

impl Received {
    /// `data` without the `Received:` header that the fixture Postfix
    /// prepends (only if the first header field is one naming
    /// `FIXTURE_HOSTNAME (Postfix)`; otherwise `data` unchanged).
    pub fn data_without_postfix_received(&self) -> &[u8] {
        let d = &self.data[..];
        if !d.starts_with(b"Received:") {
            return d;
        }
        // End of the first header field: a CRLF not followed by SP/HT.
        let mut end = None;
        let mut i = 0;
        while let Some(off) = find(&d[i..], b"\r\n") {
            let next = i + off + 2;
            if !matches!(d.get(next), Some(b' ') | Some(b'\t')) {
                end = Some(next);
                break;
            }
            i = next;
        }
        let Some(end) = end else { return d };
        let marker = format!("by {FIXTURE_HOSTNAME} (Postfix)");
        if find(&d[..end], marker.as_bytes()).is_some() {
            &d[end..]
        } else {
            d
        }
    }

    /// The value of the first header field `name` (case-insensitive), with
    /// folding CRLFs removed; `None` if absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let head_end = find(&self.data, b"\r\n\r\n").map_or(self.data.len(), |p| p + 2);
        let head = String::from_utf8_lossy(&self.data[..head_end]);
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            match &mut value {
                Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
                Some(_) => break,
                None => {
                    if let Some((n, v)) = line.split_once(':')
                        && n.eq_ignore_ascii_case(name)
                    {
                        value = Some(v.trim_start().to_string());
                    }
                }
            }
        }
        value.map(|v| v.trim_end().to_string())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits smtp-sink's `X-Mail-Args`/`X-Rcpt-Args` text (`<addr> PARAM...`)
/// into the address without brackets and the parameters.
fn split_args(args: &str) -> (String, Vec<String>) {
    let args = args.trim();
    let args = args
        .strip_prefix("FROM:")
        .or_else(|| args.strip_prefix("TO:"))
        .unwrap_or(args)
        .trim_start();
    let (addr, rest) = if let Some(inner) = args.strip_prefix('<') {
        // Find the closing '>' outside a quoted local part.
        let mut quoted = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = !quoted,
                '>' if !quoted => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        match close {
            Some(i) => (inner[..i].to_string(), &inner[i + 1..]),
            None => (inner.to_string(), ""),
        }
    } else {
        let (a, r) = args.split_once(' ').unwrap_or((args, ""));
        (a.to_string(), r)
    };
    (addr, rest.split_whitespace().map(str::to_string).collect())
}

/// Parses one dump file (smtp-sink's format, also written by the fixture's
/// pipe script): `X-*` lines, a three-line `Received:` header, the message
/// with LF line endings, one empty line.
fn parse_dump(bytes: &[u8], file: &Path) -> Result<Received, String> {
    let mut r = Received {
        mail_from: String::new(),
        mail_params: Vec::new(),
        rcpt_to: Vec::new(),
        rcpt_params: Vec::new(),
        helo: None,
        data: Vec::new(),
        file: file.to_path_buf(),
    };
    let mut pos = 0;
    let next_line = |pos: &mut usize| -> Option<String> {
        let rest = &bytes[*pos..];
        let nl = rest.iter().position(|&b| b == b'\n')?;
        *pos += nl + 1;
        Some(String::from_utf8_lossy(&rest[..nl]).into_owned())
    };
    let mut saw_mail = false;
    loop {
        let line = next_line(&mut pos).ok_or("dump ended inside its preamble")?;
        if let Some(v) = line.strip_prefix("X-Mail-Args:") {
            let (addr, params) = split_args(v);
            r.mail_from = addr;
            r.mail_params = params;
            saw_mail = true;
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args:") {
            let (addr, params) = split_args(v);
            r.rcpt_to.push(addr);
            r.rcpt_params.push(params);
        } else if let Some(v) = line.strip_prefix("X-Helo-Args:") {
            r.helo = Some(v.trim().to_string());
        } else if line.starts_with("Received:") {
            // smtp-sink's own three-line trace header ends the preamble.
            for _ in 0..2 {
                if bytes.get(pos) == Some(&b'\t') {
                    next_line(&mut pos);
                }
            }
            break;
        } else if !line.starts_with("X-") {
            return Err(format!("unexpected preamble line {line:?}"));
        }
    }
    if !saw_mail {
        return Err("no X-Mail-Args line".into());
    }
    let content = &bytes[pos..];
    let content = content
        .strip_suffix(b"\n")
        .ok_or("dump does not end with the empty trailer line")?;
    let mut data = Vec::with_capacity(content.len() + content.len() / 32);
    for &b in content {
        if b == b'\n' {
            data.push(b'\r');
        }
        data.push(b);
    }
    r.data = data;
    Ok(r)
}

/// A directory of dump files `msg.*` and how to tell which are complete.
struct DumpDir {
    dir: PathBuf,
    /// smtp-sink's running "messages received" counter (its `-c` output);
    /// `None` when files appear atomically (pipe delivery renames them).
    counter: Option<Arc<AtomicU64>>,
    cache: Mutex<HashMap<PathBuf, Received>>,
}

impl DumpDir {
    fn new(dir: PathBuf, counter: Option<Arc<AtomicU64>>) -> Self {
        Self {
            dir,
            counter,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// All complete messages so far, oldest first.
    fn snapshot(&self) -> Vec<Received> {
        struct Candidate {
            path: PathBuf,
            mtime: SystemTime,
        }
        let mut candidates = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with("msg.") {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.len() < 2 {
                continue; // smtp-sink creates the file (empty) at MAIL time
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if self.counter.is_some() {
                // A finished dump ends with the message's last LF plus the
                // empty trailer line.
                let mut tail = [0u8; 2];
                let ok = fs::File::open(&path)
                    .and_then(|mut f| {
                        f.seek(SeekFrom::End(-2))?;
                        f.read_exact(&mut tail)
                    })
                    .is_ok();
                if !ok || &tail != b"\n\n" {
                    continue;
                }
            }
            candidates.push(Candidate { path, mtime });
        }
        candidates.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.path.cmp(&b.path)));
        if let Some(counter) = &self.counter {
            // smtp-sink counts a message when it sees the final ".". If it
            // has counted fewer than there are candidates, one candidate is a
            // partial write that happens to end in "\n\n": keep only those
            // that have not changed for a while, at most `counted` of them.
            let counted = usize::try_from(counter.load(Ordering::SeqCst)).unwrap_or(usize::MAX);
            if counted < candidates.len() {
                let settled = SystemTime::now() - Duration::from_millis(500);
                candidates.retain(|c| c.mtime <= settled);
                candidates.truncate(counted);
            }
        }
        let mut cache = self.cache.lock().expect("dump cache");
        let mut out = Vec::with_capacity(candidates.len());
        for c in candidates {
            if let Some(r) = cache.get(&c.path) {
                out.push(r.clone());
                continue;
            }
            let bytes =
                fs::read(&c.path).unwrap_or_else(|e| panic!("read dump {}: {e}", c.path.display()));
            let r = parse_dump(&bytes, &c.path)
                .unwrap_or_else(|e| panic!("bad dump file {}: {e}", c.path.display()));
            cache.insert(c.path, r.clone());
            out.push(r);
        }
        out
    }

    fn wait(&self, n: usize, timeout: Duration, diagnostics: &dyn Fn() -> String) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.snapshot();
            if got.len() >= n {
                return got;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {n} message(s) within {timeout:?}, got {}: {got:#?}\n{}",
                    got.len(),
                    diagnostics()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    async fn wait_async(
        &self,
        n: usize,
        timeout: Duration,
        diagnostics: &dyn Fn() -> String,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.snapshot();
            if got.len() >= n {
                return got;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {n} message(s) within {timeout:?}, got {}: {got:#?}\n{}",
                    got.len(),
                    diagnostics()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

// ---------------------------------------------------------------------------
// smtp-sink
// ---------------------------------------------------------------------------

/// Builder for [`SmtpSink`]. Command names are smtp-sink's: `CONNECT`,
/// `HELO`, `EHLO`, `MAIL`, `RCPT`, `DATA`, `.` (end of data), `RSET`,
/// `NOOP`, `QUIT` (case-insensitive).
#[derive(Debug, Clone, Default)]
pub struct SmtpSinkBuilder {
    soft_reject: Vec<String>,
    hard_reject: Vec<String>,
    reply_421: Vec<String>,
    disconnect: Vec<String>,
    delays: Vec<(String, u64)>,
    soft_reply: Option<String>,
    hard_reply: Option<String>,
    no_8bitmime: bool,
    no_esmtp: bool,
    no_pipelining: bool,
    no_auth: bool,
    hostname: Option<String>,
}

impl SmtpSinkBuilder {
    /// Answer `cmd` with a 4xx reply (smtp-sink `-r`; default text
    /// `450 4.3.0 Error: command failed`). `CONNECT` makes the greeting a
    /// 450. Implies no PIPELINING.
    pub fn soft_reject(mut self, cmd: &str) -> Self {
        self.soft_reject.push(cmd.to_string());
        self
    }

    /// Answer `cmd` with a 5xx reply (smtp-sink `-f`; default text
    /// `500 5.3.0 Error: command failed`). Implies no PIPELINING.
    pub fn hard_reject(mut self, cmd: &str) -> Self {
        self.hard_reject.push(cmd.to_string());
        self
    }

    /// Answer `cmd` with `421 4.0.0 Server closing connection` and close the
    /// connection (smtp-sink `-Q`). `CONNECT` gives a 421 greeting.
    pub fn reply_421(mut self, cmd: &str) -> Self {
        self.reply_421.push(cmd.to_string());
        self
    }

    /// Close the connection without replying after `cmd` (smtp-sink `-q`).
    /// With `.` the message is still recorded, but never acknowledged.
    pub fn disconnect_at(mut self, cmd: &str) -> Self {
        self.disconnect.push(cmd.to_string());
        self
    }

    /// Wait `secs` seconds before answering `cmd` (smtp-sink `-W`);
    /// `delay("CONNECT", 30)` delays the greeting.
    pub fn delay(mut self, cmd: &str, secs: u64) -> Self {
        self.delays.push((cmd.to_string(), secs));
        self
    }

    /// Text of soft rejects, e.g. `"451 4.7.1 Try again later"` (`-b`).
    pub fn soft_reject_reply(mut self, reply: &str) -> Self {
        self.soft_reply = Some(reply.to_string());
        self
    }

    /// Text of hard rejects, e.g. `"554 5.7.1 Rejected"` (`-B`).
    pub fn hard_reject_reply(mut self, reply: &str) -> Self {
        self.hard_reply = Some(reply.to_string());
        self
    }

    /// Do not announce 8BITMIME (`-8`).
    pub fn no_8bitmime(mut self) -> Self {
        self.no_8bitmime = true;
        self
    }

    /// Do not announce ESMTP: EHLO is rejected (`-e`).
    pub fn no_esmtp(mut self) -> Self {
        self.no_esmtp = true;
        self
    }

    /// Do not announce PIPELINING (`-p`).
    pub fn no_pipelining(mut self) -> Self {
        self.no_pipelining = true;
        self
    }

    /// Do not announce AUTH (`-a`). By default smtp-sink announces
    /// `AUTH PLAIN LOGIN` and accepts any credentials.
    pub fn no_auth(mut self) -> Self {
        self.no_auth = true;
        self
    }

    /// Host name in greeting and EHLO reply (`-h`, default `smtp-sink`).
    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = Some(name.to_string());
        self
    }

    fn args(&self, dump_template: &Path, port: u16) -> Vec<String> {
        let mut a: Vec<String> = vec!["-c".into(), "-4".into()];
        if running_as_root() {
            a.extend(["-u".into(), "nobody".into()]);
        }
        a.extend(["-d".into(), dump_template.display().to_string()]);
        let list = |v: &[String]| v.join(",");
        for (flag, cmds) in [
            ("-r", &self.soft_reject),
            ("-f", &self.hard_reject),
            ("-Q", &self.reply_421),
            ("-q", &self.disconnect),
        ] {
            if !cmds.is_empty() {
                a.extend([flag.to_string(), list(cmds)]);
            }
        }
        for (cmd, secs) in &self.delays {
            a.extend(["-W".into(), format!("{cmd}:{secs}")]);
        }
        if let Some(r) = &self.soft_reply {
            a.extend(["-b".into(), r.clone()]);
        }
        if let Some(r) = &self.hard_reply {
            a.extend(["-B".into(), r.clone()]);
        }
        for (flag, on) in [
            ("-8", self.no_8bitmime),
            ("-e", self.no_esmtp),
            ("-p", self.no_pipelining),
            ("-a", self.no_auth),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        if let Some(h) = &self.hostname {
            a.extend(["-h".into(), h.clone()]);
        }
        a.extend([format!("127.0.0.1:{port}"), "100".into()]);
        a
    }

    /// Starts smtp-sink on a free port and waits (up to 10 s) until it
    /// accepts connections. Panics with its stderr on failure.
    pub fn start(self) -> SmtpSink {
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.try_start() {
                Ok(sink) => return sink,
                Err((retry, e)) => {
                    last_err = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("smtp-sink fixture failed to start: {last_err}");
    }

    fn try_start(&self) -> Result<SmtpSink, (bool, String)> {
        let started = Instant::now();
        let binary = find_binary("smtp-sink", "postfix");
        let dir = world_traversable_tempdir("smtp-sink-");
        let dump_dir = dir.path().join("dump");
        mkdir(&dump_dir, 0o777, None);
        let port = free_port();
        let stderr_path = dir.path().join("stderr");
        let stderr = fs::File::create(&stderr_path).map_err(|e| (false, e.to_string()))?;
        // "msg." has no strftime(3) escapes; smtp-sink appends a random hex id.
        let args = self.args(&dump_dir.join("msg."), port);
        let mut proc = Proc::spawn(
            "smtp-sink",
            &binary,
            &args,
            Stdio::piped(),
            Stdio::from(stderr),
        )
        .map_err(|e| (false, format!("spawn {}: {e}", binary.display())))?;

        // `-c` prints "sess=N quit=N mesg=N\r" after every session / QUIT /
        // final "."; follow it to know how many messages are complete.
        let counter = Arc::new(AtomicU64::new(0));
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let reader = {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || follow_counter(stdout, &counter))
        };

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if !proc.is_running() {
                let err = file_tail(&stderr_path, 4000);
                let retry = err.contains("in use");
                return Err((retry, format!("smtp-sink exited: {err}")));
            }
            match probe(addr, false) {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err((
                        false,
                        format!("{e}; stderr: {}", file_tail(&stderr_path, 4000)),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        Ok(SmtpSink {
            proc,
            reader: Some(reader),
            port,
            dumps: DumpDir::new(dump_dir, Some(counter)),
            stderr_path,
            startup: started.elapsed(),
            _dir: dir,
        })
    }
}

/// Reads smtp-sink's `-c` counter lines and stores the latest `mesg=` value.
fn follow_counter(stdout: impl Read, counter: &AtomicU64) {
    let mut reader = BufReader::new(stdout);
    let mut chunk = Vec::new();
    loop {
        chunk.clear();
        match reader.read_until(b'\r', &mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&chunk);
                if let Some(n) = text
                    .split_whitespace()
                    .filter_map(|w| w.strip_prefix("mesg="))
                    .filter_map(|v| v.parse::<u64>().ok())
                    .next_back()
                {
                    counter.fetch_max(n, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A running `smtp-sink` on 127.0.0.1 that dumps each transaction to a file.
///
/// Note: smtp-sink writes a dump for every message whose data it read, even
/// when it then answers the final `.` with a failure (`hard_reject(".")`,
/// `disconnect_at(".")`). Its EHLO reply ends with an empty `250 ` line and
/// it does not announce SIZE or SMTPUTF8.
pub struct SmtpSink {
    proc: Proc,
    reader: Option<JoinHandle<()>>,
    port: u16,
    dumps: DumpDir,
    stderr_path: PathBuf,
    startup: Duration,
    _dir: TempDir,
}

impl SmtpSink {
    /// A sink with default behaviour (accepts everything).
    pub fn start() -> Self {
        SmtpSinkBuilder::default().start()
    }

    /// A builder for a sink that fails in chosen ways.
    pub fn builder() -> SmtpSinkBuilder {
        SmtpSinkBuilder::default()
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// How long `start` took until the port accepted connections.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Number of end-of-data `.` smtp-sink has seen so far.
    pub fn messages_seen(&self) -> u64 {
        self.dumps
            .counter
            .as_ref()
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// All completely received messages so far, oldest first (no waiting).
    pub fn received(&self) -> Vec<Received> {
        self.dumps.snapshot()
    }

    /// Waits (polling every 50 ms) until at least `n` messages are complete
    /// and returns all of them, oldest first. Panics after `timeout`.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.dumps.wait(n, timeout, &|| self.diagnostics())
    }

    /// Like [`wait_for_messages`](Self::wait_for_messages) but sleeps with
    /// tokio, for `#[tokio::test]`s whose server shares the runtime.
    pub async fn wait_for_messages_async(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.dumps
            .wait_async(n, timeout, &|| self.diagnostics())
            .await
    }

    /// smtp-sink's stderr and counter, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "smtp-sink on port {} (messages seen: {}), stderr:\n{}",
            self.port,
            self.messages_seen(),
            file_tail(&self.stderr_path, 4000)
        )
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.proc.stop();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Postfix
// ---------------------------------------------------------------------------

/// How the fixture's smtpd does TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// No TLS at all; STARTTLS is not offered.
    #[default]
    None,
    /// STARTTLS offered, not required (`smtpd_tls_security_level = may`).
    StartTls,
    /// STARTTLS required before MAIL (`smtpd_tls_security_level = encrypt`;
    /// MAIL without it gets `530 5.7.0 Must issue a STARTTLS command first`).
    StartTlsRequired,
    /// Implicit TLS from the first byte (`smtpd_tls_wrappermode = yes`,
    /// "SMTPS"); the greeting comes after the handshake.
    Implicit,
}

/// Where the fixture Postfix delivers what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostfixDelivery {
    /// Relay everything over SMTP to a private [`SmtpSink`]
    /// (`relayhost = [127.0.0.1]:PORT`). The sink does not announce
    /// SMTPUTF8, so messages needing SMTPUTF8 (UTF-8 in addresses or
    /// headers) stay deferred: use [`PostfixDelivery::Pipe`] for those.
    #[default]
    SmtpSink,
    /// Hand everything to a `pipe(8)` transport that writes each message
    /// (all recipients in one file) atomically into the dump directory.
    /// Works for SMTPUTF8 mail; `mail_params`/`rcpt_params`/`helo` stay empty.
    Pipe,
}

/// Builder for [`Postfix`].
///
/// Reply strings are SMTP replies such as `"550 5.1.1 No such user"` (no
/// `{`, `}` or `,` in them). Postfix inserts context after the status codes:
/// RCPT replies read `550 5.1.1 <rcpt>: Recipient address rejected: No such
/// user`, MAIL replies `... <sender>: Sender address rejected: ...`, the
/// end-of-data reply `... <unknown[127.0.0.1]>: Client host rejected: ...`.
/// A 421 reply makes smtpd disconnect right after sending it.
#[derive(Debug, Clone, Default)]
pub struct PostfixBuilder {
    tls: TlsMode,
    delivery: PostfixDelivery,
    sasl_users: Vec<(String, String)>,
    auth_only_after_tls: bool,
    require_auth: bool,
    recipient_replies: Vec<(String, String)>,
    all_recipients_reply: Option<String>,
    sender_replies: Vec<(String, String)>,
    end_of_data_reply: Option<String>,
    extra_main_cf: Vec<(String, String)>,
}

impl PostfixBuilder {
    /// TLS mode of smtpd (certificate: `certs/localhost.crt`).
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.tls = mode;
        self
    }

    /// Where accepted mail goes (default: an [`SmtpSink`]).
    pub fn delivery(mut self, delivery: PostfixDelivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Enables Cyrus SASL AUTH (mechanisms PLAIN and LOGIN, sasldb) and adds
    /// a user in realm [`SASL_REALM`]; clients log in as `user`. May be
    /// called several times. Wrong passwords get `535 5.7.8`.
    pub fn sasl_user(mut self, user: &str, password: &str) -> Self {
        self.sasl_users
            .push((user.to_string(), password.to_string()));
        self
    }

    /// With SASL: offer AUTH only after STARTTLS (`smtpd_tls_auth_only`);
    /// default `false` (AUTH offered on plaintext connections too).
    pub fn auth_only_after_tls(mut self, yes: bool) -> Self {
        self.auth_only_after_tls = yes;
        self
    }

    /// Relay only for authenticated clients (otherwise any 127.0.0.0/8
    /// client may relay). Unauthenticated RCPT gets
    /// `554 5.7.1 <rcpt>: Recipient address rejected: Access denied`.
    pub fn require_auth(mut self, yes: bool) -> Self {
        self.require_auth = yes;
        self
    }

    /// Answer RCPT TO for `recipient` (exact address, case-insensitive) with
    /// `reply`, e.g. `"452 4.2.2 Mailbox full"`.
    pub fn recipient_reply(mut self, recipient: &str, reply: &str) -> Self {
        self.recipient_replies
            .push((recipient.to_ascii_lowercase(), reply.to_string()));
        self
    }

    /// Reject RCPT TO `recipient` with `550 5.1.1 <recipient>: Recipient
    /// address rejected: no such user`.
    pub fn reject_recipient(self, recipient: &str) -> Self {
        self.recipient_reply(recipient, "550 5.1.1 no such user")
    }

    /// Defer RCPT TO `recipient` with `450 4.2.0 <recipient>: Recipient
    /// address rejected: try again later`.
    pub fn defer_recipient(self, recipient: &str) -> Self {
        self.recipient_reply(recipient, "450 4.2.0 try again later")
    }

    /// Answer every RCPT TO (not matched by a per-recipient reply) with
    /// `reply`, e.g. `"421 4.3.2 Service shutting down"` or
    /// `"451 4.3.0 Try later"`.
    pub fn all_recipients_reply(mut self, reply: &str) -> Self {
        self.all_recipients_reply = Some(reply.to_string());
        self
    }

    /// Answer MAIL FROM `sender` (exact address) with `reply` at MAIL time.
    pub fn sender_reply(mut self, sender: &str, reply: &str) -> Self {
        self.sender_replies
            .push((sender.to_ascii_lowercase(), reply.to_string()));
        self
    }

    /// Answer the end of DATA (`.`) with `reply` for every message, e.g.
    /// `"451 4.3.0 Queue file write error"`; nothing is delivered then.
    pub fn end_of_data_reply(mut self, reply: &str) -> Self {
        self.end_of_data_reply = Some(reply.to_string());
        self
    }

    /// Appends `name = value` to main.cf (overrides earlier settings).
    pub fn main_cf(mut self, name: &str, value: &str) -> Self {
        self.extra_main_cf
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Starts the instance (and its sink) and waits, up to 10 s, until smtpd
    /// greets with 220 (implicit TLS: until it accepts connections). Panics
    /// with the Postfix log on failure. Must run as root.
    pub fn start(self) -> Postfix {
        assert!(
            running_as_root(),
            "the Postfix fixture must run as root (it chowns its queue to `postfix`)"
        );
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.try_start() {
                Ok(p) => return p,
                Err((retry, e)) => {
                    last_err = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("Postfix fixture failed to start: {last_err}");
    }

    fn main_cf_text(&self, root: &Path, etc: &Path, sink_port: Option<u16>) -> String {
        let mut cf: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| cf.push((k.to_string(), v));
        let r = root.display();
        set("compatibility_level", "3.6".into());
        set("queue_directory", format!("{r}/queue"));
        set("data_directory", format!("{r}/data"));
        set("maillog_file", format!("{r}/maillog"));
        set("maillog_file_prefixes", format!("{r}"));
        set("myhostname", FIXTURE_HOSTNAME.into());
        set("mydomain", "fixture.test".into());
        set("myorigin", "$myhostname".into());
        set("mydestination", String::new());
        set("local_recipient_maps", String::new());
        set("alias_maps", String::new());
        set("alias_database", String::new());
        set("local_transport", "error:local delivery is disabled".into());
        set("inet_interfaces", "127.0.0.1".into());
        set("inet_protocols", "ipv4".into());
        set("mynetworks", "127.0.0.0/8".into());
        set("smtputf8_enable", "yes".into());
        set("message_size_limit", "104857600".into());
        set("mailbox_size_limit", "0".into());
        set("smtp_line_length_limit", "0".into());
        // Do not add Message-ID/Date/From/To nor rewrite header addresses.
        set("local_header_rewrite_clients", String::new());
        set("remote_header_rewrite_domain", String::new());
        set("always_add_missing_headers", "no".into());
        set("disable_mime_output_conversion", "yes".into());
        set("smtpd_banner", "$myhostname ESMTP Postfix fixture".into());
        set("smtpd_error_sleep_time", "0".into());
        set("smtpd_peername_lookup", "no".into());
        set("smtpd_delay_reject", "no".into());
        set("biff", "no".into());
        // Retry deferred mail fast. (soft_bounce is set on the delivery
        // services in master.cf only: in main.cf it would also turn smtpd's
        // own 5xx replies into 4xx.)
        set("queue_run_delay", "1s".into());
        set("minimal_backoff_time", "1s".into());
        set("maximal_backoff_time", "2s".into());
        match sink_port {
            Some(port) => {
                set("default_transport", "smtp".into());
                set("relayhost", format!("[127.0.0.1]:{port}"));
            }
            None => {
                // One nexthop for all recipients => one delivery per message.
                set("default_transport", "dump:fixture".into());
                set("dump_destination_recipient_limit", "1000".into());
            }
        }

        let relay = if self.require_auth {
            "permit_sasl_authenticated, reject"
        } else {
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
        };
        set("smtpd_relay_restrictions", relay.into());
        let mut rcpt = Vec::new();
        if !self.recipient_replies.is_empty() {
            rcpt.push(format!(
                "check_recipient_access texthash:{}/recipient_access",
                etc.display()
            ));
        }
        if let Some(reply) = &self.all_recipients_reply {
            rcpt.push(format!("check_recipient_access static:{{{reply}}}"));
        }
        rcpt.push("permit".into());
        set("smtpd_recipient_restrictions", rcpt.join(", "));
        if !self.sender_replies.is_empty() {
            set(
                "smtpd_sender_restrictions",
                format!(
                    "check_sender_access texthash:{}/sender_access",
                    etc.display()
                ),
            );
        }
        if let Some(reply) = &self.end_of_data_reply {
            set(
                "smtpd_end_of_data_restrictions",
                format!("check_client_access static:{{{reply}}}"),
            );
        }

        if self.tls != TlsMode::None {
            let certs = certs_dir();
            set(
                "smtpd_tls_chain_files",
                format!(
                    "{}, {}",
                    certs.join("localhost.key").display(),
                    certs.join("localhost.crt").display()
                ),
            );
            set("smtpd_tls_loglevel", "1".into());
            set("smtpd_tls_received_header", "no".into());
            let level = match self.tls {
                TlsMode::StartTls => "may",
                _ => "encrypt",
            };
            set("smtpd_tls_security_level", level.into());
            if self.tls == TlsMode::Implicit {
                set("smtpd_tls_wrappermode", "yes".into());
            }
        }
        if !self.sasl_users.is_empty() {
            set("smtpd_sasl_auth_enable", "yes".into());
            set("smtpd_sasl_type", "cyrus".into());
            set("smtpd_sasl_path", "smtpd".into());
            set("cyrus_sasl_config_path", format!("{}/sasl", etc.display()));
            set("smtpd_sasl_local_domain", SASL_REALM.into());
            set("smtpd_sasl_security_options", "noanonymous".into());
            let only_tls = if self.auth_only_after_tls {
                "yes"
            } else {
                "no"
            };
            set("smtpd_tls_auth_only", only_tls.into());
        }
        for (k, v) in &self.extra_main_cf {
            set(k, v.clone());
        }
        let mut text = String::new();
        for (k, v) in cf {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text
    }

    fn master_cf_text(port: u16, pipe_script: &Path, dump_dir: &Path) -> String {
        // chroot column "n" everywhere: the private queue has no chroot
        // skeleton (no /etc/services, resolver files, ...).
        let mut cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd\n\
             cleanup   unix n - n - 0 cleanup\n\
             qmgr      unix n - n 300 1 qmgr\n\
             tlsmgr    unix - - n 1000? 1 tlsmgr\n\
             rewrite   unix - - n - - trivial-rewrite\n\
             bounce    unix - - n - 0 bounce\n\
             defer     unix - - n - 0 bounce\n\
             trace     unix - - n - 0 bounce\n\
             verify    unix - - n - 1 verify\n\
             flush     unix n - n 1000? 0 flush\n\
             proxymap  unix - - n - - proxymap\n\
             smtp      unix - - n - - smtp -o soft_bounce=yes\n\
             relay     unix - - n - - smtp -o soft_bounce=yes\n\
             error     unix - - n - - error\n\
             retry     unix - - n - - error\n\
             discard   unix - - n - - discard\n\
             anvil     unix - - n - 1 anvil\n\
             scache    unix - - n - 1 scache\n\
             postlog   unix-dgram n - n - 1 postlogd\n"
        );
        cf.push_str(&format!(
            "dump      unix - n n - - pipe -o soft_bounce=yes\n  \
             user=nobody null_sender= argv=/bin/sh {} {} ${{queue_id}} ${{sender}} ${{recipient}}\n",
            pipe_script.display(),
            dump_dir.display()
        ));
        cf
    }

    fn try_start(&self) -> Result<Postfix, (bool, String)> {
        let started = Instant::now();
        let master = postfix_daemon_dir().join("master");
        let postfix_uid = lookup_id("/etc/passwd", "postfix");
        let postfix_gid = lookup_id("/etc/group", "postfix");
        let postdrop_gid = lookup_id("/etc/group", "postdrop");
        let pf = Some((postfix_uid, postfix_gid));

        let dir = world_traversable_tempdir("postfix-fixture-");
        let root = dir.path();
        let etc = root.join("etc");
        mkdir(&etc, 0o755, None);
        let queue = root.join("queue");
        mkdir(&queue, 0o755, None);
        for sub in [
            "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
            "private", "saved", "trace",
        ] {
            mkdir(&queue.join(sub), 0o700, pf);
        }
        mkdir(
            &queue.join("maildrop"),
            0o730,
            Some((postfix_uid, postdrop_gid)),
        );
        mkdir(
            &queue.join("public"),
            0o710,
            Some((postfix_uid, postdrop_gid)),
        );
        mkdir(&queue.join("pid"), 0o755, None);
        mkdir(&root.join("data"), 0o700, pf);
        let dump_dir = root.join("dump");
        mkdir(&dump_dir, 0o777, None);

        let sink = match self.delivery {
            PostfixDelivery::SmtpSink => Some(SmtpSink::start()),
            PostfixDelivery::Pipe => None,
        };

        let pipe_script = etc.join("deliver.sh");
        write_file(&pipe_script, PIPE_SCRIPT);
        set_mode(&pipe_script, 0o755);

        if !self.recipient_replies.is_empty() {
            let map: String = self
                .recipient_replies
                .iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect();
            write_file(&etc.join("recipient_access"), map);
        }
        if !self.sender_replies.is_empty() {
            let map: String = self
                .sender_replies
                .iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect();
            write_file(&etc.join("sender_access"), map);
        }
        if !self.sasl_users.is_empty() {
            let sasldb = root.join("sasldb2");
            let sasl_dir = etc.join("sasl");
            mkdir(&sasl_dir, 0o755, None);
            write_file(
                &sasl_dir.join("smtpd.conf"),
                format!(
                    "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
                    sasldb.display()
                ),
            );
            let saslpasswd2 = find_binary("saslpasswd2", "sasl2-bin");
            for (user, password) in &self.sasl_users {
                let mut child = Command::new(&saslpasswd2)
                    .args(["-p", "-c", "-f"])
                    .arg(&sasldb)
                    .args(["-u", SASL_REALM, user])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| (false, format!("spawn saslpasswd2: {e}")))?;
                child
                    .stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(password.as_bytes())
                    .map_err(|e| (false, format!("saslpasswd2 stdin: {e}")))?;
                let out = child
                    .wait_with_output()
                    .map_err(|e| (false, format!("saslpasswd2: {e}")))?;
                if !out.status.success() {
                    return Err((
                        false,
                        format!(
                            "saslpasswd2 failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        ),
                    ));
                }
            }
            // smtpd reads the sasldb after dropping privileges to `postfix`.
            std::os::unix::fs::chown(&sasldb, Some(postfix_uid), Some(postfix_gid))
                .map_err(|e| (false, format!("chown sasldb: {e}")))?;
            set_mode(&sasldb, 0o600);
        }

        let port = free_port();
        write_file(
            &etc.join("main.cf"),
            self.main_cf_text(root, &etc, sink.as_ref().map(SmtpSink::port)),
        );
        write_file(
            &etc.join("master.cf"),
            Self::master_cf_text(port, &pipe_script, &dump_dir),
        );

        let maillog = root.join("maillog");
        let stderr_path = root.join("master.stderr");
        let stderr = fs::File::create(&stderr_path).map_err(|e| (false, e.to_string()))?;
        let args = vec![
            "-c".to_string(),
            etc.display().to_string(),
            "-d".to_string(),
        ];
        let mut proc = Proc::spawn(
            "postfix master",
            &master,
            &args,
            Stdio::null(),
            stderr.into(),
        )
        .map_err(|e| (false, format!("spawn {}: {e}", master.display())))?;

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let logs = || {
            format!(
                "master stderr:\n{}\nmaillog:\n{}",
                file_tail(&stderr_path, 4000),
                file_tail(&maillog, 8000)
            )
        };
        loop {
            if !proc.is_running() {
                let l = logs();
                return Err((l.contains("in use"), format!("master exited\n{l}")));
            }
            match probe(addr, self.tls != TlsMode::Implicit) {
                Ok(()) => break,
                Err(e) => {
                    // A daemon that dies on its configuration logs "fatal:";
                    // no point in waiting for the deadline then.
                    let log = fs::read_to_string(&maillog).unwrap_or_default();
                    if Instant::now() >= deadline || log.contains(" fatal: ") {
                        let l = logs();
                        return Err((l.contains("in use"), format!("{e}\n{l}")));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        // Pipe delivery renames finished files into place: no counter needed.
        let dumps = match &sink {
            Some(_) => None,
            None => Some(DumpDir::new(dump_dir, None)),
        };
        Ok(Postfix {
            proc,
            sink,
            dumps,
            port,
            maillog,
            config_dir: etc,
            startup: started.elapsed(),
            _dir: dir,
        })
    }
}

/// `pipe(8)` delivery script: writes the smtp-sink dump format to a temp file
/// and renames it into place, so readers never see a partial message.
/// Arguments: DUMP_DIR QUEUE_ID SENDER RECIPIENT...; message on stdin.
const PIPE_SCRIPT: &str = r#"set -e
umask 022
dir="$1"; id="$2"; sender="$3"; shift 3
tmp="$dir/.tmp.$id.$$"
{
  printf 'X-Mail-Args: <%s>\n' "$sender"
  for r in "$@"; do printf 'X-Rcpt-Args: <%s>\n' "$r"; done
  printf 'Received: from postfix (pipe)\n\tby fixture (pipe) id %s;\n\t%s\n' "$id" "$(date -R)"
  cat
  printf '\n'
} > "$tmp"
mv "$tmp" "$dir/msg.$id.$$"
"#;

/// A running private Postfix instance (see the module docs). Stopped, with
/// all its processes, on drop.
pub struct Postfix {
    // Field order is drop order: stop master before the sink and the dir.
    proc: Proc,
    sink: Option<SmtpSink>,
    dumps: Option<DumpDir>,
    port: u16,
    maillog: PathBuf,
    config_dir: PathBuf,
    startup: Duration,
    _dir: TempDir,
}

impl Postfix {
    /// A plain instance: no TLS, no AUTH, relays everything to a sink.
    pub fn start() -> Self {
        PostfixBuilder::default().start()
    }

    /// A builder for other configurations.
    pub fn builder() -> PostfixBuilder {
        PostfixBuilder::default()
    }

    /// smtpd's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The instance's config_directory (main.cf, master.cf, maps, sasl/).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// How long `start` took (sink included) until smtpd greeted.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The sink Postfix relays to (`None` with [`PostfixDelivery::Pipe`]).
    pub fn sink(&self) -> Option<&SmtpSink> {
        self.sink.as_ref()
    }

    /// The whole Postfix log so far (`maillog_file`).
    pub fn maillog(&self) -> String {
        fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    fn dumps(&self) -> &DumpDir {
        match (&self.sink, &self.dumps) {
            (Some(sink), _) => &sink.dumps,
            (None, Some(d)) => d,
            (None, None) => unreachable!("a Postfix fixture always has a dump dir"),
        }
    }

    fn diagnostics(&self) -> String {
        let sink = self
            .sink
            .as_ref()
            .map(SmtpSink::diagnostics)
            .unwrap_or_default();
        format!(
            "Postfix on port {} maillog (tail):\n{}\n{sink}",
            self.port,
            file_tail(&self.maillog, 8000)
        )
    }

    /// All messages delivered so far, oldest first (no waiting).
    pub fn received(&self) -> Vec<Received> {
        self.dumps().snapshot()
    }

    /// Waits (polling every 50 ms) until at least `n` messages have been
    /// delivered and returns all of them, oldest first. Panics after
    /// `timeout` with the Postfix log.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.dumps().wait(n, timeout, &|| self.diagnostics())
    }

    /// Like [`wait_for_messages`](Self::wait_for_messages) but sleeps with
    /// tokio, for `#[tokio::test]`s whose server shares the runtime.
    pub async fn wait_for_messages_async(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.dumps()
            .wait_async(n, timeout, &|| self.diagnostics())
            .await
    }
}

// ---------------------------------------------------------------------------
// Tarpit
// ---------------------------------------------------------------------------

/// A TCP listener on 127.0.0.1 that accepts connections and never sends a
/// byte (no greeting); accepted connections stay open until drop.
pub struct Tarpit {
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Tarpit {
    /// Starts the listener.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tarpit");
        let port = listener.local_addr().expect("tarpit addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let accepted = Arc::clone(&accepted);
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = conn {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        held.push(c);
                    }
                }
            })
        };
        Self {
            port,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// How many connections have been accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept().
        let _ = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
