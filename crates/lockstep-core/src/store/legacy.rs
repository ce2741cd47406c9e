//! Carrying data into a new database: the files of the earlier file store (`import`) and
//! what still reads in a damaged database (`salvage`).
//!
//! The earlier store kept a checksummed journal of edits (`outbox.jsonl`, locked through
//! `outbox.lock`) and a snapshot of the cache (`cache.json`). `import` reads them with that
//! store's own readers ([`Outbox`], [`SettingsCache`], which repair and set aside what is damaged
//! as they always did), writes everything into the database in one transaction, and removes the
//! files only once it committed: a crash before leaves the files, and the import runs again;
//! after, the database holds everything. Holding the old lock while it reads keeps out an older
//! Lockstep still running on the profile.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use super::cache::{CACHE_FILE, LoadOutcome, SettingsCache};
use super::db::{Db, OUTBOX_QUERY, decode_value, outbox_entry};
use super::outbox::{OUTBOX_FILE, OUTBOX_LOCK_FILE, Outbox, OutboxEntry};
use super::seal::LocalSeal;
use super::{StoreError, sync_dir};

/// The mark set in the database once the old files were imported.
const IMPORTED_MARK: &str = "imported_file_store";

/// What the import of the earlier file store carried over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// Queued edits imported (one per key: older edits of a key are replaced by its newest, as
    /// the earlier store's pushes did).
    pub edits: usize,
    /// Synced rows imported from the cache.
    pub rows: usize,
    /// Lines of the old journal that could not be read (not imported).
    pub unreadable_edits: usize,
    /// Where the damaged journal was kept, if it was damaged.
    pub kept_at: Option<PathBuf>,
    /// Why the old cache could not be imported (it is rebuilt from the server), if it could not.
    pub cache_damaged: Option<String>,
    /// Where the damaged cache was kept.
    pub cache_kept_at: Option<PathBuf>,
}

/// Imports the earlier file store's files in `dir` into `db`, if there are any. See the
/// [module docs](self).
pub(crate) fn import(
    dir: &Path,
    db: &mut Db,
    seal: Option<LocalSeal>,
) -> Result<Option<Imported>, StoreError> {
    let journal = dir.join(OUTBOX_FILE);
    let snapshot = dir.join(CACHE_FILE);
    if !journal.exists() && !snapshot.exists() {
        return Ok(None);
    }
    // Opening the journal takes its lock (an older Lockstep using the profile makes this fail
    // with `Busy`) and repairs it; it is created empty when only the snapshot is left.
    let (outbox, outbox_report) = Outbox::open_sealed(dir, seal.clone())?;
    let cache = SettingsCache::load_sealed(dir, seal.as_ref())?;
    let mut imported = Imported {
        unreadable_edits: outbox_report.corrupt_lines,
        kept_at: outbox_report.quarantined.clone(),
        ..Imported::default()
    };
    let edits = coalesce(outbox.entries());
    let now = crate::clock_ms();
    let done_here = db.write(|tx| {
        if tx.mark(IMPORTED_MARK)? {
            // Another process imported them first (and is about to remove them).
            return Ok(false);
        }
        match &cache {
            LoadOutcome::Loaded(data) => {
                tx.replace_rows(data.rows.clone(), now)?;
                tx.set_cursor(data.cursor)?;
                for key in &data.device_local {
                    tx.set_device_local(key, data.local_values.get(key).cloned(), now)?;
                }
            }
            LoadOutcome::Missing | LoadOutcome::Corrupt { .. } => {}
        }
        tx.queue(&edits)?;
        tx.set_mark(IMPORTED_MARK, now)?;
        Ok(true)
    })?;
    imported.edits = edits.len();
    match cache {
        LoadOutcome::Loaded(data) => imported.rows = data.rows.len(),
        LoadOutcome::Missing => {}
        LoadOutcome::Corrupt { reason, moved_to } => {
            imported.cache_damaged = Some(reason);
            imported.cache_kept_at = Some(moved_to);
        }
    }
    // Committed: the files can go. The lock goes last, once released.
    drop(outbox);
    for name in [OUTBOX_FILE, CACHE_FILE, OUTBOX_LOCK_FILE] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove the imported", &path, e)),
        }
    }
    sync_dir(dir)?;
    if done_here {
        tracing::info!(
            edits = imported.edits,
            rows = imported.rows,
            "imported the profile's files into its database"
        );
        Ok(Some(imported))
    } else {
        Ok(None)
    }
}

/// One entry per key, as the earlier store's pushes would have sent them: a key's newest edit
/// not set aside (the later one on equal stamps); for a key with only set-aside edits, the
/// newest of those. In the order of the entries kept.
fn coalesce(entries: &[OutboxEntry]) -> Vec<OutboxEntry> {
    let mut chosen: BTreeMap<&str, usize> = BTreeMap::new();
    for (at, entry) in entries.iter().enumerate() {
        let better = match chosen.get(entry.key.as_str()) {
            None => true,
            Some(&best) => {
                let current = &entries[best];
                match (current.set_aside.is_some(), entry.set_aside.is_some()) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => entry.hlc >= current.hlc,
                }
            }
        };
        if better {
            chosen.insert(&entry.key, at);
        }
    }
    let mut kept: Vec<usize> = chosen.into_values().collect();
    kept.sort_unstable();
    kept.into_iter().map(|at| entries[at].clone()).collect()
}

/// What still reads in a damaged database.
#[derive(Debug, Default)]
pub(crate) struct Salvaged {
    /// Queued edits, in their order.
    pub edits: Vec<OutboxEntry>,
    /// Device-only keys and their values.
    pub device_only: Vec<(String, Option<Value>)>,
}

/// Reads the queued edits and device-only values that still read from the damaged database at
/// `path`, row by row, stopping at the first row SQLite cannot read.
pub(crate) fn salvage(path: &Path, seal: Option<&LocalSeal>) -> Salvaged {
    let mut salvaged = Salvaged::default();
    let Ok(conn) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return salvaged;
    };
    if let Ok(mut statement) = conn.prepare(OUTBOX_QUERY)
        && let Ok(mut rows) = statement.query([])
    {
        while let Ok(Some(r)) = rows.next() {
            if let Ok(Ok(entry)) = outbox_entry(r, seal) {
                salvaged.edits.push(entry);
            }
        }
    }
    if let Ok(mut statement) = conn.prepare("SELECT key, value FROM device_only")
        && let Ok(mut rows) = statement.query([])
    {
        while let Ok(Some(r)) = rows.next() {
            if let Ok(key) = r.get::<_, String>(0) {
                let value = r
                    .get::<_, Option<String>>(1)
                    .ok()
                    .flatten()
                    .and_then(|t| decode_value(seal, &key, &t));
                salvaged.device_only.push((key, value));
            }
        }
    }
    salvaged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Refusal;
    use lockstep_protocol::hlc::Hlc;
    use serde_json::json;

    fn entry(key: &str, at: u64, refused: bool) -> OutboxEntry {
        let mut e = OutboxEntry::new(key, json!(at), Hlc::new(at, 0), false, 0);
        if refused {
            e.set_aside = Some(Refusal {
                reason: "no".into(),
                code: None,
                at_ms: 0,
            });
        }
        e
    }

    #[test]
    fn coalescing_keeps_each_keys_newest_edit_and_prefers_one_not_set_aside() {
        let entries = vec![
            entry("a", 1, false),
            entry("b", 2, true),
            entry("a", 3, false),
            entry("c", 9, true),
            entry("c", 4, false),
            entry("d", 5, true),
            entry("d", 6, true),
        ];
        let kept: Vec<(String, u64)> = coalesce(&entries)
            .into_iter()
            .map(|e| (e.key, e.value.as_u64().unwrap()))
            .collect();
        assert_eq!(
            kept,
            [
                ("b".to_owned(), 2),
                ("a".to_owned(), 3),
                ("c".to_owned(), 4),
                ("d".to_owned(), 6)
            ]
        );
    }
}
