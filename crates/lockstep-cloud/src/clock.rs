//! The injected clock: every decision that depends on time asks this, so tests control it.

use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    /// Starts at the current wall-clock time, so tokens it stamps look plausible to clients.
    pub fn starting_now() -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(OffsetDateTime::now_utc())),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How times are stored in the database (Unix milliseconds), defined once for every crate.
pub use lockstep_protocol::timestamp::{from_millis, to_millis};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::starting_now();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::seconds(11));
        assert_eq!(clock.now() - t0, Duration::seconds(11));
    }

    #[test]
    fn millis_round_trip() {
        let t = from_millis(1_700_000_000_123);
        assert_eq!(to_millis(t), 1_700_000_000_123);
    }
}
