//! The per-user change feed and its fan-out.
//!
//! Every change to a user's settings, account, devices and sessions is appended to the user's log
//! with the next per-user sequence number, in the same transaction as the change ([`append`]).
//! Streams never receive an event that is not in the log: a wake-up only tells them to read the
//! log after the last sequence number they sent, so no event can be skipped, duplicated or
//! reordered, whatever happens to the wake-ups.
//!
//! Wake-ups go through [`Hub`], one `watch` channel per user with at least one open stream: a
//! change costs work for that user's streams only. With PostgreSQL, the transaction also sends
//! `NOTIFY lockstep_feed, '<user id>'`, and every node's listener wakes its own streams, so a
//! change written through any node reaches the streams of every node.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use lockstep_protocol::{feed::FeedRecord, sync::ChangeEvent, timestamp::rfc3339_millis};
use serde_json::{Value, json};
use sqlx::AnyConnection;
use tokio::sync::watch;

use crate::{
    db::{Backend, feed as log},
    error::ApiResult,
    state::AppState,
};

/// The PostgreSQL channel that carries "user X's feed grew".
pub const NOTIFY_CHANNEL: &str = "lockstep_feed";

/// Wake-up channels of the users that have open streams on this node.
#[derive(Debug, Default)]
pub struct Hub {
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Hub {
    /// A subscription to wake-ups for the user. Take it BEFORE reading the log, so a change
    /// committed between the read and the wait is not missed.
    pub fn subscribe(self: &Arc<Self>, user_id: &str) -> Subscription {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let sender = users
            .entry(user_id.to_owned())
            .or_insert_with(|| watch::channel(0).0);
        Subscription {
            hub: self.clone(),
            user_id: user_id.to_owned(),
            rx: Some(sender.subscribe()),
        }
    }

    /// Tells the user's streams on this node to read the log.
    pub fn wake(&self, user_id: &str) {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = users.get(user_id) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every stream (after a lost PostgreSQL listener connection, when notifications may
    /// have been missed).
    pub fn wake_all(&self) {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for sender in users.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// One stream's wake-up receiver; dropping the last one for a user frees the user's channel.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    user_id: String,
    rx: Option<watch::Receiver<u64>>,
}

impl Subscription {
    /// Resolves when the user's feed may have grown since the last call.
    pub async fn changed(&mut self) {
        let open = match self.rx.as_mut() {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !open {
            // The hub keeps the sender while any subscription lives, so this does not happen.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut users = self.hub.users.lock().unwrap_or_else(|p| p.into_inner());
        if users
            .get(&self.user_id)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            users.remove(&self.user_id);
        }
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
        // Delivered to every listening node when (and only if) the transaction commits.
        log::notify(&mut *conn, NOTIFY_CHANNEL, user_id).await?;
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

/// Listens for `NOTIFY lockstep_feed` and wakes this node's streams. Runs until aborted.
pub async fn listen(hub: Arc<Hub>, database_url: String) {
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
        // Anything committed while we were not listening is found by a read of the log.
        hub.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => hub.wake(notification.payload()),
                // The connection dropped and was re-established: notifications may be lost.
                Ok(None) => hub.wake_all(),
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
