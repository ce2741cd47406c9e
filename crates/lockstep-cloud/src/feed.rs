//! The per-user change feed and its fan-out.
//!
//! Every change to a user's settings, account, devices and sessions is appended to the user's log
//! with the next per-user sequence number, in the same transaction as the change ([`append`]).
//! The log is the source of truth: streams never receive an event that is not in it, and a
//! wake-up carries nothing but "the log may have grown".
//!
//! The fan-out ([`Hub`]) costs one log read per change and user, not per stream. For each user
//! with at least one open stream on this node, one reader task reads the log after the last
//! sequence number it read, once per wake-up, and shares what it read as a [`Batch`] (each
//! change rendered once, as the stream sends it, and what the batch means for sessions and
//! two-factor authentication) with all of the user's streams on the node, over a `broadcast`
//! channel. A wake-up that arrives while the reader is reading makes it read again afterwards.
//!
//! A stream sends only what follows the last sequence number it sent, in order: it drops what it
//! sent already, and whenever the shared batches do not continue from its last one (it fell more
//! than [`BATCHES_BUFFERED`] batches behind, or it opened before the reader knew where the log
//! ended) it reads the log itself from its last sequence number ([`Batch::read`]), then goes on
//! with the shared batches. One user's entries commit in sequence order, so no event can be
//! skipped, duplicated or reordered, whatever happens to the wake-ups and batches.
//!
//! With PostgreSQL, the transaction also sends a `NOTIFY lockstep_feed` naming the user, and
//! every node's listener ([`listen`]) wakes its own reader for that user, so a change written
//! through any node reaches the streams of every node.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
    time::Duration,
};

use axum::body::Bytes;
use lockstep_protocol::{
    feed::{FeedRecord, FeedTable},
    sync::ChangeEvent,
    timestamp::rfc3339_millis,
};
use serde_json::{Value, json};
use sqlx::AnyConnection;
use tokio::sync::{broadcast, watch};

use crate::{
    db::{Backend, feed as log},
    error::ApiResult,
    state::AppState,
};

/// The PostgreSQL channel that carries "user X's feed grew".
pub const NOTIFY_CHANNEL: &str = "lockstep_feed";

/// Entries read from the log per query (by a user's reader, or by a stream catching up).
pub const READ_LIMIT: i64 = 500;

/// Batches a stream may fall behind its user's reader before it reads the log itself (each user
/// with a stream holds a channel of this many slots).
pub const BATCHES_BUFFERED: usize = 16;

/// The fan-out of this node: a reader and a channel of batches per user with an open stream, and
/// the heartbeat every stream of the node follows.
#[derive(Debug)]
pub struct Hub {
    users: Mutex<HashMap<Arc<str>, UserSlot>>,
    /// Ticked every heartbeat interval by one task (started with the first stream).
    heartbeat: watch::Sender<()>,
    ticker: OnceLock<tokio::task::AbortHandle>,
}

/// One user's place in the hub, while the user has streams on this node.
#[derive(Debug)]
struct UserSlot {
    /// Wakes the user's reader; dropping it (the last stream ended) ends the reader.
    wake: watch::Sender<u64>,
    feed: Arc<UserFeed>,
}

/// What a user's reader shares with the user's streams.
#[derive(Debug)]
struct UserFeed {
    batches: broadcast::Sender<Arc<Batch>>,
    reader: watch::Sender<Reader>,
}

/// Where a user's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// Reading the head.
    Starting,
    /// Its batches hold every entry after this sequence number (the head when it started).
    From(i64),
    /// Reading the log failed: the user's streams end (clients reconnect with `Last-Event-ID`).
    Failed,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            users: Mutex::default(),
            heartbeat: watch::channel(()).0,
            ticker: OnceLock::new(),
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.get() {
            ticker.abort();
        }
    }
}

impl Hub {
    /// A subscription to the user's changes, for one stream. Take it BEFORE reading the log, so
    /// an entry committed after that read comes in a batch. The first subscription of a user
    /// starts the user's reader; the last one dropped stops it and frees the user's place.
    pub fn subscribe(state: &AppState, user_id: &str) -> Subscription {
        let hub = &state.hub;
        let mut users = hub.lock();
        let (user_id, feed) = match users.get_key_value(user_id) {
            Some((user_id, slot)) => (user_id.clone(), slot.feed.clone()),
            None => {
                let user_id: Arc<str> = Arc::from(user_id);
                let (wake, woken) = watch::channel(0);
                let feed = Arc::new(UserFeed {
                    batches: broadcast::channel(BATCHES_BUFFERED).0,
                    reader: watch::channel(Reader::Starting).0,
                });
                tokio::spawn(read_for(
                    state.clone(),
                    user_id.clone(),
                    feed.clone(),
                    woken,
                ));
                let slot = UserSlot {
                    wake,
                    feed: feed.clone(),
                };
                users.insert(user_id.clone(), slot);
                (user_id, feed)
            }
        };
        Subscription {
            hub: hub.clone(),
            batches: Some(feed.batches.subscribe()),
            reader: feed.reader.subscribe(),
            aligned: false,
            user_id,
            feed,
        }
    }

    /// Tells the user's reader on this node to read the log.
    pub fn wake(&self, user_id: &str) {
        if let Some(slot) = self.lock().get(user_id) {
            slot.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every user's reader (after a lost PostgreSQL listener connection, when
    /// notifications may have been missed).
    pub fn wake_all(&self) {
        for slot in self.lock().values() {
            slot.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The node's heartbeat: changes every `every` (the first caller's interval starts the one
    /// timer of the node; every stream follows it instead of keeping a timer of its own).
    pub fn heartbeat(self: &Arc<Self>, every: Duration) -> watch::Receiver<()> {
        self.ticker.get_or_init(|| {
            let hub = Arc::downgrade(self);
            let task = tokio::spawn(async move {
                let start = tokio::time::Instant::now() + every;
                let mut ticks = tokio::time::interval_at(start, every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let Some(hub) = hub.upgrade() else { return };
                    hub.heartbeat.send_replace(());
                }
            });
            task.abort_handle()
        });
        self.heartbeat.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, UserSlot>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frees the user's place if it is still `feed`'s and nobody follows it any more (`force`:
    /// whoever follows it; its reader failed).
    fn release(&self, user_id: &str, feed: &Arc<UserFeed>, force: bool) {
        let mut users = self.lock();
        if let Some(slot) = users.get(user_id)
            && Arc::ptr_eq(&slot.feed, feed)
            && (force || feed.batches.receiver_count() == 0)
        {
            users.remove(user_id);
        }
    }

    /// How many users have a place in the hub (tests check that none is left behind).
    #[cfg(test)]
    fn users(&self) -> usize {
        self.lock().len()
    }
}

/// A user's reader: reads the log after the last entry it read, once per wake-up, and shares
/// each page it read as a batch. Ends when the user's last stream ends, or when a read fails.
async fn read_for(
    state: AppState,
    user_id: Arc<str>,
    feed: Arc<UserFeed>,
    mut woken: watch::Receiver<u64>,
) {
    let read = async {
        // Every wake-up from here on makes a read: an entry committed after the head was read
        // wakes us after its commit.
        woken.borrow_and_update();
        let (mut last, _) = {
            let mut conn = state.db.readers.acquire().await?;
            log::head(&mut conn, &user_id).await?
        };
        feed.reader.send_replace(Reader::From(last));
        // `changed` fails once the user's place is freed: no stream follows this reader.
        while woken.changed().await.is_ok() {
            while let Some(batch) = Batch::read(&state, &user_id, last, true).await? {
                last = batch.last_seq();
                let more = batch.is_full();
                // No receiver (the streams just ended) is fine: nobody needs it.
                let _ = feed.batches.send(Arc::new(batch));
                if !more {
                    break;
                }
            }
        }
        ApiResult::Ok(())
    };
    if let Err(error) = read.await {
        tracing::error!(
            ?error,
            user_id = &*user_id,
            "reading the change feed failed; ending the user's streams"
        );
        // The next stream of the user starts a fresh reader; those that follow this one end.
        state.hub.release(&user_id, &feed, true);
        feed.reader.send_replace(Reader::Failed);
    }
}

/// One stream's view of its user's shared batches; dropping the last one of a user frees the
/// user's place in the hub and stops the user's reader.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    user_id: Arc<str>,
    feed: Arc<UserFeed>,
    batches: Option<broadcast::Receiver<Arc<Batch>>>,
    reader: watch::Receiver<Reader>,
    /// Whether this stream checked that it has read as far as the reader started.
    aligned: bool,
}

/// What [`Subscription::next`] found after a stream's last sequence number.
#[derive(Debug)]
pub enum Next {
    /// A shared batch that continues from it (it may begin with entries the stream sent
    /// already: send only those after its last sequence number, [`Batch::after`]).
    Changes(Arc<Batch>),
    /// The shared batches do not continue from it: read the log itself ([`Batch::read`]) up to
    /// its end, then ask again.
    Behind,
    /// The user's reader failed: end the stream.
    Failed,
}

impl Subscription {
    /// The user, shared by all of the user's subscriptions.
    pub fn user_id(&self) -> &Arc<str> {
        &self.user_id
    }

    /// Waits for what follows `last`, the last sequence number the stream sent. Cancel-safe.
    pub async fn next(&mut self, last: i64) -> Next {
        loop {
            match *self.reader.borrow_and_update() {
                Reader::Failed => return Next::Failed,
                Reader::From(start) if !self.aligned => {
                    self.aligned = true;
                    // Entries up to `start` were committed before the reader started: they come
                    // in no batch.
                    if start > last {
                        return Next::Behind;
                    }
                }
                _ => {}
            }
            let Some(batches) = self.batches.as_mut() else {
                return Next::Failed;
            };
            tokio::select! {
                received = batches.recv() => match received {
                    Ok(batch) if batch.last_seq() <= last => {}
                    Ok(batch) if batch.first_seq() > last + 1 => return Next::Behind,
                    Ok(batch) => return Next::Changes(batch),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // What it missed is read from the log: follow from the newest batch on,
                        // or the next batch sent would overrun it again.
                        *batches = batches.resubscribe();
                        return Next::Behind;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Next::Failed,
                },
                changed = self.reader.changed() => {
                    if changed.is_err() {
                        return Next::Failed;
                    }
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.batches.take());
        self.hub.release(&self.user_id, &self.feed, false);
    }
}

/// Consecutive entries of one user's log, read once and sent as they are by every stream.
#[derive(Debug)]
pub struct Batch {
    /// Oldest first; never empty.
    changes: Vec<Rendered>,
    /// Sessions that ended in this batch (a `sessions` `DELETE` entry: every deletion of a
    /// session appends one, see [`crate::events::sessions_ended`]).
    ended_sessions: Vec<String>,
    /// Whether the user has a verified factor, read after this batch when it holds an
    /// `mfa_factors` entry and the reader was asked to check.
    verified_factor: Option<bool>,
    /// Whether the read was cut at [`READ_LIMIT`]: more entries may follow at once.
    full: bool,
}

/// A change as a stream sends it.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub seq: i64,
    /// The whole SSE event (`event: change`, `id:`, `data:`), shared by every stream.
    pub frame: Bytes,
}

impl Batch {
    /// Reads the user's entries after `since` (at most [`READ_LIMIT`]): `None` when there are
    /// none. With `check_mfa`, a batch holding an `mfa_factors` entry also reads whether the user
    /// has a verified factor now (one query per batch, whatever the number of streams).
    pub async fn read(
        state: &AppState,
        user_id: &str,
        since: i64,
        check_mfa: bool,
    ) -> ApiResult<Option<Batch>> {
        let mut conn = state.db.readers.acquire().await?;
        let changes = read_after(state, &mut conn, user_id, since, READ_LIMIT).await?;
        if changes.is_empty() {
            return Ok(None);
        }
        let mut ended_sessions = Vec::new();
        let mut mfa_touched = false;
        for change in &changes {
            match FeedTable::parse(&change.table) {
                Some(FeedTable::Sessions) => {
                    if let Ok(FeedRecord::Session(session)) = FeedRecord::from_event(change)
                        && session.event_type == EventType::Delete
                        && let Some(old) = session.old
                    {
                        ended_sessions.push(old.id);
                    }
                }
                Some(FeedTable::MfaFactors) => mfa_touched = true,
                _ => {}
            }
        }
        let verified_factor = if check_mfa && mfa_touched {
            Some(crate::db::mfa::has_verified_factor(&mut conn, user_id).await?)
        } else {
            None
        };
        Ok(Some(Batch {
            full: changes.len() as i64 >= READ_LIMIT,
            changes: changes
                .iter()
                .map(|change| Rendered {
                    seq: change.seq,
                    frame: crate::realtime::change_frame(change),
                })
                .collect(),
            ended_sessions,
            verified_factor,
        }))
    }

    /// The first entry's sequence number.
    pub fn first_seq(&self) -> i64 {
        self.changes.first().map_or(0, |c| c.seq)
    }

    /// The last entry's sequence number.
    pub fn last_seq(&self) -> i64 {
        self.changes.last().map_or(0, |c| c.seq)
    }

    /// Whether more entries may follow at once (the read was cut at [`READ_LIMIT`]).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// The entries after `last`, oldest first.
    pub fn after(&self, last: i64) -> impl Iterator<Item = &Rendered> {
        self.changes.iter().filter(move |c| c.seq > last)
    }

    /// Whether this batch ends the session (it was signed out or its device revoked).
    pub fn ends_session(&self, session_id: &str) -> bool {
        self.ended_sessions.iter().any(|id| id == session_id)
    }

    /// Whether the user had a verified factor after this batch, when it holds an `mfa_factors`
    /// entry and was read with `check_mfa`; `None` otherwise.
    pub fn verified_factor(&self) -> Option<bool> {
        self.verified_factor
    }
}

pub use lockstep_protocol::feed::EventType;

/// What to append: one changed row.
#[derive(Debug, Clone)]
pub struct Entry {
    pub record: FeedRecord,
    /// The device that made the change, if a device did.
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    /// Whether the row holds a secret: then the entry is sealed at rest.
    pub sensitive: bool,
}

/// Appends an entry to the user's log inside the caller's transaction and returns its sequence
/// number. After the transaction commits, call [`AppState::publish`] for the user.
pub async fn append(
    state: &AppState,
    conn: &mut AnyConnection,
    user_id: &str,
    entry: Entry,
) -> ApiResult<i64> {
    let seq = log::next_seq(&mut *conn, user_id).await?;
    let wire = entry.record.to_wire();
    let payload = json!({
        "table": wire.table.as_str(),
        "eventType": wire.event_type.as_str(),
        "new": wire.new,
        "old": wire.old,
        "device_id": entry.device_id,
        "device_name": entry.device_name,
    })
    .to_string();
    let stored = if entry.sensitive {
        state
            .sealing
            .seal(user_id.as_bytes(), &feed_aad(seq), payload.as_bytes())
    } else {
        payload
    };
    log::insert(&mut *conn, user_id, seq, &stored, state.now_ms()).await?;
    if state.db.backend == Backend::Postgres {
        // Delivered to every listening node when (and only if) the transaction commits. An
        // account change also tells the other nodes to forget their session checks of the user.
        let payload = match entry.record {
            FeedRecord::Setting(_) | FeedRecord::MfaEvent(_) => user_id.to_owned(),
            FeedRecord::User(_)
            | FeedRecord::Device(_)
            | FeedRecord::Session(_)
            | FeedRecord::MfaFactor(_) => format!("{user_id}{ACCOUNT_CHANGED}"),
        };
        log::notify(&mut *conn, NOTIFY_CHANNEL, &payload).await?;
    }
    Ok(seq)
}

fn feed_aad(seq: i64) -> Vec<u8> {
    format!("change_feed:{seq}").into_bytes()
}

/// The user's entries after `since`, oldest first, at most `limit`, opened and decoded.
pub async fn read_after(
    state: &AppState,
    conn: &mut AnyConnection,
    user_id: &str,
    since: i64,
    limit: i64,
) -> ApiResult<Vec<ChangeEvent>> {
    let rows = log::after(conn, user_id, since, limit).await?;
    rows.into_iter()
        .map(|row| {
            let payload = if crate::sealing::DataKeys::is_sealed(&row.payload) {
                let bytes = state
                    .sealing
                    .open(user_id.as_bytes(), &feed_aad(row.seq), &row.payload)
                    .map_err(anyhow::Error::from)?;
                String::from_utf8(bytes).map_err(anyhow::Error::from)?
            } else {
                row.payload
            };
            let mut value: serde_json::Map<String, Value> =
                serde_json::from_str(&payload).map_err(anyhow::Error::from)?;
            value.insert("seq".into(), json!(row.seq));
            value.insert("schema".into(), json!("public"));
            value.insert(
                "commit_timestamp".into(),
                json!(rfc3339_millis(row.created_at)),
            );
            Ok(serde_json::from_value(Value::Object(value)).map_err(anyhow::Error::from)?)
        })
        .collect()
}

/// Ends the `NOTIFY` payload of an entry about the user's sessions, devices, factors or user
/// row: `'<user id> account'`.
pub const ACCOUNT_CHANGED: &str = " account";

/// Listens for `NOTIFY lockstep_feed` and wakes this node's streams, after forgetting the
/// session checks of a user whose account changed. Runs until aborted.
pub async fn listen(
    hub: Arc<Hub>,
    sessions: Arc<crate::session_cache::SessionCache>,
    database_url: String,
) {
    use sqlx::postgres::PgListener;
    loop {
        let mut listener = match PgListener::connect(&database_url).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "feed listener cannot connect; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(%error, "feed listener cannot LISTEN; retrying");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        // Anything committed while we were not listening is found by a read of the log; the
        // account changes among it are not known, so every session check goes.
        sessions.clear();
        hub.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    let user_id = match payload.strip_suffix(ACCOUNT_CHANGED) {
                        Some(user_id) => {
                            sessions.invalidate_user(user_id);
                            user_id
                        }
                        None => payload,
                    };
                    hub.wake(user_id);
                }
                // The connection dropped and was re-established: notifications may be lost.
                Ok(None) => {
                    sessions.clear();
                    hub.wake_all();
                }
                Err(error) => {
                    tracing::warn!(%error, "feed listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// How often the change feed is pruned, across all nodes on one database.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Prunes the change feed if no other node has within the last [`PRUNE_EVERY`] (minus a
/// margin, so nodes whose timers drift still prune once per period): `None` when another node
/// holds the lease.
pub async fn prune_if_due(state: &AppState) -> ApiResult<Option<u64>> {
    const MARGIN: std::time::Duration = std::time::Duration::from_secs(300);
    crate::nodes::run_leased(state, "prune_feed", PRUNE_EVERY - MARGIN, prune(state)).await
}

/// Drops log entries older than the retention, so the log does not grow without bound. A stream
/// or poll asking for a pruned range is told to refetch.
pub async fn prune(state: &AppState) -> ApiResult<u64> {
    let retention = time::Duration::days(state.config.feed_retention_days);
    let cutoff = crate::clock::to_millis(state.clock.now() - retention);
    let mut conn = state.db.pool.acquire().await?;
    Ok(log::prune(&mut conn, cutoff).await?)
}

#[cfg(test)]
pub(crate) mod tests {
    use lockstep_protocol::feed::{Change, SessionRecord};

    use super::*;

    /// How long a test waits for something that should happen at once (a bound, not a claim).
    const WAIT: Duration = Duration::from_secs(15);

    /// A node on a fresh SQLite database of its own.
    pub(crate) async fn node() -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config::for_data_dir(dir.path());
        let clock = Arc::new(crate::clock::ManualClock::starting_now());
        let state = AppState::new(config, clock).await.unwrap();
        (dir, state)
    }

    /// Appends a `sessions` entry about `session` to the user's log, commits and wakes the
    /// user's reader, as a write does; returns its sequence number.
    pub(crate) async fn write(
        state: &AppState,
        user_id: &str,
        session: &str,
        event_type: EventType,
    ) -> i64 {
        let record = SessionRecord {
            id: session.to_owned(),
            device_id: None,
            aal: "aal1".to_owned(),
            user_id: None,
            created_at: None,
            reason: None,
        };
        let (new, old) = match event_type {
            EventType::Delete => (None, Some(record)),
            _ => (Some(record), None),
        };
        let entry = Entry {
            record: FeedRecord::Session(Change {
                event_type,
                new,
                old,
            }),
            device_id: None,
            device_name: None,
            sensitive: false,
        };
        let mut tx = state.db.pool.begin().await.unwrap();
        let seq = append(state, &mut tx, user_id, entry).await.unwrap();
        tx.commit().await.unwrap();
        state.hub.wake(user_id);
        seq
    }

    /// Waits until the user's reader has read where the log ends.
    pub(crate) async fn started(subscription: &mut Subscription) {
        let started = subscription
            .reader
            .wait_for(|reader| *reader != Reader::Starting);
        tokio::time::timeout(WAIT, started).await.unwrap().unwrap();
    }

    async fn next(subscription: &mut Subscription, last: i64) -> Next {
        tokio::time::timeout(WAIT, subscription.next(last))
            .await
            .expect("an answer in time")
    }

    /// Writes `n` entries and makes the reader share each in a batch of its own (`watcher` sees
    /// each before the next is written): more than [`BATCHES_BUFFERED`] overflow a subscriber
    /// that reads none of them. Returns the last sequence number.
    pub(crate) async fn write_batches(
        state: &AppState,
        watcher: &mut Subscription,
        user_id: &str,
        n: usize,
    ) -> i64 {
        started(watcher).await;
        let mut seen = 0;
        for _ in 0..n {
            let seq = write(state, user_id, "s1", EventType::Insert).await;
            match next(watcher, seen).await {
                Next::Changes(batch) => {
                    assert_eq!((batch.first_seq(), batch.last_seq()), (seq, seq))
                }
                other => panic!("the watcher keeps up, yet got {other:?}"),
            }
            seen = seq;
        }
        seen
    }

    /// Reads the log itself after `last` to its end, as a stream that fell behind does; returns
    /// the sequence numbers read.
    async fn catch_up(state: &AppState, user_id: &str, last: &mut i64) -> Vec<i64> {
        let mut read = Vec::new();
        while let Some(batch) = Batch::read(state, user_id, *last, false).await.unwrap() {
            read.extend(batch.after(*last).map(|c| c.seq));
            *last = batch.last_seq();
            if !batch.is_full() {
                break;
            }
        }
        read
    }

    fn seqs(batch: &Batch, last: i64) -> Vec<i64> {
        batch.after(last).map(|c| c.seq).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_lagged_reads_the_log_itself_and_ends_with_no_gap() {
        let (_dir, state) = node().await;
        let mut watcher = Hub::subscribe(&state, "ada");
        let mut lagger = Hub::subscribe(&state, "ada");
        let written = write_batches(&state, &mut watcher, "ada", BATCHES_BUFFERED + 6).await;

        let mut last = 0;
        assert!(
            matches!(next(&mut lagger, last).await, Next::Behind),
            "it lagged"
        );
        let caught_up = catch_up(&state, "ada", &mut last).await;
        assert_eq!(caught_up, (1..=written).collect::<Vec<_>>());
        // The shared batches it still holds are behind it now; the next one continues from it.
        let seq = write(&state, "ada", "s1", EventType::Insert).await;
        match next(&mut lagger, last).await {
            Next::Changes(batch) => assert_eq!(seqs(&batch, last), [written + 1]),
            other => panic!("{other:?}"),
        }
        assert_eq!(seq, written + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_behind_where_the_reader_started_reads_the_log_itself() {
        let (_dir, state) = node().await;
        for _ in 0..3 {
            write(&state, "ada", "s1", EventType::Insert).await;
        }
        // A stream that resumes after 1 subscribes; the user's reader starts at the head, 3.
        let mut subscription = Hub::subscribe(&state, "ada");
        let mut last = 1;
        assert!(matches!(next(&mut subscription, last).await, Next::Behind));
        assert_eq!(catch_up(&state, "ada", &mut last).await, [2, 3]);
        write(&state, "ada", "s1", EventType::Insert).await;
        match next(&mut subscription, last).await {
            Next::Changes(batch) => assert_eq!(seqs(&batch, last), [4]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_read_per_change_is_shared_by_every_subscriber_of_the_user() {
        let (_dir, state) = node().await;
        let mut subscriptions: Vec<_> = (0..5).map(|_| Hub::subscribe(&state, "ada")).collect();
        let mut bob = Hub::subscribe(&state, "bob");
        for subscription in &mut subscriptions {
            started(subscription).await;
        }
        started(&mut bob).await;
        let seq = write(&state, "ada", "s1", EventType::Insert).await;
        let mut batches = Vec::new();
        for subscription in &mut subscriptions {
            match next(subscription, seq - 1).await {
                Next::Changes(batch) => batches.push(batch),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            batches.iter().all(|b| Arc::ptr_eq(b, &batches[0])),
            "one batch, read once, for all"
        );
        let frame = &batches[0].changes[0].frame;
        assert!(frame.starts_with(format!("event: change\nid: {seq}\ndata: ").as_bytes()));
        // Bob's streams are not woken by Ada's change.
        assert!(bob.batches.as_mut().unwrap().try_recv().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_tells_which_sessions_it_ended() {
        let (_dir, state) = node().await;
        write(&state, "ada", "s1", EventType::Insert).await;
        write(&state, "ada", "s2", EventType::Delete).await;
        let batch = Batch::read(&state, "ada", 0, true).await.unwrap().unwrap();
        assert_eq!(seqs(&batch, 0), [1, 2]);
        assert!(batch.ends_session("s2"));
        assert!(!batch.ends_session("s1"), "a session that started goes on");
        assert_eq!(
            batch.verified_factor(),
            None,
            "no mfa_factors entry, no query"
        );
        assert!(Batch::read(&state, "ada", 2, true).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_subscription_frees_the_users_place_and_stops_its_reader() {
        let (_dir, state) = node().await;
        let first = Hub::subscribe(&state, "ada");
        let mut second = Hub::subscribe(&state, "ada");
        let _bob = Hub::subscribe(&state, "bob");
        started(&mut second).await;
        assert_eq!(state.hub.users(), 2);
        let reader = Arc::downgrade(&first.feed);
        drop(first);
        assert_eq!(state.hub.users(), 2, "Ada still has a stream");
        drop(second);
        assert_eq!(state.hub.users(), 1, "no place left behind");
        let stopped = async {
            while reader.upgrade().is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(WAIT, stopped)
            .await
            .expect("the reader stops with its user's place");
        // A new stream gets a new reader.
        let mut again = Hub::subscribe(&state, "ada");
        started(&mut again).await;
        assert_eq!(state.hub.users(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_cannot_read_ends_its_users_streams_and_frees_its_place() {
        let (_dir, state) = node().await;
        let mut subscription = Hub::subscribe(&state, "ada");
        started(&mut subscription).await;
        state.db.pool.close().await;
        state.db.readers.close().await;
        state.hub.wake("ada");
        assert!(matches!(next(&mut subscription, 0).await, Next::Failed));
        assert_eq!(
            state.hub.users(),
            0,
            "the next stream starts a fresh reader"
        );
    }
}
