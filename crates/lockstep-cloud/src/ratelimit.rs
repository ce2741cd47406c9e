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

    /// Counts one attempt against every `(bucket, key)` at once, before the work it limits, or
    /// none of them: `Err(seconds until allowed)` if any has used up its window. Checking and
    /// counting are one step under one lock, so a burst of concurrent attempts cannot all pass a
    /// check made before any of them was counted. A limit on failures refunds the attempt when
    /// it succeeds ([`Reservation::refund`]); a limit on attempts keeps it.
    pub fn reserve(&self, keys: &[(Bucket, &str)]) -> Result<Reservation, u64> {
        let now = self.clock.now();
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= MAX_KEYS {
            self.forget_idle(&mut events, now);
        }
        let limited: Vec<(Bucket, &str, Limit)> = keys
            .iter()
            .filter_map(|(bucket, key)| Some((*bucket, *key, *self.limits.get(bucket)?)))
            .collect();
        let mut wait = 0;
        for (bucket, key, limit) in &limited {
            let window = window_of(*limit);
            if let Some(times) = events.get_mut(&(*bucket, (*key).to_owned())) {
                prune(times, now - window);
                if times.len() >= limit.count as usize {
                    let oldest = times.front().copied().unwrap_or(now);
                    wait = wait.max((oldest + window - now).whole_seconds().max(1) as u64);
                }
            }
        }
        if wait > 0 {
            return Err(wait);
        }
        let mut counted = Vec::with_capacity(limited.len());
        for (bucket, key, _) in limited {
            events
                .entry((bucket, key.to_owned()))
                .or_default()
                .push_back(now);
            counted.push((bucket, key.to_owned()));
        }
        Ok(Reservation {
            events: Arc::clone(&self.events),
            counted,
            at: now,
        })
    }

    /// Counts one attempt against a single key (limits on attempts, not failures).
    pub fn hit(&self, bucket: Bucket, key: &str) -> Result<(), u64> {
        self.reserve(&[(bucket, key)]).map(Reservation::keep)
    }

    fn forget_idle(&self, events: &mut Events, now: OffsetDateTime) {
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
}

/// Attempts counted by [`RateLimiter::reserve`]. They stay counted unless refunded; dropping a
/// reservation keeps them (an attempt that errored half-way still counts).
#[derive(Debug)]
#[must_use = "keep() or refund() says whether the attempt counts"]
pub struct Reservation {
    events: Arc<Mutex<Events>>,
    counted: Vec<(Bucket, String)>,
    at: OffsetDateTime,
}

impl Reservation {
    /// The attempt counts (a failure, or a limit on attempts).
    pub fn keep(self) {}

    /// The attempt does not count (it succeeded, and the limit is on failures).
    pub fn refund(self) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.counted {
            if let Some(times) = events.get_mut(key)
                && let Some(at) = times.iter().rposition(|t| *t == self.at)
            {
                times.remove(at);
            }
        }
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
    fn a_reservation_counts_every_key_or_none_and_a_refund_gives_it_back() {
        let clock = ManualClock::starting_now();
        let limiter = RateLimiter::new(
            Arc::new(clock.clone()),
            HashMap::from([
                (Bucket::SignInFailuresIp, Limit::new(3, 60)),
                (Bucket::SignInFailuresAccount, Limit::new(2, 60)),
            ]),
        );
        let keys = |account| {
            [
                (Bucket::SignInFailuresIp, "ip"),
                (Bucket::SignInFailuresAccount, account),
            ]
        };
        limiter.reserve(&keys("ada")).expect("first").keep();
        limiter.reserve(&keys("ada")).expect("second").keep();
        assert!(
            limiter.reserve(&keys("ada")).is_err(),
            "the account is used up"
        );
        // The refused attempt did not count against the IP either: one more account fits.
        limiter
            .reserve(&keys("bob"))
            .expect("third for the ip")
            .keep();
        assert!(limiter.reserve(&keys("cy")).is_err(), "the ip is used up");
        clock.advance(Duration::seconds(61));
        let success = limiter.reserve(&keys("ada")).expect("window slid");
        success.refund();
        for _ in 0..2 {
            limiter
                .reserve(&keys("ada"))
                .expect("the refund gave the attempt back")
                .keep();
        }
        assert!(limiter.reserve(&keys("ada")).is_err());
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_limit() {
        let clock = ManualClock::starting_now();
        let limiter = limiter(&clock);
        let passed = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..10 {
                        if let Ok(r) = limiter.reserve(&[(Bucket::VerifyIp, "ip")]) {
                            passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            r.keep();
                        }
                    }
                });
            }
        });
        assert_eq!(passed.into_inner(), 3);
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
