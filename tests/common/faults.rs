//! Fault injection in front of a real peer: a TCP proxy that forwards to
//! an upstream (Postfix) and cuts the connection in the middle of DATA.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A proxy that forwards to `upstream` and, once the client has sent
/// `DATA` and then `cut_after` more bytes, closes both directions.
pub struct CuttingProxy {
    addr: SocketAddr,
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    /// Starts the proxy on a free loopback port.
    pub fn start(upstream: SocketAddr, cut_after: usize) -> CuttingProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let cuts = Arc::new(AtomicUsize::new(0));
        let c = cuts.clone();
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let c = c.clone();
                std::thread::spawn(move || pump(client, server, cut_after, &c));
            }
        });
        CuttingProxy { addr, cuts }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections were cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

fn pump(mut client: TcpStream, server: TcpStream, cut_after: usize, cuts: &AtomicUsize) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let mut server_r = server.try_clone().unwrap();
    let mut client_w = client.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = server_r.read(&mut buf) {
            if n == 0 || client_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client_w.shutdown(Shutdown::Both);
    });
    let mut server_w = server;
    let mut seen = Vec::new();
    let mut in_data_since: Option<usize> = None;
    let mut buf = [0u8; 16384];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if in_data_since.is_none() {
            seen.extend_from_slice(chunk);
            if let Some(p) = seen
                .windows(6)
                .position(|w| w.eq_ignore_ascii_case(b"DATA\r\n"))
            {
                in_data_since = Some(seen.len() - (p + 6));
            }
        } else if let Some(s) = in_data_since.as_mut() {
            *s += n;
        }
        if in_data_since.is_some_and(|s| s >= cut_after) {
            // Forward only part of what came, then hang up on both sides.
            let keep = n.saturating_sub(in_data_since.unwrap() - cut_after);
            let _ = server_w.write_all(&chunk[..keep]);
            cuts.fetch_add(1, Ordering::SeqCst);
            let _ = server_w.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if server_w.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = server_w.shutdown(Shutdown::Both);
}
