//! Checking a TOTP code on this device, against the secret in the keychain: the app lock works
//! offline. The server stays the authority for sign-in and step-up; this check only unlocks the
//! local window.
//!
//! Same parameters as the server and authenticator apps ([`totp`]: 30-second steps, 6 digits,
//! HMAC-SHA1, ±1 step). A step once accepted here is not accepted again by this checker (replay
//! protection for the lock screen), and the comparison is constant-time (`totp-rs`).

use std::sync::Mutex;

use lockstep_protocol::auth::totp;
use totp_rs::{Algorithm, Secret, Totp};

/// Why a code could not be checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TotpError {
    /// The stored secret is not a valid base32 TOTP secret of at least 128 bits.
    #[error("the stored authenticator secret is unusable; fetch it again from the server")]
    BadSecret,
}

/// A code checker that remembers the last accepted step.
#[derive(Debug, Default)]
pub struct CodeChecker {
    last_step: Mutex<Option<u64>>,
}

fn totp(secret_base32: &str) -> Result<Totp, TotpError> {
    let secret = Secret::try_from_base32(secret_base32.trim()).map_err(|_| TotpError::BadSecret)?;
    let algorithm: Algorithm = totp::ALGORITHM.parse().map_err(|_| TotpError::BadSecret)?;
    totp_rs::Builder::new()
        .with_algorithm(algorithm)
        .with_digits(totp::DIGITS)
        .with_skew(totp::SKEW_STEPS)
        .with_step_duration(totp::STEP_SECONDS)
        .with_secret(secret)
        .build()
        .map_err(|_| TotpError::BadSecret)
}

/// The code for `secret_base32` at `unix_secs` (for tests and for showing "the current code").
pub fn code_at(secret_base32: &str, unix_secs: u64) -> Result<String, TotpError> {
    Ok(totp(secret_base32)?.generate(unix_secs).to_string())
}

/// The step of `code` (spaces ignored) if it is valid for `secret_base32` at `unix_secs` and
/// newer than `last_step`, the step of the last code accepted here.
pub fn accepted_step(
    secret_base32: &str,
    code: &str,
    unix_secs: u64,
    last_step: Option<u64>,
) -> Result<Option<u64>, TotpError> {
    let totp = totp(secret_base32)?;
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    Ok(totp
        .check(&code, unix_secs)
        .filter(|step| last_step.is_none_or(|last| *step > last)))
}

impl CodeChecker {
    /// Whether `code` (spaces ignored) is valid for `secret_base32` at `unix_secs` and newer
    /// than the last code this checker accepted.
    pub fn check(
        &self,
        secret_base32: &str,
        code: &str,
        unix_secs: u64,
    ) -> Result<bool, TotpError> {
        let mut last = self
            .last_step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let step = accepted_step(secret_base32, code, unix_secs, *last)?;
        if step.is_some() {
            *last = step;
        }
        Ok(step.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238's SHA1 secret ("12345678901234567890"), in base32.
    const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

    #[test]
    fn rfc_6238_vectors_truncated_to_six_digits() {
        assert_eq!(code_at(RFC_SECRET, 59).unwrap(), "287082");
        assert_eq!(code_at(RFC_SECRET, 1_111_111_109).unwrap(), "081804");
        assert_eq!(code_at(RFC_SECRET, 1_234_567_890).unwrap(), "005924");
    }

    #[test]
    fn a_code_works_once_and_neighbouring_steps_are_accepted() {
        let checker = CodeChecker::default();
        let now = 1_234_567_890;
        let previous = code_at(RFC_SECRET, now - 30).unwrap();
        let current = code_at(RFC_SECRET, now).unwrap();
        assert!(
            checker.check(RFC_SECRET, &previous, now).unwrap(),
            "one step of drift"
        );
        assert!(checker.check(RFC_SECRET, &current, now).unwrap());
        assert!(
            !checker.check(RFC_SECRET, &current, now).unwrap(),
            "replay refused"
        );
        assert!(
            !checker.check(RFC_SECRET, &previous, now).unwrap(),
            "older step refused"
        );
        let far = code_at(RFC_SECRET, now - 300).unwrap();
        assert!(!CodeChecker::default().check(RFC_SECRET, &far, now).unwrap());
        assert!(
            !CodeChecker::default()
                .check(RFC_SECRET, "12 34 56", now)
                .unwrap()
        );
    }

    #[test]
    fn a_bad_secret_is_an_error_not_a_panic() {
        assert_eq!(
            CodeChecker::default().check("not base32!", "123456", 0),
            Err(TotpError::BadSecret)
        );
        assert_eq!(
            CodeChecker::default().check("GEZDGNBV", "123456", 0),
            Err(TotpError::BadSecret)
        );
    }
}
