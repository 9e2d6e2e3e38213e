//! The durable queue (PRODUCT §3.8): store and forward with retries.
//!
//! * `spool` — the files, the commit point and group commit.
//! * `backoff` — when to try again (pure).
//! * this module — the in-memory index of queued messages, the scheduler
//!   that hands due messages to workers (no polling: a new message wakes
//!   it at once), the per-recipient bookkeeping after each attempt, DSNs,
//!   expiry, and the operator's controls (list, retry, delete, hold,
//!   release).
//!
//! A fresh message's first attempt starts at once, with a short head
//! start over its commit (`Queue::commit_and_attempt`): the client's 250
//! follows the commit, or a server's acceptance of every recipient,
//! whichever comes first (ARCHITECTURE.md, "The queue").
//!
//! Deliveries go through [`Engine::attempt`], the same chain walk as
//! direct mode. Memory per queued message is its index entry (ids,
//! sender, recipient states); the content stays in the spool except for a
//! bounded number of freshly accepted messages handed straight to a worker.

pub mod backoff;
pub mod control;
pub mod spool;
pub mod wal;

use crate::config::Config;
use crate::delivery::engine::{Engine, Job, Submission};
use crate::delivery::{Outcome, RefusedRecipient, dsn};
use crate::message::Message;
use crate::util::unix_now;
use serde::Serialize;
use spool::{RcptStatus, Spool, State};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, Semaphore, watch};

/// Fresh messages kept in memory for their first attempt, at most.
const HOT_BYTES: u64 = 64 << 20;

/// How long a fresh message's first attempt runs before its commit
/// starts: a server that accepts every recipient within it (a nearby
/// upstream takes well under a millisecond) makes the disk unnecessary;
/// a slower one costs the client at most this much on top of the commit.
const HEAD_START: Duration = Duration::from_millis(2);

/// [`HEAD_START`]; debug builds (the test suite runs the debug binary)
/// read `SMARTHOST_TEST_HEAD_START_MS` instead when it is set, so tests
/// can choose which of attempt and commit comes first.
fn head_start() -> Duration {
    static D: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *D.get_or_init(|| {
        crate::util::test_knob_ms("SMARTHOST_TEST_HEAD_START_MS").unwrap_or(HEAD_START)
    })
}

pub use crate::delivery::engine::EnqueueError;

/// Why an operator's command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// No queued message has this id.
    #[error("no queued message with id {0}")]
    NotFound(String),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug)]
struct Entry {
    sender: String,
    received_at: i64,
    size: u64,
    state: State,
    in_flight: bool,
    deleted: bool,
    /// Whether the spool holds it (false for a message a server accepted
    /// before its commit was through, withdrawn from the committer).
    in_spool: bool,
}

impl Entry {
    /// A freshly committed message, before its first attempt.
    fn new(job: &Job, size: u64, now: i64, in_flight: bool) -> Entry {
        Entry {
            sender: job.envelope.mail_from.clone(),
            received_at: job.received_at,
            size,
            state: State::new(job.deliver_to(), now),
            in_flight,
            deleted: false,
            in_spool: true,
        }
    }
}

/// The error a writer gets when its message cannot be committed.
fn enqueue_error(e: io::Error) -> EnqueueError {
    if spool::is_no_space(&e) {
        EnqueueError::NoSpace
    } else {
        EnqueueError::Io(e)
    }
}

/// The span of one queue attempt. No session around it (a first attempt
/// too runs on a task of its own): it carries the message id, and the
/// submitting session's id, so a delivery line and its session line
/// share an id.
fn delivery_span(id: &str, session: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(target: "smarthost::delivery", parent: None, "delivery", id = %id, session_id = tracing::field::Empty);
    if let Some(s) = session {
        span.record("session_id", tracing::field::display(s));
    }
    span
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Due time (ms) and id of every entry that is neither held nor in flight.
    schedule: BTreeSet<(i64, String)>,
    /// Fresh messages handed straight to their first attempt.
    hot: HashMap<String, (Job, Message)>,
    hot_bytes: u64,
    /// Messages whose last attempt found every server of their chain
    /// skipped (marked down): woken as soon as any delivery succeeds, so
    /// a returning upstream drains the backlog at once instead of at each
    /// message's backoff.
    parked: std::collections::HashSet<String>,
}

impl Inner {
    fn schedule(&mut self, id: &str, at: i64) {
        self.schedule.insert((at, id.to_owned()));
    }

    fn unschedule(&mut self, id: &str) {
        if let Some(e) = self.entries.get(id) {
            self.schedule
                .remove(&(e.state.next_attempt_ms, id.to_owned()));
        }
    }
}

/// One recipient in `queue list` (PRODUCT §4.1).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ListedRecipient {
    /// The envelope recipient.
    pub address: String,
    /// `pending`, `deferred`, `delivered` or `failed`.
    pub state: RcptStatus,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// One message in `queue list` (PRODUCT §4.1).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Listed {
    /// Queue id.
    pub id: String,
    /// Seconds since it was accepted.
    pub age_secs: u64,
    /// Envelope sender as the client gave it (empty: null sender).
    pub sender: String,
    /// Attempts made.
    pub attempts: u32,
    /// Seconds until the next attempt (0: due now or in flight).
    pub next_attempt_secs: u64,
    /// Held by an operator.
    pub held: bool,
    /// Content size in bytes.
    pub size: u64,
    /// Every recipient.
    pub recipients: Vec<ListedRecipient>,
}

/// The queue.
pub struct Queue {
    spool: Arc<Spool>,
    inner: Mutex<Inner>,
    wake: Notify,
    /// Deliveries that may run at once; shutdown waits for all of them.
    workers: Arc<Semaphore>,
    max_workers: u32,
    /// The queue itself, for the tasks it spawns from `enqueue`.
    me: std::sync::Weak<Queue>,
    /// The engine, once [`Queue::run`] is started: until then a message
    /// waits for the scheduler like any other.
    engine: std::sync::OnceLock<std::sync::Weak<Engine>>,
}

impl Queue {
    /// Opens the queue in `{spool}/queue` and recovers every committed
    /// message (blocking: call it on a blocking thread or before serving).
    pub fn open(cfg: &Config) -> io::Result<Arc<Queue>> {
        let spool = Arc::new(Spool::open(&cfg.system.spool.join("queue"))?);
        let found = spool.recover()?;
        let now = now_ms();
        let mut inner = Inner::default();
        let n = found.len();
        for r in found {
            let state = r
                .state
                .unwrap_or_else(|| State::new(r.job.deliver_to(), now));
            let id = r.job.id.clone();
            // A restart is a retry: everything not held is due at once.
            if !state.held {
                inner.schedule(&id, now);
            }
            let mut state = state;
            state.next_attempt_ms = now;
            inner.entries.insert(
                id,
                Entry {
                    sender: r.job.envelope.mail_from.clone(),
                    received_at: r.job.received_at,
                    size: r.size,
                    state,
                    in_flight: false,
                    deleted: false,
                    in_spool: true,
                },
            );
        }
        if n > 0 {
            tracing::info!(target: "smarthost::queue", messages = n, "queue recovered");
        }
        let max = cfg
            .queue
            .concurrency
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Ok(Arc::new_cyclic(|me| Queue {
            spool,
            inner: Mutex::new(inner),
            wake: Notify::new(),
            workers: Arc::new(Semaphore::new(max as usize)),
            max_workers: max,
            me: me.clone(),
            engine: std::sync::OnceLock::new(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of queued messages.
    pub fn depth(&self) -> usize {
        self.lock().entries.len()
    }

    /// Age in seconds of the oldest queued message (0 when empty).
    pub fn oldest_age_secs(&self) -> u64 {
        let now = unix_now();
        self.lock()
            .entries
            .values()
            .map(|e| e.received_at)
            .min()
            .map_or(0, |t| (now - t).max(0) as u64)
    }

    /// Makes `sub` durable (written and synced) and schedules it; `Ok`
    /// once it is on stable storage, or once a server has accepted it for
    /// every recipient (see [`Queue::commit_and_attempt`]).
    pub async fn enqueue_now(&self, sub: Submission) -> Result<(), EnqueueError> {
        if Spool::logs(&sub.message)
            && self.spool.has_room(sub.message.len())
            && let Some(me) = self.me.upgrade()
            && let Some(engine) = self.engine.get().and_then(std::sync::Weak::upgrade)
            && let Ok(permit) = self.workers.clone().try_acquire_owned()
        {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let span = delivery_span(&sub.job.id, sub.job.session.as_deref());
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    me.commit_and_attempt(&engine, sub, tx).await;
                    drop(permit);
                },
                span,
            ));
            return rx.await.unwrap_or_else(|_| {
                Err(EnqueueError::Io(io::Error::other(
                    "the queue's first attempt stopped",
                )))
            });
        }
        let Submission { job, message } = sub;
        let (job, message) = self
            .spool
            .commit(job, message)
            .await
            .map_err(enqueue_error)?;
        let now = now_ms();
        let id = job.id.clone();
        {
            let mut g = self.lock();
            let size = message.len();
            g.entries
                .insert(id.clone(), Entry::new(&job, size, now, false));
            if g.hot_bytes + size <= HOT_BYTES {
                g.hot_bytes += size;
                g.hot.insert(id.clone(), (job, message));
            }
            g.schedule(&id, now);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Hands due messages to workers until `shutdown`; then waits up to
    /// `grace` for deliveries in flight (the rest stays in the spool).
    pub async fn run(
        self: Arc<Self>,
        engine: Arc<Engine>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let _ = self.engine.set(Arc::downgrade(&engine));
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        'outer: loop {
            let permit = tokio::select! {
                p = self.workers.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            };
            loop {
                if *shutdown.borrow() {
                    break 'outer;
                }
                let next = self.take_due(now_ms());
                match next {
                    Ok(id) => {
                        let (q, e) = (self.clone(), engine.clone());
                        // The session id is recorded once the job is loaded.
                        let span = delivery_span(&id, None);
                        tokio::spawn(tracing::Instrument::instrument(
                            async move {
                                q.work(&e, &id).await;
                                drop(permit);
                            },
                            span,
                        ));
                        break;
                    }
                    Err(wait) => {
                        let sleep = wait.map_or(Duration::from_secs(3600), |ms| {
                            Duration::from_millis(ms.max(1) as u64)
                        });
                        tokio::select! {
                            _ = self.wake.notified() => {}
                            _ = tokio::time::sleep(sleep) => {}
                            _ = gauges.tick() => self.update_gauges(&engine),
                            _ = shutdown.changed() => {}
                        }
                    }
                }
            }
        }
        let busy = self.max_workers as usize - self.workers.available_permits();
        if busy > 0 {
            tracing::info!(target: "smarthost::queue", deliveries = busy, "waiting for queue deliveries in flight");
        }
        match tokio::time::timeout(grace, self.workers.acquire_many(self.max_workers)).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(
                target: "smarthost::queue",
                "grace period over; deliveries in flight stay in the spool and are retried at the next start"
            ),
        }
        // Removals still waiting for the committer are done before the
        // process ends (else their messages would be delivered again).
        if let Err(e) = self.spool.sync().await {
            tracing::error!(target: "smarthost::queue", error = %e, "cannot sync the queue at shutdown");
        }
        tracing::info!(target: "smarthost::queue", queued = self.depth(), "queue stopped");
    }

    fn update_gauges(&self, engine: &Engine) {
        let m = &engine.metrics;
        m.queue_depth.set(self.depth() as i64);
        m.queue_oldest_age.set(self.oldest_age_secs() as i64);
    }

    /// The next due message (marked in flight), or how long until one is due.
    fn take_due(&self, now: i64) -> Result<String, Option<i64>> {
        let mut g = self.lock();
        let Some((at, _)) = g.schedule.first().cloned() else {
            return Err(None);
        };
        if at > now {
            return Err(Some(at - now));
        }
        let (_, id) = g.schedule.pop_first().expect("not empty");
        if let Some(e) = g.entries.get_mut(&id) {
            e.in_flight = true;
        }
        Ok(id)
    }

    /// One attempt for message `id`, and the bookkeeping after it.
    async fn work(self: &Arc<Self>, engine: &Engine, id: &str) {
        let hot = {
            let mut g = self.lock();
            let h = g.hot.remove(id);
            if let Some((_, m)) = &h {
                g.hot_bytes -= m.len();
            }
            h
        };
        let loaded = match hot {
            Some(h) => Ok(h),
            None => {
                let (q, i) = (self.clone(), id.to_owned());
                tokio::task::spawn_blocking(move || q.spool.load(&i))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)))
            }
        };
        let (job, msg) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(target: "smarthost::queue", id, error = %e, "cannot read a queued message; retrying later");
                self.reschedule_after_error(id, Duration::from_secs(60));
                return;
            }
        };
        if let Some(s) = &job.session {
            tracing::Span::current().record("session_id", tracing::field::display(s));
        }
        let cfg = engine.config();
        let (rcpts, attempts) = {
            let g = self.lock();
            match g.entries.get(id) {
                Some(e) if !e.deleted => (
                    e.state
                        .rcpts
                        .iter()
                        .filter(|r| r.open())
                        .map(|r| r.address.clone())
                        .collect::<Vec<_>>(),
                    e.state.attempts,
                ),
                _ => (Vec::new(), 0),
            }
        };
        let started = Instant::now();
        let outcome = if rcpts.is_empty() {
            Outcome::NothingToDeliver
        } else {
            engine.attempt(&cfg, &job, &msg, &rcpts, true).await.outcome
        };
        self.after_attempt(
            engine,
            &cfg,
            id,
            (job, msg),
            rcpts,
            attempts,
            outcome,
            started,
        )
        .await;
    }

    /// A fresh message's first attempt, and its commit (on a worker permit
    /// the caller holds). The attempt gets a head start of [`HEAD_START`]:
    /// a server that accepts every recipient within it takes the message
    /// off our hands, and the writer gets its `250` without the disk being
    /// touched. Otherwise the commit starts and the writer is answered by
    /// whichever settles the message first: the commit (durable: `250`),
    /// or the attempt when a server accepted every recipient (`250`; the
    /// message is withdrawn from the committer if that has not answered
    /// yet). When the commit fails first the writer gets the error and the
    /// attempt is dropped (the client will send again).
    async fn commit_and_attempt(
        self: &Arc<Self>,
        engine: &Engine,
        sub: Submission,
        answer: tokio::sync::oneshot::Sender<Result<(), EnqueueError>>,
    ) {
        let Submission { job, message: msg } = sub;
        let cfg = engine.config();
        let rcpts = job.deliver_to();
        let started = Instant::now();
        let mut answer = Some(answer);
        let mut reply = |r: Result<(), EnqueueError>| {
            if let Some(tx) = answer.take() {
                let _ = tx.send(r);
            }
        };
        let outcome = {
            let attempt = engine.attempt(&cfg, &job, &msg, &rcpts, true);
            tokio::pin!(attempt);
            let mut outcome: Option<Outcome> = tokio::select! {
                a = &mut attempt => Some(a.outcome),
                () = tokio::time::sleep(head_start()) => None,
            };
            let in_spool = if outcome.as_ref().is_some_and(Outcome::delivered_all) {
                reply(Ok(()));
                false
            } else {
                let mut commit = match self.spool.start_commit(&job, &msg) {
                    Ok(c) => c,
                    Err(e) => {
                        reply(Err(enqueue_error(e)));
                        return;
                    }
                };
                // `Some`: the committer's answer; `None`: delivered before it.
                let committed = loop {
                    tokio::select! {
                        biased;
                        c = commit.wait() => break Some(c),
                        a = &mut attempt, if outcome.is_none() => {
                            let all = a.outcome.delivered_all();
                            outcome = Some(a.outcome);
                            if all {
                                break None;
                            }
                        }
                    }
                };
                match committed {
                    Some(Err(e)) => {
                        reply(Err(enqueue_error(e)));
                        return;
                    }
                    Some(Ok(())) => true,
                    None => {
                        reply(Ok(()));
                        match commit.withdraw() {
                            None => false,
                            Some(Ok(())) => true,
                            Some(Err(e)) => {
                                tracing::warn!(target: "smarthost::queue", error = %e, "cannot commit a message that a server already accepted: it is delivered, not queued");
                                false
                            }
                        }
                    }
                }
            };
            let mut entry = Entry::new(&job, msg.len(), now_ms(), true);
            entry.in_spool = in_spool;
            self.lock().entries.insert(job.id.clone(), entry);
            // Committed first: answered once it is listed.
            reply(Ok(()));
            match outcome {
                Some(o) => o,
                None => attempt.await.outcome,
            }
        };
        let id = job.id.clone();
        self.after_attempt(engine, &cfg, &id, (job, msg), rcpts, 0, outcome, started)
            .await;
    }

    /// The bookkeeping after an attempt of message `id` (in flight) to
    /// `rcpts`, its attempt number `attempts + 1`: recipient states, DSNs,
    /// the log lines, and removal or the next attempt's schedule.
    #[allow(clippy::too_many_arguments)]
    async fn after_attempt(
        self: &Arc<Self>,
        engine: &Engine,
        cfg: &Arc<Config>,
        id: &str,
        (job, msg): (Job, Message),
        rcpts: Vec<String>,
        attempts: u32,
        outcome: Outcome,
        started: Instant,
    ) {
        if matches!(outcome, Outcome::Delivered { .. }) {
            self.unpark_all();
        }
        let attempt_no = attempts + 1;
        engine.metrics.queue_attempts.inc();
        let now = now_ms();
        let age = Duration::from_secs((unix_now() - job.received_at).max(0) as u64);
        let expired = age >= cfg.queue.max_age.get();
        let mut refused: Vec<RefusedRecipient> = Vec::new();
        let mut expired_rcpts: Vec<RefusedRecipient> = Vec::new();
        let summary = failure_summary(&outcome);
        let done;
        let in_spool;
        let snapshot;
        {
            let mut g = self.lock();
            let Some(e) = g.entries.get_mut(id) else {
                return;
            };
            e.in_flight = false;
            e.state.attempts = attempt_no;
            let tried: std::collections::HashSet<&str> = rcpts.iter().map(String::as_str).collect();
            for r in e.state.rcpts.iter_mut() {
                if !tried.contains(r.address.as_str()) {
                    continue;
                }
                match &outcome {
                    Outcome::Delivered {
                        server,
                        refused: server_refused,
                        deferred,
                        ..
                    } => {
                        if let Some(f) = server_refused.iter().find(|f| f.rcpt == r.address) {
                            r.state = RcptStatus::Failed;
                            r.last_error = Some(format!("{server}: {} {}", f.code, f.reason));
                            refused.push(f.clone());
                        } else if let Some(f) = deferred.iter().find(|f| f.rcpt == r.address) {
                            r.last_error = Some(format!("{server}: {} {}", f.code, f.reason));
                            if expired {
                                r.state = RcptStatus::Failed;
                                expired_rcpts.push(RefusedRecipient {
                                    rcpt: r.address.clone(),
                                    code: 451,
                                    enhanced: Some((4, 4, 7)),
                                    reason: format!(
                                        "message expired after {attempt_no} attempts in {}s; last error: {} {}",
                                        age.as_secs(),
                                        f.code,
                                        f.reason
                                    ),
                                });
                            } else {
                                r.state = RcptStatus::Deferred;
                            }
                        } else {
                            r.state = RcptStatus::Delivered;
                            r.last_error = None;
                        }
                    }
                    Outcome::Refused {
                        code,
                        enhanced,
                        reason,
                        ..
                    } => {
                        r.state = RcptStatus::Failed;
                        r.last_error = Some(format!("{code} {reason}"));
                        refused.push(RefusedRecipient {
                            rcpt: r.address.clone(),
                            code: *code,
                            enhanced: *enhanced,
                            reason: reason.clone(),
                        });
                    }
                    Outcome::NothingToDeliver => {}
                    Outcome::Deferred { .. } | Outcome::NoServer { .. } => {
                        r.last_error = Some(summary.clone());
                        if expired {
                            r.state = RcptStatus::Failed;
                            expired_rcpts.push(RefusedRecipient {
                                rcpt: r.address.clone(),
                                code: 451,
                                enhanced: Some((4, 4, 7)),
                                reason: format!(
                                    "message expired after {} attempts in {}s; last error: {summary}",
                                    attempt_no,
                                    age.as_secs()
                                ),
                            });
                        } else {
                            r.state = RcptStatus::Deferred;
                        }
                    }
                }
            }
            done = e.deleted || e.state.rcpts.iter().all(|r| !r.open());
            in_spool = e.in_spool;
            if !done {
                // Every server over its send limit: try again exactly when
                // the earliest budget returns (PRODUCT §3.7), not on the
                // backoff schedule.
                let delay = outcome.limit_wait().unwrap_or_else(|| {
                    backoff::delay(
                        attempt_no,
                        cfg.queue.min_backoff.get(),
                        cfg.queue.max_backoff.get(),
                        backoff::jitter(),
                    )
                    .max(outcome.retry_after().unwrap_or_default())
                });
                e.state.next_attempt_ms = now + delay.as_millis() as i64;
            }
            snapshot = e.state.clone();
        }
        tracing::info!(
            target: "smarthost::queue",
            id,
            attempt = attempt_no,
            outcome = outcome.label(),
            server = outcome.server().unwrap_or(""),
            failed_over = %outcome
                .failovers()
                .iter()
                .map(|f| format!("{}({})", f.server, f.class))
                .collect::<Vec<_>>()
                .join(","),
            rcpts = rcpts.len(),
            next_attempt_s = (!done).then(|| (snapshot.next_attempt_ms - now).max(0) / 1000),
            duration_ms = started.elapsed().as_millis() as u64,
            "delivery attempt"
        );
        if matches!(outcome, Outcome::Deferred { .. } | Outcome::NoServer { .. }) && !expired {
            for f in outcome.failovers() {
                engine
                    .metrics
                    .queue_deferrals
                    .get_or_create(&crate::metrics::ClassLabel {
                        class: f.class.as_str(),
                    })
                    .inc();
            }
            if outcome.failovers().is_empty() {
                engine
                    .metrics
                    .queue_deferrals
                    .get_or_create(&crate::metrics::ClassLabel { class: "no_server" })
                    .inc();
            }
        }
        if !refused.is_empty() {
            let summary = if matches!(outcome, Outcome::Delivered { .. }) {
                dsn::SUMMARY_PARTIAL
            } else {
                dsn::SUMMARY_FAILED
            };
            engine
                .send_dsn(cfg, &job, outcome.server(), &refused, &msg, summary)
                .await;
        }
        if !expired_rcpts.is_empty() {
            tracing::warn!(target: "smarthost::queue", id, recipients = expired_rcpts.len(), "message expired (max_age)");
            engine
                .send_dsn(cfg, &job, None, &expired_rcpts, &msg, dsn::SUMMARY_FAILED)
                .await;
        }
        if done {
            let final_outcome = final_outcome(&snapshot, outcome);
            engine.count_outcome(cfg, &job, &final_outcome);
            engine.record(cfg, &job, &final_outcome);
            engine.log_final(&job, &final_outcome, msg.len(), started);
            drop(msg);
            if in_spool {
                self.spool.remove_later(id);
            }
            self.lock().entries.remove(id);
            return;
        }
        engine.record(cfg, &job, &outcome);
        drop(msg);
        // When no server was even tried (all skipped as down), nothing a
        // crash could repeat happened: the state stays in memory only, so
        // a backlog waiting for a dead upstream costs no disk writes.
        let tried_any = !matches!(outcome, Outcome::NoServer { .. });
        // Deferred because the servers themselves failed (down, or
        // connection/TLS/AUTH trouble), not because of this message.
        let waits_for_servers = match &outcome {
            Outcome::NoServer { skipped } => !skipped.is_empty(),
            Outcome::Deferred { failovers } => failovers
                .iter()
                .all(|f| f.class == crate::outcome::FailureClass::Down || f.counts_for_health()),
            _ => false,
        };
        let (q, i, st) = (self.clone(), id.to_owned(), snapshot.clone());
        let written = if tried_any {
            tokio::task::spawn_blocking(move || q.spool.write_state(&i, &st).map(|()| true))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)))
        } else {
            Ok(false)
        };
        match written {
            Ok(false) => {}
            // Durable before the next attempt: a delivered recipient is
            // never sent again, even after a crash.
            Ok(true) => {
                if let Err(e) = self.spool.sync().await {
                    tracing::error!(target: "smarthost::queue", id, error = %e, "cannot sync the queue state");
                }
            }
            Err(e) => {
                tracing::error!(target: "smarthost::queue", id, error = %e, "cannot write the queue state")
            }
        }
        let mut g = self.lock();
        if let Some(e) = g.entries.get(id)
            && !e.state.held
        {
            let at = e.state.next_attempt_ms;
            g.schedule(id, at);
            if waits_for_servers {
                g.parked.insert(id.to_owned());
            }
        }
        drop(g);
        self.wake.notify_one();
    }

    /// A delivery succeeded: servers are reachable again, so every message
    /// parked because its whole chain was down is due now.
    fn unpark_all(&self) {
        let now = now_ms();
        let mut g = self.lock();
        if g.parked.is_empty() {
            return;
        }
        let ids: Vec<String> = g.parked.drain().collect();
        let mut n = 0;
        for id in ids {
            let Some(e) = g.entries.get(&id) else {
                continue;
            };
            if e.in_flight || e.state.held {
                continue;
            }
            let old = e.state.next_attempt_ms;
            if old <= now {
                continue;
            }
            g.schedule.remove(&(old, id.clone()));
            if let Some(e) = g.entries.get_mut(&id) {
                e.state.next_attempt_ms = now;
            }
            g.schedule(&id, now);
            n += 1;
        }
        drop(g);
        if n > 0 {
            tracing::info!(target: "smarthost::queue", messages = n, "a server is reachable again: messages that waited for it are due now");
            self.wake.notify_one();
        }
    }

    fn reschedule_after_error(&self, id: &str, after: Duration) {
        let mut g = self.lock();
        let at = now_ms() + after.as_millis() as i64;
        if let Some(e) = g.entries.get_mut(id) {
            e.in_flight = false;
            e.state.next_attempt_ms = at;
            if !e.state.held {
                g.schedule(id, at);
            }
        }
    }

    /// Every queued message, oldest first (PRODUCT §4.1 `queue list`).
    pub fn list(&self) -> Vec<Listed> {
        let (now, now_ms) = (unix_now(), now_ms());
        let g = self.lock();
        let mut out: Vec<Listed> = g
            .entries
            .iter()
            .map(|(id, e)| Listed {
                id: id.clone(),
                age_secs: (now - e.received_at).max(0) as u64,
                sender: e.sender.clone(),
                attempts: e.state.attempts,
                next_attempt_secs: if e.in_flight {
                    0
                } else {
                    ((e.state.next_attempt_ms - now_ms).max(0) as u64).div_ceil(1000)
                },
                held: e.state.held,
                size: e.size,
                recipients: e
                    .state
                    .rcpts
                    .iter()
                    .map(|r| ListedRecipient {
                        address: r.address.clone(),
                        state: r.state,
                        last_error: r.last_error.clone(),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| b.age_secs.cmp(&a.age_secs).then(a.id.cmp(&b.id)));
        out
    }

    /// One queued message.
    pub fn show(&self, id: &str) -> Result<Listed, ControlError> {
        self.list()
            .into_iter()
            .find(|l| l.id == id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))
    }

    /// Makes message `id` due now (also when held: a retry releases it).
    pub fn retry(&self, id: &str) -> Result<(), ControlError> {
        {
            let mut g = self.lock();
            let Some(e) = g.entries.get(id) else {
                return Err(ControlError::NotFound(id.to_owned()));
            };
            let in_flight = e.in_flight;
            g.unschedule(id);
            let now = now_ms();
            let e = g.entries.get_mut(id).expect("checked");
            e.state.held = false;
            e.state.next_attempt_ms = now;
            if !in_flight {
                g.schedule(id, now);
            }
        }
        tracing::info!(target: "smarthost::queue", id, "retry requested by an operator");
        self.wake.notify_one();
        Ok(())
    }

    /// Makes every message due now; returns how many.
    pub fn retry_all(&self) -> usize {
        let ids: Vec<String> = self.lock().entries.keys().cloned().collect();
        let n = ids.iter().filter(|id| self.retry(id).is_ok()).count();
        tracing::info!(target: "smarthost::queue", messages = n, "retry of the whole queue requested by an operator");
        n
    }

    /// Removes message `id` without delivering it (no DSN).
    pub fn delete(self: &Arc<Self>, id: &str) -> Result<(), ControlError> {
        let in_flight = {
            let mut g = self.lock();
            let Some(e) = g.entries.get(id) else {
                return Err(ControlError::NotFound(id.to_owned()));
            };
            let in_flight = e.in_flight;
            g.unschedule(id);
            if in_flight {
                g.entries.get_mut(id).expect("checked").deleted = true;
            } else {
                g.entries.remove(id);
                if let Some((_, m)) = g.hot.remove(id) {
                    g.hot_bytes -= m.len();
                }
            }
            in_flight
        };
        if !in_flight {
            self.spool.remove_later(id);
        }
        tracing::warn!(target: "smarthost::queue", id, "message deleted from the queue by an operator");
        Ok(())
    }

    /// Holds message `id`: no attempt until it is released.
    pub fn hold(&self, id: &str) -> Result<(), ControlError> {
        self.set_held(id, true)
    }

    /// Releases a held message: due now.
    pub fn release(&self, id: &str) -> Result<(), ControlError> {
        self.set_held(id, false)?;
        self.retry(id)
    }

    fn set_held(&self, id: &str, held: bool) -> Result<(), ControlError> {
        let st = {
            let mut g = self.lock();
            if !g.entries.contains_key(id) {
                return Err(ControlError::NotFound(id.to_owned()));
            }
            if held {
                g.unschedule(id);
            }
            let e = g.entries.get_mut(id).expect("checked");
            e.state.held = held;
            e.state.clone()
        };
        if let Err(e) = self.spool.write_state(id, &st) {
            tracing::error!(target: "smarthost::queue", id, error = %e, "cannot write the queue state");
        }
        tracing::info!(target: "smarthost::queue", id, held, "hold changed by an operator");
        Ok(())
    }
}

impl crate::delivery::engine::Spool for Queue {
    fn enqueue(
        &self,
        sub: Submission,
    ) -> Pin<Box<dyn Future<Output = Result<(), EnqueueError>> + Send + '_>> {
        Box::pin(self.enqueue_now(sub))
    }
}

/// What to say about a failed attempt in `last_error`.
fn failure_summary(outcome: &Outcome) -> String {
    let f = outcome.failovers();
    if f.is_empty() {
        return "no server may take the message now".to_owned();
    }
    f.iter()
        .map(|f| format!("{} ({}): {}", f.server, f.class, f.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The outcome to count and log when a message leaves the queue.
fn final_outcome(state: &State, last: Outcome) -> Outcome {
    if matches!(last, Outcome::Delivered { .. } | Outcome::Refused { .. }) {
        return last;
    }
    if state.rcpts.iter().any(|r| r.state == RcptStatus::Delivered) {
        return Outcome::Delivered {
            server: String::new(),
            failovers: last.failovers().to_vec(),
            refused: Vec::new(),
            deferred: Vec::new(),
        };
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool::RcptState;

    #[test]
    fn the_final_outcome_of_an_expired_message_is_not_delivered() {
        let mut st = State::new(vec!["a@b".into()], 0);
        st.rcpts[0].state = RcptStatus::Failed;
        let o = final_outcome(
            &st,
            Outcome::Deferred {
                failovers: Vec::new(),
            },
        );
        assert_eq!(o.label(), "deferred");
        st.rcpts.push(RcptState {
            address: "c@d".into(),
            state: RcptStatus::Delivered,
            last_error: None,
        });
        let o = final_outcome(
            &st,
            Outcome::Deferred {
                failovers: Vec::new(),
            },
        );
        assert_eq!(o.label(), "delivered");
    }
}
