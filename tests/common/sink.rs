//! An in-process scripted SMTP upstream for behaviour tests: it records
//! every message it accepts and can be switched at run time between
//! accepting, deferring everything (451), and being down (421 at the
//! greeting, then close). Per-recipient replies come from the local part:
//! `temp…@` gets `450`, `perm…@` gets `550`, unless `accept_temp` is set.
//! Any stage's reply can be scripted with [`Sink::reply_at`] and delayed
//! with [`Sink::delay_at`]. A message is recorded before its `250` is
//! sent, so right after the relay's reply the record is complete: no
//! waiting for what did not arrive.
//! Runs on its own threads, so sync tests and relays in other processes can
//! use it. Loopback only, port 0.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the sink does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal SMTP.
    Accept,
    /// `421` at the greeting, then close (a server that is down).
    Down,
    /// `451` after DATA's content.
    DeferData,
}

/// Where in the dialogue a scripted reply or delay applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The greeting (a reply other than 220 ends the connection).
    Greeting,
    /// MAIL FROM.
    Mail,
    /// Every RCPT TO.
    Rcpt,
    /// The reply after the message content.
    Data,
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Got {
    /// MAIL FROM.
    pub mail_from: String,
    /// Accepted RCPT TO.
    pub rcpts: Vec<String>,
    /// The content (dot-unstuffed, CRLF).
    pub data: Vec<u8>,
}

impl Got {
    /// The value of header `name` (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.data);
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let mut out: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(o) = out.as_mut() {
                    o.push_str(line.trim_start());
                }
                continue;
            }
            if out.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                out = Some(v.trim().to_owned());
            }
        }
        out
    }
}

struct Shared {
    mode: Mutex<Mode>,
    script: Mutex<std::collections::HashMap<Stage, String>>,
    delays: Mutex<std::collections::HashMap<Stage, Duration>>,
    accept_temp: AtomicBool,
    got: Mutex<Vec<Got>>,
    connections: AtomicUsize,
    active: AtomicUsize,
    peak_active: AtomicUsize,
    stop: AtomicBool,
    /// Milliseconds to wait before answering a message's content.
    data_delay_ms: AtomicUsize,
}

/// The sink.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Sink {
    /// Starts a sink on 127.0.0.1:0 in `Mode::Accept`.
    pub fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Accept),
            script: Mutex::default(),
            delays: Mutex::default(),
            accept_temp: AtomicBool::new(false),
            got: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            peak_active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            data_delay_ms: AtomicUsize::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(c, &s));
            }
        });
        Sink { addr, shared }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches what new connections get.
    pub fn set_mode(&self, m: Mode) {
        *self.shared.mode.lock().unwrap() = m;
    }

    /// From now on, answer `stage` with `reply` (e.g. `"452 4.3.1 full"`),
    /// for every connection; `None` goes back to the normal answer.
    pub fn reply_at(&self, stage: Stage, reply: Option<&str>) {
        let mut m = self.shared.script.lock().unwrap();
        match reply {
            Some(r) => m.insert(stage, r.to_owned()),
            None => m.remove(&stage),
        };
    }

    /// From now on, wait `delay` before answering `stage`.
    pub fn delay_at(&self, stage: Stage, delay: Duration) {
        self.shared.delays.lock().unwrap().insert(stage, delay);
    }

    /// Whether `temp…@` recipients are accepted (true) or get 450.
    pub fn accept_temp(&self, yes: bool) {
        self.shared.accept_temp.store(yes, Ordering::SeqCst);
    }

    /// Makes the sink slow: it waits `d` before answering each message's
    /// content.
    pub fn set_data_delay(&self, d: Duration) {
        self.shared
            .data_delay_ms
            .store(d.as_millis() as usize, Ordering::SeqCst);
    }

    /// Messages accepted so far.
    pub fn got(&self) -> Vec<Got> {
        self.shared.got.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Most connections open at once.
    pub fn peak_connections(&self) -> usize {
        self.shared.peak_active.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `done` holds for the messages accepted so far.
    pub fn wait(&self, timeout: Duration, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let end = Instant::now() + timeout;
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < end,
                "sink: condition not met within {timeout:?}; got {} messages: {:?}",
                got.len(),
                got.iter()
                    .map(|g| (g.mail_from.clone(), g.rcpts.clone()))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(c: TcpStream, s: &Shared) {
    s.connections.fetch_add(1, Ordering::SeqCst);
    let now = s.active.fetch_add(1, Ordering::SeqCst) + 1;
    s.peak_active.fetch_max(now, Ordering::SeqCst);
    let _ = session(c, s);
    s.active.fetch_sub(1, Ordering::SeqCst);
}

fn session(c: TcpStream, s: &Shared) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = c.try_clone()?;
    let mut r = BufReader::new(c);
    let mode = *s.mode.lock().unwrap();
    if mode == Mode::Down {
        w.write_all(b"421 4.3.2 sink.test down for maintenance\r\n")?;
        return Ok(());
    }
    if let Some(reply) = scripted(s, Stage::Greeting) {
        w.write_all(format!("{reply}\r\n").as_bytes())?;
        if !reply.starts_with("220") {
            return Ok(());
        }
    } else {
        w.write_all(b"220 sink.test ESMTP\r\n")?;
    }
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            w.write_all(b"250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n")?;
        } else if upper.starts_with("HELO") {
            w.write_all(b"250 sink.test\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            if let Some(reply) = scripted(s, Stage::Mail) {
                w.write_all(format!("{reply}\r\n").as_bytes())?;
                continue;
            }
            from = addr_of(&cmd[10..]);
            rcpts.clear();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let a = addr_of(&cmd[8..]);
            let local = a.split('@').next().unwrap_or("").to_ascii_lowercase();
            if let Some(reply) = scripted(s, Stage::Rcpt) {
                w.write_all(format!("{reply}\r\n").as_bytes())?;
            } else if local.starts_with("perm") {
                w.write_all(b"550 5.1.1 no such user\r\n")?;
            } else if local.starts_with("temp") && !s.accept_temp.load(Ordering::SeqCst) {
                w.write_all(b"450 4.2.1 mailbox busy, try later\r\n")?;
            } else {
                rcpts.push(a);
                w.write_all(b"250 2.1.5 ok\r\n")?;
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
                continue;
            }
            w.write_all(b"354 go ahead\r\n")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.by_ref().take(1 << 20).read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                if l.starts_with(b"..") {
                    l.remove(0);
                }
                data.extend_from_slice(&l);
            }
            let delay = s.data_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay as u64));
            }
            if let Some(reply) = scripted(s, Stage::Data) {
                w.write_all(format!("{reply}\r\n").as_bytes())?;
            } else if *s.mode.lock().unwrap() == Mode::DeferData {
                w.write_all(b"451 4.3.0 try again later\r\n")?;
            } else {
                s.got.lock().unwrap().push(Got {
                    mail_from: from.clone(),
                    rcpts: rcpts.clone(),
                    data,
                });
                w.write_all(b"250 2.0.0 queued\r\n")?;
            }
            rcpts.clear();
        } else if upper == "RSET" || upper == "NOOP" {
            rcpts.clear();
            w.write_all(b"250 2.0.0 ok\r\n")?;
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"502 5.5.2 unknown\r\n")?;
        }
    }
}

/// The scripted reply for `stage`, if any, after its delay.
fn scripted(s: &Shared, stage: Stage) -> Option<String> {
    let delay = s.delays.lock().unwrap().get(&stage).copied();
    if let Some(d) = delay {
        std::thread::sleep(d);
    }
    s.script.lock().unwrap().get(&stage).cloned()
}

fn addr_of(arg: &str) -> String {
    let a = arg.trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<').trim_end_matches('>').to_owned()
}
