//! The JSON documents of the admin API and the CLI (PRODUCT §4.1), and the
//! seams other services plug into: [`QueueControl`] (the durable queue)
//! and [`LimitsControl`] (send-limit counters). A leaf module: it depends
//! on the config only, so the queue and limits code can implement the
//! traits without importing the HTTP side, and the CLI decodes the same
//! types it prints.

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// A boxed future (the traits below are used as trait objects).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `{ok: true}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

impl Done {
    /// `{ok: true}`.
    pub const OK: Done = Done { ok: true };
}

/// `{error: "..."}`: every refusal of the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for people.
    pub error: String,
}

/// Why a control operation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// No such message or server (HTTP 404, CLI exit 1).
    #[error("{0}")]
    NotFound(String),
    /// Not possible in this state (HTTP 409, CLI exit 1).
    #[error("{0}")]
    Refused(String),
    /// Something failed (HTTP 500).
    #[error("{0}")]
    Failed(String),
}

/// One recipient of a queued message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueRecipient {
    /// The address.
    pub address: String,
    /// `pending`, `deferred`, `delivered` or `failed`.
    pub state: String,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// One message in the queue (`queue list`, `queue show`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueEntry {
    /// The queue id (`250 2.0.0 Ok: queued as ID`).
    pub id: String,
    /// Seconds since it was queued.
    pub age_secs: u64,
    /// The envelope sender.
    pub sender: String,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Seconds until the next attempt (0: due).
    pub next_attempt_secs: u64,
    /// Held: not delivered until released.
    pub held: bool,
    /// The recipients and their states.
    pub recipients: Vec<QueueRecipient>,
}

/// Queue depth for `status` and the status page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct QueueSummary {
    /// Messages in the queue.
    pub depth: u64,
    /// Age of the oldest, in seconds; `null` when empty or no queue.
    pub oldest_age_secs: Option<u64>,
    /// Whether a queue exists (it always does once the relay runs: in
    /// direct mode it carries the DSNs).
    #[serde(default)]
    pub enabled: bool,
}

/// The durable queue's run-time control, implemented by the queue. The
/// relay holds one when `delivery = "queue"`; without it the queue
/// endpoints answer 404.
pub trait QueueControl: Send + Sync {
    /// Every message, oldest first.
    fn list(&self) -> BoxFut<'_, Result<Vec<QueueEntry>, ControlError>>;
    /// One message.
    fn show<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<QueueEntry, ControlError>>;
    /// Deliver now.
    fn retry<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>>;
    /// Deliver every message now; returns how many.
    fn retry_all(&self) -> BoxFut<'_, Result<u64, ControlError>>;
    /// Remove without delivering.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>>;
    /// Keep it from being delivered.
    fn hold<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>>;
    /// Undo `hold`.
    fn release<'a>(&'a self, id: &'a str) -> BoxFut<'a, Result<(), ControlError>>;
    /// Depth and oldest age.
    fn summary(&self) -> BoxFut<'_, Result<QueueSummary, ControlError>>;
}

/// One row of `limits show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LimitRow {
    /// The server.
    pub server: String,
    /// The limit as configured, e.g. `10000/day`.
    pub limit: String,
    /// The sliding window in seconds.
    pub window_secs: u64,
    /// `messages` or `recipients`.
    pub counts: String,
    /// Used in the current window.
    pub used: u64,
    /// Left in the current window.
    pub remaining: u64,
    /// Seconds until the oldest use leaves the window (0: nothing used).
    pub resets_in_secs: u64,
}

/// Send-limit counters as the admin API sees them. The relay starts with
/// [`ConfiguredLimits`]; the limits service replaces it with the real
/// counters.
pub trait LimitsControl: Send + Sync {
    /// Every server with a limit.
    fn show<'a>(&'a self, cfg: &'a Config) -> BoxFut<'a, Vec<LimitRow>>;
    /// Clears the counters of `server`.
    fn reset<'a>(
        &'a self,
        cfg: &'a Config,
        server: &'a str,
    ) -> BoxFut<'a, Result<(), ControlError>>;
}

/// The limits as configured, nothing used: what the API serves when no
/// limits service is plugged in (a relay always plugs in `limits::Limiter`).
#[derive(Debug, Default)]
pub struct ConfiguredLimits;

impl ConfiguredLimits {
    /// The rows for `cfg`, with nothing used.
    pub fn rows(cfg: &Config) -> Vec<LimitRow> {
        cfg.servers
            .values()
            .filter_map(|s| {
                let l = s.limit.as_ref()?;
                Some(LimitRow {
                    server: s.name.clone(),
                    limit: l.to_string(),
                    window_secs: l.window.duration().as_secs(),
                    counts: match s.limit_counts {
                        crate::config::LimitCounts::Messages => "messages",
                        crate::config::LimitCounts::Recipients => "recipients",
                    }
                    .to_owned(),
                    used: 0,
                    remaining: l.count,
                    resets_in_secs: 0,
                })
            })
            .collect()
    }
}

/// Checks that `server` exists and has a limit.
pub fn check_limited(cfg: &Config, server: &str) -> Result<(), ControlError> {
    match cfg.servers.get(server) {
        None => Err(ControlError::NotFound(format!(
            "no server named {server:?}"
        ))),
        Some(s) if s.limit.is_none() => Err(ControlError::Refused(format!(
            "server {server:?} has no send limit"
        ))),
        Some(_) => Ok(()),
    }
}

impl LimitsControl for ConfiguredLimits {
    fn show<'a>(&'a self, cfg: &'a Config) -> BoxFut<'a, Vec<LimitRow>> {
        Box::pin(async move { Self::rows(cfg) })
    }

    fn reset<'a>(
        &'a self,
        cfg: &'a Config,
        server: &'a str,
    ) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move { check_limited(cfg, server) })
    }
}

/// One server in `GET servers` and `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerRow {
    /// Its name.
    pub name: String,
    /// `smtp` or `capture`.
    pub kind: String,
    /// The owner tenant; `null` for a system server.
    pub tenant: Option<String>,
    /// `up`, `failing` or `down`.
    pub health: String,
    /// What its send limit has left; `null` without a limit.
    pub limit_remaining: Option<u64>,
    /// The last failure text (the upstream's reply or the connection error).
    pub last_error: Option<String>,
}

/// A tenant or application in test mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TestModeRow {
    /// `tenant` or `application`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its (effective) display name.
    pub display_name: Option<String>,
    /// Where its mail goes.
    pub redirect_to: String,
    /// The subject prefix.
    pub subject_prefix: Option<String>,
}

/// `status`: `{servers, queue, test_mode}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    /// Every server.
    pub servers: Vec<ServerRow>,
    /// The queue.
    pub queue: QueueSummary,
    /// Tenants and applications in test mode.
    pub test_mode: Vec<TestModeRow>,
}

/// A finished delivery, kept in the recent-deliveries ring.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Seconds since the epoch.
    pub at: i64,
    /// The message id.
    pub id: String,
    /// The application.
    pub application: String,
    /// Its tenant.
    pub tenant: String,
    /// The server that took it (empty: none).
    pub server: String,
    /// `delivered`, `dropped`, `refused`, `deferred`, `no_server`.
    pub outcome: String,
    /// Servers failed over from, in order.
    pub failed_over: Vec<String>,
    /// Envelope recipients delivered to.
    pub rcpts: usize,
}

/// The last [`Recent::CAPACITY`] deliveries, newest last.
#[derive(Debug, Default)]
pub struct Recent {
    ring: std::sync::Mutex<std::collections::VecDeque<DeliveryRecord>>,
}

impl Recent {
    /// How many are kept.
    pub const CAPACITY: usize = 200;

    /// Adds one, dropping the oldest when full.
    pub fn push(&self, r: DeliveryRecord) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == Self::CAPACITY {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// Newest first.
    pub fn newest_first(&self) -> Vec<DeliveryRecord> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest() {
        let r = Recent::default();
        for i in 0..(Recent::CAPACITY + 5) {
            r.push(DeliveryRecord {
                at: i as i64,
                id: i.to_string(),
                application: "a".into(),
                tenant: "t".into(),
                server: "s".into(),
                outcome: "delivered".into(),
                failed_over: vec![],
                rcpts: 1,
            });
        }
        let all = r.newest_first();
        assert_eq!(all.len(), Recent::CAPACITY);
        assert_eq!(all[0].id, (Recent::CAPACITY + 4).to_string());
        assert_eq!(all.last().unwrap().id, "5");
    }
}
