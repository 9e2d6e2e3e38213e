//! SMTP load generator for `bench/`: N concurrent sessions submit messages
//! of a given size, one or several per connection, without pipelining (as
//! legacy applications do), and report throughput and submit latency as one
//! JSON line on stdout.
//!
//! ```text
//! cargo run --release --example loadgen -- --addr 127.0.0.1:2525 \
//!     --sessions 10 --messages 2000 --size 4096 --per-conn 1
//! cargo run --release --example loadgen -- --addr 127.0.0.1:2525 \
//!     --sessions 10 --duration 3 --size 4096 --per-conn 50
//! cargo run --release --example loadgen -- --addr 127.0.0.1:2525 --idle 1000
//! ```
//!
//! Load mode: every session loops over connections; each connection says
//! EHLO, runs up to `--per-conn` transactions (MAIL, RCPT, DATA, message,
//! each waiting for its reply) and QUITs. A run ends when `--messages` have
//! been started or, with `--duration`, when that many seconds have passed
//! (no new transaction starts after that; those in flight finish), and in
//! any case after `--max-time` (a hard bound: unfinished work counts as
//! errors). Latency of a message: from the start of its connection (the
//! first message of a connection: connect, greeting, EHLO included) or from
//! MAIL (the following ones) until the final 250 after the data.
//!
//! Output: `{"messages":N,"errors":E,"elapsed_s":..,"rate":..,"p50_ms":..,
//! "p90_ms":..,"p99_ms":..,"max_ms":..,"first_error":".."}` where `rate` is
//! messages per second over the whole run and `elapsed_s` runs until the last
//! transaction finished.
//!
//! Idle mode (`--idle N`): opens N connections, reads each greeting, then
//! prints `{"idle_open":N,"errors":E}` and keeps them open, silent, until
//! its standard input is closed (or `--max-time` passes); then it closes
//! them (without QUIT). `bench/` uses it to measure the relay's memory with
//! many idle sessions.
//!
//! The runtime is single-threaded by default (`--threads 1`), so on a small
//! machine the load generator takes as little CPU from the system under test
//! as possible; `--threads N` uses a multi-threaded runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    sessions: usize,
    messages: Option<usize>,
    size: usize,
    per_conn: usize,
    duration: Option<Duration>,
    max_time: Duration,
    threads: usize,
    idle: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen [--addr IP:PORT] [--sessions N] [--messages N] [--size BYTES] \
         [--per-conn N] [--duration SECS] [--max-time SECS] [--threads N] [--idle N]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:2525".parse().expect("default address"),
        sessions: 10,
        messages: None,
        size: 4096,
        per_conn: 1,
        duration: None,
        max_time: Duration::from_secs(120),
        threads: 1,
        idle: 0,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    if !v.len().is_multiple_of(2) {
        usage();
    }
    for pair in v.chunks(2) {
        let (flag, val) = (pair[0].as_str(), pair[1].as_str());
        let num = |what: &str| -> usize {
            val.parse().unwrap_or_else(|_| {
                eprintln!("loadgen: {flag} wants {what}, got {val:?}");
                usage()
            })
        };
        let secs = |what: &str| -> Duration {
            match val.parse::<f64>() {
                Ok(s) if s > 0.0 => Duration::from_secs_f64(s),
                _ => {
                    eprintln!("loadgen: {flag} wants {what}, got {val:?}");
                    usage()
                }
            }
        };
        match flag {
            "--addr" => {
                a.addr = val.parse().unwrap_or_else(|_| {
                    eprintln!("loadgen: --addr wants IP:PORT");
                    usage()
                })
            }
            "--sessions" => a.sessions = num("a count").max(1),
            "--messages" => a.messages = Some(num("a count")),
            "--size" => a.size = num("a size in bytes"),
            "--per-conn" => a.per_conn = num("a count").max(1),
            "--duration" => a.duration = Some(secs("seconds")),
            "--max-time" => a.max_time = secs("seconds"),
            "--threads" => a.threads = num("a count").max(1),
            "--idle" => a.idle = num("a count"),
            _ => usage(),
        }
    }
    a
}

/// A message of about `size` bytes as a legacy application writes it: the
/// usual header fields, then 76-character text lines; terminated by ".".
fn message(size: usize) -> Vec<u8> {
    let mut m = b"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n\
From: Legacy App <app@legacy.test>\r\n\
To: <rcpt@example.com>\r\n\
Subject: load test\r\n\
Message-ID: <loadgen.1@legacy.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n"
        .to_vec();
    let line: Vec<u8> = (0..76u8).map(|i| b'a' + i % 26).chain(*b"\r\n").collect();
    while m.len() + line.len() <= size {
        m.extend_from_slice(&line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;

/// Reads one (possibly multi-line) reply and returns its code.
async fn reply(r: &mut Reader, line: &mut String) -> std::io::Result<u16> {
    loop {
        line.clear();
        if r.read_line(line).await? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        if line.len() >= 4 && line.as_bytes()[3] != b'-' {
            return line[..3]
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad reply {:?}", line.trim_end())));
        }
    }
}

async fn expect(r: &mut Reader, line: &mut String, class: u16, what: &str) -> std::io::Result<()> {
    let code = reply(r, line).await?;
    if code / 100 != class {
        return Err(std::io::Error::other(format!(
            "unexpected reply to {what}: {}",
            line.trim_end()
        )));
    }
    Ok(())
}

/// Shared state of a load run.
struct Run {
    addr: SocketAddr,
    msg: Vec<u8>,
    total: usize,
    per_conn: usize,
    /// Transactions handed out so far.
    next: AtomicUsize,
    stop_at: Option<Instant>,
    errors: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Run {
    /// Claims the next transaction, if the run is not over.
    fn claim(&self) -> bool {
        if self.stop_at.is_some_and(|t| Instant::now() >= t) {
            return false;
        }
        self.next.fetch_add(1, Ordering::Relaxed) < self.total
    }

    /// Gives a claimed transaction back (it was never started).
    fn unclaim(&self) {
        self.next.fetch_sub(1, Ordering::Relaxed);
    }

    fn error(&self, e: &std::io::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// One connection: greeting, EHLO, up to `per_conn` transactions (the first
/// already claimed), QUIT. Pushes each message's latency onto `lat`.
async fn connection(run: &Run, lat: &mut Vec<Duration>) -> std::io::Result<()> {
    let start = Instant::now();
    let s = TcpStream::connect(run.addr).await?;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    expect(&mut r, &mut line, 2, "connect").await?;
    w.write_all(b"EHLO loadgen.test\r\n").await?;
    expect(&mut r, &mut line, 2, "EHLO").await?;
    for i in 0..run.per_conn {
        if i > 0 && !run.claim() {
            run.unclaim();
            break;
        }
        let t0 = if i == 0 { start } else { Instant::now() };
        w.write_all(b"MAIL FROM:<app@legacy.test>\r\n").await?;
        expect(&mut r, &mut line, 2, "MAIL").await?;
        w.write_all(b"RCPT TO:<rcpt@example.com>\r\n").await?;
        expect(&mut r, &mut line, 2, "RCPT").await?;
        w.write_all(b"DATA\r\n").await?;
        expect(&mut r, &mut line, 3, "DATA").await?;
        w.write_all(&run.msg).await?;
        expect(&mut r, &mut line, 2, "end of data").await?;
        lat.push(t0.elapsed());
    }
    w.write_all(b"QUIT\r\n").await?;
    let _ = reply(&mut r, &mut line).await;
    Ok(())
}

async fn load(a: &Args) {
    let started = Instant::now();
    let run = Arc::new(Run {
        addr: a.addr,
        msg: message(a.size),
        // Without --messages: 1000, or no limit when --duration is given.
        total: a.messages.unwrap_or(if a.duration.is_some() {
            usize::MAX / 2
        } else {
            1000
        }),
        per_conn: a.per_conn,
        next: AtomicUsize::new(0),
        stop_at: a.duration.map(|d| started + d),
        errors: AtomicUsize::new(0),
        first_error: Mutex::new(None),
    });
    let mut tasks = Vec::new();
    for _ in 0..a.sessions {
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut last = Instant::now();
            while run.claim() {
                if let Err(e) = connection(&run, &mut lat).await {
                    run.error(&e);
                }
                last = Instant::now();
            }
            run.unclaim();
            (lat, last)
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    let mut end = started;
    let mut timed_out = 0;
    let hard = tokio::time::Instant::from_std(started + a.max_time);
    for t in tasks {
        match tokio::time::timeout_at(hard, t).await {
            Ok(Ok((l, last))) => {
                lat.extend(l);
                end = end.max(last);
            }
            _ => timed_out += 1,
        }
    }
    if timed_out > 0 {
        run.error(&std::io::Error::other(format!(
            "{timed_out} session(s) still busy after --max-time"
        )));
        end = Instant::now();
    }
    let elapsed = end.duration_since(started).as_secs_f64().max(1e-9);
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let first_error = run
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
        .replace(['"', '\\'], "'");
    println!(
        "{{\"messages\":{},\"errors\":{},\"elapsed_s\":{:.4},\"rate\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"first_error\":\"{}\"}}",
        lat.len(),
        run.errors.load(Ordering::Relaxed),
        elapsed,
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        first_error
    );
    // Do not wait for sessions that overran --max-time.
    std::process::exit(0);
}

/// Opens `n` connections, reads their greetings, reports, and holds them
/// until stdin closes.
async fn idle(a: &Args) {
    let mut conns = Vec::with_capacity(a.idle);
    let mut errors = 0usize;
    let mut first_error = String::new();
    let deadline = tokio::time::Instant::from_std(Instant::now() + a.max_time);
    // Open in batches so the listen backlog is never the limit.
    for chunk in (0..a.idle).collect::<Vec<_>>().chunks(100) {
        let opened = futures_join(chunk.len(), a.addr, deadline).await;
        for r in opened {
            match r {
                Ok(c) => conns.push(c),
                Err(e) => {
                    errors += 1;
                    if first_error.is_empty() {
                        first_error = e.to_string().replace(['"', '\\'], "'");
                    }
                }
            }
        }
    }
    println!(
        "{{\"idle_open\":{},\"errors\":{},\"first_error\":\"{}\"}}",
        conns.len(),
        errors,
        first_error
    );
    // Hold the connections (the runtime need not run for that) until
    // stdin closes; a watchdog ends the process after --max-time.
    let max = a.max_time;
    std::thread::spawn(move || {
        std::thread::sleep(max);
        std::process::exit(0);
    });
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    drop(conns);
}

/// Opens `n` connections concurrently; each must greet with 2xx.
async fn futures_join(
    n: usize,
    addr: SocketAddr,
    deadline: tokio::time::Instant,
) -> Vec<std::io::Result<(Reader, tokio::net::tcp::OwnedWriteHalf)>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        set.spawn(async move {
            let open = async {
                let s = TcpStream::connect(addr).await?;
                let (r, w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                expect(&mut r, &mut line, 2, "connect").await?;
                // Dropping the write half would send FIN: keep both.
                Ok((r, w))
            };
            tokio::time::timeout_at(deadline, open)
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))));
    }
    out
}

fn main() {
    let a = parse();
    let rt = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads)
            .enable_all()
            .build()
    };
    let rt = rt.expect("tokio runtime");
    if a.idle > 0 {
        rt.block_on(idle(&a));
    } else {
        rt.block_on(load(&a));
    }
}
