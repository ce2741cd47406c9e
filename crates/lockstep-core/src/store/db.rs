//! The profile's SQLite database: its schema and migrations, the in-memory [`View`] of it, and
//! the unit of work ([`Tx`]) that changes both together.
//!
//! Every change is one SQLite transaction, begun with `BEGIN IMMEDIATE` (so writers on one
//! profile, in this process or another, take turns) and committed with `synchronous=FULL` in WAL
//! mode: when [`Db::write`] returns `Ok`, the change is on disk. The [`View`] (cache, outbox,
//! clock) is what the engine reads; it is reloaded whenever another connection committed
//! (`PRAGMA data_version` moved), and what that reload changed is kept in [`Elsewhere`] for the
//! engine to announce.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_protocol::hlc::Hlc;
use lockstep_protocol::sync::SettingRow;
use lockstep_protocol::timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value;

use super::cache::{CacheData, local_row};
use super::outbox::{OutboxEntry, Refusal};
use super::seal::{LocalSeal, open_value, seal_value};
use super::{HistoryEntry, HistoryOrigin, StoreError};
use crate::app_lock::LockState;

/// The database file inside the profile directory.
pub const DB_FILE: &str = "profile.sqlite3";

/// The `meta` entry naming the key the profile's values are sealed with.
const SEALED_WITH: &str = "sealed_with";

/// The `meta` entries of the app lock (all named `lock.*`; a sign-out's wipe clears them).
const LOCK_LOCKED: &str = "lock.locked";
const LOCK_FAILURES: &str = "lock.failures";
const LOCK_WAIT_UNTIL_MS: &str = "lock.wait_until_ms";
const LOCK_LAST_STEP: &str = "lock.last_step";

fn read_lock_state(conn: &Connection) -> rusqlite::Result<LockState> {
    let get = |name: &str| -> rusqlite::Result<Option<i64>> {
        conn.query_row(
            "SELECT value FROM meta WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()
    };
    Ok(LockState {
        locked: get(LOCK_LOCKED)?.is_some_and(|v| v != 0),
        failures: get(LOCK_FAILURES)?.map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
        wait_until_ms: get(LOCK_WAIT_UNTIL_MS)?.unwrap_or(0),
        last_step: get(LOCK_LAST_STEP)?.and_then(|v| u64::try_from(v).ok()),
    })
}

/// How long a writer waits for another one (in this process or another) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The schema, one migration per entry; `PRAGMA user_version` counts those applied. Append only:
/// a released migration is never edited.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;

-- The synced settings as last seen (or written here and not yet contradicted), tombstones too.
CREATE TABLE settings (
    key           TEXT PRIMARY KEY,
    value         TEXT NOT NULL,
    hlc           TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    device_name   TEXT,
    updated_at_ms INTEGER NOT NULL,
    deleted       INTEGER NOT NULL
) STRICT;

-- Local edits the server has not acknowledged: one per key (a newer edit replaces the row).
CREATE TABLE outbox (
    key            TEXT PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    value          TEXT NOT NULL,
    hlc            TEXT NOT NULL,
    deleted        INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    refusal_reason TEXT,
    refusal_code   TEXT,
    refused_at_ms  INTEGER
) STRICT;

-- Keys kept on this device; a NULL value reads as the key's default.
CREATE TABLE device_only (
    key   TEXT PRIMARY KEY,
    value TEXT
) STRICT;

-- Every value each key had on this device, newest last; a NULL value is a reset.
CREATE TABLE history (
    version     INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL,
    value       TEXT,
    hlc         TEXT,
    device_id   TEXT,
    device_name TEXT,
    at_ms       INTEGER NOT NULL,
    origin      TEXT NOT NULL
) STRICT;
CREATE INDEX history_by_key ON history (key, version);

-- Which process on this profile runs the live loop.
CREATE TABLE live_lease (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    holder        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
"];

/// What the engine reads: the cache, the outbox (oldest first) and this device's clock.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The synced rows, the cursor and the device-only settings.
    pub cache: CacheData,
    /// The outbox, one entry per key, in the order the keys were last edited.
    pub outbox: Vec<OutboxEntry>,
    /// This device's clock: after every stamp it has made or seen.
    pub hlc: Hlc,
}

impl View {
    /// Keys with an edit to send (set-aside ones not counted).
    pub fn pending(&self) -> usize {
        self.outbox.iter().filter(|e| e.set_aside.is_none()).count()
    }

    /// The set-aside edits, oldest first.
    pub fn set_aside(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.outbox.iter().filter(|e| e.set_aside.is_some())
    }

    /// The clock after every synced row and every edit not set aside (a refused stamp reached
    /// nobody, so it does not push the clock on).
    fn observed_clock(&self) -> Hlc {
        let rows = self.cache.rows.values().map(|r| r.hlc);
        let edits = self
            .outbox
            .iter()
            .filter(|e| e.set_aside.is_none())
            .map(|e| e.hlc);
        rows.chain(edits).fold(Hlc::ZERO, Hlc::max)
    }
}

/// What other connections (another process on this profile) changed since it was last taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Elsewhere {
    /// Keys whose value on this device changed, with the value each had before.
    pub changed: BTreeMap<String, Option<Value>>,
    /// The outbox changed (an edit was queued, or sent, by another process).
    pub outbox_changed: bool,
    /// The profile's values are now sealed with another key (it was wiped, and given a new
    /// key, by another process): take the keychain's key again ([`Db::set_seal`]).
    pub seal_changed: bool,
}

/// Rows that could not be read when the database was loaded (a value sealed with a key the
/// keychain no longer has).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unreadable {
    /// Synced rows left out (they come back with a full pull).
    pub settings: usize,
    /// Queued edits left out, by key.
    pub outbox: Vec<String>,
}

/// One open database and its view.
pub struct Db {
    conn: Connection,
    path: PathBuf,
    seal: Option<LocalSeal>,
    device_id: String,
    history_limit: usize,
    view: View,
    data_version: i64,
    elsewhere: Elsewhere,
    unreadable: Unreadable,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Maps a SQLite error on `path` to a [`StoreError`].
pub(crate) fn db_error(
    path: &Path,
    action: &'static str,
) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |error| StoreError::Database {
        action,
        path: path.clone(),
        corrupt: is_corruption(&error),
        reason: describe(&error),
    }
}

/// Whether SQLite says the file is damaged or is not a database.
pub(crate) fn is_corruption(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// A SQLite error for a person: SQLite's own message names tables and constraints, never values
/// (they are bound parameters).
fn describe(error: &rusqlite::Error) -> String {
    match error {
        rusqlite::Error::SqliteFailure(e, Some(message)) => format!("{message} ({:?})", e.code),
        rusqlite::Error::SqliteFailure(e, None) => format!("{:?}", e.code),
        other => other.to_string(),
    }
}

impl Db {
    /// Opens (creating if missing) the database at `path`, migrates it and loads its view.
    pub fn open(
        path: &Path,
        seal: Option<LocalSeal>,
        device_id: &str,
        history_limit: usize,
    ) -> Result<Db, StoreError> {
        let err = db_error(path, "open");
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(&err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
        // WAL: readers never wait for the writer, and a commit is one append and one fsync.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(&err)?;
        // What a wipe deletes is overwritten, not left in free pages.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(&err)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(&err)?;
        if check != "ok" {
            return Err(StoreError::Database {
                action: "check",
                path: path.to_owned(),
                corrupt: true,
                reason: format!("SQLite's integrity check failed: {check}"),
            });
        }
        migrate(&conn, path)?;
        let mut db = Db {
            conn,
            path: path.to_owned(),
            seal,
            device_id: device_id.to_owned(),
            history_limit: history_limit.max(1),
            view: View::default(),
            data_version: 0,
            elsewhere: Elsewhere::default(),
            unreadable: Unreadable::default(),
        };
        db.reload()?;
        db.elsewhere = Elsewhere::default();
        if let Some(seal) = db.seal.clone()
            && db.sealed_with()?.is_none()
        {
            db.write(|tx| tx.set_mark(SEALED_WITH, seal.fingerprint()))?;
        }
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What could not be read at the last load.
    pub fn unreadable(&self) -> &Unreadable {
        &self.unreadable
    }

    /// Reads the view, after taking in what other connections committed.
    pub fn read<R>(&mut self, f: impl FnOnce(&View) -> R) -> Result<R, StoreError> {
        self.refresh()?;
        Ok(f(&self.view))
    }

    /// Takes what other connections changed since the last call.
    pub fn take_elsewhere(&mut self) -> Result<Elsewhere, StoreError> {
        self.refresh()?;
        Ok(std::mem::take(&mut self.elsewhere))
    }

    /// Runs `f` as one transaction: committed (durably) when it returns `Ok`, rolled back, with
    /// the view reloaded, when it returns `Err` or the commit fails.
    pub fn write<R>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let err = db_error(&self.path, "write");
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(&err)?;
        let outcome = self.refresh().and_then(|()| {
            let mut tx = Tx {
                conn: &self.conn,
                path: &self.path,
                seal: self.seal.as_ref(),
                device_id: &self.device_id,
                history_limit: self.history_limit,
                view: &mut self.view,
            };
            f(&mut tx)
        });
        let outcome = outcome.and_then(|r| {
            self.conn.execute_batch("COMMIT").map_err(&err)?;
            Ok(r)
        });
        if outcome.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
            // The view may hold half of what failed: read it again.
            if let Err(error) = self.reload() {
                tracing::warn!(%error, "could not reload the profile after a failed write");
            }
        }
        outcome
    }

    /// The app lock as kept in `meta` (see [`crate::app_lock`]).
    pub fn lock_state(&mut self) -> Result<LockState, StoreError> {
        read_lock_state(&self.conn).map_err(db_error(&self.path, "read the app lock"))
    }

    /// Changes the app lock in one transaction: `f` gets the state as committed (by any
    /// process) and answers the new state and what to return.
    pub fn update_lock<R>(
        &mut self,
        f: impl FnOnce(LockState) -> (LockState, R),
    ) -> Result<R, StoreError> {
        self.write(|tx| {
            let err = tx.err("change the app lock");
            let (next, answer) = f(read_lock_state(tx.conn).map_err(&err)?);
            let step = next.last_step.and_then(|s| i64::try_from(s).ok());
            for (name, value) in [
                (LOCK_LOCKED, Some(i64::from(next.locked))),
                (LOCK_FAILURES, Some(i64::from(next.failures))),
                (LOCK_WAIT_UNTIL_MS, Some(next.wait_until_ms)),
                (LOCK_LAST_STEP, step),
            ] {
                match value {
                    Some(value) => tx.conn.execute(
                        "INSERT INTO meta (name, value) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET value = ?2",
                        params![name, value],
                    ),
                    None => tx
                        .conn
                        .execute("DELETE FROM meta WHERE name = ?1", params![name]),
                }
                .map_err(&err)?;
            }
            Ok(answer)
        })
    }

    /// Replaces the seal (after a wipe, the profile's new local key) and reads the view again
    /// with it.
    pub fn set_seal(&mut self, seal: Option<LocalSeal>) -> Result<(), StoreError> {
        self.seal = seal;
        self.reload()
    }

    /// The fingerprint of the key the profile's values are sealed with, if recorded.
    fn sealed_with(&self) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                params![SEALED_WITH],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_error(&self.path, "read"))
    }

    /// Takes in what other connections committed, if anything.
    fn refresh(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(db_error(&self.path, "read"))?;
        if version == self.data_version {
            return Ok(());
        }
        let before = self.view.clone();
        self.reload()?;
        let after = &self.view;
        let old = before.cache.effective_all();
        let new = after.cache.effective_all();
        for key in old.keys().chain(new.keys()) {
            if old.get(key) != new.get(key) {
                self.elsewhere
                    .changed
                    .entry(key.clone())
                    .or_insert_with(|| old.get(key).cloned());
            }
        }
        if before.outbox != after.outbox {
            self.elsewhere.outbox_changed = true;
        }
        let sealed_with = self.sealed_with()?;
        if let (Some(recorded), Some(seal)) = (sealed_with, &self.seal)
            && recorded != seal.fingerprint()
        {
            self.elsewhere.seal_changed = true;
        }
        Ok(())
    }

    /// Loads the whole view from the database, as one snapshot.
    fn reload(&mut self) -> Result<(), StoreError> {
        let err = db_error(&self.path, "read");
        let in_tx = !self.conn.is_autocommit();
        if !in_tx {
            self.conn.execute_batch("BEGIN").map_err(&err)?;
        }
        let loaded = load_view(&self.conn, self.seal.as_ref()).map_err(&err);
        let version = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(&err);
        if !in_tx {
            let _ = self.conn.execute_batch("COMMIT");
        }
        let (mut view, unreadable) = loaded?;
        view.hlc = self.view.hlc.max(view.observed_clock());
        self.view = view;
        self.unreadable = unreadable;
        self.data_version = version?;
        Ok(())
    }

    /// Tries to take (or renew) the live loop's lease for `holder` until `now_ms + ttl_ms`.
    /// Returns whether `holder` has it. A lease is free once expired, and also when it claims
    /// to run for longer than `ttl_ms` from now: the clock went back since it was taken, and
    /// its holder, which renews well within the time to live, is gone or will take it again.
    pub fn take_lease(
        &mut self,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let taken = tx
                .conn
                .execute(
                    "INSERT INTO live_lease (id, holder, expires_at_ms) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET holder = ?1, expires_at_ms = ?2
                     WHERE live_lease.holder = ?1 OR live_lease.expires_at_ms <= ?3
                         OR live_lease.expires_at_ms > ?2",
                    params![holder, now_ms.saturating_add(ttl_ms), now_ms],
                )
                .map_err(tx.err("take the live lease"))?;
            Ok(taken == 1)
        })
    }

    /// Gives the lease up, if `holder` has it.
    pub fn release_lease(&mut self, holder: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.conn
                .execute("DELETE FROM live_lease WHERE holder = ?1", params![holder])
                .map_err(tx.err("release the live lease"))?;
            Ok(())
        })
    }

    /// The history of `key`, newest first.
    pub fn history(&mut self, key: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let err = db_error(&self.path, "read the history");
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT version, value, hlc, device_id, device_name, at_ms, origin
                 FROM history WHERE key = ?1 ORDER BY version DESC",
            )
            .map_err(&err)?;
        let rows = statement
            .query_map(params![key], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let (version, value, hlc, device_id, device_name, at_ms, origin) = row.map_err(&err)?;
            let value = match value {
                None => None,
                // A value that no longer opens (the keychain's key changed) is left out.
                Some(text) => match decode_value(self.seal.as_ref(), key, &text) {
                    Some(value) => Some(value),
                    None => continue,
                },
            };
            out.push(HistoryEntry {
                version,
                key: key.to_owned(),
                value,
                hlc: hlc.and_then(|h| h.parse().ok()),
                device_id,
                device_name,
                at_ms,
                origin: HistoryOrigin::parse(&origin),
            });
        }
        Ok(out)
    }
}

/// Applies the migrations not applied yet, each in its own transaction.
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = db_error(path, "migrate");
    let known = MIGRATIONS.len() as i64;
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(&err)?;
    if applied == known {
        // Up to date: no write lock needed (the usual open).
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE").map_err(&err)?;
    // Read again under the lock: another process may have migrated meanwhile.
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(&err)?;
    if applied > known {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(StoreError::NewerFormat {
            path: path.to_owned(),
            found: applied as u64,
            supported: known as u64,
        });
    }
    let result = MIGRATIONS
        .iter()
        .skip(applied as usize)
        .try_for_each(|sql| conn.execute_batch(sql))
        .and_then(|()| conn.pragma_update(None, "user_version", known))
        .and_then(|()| conn.execute_batch("COMMIT"));
    if let Err(error) = result {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(err(error));
    }
    Ok(())
}

/// The text stored for `value` of `key` (sealed when the key is sensitive).
fn encode_value(seal: Option<&LocalSeal>, key: &str, value: &Value) -> String {
    seal_value(seal, key, value).to_string()
}

/// The value of `key` stored as `text`, if it reads (and opens).
pub(crate) fn decode_value(seal: Option<&LocalSeal>, key: &str, text: &str) -> Option<Value> {
    let stored: Value = serde_json::from_str(text).ok()?;
    open_value(seal, key, stored)
}

/// The outbox, oldest first, in the columns [`outbox_entry`] reads.
pub(crate) const OUTBOX_QUERY: &str = "SELECT key, id, value, hlc, deleted, recorded_at_ms,
    refusal_reason, refusal_code, refused_at_ms FROM outbox ORDER BY position";

/// The queued edit in a row of [`OUTBOX_QUERY`], or its key when its value or stamp does not
/// read (a value sealed with a key the keychain no longer has).
pub(crate) fn outbox_entry(
    r: &rusqlite::Row<'_>,
    seal: Option<&LocalSeal>,
) -> rusqlite::Result<Result<OutboxEntry, String>> {
    let key: String = r.get(0)?;
    let text: String = r.get(2)?;
    let hlc: String = r.get(3)?;
    let (Some(value), Ok(hlc)) = (decode_value(seal, &key, &text), hlc.parse::<Hlc>()) else {
        return Ok(Err(key));
    };
    let reason: Option<String> = r.get(6)?;
    let set_aside = match reason {
        Some(reason) => Some(Refusal {
            reason,
            code: r.get(7)?,
            at_ms: r.get::<_, Option<i64>>(8)?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Ok(OutboxEntry {
        id: r.get(1)?,
        key,
        value,
        hlc,
        deleted: r.get::<_, i64>(4)? != 0,
        recorded_at_ms: r.get(5)?,
        set_aside,
    }))
}

fn load_view(conn: &Connection, seal: Option<&LocalSeal>) -> rusqlite::Result<(View, Unreadable)> {
    let mut view = View::default();
    let mut unreadable = Unreadable::default();
    view.cache.cursor = conn
        .query_row("SELECT value FROM meta WHERE name = 'cursor'", [], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0);

    let mut rows = conn.prepare_cached(
        "SELECT key, value, hlc, device_id, device_name, updated_at_ms, deleted FROM settings",
    )?;
    let mut query = rows.query([])?;
    while let Some(r) = query.next()? {
        let key: String = r.get(0)?;
        let text: String = r.get(1)?;
        let hlc: String = r.get(2)?;
        let (Some(value), Ok(hlc)) = (decode_value(seal, &key, &text), hlc.parse::<Hlc>()) else {
            unreadable.settings += 1;
            continue;
        };
        view.cache.rows.insert(
            key.clone(),
            SettingRow {
                key,
                value,
                hlc,
                device_id: r.get(3)?,
                device_name: r.get(4)?,
                updated_at: timestamp::from_millis(r.get(5)?),
                deleted: r.get::<_, i64>(6)? != 0,
            },
        );
    }

    let mut outbox = conn.prepare_cached(OUTBOX_QUERY)?;
    let mut query = outbox.query([])?;
    while let Some(r) = query.next()? {
        match outbox_entry(r, seal)? {
            Ok(entry) => view.outbox.push(entry),
            Err(key) => unreadable.outbox.push(key),
        }
    }

    let mut local = conn.prepare_cached("SELECT key, value FROM device_only")?;
    let mut query = local.query([])?;
    while let Some(r) = query.next()? {
        let key: String = r.get(0)?;
        let text: Option<String> = r.get(1)?;
        let value = text.and_then(|t| decode_value(seal, &key, &t));
        view.cache.set_device_local(&key, value);
    }
    Ok((view, unreadable))
}

/// One transaction on the database and the view it keeps in step. Every method writes its
/// rows at once; nothing is durable until [`Db::write`] commits.
pub struct Tx<'a> {
    conn: &'a Connection,
    path: &'a Path,
    seal: Option<&'a LocalSeal>,
    device_id: &'a str,
    history_limit: usize,
    view: &'a mut View,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    fn err(&self, action: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        db_error(self.path, action)
    }

    /// The view as this transaction has changed it so far.
    pub fn view(&self) -> &View {
        self.view
    }

    /// This device's id (the one its own rows carry).
    pub fn device_id(&self) -> &str {
        self.device_id
    }

    /// A new stamp for an edit made at `now_ms`, after every stamp seen.
    pub fn tick(&mut self, now_ms: i64) -> Hlc {
        let hlc = self.view.hlc.tick(u64::try_from(now_ms).unwrap_or(0));
        self.view.hlc = hlc;
        hlc
    }

    /// Applies a row from the server by the merge rule (see [`CacheData::apply_remote`]), and
    /// lets the clock observe its stamp. Returns whether the cache changed.
    pub fn apply_remote(&mut self, row: SettingRow, at_ms: i64) -> Result<bool, StoreError> {
        self.view.hlc = self.view.hlc.max(row.hlc);
        if !self.view.cache.apply_remote(row.clone()) {
            return Ok(false);
        }
        self.put_row(&row)?;
        self.record_history(&row, at_ms)?;
        Ok(true)
    }

    /// Shows a local edit at once, as the row the server will store (see
    /// [`CacheData::apply_local`]).
    pub fn apply_local(&mut self, entry: &OutboxEntry) -> Result<bool, StoreError> {
        let row = local_row(entry, self.device_id);
        self.apply_remote(row, entry.recorded_at_ms)
    }

    /// Replaces every synced row with `rows` (a full pull), keeping the history of what changed.
    pub fn replace_rows(
        &mut self,
        rows: BTreeMap<String, SettingRow>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let gone: Vec<String> = self
            .view
            .cache
            .rows
            .keys()
            .filter(|k| !rows.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.conn
                .execute("DELETE FROM settings WHERE key = ?1", params![key])
                .map_err(self.err("write the cache"))?;
            self.view.cache.rows.remove(&key);
        }
        for row in rows.into_values() {
            self.view.hlc = self.view.hlc.max(row.hlc);
            let same = self
                .view
                .cache
                .rows
                .get(&row.key)
                .is_some_and(|current| current.version() == row.version());
            if same {
                continue;
            }
            self.put_row(&row)?;
            self.record_history(&row, at_ms)?;
            self.view.cache.rows.insert(row.key.clone(), row);
        }
        Ok(())
    }

    fn put_row(&mut self, row: &SettingRow) -> Result<(), StoreError> {
        let text = encode_value(self.seal, &row.key, &row.value);
        self.conn
            .prepare_cached(
                "INSERT INTO settings (key, value, hlc, device_id, device_name, updated_at_ms, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (key) DO UPDATE SET value = ?2, hlc = ?3, device_id = ?4,
                     device_name = ?5, updated_at_ms = ?6, deleted = ?7",
            )
            .and_then(|mut s| {
                s.execute(params![
                    row.key,
                    text,
                    row.hlc.to_string(),
                    row.device_id,
                    row.device_name,
                    timestamp::to_millis(row.updated_at),
                    i64::from(row.deleted),
                ])
            })
            .map_err(self.err("write the cache"))?;
        Ok(())
    }

    /// Adds `row` to its key's history: set here when this device wrote it, else arrived.
    fn record_history(&mut self, row: &SettingRow, at_ms: i64) -> Result<(), StoreError> {
        let origin = if row.device_id == self.device_id {
            HistoryOrigin::Here
        } else {
            HistoryOrigin::Arrived
        };
        let value = (!row.deleted).then(|| encode_value(self.seal, &row.key, &row.value));
        self.insert_history(
            &row.key,
            value,
            Some(row.hlc.to_string()),
            Some(&row.device_id),
            row.device_name.as_deref(),
            at_ms,
            origin,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_history(
        &mut self,
        key: &str,
        value: Option<String>,
        hlc: Option<String>,
        device_id: Option<&str>,
        device_name: Option<&str>,
        at_ms: i64,
        origin: HistoryOrigin,
    ) -> Result<(), StoreError> {
        let err = self.err("write the history");
        self.conn
            .prepare_cached(
                "INSERT INTO history (key, value, hlc, device_id, device_name, at_ms, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key,
                    value,
                    hlc,
                    device_id,
                    device_name,
                    at_ms,
                    origin.as_str()
                ])
            })
            .map_err(&err)?;
        // Keep the newest `history_limit` versions of the key.
        self.conn
            .prepare_cached(
                "DELETE FROM history WHERE key = ?1 AND version <= (
                     SELECT version FROM history WHERE key = ?1
                     ORDER BY version DESC LIMIT 1 OFFSET ?2)",
            )
            .and_then(|mut s| s.execute(params![key, self.history_limit as i64]))
            .map_err(&err)?;
        Ok(())
    }

    /// Sets the cursor (after a full pull).
    pub fn set_cursor(&mut self, cursor: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (name, value) VALUES ('cursor', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = ?1",
            )
            .and_then(|mut s| s.execute(params![cursor]))
            .map_err(self.err("write the cursor"))?;
        self.view.cache.cursor = cursor;
        Ok(())
    }

    /// Advances the cursor to `seq` if it is further along.
    pub fn advance_cursor(&mut self, seq: i64) -> Result<(), StoreError> {
        if seq > self.view.cache.cursor {
            self.set_cursor(seq)?;
        }
        Ok(())
    }

    /// Makes `key` device-only with `value` (`None`: its default), or changes its value.
    pub fn set_device_local(
        &mut self,
        key: &str,
        value: Option<Value>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let text = value.as_ref().map(|v| encode_value(self.seal, key, v));
        self.conn
            .prepare_cached(
                "INSERT INTO device_only (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = ?2",
            )
            .and_then(|mut s| s.execute(params![key, text]))
            .map_err(self.err("write a device-only setting"))?;
        let before = self.view.cache.effective(key);
        self.view.cache.set_device_local(key, value);
        if self.view.cache.effective(key) != before {
            let shown = self.view.cache.effective(key);
            let text = shown.as_ref().map(|v| encode_value(self.seal, key, v));
            let device = self.device_id.to_owned();
            self.insert_history(
                key,
                text,
                None,
                Some(&device),
                None,
                at_ms,
                HistoryOrigin::DeviceOnly,
            )?;
        }
        Ok(())
    }

    /// Makes `key` follow the synced value again.
    pub fn clear_device_local(&mut self, key: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM device_only WHERE key = ?1", params![key])
            .map_err(self.err("write a device-only setting"))?;
        self.view.cache.clear_device_local(key);
        Ok(())
    }

    /// Queues `entries` (each replaces the queued edit of its key, set aside or not) and shows
    /// each at once.
    pub fn queue(&mut self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        for entry in entries {
            let position: i64 = self
                .conn
                .query_row(
                    "SELECT coalesce(max(position), 0) + 1 FROM outbox",
                    [],
                    |r| r.get(0),
                )
                .map_err(self.err("queue an edit"))?;
            let text = encode_value(self.seal, &entry.key, &entry.value);
            self.conn
                .prepare_cached(
                    "INSERT INTO outbox (key, id, value, hlc, deleted, recorded_at_ms, position,
                         refusal_reason, refusal_code, refused_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (key) DO UPDATE SET id = ?2, value = ?3, hlc = ?4, deleted = ?5,
                         recorded_at_ms = ?6, position = ?7, refusal_reason = ?8,
                         refusal_code = ?9, refused_at_ms = ?10",
                )
                .and_then(|mut s| {
                    let refusal = entry.set_aside.as_ref();
                    s.execute(params![
                        entry.key,
                        entry.id,
                        text,
                        entry.hlc.to_string(),
                        i64::from(entry.deleted),
                        entry.recorded_at_ms,
                        position,
                        refusal.map(|r| &r.reason),
                        refusal.and_then(|r| r.code.as_ref()),
                        refusal.map(|r| r.at_ms),
                    ])
                })
                .map_err(self.err("queue an edit"))?;
            self.view.outbox.retain(|e| e.key != entry.key);
            self.view.outbox.push(entry.clone());
            if entry.set_aside.is_none() {
                self.view.hlc = self.view.hlc.max(entry.hlc);
                self.apply_local(entry)?;
            }
        }
        Ok(())
    }

    /// Removes the queued edits with these ids (the server acknowledged them). An id no longer
    /// queued (its key was edited again meanwhile) changes nothing.
    pub fn remove_acknowledged(&mut self, ids: &[String]) -> Result<(), StoreError> {
        let doomed: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        for id in &doomed {
            self.conn
                .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(self.err("remove a sent edit"))?;
        }
        self.view.outbox.retain(|e| !doomed.contains(e.id.as_str()));
        Ok(())
    }

    /// Sets the queued edits with these ids aside with `refusal`.
    pub fn mark_set_aside(&mut self, ids: &[String], refusal: &Refusal) -> Result<(), StoreError> {
        for id in ids {
            self.conn
                .prepare_cached(
                    "UPDATE outbox SET refusal_reason = ?2, refusal_code = ?3, refused_at_ms = ?4
                     WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![id, refusal.reason, refusal.code, refusal.at_ms])
                })
                .map_err(self.err("set an edit aside"))?;
        }
        for entry in &mut self.view.outbox {
            if ids.contains(&entry.id) {
                entry.set_aside = Some(refusal.clone());
            }
        }
        Ok(())
    }

    /// Queues the set-aside edits of `key` (all when `None`) to be sent again, and shows them.
    /// Returns them.
    pub fn retry_set_aside(&mut self, key: Option<&str>) -> Result<Vec<OutboxEntry>, StoreError> {
        let released: Vec<OutboxEntry> = self
            .view
            .set_aside()
            .filter(|e| key.is_none_or(|k| e.key == k))
            .map(|e| OutboxEntry {
                set_aside: None,
                ..e.clone()
            })
            .collect();
        for entry in &released {
            self.conn
                .prepare_cached(
                    "UPDATE outbox SET refusal_reason = NULL, refusal_code = NULL,
                         refused_at_ms = NULL WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![entry.id]))
                .map_err(self.err("release a set-aside edit"))?;
            if let Some(slot) = self.view.outbox.iter_mut().find(|e| e.id == entry.id) {
                slot.set_aside = None;
            }
            self.view.hlc = self.view.hlc.max(entry.hlc);
            self.apply_local(entry)?;
        }
        Ok(released)
    }

    /// Removes the set-aside edits of `key` (all when `None`). Returns how many.
    pub fn drop_set_aside(&mut self, key: Option<&str>) -> Result<usize, StoreError> {
        let doomed: Vec<String> = self
            .view
            .set_aside()
            .filter(|e| key.is_none_or(|k| e.key == k))
            .map(|e| e.id.clone())
            .collect();
        self.remove_acknowledged(&doomed)?;
        Ok(doomed.len())
    }

    /// Forgets the account's data: cache, cursor, outbox, device-only values and history; what
    /// is written from now on is sealed with `seal` (the profile's new local key).
    pub fn clear(&mut self, seal: Option<&LocalSeal>) -> Result<(), StoreError> {
        self.conn
            .execute_batch(
                "DELETE FROM settings; DELETE FROM outbox; DELETE FROM device_only;
                 DELETE FROM history; DELETE FROM meta WHERE name = 'cursor';
                 DELETE FROM meta WHERE name LIKE 'lock.%';",
            )
            .map_err(self.err("clear the profile"))?;
        *self.view = View::default();
        if let Some(seal) = seal {
            self.set_mark(SEALED_WITH, seal.fingerprint())?;
        }
        Ok(())
    }

    /// Whether a mark named `name` is set in the database (see [`Tx::set_mark`]).
    pub fn mark(&self, name: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("read"))?;
        Ok(found.is_some())
    }

    /// Sets a mark (a one-time step done, such as the import of the old files).
    pub fn set_mark(&mut self, name: &str, value: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = ?2",
                params![name, value],
            )
            .map_err(self.err("write"))?;
        Ok(())
    }
}
