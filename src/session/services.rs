//! What a session may use besides its socket and its pinned config
//! snapshot: the narrow handle the server builds once and lends to every
//! session (`driver::run`). The session sees the delivery engine, the AUTH
//! throttle and password verifier, the metrics, the shutdown signal and
//! the record of applications with traffic — not the listeners, the
//! connection limit, reloads or the admin seams of the relay itself. The
//! dependency stays one-way: the server builds this, the session never
//! names the server.

use super::throttle::AuthThrottle;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The shared services of every session of a running relay.
pub struct Services {
    /// The delivery engine the session hands complete messages to (and
    /// takes message ids from).
    pub engine: Arc<crate::delivery::engine::Engine>,
    /// Every metric.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// AUTH failure throttle per client address.
    pub throttle: AuthThrottle,
    /// Password checks, on a few threads with reused argon2 memory.
    pub verifier: crate::auth::Verifier,
    /// Applications that sent a message since start.
    pub traffic: Traffic,
    shutdown: watch::Receiver<bool>,
}

impl Services {
    /// The services around `engine` and `metrics`; `shutdown` turns
    /// `true` once the relay shuts down.
    pub fn new(
        engine: Arc<crate::delivery::engine::Engine>,
        metrics: Arc<crate::metrics::Metrics>,
        verifier: crate::auth::Verifier,
        shutdown: watch::Receiver<bool>,
    ) -> Services {
        Services {
            engine,
            metrics,
            throttle: AuthThrottle::default(),
            verifier,
            traffic: Traffic::default(),
            shutdown,
        }
    }

    /// Receives `true` once shutdown begins (the value now counts as
    /// seen, as with `watch::Sender::subscribe`).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        let mut r = self.shutdown.clone();
        r.mark_unchanged();
        r
    }
}

/// Applications that had traffic since start: a reload may not drop them
/// by accident (see `config::removal`).
#[derive(Debug, Default)]
pub struct Traffic {
    apps: Mutex<BTreeSet<String>>,
}

impl Traffic {
    /// Records that application `app` sent a message.
    pub fn note(&self, app: &str) {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        if !apps.contains(app) {
            apps.insert(app.to_owned());
        }
    }

    /// Runs `f` on the applications recorded so far.
    pub fn with<R>(&self, f: impl FnOnce(&BTreeSet<String>) -> R) -> R {
        f(&self.apps.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
