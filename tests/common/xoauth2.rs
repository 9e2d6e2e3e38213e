//! An SMTP peer that requires AUTH XOAUTH2: Python's aiosmtpd (Debian
//! `python3-aiosmtpd`) with an authenticator that accepts exactly
//! `user={user}\x01auth=Bearer tok-N\x01\x01` for N at or above the number
//! in the state file `min_token` (so a test can make earlier tokens
//! "expire"), and answers a refused token with 535, or with 454 when the
//! state file `refuse_with` says so. Every AUTH is logged to `auth.log`
//! (the decoded string and `ok` / `refused`); messages land in `msgs/`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"
import sys, os, base64, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
state, user, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def read(name, default):
    try:
        with open(os.path.join(state, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default
class Handler:
    async def auth_XOAUTH2(self, server, args):
        raw = base64.b64decode(args[1]).decode() if len(args) > 1 else ''
        prefix = 'user=' + user + '\x01auth=Bearer '
        ok = False
        if raw.startswith(prefix) and raw.endswith('\x01\x01'):
            tok = raw[len(prefix):-2]
            ok = tok.startswith('tok-') and tok[4:].isdigit() and int(tok[4:]) >= int(read('min_token', '1'))
        with open(os.path.join(state, 'auth.log'), 'a') as f:
            f.write(repr(raw) + (' ok' if ok else ' refused') + '\n')
        if ok:
            return AuthResult(success=True, auth_data=user)
        if read('refuse_with', '535') == '454':
            return AuthResult(success=False, handled=False, message='454 4.7.0 Temporary authentication failure')
        return AuthResult(success=False, handled=False)
    async def handle_DATA(self, server, session, envelope):
        d = os.path.join(state, 'msgs')
        n = len(os.listdir(d))
        with open(os.path.join(d, '%04d.tmp' % n), 'wb') as f:
            f.write(envelope.original_content)
        os.rename(os.path.join(d, '%04d.tmp' % n), os.path.join(d, '%04d.eml' % n))
        return '250 2.0.0 queued as sink-%d' % n
c = Controller(Handler(), hostname='127.0.0.1', port=port, auth_require_tls=False, auth_required=True)
c.start()
print('ready', flush=True)
while True:
    time.sleep(3600)
"#;

/// The running peer.
pub struct XoauthSink {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

/// A Python that has aiosmtpd: Debian's (a pyenv shim may come first in PATH).
fn python() -> &'static str {
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p;
        }
    }
    panic!("aiosmtpd is not installed: run tests/run.sh (Debian python3-aiosmtpd)");
}

impl XoauthSink {
    /// Starts the peer for AUTH user `user`; waits (bounded) until it is up.
    pub fn start(user: &str) -> XoauthSink {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("msgs")).unwrap();
        let port = super::postfix::free_port();
        let mut child = Command::new(python())
            .args([
                "-c",
                SCRIPT,
                dir.path().to_str().unwrap(),
                user,
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
        XoauthSink { child, dir, port }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Tokens numbered below `n` are refused from now on.
    pub fn min_token(&self, n: u64) {
        std::fs::write(self.dir.path().join("min_token"), n.to_string()).unwrap();
    }

    /// Refuse tokens with 454 instead of 535.
    pub fn refuse_with_454(&self) {
        std::fs::write(self.dir.path().join("refuse_with"), "454").unwrap();
    }

    /// Every AUTH seen: the decoded string (Python repr) and `ok` or `refused`.
    pub fn auth_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("auth.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn msgs_dir(&self) -> PathBuf {
        self.dir.path().join("msgs")
    }

    /// Messages received so far, in order.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        messages_in(&self.msgs_dir())
    }

    /// Waits (bounded) for `n` messages.
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let end = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < end,
                "expected {n} message(s), got {}; AUTH log: {:?}",
                m.len(),
                self.auth_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn messages_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

impl Drop for XoauthSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
