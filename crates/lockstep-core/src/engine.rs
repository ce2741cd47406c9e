//! The sync engine of one profile (one device identity on this machine).
//!
//! - Reads are served from the local cache at once, with no network.
//! - [`Engine::set`] validates with the shared schema, stamps the edit with this device's hybrid
//!   logical clock and appends it to the outbox; it returns only after the outbox is on disk,
//!   so an acknowledged edit survives a crash.
//! - [`Engine::sync_once`] pushes the outbox as [planned](crate::plan) (the newest edit of each
//!   key; idempotent on retry: a push's mutation id is derived from the entries it settles) and
//!   pulls what changed since the cursor (a full pull on first run, after a corrupt cache, when
//!   the server says `must_refetch`, or after an edit was set aside).
//! - A push the server refuses for good (a 4xx that retrying cannot fix) is split to find the
//!   edit it refuses; that edit is set aside in the outbox (kept, not sent, reported as
//!   [`EngineEvent::SetAside`] and in [`SyncStatus::set_aside`]) and the rest goes on syncing.
//!   The user can [retry](Engine::retry_set_aside) or [drop](Engine::drop_set_aside) it; a newer
//!   edit of the key replaces it. Only network errors, 5xx, 408 and 429 are retried as they are.
//! - What happened is told on an event channel ([`EngineEvent`]): remote changes (with the
//!   writing device's id and name, and whether they came live or in a catch-up: [`Arrival`]),
//!   local edits superseded by newer ones elsewhere, security events (those this device caused
//!   itself apart), status, problems.
//!
//! The live loop (stream, reconnects, polling fallback) is in [`crate::live`]; accounts and
//! two-factor authentication in [`crate::account`].
//!
//! Defaults are never written: a new device that has never been edited pushes nothing.
//!
//! Locking: the local state sits behind a plain mutex that is never held across an `.await`, so
//! an edit is acknowledged at disk speed even while a push waits on a slow network. Network
//! rounds (push, pull) are serialised by a second, async lock.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use lockstep_protocol::{
    devices::DeviceInfo,
    errors::Code,
    settings::{self, SettingError},
    sync::{ChangeEvent, PushResponse, SettingRow},
};
use serde_json::Value;
use tokio::sync::{Notify, broadcast, watch};

use crate::{
    api::ApiError,
    feed::{self, FeedEffect, SecurityEvent},
    keychain::{Keychain, KeychainError},
    plan::{self, PlannedPush},
    session::{SessionError, SessionKeeper},
    store::{HistoryEntry, OutboxEntry, ProfileStore, Refusal, StoreError, Tx, View},
};

/// Changes read per page when catching up.
const PAGE: u32 = 500;

/// One device identity on this machine.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub dir: PathBuf,
    pub device: DeviceInfo,
    /// How many versions of each key the local history keeps.
    pub history_limit: usize,
}

/// How this device is connected to the server. Serialised in snake case (`step_up_required`)
/// for the CLI's `--json` and the desktop window (see [`crate::report`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
#[serde(rename_all = "snake_case")]
#[ts(export)]
pub enum Connection {
    /// Not started, or between attempts.
    Connecting,
    /// The live stream is open: changes elsewhere arrive at once.
    Live,
    /// The stream keeps failing; the change log is polled instead (and the stream retried).
    Polling,
    /// The server cannot be reached; edits queue locally.
    Offline,
    /// Sync is paused by the user.
    Paused,
    /// Another Lockstep process on this profile (the desktop app, or `lockstep watch`) holds
    /// the connection; what it receives shows here at once, and edits made here are queued for
    /// it to send.
    Shared,
    /// Two-factor authentication is on for the account and this session must verify a code.
    StepUpRequired,
    /// Not signed in (never, signed out here, or signed out by another device).
    SignedOut,
}

impl Connection {
    /// A short label for a status line: `Live`, `Polling`, `Offline`, ….
    pub fn label(&self) -> &'static str {
        match self {
            Connection::Connecting => "Connecting",
            Connection::Live => "Live",
            Connection::Polling => "Polling",
            Connection::Offline => "Offline",
            Connection::Paused => "Paused",
            Connection::Shared => "Shared",
            Connection::StepUpRequired => "Code needed",
            Connection::SignedOut => "Signed out",
        }
    }
}

/// How a remote change reached this device: as it happened, or in a catch-up (which may bring
/// changes minutes or days old, many at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// As it happened: streamed while live, read by a poll (the stream cannot be used), or taken
    /// from the process on this profile that holds the connection.
    Live,
    /// In a catch-up: read while (re)connecting, so made while this device was away: at start,
    /// after a sign-in, after being offline, paused or asked for a code (the pull pages after
    /// connecting, a full pull, and what the stream replays before it says it is live).
    CatchUp,
}

impl Arrival {
    /// How the changes applied now arrive, by this device's connection: current while it is
    /// live, polling or shared with the process that is; a catch-up otherwise.
    fn for_connection(connection: &Connection) -> Arrival {
        match connection {
            Connection::Live | Connection::Polling | Connection::Shared => Arrival::Live,
            Connection::Connecting
            | Connection::Offline
            | Connection::Paused
            | Connection::StepUpRequired
            | Connection::SignedOut => Arrival::CatchUp,
        }
    }
}

/// The state a status line shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    pub connection: Connection,
    /// Keys with a local edit the server has not acknowledged yet (a key edited twice counts
    /// once: only its newest edit is sent).
    pub pending: usize,
    /// Edits the server refused for good, kept aside (see [`Engine::set_aside`]).
    pub set_aside: usize,
    /// When a push and pull last succeeded (Unix milliseconds).
    pub last_synced_ms: Option<i64>,
}

/// What the engine tells its front end.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// A setting changed elsewhere: on another device, or on this one by another process on
    /// its profile (a `lockstep set` while the app runs: `device_id` is then this device's).
    /// `old` and `new` are effective values (a default when the key is unset); the values of
    /// sensitive keys are left out.
    RemoteChange {
        key: String,
        old: Option<Value>,
        new: Option<Value>,
        /// The device that wrote it, when known.
        device_id: Option<String>,
        device_name: Option<String>,
        arrival: Arrival,
    },
    /// A local edit lost to a newer edit made elsewhere: what was lost, and what stands.
    Superseded {
        key: String,
        lost: Value,
        winner: SettingRow,
    },
    /// The server refused a local edit for good; it is kept aside, not sent, and the rest of
    /// the outbox goes on syncing (see [`Engine::set_aside`]).
    SetAside { key: String, reason: String },
    /// Something about the account's security changed (by another device, the server or a
    /// browser).
    Security(SecurityEvent),
    /// A security change this device made itself (two-factor authentication turned on, a
    /// device removed), as the account's feed tells it back: for the window, never an alert.
    OwnSecurity(SecurityEvent),
    /// Connection, pending edits or last sync changed.
    Status(SyncStatus),
    /// Something the user should know about local state (a repaired or rebuilt file).
    Problem(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(#[from] SettingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Keychain(#[from] KeychainError),
    /// The request makes no sense in the current state (e.g. no second factor to verify).
    #[error("{0}")]
    State(String),
}

impl EngineError {
    /// The server could not be reached (worth retrying later; edits stay queued).
    pub fn is_offline(&self) -> bool {
        match self {
            EngineError::Api(e) | EngineError::Session(SessionError::Api(e)) => e.is_transient(),
            _ => false,
        }
    }

    /// The session ended on the server (signed out, revoked), or there is none.
    pub fn is_signed_out(&self) -> bool {
        matches!(
            self,
            EngineError::Session(SessionError::SignedOut | SessionError::Ended(_))
        ) || matches!(self, EngineError::Api(e) if e.is_session_gone())
    }

    /// How long the server asked to wait before the next try (`Retry-After`), if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            EngineError::Api(e) | EngineError::Session(SessionError::Api(e)) => e.retry_after(),
            _ => None,
        }
    }

    /// The account needs a second factor from this session.
    pub fn needs_second_factor(&self) -> bool {
        matches!(self, EngineError::Api(e) | EngineError::Session(SessionError::Api(e)) if e.needs_second_factor())
    }
}

/// What one sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Outbox entries the server acknowledged (several edits of one key count each).
    pub pushed: usize,
    /// Edits the server refused for good and that were set aside.
    pub set_aside: usize,
    pub superseded: usize,
    pub remote_changes: usize,
    pub full_pull: bool,
}

/// Where "now" comes from, in Unix milliseconds; injected so tests control time.
pub type ClockMs = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What the engine keeps in memory beside the store: decisions of this process alone.
#[derive(Debug, Default)]
struct Flags {
    /// The next pull rebuilds the cache from the server's rows.
    needs_full_pull: bool,
    /// A feed entry said this device's session may have ended (by the named device): the
    /// live loop checks with the server.
    session_check: Option<Option<String>>,
}

/// The outbox's counts, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pending: usize,
    set_aside: usize,
}

impl Counts {
    fn of(view: &View) -> Counts {
        Counts {
            pending: view.pending(),
            set_aside: view.set_aside().count(),
        }
    }
}

/// The engine of one profile.
pub struct Engine {
    /// The profile as opened; [`Engine::profile`] answers its newest version.
    profile: Profile,
    /// This device renamed while the engine runs ([`crate::rename`]).
    pub(crate) renames: crate::rename::Renames,
    session: SessionKeeper,
    keychain: Keychain,
    /// The profile's database, on its own thread.
    store: ProfileStore,
    flags: Mutex<Flags>,
    /// One network round (push or pull) at a time.
    round: tokio::sync::Mutex<()>,
    events: broadcast::Sender<EngineEvent>,
    status: watch::Sender<SyncStatus>,
    /// Woken by each local edit, so the live loop pushes at once.
    pub(crate) edited: Notify,
    /// Woken by "sync now", a sign-in or a step-up, so the live loop retries at once.
    pub(crate) kick: Arc<Notify>,
    /// The app lock's code checker (remembers the last accepted step).
    pub(crate) codes: crate::totp::CodeChecker,
    /// This engine's name in the live loop's lease (unique per open).
    pub(crate) lease_holder: String,
    now_ms: ClockMs,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("profile", &self.profile.name)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the profile's local state. Problems found on the way (a damaged database set
    /// aside, edits that could not be read) are returned for the front end to show.
    pub fn open(
        profile: Profile,
        session: SessionKeeper,
        keychain: Keychain,
    ) -> Result<(Engine, Vec<String>), EngineError> {
        let seal = keychain.local_seal_blocking()?;
        let (store, report) = ProfileStore::open(
            &profile.dir,
            Some(seal),
            &profile.device.id,
            profile.history_limit,
        )?;
        let problems = report.problems();
        let counts = store.call_blocking(|db| db.read(Counts::of))?;
        // The cache may still show a refused edit (written before it was set aside): the next
        // sync rebuilds it from the server.
        let needs_full_pull = report.needs_full_pull() || counts.set_aside > 0;
        let (events, _) = broadcast::channel(1024);
        let (status, _) = watch::channel(SyncStatus {
            connection: Connection::Connecting,
            pending: counts.pending,
            set_aside: counts.set_aside,
            last_synced_ms: None,
        });
        let engine = Engine {
            profile,
            renames: Default::default(),
            session,
            keychain,
            store,
            flags: Mutex::new(Flags {
                needs_full_pull,
                session_check: None,
            }),
            round: tokio::sync::Mutex::new(()),
            events,
            status,
            edited: Notify::new(),
            kick: Arc::new(Notify::new()),
            codes: crate::totp::CodeChecker::default(),
            lease_holder: uuid::Uuid::new_v4().to_string(),
            now_ms: Arc::new(crate::clock_ms),
        };
        Ok((engine, problems))
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, now_ms: ClockMs) -> Engine {
        self.now_ms = now_ms;
        self
    }

    /// The profile, with this device's current name (it may change while the engine runs:
    /// see [`crate::rename`]).
    pub fn profile(&self) -> &Profile {
        self.renames.latest(&self.profile)
    }

    pub fn session(&self) -> &SessionKeeper {
        &self.session
    }

    pub fn keychain(&self) -> &Keychain {
        &self.keychain
    }

    /// The profile's store (its database, on a thread of its own).
    pub fn store(&self) -> &ProfileStore {
        &self.store
    }

    pub(crate) fn now_ms(&self) -> i64 {
        (self.now_ms)()
    }

    fn flags(&self) -> MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the view (waiting for the store: for the synchronous API). A store that cannot
    /// be read is reported and reads as `fallback`.
    fn read<R: Send + 'static>(
        &self,
        fallback: R,
        f: impl FnOnce(&View) -> R + Send + 'static,
    ) -> R {
        match self.store.call_blocking(move |db| db.read(f)) {
            Ok(value) => value,
            Err(error) => {
                tracing::warn!(%error, "could not read the profile");
                self.emit(EngineEvent::Problem(error.to_string()));
                fallback
            }
        }
    }

    /// Reads the view, awaiting the store.
    pub(crate) async fn read_async<R: Send + 'static>(
        &self,
        f: impl FnOnce(&View) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        Ok(self.store.call(move |db| db.read(f)).await?)
    }

    /// Runs `f` as one durable transaction, awaiting the store; the status's counts follow.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, EngineError> {
        let (value, counts) = self
            .store
            .call(move |db| {
                db.write(|tx| {
                    let value = f(tx)?;
                    Ok((value, Counts::of(tx.view())))
                })
            })
            .await?;
        self.publish_counts(counts);
        Ok(value)
    }

    /// [`Engine::write`] for the synchronous API: waits for the store.
    fn write_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, EngineError> {
        let (value, counts) = self.store.call_blocking(move |db| {
            db.write(|tx| {
                let value = f(tx)?;
                Ok((value, Counts::of(tx.view())))
            })
        })?;
        self.publish_counts(counts);
        Ok(value)
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// The current status, and its changes.
    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    pub(crate) fn emit(&self, event: EngineEvent) {
        let _ = self.events.send(event);
    }

    /// Updates the status and announces it when it changed.
    pub(crate) fn update_status(&self, change: impl FnOnce(&mut SyncStatus)) {
        let mut announce = None;
        self.status.send_if_modified(|status| {
            let before = status.clone();
            change(status);
            let changed = *status != before;
            if changed {
                announce = Some(status.clone());
            }
            changed
        });
        if let Some(status) = announce {
            self.emit(EngineEvent::Status(status));
        }
    }

    fn publish_counts(&self, counts: Counts) {
        self.update_status(|s| {
            s.pending = counts.pending;
            s.set_aside = counts.set_aside;
        });
    }

    pub(crate) fn set_connection(&self, connection: Connection) {
        self.update_status(|s| s.connection = connection);
    }

    /// The effective value of a key (device-only value, else synced value, else default).
    pub fn get(&self, key: &str) -> Option<Value> {
        let key = key.to_owned();
        self.read(None, move |v| v.cache.effective(&key))
    }

    /// Every effective value.
    pub fn all(&self) -> BTreeMap<String, Value> {
        self.read(BTreeMap::new(), |v| v.cache.effective_all())
    }

    /// The synced row of a key (who last changed it, and when), if it was ever written.
    pub fn row(&self, key: &str) -> Option<SettingRow> {
        let key = key.to_owned();
        self.read(None, move |v| v.cache.rows.get(&key).cloned())
    }

    /// Every synced row (tombstones included), by key.
    pub fn rows(&self) -> BTreeMap<String, SettingRow> {
        self.read(BTreeMap::new(), |v| v.cache.rows.clone())
    }

    /// Whether `key` is kept to this device.
    pub fn is_device_only(&self, key: &str) -> bool {
        let key = key.to_owned();
        self.read(false, move |v| v.cache.is_device_local(&key))
    }

    /// The keys kept to this device.
    pub fn device_only_keys(&self) -> std::collections::BTreeSet<String> {
        self.read(Default::default(), |v| v.cache.device_local.clone())
    }

    /// Keys with an edit waiting for the server (set-aside edits not counted).
    pub fn pending(&self) -> usize {
        self.read(0, View::pending)
    }

    /// Whether an edit of `key` is queued to be sent (not yet acknowledged by the server).
    pub fn is_pending(&self, key: &str) -> bool {
        let key = key.to_owned();
        self.read(false, move |v| {
            v.outbox
                .iter()
                .any(|e| e.key == key && e.set_aside.is_none())
        })
    }

    /// The edits the server refused for good, oldest first. They are kept (not sent) until
    /// [retried](Engine::retry_set_aside), [dropped](Engine::drop_set_aside) or replaced by a
    /// newer edit of the same key.
    pub fn set_aside(&self) -> Vec<SetAsideEdit> {
        self.read(Vec::new(), |v| {
            v.set_aside()
                .filter_map(|e| {
                    e.set_aside.as_ref().map(|refusal| SetAsideEdit {
                        key: e.key.clone(),
                        value: (!e.deleted).then(|| feed::shown_value(&e.key, &e.value)),
                        reason: refusal.reason.clone(),
                        recorded_at_ms: e.recorded_at_ms,
                        refused_at_ms: refusal.at_ms,
                    })
                })
                .collect()
        })
    }

    /// Sends the set-aside edits of `key` (all when `None`) again at the next sync (after the
    /// server or the schema changed, say). Returns how many were released.
    pub fn retry_set_aside(&self, key: Option<&str>) -> Result<usize, EngineError> {
        let key = key.map(str::to_owned);
        let released =
            self.write_blocking(move |tx| Ok(tx.retry_set_aside(key.as_deref())?.len()))?;
        if released > 0 {
            self.edited.notify_one();
        }
        Ok(released)
    }

    /// Gives up on the set-aside edits of `key` (all when `None`): they are removed from the
    /// outbox for good. Returns how many were dropped.
    pub fn drop_set_aside(&self, key: Option<&str>) -> Result<usize, EngineError> {
        let key = key.map(str::to_owned);
        self.write_blocking(move |tx| tx.drop_set_aside(key.as_deref()))
    }

    /// The feed position this device has applied.
    pub fn cursor(&self) -> i64 {
        self.read(0, |v| v.cache.cursor)
    }

    /// [`Engine::cursor`], awaiting the store (for async code).
    pub(crate) async fn cursor_async(&self) -> Result<i64, EngineError> {
        self.read_async(|v| v.cache.cursor).await
    }

    /// Sets a key. Returns once the edit is durably queued (acknowledged); it syncs later.
    pub fn set(&self, key: &str, value: Value) -> Result<(), EngineError> {
        settings::validate(key, &value)?;
        self.record(vec![(key.to_owned(), value, false)])
    }

    /// Sets several keys as one durable step: all are validated first, and none is queued if
    /// any is invalid.
    pub fn set_many(&self, edits: Vec<(String, Value)>) -> Result<(), EngineError> {
        for (key, value) in &edits {
            settings::validate(key, value)?;
        }
        self.record(edits.into_iter().map(|(k, v)| (k, v, false)).collect())
    }

    /// Resets a key to its default everywhere (a tombstone that syncs).
    pub fn reset(&self, key: &str) -> Result<(), EngineError> {
        settings::spec(key)?;
        self.record(vec![(key.to_owned(), Value::Null, true)])
    }

    /// Keeps `key` on this device only (its value never leaves the device), or shares it again.
    pub fn set_device_only(&self, key: &str, only_here: bool) -> Result<(), EngineError> {
        settings::spec(key)?;
        let key = key.to_owned();
        let now = self.now_ms();
        self.write_blocking(move |tx| {
            if only_here {
                let current = tx.view().cache.effective(&key);
                tx.set_device_local(&key, current, now)
            } else {
                tx.clear_device_local(&key)
            }
        })
    }

    /// The local history of `key`, newest first: every value it had on this device (set here
    /// or arrived from elsewhere), up to the store's limit. Sensitive values are redacted.
    pub fn history(&self, key: &str) -> Result<Vec<HistoryEntry>, EngineError> {
        settings::spec(key)?;
        let key = key.to_owned();
        let mut versions: Vec<HistoryEntry> = self
            .store
            .call_blocking(move |db| db.history(&key))?
            .into_iter()
            .map(shown_version)
            .collect();
        for version in &mut versions {
            // This device's own versions are stored before the server names them.
            if version.device_name.is_none()
                && version.device_id.as_deref() == Some(self.profile.device.id.as_str())
            {
                version.device_name = Some(self.profile().device.name.clone());
            }
        }
        Ok(versions)
    }

    /// Sets `key` back to the value it had at history `version` (or, when `None`, to the value
    /// before its current one), as a new edit that syncs like any other. Returns the version
    /// restored.
    pub fn restore(&self, key: &str, version: Option<i64>) -> Result<HistoryEntry, EngineError> {
        settings::spec(key)?;
        let owned = key.to_owned();
        let versions = self.store.call_blocking(move |db| db.history(&owned))?;
        let chosen = match version {
            Some(n) => versions.into_iter().find(|v| v.version == n).ok_or_else(|| {
                EngineError::State(format!(
                    "{key} has no version {n} in this device's history; see `lockstep history {key}`"
                ))
            })?,
            None => versions.into_iter().nth(1).ok_or_else(|| {
                EngineError::State(format!(
                    "{key} has no earlier value in this device's history"
                ))
            })?,
        };
        match &chosen.value {
            Some(value) => self.set(key, value.clone())?,
            None => self.reset(key)?,
        }
        Ok(shown_version(chosen))
    }

    fn record(&self, edits: Vec<(String, Value, bool)>) -> Result<(), EngineError> {
        let now = self.now_ms();
        self.write_blocking(move |tx| {
            let mut queued = Vec::new();
            for (key, value, deleted) in edits {
                if tx.view().cache.is_device_local(&key) {
                    // Device-only values never leave the device: stored, not queued.
                    tx.set_device_local(&key, (!deleted).then_some(value), now)?;
                } else {
                    let hlc = tx.tick(now);
                    queued.push(OutboxEntry::new(key, value, hlc, deleted, now));
                }
            }
            // Committed when this returns: the edits are acknowledged.
            tx.queue(&queued)
        })?;
        self.edited.notify_one();
        Ok(())
    }

    /// Pushes the outbox and pulls what changed elsewhere.
    pub async fn sync_once(&self) -> Result<SyncReport, EngineError> {
        let _round = self.round.lock().await;
        let mut report = SyncReport::default();
        self.push_locked(&mut report).await?;
        self.pull_locked(&mut report).await?;
        let now = self.now_ms();
        self.update_status(|s| s.last_synced_ms = Some(now));
        Ok(report)
    }

    /// Pushes the outbox only (and rebuilds the cache from the server if an edit was set
    /// aside, so that it no longer shows the refused value).
    pub async fn push(&self) -> Result<SyncReport, EngineError> {
        let _round = self.round.lock().await;
        let mut report = SyncReport::default();
        self.push_locked(&mut report).await?;
        if report.set_aside > 0 {
            self.pull_locked(&mut report).await?;
        }
        let now = self.now_ms();
        self.update_status(|s| s.last_synced_ms = Some(now));
        Ok(report)
    }

    /// Whether a session check is due (see [`Flags::session_check`]).
    pub(crate) fn session_check_due(&self) -> bool {
        self.flags().session_check.is_some()
    }

    /// Takes the due session check: `Some(by)` if one was due.
    pub(crate) fn take_session_check(&self) -> Option<Option<String>> {
        self.flags().session_check.take()
    }

    /// Wakes the live loop: sync now, retry what was waiting.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Calls the server with a fresh token, refreshing once if the token was refused as expired.
    pub(crate) async fn with_token<T, F, Fut>(&self, call: F) -> Result<T, EngineError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let token = self.session.access_token().await?;
        match call(token.clone()).await {
            Err(e) if e.is_token_expired() => {
                let token = self.session.refresh_after_rejection(&token).await?;
                Ok(call(token).await?)
            }
            other => Ok(other?),
        }
    }

    /// Sends the outbox, one planned push at a time, until nothing is left to send.
    async fn push_locked(&self, report: &mut SyncReport) -> Result<(), EngineError> {
        loop {
            let entries = self.read_async(|v| v.outbox.clone()).await?;
            let Some(push) = plan::plan_push(&entries).into_iter().next() else {
                return Ok(());
            };
            match self.send_push(&push).await {
                Ok(answer) => self.settle(&push, answer, report).await?,
                Err(error) if is_refusal(&error) && push.sent.len() > 1 => {
                    // Find the change the server refuses: one push per key.
                    for part in plan::split(&push, &entries) {
                        match self.send_push(&part).await {
                            Ok(answer) => self.settle(&part, answer, report).await?,
                            Err(error) if is_refusal(&error) => {
                                self.put_aside(&part, &error, report).await?;
                            }
                            Err(error) => return Err(error),
                        }
                    }
                }
                Err(error) if is_refusal(&error) => self.put_aside(&push, &error, report).await?,
                Err(error) => return Err(error),
            }
        }
    }

    async fn send_push(&self, push: &PlannedPush) -> Result<PushResponse, EngineError> {
        let client = self.session.client().clone();
        self.with_token(|token| {
            let client = client.clone();
            let request = push.request.clone();
            async move { client.push(&token, &request).await }
        })
        .await
    }

    /// Applies a push's answer and removes what it settled from the outbox, in one
    /// transaction.
    async fn settle(
        &self,
        push: &PlannedPush,
        answer: PushResponse,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let now = self.now_ms();
        let sent = push.sent.clone();
        let settles = push.settles.clone();
        let superseded = self
            .write(move |tx| {
                let mut superseded = Vec::new();
                for row in answer.applied {
                    tx.apply_remote(row, now)?;
                }
                for lost in answer.superseded {
                    let mine = sent.iter().find(|e| e.key == lost.key);
                    tx.apply_remote(lost.current.clone(), now)?;
                    superseded.push(EngineEvent::Superseded {
                        key: lost.key.clone(),
                        lost: mine
                            .map(|e| feed::shown_value(&e.key, &e.value))
                            .unwrap_or(Value::Null),
                        winner: feed::shown_row(lost.current),
                    });
                }
                tx.remove_acknowledged(&settles)?;
                Ok(superseded)
            })
            .await?;
        report.pushed += push.settles.len();
        report.superseded += superseded.len();
        for event in superseded {
            self.emit(event);
        }
        Ok(())
    }

    /// Sets a refused push's edits aside (durably) and schedules a rebuild of the cache from
    /// the server, which undoes what they showed locally.
    async fn put_aside(
        &self,
        push: &PlannedPush,
        error: &EngineError,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let (reason, code) = match error {
            EngineError::Api(api) => (api.message().to_owned(), api.code().map(Code::to_string)),
            other => (other.to_string(), None),
        };
        let refusal = Refusal {
            reason: reason.clone(),
            code,
            at_ms: self.now_ms(),
        };
        let settles = push.settles.clone();
        self.write(move |tx| tx.mark_set_aside(&settles, &refusal))
            .await?;
        self.flags().needs_full_pull = true;
        tracing::warn!(keys = ?push.sent.iter().map(|e| &e.key).collect::<Vec<_>>(), %reason, "the server refused an edit; it is set aside");
        report.set_aside += push.settles.len();
        for entry in &push.sent {
            self.emit(EngineEvent::SetAside {
                key: entry.key.clone(),
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    async fn pull_locked(&self, report: &mut SyncReport) -> Result<(), EngineError> {
        let client = self.session.client().clone();
        loop {
            let needs_full_pull = self.flags().needs_full_pull;
            let since = self.read_async(|v| v.cache.cursor).await?;
            if needs_full_pull || since == 0 {
                // The head first: changes after it are caught up next time (re-applying a
                // row is harmless, the merge rule makes it a no-op).
                let page = self
                    .with_token(|t| {
                        let c = client.clone();
                        async move { c.changes(&t, 0, 1).await }
                    })
                    .await?;
                let rows = self
                    .with_token(|t| {
                        let c = client.clone();
                        async move { c.pull(&t).await }
                    })
                    .await?;
                let mine = self.profile.device.id.clone();
                let now = self.now_ms();
                let arrival = self.arrival();
                let changed = self
                    .write(move |tx| {
                        // The server's rows are the truth; the edits still queued here go on
                        // top.
                        let before = tx.view().cache.clone();
                        let mut rebuilt = before.clone();
                        rebuilt.rows = rows.into_iter().map(|row| (row.key.clone(), row)).collect();
                        for entry in &tx.view().outbox {
                            if entry.set_aside.is_none() {
                                rebuilt.apply_local(entry, &mine);
                            }
                        }
                        let keys: std::collections::BTreeSet<String> = before
                            .rows
                            .keys()
                            .chain(rebuilt.rows.keys())
                            .cloned()
                            .collect();
                        let mut changed = Vec::new();
                        for key in keys {
                            let before = before.effective(&key);
                            let after = rebuilt.effective(&key);
                            let Some(row) = rebuilt.rows.get(&key) else {
                                continue;
                            };
                            if before != after && row.device_id != mine {
                                let writer = Writer {
                                    device_id: Some(row.device_id.clone()),
                                    device_name: row.device_name.clone(),
                                };
                                changed.push(remote_change(key, before, after, writer, arrival));
                            }
                        }
                        tx.replace_rows(rebuilt.rows, now)?;
                        tx.set_cursor(page.head)?;
                        Ok(changed)
                    })
                    .await?;
                self.flags().needs_full_pull = false;
                report.full_pull = true;
                report.remote_changes += changed.len();
                for event in changed {
                    self.emit(event);
                }
                return Ok(());
            }
            let page = self
                .with_token(|t| {
                    let c = client.clone();
                    async move { c.changes(&t, since, PAGE).await }
                })
                .await?;
            if page.must_refetch {
                self.flags().needs_full_pull = true;
                continue;
            }
            let count = page.changes.len();
            report.remote_changes += self.apply_changes(page.changes).await?;
            if count < PAGE as usize {
                return Ok(());
            }
        }
    }

    /// Marks the cache for a full pull at the next sync (the feed no longer reaches back).
    pub(crate) fn require_full_pull(&self) {
        self.flags().needs_full_pull = true;
    }

    /// How the changes applied now arrive (see [`Arrival::for_connection`]).
    fn arrival(&self) -> Arrival {
        Arrival::for_connection(&self.status.borrow().connection)
    }

    /// Applies feed entries (from the stream or the change log) as one transaction and tells
    /// the front end what they mean. Returns how many settings changed because of another
    /// device.
    pub(crate) async fn apply_changes(
        &self,
        changes: Vec<ChangeEvent>,
    ) -> Result<usize, EngineError> {
        if changes.is_empty() {
            return Ok(0);
        }
        let mine = self.profile.device.id.clone();
        let now = self.now_ms();
        let arrival = self.arrival();
        let (events, session_check, renamed) = self
            .write(move |tx| {
                let mut events = Vec::new();
                let mut session_check = None;
                let mut renamed = None;
                for change in changes {
                    let seq = change.seq;
                    if seq <= tx.view().cache.cursor {
                        // Already applied (a replay after a reconnect): nothing to do.
                        continue;
                    }
                    let by_this_device = change.device_id.as_deref() == Some(mine.as_str());
                    match feed::interpret(&change, &mine) {
                        FeedEffect::Setting(row) => {
                            let key = row.key.clone();
                            let before = tx.view().cache.effective(&key);
                            if tx.apply_remote(row, now)? && !by_this_device {
                                let after = tx.view().cache.effective(&key);
                                if before != after {
                                    let writer = Writer {
                                        device_id: change.device_id.clone(),
                                        device_name: change.device_name.clone(),
                                    };
                                    events.push(remote_change(key, before, after, writer, arrival));
                                }
                            }
                        }
                        FeedEffect::Security(SecurityEvent::SessionEndedHere { by }) => {
                            session_check = Some(by);
                        }
                        FeedEffect::Security(event) if by_this_device => {
                            events.push(EngineEvent::OwnSecurity(event));
                        }
                        FeedEffect::Security(event) => events.push(EngineEvent::Security(event)),
                        FeedEffect::RenamedHere { name } => renamed = Some(name),
                        FeedEffect::Nothing => {}
                    }
                    tx.advance_cursor(seq)?;
                }
                Ok((events, session_check, renamed))
            })
            .await?;
        if let Some(name) = renamed {
            self.take_device_name(&name).await;
        }
        if let Some(by) = session_check {
            self.flags().session_check = Some(by);
        }
        let changed = events
            .iter()
            .filter(|e| matches!(e, EngineEvent::RemoteChange { .. }))
            .count();
        for event in events {
            self.emit(event);
        }
        Ok(changed)
    }

    /// Takes in what another process on this profile changed (an edit queued by a `lockstep`
    /// command while the app runs, changes applied by the process that runs the live loop):
    /// announces the settings it changed and, when the outbox changed, wakes the push.
    pub(crate) async fn take_in_elsewhere(&self) -> Result<(), EngineError> {
        let (elsewhere, view) = self
            .store
            .call(|db| {
                let elsewhere = db.take_elsewhere()?;
                let view = db.read(|v| {
                    (
                        elsewhere
                            .changed
                            .keys()
                            .map(|k| {
                                (
                                    k.clone(),
                                    v.cache.effective(k),
                                    v.cache.rows.get(k).cloned(),
                                )
                            })
                            .collect::<Vec<_>>(),
                        Counts::of(v),
                    )
                })?;
                Ok((elsewhere, view))
            })
            .await?;
        let (now, counts) = view;
        if elsewhere.seal_changed {
            // Another process wiped the profile and gave it a new local key: take it.
            let keychain = self.keychain.clone();
            let seal = tokio::task::spawn_blocking(move || keychain.local_seal_blocking())
                .await
                .map_err(|_| KeychainError::Failed("the keychain call was cancelled".into()))??;
            self.store.call(move |db| db.set_seal(Some(seal))).await?;
        }
        self.publish_counts(counts);
        let arrival = self.arrival();
        for (key, after, row) in now {
            let before = elsewhere.changed.get(&key).cloned().flatten();
            if before != after {
                let writer = match row {
                    Some(row) if row.device_id != self.profile.device.id => Writer {
                        device_id: Some(row.device_id),
                        device_name: row.device_name,
                    },
                    // An edit made on this device (a `lockstep set`, a device-only value).
                    _ => Writer {
                        device_id: Some(self.profile.device.id.clone()),
                        device_name: Some(self.profile().device.name.clone()),
                    },
                };
                self.emit(remote_change(key, before, after, writer, arrival));
            }
        }
        if elsewhere.outbox_changed {
            self.edited.notify_one();
        }
        Ok(())
    }

    /// Tries to take (or renew) the lease that lets this engine run the profile's live loop
    /// (one process per profile runs it). Returns whether this engine holds it.
    pub(crate) async fn take_live_lease(
        &self,
        ttl: std::time::Duration,
    ) -> Result<bool, EngineError> {
        let holder = self.lease_holder.clone();
        let now = self.now_ms();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .store
            .call(move |db| db.take_lease(&holder, now, ttl_ms))
            .await?)
    }

    /// Gives the live loop's lease up, if this engine holds it.
    pub(crate) async fn release_live_lease(&self) -> Result<(), EngineError> {
        let holder = self.lease_holder.clone();
        Ok(self.store.call(move |db| db.release_lease(&holder)).await?)
    }

    /// [`Engine::release_live_lease`], waiting for the store (for a `Drop`).
    pub(crate) fn release_live_lease_blocking(&self) -> Result<(), EngineError> {
        let holder = self.lease_holder.clone();
        Ok(self
            .store
            .call_blocking(move |db| db.release_lease(&holder))?)
    }

    /// Forgets everything this profile holds about the account: its secrets in the keychain,
    /// its settings cache, history and queued edits. Returns how many queued edits were
    /// dropped.
    pub async fn wipe(&self) -> Result<usize, EngineError> {
        self.session.forget().await;
        self.keychain.wipe().await?;
        // A new local key for whatever this profile stores next.
        let keychain = self.keychain.clone();
        let seal = tokio::task::spawn_blocking(move || keychain.local_seal_blocking())
            .await
            .map_err(|_| KeychainError::Failed("the keychain call was cancelled".into()))??;
        let (dropped, counts) = self
            .store
            .call(move |db| {
                let dropped = db.write(|tx| {
                    let dropped = tx.view().outbox.len();
                    tx.clear(Some(&seal))?;
                    Ok(dropped)
                })?;
                db.set_seal(Some(seal))?;
                let counts = db.read(Counts::of)?;
                Ok((dropped, counts))
            })
            .await?;
        self.flags().needs_full_pull = true;
        self.publish_counts(counts);
        self.update_status(|s| {
            s.connection = Connection::SignedOut;
            s.last_synced_ms = None;
        });
        Ok(dropped)
    }
}

/// A push refused for good: a 4xx from the server that retrying cannot fix.
fn is_refusal(error: &EngineError) -> bool {
    matches!(error, EngineError::Api(e) if e.is_refusal())
}

/// An edit the server refused for good, as the front ends show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SetAsideEdit {
    pub key: String,
    /// The refused value as shown (sensitive values redacted); `None` for a reset.
    pub value: Option<Value>,
    /// The server's reason.
    pub reason: String,
    /// When the edit was made and when it was refused, Unix milliseconds.
    pub recorded_at_ms: i64,
    pub refused_at_ms: i64,
}

impl SetAsideEdit {
    /// One line for a status display: `appearance.theme: <reason>`.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.key, self.reason)
    }
}

/// The status line for set-aside edits: `1 edit could not be synced: <key>: <reason>`, or
/// `None` when there are none.
pub fn describe_set_aside(edits: &[SetAsideEdit]) -> Option<String> {
    match edits {
        [] => None,
        [one] => Some(format!("1 edit could not be synced: {}", one.describe())),
        many => Some(format!(
            "{} edits could not be synced: {}",
            many.len(),
            many.iter()
                .map(SetAsideEdit::describe)
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// A history version as it may be shown: a sensitive value redacted (see
/// [`feed::shown_value`]).
fn shown_version(mut version: HistoryEntry) -> HistoryEntry {
    version.value = version
        .value
        .map(|value| feed::shown_value(&version.key, &value));
    version
}

/// The device that wrote a change, as far as it is known.
struct Writer {
    device_id: Option<String>,
    device_name: Option<String>,
}

fn remote_change(
    key: String,
    old: Option<Value>,
    new: Option<Value>,
    writer: Writer,
    arrival: Arrival,
) -> EngineEvent {
    let hide = |v: Option<Value>| v.map(|v| feed::shown_value(&key, &v));
    EngineEvent::RemoteChange {
        old: hide(old),
        new: hide(new),
        key,
        device_id: writer.device_id,
        device_name: writer.device_name,
        arrival,
    }
}
