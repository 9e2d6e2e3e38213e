//! SMTP load generator for `bench/`: N concurrent sessions submit M
//! messages of a given size, one or several per connection, without
//! pipelining (as legacy applications do), and report throughput and
//! submit latency (connect or MAIL → final 250) as one JSON line.
//!
//! ```text
//! cargo run --release --example loadgen -- --addr 127.0.0.1:2525 \
//!     --sessions 10 --messages 2000 --size 4096 --per-conn 1
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    sessions: usize,
    messages: usize,
    size: usize,
    per_conn: usize,
    max_time: Duration,
}

fn parse() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:2525".parse().unwrap(),
        sessions: 10,
        messages: 1000,
        size: 4096,
        per_conn: 1,
        max_time: Duration::from_secs(120),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        let val = &v[i + 1];
        match v[i].as_str() {
            "--addr" => a.addr = val.parse().expect("--addr IP:PORT"),
            "--sessions" => a.sessions = val.parse().expect("--sessions N"),
            "--messages" => a.messages = val.parse().expect("--messages N"),
            "--size" => a.size = val.parse().expect("--size BYTES"),
            "--per-conn" => a.per_conn = val.parse::<usize>().expect("--per-conn N").max(1),
            "--max-time" => {
                a.max_time = Duration::from_secs(val.parse().expect("--max-time SECONDS"))
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// A message of about `size` bytes: a few headers and 76-character lines.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Legacy App <app@legacy.test>\r\nTo: <rcpt@example.com>\r\nSubject: load test\r\n\r\n".to_vec();
    let line: Vec<u8> = (0..76u8).map(|i| b'a' + i % 26).chain(*b"\r\n").collect();
    while m.len() + line.len() <= size.max(m.len() + line.len()) && m.len() < size {
        m.extend_from_slice(&line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

async fn reply(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut String,
) -> std::io::Result<u16> {
    loop {
        line.clear();
        if r.read_line(line).await? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        if line.len() >= 4 && line.as_bytes()[3] != b'-' {
            return line[..3]
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad reply {line:?}")));
        }
    }
}

async fn expect(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut String,
    class: u16,
) -> std::io::Result<()> {
    let code = reply(r, line).await?;
    if code / 100 != class {
        return Err(std::io::Error::other(format!(
            "unexpected reply {}",
            line.trim_end()
        )));
    }
    Ok(())
}

/// One connection: greeting, EHLO, `n` transactions, QUIT. Returns the
/// latency of each message.
async fn connection(addr: SocketAddr, n: usize, msg: &[u8]) -> std::io::Result<Vec<Duration>> {
    let start = Instant::now();
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    expect(&mut r, &mut line, 2).await?;
    w.write_all(b"EHLO loadgen.test\r\n").await?;
    expect(&mut r, &mut line, 2).await?;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = if i == 0 { start } else { Instant::now() };
        w.write_all(b"MAIL FROM:<app@legacy.test>\r\n").await?;
        expect(&mut r, &mut line, 2).await?;
        w.write_all(b"RCPT TO:<rcpt@example.com>\r\n").await?;
        expect(&mut r, &mut line, 2).await?;
        w.write_all(b"DATA\r\n").await?;
        expect(&mut r, &mut line, 3).await?;
        w.write_all(msg).await?;
        expect(&mut r, &mut line, 2).await?;
        lat.push(t0.elapsed());
    }
    w.write_all(b"QUIT\r\n").await?;
    let _ = reply(&mut r, &mut line).await;
    Ok(lat)
}

#[tokio::main]
async fn main() {
    let a = parse();
    let msg = Arc::new(message(a.size));
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + a.max_time;
    let mut tasks = Vec::new();
    for _ in 0..a.sessions {
        let (msg, next, errors) = (msg.clone(), next.clone(), errors.clone());
        let (addr, total, per) = (a.addr, a.messages, a.per_conn);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let first = next.fetch_add(per, Ordering::Relaxed);
                if first >= total || Instant::now() > deadline {
                    break;
                }
                let n = per.min(total - first);
                match connection(addr, n, &msg).await {
                    Ok(l) => lat.extend(l),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("loadgen: {e}");
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"messages\":{},\"errors\":{},\"elapsed_s\":{:.3},\"rate\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        lat.len(),
        errors.load(Ordering::Relaxed),
        elapsed,
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
