//! Tests proving the mail-server fixtures in `tests/common/postfix.rs` work,
//! driven by `swaks` (and a tiny raw SMTP client for SMTPUTF8 and big
//! messages).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::postfix::{
    Postfix, PostfixDelivery, Received, SmtpSink, Tarpit, TlsMode, certs_dir, closed_port,
};

const WAIT: Duration = Duration::from_secs(15);

/// Output of one swaks run.
struct Swaks {
    success: bool,
    output: String,
}

/// Runs swaks against 127.0.0.1:`port` with `args`. Panics with a clear
/// message when swaks is not installed.
fn swaks(port: u16, args: &[&str]) -> Swaks {
    let out = Command::new("swaks")
        .arg("--server")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--timeout", "20"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            if e.kind() == ErrorKind::NotFound {
                panic!("swaks is not installed: `apt-get install swaks libnet-ssleay-perl`")
            }
            panic!("running swaks: {e}")
        });
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Swaks {
        success: out.status.success(),
        output,
    }
}

/// A message exercising what must survive byte for byte: a leading dot, a
/// line that is only a dot, 8-bit UTF-8 and non-UTF-8 bytes, a long line,
/// CRLF line endings.
fn tricky_message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"From: Sender <a@x.test>\r\nTo: b@y.test\r\nSubject: fixture check\r\n");
    m.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n\r\n");
    m.extend_from_slice(b"line 1\r\n.leading dot\r\n..two dots\r\n.\r\n");
    m.extend_from_slice("UTF-8: h\u{e9}llo \u{20ac} \u{1f600}\r\n".as_bytes());
    m.extend_from_slice(b"raw 8-bit: \xff\xfe\x80\r\n");
    m.extend(std::iter::repeat_n(b'x', 1500));
    m.extend_from_slice(b"\r\n\r\nlast line\r\n");
    m
}

/// Writes `message` for `swaks --data @FILE`. swaks appends CRLF.CRLF after
/// the file's contents, so the file holds the message minus its final CRLF.
fn data_file(message: &[u8]) -> tempfile::NamedTempFile {
    let body = message.strip_suffix(b"\r\n").expect("message ends in CRLF");
    assert!(!body.contains(&b'%'), "swaks would expand %TOKENS%");
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(body).expect("write data file");
    f
}

fn send_tricky(port: u16, extra: &[&str]) -> (Swaks, Vec<u8>) {
    let msg = tricky_message();
    let file = data_file(&msg);
    let data = format!("@{}", file.path().display());
    let mut args = vec!["--from", "a@x.test", "--to", "b@y.test", "--data", &data];
    args.extend_from_slice(extra);
    (swaks(port, &args), msg)
}

fn assert_ok(s: &Swaks) {
    assert!(s.success, "swaks failed:\n{}", s.output);
}

fn assert_one_postfix_received(r: &Received, expected: &[u8]) {
    let stripped = r.data_without_postfix_received();
    assert!(stripped == expected, "body differs: {r:?}");
    // Postfix added exactly one header: its Received: line.
    let added = &r.data[..r.data.len() - stripped.len()];
    let added = String::from_utf8_lossy(added);
    assert!(added.starts_with("Received: from "), "{added}");
    assert_eq!(added.matches("Received:").count(), 1, "{added}");
}

// ---------------------------------------------------------------------------
// A minimal raw SMTP client (for what swaks cannot do)
// ---------------------------------------------------------------------------

struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut raw = Self {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        let greeting = raw.reply();
        assert!(greeting.starts_with("220"), "{greeting}");
        raw
    }

    /// Reads one (possibly multi-line) reply.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read reply");
            assert!(!line.is_empty(), "connection closed; got so far: {all}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send");
        self.reply()
    }

    /// Sends a full transaction, asserting success; dot-stuffs `message`
    /// (which must end in CRLF).
    fn send(&mut self, mail: &str, rcpts: &[&str], message: &[u8]) {
        let r = self.cmd(&format!("MAIL FROM:{mail}"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert!(r.starts_with("250"), "RCPT: {r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        let mut stuffed = Vec::with_capacity(message.len() + 1024);
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                stuffed.push(b'.');
            }
            stuffed.extend_from_slice(line);
        }
        stuffed.extend_from_slice(b".\r\n");
        self.writer.write_all(&stuffed).expect("send data");
        let r = self.reply();
        assert!(r.starts_with("250"), "end of data: {r}");
    }
}

// ---------------------------------------------------------------------------
// Postfix: delivery
// ---------------------------------------------------------------------------

#[test]
fn plain_relay_through_postfix_is_byte_identical() {
    let pf = Postfix::start();
    eprintln!(
        "Postfix fixture startup took {:?} (sink {:?})",
        pf.startup_time(),
        pf.sink().unwrap().startup_time()
    );
    let ehlo = swaks(pf.port(), &["--quit-after", "EHLO"]);
    assert!(!ehlo.output.contains("STARTTLS"), "{}", ehlo.output);
    assert!(!ehlo.output.contains("AUTH"), "{}", ehlo.output);
    assert!(ehlo.output.contains("SMTPUTF8"), "{}", ehlo.output);

    let (s, msg) = send_tricky(pf.port(), &[]);
    assert_ok(&s);
    let got = pf.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.mail_from, "a@x.test");
    assert_eq!(r.rcpt_to, vec!["b@y.test"]);
    assert_eq!(r.rcpt_params, vec![vec!["ORCPT=rfc822;b@y.test"]]);
    assert_one_postfix_received(r, &msg);
    let received = r.header("Received").unwrap();
    assert!(
        received.contains("by postfix-fixture.test (Postfix) with ESMTP id"),
        "{received}"
    );
    assert!(
        r.header("Message-ID").is_none(),
        "Postfix added a Message-ID"
    );
    assert!(r.header("Date").is_none(), "Postfix added a Date");
}

#[test]
fn postfix_relays_several_recipients_and_null_sender_in_one_transaction() {
    let pf = Postfix::start();
    let s = swaks(
        pf.port(),
        &[
            "--from",
            "<>",
            "--to",
            "one@y.test,two@z.test",
            "--data",
            "Subject: x\n\nhi",
        ],
    );
    assert_ok(&s);
    let got = pf.wait_for_messages(1, WAIT);
    assert_eq!(got[0].mail_from, "");
    assert_eq!(got[0].rcpt_to, vec!["one@y.test", "two@z.test"]);
    assert_eq!(
        got[0].data_without_postfix_received(),
        b"Subject: x\r\n\r\nhi\r\n"
    );
}

#[test]
fn pipe_delivery_handles_smtputf8() {
    let pf = Postfix::builder().delivery(PostfixDelivery::Pipe).start();
    let msg = "From: J\u{f6}rg <j\u{f6}rg@b\u{fc}cher.test>\r\nSubject: gr\u{fc}\u{df}e\r\n\r\n.dot \u{e9}\r\n";
    let mut raw = Raw::connect(pf.port());
    let ehlo = raw.cmd("EHLO client.test");
    assert!(ehlo.contains("SMTPUTF8"), "{ehlo}");
    raw.send(
        "<j\u{f6}rg@b\u{fc}cher.test> SMTPUTF8",
        &["\u{e5}sa@d\u{e9}j\u{e0}.test", "plain@y.test"],
        msg.as_bytes(),
    );
    raw.cmd("QUIT");
    let got = pf.wait_for_messages(1, WAIT);
    let r = &got[0];
    assert_eq!(r.mail_from, "j\u{f6}rg@b\u{fc}cher.test");
    assert_eq!(
        r.rcpt_to,
        vec!["\u{e5}sa@d\u{e9}j\u{e0}.test", "plain@y.test"]
    );
    assert_one_postfix_received(r, msg.as_bytes());
    assert!(r.header("Received").unwrap().contains("UTF8SMTP"), "{r:?}");
}

#[test]
fn twenty_megabytes_relay_byte_identical() {
    let pf = Postfix::start();
    let mut msg = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0u64;
    while msg.len() < 20 * 1024 * 1024 {
        // Mixed content: leading dots, 8-bit bytes, varying lengths.
        let line = format!(
            ".{i} line \u{e9}\u{20ac} {}\r\n",
            "z".repeat((i % 97) as usize)
        );
        msg.extend_from_slice(line.as_bytes());
        i += 1;
    }
    let t = Instant::now();
    let mut raw = Raw::connect(pf.port());
    raw.cmd("EHLO client.test");
    raw.send("<big@x.test>", &["big@y.test"], &msg);
    raw.cmd("QUIT");
    let got = pf.wait_for_messages(1, Duration::from_secs(60));
    eprintln!("20 MB through Postfix and smtp-sink took {:?}", t.elapsed());
    assert_one_postfix_received(&got[0], &msg);
}

// ---------------------------------------------------------------------------
// Postfix: TLS
// ---------------------------------------------------------------------------

#[test]
fn starttls_offered_and_verifies_against_test_ca() {
    let pf = Postfix::builder().tls(TlsMode::StartTls).start();
    let ca = certs_dir().join("ca.crt");
    let ca = ca.to_str().unwrap();
    let (s, msg) = send_tricky(
        pf.port(),
        &[
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            ca,
            "--tls-sni",
            "localhost",
        ],
    );
    assert_ok(&s);
    assert!(s.output.contains("250-STARTTLS"), "{}", s.output);
    assert!(s.output.contains("TLS started"), "{}", s.output);
    let got = pf.wait_for_messages(1, WAIT);
    assert_one_postfix_received(&got[0], &msg);
    assert!(
        got[0].header("Received").unwrap().contains("with ESMTPS"),
        "{:?}",
        got[0]
    );
    // Plaintext still allowed at level "may".
    let (s, _) = send_tricky(pf.port(), &[]);
    assert_ok(&s);
}

#[test]
fn starttls_required_rejects_plaintext_mail() {
    let pf = Postfix::builder().tls(TlsMode::StartTlsRequired).start();
    let (s, _) = send_tricky(pf.port(), &[]);
    assert!(!s.success);
    assert!(
        s.output
            .contains("530 5.7.0 Must issue a STARTTLS command first"),
        "{}",
        s.output
    );
    let (s, msg) = send_tricky(pf.port(), &["--tls"]);
    assert_ok(&s);
    let got = pf.wait_for_messages(1, WAIT);
    assert_one_postfix_received(&got[0], &msg);
}

#[test]
fn implicit_tls_wrapper_mode() {
    let pf = Postfix::builder().tls(TlsMode::Implicit).start();
    let ca = certs_dir().join("ca.crt");
    let (s, msg) = send_tricky(
        pf.port(),
        &[
            "--tlsc",
            "--tls-verify",
            "--tls-ca-path",
            ca.to_str().unwrap(),
            "--tls-sni",
            "localhost",
        ],
    );
    assert_ok(&s);
    assert!(!s.output.contains("STARTTLS"), "{}", s.output);
    let got = pf.wait_for_messages(1, WAIT);
    assert_one_postfix_received(&got[0], &msg);
    // A plaintext client gets no greeting.
    let plain = swaks(pf.port(), &["--quit-after", "CONNECT", "--timeout", "2"]);
    assert!(!plain.success, "{}", plain.output);
}

// ---------------------------------------------------------------------------
// Postfix: SASL
// ---------------------------------------------------------------------------

#[test]
fn auth_plain_and_login_without_tls() {
    let pf = Postfix::builder()
        .sasl_user("alice", "s3cret pass")
        .require_auth(true)
        .start();
    for mech in ["PLAIN", "LOGIN"] {
        let (s, _) = send_tricky(
            pf.port(),
            &[
                "--auth",
                mech,
                "--auth-user",
                "alice",
                "--auth-password",
                "s3cret pass",
            ],
        );
        assert_ok(&s);
        assert!(
            s.output.contains("235 2.7.0 Authentication successful"),
            "{}",
            s.output
        );
    }
    let got = pf.wait_for_messages(2, WAIT);
    assert!(
        got[0].header("Received").unwrap().contains("with ESMTPA"),
        "{:?}",
        got[0]
    );

    for mech in ["PLAIN", "LOGIN"] {
        let (s, _) = send_tricky(
            pf.port(),
            &[
                "--auth",
                mech,
                "--auth-user",
                "alice",
                "--auth-password",
                "wrong",
            ],
        );
        assert!(!s.success);
        assert!(s.output.contains("535 5.7.8"), "{}", s.output);
    }
    // require_auth: unauthenticated relaying is refused.
    let (s, _) = send_tricky(pf.port(), &[]);
    assert!(!s.success);
    assert!(s.output.contains("554 5.7.1"), "{}", s.output);
    assert!(
        s.output
            .contains("Recipient address rejected: Access denied"),
        "{}",
        s.output
    );
}

#[test]
fn auth_only_after_starttls() {
    let pf = Postfix::builder()
        .tls(TlsMode::StartTls)
        .sasl_user("bob", "pw")
        .auth_only_after_tls(true)
        .start();
    let plain = swaks(pf.port(), &["--quit-after", "EHLO"]);
    assert!(!plain.output.contains("AUTH"), "{}", plain.output);
    let (s, msg) = send_tricky(
        pf.port(),
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "bob",
            "--auth-password",
            "pw",
        ],
    );
    assert_ok(&s);
    assert!(s.output.contains("250-AUTH PLAIN LOGIN"), "{}", s.output);
    let got = pf.wait_for_messages(1, WAIT);
    assert_one_postfix_received(&got[0], &msg);
    assert!(got[0].header("Received").unwrap().contains("with ESMTPSA"));
}

#[test]
fn auth_over_implicit_tls() {
    let pf = Postfix::builder()
        .tls(TlsMode::Implicit)
        .sasl_user("carol", "pw2")
        .auth_only_after_tls(true)
        .require_auth(true)
        .start();
    let (s, _) = send_tricky(
        pf.port(),
        &[
            "--tlsc",
            "--auth",
            "LOGIN",
            "--auth-user",
            "carol",
            "--auth-password",
            "pw2",
        ],
    );
    assert_ok(&s);
    pf.wait_for_messages(1, WAIT);
}

// ---------------------------------------------------------------------------
// Postfix: failure replies
// ---------------------------------------------------------------------------

#[test]
fn recipient_550_and_450() {
    let pf = Postfix::builder()
        .reject_recipient("bad@y.test")
        .defer_recipient("later@y.test")
        .recipient_reply("full@y.test", "452 4.2.2 Mailbox full")
        .start();
    let s = swaks(
        pf.port(),
        &[
            "--from",
            "a@x.test",
            "--to",
            "ok@y.test,bad@y.test,later@y.test,full@y.test",
            "--data",
            "Subject: x\n\nbody",
        ],
    );
    let out = &s.output;
    // Postfix puts "<rcpt>: Recipient address rejected: " before the text.
    assert!(
        out.contains("550 5.1.1 <bad@y.test>: Recipient address rejected: no such user"),
        "{out}"
    );
    assert!(
        out.contains("450 4.2.0 <later@y.test>: Recipient address rejected: try again later"),
        "{out}"
    );
    assert!(
        out.contains("452 4.2.2 <full@y.test>: Recipient address rejected: Mailbox full"),
        "{out}"
    );
    let got = pf.wait_for_messages(1, WAIT);
    assert_eq!(got[0].rcpt_to, vec!["ok@y.test"]);
}

#[test]
fn all_recipients_421_disconnects() {
    let pf = Postfix::builder()
        .all_recipients_reply("421 4.3.2 Service shutting down, closing channel")
        .start();
    let (s, _) = send_tricky(pf.port(), &[]);
    assert!(!s.success);
    assert!(
        s.output
            .contains("421 4.3.2 <b@y.test>: Recipient address rejected: Service shutting down"),
        "{}",
        s.output
    );
    assert!(
        s.output.contains("Remote host closed connection"),
        "{}",
        s.output
    );
    assert!(!s.output.contains("DATA"), "{}", s.output);
}

#[test]
fn all_recipients_451_and_sender_and_end_of_data_replies() {
    let pf = Postfix::builder()
        .all_recipients_reply("451 4.3.0 Try again later")
        .start();
    let (s, _) = send_tricky(pf.port(), &[]);
    assert!(!s.success);
    assert!(
        s.output
            .contains("451 4.3.0 <b@y.test>: Recipient address rejected: Try again later"),
        "{}",
        s.output
    );

    let pf = Postfix::builder()
        .sender_reply("spam@x.test", "553 5.7.1 Sender refused")
        .end_of_data_reply("451 4.3.0 Queue file write error")
        .start();
    let s = swaks(
        pf.port(),
        &[
            "--from",
            "spam@x.test",
            "--to",
            "b@y.test",
            "--quit-after",
            "MAIL",
        ],
    );
    assert!(
        s.output
            .contains("553 5.7.1 <spam@x.test>: Sender address rejected: Sender refused"),
        "{}",
        s.output
    );
    let (s, _) = send_tricky(pf.port(), &[]);
    assert!(!s.success);
    assert!(
        s.output.contains(
            "451 4.3.0 <unknown[127.0.0.1]>: Client host rejected: Queue file write error"
        ),
        "{}",
        s.output
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(pf.received().is_empty());
}

// ---------------------------------------------------------------------------
// smtp-sink alone
// ---------------------------------------------------------------------------

#[test]
fn sink_records_byte_identical() {
    let sink = SmtpSink::start();
    eprintln!("smtp-sink startup took {:?}", sink.startup_time());
    let (s, msg) = send_tricky(sink.port(), &["--ehlo", "client.test"]);
    assert_ok(&s);
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert!(r.data == msg, "{r:?}");
    assert_eq!(r.data_without_postfix_received(), &msg[..]);
    assert_eq!(r.helo.as_deref(), Some("client.test"));
    assert_eq!(r.mail_from, "a@x.test");
    assert_eq!(r.rcpt_to, vec!["b@y.test"]);

    // Second message: parameters are recorded as sent.
    let mut raw = Raw::connect(sink.port());
    raw.cmd("EHLO c");
    raw.send(
        "<p@x.test> BODY=8BITMIME SIZE=100",
        &["q@y.test", "r@y.test"],
        b"Subject: 2\r\n\r\nx\r\n",
    );
    let got = sink.wait_for_messages(2, WAIT);
    assert_eq!(got[1].mail_params, vec!["BODY=8BITMIME", "SIZE=100"]);
    assert_eq!(got[1].rcpt_to, vec!["q@y.test", "r@y.test"]);
    assert_eq!(sink.messages_seen(), 2);
}

#[test]
fn sink_fault_variants() {
    struct Case {
        sink: SmtpSink,
        expect: &'static str,
        delivered: bool,
    }
    let cases = [
        Case {
            sink: SmtpSink::builder().soft_reject("MAIL").start(),
            expect: "450 4.3.0 Error: command failed",
            delivered: false,
        },
        Case {
            sink: SmtpSink::builder()
                .soft_reject("RCPT")
                .soft_reject_reply("451 4.7.1 Greylisted")
                .start(),
            expect: "451 4.7.1 Greylisted",
            delivered: false,
        },
        Case {
            sink: SmtpSink::builder().soft_reject("DATA").start(),
            expect: "450 4.3.0",
            delivered: false,
        },
        Case {
            sink: SmtpSink::builder().hard_reject("RCPT").start(),
            expect: "500 5.3.0",
            delivered: false,
        },
        Case {
            sink: SmtpSink::builder().reply_421("RCPT").start(),
            expect: "421 4.0.0 Server closing connection",
            delivered: false,
        },
        Case {
            sink: SmtpSink::builder().reply_421("CONNECT").start(),
            expect: "421 4.0.0",
            delivered: false,
        },
        Case {
            sink: SmtpSink::builder()
                .hard_reject(".")
                .hard_reject_reply("554 5.7.1 Content rejected")
                .start(),
            expect: "554 5.7.1 Content rejected",
            // smtp-sink dumps the data before rejecting the final dot.
            delivered: true,
        },
        Case {
            sink: SmtpSink::builder().disconnect_at(".").start(),
            expect: "Remote host closed connection unexpectedly",
            delivered: true,
        },
    ];
    for case in &cases {
        let (s, _) = send_tricky(case.sink.port(), &[]);
        assert!(!s.success, "{}", s.output);
        assert!(
            s.output.contains(case.expect),
            "want {:?}:\n{}",
            case.expect,
            s.output
        );
        if case.delivered {
            case.sink.wait_for_messages(1, WAIT);
        } else {
            assert!(case.sink.received().is_empty());
        }
    }
}

#[test]
fn sink_greeting_delay() {
    let sink = SmtpSink::builder().delay("CONNECT", 1).start();
    let t = Instant::now();
    let (s, _) = send_tricky(sink.port(), &[]);
    assert_ok(&s);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    sink.wait_for_messages(1, WAIT);
}

// ---------------------------------------------------------------------------
// Tarpit, closed port, parallel instances
// ---------------------------------------------------------------------------

#[test]
fn tarpit_never_greets_and_closed_port_refuses() {
    let tarpit = Tarpit::start();
    let mut c = TcpStream::connect(tarpit.addr()).expect("tarpit accepts");
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    let err = c.read(&mut buf).expect_err("tarpit must not send anything");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    assert_eq!(tarpit.connections(), 1);

    let err = TcpStream::connect(("127.0.0.1", closed_port())).expect_err("closed port");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn parallel_instances_are_independent() {
    let handles: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let pf = Postfix::start();
                let to = format!("rcpt{i}@y.test");
                let s = swaks(
                    pf.port(),
                    &[
                        "--from",
                        "a@x.test",
                        "--to",
                        &to,
                        "--data",
                        "Subject: p\n\nx",
                    ],
                );
                assert_ok(&s);
                let got = pf.wait_for_messages(1, WAIT);
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].rcpt_to, vec![to]);
                pf.port()
            })
        })
        .collect();
    let mut ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
}

#[tokio::test]
async fn async_wait_lets_a_same_runtime_client_progress() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let sink = SmtpSink::start();
    let port = sink.port();
    // On this current-thread runtime a blocking wait would starve the client.
    let client = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut replies = Vec::new();
        for cmd in [
            "",
            "EHLO async.test\r\n",
            "MAIL FROM:<async@x.test>\r\n",
            "RCPT TO:<b@y.test>\r\n",
            "DATA\r\n",
            "Subject: async\r\n\r\nhi\r\n.\r\n",
            "QUIT\r\n",
        ] {
            w.write_all(cmd.as_bytes()).await.unwrap();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let last = line.as_bytes().get(3) != Some(&b'-');
                replies.push(line);
                if last {
                    break;
                }
            }
        }
        replies
    });
    let got = sink.wait_for_messages_async(1, WAIT).await;
    assert_eq!(got[0].mail_from, "async@x.test");
    assert_eq!(got[0].data, b"Subject: async\r\n\r\nhi\r\n");
    let replies = client.await.unwrap();
    assert!(replies.last().unwrap().starts_with("221"), "{replies:?}");
}
