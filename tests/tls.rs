//! STARTTLS and implicit TLS on the listener, with swaks and smtplib
//! verifying the test CA, and the `Received:` header recording TLS and AUTH.

mod common;

use common::relay::{PASSWORD, TestRelay, python, swaks, tls_config};
use std::time::Duration;

#[test]
fn starttls_with_swaks_then_auth() {
    let relay = TestRelay::start(&tls_config(""));
    let server = relay.addr("submission").to_string();
    let out = swaks(&[
        "--server",
        &server,
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        common::relay::certs().join("ca.crt").to_str().unwrap(),
        "--tls-sni",
        "localhost",
        "--auth",
        "PLAIN",
        "--auth-user",
        "user",
        "--auth-password",
        PASSWORD,
        "--from",
        "a@legacy.test",
        "--to",
        "b@example.com",
    ]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("TLS started with cipher"), "{log}");
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    let received = m.header("Received").unwrap();
    assert!(received.contains("with ESMTPSA id"), "{received}");
    assert!(
        received.contains("(using TLSv1.3 with cipher"),
        "{received}"
    );
    assert_eq!(m.json["application"], "authed");
    assert_eq!(m.json["auth_user"], "user");
    assert_eq!(m.json["tls"], "TLSv1.3");
}

#[test]
fn implicit_tls_with_smtplib() {
    let relay = TestRelay::start(&tls_config(""));
    let out = python(
        relay.port("smtps"),
        r#"
ctx = ssl.create_default_context(cafile=CA)
s = smtplib.SMTP_SSL(HOST, PORT, context=ctx, timeout=20)
s.ehlo("client.test")
assert "auth" in s.esmtp_features, s.esmtp_features
assert "starttls" not in s.esmtp_features
s.login("user", ARGS[0])
s.sendmail("a@legacy.test", ["b@example.com"], b"Subject: implicit\r\n\r\nhello\r\n")
print(s.sock.version())
s.quit()
"#,
        &[PASSWORD],
    );
    assert!(out.trim().starts_with("TLSv1."), "{out}");
    let m = relay.wait_captured(1, Duration::from_secs(5)).remove(0);
    assert!(m.header("Received").unwrap().contains("with ESMTPSA"));
}

#[test]
fn smtps_requires_auth() {
    let relay = TestRelay::start(&tls_config(""));
    let out = python(
        relay.port("smtps"),
        r#"
ctx = ssl.create_default_context(cafile=CA)
s = smtplib.SMTP_SSL(HOST, PORT, context=ctx, timeout=20)
s.ehlo("client.test")
print(s.mail("a@legacy.test")[0])
"#,
        &[],
    );
    assert_eq!(out.trim(), "530");
}

#[test]
fn auth_is_not_offered_before_starttls() {
    let relay = TestRelay::start(&tls_config(""));
    let out = python(
        relay.port("submission"),
        r#"
s = smtplib.SMTP(HOST, PORT, timeout=20)
s.ehlo("client.test")
print("auth" in s.esmtp_features, "starttls" in s.esmtp_features)
print(s.docmd("AUTH", "PLAIN AHVzZXIAeA==")[0])
s.starttls(context=ssl.create_default_context(cafile=CA))
s.ehlo("client.test")
print("auth" in s.esmtp_features, "starttls" in s.esmtp_features)
"#,
        &[],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["False True", "538", "True False"]
    );
}

#[test]
fn tls_1_1_and_older_are_refused() {
    let relay = TestRelay::start(&tls_config(""));
    let out = python(
        relay.port("smtps"),
        r#"
ctx = ssl.create_default_context(cafile=CA)
ctx.minimum_version = ssl.TLSVersion.TLSv1
ctx.maximum_version = ssl.TLSVersion.TLSv1_1
try:
    smtplib.SMTP_SSL(HOST, PORT, context=ctx, timeout=10)
    print("connected")
except (ssl.SSLError, OSError) as e:
    print("refused")
"#,
        &[],
    );
    assert_eq!(out.trim(), "refused");
}

#[test]
fn starttls_discards_injected_plaintext_commands() {
    // CVE-2011-0411: commands pipelined after STARTTLS in the clear must
    // not be executed once TLS is up.
    let relay = TestRelay::start(&tls_config(""));
    let out = python(
        relay.port("submission"),
        r#"
import socket
s = socket.create_connection((HOST, PORT), timeout=10)
f = s.makefile("rb")
def reply(f):
    lines = []
    while True:
        l = f.readline().decode()
        lines.append(l)
        if len(l) < 4 or l[3] == " ":
            return "".join(lines)
reply(f)
s.sendall(b"EHLO client.test\r\n"); reply(f)
s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
print(reply(f)[:3])
t = ssl.create_default_context(cafile=CA).wrap_socket(s, server_hostname="localhost")
t.settimeout(0.5)
try:
    print("unsolicited", t.recv(1000))
except (socket.timeout, TimeoutError):
    print("silent")
t.settimeout(10)
tf = t.makefile("rb")
t.sendall(b"EHLO client.test\r\n"); reply(tf)
t.sendall(b"RCPT TO:<x@example.com>\r\n")
print(reply(tf)[:3])
"#,
        &[],
    );
    // 220 for STARTTLS, nothing unsolicited, and RCPT without MAIL is a
    // sequence error: the injected MAIL never ran.
    assert_eq!(out.lines().collect::<Vec<_>>(), ["220", "silent", "503"]);
}
