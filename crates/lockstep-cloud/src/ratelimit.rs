//! In-memory rate limits: at most N events per sliding window, per key.
//!
//! Counters live in this node's memory; with several nodes each enforces its own share. Time
//! comes from the injected clock so tests can step past a window.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use time::{Duration, OffsetDateTime};

use crate::{clock::Clock, config::Limit};

/// Which limit a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    SignInFailuresIp,
    SignInFailuresAccount,
    SignupIp,
    VerifyIp,
    /// MFA challenge and verify attempts per client IP.
    MfaIp,
    /// Wrong emailed codes per address (a code is 6 digits: attempts must be few).
    CodeFailuresAccount,
    EmailIp,
}

/// Event times per (bucket, key), oldest first.
type Events = HashMap<(Bucket, String), VecDeque<OffsetDateTime>>;

#[derive(Debug, Clone)]
pub struct RateLimiter {
    clock: Arc<dyn Clock>,
    limits: HashMap<Bucket, Limit>,
    events: Arc<Mutex<Events>>,
}

/// Bound on tracked keys; past it, keys whose windows have emptied are dropped.
const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    pub fn new(clock: Arc<dyn Clock>, limits: HashMap<Bucket, Limit>) -> Self {
        RateLimiter {
            clock,
            limits,
            events: Arc::default(),
        }
    }

    /// `Err(seconds until allowed)` if the key has used up its window.
    pub fn check(&self, bucket: Bucket, key: &str) -> Result<(), u64> {
        let Some(limit) = self.limits.get(&bucket).copied() else {
            return Ok(());
        };
        let now = self.clock.now();
        let window = window_of(limit);
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let Some(times) = events.get_mut(&(bucket, key.to_owned())) else {
            return Ok(());
        };
        prune(times, now - window);
        if times.len() < limit.count as usize {
            return Ok(());
        }
        let oldest = times.front().copied().unwrap_or(now);
        let wait = (oldest + window - now).whole_seconds().max(1);
        Err(wait as u64)
    }

    /// Counts one event against the key.
    pub fn record(&self, bucket: Bucket, key: &str) {
        let Some(limit) = self.limits.get(&bucket).copied() else {
            return;
        };
        let now = self.clock.now();
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= MAX_KEYS {
            events.retain(|(b, _), times| {
                let window = self
                    .limits
                    .get(b)
                    .map(|l| window_of(*l))
                    .unwrap_or_default();
                prune(times, now - window);
                !times.is_empty()
            });
        }
        let times = events.entry((bucket, key.to_owned())).or_default();
        prune(times, now - window_of(limit));
        times.push_back(now);
    }

    /// Checks and, if allowed, counts in one step (for limits on attempts, not failures).
    pub fn hit(&self, bucket: Bucket, key: &str) -> Result<(), u64> {
        self.check(bucket, key)?;
        self.record(bucket, key);
        Ok(())
    }
}

fn window_of(limit: Limit) -> Duration {
    Duration::try_from(limit.window).unwrap_or(Duration::HOUR)
}

fn prune(times: &mut VecDeque<OffsetDateTime>, before: OffsetDateTime) {
    while times.front().is_some_and(|t| *t <= before) {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limiter(clock: &ManualClock) -> RateLimiter {
        RateLimiter::new(
            Arc::new(clock.clone()),
            HashMap::from([(Bucket::VerifyIp, Limit::new(3, 60))]),
        )
    }

    #[test]
    fn allows_up_to_the_limit_then_says_how_long_to_wait() {
        let clock = ManualClock::starting_now();
        let limiter = limiter(&clock);
        for _ in 0..3 {
            assert_eq!(limiter.hit(Bucket::VerifyIp, "1.2.3.4"), Ok(()));
        }
        clock.advance(Duration::seconds(20));
        assert_eq!(limiter.hit(Bucket::VerifyIp, "1.2.3.4"), Err(40));
        assert_eq!(
            limiter.hit(Bucket::VerifyIp, "5.6.7.8"),
            Ok(()),
            "keys are independent"
        );
        clock.advance(Duration::seconds(41));
        assert_eq!(
            limiter.hit(Bucket::VerifyIp, "1.2.3.4"),
            Ok(()),
            "window slid past"
        );
    }

    #[test]
    fn buckets_without_a_limit_never_refuse() {
        let clock = ManualClock::starting_now();
        let limiter = limiter(&clock);
        for _ in 0..100 {
            assert_eq!(limiter.hit(Bucket::EmailIp, "k"), Ok(()));
        }
    }
}
