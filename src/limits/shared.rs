//! Send-limit counters shared by several instances through Redis
//! (`[cluster] redis`, PRODUCT §3.10). Each server's counter is one hash,
//! `smarthost:limit:{server}`, of per-minute buckets (`minute since the
//! epoch → units`), with the same window rules as [`super::Counter`].
//!
//! Reserving is one Lua script, atomic in Redis: it drops expired buckets,
//! and either adds the units to the current minute (the reservation counts
//! at once, so two instances can never both take the last unit) or says
//! when enough budget returns. Settling gives back what was reserved but
//! not used (a failed hop, refused recipients) with a second script.
//!
//! The connection slots of `max_connections` live next to the counters,
//! in [`super::slots`], over the same connection.
//!
//! The connection is made on first use and kept (`ConnectionManager`
//! reconnects by itself); every call is bounded by [`TIMEOUT`]. After a
//! failure Redis is not asked again for [`RETRY`]: the caller applies
//! `on_redis_error` meanwhile, without waiting on a dead server each time.

use super::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::{Duration, Instant};

/// Bound of one Redis call (connect or command).
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// How long Redis is left alone after a failure.
pub const RETRY: Duration = Duration::from_secs(5);

const RESERVE: &str = r#"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local units = tonumber(ARGV[4])
local flat = redis.call('HGETALL', KEYS[1])
local live = {}
local used = 0
for i = 1, #flat, 2 do
  local m = tonumber(flat[i])
  local n = tonumber(flat[i + 1])
  if (m + 1) * 60 + window > now and n > 0 then
    table.insert(live, {m, n})
    used = used + n
  else
    redis.call('HDEL', KEYS[1], flat[i])
  end
end
local minute = math.floor(now / 60)
if used + units <= limit then
  redis.call('HINCRBY', KEYS[1], minute, units)
  redis.call('EXPIRE', KEYS[1], window + 120)
  return {1, used + units, minute}
end
if units > limit then
  return {0, used, -1}
end
table.sort(live, function(a, b) return a[1] < b[1] end)
local left = used
for _, b in ipairs(live) do
  left = left - b[2]
  if left + units <= limit then
    return {0, used, (b[1] + 1) * 60 + window - now}
  end
end
return {0, used, (minute + 1) * 60 + window - now}
"#;

const GIVE_BACK: &str = r#"
local v = redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2]))
if v <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return v
"#;

/// A Redis failure, for the log.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Not asked: it failed less than [`RETRY`] ago.
    #[error("Redis failed less than {}s ago; not asked again yet", RETRY.as_secs())]
    Resting,
    /// The URL does not open.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within [`TIMEOUT`].
    #[error("Redis: no answer within {}s", TIMEOUT.as_secs())]
    Timeout,
}

/// The answer to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// Taken: `used` units now in the window; the units sit in `minute`.
    Ok {
        /// The bucket the units were added to.
        minute: i64,
    },
    /// Not enough budget: `used` units in the window; enough returns in
    /// `returns_in` seconds (`None`: never).
    Denied {
        /// Units used.
        used: u64,
        /// Seconds until enough returns.
        returns_in: Option<u64>,
    },
}

struct Link {
    url: String,
    conn: Option<ConnectionManager>,
    resting_until: Option<Instant>,
}

/// The Redis side of the limiter.
pub struct Shared {
    link: tokio::sync::Mutex<Link>,
    reserve: redis::Script,
    give_back: redis::Script,
    /// The connection-slot scripts ([`super::slots`]).
    pub(super) slots: super::slots::Scripts,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            link: tokio::sync::Mutex::new(Link {
                url: String::new(),
                conn: None,
                resting_until: None,
            }),
            reserve: redis::Script::new(RESERVE),
            give_back: redis::Script::new(GIVE_BACK),
            slots: super::slots::Scripts::default(),
        }
    }
}

/// The hash of `server`'s counter.
pub fn key(server: &str) -> String {
    format!("smarthost:limit:{server}")
}

/// `f`, bounded by [`TIMEOUT`].
pub(super) async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SharedError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SharedError::Timeout),
    }
}

impl Shared {
    /// A connection to `url` (made on first use, remade when a reload
    /// changed the URL).
    pub async fn conn(&self, url: &str) -> Result<ConnectionManager, SharedError> {
        let mut g = self.link.lock().await;
        if g.url != url {
            *g = Link {
                url: url.to_owned(),
                conn: None,
                resting_until: None,
            };
        }
        if g.resting_until.is_some_and(|t| Instant::now() < t) {
            return Err(SharedError::Resting);
        }
        if let Some(c) = &g.conn {
            return Ok(c.clone());
        }
        let made = async {
            let client = redis::Client::open(url)?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(TIMEOUT)
                .set_response_timeout(TIMEOUT)
                .set_number_of_retries(1);
            client.get_connection_manager_with_config(cfg).await
        };
        match bounded(made).await {
            Ok(c) => {
                g.conn = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                g.resting_until = Some(Instant::now() + RETRY);
                Err(e)
            }
        }
    }

    /// Notes a failed call: Redis rests for [`RETRY`].
    pub async fn failed(&self) {
        self.link.lock().await.resting_until = Some(Instant::now() + RETRY);
    }

    /// Reserves `units` of `server` under `limit` units per `window`
    /// seconds at `now`.
    pub async fn reserve(
        &self,
        conn: &mut ConnectionManager,
        server: &str,
        now: i64,
        window: i64,
        limit: u64,
        units: u64,
    ) -> Result<Reserved, SharedError> {
        let mut inv = self.reserve.prepare_invoke();
        inv.key(key(server))
            .arg(now)
            .arg(window)
            .arg(limit)
            .arg(units);
        let (ok, used, third): (i64, i64, i64) = bounded(inv.invoke_async(conn)).await?;
        Ok(if ok == 1 {
            Reserved::Ok { minute: third }
        } else {
            Reserved::Denied {
                used: used.max(0) as u64,
                returns_in: (third >= 0).then_some(third.max(1) as u64),
            }
        })
    }

    /// Gives back `units` reserved in `minute`.
    pub async fn give_back(
        &self,
        conn: &mut ConnectionManager,
        server: &str,
        minute: i64,
        units: u64,
    ) -> Result<(), SharedError> {
        let mut inv = self.give_back.prepare_invoke();
        inv.key(key(server)).arg(minute).arg(units);
        bounded(inv.invoke_async::<i64>(conn)).await.map(|_| ())
    }

    /// `server`'s counter as Redis holds it.
    pub async fn counter(
        &self,
        conn: &mut ConnectionManager,
        server: &str,
    ) -> Result<Counter, SharedError> {
        let pairs: std::collections::HashMap<i64, i64> =
            bounded(redis::cmd("HGETALL").arg(key(server)).query_async(conn)).await?;
        Ok(Counter::from_buckets(
            pairs
                .into_iter()
                .filter(|&(_, n)| n > 0)
                .map(|(m, n)| (m, n as u64)),
        ))
    }

    /// Clears `server`'s counter.
    pub async fn clear(
        &self,
        conn: &mut ConnectionManager,
        server: &str,
    ) -> Result<(), SharedError> {
        bounded(redis::cmd("DEL").arg(key(server)).query_async::<i64>(conn))
            .await
            .map(|_| ())
    }
}
