//! PROXY protocol v1/v2 on a listener: a trusted load balancer's header
//! names the client, and that address drives identification (`client_ips`),
//! logs and `Received:`; an untrusted peer, a missing or malformed header
//! are refused. HAProxy in front proves it against a real balancer.

mod common;

use common::relay::{Raw, TestRelay};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[system]
hostname = "relay.test"
default_server = "outbox"

[[listener]]
name = "lb"
address = "127.0.0.1:0"
auth = "none"
proxy_protocol = true
proxy_trusted = ["127.0.0.1"]

[[listener]]
name = "other-lb"
address = "127.0.0.1:0"
auth = "none"
proxy_protocol = true
proxy_trusted = ["10.9.9.9"]

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.t]
sender = "sender@relay.test"

# Only clients behind the balancer: nothing on 127.0.0.1 is an application.
[application.far]
tenant = "t"
client_ips = ["192.0.2.0/24", "127.0.0.2"]
"#;

/// Sends one message on `c` (greeting already read) and checks the 250.
fn send_message(c: &mut Raw) {
    c.begin("app@far.test", &["rcpt@example.com"]);
    c.send(b"Subject: proxied\r\n\r\nhello\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250 "), "{r}");
    c.cmd("QUIT");
}

fn with_header(relay: &TestRelay, header: &[u8]) -> Raw {
    let mut s = TcpStream::connect(relay.addr("lb")).unwrap();
    s.write_all(header).unwrap();
    let mut c = Raw::from_stream(s);
    let g = c.reply();
    assert!(g.starts_with("220 "), "greeting: {g}");
    c
}

fn v2_ipv4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

#[test]
fn raw_v1_and_v2_headers_name_the_client() {
    let relay = TestRelay::start(CONFIG);
    let mut c = with_header(&relay, b"PROXY TCP4 192.0.2.7 127.0.0.1 4711 25\r\n");
    send_message(&mut c);
    let mut c = with_header(&relay, &v2_ipv4([192, 0, 2, 8], 4242));
    send_message(&mut c);
    let m = relay.wait_captured(2, Duration::from_secs(5));
    let ips: Vec<&str> = m
        .iter()
        .map(|m| m.json["client_ip"].as_str().unwrap())
        .collect();
    let mut sorted = ips.clone();
    sorted.sort();
    assert_eq!(sorted, ["192.0.2.7", "192.0.2.8"]);
    for m in &m {
        assert_eq!(m.json["application"], "far");
        let ip = m.json["client_ip"].as_str().unwrap();
        let received = m.header("Received").unwrap();
        assert!(received.contains(&format!("([{ip}])")), "{received}");
    }
}

#[test]
fn v2_local_stands_for_the_balancer_itself() {
    let relay = TestRelay::start(CONFIG);
    // A health check: LOCAL, no addresses. 127.0.0.1 is no application.
    let mut c = with_header(&relay, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
    c.expect("EHLO lb.test", 250);
    let r = c.cmd("MAIL FROM:<x@far.test>");
    assert!(r.starts_with("550 5.7.1"), "{r}");
}

fn refused_with(relay: &TestRelay, listener: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(relay.addr(listener)).unwrap();
    let _ = s.write_all(bytes);
    let mut c = Raw::from_stream(s);
    let r = c.reply();
    assert!(c.closed(), "connection left open after {r:?}");
    r
}

#[test]
fn missing_malformed_and_untrusted_headers_are_refused() {
    let relay = TestRelay::start(CONFIG);
    for bad in [
        &b"EHLO client.test\r\n"[..],
        b"PROXY TCP4 192.0.2.300 127.0.0.1 1 25\r\n",
        b"PROXY TCP4 192.0.2.7 127.0.0.1 4711\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04abcd",
    ] {
        let r = refused_with(&relay, "lb", bad);
        assert_eq!(
            r, "421 4.7.0 Invalid or missing PROXY protocol header\r\n",
            "{bad:?}"
        );
    }
    // A peer outside proxy_trusted is refused before anything is read,
    // even with a well-formed header.
    let r = refused_with(
        &relay,
        "other-lb",
        b"PROXY TCP4 192.0.2.7 127.0.0.1 4711 25\r\n",
    );
    assert_eq!(r, "554 5.7.1 Connection not accepted from this address\r\n");
    assert!(relay.captured().is_empty());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

#[test]
fn haproxy_in_front_sends_v2_and_client_ips_see_the_original_client() {
    let relay = TestRelay::start(CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let front = free_port();
    let cfg = format!(
        "global\n  maxconn 100\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
         frontend smtp\n  bind 127.0.0.1:{front}\n  default_backend relay\n\n\
         backend relay\n  server r1 127.0.0.1:{} send-proxy-v2\n",
        relay.port("lb")
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(haproxy_bin())
        .args(["-db", "-f", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy is not installed: run tests/run.sh, which installs it");
    let _hap = Haproxy(child);
    let addr: SocketAddr = format!("127.0.0.1:{front}").parse().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "haproxy did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The client comes from 127.0.0.2; HAProxy connects from 127.0.0.1.
    let mut c = Raw::connect_from(addr, "127.0.0.2");
    send_message(&mut c);
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert_eq!(m.json["client_ip"], "127.0.0.2");
    assert_eq!(m.json["application"], "far");
    assert!(m.header("Received").unwrap().contains("([127.0.0.2])"));
    // Straight from 127.0.0.1 (no balancer, no header) nothing gets in.
    let r = refused_with(&relay, "lb", b"EHLO direct.test\r\n");
    assert!(r.starts_with("421 4.7.0"), "{r}");
}

#[test]
fn auth_throttling_counts_the_address_from_the_header() {
    use base64::Engine;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let cfg = format!(
        r#"
[system]
hostname = "relay.test"
default_server = "outbox"

[[listener]]
name = "lb"
address = "127.0.0.1:0"
auth = "optional"
allow_plaintext_auth = true
proxy_protocol = true
proxy_trusted = ["127.0.0.1"]

[limits]
auth_failures = 2
auth_lockout = "10m"

[server.outbox]
kind = "capture"
path = "outbox"

[tenant.t]
sender = "sender@relay.test"

[application.authed]
tenant = "t"
auth_user = "user"
password_hash = "{}"
"#,
        "$argon2id$v=19$m=19456,t=2,p=1$JY4AKD9RcTjChNbtThTUMA$rk7JviL/djMbUfBfn9QJ+4YBCzeaGYZdmQYIM2Ei14M"
    );
    let relay = TestRelay::start(&cfg);
    let bad = format!("AUTH PLAIN {}", b64("\0user\0wrong".into()));
    let good = format!(
        "AUTH PLAIN {}",
        b64(format!("\0user\0{}", common::relay::PASSWORD))
    );
    // Every TCP connection comes from 127.0.0.1; the headers differ.
    let mut a = with_header(&relay, b"PROXY TCP4 192.0.2.50 127.0.0.1 1000 25\r\n");
    a.expect("EHLO a", 250);
    a.expect(&bad, 535);
    a.expect(&bad, 421);
    let mut b = with_header(&relay, b"PROXY TCP4 192.0.2.51 127.0.0.1 1001 25\r\n");
    b.expect("EHLO b", 250);
    b.expect(&good, 235);
    let mut c = with_header(&relay, b"PROXY TCP4 192.0.2.50 127.0.0.1 1002 25\r\n");
    c.expect("EHLO c", 250);
    c.expect(&good, 421);
}

#[test]
fn the_header_comes_before_the_tls_handshake_on_an_implicit_tls_listener() {
    let cfg = CONFIG.replace(
        "[server.outbox]",
        "[[listener]]\nname = \"lb-tls\"\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\nauth = \"none\"\nproxy_protocol = true\nproxy_trusted = [\"127.0.0.1\"]\n\n[tls]\ncertificate = \"{certs}/localhost.crt\"\nprivate_key = \"{certs}/localhost.key\"\n\n[server.outbox]",
    );
    let relay = TestRelay::start(&cfg);
    // The ClientHello follows the header at once, without waiting for
    // anything; the relay must read exactly the header, then do TLS.
    let out = common::relay::python(
        relay.port("lb-tls"),
        r#"
import socket
s = socket.create_connection((HOST, PORT), timeout=10)
s.sendall(b"PROXY TCP4 192.0.2.77 127.0.0.1 5555 465\r\n")
t = ssl.create_default_context(cafile=CA).wrap_socket(s, server_hostname="localhost")
f = t.makefile("rb")
print(f.readline().decode().strip()[:3])
t.sendall(b"EHLO c\r\n")
while True:
    l = f.readline().decode()
    if l[3] == " ": break
t.sendall(b"MAIL FROM:<a@far.test>\r\n")
print(f.readline().decode().strip()[:3])
"#,
        &[],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["220", "250"]);
}
