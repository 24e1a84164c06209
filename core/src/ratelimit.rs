//! Token-bucket rate limits per (action, key).

use std::{collections::HashMap, time::Instant};

use parking_lot::Mutex;

use crate::{Error, Result, config::RateLimitConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Message,
    Login,
    Register,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<(Action, String), (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token or fails with M_LIMIT_EXCEEDED and how long to wait.
    pub fn check(&self, action: Action, key: &str, per_second: f64, burst: f64) -> Result<()> {
        let mut g = self.buckets.lock();
        let now = Instant::now();
        let (tokens, last) = g.entry((action, key.to_owned())).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_second).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - *tokens) / per_second * 1000.0).ceil() as u64;
            Err(Error::LimitExceeded {
                retry_after_ms: wait.max(1),
            })
        }
    }
}

/// The configured limits applied to every entry point's actions.
pub struct RateLimits {
    config: RateLimitConfig,
    limiter: RateLimiter,
}

impl RateLimits {
    pub(crate) fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            limiter: RateLimiter::default(),
        }
    }

    pub fn rate_limit(&self, action: Action, key: &str) -> Result<()> {
        let rl = &self.config;
        if !rl.enabled {
            return Ok(());
        }
        let (rate, burst) = match action {
            Action::Message => (rl.messages_per_second, rl.messages_burst),
            Action::Login => (rl.login_per_second, rl.login_burst),
            Action::Register => (rl.register_per_second, rl.register_burst),
        };
        self.limiter.check(action, key, rate, burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_hint() {
        let rl = RateLimiter::default();
        for _ in 0..3 {
            assert!(rl.check(Action::Message, "@a:x", 0.5, 3.0).is_ok());
        }
        match rl.check(Action::Message, "@a:x", 0.5, 3.0) {
            Err(Error::LimitExceeded { retry_after_ms }) => {
                assert!((1..=2000).contains(&retry_after_ms))
            }
            other => panic!("expected a limit, got {other:?}"),
        }
        // Keys are independent.
        assert!(rl.check(Action::Message, "@b:x", 0.5, 3.0).is_ok());
    }
}
