//! systemd readiness notification (`Type=notify`): READY, RELOADING and
//! STOPPING datagrams to `$NOTIFY_SOCKET`. Without that variable (not run
//! by systemd) every call does nothing. Tested end to end in
//! `tests/systemd_notify.rs`.

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

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC` must be (systemd
/// compares it with its own clock to match RELOADING=1 to the reload it
/// asked for under `Type=notify-reload`).
pub fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(t.tv_nsec as u64 / 1_000)
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
