//! The app lock: a window that asks for a code from the authenticator app before it shows
//! anything. The rules are pure ([`LockState`]); the engine keeps the state in the profile's
//! database, so neither a restart nor a second window gets round them:
//! - locked stays locked across restarts, and "ask for a code when the app starts" locks at
//!   every start (where this device holds the authenticator secret: without it, no code could
//!   be checked offline);
//! - wrong codes back off: [`FREE_ATTEMPTS`] free, then a wait that doubles from
//!   [`FIRST_DELAY_MS`] up to [`LONGEST_DELAY_MS`], by the engine's clock;
//! - the last accepted step is kept, so a code seen over a shoulder cannot unlock again.
//!
//! The gate itself (which commands a locked app refuses) is the desktop shell's.

use crate::{
    engine::{Engine, EngineError},
    totp,
    typed::keys,
};

/// Wrong codes allowed before the first wait.
pub const FREE_ATTEMPTS: u32 = 5;
/// The wait after the first wrong code past the free ones; each further one doubles it.
pub const FIRST_DELAY_MS: i64 = 15_000;
/// The longest wait between two tries.
pub const LONGEST_DELAY_MS: i64 = 15 * 60_000;

/// The lock as the profile keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockState {
    pub locked: bool,
    /// Wrong codes since the last accepted one.
    pub failures: u32,
    /// No code is checked before this time (Unix milliseconds; 0: none).
    pub wait_until_ms: i64,
    /// The TOTP step of the last code that unlocked (codes of this step or older are refused).
    pub last_step: Option<u64>,
}

/// How long to wait after `failures` wrong codes in a row.
pub fn delay_after(failures: u32) -> i64 {
    if failures < FREE_ATTEMPTS {
        return 0;
    }
    let doublings = (failures - FREE_ATTEMPTS).min(20);
    FIRST_DELAY_MS
        .saturating_mul(1_i64 << doublings)
        .min(LONGEST_DELAY_MS)
}

impl LockState {
    /// How long before a code may be tried (`None`: now). A wait that reaches further than
    /// the longest one (the clock went back) is cut to the longest one from now.
    pub fn retry_in_ms(&self, now_ms: i64) -> Option<i64> {
        let left = self.wait_until_ms - now_ms;
        (left > 0).then(|| left.min(LONGEST_DELAY_MS))
    }

    /// After a wrong code at `now_ms`.
    #[must_use]
    pub fn failed(self, now_ms: i64) -> LockState {
        let failures = self.failures.saturating_add(1);
        let delay = delay_after(failures);
        LockState {
            failures,
            wait_until_ms: if delay > 0 { now_ms + delay } else { 0 },
            ..self
        }
    }

    /// After a code of TOTP step `step` (none for a recovery code) unlocked.
    #[must_use]
    pub fn unlocked(self, step: Option<u64>) -> LockState {
        LockState {
            locked: false,
            failures: 0,
            wait_until_ms: 0,
            last_step: step.or(self.last_step),
        }
    }
}

/// What an unlock attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlock {
    /// The app is unlocked.
    Unlocked,
    /// The code was wrong (or already used); `retry_in_ms`: the wait before the next try.
    Wrong {
        failures: u32,
        retry_in_ms: Option<i64>,
    },
    /// Too many wrong codes: nothing was checked; try again in `retry_in_ms`.
    Wait { failures: u32, retry_in_ms: i64 },
}

impl Engine {
    /// The lock as the profile keeps it.
    pub async fn lock_state(&self) -> Result<LockState, EngineError> {
        Ok(self.store().call(|db| db.lock_state()).await?)
    }

    /// The wait before the next code may be tried, by the engine's clock (`None`: now).
    pub async fn lock_retry_in_ms(&self) -> Result<Option<i64>, EngineError> {
        Ok(self.lock_state().await?.retry_in_ms(self.now_ms()))
    }

    /// Changes the kept lock in one transaction (see [`crate::store::db::Db::update_lock`]).
    async fn update_lock<R: Send + 'static>(
        &self,
        f: impl FnOnce(LockState) -> (LockState, R) + Send + 'static,
    ) -> Result<R, EngineError> {
        Ok(self.store().call(move |db| db.update_lock(f)).await?)
    }

    /// Whether the app starts locked: it was locked when it stopped, or "ask for a code when
    /// the app starts" is on; either way only where this device holds the authenticator secret.
    pub async fn lock_at_start(&self) -> Result<bool, EngineError> {
        if !self.has_offline_secret().await? {
            return Ok(false);
        }
        let key = keys::REQUIRE_CODE_ON_UNLOCK.name;
        let required = self
            .read_async(move |view| view.cache.effective(key))
            .await?
            .is_some_and(|value| value == serde_json::Value::Bool(true));
        self.update_lock(move |state| {
            let locked = state.locked || required;
            (LockState { locked, ..state }, locked)
        })
        .await
    }

    /// Locks the app now ("Lock now", or after inactivity).
    pub async fn lock(&self) -> Result<(), EngineError> {
        if !self.has_offline_secret().await? {
            return Err(EngineError::State(
                "the app lock needs this device to hold the authenticator secret: turn on \
                 two-factor authentication, or verify a code on this device first"
                    .into(),
            ));
        }
        self.update_lock(|state| {
            (
                LockState {
                    locked: true,
                    ..state
                },
                (),
            )
        })
        .await
    }

    /// Unlocks with a code from the authenticator app, checked offline against this device's
    /// keychain, under the back-off rules.
    pub async fn unlock_with_code(&self, code: &str) -> Result<Unlock, EngineError> {
        let secret = self
            .offline_secret("use a recovery code or sign out")
            .await?;
        let now = self.now_ms();
        let unix_secs = u64::try_from(now / 1000).unwrap_or(0);
        let code = code.to_owned();
        self.update_lock(move |state| {
            if let Some(retry_in_ms) = state.retry_in_ms(now) {
                let failures = state.failures;
                let wait = Unlock::Wait {
                    failures,
                    retry_in_ms,
                };
                return (state, Ok(wait));
            }
            match totp::accepted_step(&secret, &code, unix_secs, state.last_step) {
                Ok(step) => settle(state, step, now),
                Err(error) => (state, Err(EngineError::State(error.to_string()))),
            }
        })
        .await?
    }

    /// Unlocks with one of the account's recovery codes (checked by the server, which spends
    /// it), under the same back-off rules.
    pub async fn unlock_with_recovery_code(&self, code: &str) -> Result<Unlock, EngineError> {
        let now = self.now_ms();
        let state = self.lock_state().await?;
        if let Some(retry_in_ms) = state.retry_in_ms(now) {
            let failures = state.failures;
            return Ok(Unlock::Wait {
                failures,
                retry_in_ms,
            });
        }
        let accepted = match self.verify_recovery_code(code).await {
            Ok(()) => true,
            // A wrong or spent code (not the network, not the session).
            Err(EngineError::Api(error)) if error.is_refusal() => false,
            Err(other) => return Err(other),
        };
        self.update_lock(move |state| {
            if accepted {
                // A recovery code has no TOTP step: the last one stands.
                (state.unlocked(None), Ok(Unlock::Unlocked))
            } else {
                settle(state, None, now)
            }
        })
        .await?
    }
}

/// The lock after a code of TOTP step `step` (`None`: a wrong code) was tried at `now`.
fn settle(
    state: LockState,
    step: Option<u64>,
    now: i64,
) -> (LockState, Result<Unlock, EngineError>) {
    match step {
        Some(step) => (state.unlocked(Some(step)), Ok(Unlock::Unlocked)),
        None => {
            let after = state.failed(now);
            let outcome = Unlock::Wrong {
                failures: after.failures,
                retry_in_ms: after.retry_in_ms(now),
            };
            (after, Ok(outcome))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_wrong_codes_are_free_then_the_wait_doubles_up_to_the_longest() {
        let mut state = LockState {
            locked: true,
            ..LockState::default()
        };
        let now = 1_000_000;
        for n in 1..=FREE_ATTEMPTS - 1 {
            state = state.failed(now);
            assert_eq!(state.failures, n);
            assert_eq!(state.retry_in_ms(now), None, "attempt {n} is free");
        }
        state = state.failed(now);
        assert_eq!(state.retry_in_ms(now), Some(FIRST_DELAY_MS));
        assert_eq!(state.retry_in_ms(now + FIRST_DELAY_MS), None);
        state = state.failed(now);
        assert_eq!(state.retry_in_ms(now), Some(2 * FIRST_DELAY_MS));
        for _ in 0..40 {
            state = state.failed(now);
        }
        assert_eq!(state.retry_in_ms(now), Some(LONGEST_DELAY_MS));
        assert!(state.locked, "failing never unlocks");
    }

    #[test]
    fn a_wait_from_a_clock_that_went_back_is_cut_to_the_longest() {
        let state = LockState {
            locked: true,
            failures: 9,
            wait_until_ms: 10 * LONGEST_DELAY_MS,
            last_step: None,
        };
        assert_eq!(state.retry_in_ms(0), Some(LONGEST_DELAY_MS));
    }

    #[test]
    fn unlocking_forgets_the_failures_and_keeps_the_newest_step() {
        let state = LockState {
            locked: true,
            failures: 7,
            wait_until_ms: 99,
            last_step: Some(10),
        };
        assert_eq!(
            state.unlocked(Some(12)),
            LockState {
                last_step: Some(12),
                ..LockState::default()
            }
        );
        assert_eq!(state.unlocked(None).last_step, Some(10));
    }
}
