//! The admin port. Open to anyone who can reach it: `GET /metrics`
//! (Prometheus text format), `GET /healthz` (the process answers) and
//! `GET /readyz` (listeners bound, a system-chain server not marked down).
//!
//! Behind `[admin] token`: the JSON API under `/api/v1/` (`api`; a missing
//! or wrong `Authorization: Bearer TOKEN` gets 401; without a configured
//! token the API is off and answers 404), and the status page `GET /`
//! (`status`), which is open when the admin address is loopback or
//! `status_public = true`, and otherwise wants the token as a bearer token
//! or as the password of HTTP Basic auth (so a browser can ask for it).
//!
//! Tokens are compared in constant time (SHA-256 of both, then
//! `subtle`), never logged and never echoed. Request bodies are limited to
//! [`BODY_LIMIT`].

pub mod api;
pub mod client;
pub mod status;
pub mod types;

use crate::server::Relay;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use axum::response::IntoResponse;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The largest request body accepted (JSON or form).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Binds the admin address.
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the admin port {address}: {e}"),
        )
    })
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// Answers one of the open endpoints (`/metrics`, `/healthz`, `/readyz`),
/// or 404.
pub fn handle(relay: &Relay, method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
        );
    }
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            relay.metrics.encode(),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match relay.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {}\n", why.join("; ")),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

async fn open_endpoint(
    State(relay): State<Arc<Relay>>,
    method: Method,
    uri: Uri,
) -> Response<Body> {
    handle(&relay, &method, uri.path())
}

/// Whether `given` is the configured token (constant time in the token's
/// content: both are hashed first, so neither length nor prefix leaks).
pub fn token_matches(configured: &str, given: &str) -> bool {
    use ring::digest::{SHA256, digest};
    let a = digest(&SHA256, configured.as_bytes());
    let b = digest(&SHA256, given.as_bytes());
    a.as_ref().ct_eq(b.as_ref()).into()
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The password of HTTP Basic auth, if any.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    s.split_once(':').map(|(_, p)| p.to_owned())
}

/// Whether the request carries the configured token (bearer, or Basic
/// auth's password when `basic` is allowed).
pub(crate) fn authorized(relay: &Relay, headers: &HeaderMap, basic: bool) -> bool {
    let cfg = relay.config();
    let Some(token) = cfg.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        return false;
    };
    if let Some(b) = bearer(headers) {
        return token_matches(token.expose(), b);
    }
    basic && basic_password(headers).is_some_and(|p| token_matches(token.expose(), &p))
}

async fn require_token(
    State(relay): State<Arc<Relay>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let configured = relay
        .config()
        .admin
        .as_ref()
        .is_some_and(|a| a.token.is_some());
    if !configured {
        return api::error(
            StatusCode::NOT_FOUND,
            "the admin API is off: no [admin] token is configured",
        );
    }
    if !authorized(&relay, req.headers(), false) {
        let mut r = api::error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    next.run(req).await
}

/// The whole admin router.
pub fn router(relay: Arc<Relay>) -> Router {
    let api = api::routes().layer(axum::middleware::from_fn_with_state(
        relay.clone(),
        require_token,
    ));
    Router::new()
        .route("/metrics", axum::routing::any(open_endpoint))
        .route("/healthz", axum::routing::any(open_endpoint))
        .route("/readyz", axum::routing::any(open_endpoint))
        .merge(status::routes())
        .nest("/api/v1", api)
        .fallback(
            |State(relay): State<Arc<Relay>>, method: Method, uri: Uri| async move {
                if uri.path().starts_with("/api/") {
                    return api::error(StatusCode::NOT_FOUND, "no such endpoint").into_response();
                }
                handle(&relay, &method, uri.path())
            },
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(relay)
}

/// Serves the admin port until the relay shuts down.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>) {
    let mut shutdown = relay.shutdown_signal();
    match listener.local_addr() {
        Ok(address) => tracing::info!(%address, "admin port listening"),
        Err(e) => tracing::info!(error = %e, "admin port listening"),
    }
    let app = router(relay.clone());
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(Body::new))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            // A test mail may take as long as an upstream's timeouts.
            let _ = tokio::time::timeout(Duration::from_secs(600), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_content() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("s3cret", "s3cret "));
        assert!(!token_matches("s3cret", ""));
    }

    #[test]
    fn authorization_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        assert_eq!(basic_password(&h), None);
        // "user:pa:ss" → password "pa:ss".
        h.insert(
            header::AUTHORIZATION,
            "Basic dXNlcjpwYTpzcw==".parse().unwrap(),
        );
        assert_eq!(bearer(&h), None);
        assert_eq!(basic_password(&h).as_deref(), Some("pa:ss"));
    }
}
