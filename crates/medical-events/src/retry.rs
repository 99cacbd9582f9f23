//! Backoff between attempts: exponential, capped, with jitter so that many
//! lanes failing together do not retry in lock-step.

use std::time::Duration;

use rand::Rng;

pub use crate::config::RetryPolicy;

impl RetryPolicy {
    /// Delay before retry number `failures` (1-based): half fixed, half random.
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay)
            .as_millis() as u64;
        let half = ceiling / 2;
        Duration::from_millis(half + rand::rng().random_range(0..=ceiling - half))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let first = policy.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(policy.delay(30) <= Duration::from_millis(1000));
            assert!(policy.delay(30) >= Duration::from_millis(500));
        }
    }
}
