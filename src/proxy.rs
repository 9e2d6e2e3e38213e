//! PROXY protocol v1 and v2 on a listener (PRODUCT §3.1, §3.11): behind a
//! TCP load balancer, the client's real address arrives in a header
//! before the first SMTP (or TLS) byte. Parsing is the `ppp` crate's; this
//! module reads exactly the header's bytes (never more: a TLS ClientHello
//! may follow in the same segment), bounded in size and time.
//!
//! The caller decides trust: a listener with `proxy_protocol = true`
//! accepts connections only from `proxy_trusted` peers, and those must
//! send a header. The address in the header then stands for the client
//! everywhere: identification, AUTH throttling, limits, logs, `Received:`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a trusted peer has to send the whole header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest v1 header, CRLF included (the spec's own limit).
const V1_MAX: usize = 107;

/// Largest v2 header accepted: the 16-byte preamble plus addresses and
/// TLVs. HAProxy's own headers (addresses, ALPN, authority, unique id,
/// SSL details) stay far below this.
pub const V2_MAX: usize = 1024;

/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing (or not all of it) arrived within [`HEADER_TIMEOUT`].
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The header is longer than allowed.
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    /// The bytes are not a valid PROXY v1 or v2 header.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// The connection failed or closed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// What a valid header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// The original client's address.
    Client(SocketAddr),
    /// v2 `LOCAL` or v1 `UNKNOWN` (the proxy's own health checks): the
    /// connection stands for itself.
    Local,
}

/// Whether `ip` may speak PROXY protocol to us. IPv4-mapped IPv6 peers
/// (on a dual-stack listener) are compared as IPv4.
pub fn trusted(ip: IpAddr, nets: &[crate::config::values::Cidr]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(ip))
}

/// Reads one PROXY v1 or v2 header from `s` within [`HEADER_TIMEOUT`].
pub async fn read_header<S: AsyncRead + Unpin>(s: &mut S) -> Result<Proxied, ProxyError> {
    read_header_within(s, HEADER_TIMEOUT).await
}

/// [`read_header`] with an explicit time limit.
pub async fn read_header_within<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Result<Proxied, ProxyError> {
    tokio::time::timeout(limit, read(s))
        .await
        .map_err(|_| ProxyError::Timeout(limit))?
}

async fn read<S: AsyncRead + Unpin>(s: &mut S) -> Result<Proxied, ProxyError> {
    // Both versions are at least 15 bytes long ("PROXY UNKNOWN\r\n"), and
    // 12 bytes tell them apart.
    let mut buf = vec![0u8; 12];
    s.read_exact(&mut buf).await?;
    if buf.as_slice() == V2_SIG {
        buf.resize(16, 0);
        s.read_exact(&mut buf[12..]).await?;
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        if 16 + len > V2_MAX {
            return Err(ProxyError::TooLong(V2_MAX));
        }
        buf.resize(16 + len, 0);
        s.read_exact(&mut buf[16..]).await?;
        return parse_v2(&buf);
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Malformed("no PROXY signature".into()));
    }
    // v1: one byte at a time up to the CRLF, so nothing after it is taken.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::TooLong(V1_MAX));
        }
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        buf.push(b[0]);
    }
    parse_v1(&buf)
}

fn parse_v1(bytes: &[u8]) -> Result<Proxied, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let h = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match h.addresses {
        Addresses::Unknown => Proxied::Local,
        Addresses::Tcp4(a) => {
            Proxied::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        Addresses::Tcp6(a) => {
            Proxied::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Proxied, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    let h = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if h.command == Command::Local {
        return Ok(Proxied::Local);
    }
    match h.addresses {
        Addresses::IPv4(a) => Ok(Proxied::Client(SocketAddr::new(
            IpAddr::V4(a.source_address),
            a.source_port,
        ))),
        Addresses::IPv6(a) => Ok(Proxied::Client(SocketAddr::new(
            IpAddr::V6(a.source_address),
            a.source_port,
        ))),
        // A PROXY command must name an IP client: a relay identifies
        // clients by address, so anything else is refused.
        Addresses::Unspecified | Addresses::Unix(_) => Err(ProxyError::Malformed(
            "PROXY command without an IPv4 or IPv6 source address".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Proxied, ProxyError>, Vec<u8>) {
        let mut r: &[u8] = bytes;
        let res = read_header_within(&mut r, Duration::from_secs(1)).await;
        (res, r.to_vec())
    }

    fn v2(cmd: u8, fam: u8, addr: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        h.extend_from_slice(addr);
        h
    }

    #[tokio::test]
    async fn v1_tcp4_tcp6_unknown_and_nothing_more_is_read() {
        let (r, rest) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 4711 25\r\nEHLO x\r\n").await;
        assert_eq!(
            r.unwrap(),
            Proxied::Client("192.0.2.7:4711".parse().unwrap())
        );
        assert_eq!(rest, b"EHLO x\r\n");
        let (r, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 25\r\n").await;
        assert_eq!(
            r.unwrap(),
            Proxied::Client("[2001:db8::1]:1000".parse().unwrap())
        );
        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r.unwrap(), Proxied::Local);
    }

    #[tokio::test]
    async fn v2_proxy_local_and_tlvs() {
        let mut addr = vec![192, 0, 2, 9, 10, 0, 0, 1];
        addr.extend_from_slice(&4242u16.to_be_bytes());
        addr.extend_from_slice(&25u16.to_be_bytes());
        addr.extend_from_slice(&[0x04, 0, 1, 42]); // a NOOP TLV
        let mut bytes = v2(1, 0x11, &addr);
        bytes.extend_from_slice(b"\x16\x03\x01"); // a TLS record follows
        let (r, rest) = parse(&bytes).await;
        assert_eq!(
            r.unwrap(),
            Proxied::Client("192.0.2.9:4242".parse().unwrap())
        );
        assert_eq!(rest, b"\x16\x03\x01");
        let (r, _) = parse(&v2(0, 0x00, &[])).await;
        assert_eq!(r.unwrap(), Proxied::Local);
    }

    #[tokio::test]
    async fn malformed_long_and_short_headers_are_refused() {
        for bad in [
            &b"EHLO client.example\r\n"[..],
            b"PROXY TCP4 999.0.0.1 10.0.0.1 1 25\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.1 1\r\n",
            b"PROXY TCP5 192.0.2.1 10.0.0.1 1 25\r\n",
        ] {
            let (r, _) = parse(bad).await;
            assert!(matches!(r, Err(ProxyError::Malformed(_))), "{bad:?}: {r:?}");
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(
            parse(long.as_bytes()).await.0,
            Err(ProxyError::TooLong(_))
        ));
        let mut big = V2_SIG.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&big).await.0, Err(ProxyError::TooLong(_))));
        // Unix sockets and a PROXY command without addresses.
        assert!(matches!(
            parse(&v2(1, 0x31, &[0; 216])).await.0,
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x00, &[])).await.0,
            Err(ProxyError::Malformed(_))
        ));
        // Cut short: the connection ends before the header does.
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4").await.0,
            Err(ProxyError::Io(_))
        ));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (_keep, mut rx) = tokio::io::duplex(64);
        let r = read_header_within(&mut rx, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ProxyError::Timeout(_))));
    }

    #[test]
    fn trust_by_network_including_mapped_ipv4() {
        let nets = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(trusted("10.1.2.3".parse().unwrap(), &nets));
        assert!(trusted("::ffff:10.1.2.3".parse().unwrap(), &nets));
        assert!(!trusted("192.0.2.1".parse().unwrap(), &nets));
    }
}
