//! The run-time commands of the CLI (`limits`, `blacklist`, `queue`,
//! `status`; PRODUCT §4.1): each reads `[admin] address` and `token` from
//! the config, makes one request to the running daemon's admin API, and
//! prints a table for people or, with `--json`, exactly one JSON document.
//!
//! Exit status: 0 done; 1 refused (unknown id or server, bad entry: any
//! 4xx but 401); 69 the daemon cannot be reached (one line on stderr);
//! 64 usage or config error (no `[admin]`, no token, a token the daemon
//! refuses). The token is sent only in the `Authorization` header and is
//! never printed.

use super::types::{ApiError, LimitRow, QueueEntry, StatusDoc};
use crate::blacklist::ListedEntry;
use crate::config::Config;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// EX_UNAVAILABLE: the daemon cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 69;
/// EX_USAGE: usage or config error.
pub const EXIT_USAGE: u8 = 64;
/// Refused by the daemon.
pub const EXIT_REFUSED: u8 = 1;

/// How long one request may take (a reload probes servers).
const TIMEOUT: Duration = Duration::from_secs(120);

/// One request to the admin API.
pub struct Call {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// Path below `/api/v1/`, with its query string.
    pub path: String,
    /// JSON body.
    pub body: Option<serde_json::Value>,
}

/// The admin API's answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (JSON).
    pub body: Vec<u8>,
}

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The config lacks what the call needs.
    #[error("{0}")]
    Config(String),
    /// The daemon cannot be reached.
    #[error("cannot reach the smarthost daemon's admin API at {addr}: {reason}")]
    Unreachable {
        /// Where we tried.
        addr: SocketAddr,
        /// Why it failed.
        reason: String,
    },
}

/// Where to connect for the configured admin address: a wildcard address
/// means this host.
fn connect_addr(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v) if v.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(v) if v.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}

/// Makes `call` against the daemon `cfg` describes.
pub fn call(cfg: &Config, call: &Call) -> Result<Answer, CallError> {
    let Some(admin) = cfg.admin.as_ref() else {
        return Err(CallError::Config(format!(
            "{}: no [admin] section: the daemon's admin API address is unknown",
            cfg.source
        )));
    };
    let Some(token) = admin.token.as_ref() else {
        return Err(CallError::Config(format!(
            "{}: no [admin] token: the admin API is off",
            cfg.source
        )));
    };
    if admin.address.port() == 0 {
        return Err(CallError::Config(format!(
            "{}: [admin] address has port 0: give the port the daemon listens on",
            cfg.source
        )));
    }
    let addr = connect_addr(admin.address);
    let unreachable = |reason: String| CallError::Unreachable { addr, reason };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(format!("cannot start the runtime: {e}")))?;
    let body = call
        .body
        .as_ref()
        .map(|b| Bytes::from(b.to_string()))
        .unwrap_or_default();
    let req = hyper::Request::builder()
        .method(call.method)
        .uri(format!("/api/v1/{}", call.path))
        .header(hyper::header::HOST, addr.to_string())
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", token.expose()),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| CallError::Config(format!("bad request: {e}")))?;
    rt.block_on(async move {
        let work = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes()
                .to_vec();
            Ok::<_, String>(Answer { status, body })
        };
        match tokio::time::timeout(TIMEOUT, work).await {
            Ok(r) => r.map_err(unreachable),
            Err(_) => Err(unreachable(format!(
                "no answer within {}s",
                TIMEOUT.as_secs()
            ))),
        }
    })
}

/// What a command prints for people from a successful answer.
pub type Render = fn(&[u8]) -> Result<String, String>;

/// Runs one call and prints its result; returns the exit status.
pub fn run(cfg: &Config, c: Call, json: bool, render: Render) -> ExitCode {
    let answer = match call(cfg, &c) {
        Ok(a) => a,
        Err(CallError::Config(m)) => {
            eprintln!("smarthost: {m}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e @ CallError::Unreachable { .. }) => {
            eprintln!("smarthost: {e}");
            if json {
                crate::outln!("{}", serde_json::json!({ "error": e.to_string() }));
            }
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let ok = (200..300).contains(&answer.status);
    if !ok {
        let msg = serde_json::from_slice::<ApiError>(&answer.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).trim().to_owned());
        if json {
            crate::outln!("{}", serde_json::json!({ "error": msg }));
        }
        if answer.status == 401 {
            eprintln!(
                "smarthost: the daemon refused the [admin] token of {}",
                cfg.source
            );
            return ExitCode::from(EXIT_USAGE);
        }
        eprintln!("smarthost: refused: {msg}");
        return ExitCode::from(EXIT_REFUSED);
    }
    if json {
        // Exactly the API's document, re-indented.
        match serde_json::from_slice::<serde_json::Value>(&answer.body) {
            Ok(v) => crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(e) => {
                eprintln!("smarthost: the daemon's answer is not JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    match render(&answer.body) {
        Ok(text) => {
            crate::out!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smarthost: unexpected answer from the daemon: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A plain-text table: a header row and rows, columns padded.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    serde_json::from_slice(b).map_err(|e| e.to_string())
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// `limits show` for people.
pub fn render_limits(b: &[u8]) -> Result<String, String> {
    let rows: Vec<LimitRow> = decode(b)?;
    if rows.is_empty() {
        return Ok("no server has a send limit\n".to_owned());
    }
    Ok(table(
        &[
            "SERVER",
            "LIMIT",
            "COUNTS",
            "USED",
            "REMAINING",
            "RESETS_IN",
        ],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.server.clone(),
                    r.limit.clone(),
                    r.counts.clone(),
                    r.used.to_string(),
                    r.remaining.to_string(),
                    format!("{}s", r.resets_in_secs),
                ]
            })
            .collect::<Vec<_>>(),
    ))
}

/// `blacklist list` for people.
pub fn render_blacklist(b: &[u8]) -> Result<String, String> {
    let rows: Vec<ListedEntry> = decode(b)?;
    if rows.is_empty() {
        return Ok("no blacklist entries\n".to_owned());
    }
    Ok(table(
        &["ENTRY", "ACTION", "SCOPE", "SOURCE"],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.entry.clone(),
                    format!("{:?}", r.action).to_lowercase(),
                    r.scope.clone(),
                    r.source.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    ))
}

fn queue_rows(entries: &[QueueEntry]) -> String {
    if entries.is_empty() {
        return "the queue is empty\n".to_owned();
    }
    table(
        &[
            "ID",
            "AGE",
            "SENDER",
            "ATTEMPTS",
            "NEXT",
            "HELD",
            "RECIPIENTS",
        ],
        &entries
            .iter()
            .map(|e| {
                vec![
                    e.id.clone(),
                    format!("{}s", e.age_secs),
                    if e.sender.is_empty() {
                        "<>".to_owned()
                    } else {
                        e.sender.clone()
                    },
                    e.attempts.to_string(),
                    format!("{}s", e.next_attempt_secs),
                    if e.held { "yes" } else { "no" }.to_owned(),
                    e.recipients
                        .iter()
                        .map(|r| format!("{} ({})", r.address, r.state))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

/// `queue list` for people.
pub fn render_queue(b: &[u8]) -> Result<String, String> {
    Ok(queue_rows(&decode::<Vec<QueueEntry>>(b)?))
}

/// `queue show` for people.
pub fn render_queue_entry(b: &[u8]) -> Result<String, String> {
    let e: QueueEntry = decode(b)?;
    let mut out = queue_rows(std::slice::from_ref(&e));
    for r in &e.recipients {
        if let Some(err) = &r.last_error {
            out.push_str(&format!("{}: {err}\n", r.address));
        }
    }
    Ok(out)
}

/// `status` for people.
pub fn render_status(b: &[u8]) -> Result<String, String> {
    let s: StatusDoc = decode(b)?;
    let mut out = table(
        &[
            "SERVER",
            "KIND",
            "OWNER",
            "HEALTH",
            "LIMIT_REMAINING",
            "LAST_ERROR",
        ],
        &s.servers
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.kind.clone(),
                    r.tenant.clone().unwrap_or_else(|| "system".to_owned()),
                    r.health.clone(),
                    opt(&r.limit_remaining),
                    opt(&r.last_error),
                ]
            })
            .collect::<Vec<_>>(),
    );
    if s.queue.enabled {
        out.push_str(&format!(
            "queue: {} message(s), oldest {}\n",
            s.queue.depth,
            s.queue
                .oldest_age_secs
                .map_or_else(|| "-".to_owned(), |a| format!("{a}s"))
        ));
    } else {
        out.push_str("queue: none (delivery = \"direct\")\n");
    }
    for t in &s.test_mode {
        out.push_str(&format!(
            "test mode: {} {}{} -> {}\n",
            t.kind,
            t.name,
            t.display_name
                .as_ref()
                .map_or_else(String::new, |d| format!(" ({d})")),
            t.redirect_to
        ));
    }
    Ok(out)
}

/// For commands that answer `{ok: true}`.
pub fn render_ok(_: &[u8]) -> Result<String, String> {
    Ok("ok\n".to_owned())
}

/// Percent-encodes a query value.
pub fn query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_queries() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        assert_eq!(query_value("@a.example"), "%40a.example");
        assert_eq!(query_value("x y&z"), "x%20y%26z");
        assert_eq!(
            connect_addr("0.0.0.0:9925".parse().unwrap()),
            "127.0.0.1:9925".parse::<SocketAddr>().unwrap()
        );
    }
}
