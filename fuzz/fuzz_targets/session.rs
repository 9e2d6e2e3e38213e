//! The session state machine and DATA decoder fed arbitrary input, split
//! into arbitrary pieces, with every event answered as the driver would.
//! Half of the inputs are decoded as SMTP tokens, so deep states (AUTH
//! exchanges, DATA, BDAT, pipelined transactions) are reached quickly.
//! Invariants: no panic; output is whole CRLF-terminated reply lines; a
//! delivered body has no bare CR or LF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::config::{Config, load_str};
use smarthost::session::reply;
use smarthost::session::state::{AuthResult, Event, Session, TlsInfo};
use std::path::Path;
use std::sync::{Arc, OnceLock};

const TOKENS: &[&[u8]] = &[
    b"EHLO c\r\n", b"HELO c\r\n", b"MAIL FROM:<a@b.test>\r\n", b"MAIL FROM:<> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n",
    b"RCPT TO:<x@y.test>\r\n", b"RCPT TO:<postmaster>\r\n", b"RCPT TO:<\"q d\"@y.test>\r\n", b"DATA\r\n", b"BDAT 5\r\n",
    b"BDAT 0 LAST\r\n", b"BDAT 3 LAST\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n", b"AUTH PLAIN AHVzZXIAcHc=\r\n", b"dXNlcg==\r\n", b"*\r\n", b"\r\n.\r\n", b".\r\n", b"..", b".",
    b"\r", b"\n", b"\r\n", b"Subject: x\r\n", b"From: a@b.test\r\n", b"hello", b"\xc3\xbc", b"\xff", b"\0", b"VRFY x\r\n",
    b"HELP\r\n", b"RCPT TO:<a@rejected.test>\r\n", b"MAIL FROM:<a@b.test> SIZE=99999999\r\n",
];

fn config() -> Arc<Config> {
    static CFG: OnceLock<Arc<Config>> = OnceLock::new();
    CFG.get_or_init(|| {
        let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs");
        let text = format!(
            r#"
[system]
hostname = "fuzz.test"
default_server = "o"
bounce_address = "pm@fuzz.test"
[[listener]]
address = "127.0.0.1:2525"
tls = "starttls"
auth = "optional"
allow_plaintext_auth = true
[tls]
certificate = "{c}/localhost.crt"
private_key = "{c}/localhost.key"
[limits]
max_message_size = "4KB"
max_recipients = 5
max_line_length = 1000
[server.o]
kind = "capture"
path = "/nonexistent"
[tenant.t]
blacklist = ["@rejected.test"]
blacklist_action = "reject"
[application.a]
tenant = "t"
client_ips = ["127.0.0.1"]
auth_user = "user"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$JY4AKD9RcTjChNbtThTUMA$rk7JviL/djMbUfBfn9QJ+4YBCzeaGYZdmQYIM2Ei14M"
"#,
            c = certs.display()
        );
        Arc::new(load_str(&text, "fuzz.toml", Path::new("/")).expect("fuzz config"))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let input: Vec<u8> = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        rest.iter().flat_map(|b| TOKENS[*b as usize % TOKENS.len()].iter().copied()).collect()
    };
    let cfg = config();
    let listener = cfg.listeners[0].clone();
    let mut s = Session::new(cfg, listener, "127.0.0.1:1".parse().unwrap(), None);
    s.greet();
    let mut out = s.take_output();
    // Piece sizes from the mode byte: 1..=16 bytes, or everything at once.
    let piece = if mode & 0x80 != 0 { usize::MAX } else { usize::from(mode >> 3 & 0x0f) + 1 };
    let mut pos = 0;
    while pos < input.len() && !s.closed() {
        let end = input.len().min(pos.saturating_add(piece));
        let mut p = pos;
        while p < end {
            let (n, ev) = s.feed(&input[p..end]);
            p += n;
            match ev {
                None => break,
                Some(Event::Close) => break,
                Some(Event::StartTls) => {
                    p = end;
                    s.tls_started(TlsInfo { version: "TLSv1_3".into(), cipher: "x".into() });
                }
                Some(Event::Authenticate { user, password }) => {
                    let r = if password == "pw" { AuthResult::Ok } else { AuthResult::Failed };
                    s.auth_result(&user, r);
                }
                Some(Event::Message(_env)) => {
                    let body = s.take_body();
                    for (i, b) in body.iter().enumerate() {
                        if *b == b'\n' {
                            assert!(i > 0 && body[i - 1] == b'\r', "bare LF in a delivered body");
                        }
                        if *b == b'\r' {
                            assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR in a delivered body");
                        }
                    }
                    s.message_result(reply::delivered("fuzz"));
                }
            }
            if s.closed() {
                break;
            }
        }
        out.extend(s.take_output());
        pos = end;
    }
    out.extend(s.take_output());
    assert!(out.is_empty() || out.ends_with(b"\r\n"));
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit), "{:?}", String::from_utf8_lossy(line));
        assert!(line.ends_with(b"\r"));
    }
});
