//! The account side of a profile: signing up and in, two-factor authentication, devices,
//! signing out and the activity log. Each operation is a method of [`Engine`], which owns the
//! session and the keychain, and wakes the live loop when the session changes.
//!
//! Secrets handled here (passwords, codes, the TOTP secret) are passed through, stored only in
//! the keychain, and never logged. [`Enrollment`] hides its secret in `Debug`.

use lockstep_protocol::{
    audit::AuditEntry,
    auth::{Session, User},
    devices::Device,
};

use crate::{
    engine::{Connection, Engine, EngineError},
    keychain::SecretKind,
};

/// How a sign-in ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    /// Signed in, with access to the account's data.
    Done,
    /// The password was right and the account has two-factor authentication: verify a code
    /// ([`Engine::verify_code`] or [`Engine::verify_recovery_code`]) to continue.
    MfaRequired,
}

/// Which sessions [`Engine::sign_out`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOutScope {
    /// This device only (its secrets and cache are wiped).
    ThisDevice,
    /// Every other session of the account; this one stays.
    Others,
    /// Every session, this one included (this device is wiped).
    Everywhere,
}

/// A TOTP enrollment waiting for its first code. The secret stays in memory until
/// [`Engine::confirm_enrollment`] puts it in the keychain.
#[derive(Clone)]
pub struct Enrollment {
    pub factor_id: String,
    /// Base32, for typing into an authenticator app.
    pub secret: String,
    /// The `otpauth://` URI.
    pub uri: String,
    /// The URI as a QR code, SVG markup.
    pub qr_svg: String,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Enrollment {{ factor_id: {}, .. }}", self.factor_id)
    }
}

pub(crate) fn has_verified_totp(user: &User) -> Option<String> {
    user.factors
        .iter()
        .find(|f| f.factor_type == "totp" && f.status == "verified")
        .map(|f| f.id.to_string())
}

impl Engine {
    pub(crate) async fn installed(&self, session: &Session) -> Result<(), EngineError> {
        self.session().install(session).await?;
        // What the status said (signed out, a code needed) no longer holds; the live loop,
        // woken now, says what does.
        self.update_status(|s| {
            if matches!(
                s.connection,
                Connection::SignedOut | Connection::StepUpRequired
            ) {
                s.connection = Connection::Connecting;
            }
        });
        self.kick();
        Ok(())
    }

    /// Creates the account and signs this device in (the email is confirmed later, by the
    /// emailed link).
    pub async fn sign_up(&self, email: &str, password: &str) -> Result<(), EngineError> {
        self.finish_pending_sign_out_quietly().await;
        let session = self.session().client().signup(email, password).await?;
        self.require_full_pull();
        self.installed(&session).await
    }

    /// Signs this device in with a password.
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<SignIn, EngineError> {
        self.finish_pending_sign_out_quietly().await;
        let session = self.session().client().sign_in(email, password).await?;
        self.require_full_pull();
        self.installed(&session).await?;
        Ok(if has_verified_totp(&session.user).is_some() {
            SignIn::MfaRequired
        } else {
            SignIn::Done
        })
    }

    /// The signed-in user, fresh from the server (email confirmation, factors).
    pub async fn user(&self) -> Result<User, EngineError> {
        let client = self.session().client().clone();
        self.with_token(|t| {
            let c = client.clone();
            async move { c.user(&t).await }
        })
        .await
    }

    /// Verifies a code from the authenticator app: the session steps up to `aal2`. On a device
    /// that has no copy of the secret yet, the secret is fetched into the keychain, so the app
    /// lock works offline from now on.
    pub async fn verify_code(&self, code: &str) -> Result<(), EngineError> {
        let user = self.user().await?;
        let factor = has_verified_totp(&user).ok_or_else(|| {
            EngineError::State("this account has no authenticator to verify a code with".into())
        })?;
        let client = self.session().client().clone();
        let session = self
            .with_token(|t| {
                let (c, f, code) = (client.clone(), factor.clone(), code.to_owned());
                async move { c.verify_totp(&t, &f, &code).await }
            })
            .await?;
        self.installed(&session).await?;
        self.copy_secret_if_missing().await
    }

    /// After a second factor was proven (a code or a recovery code): copies the authenticator
    /// secret to this device if it lacks it, so the app lock works offline. A failure is
    /// logged: signing in stands.
    async fn copy_secret_if_missing(&self) -> Result<(), EngineError> {
        if self.keychain().get(SecretKind::TotpSecret).await?.is_none()
            && let Err(error) = self.fetch_totp_secret().await
        {
            tracing::warn!(%error, "could not copy the authenticator secret to this device");
        }
        Ok(())
    }

    /// Uses a recovery code instead (single use): the session steps up to `aal2`.
    pub async fn verify_recovery_code(&self, code: &str) -> Result<(), EngineError> {
        let client = self.session().client().clone();
        let session = self
            .with_token(|t| {
                let (c, code) = (client.clone(), code.to_owned());
                async move { c.verify_recovery_code(&t, &code).await }
            })
            .await?;
        self.installed(&session).await?;
        self.copy_secret_if_missing().await
    }

    /// Starts adding an authenticator app. Show the QR code (or the secret), then confirm with
    /// a code the app shows.
    pub async fn enroll_totp(&self, friendly_name: &str) -> Result<Enrollment, EngineError> {
        let client = self.session().client().clone();
        let enrolled = self
            .with_token(|t| {
                let (c, name) = (client.clone(), friendly_name.to_owned());
                async move { c.enroll_totp(&t, &name).await }
            })
            .await?;
        Ok(Enrollment {
            factor_id: enrolled.id.to_string(),
            secret: enrolled.totp.secret,
            uri: enrolled.totp.uri,
            qr_svg: enrolled.totp.qr_code,
        })
    }

    /// Confirms an enrollment with its first code: two-factor authentication is on. The secret
    /// goes to this device's keychain, and a set of recovery codes is created and returned
    /// (shown once; empty if the account already had codes).
    pub async fn confirm_enrollment(
        &self,
        enrollment: &Enrollment,
        code: &str,
    ) -> Result<Vec<String>, EngineError> {
        let client = self.session().client().clone();
        let session = self
            .with_token(|t| {
                let (c, f, code) = (
                    client.clone(),
                    enrollment.factor_id.clone(),
                    code.to_owned(),
                );
                async move { c.verify_totp(&t, &f, &code).await }
            })
            .await?;
        self.installed(&session).await?;
        self.keychain()
            .set(SecretKind::TotpSecret, &enrollment.secret)
            .await?;
        let generated = self
            .with_token(|t| {
                let c = client.clone();
                async move { c.generate_recovery_codes(&t).await }
            })
            .await;
        match generated {
            Ok(codes) => Ok(codes.codes),
            Err(EngineError::Api(e)) if e.status() == Some(422) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Turns two-factor authentication off: verifies `code` (the server wants a fresh proof),
    /// then removes every authenticator. The secret leaves this device's keychain.
    pub async fn disable_mfa(&self, code: &str) -> Result<(), EngineError> {
        self.verify_code(code).await?;
        let user = self.user().await?;
        let client = self.session().client().clone();
        for factor in user.factors.iter().filter(|f| f.factor_type == "totp") {
            let id = factor.id.to_string();
            self.with_token(|t| {
                let (c, id) = (client.clone(), id.clone());
                async move { c.unenroll(&t, &id).await }
            })
            .await?;
        }
        self.keychain().delete(SecretKind::TotpSecret).await?;
        Ok(())
    }

    /// Copies the authenticator's secret into this device's keychain (needs a code verified
    /// within the last few minutes; the server audits and announces the hand-over).
    pub async fn fetch_totp_secret(&self) -> Result<(), EngineError> {
        let user = self.user().await?;
        let factor = has_verified_totp(&user)
            .ok_or_else(|| EngineError::State("this account has no authenticator".into()))?;
        let client = self.session().client().clone();
        let secret = self
            .with_token(|t| {
                let (c, f) = (client.clone(), factor.clone());
                async move { c.factor_secret(&t, &f).await }
            })
            .await?;
        self.keychain()
            .set(SecretKind::TotpSecret, &secret.secret)
            .await?;
        Ok(())
    }

    /// The authenticator secret this device holds, or an error saying so and what to do
    /// (`instead`).
    pub(crate) async fn offline_secret(&self, instead: &str) -> Result<String, EngineError> {
        self.keychain()
            .get(SecretKind::TotpSecret)
            .await?
            .ok_or_else(|| {
                EngineError::State(format!(
                    "this device holds no authenticator secret: {instead}"
                ))
            })
    }

    /// Whether this device can check codes offline (it holds the secret).
    pub async fn has_offline_secret(&self) -> Result<bool, EngineError> {
        Ok(self.keychain().get(SecretKind::TotpSecret).await?.is_some())
    }

    /// Checks a code against the secret in this device's keychain, with no network (the app
    /// lock). A code accepted once is not accepted again.
    pub async fn check_code_offline(&self, code: &str) -> Result<bool, EngineError> {
        let secret = self.offline_secret("verify a code online first").await?;
        let now = u64::try_from(self.now_ms() / 1000).unwrap_or(0);
        self.codes
            .check(&secret, code, now)
            .map_err(|e| EngineError::State(e.to_string()))
    }

    /// The account's devices, most recently seen first.
    pub async fn devices(&self) -> Result<Vec<Device>, EngineError> {
        let client = self.session().client().clone();
        self.with_token(|t| {
            let c = client.clone();
            async move { c.devices(&t).await }
        })
        .await
    }

    /// Renames a device of the account. Renaming this one takes the name here at once (as a
    /// rename made elsewhere does when the feed tells it: see [`crate::rename`]).
    pub async fn rename_device(&self, device_id: &str, name: &str) -> Result<(), EngineError> {
        lockstep_protocol::devices::validate_device_name(name).map_err(EngineError::State)?;
        let client = self.session().client().clone();
        self.with_token(|t| {
            let (c, id, name) = (client.clone(), device_id.to_owned(), name.to_owned());
            async move { c.rename_device(&t, &id, &name).await }
        })
        .await?;
        if device_id == self.profile().device.id {
            self.take_device_name(name).await;
        }
        Ok(())
    }

    /// Revokes another device: its sessions end at once and it wipes itself when it hears.
    pub async fn revoke_device(&self, device_id: &str) -> Result<(), EngineError> {
        if device_id == self.profile().device.id {
            return Err(EngineError::State(
                "this is the current device: sign out instead".into(),
            ));
        }
        let client = self.session().client().clone();
        self.with_token(|t| {
            let (c, id) = (client.clone(), device_id.to_owned());
            async move { c.revoke_device(&t, &id).await }
        })
        .await
    }

    /// [`Engine::finish_pending_sign_out`], its failure logged.
    pub async fn finish_pending_sign_out_quietly(&self) {
        if let Err(error) = self.finish_pending_sign_out().await {
            tracing::warn!(%error, "could not end the session signed out offline");
        }
    }

    /// Ends on the server a session this device signed out of while offline (see
    /// [`Engine::sign_out`]): `true` when none is left to end, `false` when the server still
    /// cannot be reached (it is tried again next time). Called when the profile opens and
    /// before signing in.
    pub async fn finish_pending_sign_out(&self) -> Result<bool, EngineError> {
        let Some(kept) = self.keychain().get(SecretKind::PendingSignOut).await? else {
            return Ok(true);
        };
        let (scope, token) = kept.split_once(':').unwrap_or(("local", kept.as_str()));
        let client = self.session().client();
        let ended = match client.refresh(token).await {
            Ok(session) => client.logout(&session.access_token, scope).await,
            Err(error) => Err(error),
        };
        match ended {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Ok(false),
            // Gone already (expired, revoked, signed out elsewhere): nothing left to end.
            Err(error) => tracing::info!(%error, "the session signed out offline had ended"),
        }
        self.keychain().delete(SecretKind::PendingSignOut).await?;
        Ok(true)
    }

    /// The edits signing out with `scope` would lose: those made here that have not reached
    /// the server (queued, or refused and set aside). Signing this device out wipes them;
    /// signing the others out loses nothing here.
    pub async fn edits_lost_by_sign_out(&self, scope: SignOutScope) -> Result<usize, EngineError> {
        if scope == SignOutScope::Others {
            return Ok(0);
        }
        self.read_async(|view| view.pending() + view.set_aside().count())
            .await
    }

    /// Signs out. Leaving this device (alone or everywhere) wipes its secrets and cache; an
    /// error reaching the server does not stop the local wipe.
    pub async fn sign_out(&self, scope: SignOutScope) -> Result<(), EngineError> {
        let scope_name = match scope {
            SignOutScope::ThisDevice => "local",
            SignOutScope::Others => "others",
            SignOutScope::Everywhere => "global",
        };
        let client = self.session().client().clone();
        let result = self
            .with_token(|t| {
                let c = client.clone();
                async move { c.logout(&t, scope_name).await }
            })
            .await;
        if scope == SignOutScope::Others {
            return result;
        }
        // The server could not be reached: the session is ended there later, with its refresh
        // token, kept apart from the profile's wiped secrets.
        let unconfirmed = match &result {
            Err(e) if e.is_offline() => self.session().current().await.map(|t| t.refresh_token),
            _ => None,
        };
        self.wipe().await?;
        if let Some(token) = unconfirmed {
            self.keychain()
                .set(SecretKind::PendingSignOut, &format!("{scope_name}:{token}"))
                .await?;
        }
        self.set_connection(Connection::SignedOut);
        match result {
            Err(e) if !e.is_signed_out() => {
                tracing::warn!(error = %e, "the server did not confirm the sign-out");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The account's security log, newest first.
    pub async fn activity(&self, limit: u32) -> Result<Vec<AuditEntry>, EngineError> {
        let client = self.session().client().clone();
        self.with_token(|t| {
            let c = client.clone();
            async move { c.activity(&t, limit).await }
        })
        .await
    }
}
