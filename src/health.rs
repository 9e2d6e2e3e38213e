//! Per-server health (PRODUCT §3.6): after `failures` consecutive
//! server-level failures (connection, TLS, AUTH) a server is marked down
//! and skipped for `cooldown`; then one delivery may try it again (half
//! open): a success brings it back, a failure marks it down again at once. Message-level answers (4xx for one
//! message, missing capabilities) say nothing about the server and do not
//! count. Pure apart from the shared map; the time is passed in.
//!
//! Health lives in the relay, not in the config snapshot, so it survives
//! reloads.

use dashmap::DashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
struct State {
    failures: u32,
    down_until: Option<Instant>,
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
}

impl Health {
    /// Whether `server` is marked down at `now` (its cool-down not over).
    pub fn is_down(&self, server: &str, now: Instant) -> bool {
        self.map
            .get(server)
            .and_then(|s| s.down_until)
            .is_some_and(|until| now < until)
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
            // Half open after the cool-down: the next failure marks it
            // down again at once, a success clears it.
            s.failures = max_failures.max(1) - 1;
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
            s.failures = 0;
            s.down_until = None;
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
