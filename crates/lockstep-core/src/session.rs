//! Keeps one device's session fresh.
//!
//! [`SessionKeeper::access_token`] hands out a valid access token and refreshes it when it is
//! about to expire. Refreshing is single-flight: one lock is held across the refresh, so however
//! many tasks ask at once, the server sees one refresh (two refreshes racing with the same
//! refresh token is the classic cause of "signed out at random"). Each new refresh token is
//! saved to the keychain before it is used; it never touches a plain file.

use std::sync::Arc;

use lockstep_protocol::auth::Session;
use tokio::sync::Mutex;

use crate::{
    api::{ApiError, Client},
    keychain::{Keychain, KeychainError, SecretKind},
};

/// Refresh when the access token has less than this left.
const REFRESH_MARGIN_SECS: i64 = 60;

/// Where "now" comes from (Unix seconds); injected so tests control expiry.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| time::OffsetDateTime::now_utc().unix_timestamp())
}

/// The tokens of a live session. `Debug` hides them.
#[derive(Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub user_id: String,
    pub email: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens {{ user_id: {}, expires_at: {}, .. }}",
            self.user_id, self.expires_at
        )
    }
}

impl From<&Session> for Tokens {
    fn from(s: &Session) -> Tokens {
        Tokens {
            access_token: s.access_token.clone(),
            refresh_token: s.refresh_token.clone(),
            expires_at: s.expires_at,
            user_id: s.user.id.to_string(),
            email: s.user.email.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("not signed in on this device")]
    SignedOut,
    /// The server ended the session (signed out elsewhere, device revoked, token reused).
    #[error("the session has ended: {0}")]
    Ended(ApiError),
    #[error(transparent)]
    Api(ApiError),
    #[error(transparent)]
    Keychain(#[from] KeychainError),
}

/// The session of one profile.
#[derive(Clone)]
pub struct SessionKeeper {
    client: Client,
    keychain: Keychain,
    clock: Clock,
    tokens: Arc<Mutex<Option<Tokens>>>,
    /// Counts refreshes, so a caller that waited for the lock while another refreshed takes
    /// that result instead of refreshing again.
    refreshes: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for SessionKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeeper")
            .field("keychain", &self.keychain)
            .finish_non_exhaustive()
    }
}

impl SessionKeeper {
    pub fn new(client: Client, keychain: Keychain, clock: Clock) -> SessionKeeper {
        SessionKeeper {
            client,
            keychain,
            clock,
            tokens: Arc::new(Mutex::new(None)),
            refreshes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Takes over a session the server just issued (sign-in, step-up, recovery).
    pub async fn install(&self, session: &Session) -> Result<Tokens, SessionError> {
        let tokens = Tokens::from(session);
        self.keychain
            .set(SecretKind::RefreshToken, &tokens.refresh_token)
            .await?;
        *self.tokens.lock().await = Some(tokens.clone());
        Ok(tokens)
    }

    /// The current tokens, if signed in (without refreshing).
    pub async fn current(&self) -> Option<Tokens> {
        self.tokens.lock().await.clone()
    }

    /// A valid access token: the current one, or a refreshed one when it is about to expire.
    /// After a restart the refresh token comes from the keychain.
    pub async fn access_token(&self) -> Result<String, SessionError> {
        use std::sync::atomic::Ordering;
        let seen = self.refreshes.load(Ordering::SeqCst);
        let mut guard = self.tokens.lock().await;
        if let Some(tokens) = guard.as_ref()
            && (tokens.expires_at - (self.clock)() > REFRESH_MARGIN_SECS
                || self.refreshes.load(Ordering::SeqCst) != seen)
        {
            // Fresh, or refreshed by another caller while this one waited.
            return Ok(tokens.access_token.clone());
        }
        let refreshed = self.refresh_locked(&mut guard).await?;
        Ok(refreshed.access_token)
    }

    /// Refreshes because `rejected` was refused as expired — unless another task already
    /// replaced it, in which case the newer token is returned without a second refresh.
    pub async fn refresh_after_rejection(&self, rejected: &str) -> Result<String, SessionError> {
        let mut guard = self.tokens.lock().await;
        if let Some(tokens) = guard.as_ref()
            && tokens.access_token != rejected
        {
            return Ok(tokens.access_token.clone());
        }
        Ok(self.refresh_locked(&mut guard).await?.access_token)
    }

    async fn refresh_locked(&self, slot: &mut Option<Tokens>) -> Result<Tokens, SessionError> {
        // The keychain's token first: another process on this profile (the app beside a
        // `lockstep` command) may have rotated the one held here, and an old token used again
        // signs the session out for safety. Every process saves a new token there before
        // using it, so the keychain holds the newest.
        let stored = self.keychain.get(SecretKind::RefreshToken).await?;
        let refresh_token = stored
            .or_else(|| slot.as_ref().map(|t| t.refresh_token.clone()))
            .ok_or(SessionError::SignedOut)?;
        match self.client.refresh(&refresh_token).await {
            Ok(session) => {
                let tokens = Tokens::from(&session);
                // Saved before use: a crash right after this still finds the newest token.
                self.keychain
                    .set(SecretKind::RefreshToken, &tokens.refresh_token)
                    .await?;
                *slot = Some(tokens.clone());
                self.refreshes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(tokens)
            }
            Err(e) if e.is_session_gone() => {
                *slot = None;
                Err(SessionError::Ended(e))
            }
            Err(e) => Err(SessionError::Api(e)),
        }
    }

    /// Forgets the tokens held in memory (the keychain is wiped separately).
    pub async fn forget(&self) {
        *self.tokens.lock().await = None;
    }

    /// Whether a session is held in memory or its refresh token in the keychain.
    pub async fn is_signed_in(&self) -> Result<bool, SessionError> {
        if self.tokens.lock().await.is_some() {
            return Ok(true);
        }
        Ok(self.keychain.get(SecretKind::RefreshToken).await?.is_some())
    }

    /// Refreshes now, whatever the access token's age: the way to ask the server whether this
    /// session still exists.
    pub async fn refresh_now(&self) -> Result<Tokens, SessionError> {
        let mut guard = self.tokens.lock().await;
        self.refresh_locked(&mut guard).await
    }

    /// Forgets the session here: memory and keychain.
    pub async fn clear(&self) -> Result<(), SessionError> {
        *self.tokens.lock().await = None;
        self.keychain.delete(SecretKind::RefreshToken).await?;
        Ok(())
    }
}
