//! Shared state of one server node.

use std::{collections::HashMap, ops::Deref, sync::Arc};

use anyhow::Context;

use crate::{
    clock::{Clock, to_millis},
    config::Config,
    db::Db,
    keys::ServerKeys,
    mail::Mailer,
    ratelimit::{Bucket, RateLimiter},
};

/// Cheap to clone: everything sits behind one `Arc`.
#[derive(Debug, Clone)]
pub struct AppState(Arc<AppInner>);

#[derive(Debug)]
pub struct AppInner {
    pub config: Config,
    pub db: Db,
    pub keys: ServerKeys,
    /// HMAC key for refresh and one-time tokens (derived from the JWT secret).
    pub token_key: [u8; 32],
    pub clock: Arc<dyn Clock>,
    pub mailer: Mailer,
    pub limiter: RateLimiter,
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    /// Opens the data dir, database and keys described by `config`.
    pub async fn new(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<AppState> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        let keys = ServerKeys::load_or_create(&config.data_dir)?;
        let db = Db::connect(&config.database_url()).await?;
        let mailer = Mailer::from_config(
            config.smtp_url.as_deref(),
            &config.smtp_from,
            &config.data_dir,
        )?;
        let limits = &config.rate_limits;
        let limiter = RateLimiter::new(
            clock.clone(),
            HashMap::from([
                (Bucket::SignInFailuresIp, limits.sign_in_failures_per_ip),
                (
                    Bucket::SignInFailuresAccount,
                    limits.sign_in_failures_per_account,
                ),
                (Bucket::SignupIp, limits.signups_per_ip),
                (Bucket::VerifyIp, limits.verify_per_ip),
                (
                    Bucket::CodeFailuresAccount,
                    limits.code_failures_per_account,
                ),
                (Bucket::EmailIp, limits.emails_per_ip),
            ]),
        );
        let token_key = keys.token_key();
        Ok(AppState(Arc::new(AppInner {
            config,
            db,
            keys,
            token_key,
            clock,
            mailer,
            limiter,
        })))
    }

    /// Now, in stored form (Unix milliseconds).
    pub fn now_ms(&self) -> i64 {
        to_millis(self.clock.now())
    }

    /// Now, in Unix seconds (JWT times).
    pub fn now_secs(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    /// The `iss` claim of access tokens.
    pub fn issuer(&self) -> String {
        format!("{}/auth/v1", self.config.public_url())
    }
}
