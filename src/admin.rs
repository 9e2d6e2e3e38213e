//! The admin port: `GET /metrics` (Prometheus text format), `GET /healthz`
//! (the process answers) and `GET /readyz` (listeners bound, config
//! loaded, a system-chain server not marked down). These three are open on
//! the admin address; any later admin API endpoint must require the
//! `[admin] token` as a bearer token.

use crate::server::Relay;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Binds the admin address.
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the admin port {address}: {e}"),
        )
    })
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Answers one request.
pub fn handle(relay: &Relay, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
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

/// Serves the admin port until the relay shuts down.
pub async fn serve(listener: TcpListener, relay: Arc<Relay>) {
    let mut shutdown = relay.shutdown_signal();
    tracing::info!(address = ?listener.local_addr().ok(), "admin port listening");
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
        let relay = relay.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = handle(&relay, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}
