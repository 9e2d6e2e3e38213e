//! Who may take a session slot besides `max_connections` (issue 14 item 3):
//! a client address that no application owns may hold at most
//! `max_connections_per_client` sessions (like Postfix's
//! `smtpd_client_connection_count_limit`), and all such clients together at
//! most the stranger share of `max_connections`, so a flood from addresses
//! that may not send can never take the slots of identified clients.
//!
//! Clients whose address (or listener) identifies an application are not
//! counted here: they are the ones the relay exists for. IPv6 clients are
//! counted per /64, as the AUTH throttle does. No I/O, no clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// This address already holds `max_connections_per_client` sessions.
    PerClient,
    /// Clients no application owns already hold their whole share.
    StrangerShare,
}

/// The slots that clients nobody owns hold, by address.
#[derive(Debug, Default)]
pub struct Admission {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    per_client: HashMap<IpAddr, usize>,
    strangers: usize,
}

/// A stranger's slot; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        c.strangers = c.strangers.saturating_sub(1);
        if let Some(n) = c.per_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.key);
            }
        }
    }
}

/// How many of `max_connections` slots clients nobody owns may hold: all
/// of them when no client can be identified without AUTH (then everybody
/// is a stranger at connect), else three quarters, so at least a quarter
/// stays for clients an application owns.
pub fn stranger_share(max_connections: usize, anyone_owned: bool) -> usize {
    if anyone_owned {
        max_connections - max_connections / 4
    } else {
        max_connections
    }
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Only counters change under this lock.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a client nobody owns at `ip`, or says why not.
    pub fn admit_stranger(
        self: &Arc<Self>,
        ip: IpAddr,
        per_client: usize,
        share: usize,
    ) -> Result<Ticket, Denied> {
        let key = super::throttle::key(ip);
        let mut c = self.lock();
        if c.per_client.get(&key).copied().unwrap_or(0) >= per_client {
            return Err(Denied::PerClient);
        }
        if c.strangers >= share {
            return Err(Denied::StrangerShare);
        }
        c.strangers += 1;
        *c.per_client.entry(key).or_insert(0) += 1;
        Ok(Ticket {
            admission: self.clone(),
            key,
        })
    }

    /// Sessions clients nobody owns hold now.
    pub fn strangers(&self) -> usize {
        self.lock().strangers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_limit_and_release() {
        let a = Arc::new(Admission::default());
        let t1 = a.admit_stranger(ip("192.0.2.1"), 2, 10).unwrap();
        let _t2 = a.admit_stranger(ip("192.0.2.1"), 2, 10).unwrap();
        assert_eq!(
            a.admit_stranger(ip("192.0.2.1"), 2, 10).unwrap_err(),
            Denied::PerClient
        );
        // Another address is not affected.
        let _t3 = a.admit_stranger(ip("192.0.2.2"), 2, 10).unwrap();
        drop(t1);
        let _t4 = a.admit_stranger(ip("192.0.2.1"), 2, 10).unwrap();
        assert_eq!(a.strangers(), 3);
    }

    #[test]
    fn ipv6_counted_per_64() {
        let a = Arc::new(Admission::default());
        let _t = a.admit_stranger(ip("2001:db8::1"), 1, 10).unwrap();
        assert_eq!(
            a.admit_stranger(ip("2001:db8::2"), 1, 10).unwrap_err(),
            Denied::PerClient
        );
        assert!(a.admit_stranger(ip("2001:db8:0:1::1"), 1, 10).is_ok());
    }

    #[test]
    fn stranger_share_is_bounded() {
        let a = Arc::new(Admission::default());
        let _t: Vec<_> = (1..=3)
            .map(|i| a.admit_stranger(ip(&format!("192.0.2.{i}")), 5, 3).unwrap())
            .collect();
        assert_eq!(
            a.admit_stranger(ip("192.0.2.9"), 5, 3).unwrap_err(),
            Denied::StrangerShare
        );
        assert_eq!(stranger_share(100, true), 75);
        assert_eq!(stranger_share(1, true), 1);
        assert_eq!(stranger_share(100, false), 100);
    }
}
