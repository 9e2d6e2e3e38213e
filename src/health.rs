//! Per-server health (PRODUCT §3.6): after `failures` consecutive
//! server-level failures (connection, TLS, AUTH) a server is marked down
//! and skipped for `cooldown`; then one delivery may try it again (half
//! open): a success brings it back, a failure marks it down again at once. Message-level answers (4xx for one
//! message, missing capabilities) say nothing about the server and do not
//! count. Pure apart from the shared map; the time is passed in.
//!
//! Health lives in the relay, not in the config snapshot, so it survives
//! reloads.
//!
//! Each transition (marked down, half open, back up) logs one line with
//! target `smarthost::health` and sets the gauge `smarthost_server_up`
//! (1 up or failing, 0 down or half open until a delivery succeeds).

use crate::metrics::ServerLabel;
use dashmap::DashMap;
use prometheus_client::metrics::{family::Family, gauge::Gauge};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
struct State {
    failures: u32,
    down_until: Option<Instant>,
    /// The cool-down ended and the server is being tried again.
    half_open: bool,
    /// The last failure's text (the upstream's reply or the connection
    /// error), for the admin API and status page; kept after a success.
    last_error: Option<String>,
}

/// How a server is doing, as the admin API and status page show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No recent server-level failure.
    Up,
    /// Failed recently, not (yet) marked down.
    Failing,
    /// Marked down: skipped until its cool-down ends.
    Down,
}

impl Status {
    /// `up`, `failing` or `down`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Failing => "failing",
            Status::Down => "down",
        }
    }
}

/// Health of every server, by name.
#[derive(Debug, Default)]
pub struct Health {
    map: DashMap<String, State>,
    /// `smarthost_server_up{server}`.
    up: Family<ServerLabel, Gauge>,
}

impl Health {
    /// Health that sets `up` (the registered `smarthost_server_up`).
    pub fn with_gauge(up: Family<ServerLabel, Gauge>) -> Self {
        Health {
            map: DashMap::new(),
            up,
        }
    }

    /// Creates the gauge of every server in `servers` (at start and after a
    /// reload), from its current health.
    pub fn prime<'a>(&self, servers: impl IntoIterator<Item = &'a str>, now: Instant) {
        for server in servers {
            let down = self
                .map
                .get(server)
                .is_some_and(|s| s.half_open || s.down_until.is_some_and(|u| now < u));
            self.set_up(server, !down);
        }
    }

    fn set_up(&self, server: &str, up: bool) {
        let _ = self
            .up
            .get_or_create(&ServerLabel {
                server: server.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Whether `server` is marked down at `now` (its cool-down not over).
    /// The first call after the cool-down ends turns it half open (logged):
    /// the caller is about to try it again.
    pub fn is_down(&self, server: &str, now: Instant) -> bool {
        let Some(mut s) = self.map.get_mut(server) else {
            return false;
        };
        match s.down_until {
            Some(until) if now < until => true,
            Some(_) => {
                s.down_until = None;
                s.half_open = true;
                drop(s);
                tracing::info!(target: "smarthost::health", server = %server, "server half open: its cool-down is over, trying it again");
                false
            }
            None => false,
        }
    }

    /// Records a server-level failure (the caller checked
    /// [`crate::outcome::Failover::counts_for_health`]); returns true when
    /// this marked the server down.
    pub fn failure(
        &self,
        server: &str,
        now: Instant,
        max_failures: u32,
        cooldown: Duration,
    ) -> bool {
        let mut s = self.map.entry(server.to_owned()).or_default();
        s.failures += 1;
        if s.failures >= max_failures.max(1) {
            s.down_until = now.checked_add(cooldown);
            s.half_open = false;
            // Half open after the cool-down: the next failure marks it
            // down again at once, a success clears it.
            s.failures = max_failures.max(1) - 1;
            let reason = s.last_error.clone().unwrap_or_default();
            drop(s);
            self.set_up(server, false);
            tracing::warn!(target: "smarthost::health", server = %server, cooldown_s = cooldown.as_secs(), reason, "server marked down after repeated failures");
            return true;
        }
        false
    }

    /// Records the text of a failure of `server` (any class), shown as its
    /// last error. Capped at 500 characters.
    pub fn note_error(&self, server: &str, text: &str) {
        let text: String = text.chars().take(500).collect();
        self.map.entry(server.to_owned()).or_default().last_error = Some(text);
    }

    /// The last failure text of `server`, if any.
    pub fn last_error(&self, server: &str) -> Option<String> {
        self.map.get(server).and_then(|s| s.last_error.clone())
    }

    /// How `server` is doing at `now`.
    pub fn status(&self, server: &str, now: Instant) -> Status {
        match self.map.get(server) {
            Some(s) if s.down_until.is_some_and(|u| now < u) => Status::Down,
            Some(s) if s.failures > 0 => Status::Failing,
            _ => Status::Up,
        }
    }

    /// Records a success: the server is healthy again.
    pub fn success(&self, server: &str) {
        if let Some(mut s) = self.map.get_mut(server) {
            let was_down = s.half_open || s.down_until.is_some();
            s.failures = 0;
            s.down_until = None;
            s.half_open = false;
            drop(s);
            if was_down {
                self.set_up(server, true);
                tracing::info!(target: "smarthost::health", server = %server, "server back up");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_consecutive_failures_then_back() {
        let h = Health::default();
        let t0 = Instant::now();
        let cd = Duration::from_secs(30);
        assert!(!h.failure("a", t0, 3, cd));
        assert!(!h.failure("a", t0, 3, cd));
        assert!(!h.is_down("a", t0));
        assert!(h.failure("a", t0, 3, cd));
        assert!(h.is_down("a", t0 + Duration::from_secs(29)));
        assert!(!h.is_down("b", t0));
        // After the cool-down it may be tried again; one more failure
        // marks it down again at once.
        assert!(!h.is_down("a", t0 + cd));
        assert!(h.failure("a", t0 + cd, 3, cd));
        assert!(h.is_down("a", t0 + cd));
        h.success("a");
        assert!(!h.failure("a", t0 + cd, 3, cd));
        // A success in between resets the count.
        h.success("a");
        assert!(!h.failure("a", t0 + cd, 2, cd));
        assert!(h.failure("a", t0 + cd, 2, cd));
    }

    #[test]
    fn gauge_follows_transitions() {
        let up: Family<ServerLabel, Gauge> = Family::default();
        let h = Health::with_gauge(up.clone());
        let g = |s: &str| up.get(&ServerLabel { server: s.into() }).map(|g| g.get());
        let t0 = Instant::now();
        let cd = Duration::from_secs(30);
        h.prime(["a", "b"], t0);
        assert_eq!((g("a"), g("b")), (Some(1), Some(1)));
        assert!(h.failure("a", t0, 1, cd));
        assert_eq!(g("a"), Some(0));
        // Half open: still 0 until a delivery succeeds.
        assert!(!h.is_down("a", t0 + cd));
        assert_eq!(g("a"), Some(0));
        h.prime(["a"], t0 + cd);
        assert_eq!(g("a"), Some(0));
        h.success("a");
        assert_eq!(g("a"), Some(1));
    }

    #[test]
    fn status_and_last_error() {
        let h = Health::default();
        let t0 = Instant::now();
        let cd = Duration::from_secs(30);
        assert_eq!(h.status("a", t0), Status::Up);
        assert_eq!(h.last_error("a"), None);
        h.note_error("a", "connection refused");
        h.failure("a", t0, 2, cd);
        assert_eq!(h.status("a", t0), Status::Failing);
        h.failure("a", t0, 2, cd);
        assert_eq!(h.status("a", t0), Status::Down);
        assert_eq!(h.last_error("a").as_deref(), Some("connection refused"));
        h.success("a");
        assert_eq!(h.status("a", t0), Status::Up);
        assert_eq!(h.last_error("a").as_deref(), Some("connection refused"));
    }
}
