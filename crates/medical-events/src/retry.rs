//! Backoff between attempts: exponential, capped, with jitter so that many
//! lanes failing together do not retry in lock-step.

use std::time::Duration;

use rand::Rng;

use crate::config::{ConfigError, Source, invalid, millis, number};

/// How failed attempts are retried: capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: i32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let max_attempts: i32 = number(source, "MAX_ATTEMPTS", 5)?;
        if max_attempts < 1 {
            return Err(invalid(
                "MAX_ATTEMPTS",
                &max_attempts.to_string(),
                "must be at least 1",
            ));
        }
        Ok(Self {
            max_attempts,
            base_delay: millis(source, "RETRY_BASE_MS", 500)?,
            max_delay: millis(source, "RETRY_MAX_MS", 30_000)?,
        })
    }
}

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
