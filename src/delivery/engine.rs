//! The delivery engine: the service a session hands a complete submission
//! to (PRODUCT §2 step 5, §3.8). The session gets a verdict (the reply for
//! its client) and knows nothing of chains, upstreams or the queue.
//!
//! * `direct` mode: one attempt along the chain now; the client's reply
//!   reflects it.
//! * `queue` mode: the submission is made durable in the spool first
//!   (`queue`), the client gets `250 Ok: queued as ID`, and the queue's
//!   workers call [`Engine::attempt`] until every recipient is done.
//!
//! Both modes share [`Engine::attempt`] (plan recomputed against the
//! current config, the one chain walk in [`super::deliver`], metrics and
//! the delivery log line) and one DSN path ([`Engine::send_dsn`]: DSNs are
//! always queued, so they survive restarts and are retried).

use super::{Context, Outcome, RefusedRecipient, dsn};
use crate::config::{Config, DeliveryMode};
use crate::envelope::Envelope;
use crate::message::Message;
use crate::metrics::{AppLabels, ListLabels, MessageLabels};
use crate::policy::{self, RcptVerdict};
use crate::reply::{self, Reply};
use crate::util::IdGen;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Why a message could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The spool's disk is full (`452 4.3.1`).
    #[error("the spool is full")]
    NoSpace,
    /// Any other I/O error.
    #[error("spool I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the engine puts messages for background delivery: the durable
/// queue implements it. A trait, so the engine does not depend on the
/// queue module (the queue depends on the engine, not both ways).
pub trait Spool: Send + Sync {
    /// Makes `sub` durable and schedules it; `Ok` only once it is on
    /// stable storage.
    fn enqueue(
        &self,
        sub: Submission,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EnqueueError>> + Send + '_>>;
}

/// A complete message handed over by a session.
pub struct Submission {
    /// What is stored and needed for every attempt.
    pub job: Job,
    /// The content as received.
    pub message: Message,
}

/// What a delivery attempt needs besides the content: owned, so it can be
/// stored in the queue and used again against a newer config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Message id, also the queue id and the log correlation id.
    pub id: String,
    /// When the message was accepted (seconds since the epoch).
    pub received_at: i64,
    /// The session's envelope (recipients with their policy verdicts).
    pub envelope: Envelope,
    /// The `Received:` header to put on top.
    pub received: String,
    /// Set when this message is a DSN we generated.
    pub dsn: Option<DsnOf>,
    /// The id of the session that submitted it (absent for DSNs and
    /// messages queued by older versions): queue attempts log it, so a
    /// delivery line and its session line share an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// What a DSN is about: it is routed like the original message, starting
/// with the server that had it, with a null sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DsnOf {
    /// The original message's id.
    pub original_id: String,
    /// The original envelope sender (routes match on it).
    pub original_mail_from: String,
    /// The server to try first.
    pub first_server: Option<String>,
}

impl Job {
    /// The envelope recipients to deliver to (test-mode redirects applied,
    /// duplicates removed, drops left out): the same on every attempt,
    /// since verdicts were fixed at RCPT time.
    pub fn deliver_to(&self) -> Vec<String> {
        if self.dsn.is_some() {
            return self
                .envelope
                .recipients
                .iter()
                .map(|r| r.original.clone())
                .collect();
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for r in &self.envelope.recipients {
            let target = match &r.verdict {
                RcptVerdict::Deliver => &r.original,
                RcptVerdict::Redirect { to } => to,
                RcptVerdict::Drop { .. } | RcptVerdict::Reject { .. } => continue,
            };
            if seen.insert(crate::config::values::normalize_address(target)) {
                out.push(target.clone());
            }
        }
        out
    }
}

/// The result of one attempt, for the caller to act on.
#[derive(Debug)]
pub struct Attempted {
    /// What happened.
    pub outcome: Outcome,
}

/// The delivery service; one per relay, shared by sessions and the queue.
pub struct Engine {
    config: Arc<ArcSwap<Config>>,
    /// SMTP connection pools.
    pub upstreams: Arc<crate::upstream::Upstreams>,
    /// Every metric.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Server health (survives reloads).
    pub health: Arc<crate::health::Health>,
    ids: IdGen,
    queue: OnceLock<Arc<dyn Spool>>,
    /// The last outcomes, for the admin API and status page.
    pub deliveries: Arc<crate::admin::types::Recent>,
    /// Send-limit budgets and connection slots (survive reloads).
    pub limiter: Arc<crate::limits::Limiter>,
}

impl Engine {
    /// An engine reading the current config from `config`.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        upstreams: Arc<crate::upstream::Upstreams>,
        metrics: Arc<crate::metrics::Metrics>,
        health: Arc<crate::health::Health>,
        deliveries: Arc<crate::admin::types::Recent>,
        limiter: Arc<crate::limits::Limiter>,
    ) -> Engine {
        Engine {
            config,
            upstreams,
            metrics,
            health,
            ids: IdGen::default(),
            queue: OnceLock::new(),
            deliveries,
            limiter,
        }
    }

    /// Adds an outcome to the recent deliveries (final outcomes, and queue
    /// attempts that were deferred).
    pub fn record(&self, cfg: &Config, job: &Job, outcome: &Outcome) {
        self.deliveries.push(crate::admin::types::DeliveryRecord {
            at: crate::util::unix_now(),
            id: job.id.clone(),
            application: job.envelope.application.clone(),
            tenant: cfg
                .applications
                .get(&job.envelope.application)
                .map_or_else(String::new, |a| a.tenant.clone()),
            server: outcome.server().unwrap_or("").to_owned(),
            outcome: outcome.label().to_owned(),
            failed_over: outcome
                .failovers()
                .iter()
                .map(|f| f.server.clone())
                .collect(),
            rcpts: job.deliver_to().len(),
        });
    }

    /// A new message id.
    pub fn next_id(&self) -> String {
        self.ids.next()
    }

    /// The current config snapshot.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Attaches the queue (once, at start).
    pub fn set_queue(&self, q: Arc<dyn Spool>) {
        let _ = self.queue.set(q);
    }

    /// The queue, once attached.
    pub fn queue(&self) -> Option<&Arc<dyn Spool>> {
        self.queue.get()
    }

    /// Takes a complete message from a session whose config is `cfg` and
    /// returns the reply for the client.
    pub async fn submit(&self, cfg: &Arc<Config>, sub: Submission) -> Reply {
        self.count_received(cfg, &sub.job);
        match cfg.system.delivery {
            DeliveryMode::Direct => {
                // Inside the session's span: every line of this delivery
                // carries the session id and the message id.
                let span = tracing::info_span!(target: "smarthost::delivery", "delivery", id = %sub.job.id);
                tracing::Instrument::instrument(self.deliver_direct(cfg, sub), span).await
            }
            DeliveryMode::Queue => {
                let Some(q) = self.queue() else {
                    tracing::error!(id = %sub.job.id, "the queue is not open; message refused for now");
                    return reply::local_error();
                };
                if sub.job.deliver_to().is_empty() {
                    // Every recipient dropped by policy: nothing to store.
                    self.count_outcome(cfg, &sub.job, &Outcome::NothingToDeliver);
                    self.record(cfg, &sub.job, &Outcome::NothingToDeliver);
                    self.log_final(&sub.job, &Outcome::NothingToDeliver, 0, Instant::now());
                    return reply::accepted_nothing_to_deliver(&sub.job.id);
                }
                let id = sub.job.id.clone();
                match q.enqueue(sub).await {
                    Ok(()) => reply::queued(&id),
                    Err(EnqueueError::NoSpace) => {
                        tracing::warn!(id = %id, "spool full: message refused with 452");
                        reply::insufficient_storage()
                    }
                    Err(e) => {
                        tracing::error!(id = %id, error = %e, "cannot queue the message");
                        reply::local_error()
                    }
                }
            }
        }
    }

    fn count_received(&self, cfg: &Config, job: &Job) {
        let Some(app) = cfg.applications.get(&job.envelope.application) else {
            return;
        };
        let m = &self.metrics;
        let labels = AppLabels {
            tenant: app.tenant.clone(),
            application: app.name.clone(),
        };
        m.messages_received.get_or_create(&labels).inc();
        let mut redirected = 0;
        for r in &job.envelope.recipients {
            match &r.verdict {
                RcptVerdict::Drop { list, .. } => {
                    let l = ListLabels {
                        tenant: labels.tenant.clone(),
                        application: labels.application.clone(),
                        list: list.label(),
                    };
                    m.recipients_dropped.get_or_create(&l).inc();
                }
                RcptVerdict::Redirect { .. } => redirected += 1,
                _ => {}
            }
        }
        if redirected > 0 {
            m.test_mode_redirects
                .get_or_create(&labels)
                .inc_by(redirected);
        }
    }

    async fn deliver_direct(&self, cfg: &Arc<Config>, sub: Submission) -> Reply {
        let started = Instant::now();
        let job = &sub.job;
        let rcpts = job.deliver_to();
        let a = self.attempt(cfg, job, &sub.message, &rcpts, false).await;
        self.count_outcome(cfg, job, &a.outcome);
        self.record(cfg, job, &a.outcome);
        self.log_final(job, &a.outcome, sub.message.len(), started);
        if let Outcome::Delivered {
            server, refused, ..
        } = &a.outcome
            && !refused.is_empty()
        {
            self.send_dsn(
                cfg,
                job,
                Some(server),
                refused,
                &sub.message,
                dsn::SUMMARY_PARTIAL,
            )
            .await;
        }
        if let Outcome::Refused {
            failovers, reason, ..
        } = &a.outcome
            && crate::limits::is_beyond_every_limit(failovers)
        {
            return reply::beyond_every_send_limit(reason);
        }
        match &a.outcome {
            Outcome::Delivered { .. } => reply::delivered(&job.id),
            Outcome::NothingToDeliver => reply::accepted_nothing_to_deliver(&job.id),
            Outcome::Refused {
                code,
                enhanced,
                reason,
                ..
            } => reply::upstream_permanent(*code, *enhanced, reason),
            Outcome::Deferred { failovers } => reply::all_servers_failed(
                failovers
                    .iter()
                    .filter(|f| !matches!(f.class, super::FailureClass::Down))
                    .count(),
            ),
            Outcome::NoServer { .. } => match a.outcome.limit_wait() {
                Some(wait) => reply::over_send_limit(wait),
                None => reply::no_server_available(),
            },
        }
    }

    /// One attempt to deliver `msg` to `rcpts` along the chain the current
    /// config gives `job` (recomputed on every attempt: a server removed by
    /// a reload is simply no longer in it). With `partial` (the queue), a
    /// server's 4xx for some recipients defers only those.
    pub async fn attempt(
        &self,
        cfg: &Arc<Config>,
        job: &Job,
        msg: &Message,
        rcpts: &[String],
        partial: bool,
    ) -> Attempted {
        let Some(app) = cfg.applications.get(&job.envelope.application) else {
            // A reload removed the application: its chain is unknown now.
            return Attempted {
                outcome: Outcome::NoServer {
                    skipped: vec![super::Failover::new(
                        "none",
                        super::FailureClass::Local,
                        format!(
                            "application {} is no longer configured",
                            job.envelope.application
                        ),
                    )],
                },
            };
        };
        let eff = policy::resolve(cfg, app);
        let plan = match &job.dsn {
            None => policy::plan(
                cfg,
                &eff,
                &job.envelope.mail_from,
                job.envelope.recipients.clone(),
            ),
            Some(d) => policy::plan(cfg, &eff, &d.original_mail_from, Vec::new()).dsn_plan(
                rcpts.first().cloned().unwrap_or_default(),
                d.first_server.as_deref().unwrap_or(""),
            ),
        };
        if plan.server_names().is_empty() {
            return Attempted {
                outcome: Outcome::NoServer {
                    skipped: Vec::new(),
                },
            };
        }
        let cx = Context {
            id: &job.id,
            envelope: &job.envelope,
            received: job.received.as_bytes(),
            received_at: job.received_at,
            hostname: &cfg.system.hostname,
            rcpts,
            partial,
            upstreams: &self.upstreams,
            metrics: &self.metrics,
            health: &self.health,
            health_settings: &cfg.health,
            limiter: &self.limiter,
            cluster: cfg.cluster.as_ref(),
        };
        Attempted {
            outcome: super::deliver(&plan, msg, &cx).await,
        }
    }

    /// Counts a final outcome in `smarthost_messages_total`.
    pub fn count_outcome(&self, cfg: &Config, job: &Job, outcome: &Outcome) {
        let tenant = cfg
            .applications
            .get(&job.envelope.application)
            .map_or_else(|| "none".to_owned(), |a| a.tenant.clone());
        self.metrics
            .messages
            .get_or_create(&MessageLabels {
                tenant,
                application: job.envelope.application.clone(),
                server: outcome.server().unwrap_or("none").to_owned(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// The one delivery log line of a message's final outcome (direct
    /// mode: its only attempt).
    pub fn log_final(&self, job: &Job, outcome: &Outcome, size: u64, started: Instant) {
        let failovers = outcome.failovers();
        let failed_over: Vec<String> = failovers
            .iter()
            .map(|f| format!("{}({})", f.server, f.class))
            .collect();
        let refused = match outcome {
            Outcome::Delivered { refused, .. } => refused.len(),
            _ => 0,
        };
        let env = &job.envelope;
        let dropped = env
            .recipients
            .iter()
            .filter(|r| matches!(r.verdict, RcptVerdict::Drop { .. }))
            .count();
        let redirected = env
            .recipients
            .iter()
            .filter(|r| matches!(r.verdict, RcptVerdict::Redirect { .. }))
            .count();
        tracing::info!(
            target: "smarthost::delivery",
            id = %job.id,
            application = %env.application,
            server = outcome.server().unwrap_or(""),
            failovers = failovers.len(),
            failed_over = %failed_over.join(","),
            outcome = outcome.label(),
            refused,
            size,
            rcpts = job.deliver_to().len(),
            dropped,
            redirected,
            dsn = job.dsn.is_some(),
            duration_ms = started.elapsed().as_millis() as u64,
            "delivery"
        );
    }

    /// Queues a DSN (RFC 3464) about `refused` recipients of `job`. Never
    /// for a DSN; for a message with a null sender it goes to the system
    /// `bounce_address` (or nowhere when none is set).
    pub async fn send_dsn(
        &self,
        cfg: &Arc<Config>,
        job: &Job,
        first_server: Option<&str>,
        refused: &[RefusedRecipient],
        msg: &Message,
        summary: &str,
    ) {
        if job.dsn.is_some() {
            tracing::info!(id = %job.id, "no DSN about a DSN");
            return;
        }
        let to = match cfg.applications.get(&job.envelope.application) {
            Some(app) => {
                let eff = policy::resolve(cfg, app);
                let plan = policy::plan(cfg, &eff, &job.envelope.mail_from, Vec::new());
                dsn::recipient(&plan)
                    .or_else(|| cfg.system.bounce_address.as_ref().map(ToString::to_string))
            }
            None => cfg.system.bounce_address.as_ref().map(ToString::to_string),
        };
        let Some(to) = to else {
            tracing::info!(id = %job.id, refused = refused.len(), "no DSN: null sender and no bounce_address");
            return;
        };
        let header_end = crate::rewrite::rewrite(&msg.head, &Default::default()).body_offset;
        let remote_host =
            first_server
                .and_then(|s| cfg.servers.get(s))
                .and_then(|s| match &s.kind {
                    crate::config::ServerKind::Smtp(s) => Some(s.host.clone()),
                    _ => None,
                });
        let now = crate::util::unix_now();
        let bytes = dsn::build(&dsn::Report {
            hostname: &cfg.system.hostname,
            id: &job.id,
            arrival: job.received_at,
            now,
            server: first_server.unwrap_or(""),
            remote_host: remote_host.as_deref(),
            refused,
            to: &to,
            original_header: &msg.head[..header_end],
            summary,
        });
        let id = self.next_id();
        let mut envelope = job.envelope.clone();
        envelope.mail_from = String::new();
        envelope.recipients = vec![policy::RecipientPlan {
            original: to.clone(),
            verdict: RcptVerdict::Deliver,
        }];
        envelope.smtputf8 = false;
        envelope.body_8bit = false;
        let dsn_job = Job {
            id: id.clone(),
            received_at: now,
            envelope,
            received: String::new(),
            dsn: Some(DsnOf {
                original_id: job.id.clone(),
                original_mail_from: job.envelope.mail_from.clone(),
                first_server: first_server.map(str::to_owned),
            }),
            session: None,
        };
        let Some(q) = self.queue() else {
            tracing::error!(id = %job.id, "the queue is not open: DSN lost");
            return;
        };
        match q
            .enqueue(Submission {
                job: dsn_job,
                message: Message::in_memory(bytes),
            })
            .await
        {
            Ok(()) => {
                tracing::info!(id = %job.id, dsn_id = %id, to = %to, refused = refused.len(), "DSN queued")
            }
            Err(e) => tracing::error!(id = %job.id, error = %e, "cannot queue a DSN"),
        }
    }
}
