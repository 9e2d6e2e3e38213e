//! Send limits (PRODUCT §3.7): `limit = "N/hour|day|week"` per server on a
//! sliding window, and `max_connections`, the cap on concurrent upstream
//! transactions per server.
//!
//! * [`Counter`] — the pure part: one server's uses in per-minute buckets,
//!   with the current time passed in. A use counts from its minute's end,
//!   so it leaves the window at most 60 s after its exact time: the
//!   approximation errs on the safe side (never over the limit) by at most
//!   one minute, 1/60 of an hour.
//! * [`Limiter`] — the service the chain walk (`delivery::deliver`) asks:
//!   [`Limiter::reserve`] takes budget before a hop (so concurrent
//!   deliveries can never overshoot), the [`Reservation`] is committed with
//!   the units the upstream accepted or released when it did not. Counters
//!   are keyed by server name (a reload that changes the limit keeps the
//!   counts) and persisted in the state store (`{spool}/state.redb`, table
//!   `limit_counters`): committed uses are written behind, off the async
//!   threads, by one flusher that batches every changed server into one
//!   transaction; `run` flushes again at shutdown.
//! * Connection slots — a semaphore per server with `max_connections`;
//!   a hop waits for a slot up to the server's `connect_timeout`. With
//!   `[cluster] redis` a slot is also a lease in Redis ([`slots`]), so the
//!   cap holds across all instances together.
//! * [`shared`] — with `[cluster] redis`, Redis holds the counters every
//!   instance reserves from (atomic Lua scripts); the local counters still
//!   record this instance's own uses, which is what `on_redis_error =
//!   "local"` counts with while Redis cannot be reached.

pub mod shared;
pub mod slots;

use crate::admin::types::{BoxFut, ControlError, LimitRow, LimitsControl, check_limited};
use crate::config::values::Limit;
use crate::config::{Cluster, Config, LimitCounts, OnRedisError};
use crate::delivery::Outcome;
use crate::metrics::{Metrics, ServerLabel};
use crate::outcome::{Failover, FailureClass};
use crate::store::{Store, StoreError, TableDef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Seconds per bucket.
const BUCKET: i64 = 60;

/// Under load, committed uses are written at most this often (a SIGKILL
/// loses at most the uses of this long; a quiet relay writes at once).
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The store table of the counters, keyed by server name.
pub const TABLE: TableDef<Counter> = TableDef::new("limit_counters");

/// One server's committed uses in per-minute buckets, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// `(minute since the epoch, units used in it)`.
    buckets: VecDeque<(i64, u64)>,
}

/// When the uses of minute `m` leave a window of `window` seconds: counted
/// from the minute's end (the safe side).
fn expires(m: i64, window: i64) -> i64 {
    (m + 1) * BUCKET + window
}

impl Counter {
    /// Drops the buckets that left a window of `window` seconds at `now`
    /// (seconds since the epoch).
    pub fn prune(&mut self, now: i64, window: i64) {
        while let Some(&(m, _)) = self.buckets.front() {
            if expires(m, window) > now {
                break;
            }
            self.buckets.pop_front();
        }
    }

    /// Units used in the window at `now`.
    pub fn used(&self, now: i64, window: i64) -> u64 {
        self.buckets
            .iter()
            .filter(|&&(m, _)| expires(m, window) > now)
            .map(|&(_, n)| n)
            .sum()
    }

    /// A counter of `(minute, units)` buckets (any order).
    pub fn from_buckets(b: impl IntoIterator<Item = (i64, u64)>) -> Counter {
        let mut v: Vec<(i64, u64)> = b.into_iter().collect();
        v.sort_unstable();
        Counter {
            buckets: v.into_iter().collect(),
        }
    }

    /// Adds `units` at `now`.
    pub fn add(&mut self, now: i64, units: u64) {
        if units == 0 {
            return;
        }
        let m = now.div_euclid(BUCKET);
        match self.buckets.back_mut() {
            Some((last, n)) if *last == m => *n += units,
            // A clock that stepped back: count in the newest bucket.
            Some((last, n)) if *last > m => *n += units,
            _ => self.buckets.push_back((m, units)),
        }
    }

    /// Seconds until the oldest use still in the window leaves it (0 when
    /// nothing is used).
    pub fn resets_in(&self, now: i64, window: i64) -> u64 {
        self.buckets
            .iter()
            .map(|&(m, _)| expires(m, window) - now)
            .find(|&s| s > 0)
            .unwrap_or(0) as u64
    }

    /// Seconds from `now` until `need` more units fit under `limit`, with
    /// `pending` units reserved but not settled: 0 when they fit now,
    /// `None` when they never can (`need > limit`). Reserved units that
    /// may still be committed are assumed to be (the safe side).
    pub fn returns_in(
        &self,
        now: i64,
        window: i64,
        limit: u64,
        pending: u64,
        need: u64,
    ) -> Option<u64> {
        if need > limit {
            return None;
        }
        let live: Vec<(i64, u64)> = self
            .buckets
            .iter()
            .copied()
            .filter(|&(m, _)| expires(m, window) > now)
            .collect();
        let mut used = live.iter().map(|&(_, n)| n).sum::<u64>() + pending;
        if used + need <= limit {
            return Some(0);
        }
        for (m, n) in live {
            used -= n;
            if used + need <= limit {
                return Some((expires(m, window) - now).max(1) as u64);
            }
        }
        // Only reserved units stand in the way: if they are committed now,
        // they leave with this minute.
        Some((expires(now.div_euclid(BUCKET), window) - now) as u64)
    }
}

/// What a server without budget answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Units used (committed and reserved) in the window.
    pub used: u64,
    /// Units this delivery needs.
    pub need: u64,
    /// When enough budget returns; `None`: never (it needs more than the
    /// whole limit).
    pub returns_in: Option<Duration>,
    /// Redis could not be asked and `on_redis_error = "closed"`.
    pub unavailable: bool,
}

impl Denied {
    /// The failover reason, e.g. `send limit 3/hour used up (3 used); budget
    /// returns in 42 s`.
    pub fn reason(&self, limit: &Limit, counts: LimitCounts) -> String {
        let unit = match counts {
            LimitCounts::Messages => "messages",
            LimitCounts::Recipients => "recipients",
        };
        if self.unavailable {
            return format!(
                "send limit {limit}: the shared counters are unavailable (Redis unreachable, on_redis_error = \"closed\"); treated as used up, asking again in {} s",
                self.returns_in.unwrap_or_default().as_secs()
            );
        }
        match self.returns_in {
            Some(d) => format!(
                "send limit {limit} used up ({} {unit} used, {} needed); budget returns in {} s",
                self.used,
                self.need,
                d.as_secs()
            ),
            None => format!(
                "send limit {limit} is smaller than this message ({} {unit})",
                self.need
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    counter: Counter,
    /// Reserved, not yet settled.
    pending: u64,
}

/// The send-limit and connection-slot service; one per relay, kept across
/// reloads.
pub struct Limiter {
    shared: Arc<Shared>,
    redis: Arc<shared::Shared>,
    slots: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

/// What the flusher shares with the limiter.
#[derive(Debug, Default)]
struct Shared {
    entries: Mutex<HashMap<String, Entry>>,
    /// Servers whose committed uses are not written yet.
    dirty: Mutex<BTreeSet<String>>,
    /// The flusher runs.
    flushing: AtomicBool,
    /// Held while counters are written to the store (batches and resets
    /// land in the order they were taken).
    write_lock: Mutex<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dirty(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_dirty(&self) -> bool {
        !self.dirty().is_empty()
    }

    /// Writes the changed counters in one transaction (blocking); whether
    /// there were any.
    fn write_dirty(&self, store: &Store) -> bool {
        let _w = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let batch = self.take_dirty();
        if batch.is_empty() {
            return false;
        }
        if let Err(e) = store.put_many(&TABLE, &batch) {
            tracing::error!(error = %e, "cannot persist send-limit counters");
        }
        true
    }

    /// The changed counters, now marked clean.
    fn take_dirty(&self) -> Vec<(String, Counter)> {
        let names = std::mem::take(&mut *self.dirty());
        let g = self.lock();
        names
            .into_iter()
            .filter_map(|n| g.get(&n).map(|e| (n, e.counter.clone())))
            .collect()
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

/// Budget taken by [`Limiter::reserve`]; released when dropped without
/// [`Reservation::commit`].
pub struct Reservation<'a> {
    limiter: &'a Limiter,
    server: String,
    limit: Limit,
    units: u64,
    settled: bool,
    /// Reserved in Redis (in this minute's bucket), not locally.
    remote: Option<(redis::aio::ConnectionManager, i64)>,
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("server", &self.server)
            .field("units", &self.units)
            .field("shared", &self.remote.is_some())
            .finish()
    }
}

impl Reservation<'_> {
    /// The upstream accepted `used` units (at most the reserved ones): they
    /// count in the window from now on.
    pub fn commit(mut self, used: u64) {
        self.settle(used.min(self.units));
    }

    fn settle(&mut self, used: u64) {
        self.settled = true;
        match self.remote.take() {
            None => self
                .limiter
                .settle(&self.server, &self.limit, self.units, used),
            Some((mut conn, minute)) => {
                // This instance's own record (for `on_redis_error = "local"`).
                self.limiter.settle(&self.server, &self.limit, 0, used);
                let back = self.units - used;
                if back == 0 {
                    return;
                }
                let Ok(rt) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let (redis, server) = (self.limiter.redis.clone(), self.server.clone());
                rt.spawn(async move {
                    if let Err(e) = redis.give_back(&mut conn, &server, minute, back).await {
                        tracing::warn!(server = %server, units = back, error = %e, "cannot give unused send-limit budget back to Redis");
                    }
                });
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(0);
        }
    }
}

impl Limiter {
    /// A limiter with the counters the store holds (blocking: call at
    /// start).
    pub fn load(store: Arc<Store>, metrics: Arc<Metrics>) -> Result<Limiter, StoreError> {
        let entries = store
            .list(&TABLE)?
            .into_iter()
            .map(|(k, counter)| {
                (
                    k,
                    Entry {
                        counter,
                        pending: 0,
                    },
                )
            })
            .collect();
        Ok(Limiter {
            shared: Arc::new(Shared {
                entries: Mutex::new(entries),
                ..Shared::default()
            }),
            redis: Arc::default(),
            slots: Mutex::default(),
            store,
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.shared.lock()
    }

    fn window(limit: &Limit) -> i64 {
        limit.window.duration().as_secs() as i64
    }

    fn set_remaining(&self, server: &str, limit: &Limit, used: u64) {
        self.metrics
            .limit_remaining
            .get_or_create(&ServerLabel {
                server: server.to_owned(),
            })
            .set(limit.count.saturating_sub(used) as i64);
    }

    /// Takes `units` of `server`'s budget under `limit` at `now` (seconds
    /// since the epoch), or says when enough returns: from the counters in
    /// Redis with `cluster`, else (or when Redis fails and
    /// `on_redis_error = "local"`) from this instance's.
    pub async fn reserve(
        &self,
        server: &str,
        limit: Limit,
        units: u64,
        now: i64,
        cluster: Option<&Cluster>,
    ) -> Result<Reservation<'_>, Denied> {
        let Some(c) = cluster else {
            return self.reserve_local(server, limit, units, now);
        };
        let w = Self::window(&limit);
        let attempt = async {
            let mut conn = self.redis.conn(c.redis.expose()).await?;
            let r = self
                .redis
                .reserve(&mut conn, server, now, w, limit.count, units)
                .await;
            if r.is_err() {
                self.redis.failed().await;
            }
            Ok::<_, shared::SharedError>((conn, r?))
        };
        match attempt.await {
            Ok((conn, shared::Reserved::Ok { minute })) => Ok(Reservation {
                limiter: self,
                server: server.to_owned(),
                limit,
                units,
                settled: false,
                remote: Some((conn, minute)),
            }),
            Ok((_, shared::Reserved::Denied { used, returns_in })) => {
                self.hit(server, &limit, used);
                Err(Denied {
                    used,
                    need: units,
                    returns_in: returns_in.map(Duration::from_secs),
                    unavailable: false,
                })
            }
            Err(e) => {
                self.metrics.limit_redis_unavailable.inc();
                if matches!(e, shared::SharedError::Resting) {
                    tracing::debug!(server, error = %e, "send limits without Redis");
                } else {
                    tracing::warn!(server, error = %e, on_redis_error = ?c.on_redis_error, "send-limit counters in Redis unavailable");
                }
                match c.on_redis_error {
                    OnRedisError::Local => self.reserve_local(server, limit, units, now),
                    OnRedisError::Closed => {
                        self.hit(server, &limit, limit.count);
                        Err(Denied {
                            used: limit.count,
                            need: units,
                            returns_in: Some(Duration::from_secs(60)),
                            unavailable: true,
                        })
                    }
                }
            }
        }
    }

    fn hit(&self, server: &str, limit: &Limit, used: u64) {
        self.metrics
            .limit_hits
            .get_or_create(&ServerLabel {
                server: server.to_owned(),
            })
            .inc();
        self.set_remaining(server, limit, used);
    }

    /// [`Limiter::reserve`] on this instance's counters.
    pub fn reserve_local(
        &self,
        server: &str,
        limit: Limit,
        units: u64,
        now: i64,
    ) -> Result<Reservation<'_>, Denied> {
        let w = Self::window(&limit);
        {
            let mut g = self.lock();
            let e = g.entry(server.to_owned()).or_default();
            e.counter.prune(now, w);
            let used = e.counter.used(now, w) + e.pending;
            if used + units > limit.count {
                let returns_in = e
                    .counter
                    .returns_in(now, w, limit.count, e.pending, units)
                    .map(Duration::from_secs);
                drop(g);
                self.hit(server, &limit, used);
                return Err(Denied {
                    used,
                    need: units,
                    returns_in,
                    unavailable: false,
                });
            }
            e.pending += units;
        }
        Ok(Reservation {
            limiter: self,
            server: server.to_owned(),
            limit,
            units,
            settled: false,
            remote: None,
        })
    }

    fn settle(&self, server: &str, limit: &Limit, reserved: u64, used: u64) {
        let now = crate::util::unix_now();
        let w = Self::window(limit);
        let total = {
            let mut g = self.lock();
            let e = g.entry(server.to_owned()).or_default();
            e.pending = e.pending.saturating_sub(reserved);
            e.counter.add(now, used);
            e.counter.used(now, w) + e.pending
        };
        self.set_remaining(server, limit, total);
        if used > 0 {
            self.shared.dirty().insert(server.to_owned());
            self.kick();
        }
    }

    /// Starts the flusher unless it runs: on a blocking thread, it writes
    /// every changed counter in one transaction, again until nothing is
    /// dirty. Outside a runtime (never in the daemon) the next flush writes.
    fn kick(&self) {
        let sh = &self.shared;
        if sh.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            sh.flushing.store(false, Ordering::Release);
            return;
        };
        let (store, sh) = (self.store.clone(), sh.clone());
        rt.spawn_blocking(move || {
            let mut first = true;
            loop {
                // The first batch goes at once; under load, one write per
                // FLUSH_EVERY keeps persistence cheap (bounded write-behind).
                if !first {
                    std::thread::sleep(FLUSH_EVERY);
                }
                first = false;
                if !sh.write_dirty(&store) {
                    sh.flushing.store(false, Ordering::Release);
                    // A commit between the take and the store above saw
                    // the flag set: look once more.
                    if sh.is_dirty() && !sh.flushing.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    break;
                }
            }
        });
    }

    /// Writes every changed counter now (at shutdown).
    pub async fn flush(&self) {
        let (store, sh) = (self.store.clone(), self.shared.clone());
        let _ = tokio::task::spawn_blocking(move || sh.write_dirty(&store)).await;
    }

    /// `{server, limit, window_secs, counts, used, remaining,
    /// resets_in_secs}` for every server of `cfg` with a limit, at `now`,
    /// from this instance's counters.
    pub fn rows(&self, cfg: &Config, now: i64) -> Vec<LimitRow> {
        let g = self.lock();
        let rows: Vec<LimitRow> = limited(cfg)
            .map(|(s, l)| match g.get(&s.name) {
                Some(e) => row(s, l, &e.counter, e.pending, now),
                None => row(s, l, &Counter::default(), 0, now),
            })
            .collect();
        drop(g);
        self.gauges(cfg, &rows);
        rows
    }

    fn gauges(&self, cfg: &Config, rows: &[LimitRow]) {
        for r in rows {
            if let Some(l) = cfg.servers.get(&r.server).and_then(|s| s.limit) {
                self.set_remaining(&r.server, &l, r.used);
            }
        }
    }

    /// Like [`Limiter::rows`], from Redis with `[cluster]` (this
    /// instance's counters for a server Redis cannot tell).
    pub async fn rows_now(&self, cfg: &Config, now: i64) -> Vec<LimitRow> {
        let Some(c) = &cfg.cluster else {
            return self.rows(cfg, now);
        };
        let mut rows = self.rows(cfg, now);
        let Ok(mut conn) = self.redis.conn(c.redis.expose()).await else {
            return rows;
        };
        for r in rows.iter_mut() {
            let Some((s, l)) = limited(cfg).find(|(s, _)| s.name == r.server) else {
                continue;
            };
            match self.redis.counter(&mut conn, &s.name).await {
                Ok(counter) => *r = row(s, l, &counter, 0, now),
                Err(e) => {
                    tracing::warn!(server = %s.name, error = %e, "cannot read the send-limit counter in Redis");
                    self.redis.failed().await;
                    break;
                }
            }
        }
        self.gauges(cfg, &rows);
        rows
    }

    /// Clears `server`'s counter (memory and store).
    pub async fn clear(&self, server: &str) -> Result<(), StoreError> {
        if let Some(e) = self.lock().get_mut(server) {
            e.counter = Counter::default();
        }
        self.shared.dirty().remove(server);
        let (name, sh) = (server.to_owned(), self.shared.clone());
        // Under the write lock: a batch the flusher took before the reset
        // cannot land after it.
        self.store
            .run(move |s| {
                let _w = sh.write_lock.lock().unwrap_or_else(|p| p.into_inner());
                s.remove(&TABLE, &name).map(|_| ())
            })
            .await
    }

    /// A connection slot at `server` when it has `max_connections` (`max`):
    /// waits up to `wait`. `Ok(None)` when the server has no cap. With
    /// `cluster`, the slot is also a lease in Redis ([`slots`]), so the cap
    /// holds across every instance; when Redis fails, `on_redis_error`
    /// decides: `local` keeps this instance's slot alone (warning and
    /// metric), `closed` gives none.
    pub async fn slot(
        &self,
        server: &str,
        max: Option<usize>,
        wait: Duration,
        cluster: Option<&Cluster>,
    ) -> Result<Option<Slot>, SlotDenied> {
        let Some(max) = max else {
            return Ok(None);
        };
        let deadline = tokio::time::Instant::now() + wait;
        let sem = {
            let mut g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let e = g
                .entry(server.to_owned())
                .or_insert_with(|| (max, Arc::new(Semaphore::new(max))));
            if e.0 != max {
                // A reload changed the cap: new transactions use a new
                // semaphore; those in flight finish on the old one.
                *e = (max, Arc::new(Semaphore::new(max)));
            }
            e.1.clone()
        };
        let mut waited = false;
        let local = match sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.count_wait(server, &mut waited);
                match tokio::time::timeout_at(deadline, sem.acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => return Err(SlotDenied::Busy { waited: wait }),
                }
            }
        };
        let Some(c) = cluster else {
            return Ok(Some(Slot {
                local: Some(local),
                lease: None,
            }));
        };
        match self.lease(server, max, deadline, c, &mut waited).await {
            Ok(Some(lease)) => Ok(Some(Slot {
                local: Some(local),
                lease: Some(lease),
            })),
            Ok(None) => Err(SlotDenied::Busy { waited: wait }),
            Err(e) => {
                self.metrics.limit_redis_unavailable.inc();
                if matches!(e, shared::SharedError::Resting) {
                    tracing::debug!(server, error = %e, "connection slots without Redis");
                } else {
                    tracing::warn!(server, error = %e, on_redis_error = ?c.on_redis_error, "connection slots in Redis unavailable");
                }
                match c.on_redis_error {
                    OnRedisError::Local => Ok(Some(Slot {
                        local: Some(local),
                        lease: None,
                    })),
                    OnRedisError::Closed => Err(SlotDenied::Unavailable),
                }
            }
        }
    }

    /// Counts a wait for a slot once per hop.
    fn count_wait(&self, server: &str, waited: &mut bool) {
        if std::mem::replace(waited, true) {
            return;
        }
        self.metrics
            .connection_slot_waits
            .get_or_create(&ServerLabel {
                server: server.to_owned(),
            })
            .inc();
    }

    /// A lease on one of `server`'s `max` slots in Redis, tried with a
    /// bounded backoff until `deadline` (`None`: none freed).
    async fn lease(
        &self,
        server: &str,
        max: usize,
        deadline: tokio::time::Instant,
        c: &Cluster,
        waited: &mut bool,
    ) -> Result<Option<slots::Lease>, shared::SharedError> {
        let mut conn = self.redis.conn(c.redis.expose()).await?;
        let mut pause = slots::FIRST_PAUSE;
        loop {
            match slots::try_acquire(&self.redis, &mut conn, server, max).await {
                Ok(Some(l)) => return Ok(Some(l)),
                Ok(None) => {}
                Err(e) => {
                    self.redis.failed().await;
                    return Err(e);
                }
            }
            self.count_wait(server, waited);
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep_until((now + pause).min(deadline)).await;
            pause = (pause * 2).min(slots::MAX_PAUSE);
        }
    }
}

/// A connection slot: this instance's permit, and with `[cluster]` the
/// lease in Redis. Dropping it gives both back: the lease first, then the
/// permit (in the background), so the next local waiter finds the lease
/// gone from Redis.
#[derive(Debug)]
pub struct Slot {
    local: Option<OwnedSemaphorePermit>,
    lease: Option<slots::Lease>,
}

impl Slot {
    /// Whether the slot is shared through Redis (the connection must then
    /// close before the slot is given back: an idle pooled connection would
    /// hold no lease).
    pub fn is_shared(&self) -> bool {
        self.lease.is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let local = self.local.take();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    lease.release().await;
                    drop(local);
                });
            }
            // No runtime (never in the daemon): the lease expires.
            Err(_) => drop((lease, local)),
        }
    }
}

/// Why [`Limiter::slot`] gave no slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotDenied {
    /// None freed within `waited` (the server's `connect_timeout`).
    Busy {
        /// How long the hop waited.
        waited: Duration,
    },
    /// Redis could not be asked and `on_redis_error = "closed"`.
    Unavailable,
}

impl SlotDenied {
    /// The failover reason.
    pub fn reason(&self, max: usize) -> String {
        match self {
            SlotDenied::Busy { waited } => format!(
                "no connection slot free within {} s (max_connections = {max})",
                waited.as_secs()
            ),
            SlotDenied::Unavailable => format!(
                "connection slots (max_connections = {max}) unavailable: Redis unreachable, on_redis_error = \"closed\""
            ),
        }
    }
}

/// Whether every server in `failovers` was skipped because the message
/// needs more than its whole limit: class `Limit` without a return time
/// ([`Denied::returns_in`] is `None` only then).
pub fn is_beyond_every_limit(failovers: &[Failover]) -> bool {
    !failovers.is_empty()
        && failovers
            .iter()
            .all(|f| f.class == FailureClass::Limit && f.retry_after.is_none())
}

/// The permanent refusal of a message that no server of `chain` can ever
/// take within its send limit (every one skipped as
/// [`is_beyond_every_limit`]): `554 5.5.3` from the reply catalogue, since
/// no window ever frees more than the whole limit (a 451 would have the
/// client, or the queue, retry for ever). `rcpts`: the message's
/// recipients.
pub fn beyond_every_limit(
    chain: &[&crate::config::Server],
    failovers: &[Failover],
    rcpts: usize,
) -> Option<Outcome> {
    if !is_beyond_every_limit(failovers) {
        return None;
    }
    let limits: Vec<(&str, Limit)> = chain
        .iter()
        .filter_map(|s| s.limit.map(|l| (s.name.as_str(), l)))
        .collect();
    let largest = limits.iter().map(|(_, l)| l.count).max().unwrap_or(0);
    let why = format!(
        "{rcpts} recipients, more than the send limit of every server allows in a whole window (at most {largest}: {})",
        limits
            .iter()
            .map(|(n, l)| format!("{n} {l}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let r = crate::reply::beyond_every_send_limit(&why);
    Some(Outcome::Refused {
        server: failovers.last()?.server.clone(),
        code: r.code,
        enhanced: r.enhanced,
        reason: why,
        failovers: failovers.to_vec(),
    })
}

/// Why [`offline_rows`] could not read the counters.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The running daemon holds the store (redb locks the file).
    #[error("daemon running; see `smarthost limits show`")]
    Locked,
    /// The store could not be read.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The limits rows of `cfg` from the persisted counters in
/// `{spool}/state.redb`, for `explain` (which runs without the daemon).
/// Nothing used when there is no store yet; [`OfflineError::Locked`] while
/// a daemon holds it.
pub fn offline_rows(cfg: &Config) -> Result<Vec<LimitRow>, OfflineError> {
    let path = cfg.system.spool.join(crate::store::FILE_NAME);
    let store = if path.exists() {
        match Store::open(&cfg.system.spool) {
            Ok(s) => s,
            Err(StoreError::Open { source, .. })
                if matches!(*source, redb::Error::DatabaseAlreadyOpen) =>
            {
                return Err(OfflineError::Locked);
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        Store::in_memory()?
    };
    let l = Limiter::load(Arc::new(store), Arc::new(Metrics::new()))?;
    Ok(l.rows(cfg, crate::util::unix_now()))
}

/// Every server of `cfg` with a limit.
fn limited(cfg: &Config) -> impl Iterator<Item = (&crate::config::Server, Limit)> {
    cfg.servers.values().filter_map(|s| s.limit.map(|l| (s, l)))
}

/// One row of `limits show`.
fn row(s: &crate::config::Server, l: Limit, c: &Counter, pending: u64, now: i64) -> LimitRow {
    let w = l.window.duration().as_secs() as i64;
    let used = c.used(now, w) + pending;
    LimitRow {
        server: s.name.clone(),
        limit: l.to_string(),
        window_secs: w as u64,
        counts: counts_name(s.limit_counts).to_owned(),
        used,
        remaining: l.count.saturating_sub(used),
        resets_in_secs: c.resets_in(now, w),
    }
}

/// The name of what a limit counts.
pub fn counts_name(c: LimitCounts) -> &'static str {
    match c {
        LimitCounts::Messages => "messages",
        LimitCounts::Recipients => "recipients",
    }
}

impl LimitsControl for Limiter {
    fn show<'a>(&'a self, cfg: &'a Config) -> BoxFut<'a, Vec<LimitRow>> {
        Box::pin(async move { self.rows_now(cfg, crate::util::unix_now()).await })
    }

    fn reset<'a>(
        &'a self,
        cfg: &'a Config,
        server: &'a str,
    ) -> BoxFut<'a, Result<(), ControlError>> {
        Box::pin(async move {
            check_limited(cfg, server)?;
            self.clear(server)
                .await
                .map_err(|e| ControlError::Failed(e.to_string()))?;
            if let Some(c) = &cfg.cluster {
                let cleared = async {
                    let mut conn = self.redis.conn(c.redis.expose()).await?;
                    self.redis.clear(&mut conn, server).await
                };
                if let Err(e) = cleared.await {
                    return Err(ControlError::Failed(format!(
                        "the local counter of {server} was reset, the shared one in Redis was not: {e}"
                    )));
                }
            }
            let _ = self.rows_now(cfg, crate::util::unix_now()).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::Window;

    const HOUR: i64 = 3600;

    /// Uses as `(time, units)`.
    type Uses = &'static [(i64, u64)];
    /// `(uses, now, limit, pending, need, expected return)`.
    type ReturnCase = (Uses, i64, u64, u64, u64, Option<u64>);

    fn counter(uses: &[(i64, u64)]) -> Counter {
        let mut c = Counter::default();
        for &(t, n) in uses {
            c.add(t, n);
        }
        c
    }

    #[test]
    fn used_and_expiry_per_minute_bucket() {
        // (uses at times, now, window, expected used, expected resets_in)
        let cases: &[(Uses, i64, i64, u64, u64)] = &[
            (&[], 1000, HOUR, 0, 0),
            (&[(0, 1)], 0, HOUR, 1, 3660),
            (&[(0, 1)], 59, HOUR, 1, 3601),
            (&[(0, 1), (59, 2)], 60, HOUR, 3, 3600),
            // A use leaves at its minute's end plus the window ...
            (&[(0, 1)], 3659, HOUR, 1, 1),
            (&[(0, 1)], 3660, HOUR, 0, 0),
            // ... never more than 60 s after its exact time.
            (&[(30, 1)], 3630, HOUR, 1, 30),
            (&[(0, 2), (120, 3)], 3660, HOUR, 3, 120),
            (&[(0, 2), (120, 3)], 86_400, 86_400, 5, 60),
        ];
        for (i, &(uses, now, w, used, resets)) in cases.iter().enumerate() {
            let c = counter(uses);
            assert_eq!(c.used(now, w), used, "case {i}: used");
            assert_eq!(c.resets_in(now, w), resets, "case {i}: resets_in");
        }
    }

    #[test]
    fn when_budget_returns() {
        // (uses, now, limit, pending, need, expected)
        let cases: &[ReturnCase] = &[
            (&[], 0, 3, 0, 1, Some(0)),
            (&[(0, 2)], 10, 3, 0, 1, Some(0)),
            (&[(0, 3)], 10, 3, 0, 1, Some(3650)),
            (&[(0, 1), (600, 2)], 700, 3, 0, 1, Some(2960)),
            // Two units needed: the first minute frees one, the second two.
            (&[(0, 1), (600, 2)], 700, 3, 0, 2, Some(3560)),
            // More than the limit: never.
            (&[], 0, 3, 0, 4, None),
            // Only reservations in the way: they leave with this minute.
            (&[], 30, 3, 3, 1, Some(3630)),
        ];
        for (i, &(uses, now, limit, pending, need, want)) in cases.iter().enumerate() {
            let c = counter(uses);
            assert_eq!(
                c.returns_in(now, HOUR, limit, pending, need),
                want,
                "case {i}"
            );
        }
    }

    #[test]
    fn prune_drops_only_expired_buckets_and_serde_round_trips() {
        let mut c = counter(&[(0, 1), (60, 2), (4000, 3)]);
        c.prune(3661, HOUR);
        assert_eq!(c.used(3661, HOUR), 5);
        assert_eq!(c.buckets.len(), 2);
        let back: Counter = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    fn limiter() -> Limiter {
        Limiter::load(
            Arc::new(Store::in_memory().unwrap()),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[test]
    fn reservations_hold_budget_until_settled() {
        let l = limiter();
        let lim = Limit {
            count: 3,
            window: Window::Hour,
        };
        let a = l.reserve_local("p", lim, 2, 0).unwrap();
        let denied = l.reserve_local("p", lim, 2, 0).unwrap_err();
        assert_eq!((denied.used, denied.need), (2, 2));
        // Released: the budget is back.
        drop(a);
        let a = l.reserve_local("p", lim, 2, 0).unwrap();
        // Committed with one accepted recipient: one unit stays used.
        a.commit(1);
        let b = l.reserve_local("p", lim, 2, 0).unwrap();
        b.commit(2);
        let denied = l.reserve_local("p", lim, 1, 0).unwrap_err();
        assert!(denied.returns_in.is_some());
        assert!(
            denied
                .reason(&lim, LimitCounts::Messages)
                .contains("3/hour")
        );
        // Another server has its own budget; a bigger limit (a reload)
        // keeps the counts.
        assert!(l.reserve_local("q", lim, 3, 0).is_ok());
        let bigger = Limit { count: 4, ..lim };
        l.reserve_local("p", bigger, 1, 0).unwrap().commit(1);
        assert!(l.reserve_local("p", bigger, 1, 0).is_err());
    }

    #[tokio::test]
    async fn counters_are_persisted_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let lim = Limit {
            count: 5,
            window: Window::Hour,
        };
        let store = Arc::new(Store::open(dir.path()).unwrap());
        {
            let l = Limiter::load(store.clone(), Arc::new(Metrics::new())).unwrap();
            let now = crate::util::unix_now();
            l.reserve_local("p", lim, 2, now).unwrap().commit(2);
            l.flush().await;
            // The background flusher may write the same batch too.
            while l.shared.flushing.load(Ordering::Acquire) {
                tokio::task::yield_now().await;
            }
        }
        // A new limiter on the store (a restart) has the counts.
        let l = Limiter::load(store.clone(), Arc::new(Metrics::new())).unwrap();
        let now = crate::util::unix_now();
        let _held = l.reserve_local("p", lim, 3, now).unwrap();
        assert!(l.reserve_local("p", lim, 1, now).is_err());
        l.clear("p").await.unwrap();
        assert!(store.get(&TABLE, "p").unwrap().is_none());
    }

    #[test]
    fn only_limit_skips_without_return_time_are_beyond_every_limit() {
        let never = |s: &str| Failover::new(s, FailureClass::Limit, "too big");
        let later = |s: &str| {
            let mut f = never(s);
            f.retry_after = Some(Duration::from_secs(60));
            f
        };
        assert!(!is_beyond_every_limit(&[]));
        assert!(is_beyond_every_limit(&[never("a"), never("b")]));
        // Budget returns on one server, or one is only down: temporary.
        assert!(!is_beyond_every_limit(&[never("a"), later("b")]));
        assert!(!is_beyond_every_limit(&[
            never("a"),
            Failover::new("b", FailureClass::Down, "down"),
        ]));
        assert_eq!(
            SlotDenied::Busy {
                waited: Duration::from_secs(10)
            }
            .reason(2),
            "no connection slot free within 10 s (max_connections = 2)"
        );
        assert!(SlotDenied::Unavailable.reason(2).contains("on_redis_error"));
    }

    #[tokio::test]
    async fn connection_slots_wait_then_give_up() {
        let l = limiter();
        let wait = Duration::from_millis(50);
        assert!(l.slot("s", None, wait, None).await.unwrap().is_none());
        let a = l.slot("s", Some(1), wait, None).await.unwrap();
        assert!(a.as_ref().is_some_and(|s| !s.is_shared()));
        assert_eq!(
            l.slot("s", Some(1), wait, None).await.unwrap_err(),
            SlotDenied::Busy { waited: wait }
        );
        drop(a);
        assert!(l.slot("s", Some(1), wait, None).await.unwrap().is_some());
    }
}
