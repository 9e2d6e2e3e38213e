//! A small HTTPS/1.1 client for the OAuth token endpoint and Microsoft
//! Graph: one request per connection (resolve, TCP, rustls with ring,
//! hyper's HTTP/1 connection), every step bounded by a timeout, the answer
//! collected up to [`MAX_RESPONSE`] bytes.
//!
//! Trust: the system store plus a server's `ca_file`, exactly as the SMTP
//! upstream builds it. Plain `http://` is not supported: tokens and
//! messages never travel unencrypted.
//!
//! Why not reqwest: hyper, hyper-util and tokio-rustls are already in the
//! tree; a client of our own needs no second TLS stack and cannot pull in
//! aws-lc-rs. Graph traffic is low (one request per message, or a handful on
//! the large-message path), so no connection pool is kept.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

/// The most of a response body that is read; more is an error.
pub const MAX_RESPONSE: usize = 1 << 20;

/// TCP connect timeout per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed request (no HTTP status was received).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `https://host[:port]/path`.
    #[error("invalid URL {0:?} (expected https://host[:port]/path)")]
    Url(String),
    /// The host did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// Host name.
        host: String,
        /// Resolver text.
        reason: String,
    },
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// Address tried.
        addr: String,
        /// What happened.
        reason: String,
    },
    /// The TLS handshake failed (certificate refused, protocol error).
    #[error("TLS with {host}: {reason}")]
    Tls {
        /// Host name.
        host: String,
        /// rustls' text.
        reason: String,
    },
    /// The request or the response did not complete in time.
    #[error("request to {host} timed out")]
    Timeout {
        /// Host name.
        host: String,
    },
    /// HTTP protocol or connection error.
    #[error("HTTP with {host}: {reason}")]
    Protocol {
        /// Host name.
        host: String,
        /// hyper's text.
        reason: String,
    },
}

/// An HTTPS URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (443 unless given).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `https://host[:port][/path]`.
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let bad = || HttpError::Url(s.to_owned());
        let rest = s.strip_prefix("https://").ok_or_else(bad)?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || s.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 443,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (authority.to_owned(), 443),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Url { host, port, path })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// One request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, `PUT`, `DELETE`.
    pub method: hyper::Method,
    /// Where to.
    pub url: String,
    /// Extra headers (Host and Content-Length are set here).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body (empty for none).
    pub body: Bytes,
    /// Bound on the whole exchange after the connection is up.
    pub timeout: Duration,
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body, at most [`MAX_RESPONSE`] bytes.
    pub body: Bytes,
}

impl Response {
    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Retry-After` in seconds, when given as a number of seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(hyper::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// An HTTPS client with one trust configuration.
#[derive(Clone)]
pub struct Https {
    tls: TlsConnector,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Https")
    }
}

impl Https {
    /// A client trusting the system roots plus the certificates of `ca_file`.
    pub fn new(system: &super::tls::SystemRoots, ca_file: Option<&Path>) -> Result<Https, String> {
        let mut roots = (*system.get()).clone();
        if let Some(ca) = ca_file {
            for cert in crate::tls::read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable certificate in {}: {e}", ca.display()))?;
            }
        }
        let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Https {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Sends `req` on a new connection and reads the whole response.
    pub async fn send(&self, req: Request) -> Result<Response, HttpError> {
        let url = Url::parse(&req.url)?;
        let host = url.host.clone();
        let stream = connect(&url).await?;
        let name =
            ServerName::try_from(url.host.clone()).map_err(|_| HttpError::Url(req.url.clone()))?;
        let tls = timeout(req.timeout, self.tls.connect(name, stream))
            .await
            .map_err(|_| HttpError::Timeout { host: host.clone() })?
            .map_err(|e| HttpError::Tls {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let proto = |e: hyper::Error| HttpError::Protocol {
                host: host.clone(),
                reason: e.to_string(),
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(proto)?;
            let driver = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "HTTPS connection ended with an error");
                }
            });
            // hyper leaves out `Content-Length: 0` for an empty body;
            // Graph answers such a POST (draft `send`) with 411.
            let sized = !req.body.is_empty()
                || matches!(
                    req.method,
                    hyper::Method::POST | hyper::Method::PUT | hyper::Method::PATCH
                );
            let mut builder = hyper::Request::builder()
                .method(req.method)
                .uri(url.path.as_str())
                .header(hyper::header::HOST, url.host_header());
            for (k, v) in req.headers {
                builder = builder.header(k, v);
            }
            if sized {
                builder = builder.header(hyper::header::CONTENT_LENGTH, req.body.len());
            }
            let request = builder
                .body(Full::new(req.body))
                .map_err(|e| HttpError::Url(format!("{}: {e}", req.url)))?;
            let resp = sender.send_request(request).await.map_err(proto)?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| HttpError::Protocol {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            driver.abort();
            Ok(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        timeout(req.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout { host: host.clone() })?
    }
}

async fn connect(url: &Url) -> Result<TcpStream, HttpError> {
    let addrs: Vec<_> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| HttpError::Resolve {
            host: url.host.clone(),
            reason: e.to_string(),
        })?
        .take(4)
        .collect();
    let mut last = HttpError::Resolve {
        host: url.host.clone(),
        reason: "no address".into(),
    };
    for addr in addrs {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => {
                last = HttpError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }
            }
            Err(_) => {
                last = HttpError::Connect {
                    addr: addr.to_string(),
                    reason: "timed out".into(),
                }
            }
        }
    }
    Err(last)
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://login.example/t/oauth2/v2.0/token").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("login.example", 443, "/t/oauth2/v2.0/token")
        );
        let u = Url::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8443, "/"));
        assert_eq!(u.host_header(), "127.0.0.1:8443");
        let u = Url::parse("https://[::1]:9/x?y=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9, "/x?y=1")
        );
        for bad in [
            "http://x/",
            "https://",
            "https://:5/",
            "https://u@x/",
            "https://x:0/",
            "https://x:y/",
            "https://x/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form() {
        assert_eq!(
            form_encode(&[("scope", "https://g.example/.default"), ("a b", "x&y=z")]),
            "scope=https%3A%2F%2Fg.example%2F.default&a%20b=x%26y%3Dz"
        );
    }
}
