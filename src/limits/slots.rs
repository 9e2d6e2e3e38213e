//! Connection slots shared by several instances through Redis
//! (`max_connections` with `[cluster] redis`): the cap holds across all
//! instances together.
//!
//! Each server has one sorted set of leases, `smarthost:slots:{server}`:
//! member `{instance id}:{sequence}`, score the lease's expiry in
//! milliseconds of Redis's own clock (`TIME`, so the instances' clocks do
//! not matter; Redis 3.2 or later). Taking a slot is one Lua script,
//! atomic in Redis: drop the expired leases, and add one when fewer than
//! `max_connections` are held.
//! A holder renews its lease every third of [`lease`] and removes it when
//! the hop ends; an instance that dies stops renewing, and its slots return
//! when their leases expire (at most [`lease`] later; 30 s).
//!
//! A waiter tries again after a pause that doubles from [`FIRST_PAUSE`] up
//! to [`MAX_PAUSE`] (bounded backoff, no busy polling), until the server's
//! `connect_timeout`. Waiters of one instance queue on its local semaphore
//! first (so at most `max_connections` of them ask Redis), and a slot given
//! back by this instance goes to the next local waiter at once.

use super::shared::{Shared, SharedError, bounded};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The first pause between two tries for a slot.
pub const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between two tries for a slot.
pub const MAX_PAUSE: Duration = Duration::from_millis(250);

/// How long a lease lives without renewal in production.
const LEASE: Duration = Duration::from_secs(30);

/// How long a lease lives without renewal: 30 s. Debug builds (the test
/// suite runs the debug binary) read `SMARTHOST_TEST_SLOT_LEASE_MS` so a
/// test can watch a killed instance's slots return within seconds; release
/// builds have no such knob.
pub fn lease() -> Duration {
    static L: OnceLock<Duration> = OnceLock::new();
    *L.get_or_init(|| {
        crate::util::test_knob_ms("SMARTHOST_TEST_SLOT_LEASE_MS")
            .filter(|d| *d >= Duration::from_millis(300))
            .unwrap_or(LEASE)
    })
}

/// Drops expired leases; adds `ARGV[2]` expiring in `ARGV[3]` ms when fewer
/// than `ARGV[1]` are held. 1: taken, 0: full.
const ACQUIRE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
  if redis.call('PTTL', KEYS[1]) < lease + 1000 then
    redis.call('PEXPIRE', KEYS[1], lease + 1000)
  end
  return 1
end
return 0
"#;

/// Extends lease `ARGV[2]`; one that expired and was dropped is taken
/// again when there is room. 1: renewed, 2: taken again, 0: lost.
const RENEW: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local held = 1
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0
  end
  held = 2
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
if redis.call('PTTL', KEYS[1]) < lease + 1000 then
  redis.call('PEXPIRE', KEYS[1], lease + 1000)
end
return held
"#;

/// The sorted set of `server`'s leases.
pub fn key(server: &str) -> String {
    format!("smarthost:slots:{server}")
}

/// This process's part of every lease it takes: its pid and 64 random
/// bits (a restarted instance never renews a dead one's leases).
fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut r = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
        format!("{}-{:016x}", std::process::id(), u64::from_be_bytes(r))
    })
}

/// The scripts of the shared slots.
pub struct Scripts {
    acquire: redis::Script,
    renew: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
        }
    }
}

/// A slot held in Redis: renewed in the background, removed on
/// [`Lease::release`] (or, if that fails, when it expires).
pub struct Lease {
    server: String,
    member: String,
    conn: ConnectionManager,
    renewal: tokio::task::JoinHandle<()>,
    /// `release` removed it.
    released: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("server", &self.server)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// A sequence number per lease of this process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// One try for a slot at `server` under `max`: a renewing [`Lease`], or
/// `None` when `max` are held.
pub async fn try_acquire(
    redis: &Arc<Shared>,
    conn: &mut ConnectionManager,
    server: &str,
    max: usize,
) -> Result<Option<Lease>, SharedError> {
    let member = format!("{}:{}", instance_id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let lease_ms = lease().as_millis() as u64;
    let mut inv = redis.slots.acquire.prepare_invoke();
    inv.key(key(server)).arg(max).arg(&member).arg(lease_ms);
    let taken: i64 = bounded(inv.invoke_async(conn)).await?;
    if taken != 1 {
        return Ok(None);
    }
    let renewal = tokio::spawn(renew(
        redis.clone(),
        conn.clone(),
        server.to_owned(),
        member.clone(),
        max,
    ));
    Ok(Some(Lease {
        server: server.to_owned(),
        member,
        conn: conn.clone(),
        renewal,
        released: false,
    }))
}

/// Renews a lease every third of its life until aborted.
async fn renew(
    redis: Arc<Shared>,
    mut conn: ConnectionManager,
    server: String,
    member: String,
    max: usize,
) {
    let every = lease() / 3;
    let lease_ms = lease().as_millis() as u64;
    loop {
        tokio::time::sleep(every).await;
        let mut inv = redis.slots.renew.prepare_invoke();
        inv.key(key(&server)).arg(max).arg(&member).arg(lease_ms);
        match bounded(inv.invoke_async::<i64>(&mut conn)).await {
            Ok(1) => {}
            Ok(2) => {
                tracing::info!(server = %server, "connection slot lease had expired in Redis; taken again")
            }
            Ok(_) => {
                tracing::warn!(server = %server, "connection slot lease expired in Redis and the slot was taken meanwhile: max_connections may be exceeded until this delivery ends")
            }
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "cannot renew the connection slot lease in Redis")
            }
        }
    }
}

impl Lease {
    /// Removes the lease (bounded); a lease that cannot be removed expires.
    pub async fn release(mut self) {
        self.renewal.abort();
        remove(self.conn.clone(), &self.server, &self.member).await;
        self.released = true;
    }
}

/// `ZREM`s `member` of `server`'s leases (bounded).
async fn remove(mut conn: ConnectionManager, server: &str, member: &str) {
    let done = bounded(
        redis::cmd("ZREM")
            .arg(key(server))
            .arg(member)
            .query_async::<i64>(&mut conn),
    )
    .await;
    if let Err(e) = done {
        tracing::warn!(server = %server, error = %e, "cannot give the connection slot back to Redis; it returns when its lease expires");
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Released or not, the renewal ends with the lease.
        self.renewal.abort();
        if self.released {
            return;
        }
        // Dropped without `release` (a delivery cancelled right after it
        // took the slot): removed in the background.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (conn, server, member) = (
                self.conn.clone(),
                std::mem::take(&mut self.server),
                std::mem::take(&mut self.member),
            );
            rt.spawn(async move { remove(conn, &server, &member).await });
        }
    }
}
