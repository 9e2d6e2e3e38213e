//! Delivery of one message along its server chain (PRODUCT §2 steps 4–5,
//! §3.6): the rewrite is computed for each hop's server, then the hop is
//! tried; temporary and connection failures move on to the next server,
//! permanent recipient refusals do not.
//!
//! The capture outbox lives in `capture`; SMTP upstreams in `upstream`.

pub mod capture;
pub mod dsn;

use crate::config::{Server, ServerKind};
use crate::message::Message;
use crate::metrics::{FailoverLabels, ServerLabel};
use crate::policy::Plan;
use crate::rewrite;
use crate::session::state::Envelope;
use serde::Serialize;
use std::time::Instant;

/// Why a hop failed and the next server was tried.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// The server that failed.
    pub server: String,
    /// Failure class: `connection`, `temporary`, `tls`, `auth`, `capability`, `local`.
    pub class: &'static str,
    /// What happened (sanitised; no secrets).
    pub reason: String,
    /// Recipients this server refused permanently before the hop failed
    /// (e.g. a 421 after some 550s): their refusal stands, and only the
    /// other recipients go to the next server.
    #[serde(skip)]
    pub refused: Vec<RefusedRecipient>,
}

/// A recipient an upstream refused permanently although others were accepted.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedRecipient {
    /// The recipient.
    pub rcpt: String,
    /// The upstream's code.
    pub code: u16,
    /// The upstream's enhanced status code, if it gave one.
    pub enhanced: Option<(u8, u16, u16)>,
    /// The upstream's text.
    pub reason: String,
}

/// The result of a delivery attempt over the whole chain.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Accepted by `server` (for at least one recipient).
    Delivered {
        /// The server that accepted it.
        server: String,
        /// Servers tried before it.
        failovers: Vec<Failover>,
        /// Recipients the accepting server refused permanently.
        refused: Vec<RefusedRecipient>,
    },
    /// Policy dropped every recipient: nothing to send, the client gets 250.
    NothingToDeliver,
    /// Every recipient was refused permanently by `server`.
    Refused {
        /// The refusing server.
        server: String,
        /// Its code.
        code: u16,
        /// Its enhanced status code.
        enhanced: Option<(u8, u16, u16)>,
        /// Its text.
        reason: String,
        /// Servers tried before it.
        failovers: Vec<Failover>,
    },
    /// Every server failed temporarily.
    Deferred {
        /// Each server's failure, in order.
        failovers: Vec<Failover>,
    },
    /// The chain was empty (no server may take the message now).
    NoServer,
}

/// The result of one hop.
#[derive(Debug)]
pub enum HopResult {
    /// Accepted for some recipients; `refused` were refused permanently.
    Accepted {
        /// Permanently refused recipients.
        refused: Vec<RefusedRecipient>,
    },
    /// Refused permanently for every recipient (or the message as a whole).
    Permanent {
        /// Code.
        code: u16,
        /// Enhanced status code.
        enhanced: Option<(u8, u16, u16)>,
        /// Text.
        reason: String,
    },
    /// Try the next server.
    Failover(Failover),
}

/// What the delivery code needs to know of the message besides its bytes.
pub struct Context<'a> {
    /// Message id.
    pub id: &'a str,
    /// The session's envelope.
    pub envelope: &'a Envelope,
    /// The trace header (`Received:`) to put on top.
    pub received: &'a [u8],
    /// When the message was accepted (seconds since the epoch).
    pub received_at: i64,
    /// `system.hostname` (for a Message-ID we add).
    pub hostname: &'a str,
    /// SMTP connection pools.
    pub upstreams: &'a crate::upstream::Upstreams,
    /// Where failovers and latencies are counted.
    pub metrics: &'a crate::metrics::Metrics,
    /// Server health: servers marked down are skipped.
    pub health: &'a crate::health::Health,
    /// When a server is marked down.
    pub health_settings: &'a crate::config::HealthSettings,
}

/// Whether this hop needs SMTPUTF8: for non-ASCII envelope addresses,
/// and for non-ASCII header text when the client declared SMTPUTF8. Raw
/// 8-bit header bytes from a client that did not declare it (legacy
/// Latin-1 subjects) are passed through, as Postfix does: requiring
/// SMTPUTF8 for them would defer such mail for ever on servers without it.
fn needs_smtputf8(declared: bool, header: &[u8], mail_from: &str, rcpts: &[String]) -> bool {
    !mail_from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()) || (declared && !header.is_ascii())
}

/// A permanent refusal when every server failed only for lack of a
/// capability the message needs: no server can ever take it, so asking the
/// client to retry (451) would never end.
fn capability_refusal(failovers: &[Failover]) -> Option<Outcome> {
    let last = failovers.last()?;
    if !failovers.iter().all(|f| f.class == "capability") {
        return None;
    }
    let (code, enhanced) = if last.reason.contains("SIZE") {
        (552, (5, 3, 4))
    } else if last.reason.contains("SMTPUTF8") {
        (554, (5, 6, 7))
    } else {
        (554, (5, 6, 3))
    };
    Some(Outcome::Refused {
        server: last.server.clone(),
        code,
        enhanced: Some(enhanced),
        reason: format!("no server can take this message: {}", last.reason),
        failovers: failovers.to_vec(),
    })
}

/// Delivers `msg` along `plan.chain`.
pub async fn deliver(plan: &Plan<'_>, msg: &Message, cx: &Context<'_>) -> Outcome {
    if plan.deliver_to.is_empty() {
        return Outcome::NothingToDeliver;
    }
    if plan.chain.is_empty() {
        return Outcome::NoServer;
    }
    let mut failovers = Vec::new();
    let mut skipped = 0;
    // Recipients still to deliver, and those refused on a hop that failed.
    let mut rcpts = plan.deliver_to.clone();
    let mut refused_before: Vec<RefusedRecipient> = Vec::new();
    for (i, server) in plan.chain.iter().enumerate() {
        if cx.health.is_down(&server.name, Instant::now()) {
            tracing::debug!(id = cx.id, server = %server.name, "skipping a server marked down");
            skipped += 1;
            continue;
        }
        let started = Instant::now();
        let result = hop(plan, &rcpts, server, msg, cx).await;
        let elapsed = started.elapsed();
        tracing::debug!(id = cx.id, server = %server.name, elapsed_ms = elapsed.as_millis() as u64, ?result, "hop");
        match result {
            HopResult::Accepted { mut refused } => {
                refused.splice(0..0, refused_before);
                cx.health.success(&server.name);
                cx.metrics
                    .upstream_latency
                    .get_or_create(&ServerLabel {
                        server: server.name.clone(),
                    })
                    .observe(elapsed.as_secs_f64());
                return Outcome::Delivered {
                    server: server.name.clone(),
                    failovers,
                    refused,
                };
            }
            HopResult::Permanent {
                code,
                enhanced,
                reason,
            } => {
                cx.health.success(&server.name);
                return Outcome::Refused {
                    server: server.name.clone(),
                    code,
                    enhanced,
                    reason,
                    failovers,
                };
            }
            HopResult::Failover(f) => {
                tracing::warn!(id = cx.id, server = %f.server, class = f.class, reason = %f.reason, "hop failed, trying the next server");
                let to_server = plan
                    .chain
                    .get(i + 1)
                    .map_or_else(|| "none".to_owned(), |s| s.name.clone());
                cx.metrics
                    .failovers
                    .get_or_create(&FailoverLabels {
                        from_server: f.server.clone(),
                        to_server,
                        class: f.class,
                    })
                    .inc();
                let (h, now) = (cx.health_settings, Instant::now());
                if cx
                    .health
                    .failure(&server.name, f.class, now, h.failures, h.cooldown)
                {
                    tracing::warn!(server = %server.name, cooldown_s = h.cooldown.as_secs(), "server marked down after repeated failures");
                }
                rcpts.retain(|r| !f.refused.iter().any(|x| &x.rcpt == r));
                refused_before.extend(f.refused.iter().cloned());
                failovers.push(f);
                if let (true, Some(first)) = (rcpts.is_empty(), refused_before.first()) {
                    return Outcome::Refused {
                        server: server.name.clone(),
                        code: first.code,
                        enhanced: first.enhanced,
                        reason: first.reason.clone(),
                        failovers,
                    };
                }
            }
        }
    }
    if failovers.is_empty() && skipped > 0 {
        return Outcome::NoServer;
    }
    if let Some(refused) = capability_refusal(&failovers) {
        return refused;
    }
    Outcome::Deferred { failovers }
}

async fn hop(
    plan: &Plan<'_>,
    rcpts: &[String],
    server: &Server,
    msg: &Message,
    cx: &Context<'_>,
) -> HopResult {
    let spec = plan.rewrite_spec(server);
    let rw = rewrite::rewrite(&msg.head, &spec);
    let mail_from = rewrite::envelope_sender(&plan.envelope_from, &spec);
    let mut header = Vec::with_capacity(cx.received.len() + rw.header.len());
    header.extend_from_slice(cx.received);
    header.extend_from_slice(&rw.header);
    match &server.kind {
        ServerKind::Capture(c) => {
            let env = capture::CaptureEnvelope {
                id: cx.id,
                received_at: cx.received_at,
                mail_from: &mail_from,
                rcpt_to: rcpts,
                original_mail_from: &plan.envelope_from,
                recipients: &plan.recipients,
                application: &plan.eff.app.name,
                tenant: &plan.eff.tenant.name,
                server: &server.name,
                client_ip: cx.envelope.peer.ip(),
                helo: &cx.envelope.helo,
                auth_user: cx.envelope.auth_user.as_deref(),
                tls: cx.envelope.tls.as_ref().map(|t| t.version.as_str()),
                size: 0,
            };
            match capture::store(&c.path, cx.id, &header, msg, rw.body_offset, &env).await {
                Ok(_) => HopResult::Accepted {
                    refused: Vec::new(),
                },
                Err(e) => HopResult::Failover(Failover {
                    server: server.name.clone(),
                    class: "local",
                    reason: format!("cannot write to {}: {e}", c.path.display()),
                    refused: Vec::new(),
                }),
            }
        }
        ServerKind::Smtp(s) => {
            let out = crate::upstream::Outgoing {
                mail_from: &mail_from,
                rcpt_to: rcpts,
                header: &header,
                message: msg,
                body_offset: rw.body_offset,
                smtputf8: needs_smtputf8(cx.envelope.smtputf8, &header, &mail_from, rcpts),
                body_8bit: cx.envelope.body_8bit,
            };
            cx.upstreams.send(&server.name, s, &out).await
        }
    }
}
