//! `Type=notify`: `smarthost run` tells systemd (here: a datagram socket
//! of the test's own, named in `$NOTIFY_SOCKET`) READY=1 once it listens,
//! RELOADING=1 then READY=1 around a SIGHUP reload, and STOPPING=1 at
//! shutdown. Also checks the unit file wires reload to SIGHUP.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("no notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_reloading_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cfg = dir.path().join("smarthost.toml");
    std::fs::write(&cfg, common::relay::simple_config("")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smarthost"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kill = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    assert!(next(&sock).starts_with("READY=1"));
    let before = smarthost::notify::monotonic_usec();
    kill("-HUP");
    let reloading = next(&sock);
    let after = smarthost::notify::monotonic_usec();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    // The timestamp is CLOCK_MONOTONIC, read between the signal and the
    // datagram (not /proc/uptime, which is the boot-time clock, rounded).
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        before <= usec && usec <= after,
        "{before} <= {usec} <= {after}"
    );
    assert!(next(&sock).starts_with("READY=1"));
    kill("-TERM");
    assert!(next(&sock).starts_with("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_unit_file_reloads_with_sighup_and_is_hardened() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/smarthost.service"),
    )
    .unwrap();
    for want in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/smarthost run --config /etc/smarthost/smarthost.toml",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == want), "missing {want}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("packaging/smarthost.service"),
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // The binary path does not exist on a build machine; anything else is a unit error.
        let real: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("/usr/local/bin/smarthost") && !l.trim().is_empty())
            .collect();
        assert!(real.is_empty(), "{err}");
    }
}
