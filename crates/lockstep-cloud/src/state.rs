//! Shared state of one server node.

use std::{
    collections::HashMap,
    ops::Deref,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use lockstep_protocol::hlc::Hlc;
use tokio::task::JoinHandle;

use crate::{
    clock::{Clock, to_millis},
    config::{Config, CredentialUrl},
    db::{Backend, Db},
    feed::Hub,
    group_commit::GroupCommit,
    keys::ServerKeys,
    mail::Mailer,
    password::Passwords,
    ratelimit::{Bucket, RateLimiter},
    sealing::DataKeys,
    session_cache::SessionCache,
};

/// Cheap to clone: everything sits behind one `Arc`.
#[derive(Debug, Clone)]
pub struct AppState(Arc<AppInner>);

#[derive(Debug)]
pub struct AppInner {
    /// This node's name among the nodes on one database (for leases; random at each start).
    pub node_id: String,
    pub config: Config,
    pub db: Db,
    pub keys: ServerKeys,
    /// HMAC key for refresh and one-time tokens (derived from the JWT secret).
    pub token_key: [u8; 32],
    pub clock: Arc<dyn Clock>,
    pub mailer: Mailer,
    pub limiter: RateLimiter,
    /// The bounded argon2 hashers.
    pub passwords: Passwords,
    /// Master keys for encryption at rest.
    pub sealing: DataKeys,
    /// This node's open streams of each user, and the one read per change they share.
    pub hub: Arc<Hub>,
    /// Writes that commit together (pushes): one flush for many on SQLite.
    pub writes: GroupCommit,
    /// What the session check read, per session, until the user's account changes.
    pub sessions: Arc<SessionCache>,
    /// Each user's share of the requests running on this node.
    pub user_slots: Arc<crate::per_user::UserSlots>,
    /// The change streams open on this node, capped per session and per user.
    pub streams: Arc<crate::streams::Streams>,
    /// Work handed off after the answer (what recover and resend do for a known address).
    pub deferred: Arc<crate::deferred::Deferred>,
    /// Set once when the node shuts down: open change streams end.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// This node's hybrid logical clocks, one per user, for writes that come without a stamp.
    hlc: Mutex<HashMap<String, Hlc>>,
    /// Background tasks (feed listener, pruning), stopped with the state.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for AppInner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
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
        let db = Db::connect(
            &config.database_url(),
            std::time::Duration::from_secs(config.database_wait_seconds),
        )
        .await?;
        crate::nodes::check_keys(&db, &keys, to_millis(clock.now())).await?;
        let mailer = Mailer::from_config(
            config.smtp_url.as_ref().map(CredentialUrl::expose),
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
                (Bucket::MfaIp, limits.mfa_per_ip),
                (Bucket::EmailIp, limits.emails_per_ip),
            ]),
        );
        let passwords = Passwords::start(config.password_pool())?;
        let token_key = keys.token_key();
        let sealing = keys.sealing()?;
        let hub = Arc::new(Hub::default());
        let writes = match db.backend {
            Backend::Sqlite => GroupCommit::start(&db.pool, 1),
            Backend::Postgres => GroupCommit::direct(&db.pool),
        };
        let sessions = Arc::new(SessionCache::new(clock.clone()));
        let user_slots = Arc::new(crate::per_user::UserSlots::new(
            usize::try_from(config.max_requests_per_user).unwrap_or(usize::MAX),
        ));
        let streams = Arc::new(crate::streams::Streams::new(
            usize::try_from(config.max_streams_per_session).unwrap_or(usize::MAX),
            usize::try_from(config.max_streams_per_user).unwrap_or(usize::MAX),
        ));
        let mut tasks = Vec::new();
        if db.backend == Backend::Postgres {
            tasks.push(tokio::spawn(crate::feed::listen(
                hub.clone(),
                sessions.clone(),
                config.database_url(),
            )));
        }
        let state = AppState(Arc::new(AppInner {
            node_id: uuid::Uuid::new_v4().to_string(),
            config,
            db,
            keys,
            token_key,
            clock,
            mailer,
            limiter,
            passwords,
            sealing,
            hub,
            writes,
            sessions,
            streams,
            deferred: Arc::default(),
            user_slots,
            shutdown: tokio::sync::watch::channel(false).0,
            hlc: Mutex::default(),
            tasks,
        }));
        Ok(state)
    }

    /// Now, in stored form (Unix milliseconds).
    pub fn now_ms(&self) -> i64 {
        to_millis(self.clock.now())
    }

    /// Now, in Unix seconds (JWT times).
    pub fn now_secs(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    /// Tells this node's open change streams to end (the server is stopping).
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Completes once [`AppState::shut_down`] was called.
    pub fn shutting_down(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.subscribe();
        async move {
            let _ = shutdown.wait_for(|down| *down).await;
        }
    }

    /// After a transaction that appended to the user's feed committed: forgets this node's
    /// session checks of the user (the transaction may have changed their sessions, devices,
    /// factors or user row; other nodes learn of it from the `NOTIFY`), then wakes the user's
    /// streams, which may check their session again.
    pub fn publish(&self, user_id: &str) {
        self.sessions.invalidate_user(user_id);
        self.hub.wake(user_id);
    }

    /// [`AppState::publish`] after a transaction that appended only settings entries: their
    /// session checks stay.
    pub fn publish_settings(&self, user_id: &str) {
        self.hub.wake(user_id);
    }

    /// A stamp from this node's hybrid logical clock for `user_id`, later than `observed` (the
    /// stamp of the value being replaced) and than every stamp this node issued or saw for that
    /// user. Each user has a clock of their own: a stamp far ahead from one user's device moves
    /// only that user's later server stamps, never another user's.
    pub fn stamp(&self, user_id: &str, observed: Option<Hlc>) -> Hlc {
        self.with_user_hlc(user_id, |hlc, now| match observed {
            Some(remote) => hlc.observe(remote, now),
            None => hlc.tick(now),
        })
    }

    /// Takes note of a stamp a client of `user_id` sent.
    pub fn observe_stamp(&self, user_id: &str, remote: Hlc) {
        self.with_user_hlc(user_id, |hlc, now| hlc.observe(remote, now));
    }

    fn with_user_hlc(&self, user_id: &str, next: impl FnOnce(Hlc, u64) -> Hlc) -> Hlc {
        /// Past this many users, clocks that the wall clock has caught up with are forgotten
        /// (for them a fresh clock stamps the same).
        const MAX_CLOCKS: usize = 10_000;
        let now = u64::try_from(self.now_ms()).unwrap_or(0);
        let mut clocks = self.hlc.lock().unwrap_or_else(|p| p.into_inner());
        if clocks.len() >= MAX_CLOCKS && !clocks.contains_key(user_id) {
            clocks.retain(|_, hlc| hlc.millis >= now);
        }
        let clock = clocks.entry(user_id.to_owned()).or_insert(Hlc::ZERO);
        *clock = next(*clock, now);
        *clock
    }

    /// The `iss` claim of access tokens.
    pub fn issuer(&self) -> String {
        format!("{}/auth/v1", self.config.public_url())
    }
}
