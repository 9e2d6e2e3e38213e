//! Delivery of one message along its server chain (PRODUCT §2 steps 4–5,
//! §3.6): the rewrite is computed for each hop's server, then the hop goes
//! to that server's kind; temporary and connection failures move on to the
//! next server, permanent recipient refusals do not.
//!
//! * [`engine`] — the delivery service the session hands a submission to:
//!   direct mode delivers now, queue mode makes it durable first; both use
//!   [`deliver`] here, the one chain walk.
//! * `capture` — the capture outbox kind; SMTP upstreams live in `upstream`.
//! * `dsn` — delivery status notifications.
//!
//! Upstream kinds are dispatched in exactly one place, [`hop`].

pub mod capture;
pub mod dsn;
pub mod engine;

use crate::config::{LimitCounts, Server, ServerKind};
use crate::envelope::Envelope;
use crate::message::Message;
use crate::metrics::{FailoverLabels, ServerLabel};
pub use crate::outcome::{Capability, Failover, FailureClass, HopResult, RefusedRecipient};
use crate::policy::Plan;
use crate::rewrite;
use std::time::Instant;

/// The result of a delivery attempt over the whole chain.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Accepted by `server` (for at least one recipient).
    Delivered {
        /// The server that accepted it.
        server: String,
        /// Servers tried or skipped before it.
        failovers: Vec<Failover>,
        /// Recipients the accepting server refused permanently.
        refused: Vec<RefusedRecipient>,
        /// Recipients it refused temporarily (queue mode): retried.
        deferred: Vec<RefusedRecipient>,
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
        /// Servers tried or skipped before it.
        failovers: Vec<Failover>,
    },
    /// Every server failed temporarily (or was skipped).
    Deferred {
        /// Each server's failure, in order (skipped servers have class
        /// `down` or `limit`).
        failovers: Vec<Failover>,
    },
    /// The chain was empty, or every server in it was skipped (down or
    /// over its send limit): no server may take the message now.
    NoServer {
        /// The skipped servers and why.
        skipped: Vec<Failover>,
    },
}

impl Outcome {
    /// The `outcome` label and log value.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::NothingToDeliver => "dropped",
            Outcome::Refused { .. } => "refused",
            Outcome::Deferred { .. } => "deferred",
            Outcome::NoServer { .. } => "no_server",
        }
    }

    /// Whether a server accepted every recipient tried: the message is
    /// the upstream's responsibility now, nothing is left to retry or to
    /// report.
    pub fn delivered_all(&self) -> bool {
        matches!(self, Outcome::Delivered { refused, deferred, .. } if refused.is_empty() && deferred.is_empty())
    }

    /// Servers tried or skipped on the way.
    pub fn failovers(&self) -> &[Failover] {
        match self {
            Outcome::Delivered { failovers, .. }
            | Outcome::Refused { failovers, .. }
            | Outcome::Deferred { failovers } => failovers,
            Outcome::NoServer { skipped } => skipped,
            Outcome::NothingToDeliver => &[],
        }
    }

    /// The server that accepted or refused the message.
    pub fn server(&self) -> Option<&str> {
        match self {
            Outcome::Delivered { server, .. } | Outcome::Refused { server, .. } => Some(server),
            _ => None,
        }
    }

    /// How long the servers asked not to be tried again (the longest
    /// `Retry-After` any of them sent). Send-limit waits are not in it:
    /// another server of the chain may take the message sooner.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.failovers()
            .iter()
            .filter(|f| f.class != FailureClass::Limit)
            .filter_map(|f| f.retry_after)
            .max()
    }

    /// When no server was tried because every one is over its send limit
    /// (or down), the time until the earliest budget returns: the queue
    /// tries again exactly then (no busy retry), and direct mode tells the
    /// client. `None` when a server was tried, or no budget ever returns.
    pub fn limit_wait(&self) -> Option<std::time::Duration> {
        let Outcome::NoServer { skipped } = self else {
            return None;
        };
        skipped
            .iter()
            .filter(|f| f.class == FailureClass::Limit)
            .filter_map(|f| f.retry_after)
            .min()
    }
}

/// What one attempt needs besides the plan and the message.
pub struct Context<'a> {
    /// Message id (also the queue id).
    pub id: &'a str,
    /// The session's envelope.
    pub envelope: &'a Envelope,
    /// The trace header (`Received:`) to put on top.
    pub received: &'a [u8],
    /// When the message was accepted (seconds since the epoch).
    pub received_at: i64,
    /// `system.hostname` (for a Message-ID we add).
    pub hostname: &'a str,
    /// The recipients to deliver to in this attempt: the plan's, less those
    /// already delivered or failed (queue retries).
    pub rcpts: &'a [String],
    /// A 4xx for some recipients defers only those (queue mode).
    pub partial: bool,
    /// SMTP connection pools.
    pub upstreams: &'a crate::upstream::Upstreams,
    /// Where failovers and latencies are counted.
    pub metrics: &'a crate::metrics::Metrics,
    /// Server health: servers marked down are skipped.
    pub health: &'a crate::health::Health,
    /// When a server is marked down.
    pub health_settings: &'a crate::config::HealthSettings,
    /// Send-limit budgets and connection slots.
    pub limiter: &'a crate::limits::Limiter,
    /// `[cluster]`: Redis shares the send-limit counters.
    pub cluster: Option<&'a crate::config::Cluster>,
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
    let FailureClass::Capability(need) = last.class else {
        return None;
    };
    if !failovers
        .iter()
        .all(|f| matches!(f.class, FailureClass::Capability(_)))
    {
        return None;
    }
    let (code, enhanced) = match need {
        Capability::Size => (552, (5, 3, 4)),
        Capability::Smtputf8 => (554, (5, 6, 7)),
        Capability::EightBitMime => (554, (5, 6, 3)),
    };
    Some(Outcome::Refused {
        server: last.server.clone(),
        code,
        enhanced: Some(enhanced),
        reason: format!("no server can take this message: {}", last.reason),
        failovers: failovers.to_vec(),
    })
}

/// Delivers `msg` along `plan.chain` to `cx.rcpts`.
pub async fn deliver(plan: &Plan, msg: &Message, cx: &Context<'_>) -> Outcome {
    if cx.rcpts.is_empty() {
        return Outcome::NothingToDeliver;
    }
    let mut failovers = Vec::new();
    // Recipients still to deliver, and those refused on a hop that failed.
    let mut rcpts = cx.rcpts.to_vec();
    let mut refused_before: Vec<RefusedRecipient> = Vec::new();
    let chain = plan.chain();
    for (i, server) in chain.iter().enumerate() {
        if cx.health.is_down(&server.name, Instant::now()) {
            tracing::debug!(id = cx.id, server = %server.name, "skipping a server marked down");
            failovers.push(Failover::new(
                &server.name,
                FailureClass::Down,
                "marked down after repeated failures",
            ));
            continue;
        }
        // Budget first (PRODUCT §3.7): reserved before sending, settled
        // on the upstream's answer, released if the hop fails.
        let units = match server.limit_counts {
            LimitCounts::Messages => 1,
            LimitCounts::Recipients => rcpts.len() as u64,
        };
        let mut reservation = match server.limit {
            None => None,
            Some(limit) => {
                match cx
                    .limiter
                    .reserve(
                        &server.name,
                        limit,
                        units,
                        crate::util::unix_now(),
                        cx.cluster,
                    )
                    .await
                {
                    Ok(r) => Some(r),
                    Err(denied) => {
                        let mut f = Failover::new(
                            &server.name,
                            FailureClass::Limit,
                            denied.reason(&limit, server.limit_counts),
                        );
                        f.retry_after = denied.returns_in;
                        tracing::info!(id = cx.id, server = %server.name, reason = %f.reason, "skipping a server over its send limit");
                        failovers.push(f);
                        continue;
                    }
                }
            }
        };
        let wait = match &server.kind {
            ServerKind::Smtp(s) => s.connect_timeout,
            _ => std::time::Duration::from_secs(10),
        };
        let _slot = match cx
            .limiter
            .slot(&server.name, server.max_connections, wait, cx.cluster)
            .await
        {
            Ok(p) => p,
            Err(denied) => {
                let f = Failover::new(
                    &server.name,
                    FailureClass::Temporary,
                    denied.reason(server.max_connections.unwrap_or_default()),
                );
                tracing::warn!(id = cx.id, server = %f.server, reason = %f.reason, "hop failed, trying the next server");
                failovers.push(f);
                continue;
            }
        };
        // A server that refused some recipients and then cut the
        // connection (its error limit) passes the rest to the next server;
        // the last server of the chain is asked again, a few times, for
        // them: each round removes the refused ones, so this ends instead
        // of the client retrying for ever against the same error.
        let mut rounds = 0;
        loop {
            let started = Instant::now();
            let result = hop(plan, &rcpts, server, msg, cx).await;
            let elapsed = started.elapsed();
            if let HopResult::Accepted { refused, deferred } = &result
                && let Some(r) = reservation.take()
            {
                r.commit(match server.limit_counts {
                    LimitCounts::Messages => 1,
                    LimitCounts::Recipients => {
                        rcpts.len().saturating_sub(refused.len() + deferred.len()) as u64
                    }
                });
            }
            tracing::debug!(id = cx.id, server = %server.name, elapsed_ms = elapsed.as_millis() as u64, ?result, "hop");
            match result {
                HopResult::Accepted {
                    mut refused,
                    deferred,
                } => {
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
                        deferred,
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
                HopResult::Failover(mut f) => {
                    // A server that refused recipients and then gave up (a 421
                    // after too many unknown recipients) reacted to this
                    // message: that says nothing about the server's health.
                    f.message_caused |= !f.refused.is_empty();
                    tracing::warn!(id = cx.id, server = %f.server, class = %f.class, reason = %f.reason, "hop failed, trying the next server");
                    let to_server = chain
                        .get(i + 1)
                        .map_or_else(|| "none".to_owned(), |s| s.name.clone());
                    cx.metrics
                        .failovers
                        .get_or_create(&FailoverLabels {
                            from_server: f.server.clone(),
                            to_server,
                            class: f.class.as_str(),
                        })
                        .inc();
                    cx.health.note_error(&server.name, &f.reason);
                    let (h, now) = (cx.health_settings, Instant::now());
                    if f.counts_for_health() {
                        // Logs the transition when this marks it down.
                        cx.health.failure(&server.name, now, h.failures, h.cooldown);
                    }
                    rcpts.retain(|r| !f.refused.iter().any(|x| &x.rcpt == r));
                    refused_before.extend(f.refused.iter().cloned());
                    let again = f.message_caused
                        && !f.refused.is_empty()
                        && rounds < 3
                        && i + 1 == chain.len();
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
                    if again {
                        rounds += 1;
                        continue;
                    }
                    break;
                }
            }
        }
    }
    if let Some(never) = crate::limits::beyond_every_limit(&chain, &failovers, rcpts.len()) {
        return never;
    }
    if failovers
        .iter()
        .all(|f| matches!(f.class, FailureClass::Down | FailureClass::Limit))
    {
        return Outcome::NoServer { skipped: failovers };
    }
    if let Some(refused) = capability_refusal(&failovers) {
        return refused;
    }
    Outcome::Deferred { failovers }
}

/// One hop to `rcpts`: the rewrite for this server, then the one dispatch
/// over the upstream kinds.
async fn hop(
    plan: &Plan,
    rcpts: &[String],
    server: &Server,
    msg: &Message,
    cx: &Context<'_>,
) -> HopResult {
    let mut spec = plan.rewrite_spec(server);
    // RFC 6409 §8: a submission without Date or Message-ID gets them; the
    // same values on every hop, since they derive from the message id and
    // its arrival time.
    spec.add_date = Some(crate::util::rfc5322_date(cx.received_at));
    spec.add_message_id = Some(format!("<{}@{}>", cx.id, cx.hostname));
    let rw = rewrite::rewrite(&msg.head, &spec);
    let mail_from = rewrite::envelope_sender(&plan.envelope_from, &spec);
    let mut header = Vec::with_capacity(cx.received.len() + rw.header.len());
    header.extend_from_slice(cx.received);
    header.extend_from_slice(&rw.header);
    let header = crate::dkim::sign_hop(plan, header, msg, rw.body_offset).await;
    match &server.kind {
        ServerKind::Capture(c) => {
            let env = capture::CaptureEnvelope {
                id: cx.id,
                received_at: cx.received_at,
                mail_from: &mail_from,
                rcpt_to: rcpts,
                original_mail_from: &plan.envelope_from,
                recipients: &plan.recipients,
                application: &plan.application,
                tenant: plan.tenant(),
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
                    deferred: Vec::new(),
                },
                Err(e) => HopResult::Failover(Failover::new(
                    &server.name,
                    FailureClass::Local,
                    format!("cannot write to {}: {e}", c.path.display()),
                )),
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
                partial: cx.partial,
                // A cap shared through Redis counts open connections.
                keep: !(cx.cluster.is_some() && server.max_connections.is_some()),
            };
            cx.upstreams.send(&server.name, s, &out).await
        }
        ServerKind::Graph(g) => {
            let out = crate::upstream::graph::GraphMessage {
                mail_from: &mail_from,
                rcpt_to: rcpts,
                header: &header,
                message: msg,
                body_offset: rw.body_offset,
            };
            crate::upstream::graph::send(cx.upstreams, &server.name, g, &out).await
        }
    }
}
