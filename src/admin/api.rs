//! The JSON admin API under `/api/v1/` (PRODUCT §4.1). Every route here
//! sits behind the bearer-token check in `admin`. Each change leaves an
//! audit log line (`target: "audit"`, `who = "admin api"`).
//!
//! | method and path | answer |
//! | --- | --- |
//! | `GET servers` | `[{name, kind, tenant, health, limit_remaining, last_error}]` |
//! | `POST servers/{name}/test` `{to, from?}` | `{ok, server, reply}`; 502 `{error}` when not accepted |
//! | `GET limits` | `[{server, limit, window_secs, counts, used, remaining, resets_in_secs}]` |
//! | `POST limits/{server}/reset` | `{ok: true}` |
//! | `GET blacklist[?tenant=T]` | `[{entry, action, scope, source}]` |
//! | `POST blacklist` `{entry, tenant?, action?}` | `{ok: true}` |
//! | `DELETE blacklist?entry=E[&tenant=T]` | `{ok: true}`; 409 for a file entry |
//! | `GET test-mode` | `[{kind, name, display_name, redirect_to, subject_prefix}]` |
//! | `GET deliveries` | the recent deliveries, newest first |
//! | `GET status` | `{servers, queue, test_mode}` |
//! | `POST reload` | `{ok: true, hash}`; 409 `{error}` when refused |
//! | `GET queue`, `GET queue/{id}` | queue entries |
//! | `POST queue/{id}/retry`, `POST queue/retry-all`, `DELETE queue/{id}`, `POST queue/{id}/hold`, `POST queue/{id}/release` | `{ok: true}` |
//!
//! Refusals are `{error: "..."}` with 400 (bad input), 404 (unknown
//! server, message or tenant; no queue), 409 (not possible: a file entry,
//! a server without limit) or 502 (an upstream did not take a test mail).

use super::types::{ApiError, ControlError, Done, QueueSummary, ServerRow, StatusDoc, TestModeRow};
use crate::blacklist::{ChangeError, Scope};
use crate::config::{BlacklistAction, Config, ServerKind, TestModeSetting};
use crate::server::Relay;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// Who the audit lines name for changes made through the API.
const WHO: &str = "admin api";

/// A JSON `{error}` response.
pub fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    (status, Json(ApiError { error: msg.into() })).into_response()
}

fn control_error(e: ControlError) -> Response<Body> {
    match e {
        ControlError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        ControlError::Refused(m) => error(StatusCode::CONFLICT, m),
        ControlError::Failed(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

fn ok() -> Response<Body> {
    Json(Done::OK).into_response()
}

/// The API's routes (relative to `/api/v1`).
pub fn routes() -> Router<Arc<Relay>> {
    Router::new()
        .route("/servers", get(servers))
        .route("/servers/{name}/test", post(test_server))
        .route("/limits", get(limits))
        .route("/limits/{server}/reset", post(limits_reset))
        .route(
            "/blacklist",
            get(blacklist_list)
                .post(blacklist_add)
                .delete(blacklist_remove),
        )
        .route("/test-mode", get(test_mode))
        .route("/deliveries", get(deliveries))
        .route("/status", get(status))
        .route("/reload", post(reload))
        .route("/queue", get(queue_list))
        .route("/queue/retry-all", post(queue_retry_all))
        .route("/queue/{id}", get(queue_show).delete(queue_delete))
        .route("/queue/{id}/retry", post(queue_retry))
        .route("/queue/{id}/hold", post(queue_hold))
        .route("/queue/{id}/release", post(queue_release))
}

/// Every server with its health, limit budget and last error.
pub async fn server_rows(relay: &Relay, cfg: &Config) -> Vec<ServerRow> {
    let limits = relay.limits_control().show(cfg).await;
    let now = Instant::now();
    cfg.servers
        .values()
        .map(|s| ServerRow {
            name: s.name.clone(),
            kind: match s.kind {
                ServerKind::Smtp(_) => "smtp",
                ServerKind::Capture(_) => "capture",
                ServerKind::Graph(_) => "graph",
            }
            .to_owned(),
            tenant: s.tenant.clone(),
            health: relay.health.status(&s.name, now).label().to_owned(),
            limit_remaining: limits
                .iter()
                .find(|l| l.server == s.name)
                .map(|l| l.remaining),
            last_error: relay.health.last_error(&s.name),
        })
        .collect()
}

/// Tenants and applications whose mail is in test mode (own setting or
/// inherited).
pub fn test_mode_rows(cfg: &Config) -> Vec<TestModeRow> {
    let mut out = Vec::new();
    for t in cfg.tenants.values() {
        let chain = cfg.tenant_chain(&t.name);
        let tm = chain
            .iter()
            .find_map(|t| t.test_mode.as_ref())
            .and_then(|s| match s {
                TestModeSetting::On(tm) => Some(tm),
                TestModeSetting::Off => None,
            });
        if let Some(tm) = tm {
            out.push(TestModeRow {
                kind: "tenant".into(),
                name: t.name.clone(),
                display_name: chain
                    .iter()
                    .find_map(|t| t.display_name.as_ref())
                    .map(|d| d.as_str().to_owned()),
                redirect_to: tm.redirect_to.to_string(),
                subject_prefix: tm.subject_prefix.as_ref().map(|p| p.as_str().to_owned()),
            });
        }
    }
    for a in cfg.applications.values() {
        let eff = crate::policy::resolve(cfg, a);
        if let Some(tm) = eff.test_mode {
            out.push(TestModeRow {
                kind: "application".into(),
                name: a.name.clone(),
                display_name: eff.display_name.map(str::to_owned),
                redirect_to: tm.redirect_to.to_string(),
                subject_prefix: tm.subject_prefix.as_ref().map(|p| p.as_str().to_owned()),
            });
        }
    }
    out
}

/// Queue depth and oldest age; `enabled: false` without a queue.
pub async fn queue_summary(relay: &Relay) -> QueueSummary {
    match relay.queue_control() {
        Some(q) => match q.summary().await {
            Ok(mut s) => {
                s.enabled = true;
                s
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue summary failed");
                QueueSummary {
                    enabled: true,
                    ..Default::default()
                }
            }
        },
        None => QueueSummary::default(),
    }
}

/// The `status` document.
pub async fn status_doc(relay: &Relay) -> StatusDoc {
    let cfg = relay.config();
    StatusDoc {
        servers: server_rows(relay, &cfg).await,
        queue: queue_summary(relay).await,
        test_mode: test_mode_rows(&cfg),
    }
}

async fn servers(State(relay): State<Arc<Relay>>) -> Response<Body> {
    let cfg = relay.config();
    Json(server_rows(&relay, &cfg).await).into_response()
}

async fn status(State(relay): State<Arc<Relay>>) -> Response<Body> {
    Json(status_doc(&relay).await).into_response()
}

/// `POST servers/{name}/test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestMailRequest {
    /// The recipient.
    pub to: String,
    /// The sender (default: as `smarthost test-server` chooses).
    pub from: Option<String>,
}

/// The answer to a test mail that was accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestMailResult {
    /// Always true.
    pub ok: bool,
    /// The server.
    pub server: String,
    /// The server's final reply (or where the capture went).
    pub reply: String,
}

/// Why a test mail was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum TestMailError {
    /// No such server.
    #[error("no server named {0:?}")]
    UnknownServer(String),
    /// A bad address.
    #[error("{0}")]
    BadRequest(String),
    /// The server did not take it.
    #[error("not accepted by {server}: {reason}")]
    NotAccepted {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
}

impl TestMailError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            TestMailError::UnknownServer(_) => StatusCode::NOT_FOUND,
            TestMailError::BadRequest(_) => StatusCode::BAD_REQUEST,
            TestMailError::NotAccepted { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Sends a test message through `server` (the `test-server` code path for
/// SMTP, the outbox for a capture server); a failure is recorded as the
/// server's last error. `who` names the caller in the audit line.
pub async fn send_test_mail(
    relay: &Relay,
    server: &str,
    to: &str,
    from: Option<&str>,
    who: &str,
) -> Result<TestMailResult, TestMailError> {
    let cfg = relay.config();
    let Some(srv) = cfg.servers.get(server) else {
        return Err(TestMailError::UnknownServer(server.to_owned()));
    };
    let id = relay.next_id();
    let now = crate::util::unix_now();
    let msg = crate::upstream::probe::compose_test_message(&cfg, server, to, from, now, &id)
        .map_err(TestMailError::BadRequest)?;
    tracing::info!(target: "audit", who, what = "test mail", server, to, id = %id, "audit");
    let result = match &srv.kind {
        ServerKind::Smtp(s) => {
            let report = crate::upstream::probe::test_message(
                &relay.upstreams,
                server,
                s,
                &msg.mail_from,
                to,
                msg.content,
            )
            .await;
            report.result.map_err(|e| e.to_string())
        }
        ServerKind::Capture(c) => {
            let rcpt = [to.to_owned()];
            let env = crate::delivery::capture::CaptureEnvelope {
                id: &id,
                received_at: now,
                mail_from: &msg.mail_from,
                rcpt_to: &rcpt,
                original_mail_from: &msg.mail_from,
                recipients: &[],
                application: "",
                tenant: srv.tenant.as_deref().unwrap_or(""),
                server,
                client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
                helo: "admin",
                auth_user: None,
                tls: None,
                size: 0,
            };
            let message = crate::message::Message::in_memory(msg.content);
            crate::delivery::capture::store(&c.path, &id, &[], &message, 0, &env)
                .await
                .map(|_| format!("captured as {id} in {}", c.path.display()))
                .map_err(|e| format!("cannot write to {}: {e}", c.path.display()))
        }
        ServerKind::Graph(g) => {
            let message = crate::message::Message::in_memory(msg.content);
            let rcpts = [to.to_owned()];
            let header_end =
                crate::rewrite::rewrite(&message.head, &Default::default()).body_offset;
            let out = crate::upstream::graph::GraphMessage {
                mail_from: &msg.mail_from,
                rcpt_to: &rcpts,
                header: &message.head[..header_end],
                message: &message,
                body_offset: header_end,
            };
            match crate::upstream::graph::send(&relay.upstreams, server, g, &out).await {
                crate::outcome::HopResult::Accepted { refused, .. } if refused.is_empty() => {
                    Ok("accepted by Microsoft Graph (202)".to_owned())
                }
                crate::outcome::HopResult::Accepted { refused, .. } => Err(refused
                    .iter()
                    .map(|r| format!("{} refused: {} {}", r.rcpt, r.code, r.reason))
                    .collect::<Vec<_>>()
                    .join("; ")),
                crate::outcome::HopResult::Permanent { code, reason, .. } => {
                    Err(format!("refused: {code} {reason}"))
                }
                crate::outcome::HopResult::Failover(f) => {
                    Err(format!("{} failure: {}", f.class, f.reason))
                }
            }
        }
    };
    match result {
        Ok(reply) => {
            tracing::info!(server, id = %id, "test mail accepted");
            Ok(TestMailResult {
                ok: true,
                server: server.to_owned(),
                reply,
            })
        }
        Err(reason) => {
            relay.health.note_error(server, &reason);
            tracing::warn!(server, id = %id, reason = %reason, "test mail not accepted");
            Err(TestMailError::NotAccepted {
                server: server.to_owned(),
                reason,
            })
        }
    }
}

async fn test_server(
    State(relay): State<Arc<Relay>>,
    Path(name): Path<String>,
    Json(req): Json<TestMailRequest>,
) -> Response<Body> {
    match send_test_mail(&relay, &name, &req.to, req.from.as_deref(), WHO).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(e.status(), e.to_string()),
    }
}

async fn limits(State(relay): State<Arc<Relay>>) -> Response<Body> {
    let cfg = relay.config();
    Json(relay.limits_control().show(&cfg).await).into_response()
}

async fn limits_reset(
    State(relay): State<Arc<Relay>>,
    Path(server): Path<String>,
) -> Response<Body> {
    let cfg = relay.config();
    match relay.limits_control().reset(&cfg, &server).await {
        Ok(()) => {
            tracing::info!(target: "audit", who = WHO, what = "limits reset", server = %server, "audit");
            // Queued messages may be waiting for this budget (they wait
            // until the window frees): with it back, they are due now.
            if let Some(q) = relay.queue_control()
                && let Ok(n) = q.retry_all().await
                && n > 0
            {
                tracing::info!(server = %server, messages = n, "send limit reset: queued messages are due now");
            }
            ok()
        }
        Err(e) => control_error(e),
    }
}

/// `?tenant=T` of `GET blacklist`.
#[derive(Debug, Deserialize)]
pub struct TenantQuery {
    /// Only this tenant's list.
    pub tenant: Option<String>,
}

async fn blacklist_list(
    State(relay): State<Arc<Relay>>,
    Query(q): Query<TenantQuery>,
) -> Response<Body> {
    let cfg = relay.config();
    if let Some(t) = &q.tenant
        && !cfg.tenants.contains_key(t)
        && !relay
            .blacklist
            .snapshot()
            .entries
            .iter()
            .any(|e| e.scope.tenant() == Some(t))
    {
        return error(StatusCode::NOT_FOUND, format!("no tenant named {t:?}"));
    }
    let rows = crate::blacklist::list(&cfg, &relay.blacklist.snapshot(), q.tenant.as_deref());
    Json(rows).into_response()
}

/// `POST blacklist`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistAdd {
    /// An address or `@domain`.
    pub entry: String,
    /// The tenant's list; absent: the system list.
    pub tenant: Option<String>,
    /// `drop` or `reject`; absent: the list's action.
    pub action: Option<BlacklistAction>,
}

/// `DELETE blacklist?entry=E&tenant=T`.
#[derive(Debug, Deserialize)]
pub struct BlacklistRemove {
    /// An address or `@domain`.
    pub entry: String,
    /// The tenant's list; absent: the system list.
    pub tenant: Option<String>,
}

fn change_error(e: ChangeError) -> Response<Body> {
    let status = match &e {
        ChangeError::BadEntry(_) => StatusCode::BAD_REQUEST,
        ChangeError::UnknownTenant(_) | ChangeError::NotFound { .. } => StatusCode::NOT_FOUND,
        ChangeError::FileEntry { .. } | ChangeError::AlreadyInFile { .. } => StatusCode::CONFLICT,
        ChangeError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn blacklist_add(
    State(relay): State<Arc<Relay>>,
    Json(req): Json<BlacklistAdd>,
) -> Response<Body> {
    let cfg = relay.config();
    let scope = Scope::of(req.tenant.as_deref());
    match relay
        .blacklist
        .add(&cfg, &req.entry, scope, req.action, WHO)
        .await
    {
        Ok(()) => ok(),
        Err(e) => change_error(e),
    }
}

async fn blacklist_remove(
    State(relay): State<Arc<Relay>>,
    Query(req): Query<BlacklistRemove>,
) -> Response<Body> {
    let cfg = relay.config();
    let scope = Scope::of(req.tenant.as_deref());
    match relay.blacklist.remove(&cfg, &req.entry, scope, WHO).await {
        Ok(()) => ok(),
        Err(e) => change_error(e),
    }
}

async fn test_mode(State(relay): State<Arc<Relay>>) -> Response<Body> {
    Json(test_mode_rows(&relay.config())).into_response()
}

async fn deliveries(State(relay): State<Arc<Relay>>) -> Response<Body> {
    Json(relay.deliveries.newest_first()).into_response()
}

/// `POST reload` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reloaded {
    /// Always true.
    pub ok: bool,
    /// The new config's hash.
    pub hash: String,
}

async fn reload(State(relay): State<Arc<Relay>>) -> Response<Body> {
    tracing::info!(target: "audit", who = WHO, what = "reload", "audit");
    let probe = relay
        .probe_on_reload
        .load(std::sync::atomic::Ordering::SeqCst);
    match relay.reload_reporting(probe, WHO).await {
        Ok(hash) => Json(Reloaded { ok: true, hash }).into_response(),
        Err(why) => error(StatusCode::CONFLICT, format!("reload refused: {why}")),
    }
}

fn no_queue() -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "queue not enabled (delivery = \"direct\")",
    )
}

async fn queue_list(State(relay): State<Arc<Relay>>) -> Response<Body> {
    let Some(q) = relay.queue_control() else {
        return no_queue();
    };
    match q.list().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_error(e),
    }
}

async fn queue_show(State(relay): State<Arc<Relay>>, Path(id): Path<String>) -> Response<Body> {
    let Some(q) = relay.queue_control() else {
        return no_queue();
    };
    match q.show(&id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_error(e),
    }
}

async fn queue_retry_all(State(relay): State<Arc<Relay>>) -> Response<Body> {
    let Some(q) = relay.queue_control() else {
        return no_queue();
    };
    match q.retry_all().await {
        Ok(n) => {
            tracing::info!(target: "audit", who = WHO, what = "queue retry all", messages = n, "audit");
            ok()
        }
        Err(e) => control_error(e),
    }
}

/// An action on one queued message.
#[derive(Debug, Clone, Copy)]
enum QueueOp {
    Retry,
    Delete,
    Hold,
    Release,
}

impl QueueOp {
    /// The audit line's `what`.
    fn what(self) -> &'static str {
        match self {
            QueueOp::Retry => "queue retry",
            QueueOp::Delete => "queue delete",
            QueueOp::Hold => "queue hold",
            QueueOp::Release => "queue release",
        }
    }
}

/// One queue action on one message, with its audit line.
async fn queue_action(relay: &Relay, op: QueueOp, id: &str) -> Response<Body> {
    let Some(q) = relay.queue_control() else {
        return no_queue();
    };
    let r = match op {
        QueueOp::Retry => q.retry(id).await,
        QueueOp::Delete => q.delete(id).await,
        QueueOp::Hold => q.hold(id).await,
        QueueOp::Release => q.release(id).await,
    };
    match r {
        Ok(()) => {
            tracing::info!(target: "audit", who = WHO, what = op.what(), id, "audit");
            ok()
        }
        Err(e) => control_error(e),
    }
}

async fn queue_retry(State(relay): State<Arc<Relay>>, Path(id): Path<String>) -> Response<Body> {
    queue_action(&relay, QueueOp::Retry, &id).await
}

async fn queue_delete(State(relay): State<Arc<Relay>>, Path(id): Path<String>) -> Response<Body> {
    queue_action(&relay, QueueOp::Delete, &id).await
}

async fn queue_hold(State(relay): State<Arc<Relay>>, Path(id): Path<String>) -> Response<Body> {
    queue_action(&relay, QueueOp::Hold, &id).await
}

async fn queue_release(State(relay): State<Arc<Relay>>, Path(id): Path<String>) -> Response<Body> {
    queue_action(&relay, QueueOp::Release, &id).await
}
