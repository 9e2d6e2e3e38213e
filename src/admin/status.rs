//! The read-only status page, `GET /`: servers with their health and last
//! error, limits with their remaining budget, queue depth and oldest age,
//! test-mode banners, and the recent deliveries; plus a "send test mail"
//! form (`POST /test-mail`) that needs the admin token as a form field.
//!
//! Server-rendered with maud, which HTML-escapes every interpolated value
//! (config names, display names, upstream reply texts); no JavaScript and
//! no external assets (the style sheet is inline).
//!
//! Access: open when the admin address is loopback or `[admin]
//! status_public = true`; otherwise the token is needed as a bearer token
//! or as the password of HTTP Basic auth (401 with a Basic challenge, so a
//! browser asks). Without a token configured, a non-public page on a
//! non-loopback address is refused (403).

use super::api;
use crate::server::Relay;
use axum::Router;
use axum::body::Body;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use std::sync::Arc;

/// The page's routes.
pub fn routes() -> Router<Arc<Relay>> {
    Router::new()
        .route("/", get(page))
        .route("/test-mail", post(test_mail))
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#eee}.up{color:#070}.failing{color:#a60}.down{color:#b00;font-weight:bold}\
.banner{background:#fe8;border:1px solid #cb4;padding:.5em;margin:.5em 0}\
.error{color:#b00}.ok{color:#070}form label{display:block;margin:.3em 0}";

/// Whether the page may be shown to this request; the refusal otherwise.
fn access(relay: &Relay, headers: &HeaderMap) -> Option<Response<Body>> {
    let cfg = relay.config();
    // No [admin]: no admin port, so no request reaches this.
    let admin = cfg.admin.as_ref()?;
    if admin.address.ip().is_loopback() || admin.status_public {
        return None;
    }
    if admin.token.is_none() {
        return Some((
            StatusCode::FORBIDDEN,
            "the status page on a non-loopback address needs [admin] token or status_public = true\n",
        )
            .into_response());
    }
    if super::authorized(relay, headers, true) {
        return None;
    }
    let mut r = (StatusCode::UNAUTHORIZED, "the admin token is needed\n").into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"smarthost\""),
    );
    Some(r)
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

async fn page(State(relay): State<Arc<Relay>>, headers: HeaderMap) -> Response<Body> {
    if let Some(r) = access(&relay, &headers) {
        return r;
    }
    let cfg = relay.config();
    let doc = api::status_doc(&relay).await;
    let limits = relay.limits_control().show(&cfg).await;
    let deliveries = relay.deliveries.newest_first();
    let token_set = cfg.admin.as_ref().is_some_and(|a| a.token.is_some());
    let body = html! {
        h1 { "smarthost on " (cfg.system.hostname) }
        @if !cfg.system.enabled {
            p.banner { "Sending is switched off (" code { "[system] enabled = false" } ")." }
        }
        @for t in &doc.test_mode {
            p.banner.test-mode data-kind=(t.kind) data-name=(t.name) {
                "Test mode: " (t.kind) " " strong { (t.name) }
                @if let Some(d) = &t.display_name { " (" (d) ")" }
                " — mail goes to " (t.redirect_to)
                @if let Some(p) = &t.subject_prefix { ", subject prefix " q { (p) } }
            }
        }
        h2 { "Servers" }
        table id="servers" {
            tr { th { "server" } th { "kind" } th { "owner" } th { "health" } th { "limit remaining" } th { "last error" } }
            @for s in &doc.servers {
                tr.server data-server=(s.name) data-health=(s.health) {
                    td.name { (s.name) }
                    td { (s.kind) }
                    td { (s.tenant.as_deref().unwrap_or("system")) }
                    td class=(format!("health {}", s.health)) { (s.health) }
                    td { @match s.limit_remaining { Some(n) => (n), None => "no limit" } }
                    td.last-error { (s.last_error.as_deref().unwrap_or("")) }
                }
            }
        }
        h2 { "Send limits" }
        @if limits.is_empty() {
            p { "No server has a send limit." }
        } @else {
            table id="limits" {
                tr { th { "server" } th { "limit" } th { "counts" } th { "used" } th { "remaining" } th { "resets in" } }
                @for l in &limits {
                    tr data-server=(l.server) {
                        td { (l.server) } td { (l.limit) } td { (l.counts) }
                        td { (l.used) } td.remaining { (l.remaining) } td { (age(l.resets_in_secs)) }
                    }
                }
            }
        }
        h2 { "Queue" }
        @if doc.queue.enabled {
            p id="queue" {
                "Depth " strong { (doc.queue.depth) }
                @if let Some(a) = doc.queue.oldest_age_secs { ", oldest " (age(a)) }
            }
        } @else {
            p id="queue" { "No queue: " code { "delivery = \"direct\"" } " (the client waits for the upstream)." }
        }
        h2 { "Recent deliveries" }
        @if deliveries.is_empty() {
            p { "None yet." }
        } @else {
            table id="deliveries" {
                tr { th { "time" } th { "id" } th { "application" } th { "server" } th { "outcome" } th { "failed over from" } }
                @for d in deliveries.iter().take(50) {
                    tr.delivery data-outcome=(d.outcome) {
                        td { (crate::util::rfc5322_date(d.at)) }
                        td { (d.id) } td { (d.application) } td { (d.server) }
                        td { (d.outcome) } td { (d.failed_over.join(", ")) }
                    }
                }
            }
        }
        h2 { "Send a test mail" }
        @if token_set {
            form id="test-mail" method="post" action="/test-mail" {
                label { "Server " select name="server" {
                    @for s in cfg.servers.keys() { option value=(s) { (s) } }
                } }
                label { "To " input type="email" name="to" required; }
                label { "From (optional) " input type="email" name="from"; }
                label { "Admin token " input type="password" name="token" required; }
                button type="submit" { "Send" }
            }
        } @else {
            p { "Set " code { "[admin] token" } " to send test mails from here." }
        }
    };
    html_response(StatusCode::OK, layout("smarthost status", body))
}

fn html_response(status: StatusCode, m: Markup) -> Response<Body> {
    let mut r = (status, m.into_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// The test-mail form.
#[derive(Debug, Deserialize)]
pub struct TestMailForm {
    /// The server.
    pub server: String,
    /// The recipient.
    pub to: String,
    /// The sender (empty: the default).
    #[serde(default)]
    pub from: String,
    /// The admin token.
    #[serde(default)]
    pub token: String,
}

async fn test_mail(State(relay): State<Arc<Relay>>, Form(f): Form<TestMailForm>) -> Response<Body> {
    let cfg = relay.config();
    let token = cfg.admin.as_ref().and_then(|a| a.token.as_ref());
    let result = match token {
        None => Err((
            StatusCode::FORBIDDEN,
            "No [admin] token is configured: test mails from the status page are off.".to_owned(),
        )),
        Some(t) if !super::token_matches(t.expose(), &f.token) => {
            Err((StatusCode::UNAUTHORIZED, "Wrong admin token.".to_owned()))
        }
        Some(_) => {
            let from = Some(f.from.trim()).filter(|s| !s.is_empty());
            api::send_test_mail(&relay, &f.server, f.to.trim(), from, "status page")
                .await
                .map_err(|e| (e.status(), e.to_string()))
        }
    };
    let (status, body) = match result {
        Ok(r) => (
            StatusCode::OK,
            html! {
                h1 { "Test mail sent" }
                p.ok id="result" data-result="accepted" { "Accepted by " strong { (r.server) } ": " (r.reply) }
            },
        ),
        Err((status, why)) => (
            status,
            html! {
                h1 { "Test mail not sent" }
                p.error id="result" data-result="failed" { (why) }
            },
        ),
    };
    let body = html! { (body) p { a href="/" { "Back to the status page" } } };
    html_response(status, layout("smarthost test mail", body))
}
