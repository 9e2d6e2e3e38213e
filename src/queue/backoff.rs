//! When a deferred message is tried again: exponential backoff with
//! jitter (PRODUCT §3.8, `[queue] min_backoff` / `max_backoff`). Pure,
//! apart from [`jitter`], which draws the random factor.

use std::time::Duration;

/// The delay after attempt number `attempt` (1 = the first attempt
/// failed): `min · 2^(attempt-1)`, capped at `max`, scaled by `jitter`
/// (a factor in 0.8..=1.2, so messages deferred together do not all come
/// back at the same moment). Never below `min · 0.8` nor above `max · 1.2`.
pub fn delay(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let base = min
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(max)
        .min(max.max(min));
    base.mul_f64(jitter.clamp(0.8, 1.2))
}

/// A random factor in 0.8..=1.2.
pub fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    0.8 + 0.4 * (u32::from_le_bytes(b) as f64 / u32::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let table = [
            (1, 60),
            (2, 120),
            (3, 240),
            (6, 1920),
            (7, 3600),
            (50, 3600),
        ];
        for (attempt, secs) in table {
            assert_eq!(
                delay(attempt, min, max, 1.0),
                Duration::from_secs(secs),
                "attempt {attempt}"
            );
        }
        assert_eq!(delay(1, min, max, 0.8), Duration::from_secs(48));
        assert_eq!(delay(7, min, max, 1.2), Duration::from_secs(4320));
        assert_eq!(
            delay(1, min, max, 5.0),
            Duration::from_secs(72),
            "jitter is clamped"
        );
        for _ in 0..100 {
            let j = jitter();
            assert!((0.8..=1.2).contains(&j));
        }
    }
}
