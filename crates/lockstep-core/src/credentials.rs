//! The emailed codes and the recovery codes: confirming the account's address with the code
//! from the confirmation mail (and mailing it again), resetting a forgotten password with the
//! code from the reset mail, changing the password, and the recovery codes' count and renewal.
//! Each operation is a method of [`Engine`], in GoTrue's wire format (`/auth/v1/resend`,
//! `/recover`, `/verify` with `type` and `token`, `PUT /user`, `/factors/recovery-codes`).
//!
//! Rules the server keeps, which the front ends can count on:
//! - Asking for mail (a resend, a password reset) answers the same whether or not the address
//!   has an account, and sends at most one mail of a kind per address per interval (a minute
//!   by default) and a few per client IP an hour: a Resend button cannot mail-bomb anybody.
//! - An emailed code is 6 digits, single use, and only the newest mail's works; wrong codes are
//!   limited per address as well as per IP.
//! - Redeeming a password-reset code ends every session of the account.
//!
//! Passwords and codes are passed through, never stored or logged.

use lockstep_protocol::{
    auth::VerificationType,
    errors::{Code, ErrorCode},
    password::{check_password, describe_rule},
};

use crate::{
    account::{SignIn, has_verified_totp},
    api::ApiError,
    engine::{Engine, EngineError},
};

/// How many recovery codes the account has: both 0 when it has none (two-factor
/// authentication off, or codes never made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryCodesLeft {
    pub total: u32,
    pub remaining: u32,
}

/// The code as typed, without spaces or dashes (`123 456`, `123-456`); refused when empty.
fn typed_code(code: &str) -> Result<String, EngineError> {
    let code: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    if code.is_empty() {
        return Err(EngineError::State("enter the code from the email".into()));
    }
    Ok(code)
}

/// A new password is checked here first, by the server's own rule: a weak one must not use up
/// an emailed code.
fn check_new_password(password: &str) -> Result<(), EngineError> {
    check_password(password).map_err(|_| EngineError::State(describe_rule()))
}

/// The server's refusal of an emailed code in words about a code (its own speak of a link);
/// its code and status stay as they were.
fn wrong_code(error: ApiError) -> EngineError {
    match error {
        ApiError::Server {
            status,
            code: code @ Code::Auth(ErrorCode::OtpExpired),
            session_ended,
            retry_after_secs,
            ..
        } => EngineError::Api(ApiError::Server {
            status,
            code,
            session_ended,
            message: "That code is wrong, used or expired: enter the code from the newest \
                      email, or ask for a new one"
                .into(),
            retry_after_secs,
        }),
        other => EngineError::Api(other),
    }
}

impl Engine {
    /// Mails the address confirmation (with a new code and link) again: to `email` when given
    /// (signed out: a sign-in refused with `email_not_confirmed`), else to the signed-in
    /// account's address. The server answers alike whether or not it sends (nothing for an
    /// unknown or confirmed address, nothing within the interval since the last mail); a
    /// resend retires the older codes. Signed in with a confirmed address, it is refused
    /// (`State`): there is nothing to confirm.
    pub async fn resend_confirmation(&self, email: Option<&str>) -> Result<(), EngineError> {
        let email = match email.map(str::trim).filter(|e| !e.is_empty()) {
            Some(email) => email.to_owned(),
            None => {
                let user = self.user().await?;
                if user.email_confirmed_at.is_some() {
                    return Err(EngineError::State(format!(
                        "{} is confirmed already",
                        user.email
                    )));
                }
                user.email
            }
        };
        Ok(self
            .session()
            .client()
            .resend(VerificationType::Signup, &email)
            .await?)
    }

    /// Confirms the signed-in account's address with the code from the newest confirmation
    /// mail (`POST /auth/v1/verify`, type `signup`); then [`Engine::user`] reads it confirmed
    /// and the other devices hear it. A wrong, used or expired code is refused (`otp_expired`,
    /// in words about a code). An address confirmed already needs nothing: `Ok`. This device
    /// keeps its session (and its level): the session the server issues with the confirmation
    /// is ended at once.
    pub async fn confirm_email_code(&self, code: &str) -> Result<(), EngineError> {
        let code = typed_code(code)?;
        let user = self.user().await?;
        if user.email_confirmed_at.is_some() {
            return Ok(());
        }
        let client = self.session().client().clone();
        let issued = client
            .verify_email_code(VerificationType::Signup, &user.email, &code)
            .await
            .map_err(wrong_code)?;
        if let Err(error) = client.logout(&issued.access_token, "local").await {
            tracing::warn!(%error, "could not end the session the confirmation issued");
        }
        Ok(())
    }

    /// Asks for a password-reset mail (a code and a link) to `email` (`POST
    /// /auth/v1/recover`). Works signed out. The answer is the same whether or not the address
    /// has an account; only a malformed address is refused.
    pub async fn request_password_reset(&self, email: &str) -> Result<(), EngineError> {
        Ok(self.session().client().recover(email.trim()).await?)
    }

    /// Resets a forgotten password with the code from the reset mail, and signs this device in
    /// to the account. The new password is checked against the rule first, so a weak one does
    /// not use up the code. Redeeming the code (`POST /auth/v1/verify`, type `recovery`) ends
    /// every session of the account (every device signs in again, with the new password) and
    /// confirms the address; then:
    /// - without two-factor authentication, the password is set (`PUT /auth/v1/user`):
    ///   [`SignIn::Done`];
    /// - with it, the server wants the second factor before the password changes:
    ///   [`SignIn::MfaRequired`], this device signed in and the password not changed yet.
    ///   Verify a code ([`Engine::verify_code`] or [`Engine::verify_recovery_code`]), then
    ///   [`Engine::change_password`].
    ///
    /// Refused (`State`) while this device is signed in to another account: sign out first.
    pub async fn reset_password(
        &self,
        email: &str,
        code: &str,
        new_password: &str,
    ) -> Result<SignIn, EngineError> {
        check_new_password(new_password)?;
        let code = typed_code(code)?;
        let email = email.trim();
        if self.session().is_signed_in().await?
            && let Ok(user) = self.user().await
            && !user.email.eq_ignore_ascii_case(email)
        {
            return Err(EngineError::State(format!(
                "this device is signed in to {}: sign out before resetting the password of \
                 another account",
                user.email
            )));
        }
        let session = self
            .session()
            .client()
            .verify_email_code(VerificationType::Recovery, email, &code)
            .await
            .map_err(wrong_code)?;
        self.require_full_pull();
        self.installed(&session).await?;
        if has_verified_totp(&session.user).is_some() {
            return Ok(SignIn::MfaRequired);
        }
        self.change_password(new_password).await?;
        Ok(SignIn::Done)
    }

    /// Sets a new password for the signed-in account (the rule is checked here first). The
    /// server signs every other session out (each device signs in again with the new
    /// password); this one stays. With two-factor authentication on, this session must have
    /// verified a code first (else `insufficient_aal`).
    pub async fn change_password(&self, new_password: &str) -> Result<(), EngineError> {
        check_new_password(new_password)?;
        let client = self.session().client().clone();
        self.with_token(|t| {
            let (c, password) = (client.clone(), new_password.to_owned());
            async move { c.update_password(&t, &password).await }
        })
        .await?;
        Ok(())
    }

    /// How many recovery codes the account has left (both 0 when it has none).
    pub async fn recovery_codes_status(&self) -> Result<RecoveryCodesLeft, EngineError> {
        let client = self.session().client().clone();
        let status = self
            .with_token(|t| {
                let c = client.clone();
                async move { c.recovery_codes_status(&t).await }
            })
            .await;
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        match status {
            Ok(status) => Ok(RecoveryCodesLeft {
                total: count(status.total),
                remaining: count(status.remaining),
            }),
            Err(EngineError::Api(e))
                if e.code() == Some(&Code::Auth(ErrorCode::MfaFactorNotFound)) =>
            {
                Ok(RecoveryCodesLeft {
                    total: 0,
                    remaining: 0,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// A new set of recovery codes, returned once; the old codes stop working. The server
    /// wants a fresh proof of the second factor, so `code` is verified first: a code from the
    /// authenticator app (6 digits), or, without the phone, one of the current recovery codes
    /// (which that uses up). Needs two-factor authentication on.
    pub async fn regenerate_recovery_codes(&self, code: &str) -> Result<Vec<String>, EngineError> {
        let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.len() == 6 && digits.chars().all(|c| c.is_ascii_digit()) {
            self.verify_code(&digits).await?;
        } else {
            self.verify_recovery_code(code).await?;
        }
        let client = self.session().client().clone();
        let codes = self
            .with_token(|t| {
                let c = client.clone();
                async move { c.regenerate_recovery_codes(&t).await }
            })
            .await?;
        Ok(codes.codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_codes_lose_spaces_and_dashes_and_an_empty_one_is_refused() {
        assert_eq!(typed_code(" 123 456 ").unwrap(), "123456");
        assert_eq!(typed_code("123-456").unwrap(), "123456");
        assert!(typed_code("  ").is_err());
    }

    #[test]
    fn a_refused_code_is_told_as_a_code_with_the_servers_code_kept() {
        let refused = wrong_code(ApiError::Server {
            status: 403,
            code: Code::Auth(ErrorCode::OtpExpired),
            session_ended: false,
            message: "Email link is invalid or has expired".into(),
            retry_after_secs: None,
        });
        let EngineError::Api(api) = refused else {
            panic!("not an API error")
        };
        assert_eq!(api.code(), Some(&Code::Auth(ErrorCode::OtpExpired)));
        assert!(api.message().contains("code"), "{}", api.message());
    }
}
