//! AUTH failure throttling per client address: each failure delays the
//! `535` reply a little longer, and after `auth_failures` failures the
//! address is locked out for `auth_lockout`. Pure apart from the shared
//! map: the time is always passed in.

use dashmap::DashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Entries kept before old ones are swept, so a scan from many addresses
/// cannot grow the map without bound.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// The throttle, shared by every session.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    map: DashMap<IpAddr, Entry>,
}

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Wait this long, then answer 535.
    Delay(Duration),
    /// Too many failures: 421 and close.
    LockedOut,
}

impl AuthThrottle {
    /// Whether `ip` is locked out at `now`.
    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        self.map
            .get(&ip)
            .and_then(|e| e.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Records a failure from `ip`.
    pub fn failure(
        &self,
        ip: IpAddr,
        now: Instant,
        max_failures: u32,
        lockout: Duration,
    ) -> FailureVerdict {
        if self.map.len() >= MAX_ENTRIES {
            self.map.retain(|_, e| {
                now.duration_since(e.last) < lockout || e.locked_until.is_some_and(|u| now < u)
            });
        }
        let mut e = self.map.entry(ip).or_insert(Entry {
            failures: 0,
            last: now,
            locked_until: None,
        });
        // Failures long ago (or an expired lockout) no longer count.
        if now.duration_since(e.last) >= lockout || e.locked_until.is_some_and(|u| now >= u) {
            e.failures = 0;
            e.locked_until = None;
        }
        e.failures += 1;
        e.last = now;
        if e.failures >= max_failures {
            e.locked_until = Some(now + lockout);
            return FailureVerdict::LockedOut;
        }
        // 250 ms, doubling per failure, at most 4 s.
        let ms = 250u64.saturating_mul(1 << (e.failures - 1).min(4));
        FailureVerdict::Delay(Duration::from_millis(ms.min(4000)))
    }

    /// A successful login clears the address's record.
    pub fn success(&self, ip: IpAddr) {
        self.map.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_lock_then_expire() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let lock = Duration::from_secs(60);
        let t0 = Instant::now();
        assert_eq!(
            t.failure(ip, t0, 4, lock),
            FailureVerdict::Delay(Duration::from_millis(250))
        );
        assert_eq!(
            t.failure(ip, t0, 4, lock),
            FailureVerdict::Delay(Duration::from_millis(500))
        );
        assert_eq!(
            t.failure(ip, t0, 4, lock),
            FailureVerdict::Delay(Duration::from_millis(1000))
        );
        assert!(!t.is_locked(ip, t0));
        assert_eq!(t.failure(ip, t0, 4, lock), FailureVerdict::LockedOut);
        assert!(t.is_locked(ip, t0 + Duration::from_secs(59)));
        assert!(!t.is_locked(other, t0));
        assert!(!t.is_locked(ip, t0 + lock));
        // After the lockout the count starts over.
        assert_eq!(
            t.failure(ip, t0 + lock, 4, lock),
            FailureVerdict::Delay(Duration::from_millis(250))
        );
        t.success(ip);
        assert_eq!(
            t.failure(ip, t0 + lock, 4, lock),
            FailureVerdict::Delay(Duration::from_millis(250))
        );
    }
}
