//! AUTH failure throttling per client address: each failure delays the
//! `535` reply a little longer, and after `auth_failures` failures the
//! address is locked out for `auth_lockout`. Pure apart from the shared
//! map: the time is always passed in.
//!
//! An attempt is counted as a failure *before* the password is checked
//! ([`AuthThrottle::begin`]) and given back when it succeeds, so a client
//! opening many connections at once cannot have more than `auth_failures`
//! guesses checked. A success does not wipe earlier failures (another
//! client behind the same NAT could otherwise keep guessing); they expire
//! `auth_lockout` after the last one. IPv6 clients are counted per /64.

use dashmap::DashMap;
use std::net::{IpAddr, Ipv6Addr};
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

/// Whether an AUTH attempt may be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Check the password.
    Proceed,
    /// Locked out: 421 and close, no check.
    LockedOut,
}

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureVerdict {
    /// Wait this long, then answer 535.
    Delay(Duration),
    /// Too many failures: 421 and close.
    LockedOut,
}

/// The address failures are counted under: the address itself, IPv4 for an
/// IPv4-mapped IPv6 address, the /64 for other IPv6 addresses (one host
/// usually owns a whole /64).
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl AuthThrottle {
    fn entry(
        &self,
        ip: IpAddr,
        now: Instant,
        lockout: Duration,
    ) -> dashmap::mapref::one::RefMut<'_, IpAddr, Entry> {
        if self.map.len() >= MAX_ENTRIES {
            self.map.retain(|_, e| {
                now.saturating_duration_since(e.last) < lockout
                    || e.locked_until.is_some_and(|u| now < u)
            });
        }
        let mut e = self.map.entry(key(ip)).or_insert(Entry {
            failures: 0,
            last: now,
            locked_until: None,
        });
        // Failures long ago (or an expired lockout) no longer count.
        let expired_lock = e.locked_until.is_some_and(|u| now >= u);
        let stale = e.locked_until.is_none() && now.saturating_duration_since(e.last) >= lockout;
        if expired_lock || stale {
            e.failures = 0;
            e.locked_until = None;
        }
        e
    }

    /// Whether `ip` is locked out at `now`.
    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        self.map
            .get(&key(ip))
            .and_then(|e| e.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Begins an attempt from `ip`, counting it as a failure in advance.
    pub fn begin(&self, ip: IpAddr, now: Instant, max_failures: u32, lockout: Duration) -> Attempt {
        let mut e = self.entry(ip, now, lockout);
        if e.locked_until.is_some_and(|u| now < u) {
            return Attempt::LockedOut;
        }
        e.failures += 1;
        e.last = now;
        if e.failures > max_failures {
            e.locked_until = now.checked_add(lockout);
            return Attempt::LockedOut;
        }
        Attempt::Proceed
    }

    /// The attempt begun for `ip` succeeded: it is not a failure after all.
    pub fn succeeded(&self, ip: IpAddr) {
        if let Some(mut e) = self.map.get_mut(&key(ip)) {
            e.failures = e.failures.saturating_sub(1);
        }
    }

    /// The attempt begun for `ip` failed (it was counted already).
    pub fn failed(
        &self,
        ip: IpAddr,
        now: Instant,
        max_failures: u32,
        lockout: Duration,
    ) -> FailureVerdict {
        let mut e = self.entry(ip, now, lockout);
        e.last = now;
        if e.failures >= max_failures {
            e.locked_until = now.checked_add(lockout);
            return FailureVerdict::LockedOut;
        }
        // 250 ms, doubling per failure, at most 4 s.
        let ms = 250u64.saturating_mul(1 << e.failures.saturating_sub(1).min(4));
        FailureVerdict::Delay(Duration::from_millis(ms.min(4000)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: Duration = Duration::from_secs(60);

    fn fail(t: &AuthThrottle, ip: IpAddr, now: Instant) -> Result<FailureVerdict, ()> {
        match t.begin(ip, now, 4, LOCK) {
            Attempt::Proceed => Ok(t.failed(ip, now, 4, LOCK)),
            Attempt::LockedOut => Err(()),
        }
    }

    #[test]
    fn delays_grow_then_lock_then_expire() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(
            fail(&t, ip, t0),
            Ok(FailureVerdict::Delay(Duration::from_millis(250)))
        );
        assert_eq!(
            fail(&t, ip, t0),
            Ok(FailureVerdict::Delay(Duration::from_millis(500)))
        );
        assert_eq!(
            fail(&t, ip, t0),
            Ok(FailureVerdict::Delay(Duration::from_millis(1000)))
        );
        assert!(!t.is_locked(ip, t0));
        assert_eq!(fail(&t, ip, t0), Ok(FailureVerdict::LockedOut));
        assert!(t.is_locked(ip, t0 + Duration::from_secs(59)));
        assert_eq!(fail(&t, ip, t0 + Duration::from_secs(59)), Err(()));
        assert!(!t.is_locked(other, t0));
        assert!(!t.is_locked(ip, t0 + LOCK));
        // After the lockout the count starts over.
        assert_eq!(
            fail(&t, ip, t0 + LOCK),
            Ok(FailureVerdict::Delay(Duration::from_millis(250)))
        );
    }

    #[test]
    fn concurrent_attempts_cannot_exceed_the_limit() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t0 = Instant::now();
        // 60 attempts begun at once: only 4 may be checked.
        let proceeded = (0..60)
            .filter(|_| t.begin(ip, t0, 4, LOCK) == Attempt::Proceed)
            .count();
        assert_eq!(proceeded, 4);
        assert!(t.is_locked(ip, t0));
    }

    #[test]
    fn a_success_gives_its_attempt_back_but_keeps_earlier_failures() {
        let t = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        let t0 = Instant::now();
        fail(&t, ip, t0).unwrap();
        fail(&t, ip, t0).unwrap();
        assert_eq!(t.begin(ip, t0, 4, LOCK), Attempt::Proceed);
        t.succeeded(ip);
        // Two failures still count: two more lock.
        assert_eq!(
            fail(&t, ip, t0),
            Ok(FailureVerdict::Delay(Duration::from_millis(1000)))
        );
        assert_eq!(fail(&t, ip, t0), Ok(FailureVerdict::LockedOut));
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let t = AuthThrottle::default();
        let t0 = Instant::now();
        for i in 1..=4 {
            let ip: IpAddr = format!("2001:db8:1:2::{i}").parse().unwrap();
            let _ = fail(&t, ip, t0);
        }
        assert!(t.is_locked("2001:db8:1:2:ffff::1".parse().unwrap(), t0));
        assert!(!t.is_locked("2001:db8:1:3::1".parse().unwrap(), t0));
        assert_eq!(
            key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
