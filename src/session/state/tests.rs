//! The state machine driven with canned input, no sockets: every reply
//! path, pipelining, AUTH sequencing, BDAT and the smtp-proto workarounds.

use super::*;
use crate::config::load_str;
use std::path::Path;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$JY4AKD9RcTjChNbtThTUMA$rk7JviL/djMbUfBfn9QJ+4YBCzeaGYZdmQYIM2Ei14M";

fn cfg(extra: &str) -> Arc<Config> {
    cfg_with(extra, |t| t)
}

fn cfg_with(extra: &str, edit: impl Fn(String) -> String) -> Arc<Config> {
    let text = format!(
        r#"
[system]
hostname = "relay.test"
default_server = "out"
bounce_address = "postmaster@relay.test"
blacklist = ["@dropped.test"]
[[listener]]
address = "127.0.0.1:2525"
tls = "starttls"
auth = "optional"
[tls]
certificate = "certs/localhost.crt"
private_key = "certs/localhost.key"
[limits]
max_message_size = "1KB"
max_recipients = 3
max_line_length = 1000
[server.out]
kind = "capture"
path = "/tmp/never-written"
[tenant.t]
blacklist = ["@rejected.test"]
blacklist_action = "reject"
[application.local]
tenant = "t"
client_ips = ["127.0.0.1"]
[application.authed]
tenant = "t"
auth_user = "user"
password_hash = "{HASH}"
{extra}
"#
    );
    let text = edit(text);
    Arc::new(
        load_str(&text, "t.toml", Path::new(env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("{:#?}", e.0)),
    )
}

struct Harness {
    s: Session,
    events: Vec<String>,
}

impl Harness {
    fn new(c: Arc<Config>, peer: &str) -> Self {
        let l = c.listeners[0].clone();
        let mut s = Session::new(c, l, peer.parse().unwrap(), None);
        s.greet();
        let _ = s.take_output();
        Harness {
            s,
            events: Vec::new(),
        }
    }

    /// Feeds `input` completely, answering events: TLS succeeds, the
    /// password "pw" is right, deliveries succeed. Returns the output.
    fn send(&mut self, input: &[u8]) -> String {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let (n, ev) = self.s.feed(&input[pos..]);
            pos += n;
            out.extend(self.s.take_output());
            match ev {
                None => break,
                Some(Event::StartTls) => {
                    self.events
                        .push(format!("starttls, dropped {} bytes", input.len() - pos));
                    pos = input.len();
                    self.s.tls_started(TlsInfo {
                        version: "TLSv1_3".into(),
                        cipher: "X".into(),
                    });
                }
                Some(Event::Authenticate { user, password }) => {
                    self.events.push(format!("auth {user}/{password}"));
                    let r = if password == "pw" {
                        AuthResult::Ok
                    } else {
                        AuthResult::Failed
                    };
                    self.s.auth_result(&user, r);
                }
                Some(Event::Message(env)) => {
                    let body = self.s.take_body();
                    self.events.push(format!(
                        "message from <{}> to {:?} body {:?}",
                        env.mail_from,
                        env.recipients
                            .iter()
                            .map(|r| r.original.clone())
                            .collect::<Vec<_>>(),
                        String::from_utf8_lossy(&body)
                    ));
                    self.s.message_result(reply::delivered("ID"));
                }
                Some(Event::Close) => {
                    self.events.push("close".into());
                    break;
                }
            }
            out.extend(self.s.take_output());
            if pos >= input.len() {
                break;
            }
        }
        out.extend(self.s.take_output());
        String::from_utf8(out).unwrap()
    }

    fn codes(&mut self, input: &str) -> Vec<u16> {
        let out = self.send(input.as_bytes());
        out.lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| l[..3].parse().unwrap())
            .collect()
    }
}

#[test]
fn reply_codes_for_each_command() {
    let c = cfg("");
    let cases: &[(&str, &[u16])] = &[
        ("EHLO c\r\n", &[250]),
        ("HELO c\r\n", &[250]),
        ("NOOP\r\n", &[250]),
        ("RSET\r\n", &[250]),
        ("HELP\r\n", &[214]),
        ("VRFY x@y.test\r\n", &[252]),
        ("EXPN list\r\n", &[502]),
        ("ETRN x\r\n", &[502]),
        ("FOO bar\r\n", &[500]),
        ("MAIL FROM:<a@b.test>\r\n", &[503]),
        ("EHLO c\r\nRCPT TO:<a@b.test>\r\n", &[250, 503]),
        ("EHLO c\r\nDATA\r\n", &[250, 503]),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n",
            &[250, 250, 554],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n",
            &[250, 250, 503],
        ),
        ("EHLO c\r\nMAIL FROM:<a@b.test> SIZE=5000\r\n", &[250, 552]),
        ("EHLO c\r\nMAIL FROM:<a@b.test> FOO=1\r\n", &[250, 555]),
        ("EHLO c\r\nMAIL FROM:<not an address>\r\n", &[250, 501]),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@rejected.test>\r\n",
            &[250, 250, 550],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@dropped.test>\r\n",
            &[250, 250, 250],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<>\r\n",
            &[250, 250, 501],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<nodomain>\r\n",
            &[250, 250, 501],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nRCPT TO:<d@x.test>\r\n",
            &[250, 250, 250, 250, 250, 452],
        ),
        ("STARTTLS\r\n", &[220]),
        ("EHLO c\r\nAUTH PLAIN\r\n", &[250, 538]),
        ("AUTH PLAIN\r\n", &[503]),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\n",
            &[250, 555],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 0\r\nDATA\r\n",
            &[250, 250, 250, 250, 503],
        ),
        ("QUIT\r\n", &[221]),
    ];
    for (input, want) in cases {
        let mut h = Harness::new(c.clone(), "127.0.0.1:40000");
        assert_eq!(h.codes(input), *want, "input {input:?}");
    }
}

#[test]
fn postmaster_maps_to_the_bounce_address() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let out = h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n.\r\n");
    assert!(out.ends_with("250 2.0.0 OK: delivered as ID\r\n"), "{out}");
    assert!(
        h.events[0].contains("[\"postmaster@relay.test\"]"),
        "{:?}",
        h.events
    );
}

#[test]
fn quoted_local_parts_are_requoted() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    h.send(
        b"EHLO c\r\nMAIL FROM:<\"john doe\"@b.test>\r\nRCPT TO:<\"a b\"@x.test>\r\nDATA\r\n.\r\n",
    );
    assert!(
        h.events[0].contains("from <\"john doe\"@b.test> to [\"\\\"a b\\\"@x.test\"]"),
        "{:?}",
        h.events
    );
}

#[test]
fn unidentified_clients_never_relay() {
    // No application for this address, AUTH not offered without TLS: 550.
    let mut h = Harness::new(cfg(""), "192.0.2.1:40000");
    assert_eq!(h.codes("EHLO c\r\nMAIL FROM:<a@b.test>\r\n"), [250, 550]);
    // After STARTTLS, AUTH is offered: 530 asks the client to authenticate.
    let mut h = Harness::new(cfg(""), "192.0.2.1:40000");
    assert_eq!(h.codes("STARTTLS\r\n"), [220]);
    assert_eq!(h.codes("EHLO c\r\nMAIL FROM:<a@b.test>\r\n"), [250, 530]);
}

#[test]
fn system_switch_off_is_temporary() {
    let c = cfg_with("", |t| {
        t.replace(
            "hostname = \"relay.test\"",
            "hostname = \"relay.test\"\nenabled = false",
        )
    });
    let mut h = Harness::new(c, "127.0.0.1:40000");
    let out = h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
    assert!(
        out.ends_with("451 4.3.2 Sending is disabled, try again later\r\n"),
        "{out}"
    );
}

#[test]
fn pipelined_transaction_in_one_write() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let out = h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@dropped.test>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    let codes: Vec<&str> = out
        .lines()
        .filter(|l| l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect();
    assert_eq!(codes, ["250", "250", "250", "250", "354", "250", "221"]);
    assert_eq!(h.events.len(), 2);
    assert!(
        h.events[0].contains("body \"Subject: s\\r\\n\\r\\nhi\\r\\n\""),
        "{:?}",
        h.events
    );
    assert_eq!(h.events[1], "close");
}

#[test]
fn commands_split_across_reads() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let mut out = String::new();
    for piece in [
        "EH",
        "LO c\r",
        "\nMAIL FROM:<a",
        "@b.test>\r\nRC",
        "PT TO:<x@y.test>\r\n",
    ] {
        out.push_str(&h.send(piece.as_bytes()));
    }
    assert_eq!(
        out.matches("\r\n250 ").count() + usize::from(out.starts_with("250 ")),
        3,
        "{out}"
    );
}

#[test]
fn overlong_lines_are_refused_and_skipped() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(2000));
    assert_eq!(h.codes(&long), [500, 250]);
    // Split over several reads.
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let mut out = h.send(format!("NOOP {}", "x".repeat(900)).as_bytes());
    out += &h.send("y".repeat(900).as_bytes());
    out += &h.send(b"\r\nNOOP\r\n");
    assert!(out.starts_with("500 5.5.2 Line too long"), "{out}");
    assert!(out.ends_with("250 2.0.0 OK\r\n"));
}

#[test]
fn message_size_limit() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let big = "x".repeat(2000);
    let out = h.send(
        format!(
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n{big}\r\n.\r\nNOOP\r\n"
        )
        .as_bytes(),
    );
    assert!(out.contains("552 5.3.4"), "{out}");
    assert!(out.ends_with("250 2.0.0 OK\r\n"));
    assert!(h.events.is_empty());
}

#[test]
fn bare_lf_refused_unless_allowed() {
    let input =
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nline1\nline2\r\n.\r\n";
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    assert!(
        h.send(input)
            .ends_with("554 5.6.0 Message refused: bare CR or LF; line endings must be CRLF\r\n")
    );
    let c = cfg_with("", |t| {
        t.replace(
            "tls = \"starttls\"",
            "tls = \"starttls\"\nallow_bare_lf = true",
        )
    });
    let mut h = Harness::new(c, "127.0.0.1:40000");
    assert!(h.send(input).ends_with("250 2.0.0 OK: delivered as ID\r\n"));
    assert!(
        h.events[0].contains("body \"line1\\r\\nline2\\r\\n\""),
        "{:?}",
        h.events
    );
}

#[test]
fn smuggled_commands_stay_inside_the_message() {
    let c = cfg_with("", |t| {
        t.replace(
            "tls = \"starttls\"",
            "tls = \"starttls\"\nallow_bare_lf = true",
        )
    });
    let mut h = Harness::new(c, "127.0.0.1:40000");
    let out = h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nhi\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n");
    assert_eq!(h.events.len(), 1, "{:?}", h.events);
    assert!(h.events[0].contains("MAIL FROM:<evil@x.test>"));
    assert!(out.ends_with("250 2.0.0 OK: delivered as ID\r\n"));
}

#[test]
fn empty_message_and_stuffed_first_line() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n.\r\n");
    h.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n..first\r\n.\r\n");
    assert!(h.events[0].ends_with("body \"\""), "{:?}", h.events);
    assert!(
        h.events[1].ends_with("body \".first\\r\\n\""),
        "{:?}",
        h.events
    );
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let out = h.send(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x.test>\r\n");
    assert!(out.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{out}");
    assert_eq!(h.events, ["starttls, dropped 29 bytes"]);
    // The session starts over: no EHLO yet, and STARTTLS is not offered again.
    assert_eq!(h.codes("MAIL FROM:<a@b.test>\r\n"), [503]);
    let ehlo = h.send(b"EHLO c\r\n");
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert_eq!(h.codes("STARTTLS\r\n"), [454]);
}

#[test]
fn auth_plain_and_login() {
    let plain = |u: &str, p: &str| B64.encode(format!("\0{u}\0{p}"));
    let mut h = Harness::new(cfg(""), "192.0.2.1:40000");
    h.send(b"STARTTLS\r\n");
    assert_eq!(
        h.codes(&format!(
            "EHLO c\r\nAUTH PLAIN {}\r\n",
            plain("user", "bad")
        )),
        [250, 535]
    );
    assert_eq!(
        h.codes(&format!("AUTH PLAIN {}\r\n", plain("user", "pw"))),
        [235]
    );
    assert_eq!(h.s.auth_user(), Some("user"));
    assert_eq!(h.codes("AUTH PLAIN\r\n"), [503]);
    // Identified by AUTH now, though the address is unknown.
    assert_eq!(h.codes("MAIL FROM:<a@b.test>\r\n"), [250]);

    let mut h = Harness::new(cfg(""), "192.0.2.1:40000");
    h.send(b"STARTTLS\r\n");
    h.send(b"EHLO c\r\n");
    let out = h.send(
        format!(
            "AUTH LOGIN\r\n{}\r\n{}\r\n",
            B64.encode("user"),
            B64.encode("pw")
        )
        .as_bytes(),
    );
    assert_eq!(
        out,
        "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(h.events.last().unwrap(), "auth user/pw");

    // PLAIN with the response on its own line; cancel; garbage.
    let mut h = Harness::new(cfg(""), "192.0.2.1:40000");
    h.send(b"STARTTLS\r\n");
    h.send(b"EHLO c\r\n");
    assert_eq!(
        h.send(format!("AUTH PLAIN\r\n{}\r\n", plain("user", "pw")).as_bytes()),
        "334 \r\n235 2.7.0 Authentication successful\r\n"
    );
    let mut h = Harness::new(cfg(""), "192.0.2.1:40000");
    h.send(b"STARTTLS\r\n");
    h.send(b"EHLO c\r\n");
    assert_eq!(h.codes("AUTH LOGIN\r\n*\r\n"), [334, 501]);
    assert_eq!(h.codes("AUTH PLAIN !!!notbase64\r\n"), [501]);
    assert_eq!(h.codes("AUTH CRAM-MD5\r\n"), [504]);
    let x = B64.encode("other\0user\0pw");
    assert_eq!(h.codes(&format!("AUTH PLAIN {x}\r\n")), [535]);
}

#[test]
fn required_auth() {
    let c = cfg_with("", |t| {
        t.replace("auth = \"optional\"", "auth = \"required\"")
    });
    let mut h = Harness::new(c, "127.0.0.1:40000");
    // Identified by address, but the listener requires AUTH.
    assert_eq!(h.codes("EHLO c\r\nMAIL FROM:<a@b.test>\r\n"), [250, 530]);
}

#[test]
fn bdat_chunks() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let out = h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\nQUIT\r\n");
    assert!(out.contains("250 2.0.0 5 bytes received\r\n"), "{out}");
    assert!(out.contains("250 2.0.0 OK: delivered as ID\r\n"));
    assert!(
        h.events[0].ends_with("body \"hello world\\r\\n\""),
        "{:?}",
        h.events
    );
    // BDAT 0 LAST, and a chunk split over reads.
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    h.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 8\r\nab");
    h.send(b"c\r\nd\r");
    let out = h.send(b"\nBDAT 0 LAST\r\n");
    assert!(out.ends_with("250 2.0.0 OK: delivered as ID\r\n"), "{out}");
    assert!(
        h.events[0].ends_with("body \"abc\\r\\nd\\r\\n\""),
        "{:?}",
        h.events
    );
    // Too big: every chunk is read, LAST gets 552, the session goes on.
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let big = "x".repeat(800);
    let out = h.send(format!("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 800\r\n{big}BDAT 800 LAST\r\n{big}NOOP\r\n").as_bytes());
    assert!(out.contains("552 5.3.4"), "{out}");
    assert!(out.ends_with("250 2.0.0 OK\r\n"));
    // DATA after BDAT is a sequence error.
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    assert_eq!(
        h.codes("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 1\r\nxDATA\r\n"),
        [250, 250, 250, 250, 503]
    );
}

#[test]
fn normalize_crlf_across_chunks() {
    let mut cr = false;
    let mut out = Vec::new();
    assert!(!normalize_crlf(b"a\r", &mut cr, &mut out));
    assert!(!normalize_crlf(b"\nb\r\n", &mut cr, &mut out));
    assert!(normalize_crlf(b"c\nd\re\r\rf", &mut cr, &mut out));
    assert_eq!(out, b"a\r\nb\r\nc\r\nd\r\ne\r\n\r\nf");
}

#[test]
fn ehlo_offers() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:40000");
    let out = h.send(b"EHLO client.test\r\n");
    for cap in [
        "PIPELINING",
        "SIZE 1024",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(
            out.contains(&format!("250-{cap}\r\n")),
            "{cap} missing in {out}"
        );
    }
    assert!(!out.contains("AUTH"), "no AUTH before TLS: {out}");
}

#[test]
fn bdat_sizes_are_read_exactly() {
    assert_eq!(bdat_size(b"BDAT 3 LAST\r\n"), Some(3));
    assert_eq!(bdat_size(b"bdat 0\r\n"), Some(0));
    assert_eq!(bdat_size(b"BDAT  12\r\n"), Some(12));
    assert_eq!(
        bdat_size(b"BDAT 18446744073709551615\r\n"),
        Some(usize::MAX)
    );
    assert_eq!(bdat_size(b"BDAT 184467440737095516163 LAST\r\n"), None);
    assert_eq!(bdat_size(b"BDAT LAST\r\n"), None);
    assert_eq!(bdat_size(b"BDAT\r\n"), None);
    assert_eq!(bdat_size(b"BDATX 3\r\n"), None);
}

#[test]
fn address_literals_and_unsendable_recipients_get_policy_replies() {
    let mut h = Harness::new(cfg(""), "127.0.0.1:1");
    h.send(b"EHLO c\r\nMAIL FROM:<a@legacy.test>\r\n");
    for rcpt in ["user@[192.0.2.1]", "user@[IPv6:2001:db8::1]"] {
        assert_eq!(
            h.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()),
            "550 5.7.1 Recipients at address literals are not relayed\r\n",
            "{rcpt}"
        );
    }
    assert_eq!(
        h.send(b"RCPT TO:<\"a>b\"@example.com>\r\n"),
        "553 5.1.3 This relay cannot send to that address\r\n"
    );
    assert_eq!(
        h.send(b"RCPT TO:<\"a b\"@example.com>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    // Other malformed addresses are still syntax errors.
    assert!(h.send(b"RCPT TO:<a@@b>\r\n").starts_with("501 "));
}
