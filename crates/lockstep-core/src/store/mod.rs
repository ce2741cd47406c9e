//! Durable local state of one profile, in one SQLite database (`profile.sqlite3` in the
//! profile's directory): the synced settings cache, the feed cursor, the outbox of edits not yet
//! acknowledged by the server, the device-only values, a bounded local history of every value
//! each key had, and the lease that says which process runs the live loop.
//!
//! - Schema and unit of work: [`db`]. One table per concern, migrations versioned in the crate
//!   (`PRAGMA user_version`), WAL with `synchronous=FULL`: a write returns once it is on disk.
//! - The outbox holds one row per key: a second edit of a key replaces the first, so what is
//!   pushed is coalesced by construction. An edit the server refused for good stays in its row,
//!   set aside with the reason, until retried, dropped or replaced by a newer edit of the key.
//! - Values of sensitive keys (`integrations.*`) are sealed with the keychain's local key
//!   ([`seal`]) in every table; no plaintext secret reaches the disk.
//! - The database runs on a thread of its own ([`ProfileStore`]): the engine's async code
//!   awaits it ([`ProfileStore::call`]) and never blocks an executor thread on the disk; the
//!   synchronous API of the front ends waits for it ([`ProfileStore::call_blocking`]).
//! - Several processes may open one profile (the desktop app and `lockstep` commands): SQLite
//!   serialises their writes, each sees the others' commits at its next read, and the lease
//!   ([`db::Db::take_lease`]) picks the one that runs the live loop.
//! - A profile written by the file store of earlier versions (`outbox.jsonl`, `cache.json`) is
//!   imported on first open, in one transaction, and the old files are removed only after it
//!   committed ([`legacy`]).
//! - A damaged database is not recreated silently: it is moved aside to
//!   `profile.corrupt-<unix ms>.sqlite3`, the queued edits and device-only values that still
//!   read are carried into a new one, [`OpenReport`] says so, and the engine rebuilds the cache
//!   from the server.
//!
//! The store never logs values, and the `Debug` output of its types hides the values of
//! sensitive keys. On Unix the database is created readable by its owner only (SQLite gives its
//! `-wal` and `-shm` files the same mode), in a directory created with mode `0700`.

pub mod cache;
pub mod db;
pub mod legacy;
pub mod outbox;
pub mod seal;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use lockstep_protocol::settings;
use serde_json::Value;

pub use cache::{CACHE_FILE, CACHE_FORMAT_VERSION, CacheData, LoadOutcome, SettingsCache};
pub use db::{DB_FILE, Db, Elsewhere, Tx, View};
pub use outbox::{OUTBOX_FILE, OUTBOX_LOCK_FILE, Outbox, OutboxEntry, Refusal};
pub use seal::LocalSeal;

/// Something went wrong reading or writing a profile's local state.
///
/// Damage to the files themselves is not an error: it is repaired and reported (see
/// [`OpenReport`] and [`LoadOutcome::Corrupt`]). These are the cases where the store cannot go
/// on and the user has to act.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused a file operation.
    #[error(
        "could not {action} {}: {error}; check that the profile directory exists, is writable \
         by you and that the disk is not full",
        path.display()
    )]
    Io {
        /// What was being done, e.g. `"write"`.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        error: io::Error,
    },
    /// An older Lockstep, which keeps the profile in files, has it open: its files cannot be
    /// imported until it is closed.
    #[error(
        "an older version of Lockstep is using the profile at {}; close it and try again",
        dir.display()
    )]
    Busy {
        /// The profile's data directory.
        dir: PathBuf,
    },
    /// A file was written by a newer Lockstep in a format this one does not read.
    #[error(
        "{} was written by a newer version of Lockstep (format {found}, this version reads \
         format {supported}); update Lockstep to use this profile",
        path.display()
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The format version found in it.
        found: u64,
        /// The newest format this version reads.
        supported: u64,
    },
    /// An entry or the cache could not be turned into JSON (for instance a stamp beyond the
    /// year 33658). Nothing was written.
    #[error("could not encode {what} for {}: {reason}; nothing was written", path.display())]
    Encode {
        /// What was being encoded, e.g. `"an outbox entry"`.
        what: &'static str,
        /// The file it was meant for.
        path: PathBuf,
        /// Why (never a value).
        reason: String,
    },
    /// The database refused an operation, or is damaged (`corrupt`).
    #[error(
        "could not {action} the profile database {}: {reason}; check that the disk is not full \
         and that no other program holds the file",
        path.display()
    )]
    Database {
        /// What was being done, e.g. `"write"`.
        action: &'static str,
        /// The database file.
        path: PathBuf,
        /// SQLite says the file is damaged or not a database.
        corrupt: bool,
        /// SQLite's message (it names tables and constraints, never values).
        reason: String,
    },
    /// The store's thread is gone (it stopped after a bug); reopen the profile.
    #[error("the profile's store stopped unexpectedly; restart Lockstep (queued edits are kept)")]
    Stopped,
}

impl StoreError {
    /// A [`StoreError::Io`] for `action` on `path`.
    pub(crate) fn io(action: &'static str, path: &Path, error: io::Error) -> StoreError {
        StoreError::Io {
            action,
            path: path.to_owned(),
            error,
        }
    }
}

/// A value a key had on this device, as the local history keeps it.
#[derive(Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    /// The version's number: it never changes and grows with each version, across keys.
    pub version: i64,
    pub key: String,
    /// The value; `None` for a reset to the default.
    pub value: Option<Value>,
    /// The write's stamp (`None` for a device-only value, which is never stamped).
    #[serde(skip)]
    pub hlc: Option<lockstep_protocol::hlc::Hlc>,
    /// The device that wrote it.
    pub device_id: Option<String>,
    /// Its name, when the server said.
    pub device_name: Option<String>,
    /// When this device took it in, Unix milliseconds.
    pub at_ms: i64,
    /// Where it came from.
    pub origin: HistoryOrigin,
}

impl fmt::Debug for HistoryEntry {
    /// Like a derived `Debug`, but the value of a sensitive key shows as `<redacted>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("HistoryEntry");
        s.field("version", &self.version).field("key", &self.key);
        if settings::is_sensitive(&self.key) && self.value.is_some() {
            s.field("value", &format_args!("<redacted>"));
        } else {
            s.field("value", &self.value);
        }
        s.field("device_id", &self.device_id)
            .field("device_name", &self.device_name)
            .field("at_ms", &self.at_ms)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Where a version in the local history came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryOrigin {
    /// Set on this device (here, or by another process on this profile).
    Here,
    /// Arrived from another device.
    Arrived,
    /// A device-only value, set here and never synced.
    DeviceOnly,
}

impl HistoryOrigin {
    fn as_str(self) -> &'static str {
        match self {
            HistoryOrigin::Here => "here",
            HistoryOrigin::Arrived => "arrived",
            HistoryOrigin::DeviceOnly => "device_only",
        }
    }

    fn parse(text: &str) -> HistoryOrigin {
        match text {
            "arrived" => HistoryOrigin::Arrived,
            "device_only" => HistoryOrigin::DeviceOnly,
            _ => HistoryOrigin::Here,
        }
    }

    /// How a listing shows it.
    pub fn label(self) -> &'static str {
        match self {
            HistoryOrigin::Here => "set here",
            HistoryOrigin::Arrived => "arrived",
            HistoryOrigin::DeviceOnly => "this device only",
        }
    }
}

/// How many versions of each key the local history keeps, unless told otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// What [`ProfileStore::open`] found and repaired. Tell the user about anything but a
/// [clean](OpenReport::is_clean) open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The database was damaged: why, and where it was moved.
    pub damaged: Option<Damaged>,
    /// Files of the earlier file store that were imported (and removed).
    pub imported: Option<legacy::Imported>,
    /// Rows whose values did not open with the keychain's key (left out).
    pub unreadable: db::Unreadable,
}

/// A damaged database, moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// What SQLite said (never a value).
    pub reason: String,
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
    /// Queued edits that could still be read and were kept.
    pub kept_edits: usize,
}

impl OpenReport {
    /// Whether nothing was repaired, imported or left out.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_none()
            && self.imported.is_none()
            && self.unreadable == db::Unreadable::default()
    }

    /// Whether the cache must be rebuilt from the server.
    pub fn needs_full_pull(&self) -> bool {
        self.damaged.is_some() || self.unreadable.settings > 0
    }

    /// What to tell the user, one sentence per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(d) = &self.damaged {
            out.push(format!(
                "The local settings database was damaged ({}); it was kept at {}, {} queued \
                 edit(s) that could still be read were kept, and the rest is rebuilt from the \
                 server.",
                d.reason,
                d.moved_to.display(),
                d.kept_edits
            ));
        }
        if let Some(imported) = &self.imported
            && imported.unreadable_edits > 0
        {
            out.push(format!(
                "{} queued edit(s) could not be read from the old outbox file and were not \
                 imported; the damaged file was kept at {}",
                imported.unreadable_edits,
                imported
                    .kept_at
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(not kept)".into())
            ));
        }
        if let Some(imported) = &self.imported
            && let Some(reason) = &imported.cache_damaged
        {
            out.push(format!(
                "The old settings cache was damaged ({reason}); it was kept at {} and is rebuilt \
                 from the server.",
                imported
                    .cache_kept_at
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(not kept)".into())
            ));
        }
        if !self.unreadable.outbox.is_empty() {
            out.push(format!(
                "{} queued edit(s) ({}) could not be opened with this device's keychain key and \
                 will not be sent",
                self.unreadable.outbox.len(),
                self.unreadable.outbox.join(", ")
            ));
        }
        out
    }
}

/// A job for the store's thread.
type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// A profile's store: its database, open on a thread of its own. Dropping it finishes the jobs
/// already sent and closes the database.
#[derive(Debug)]
pub struct ProfileStore {
    dir: PathBuf,
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProfileStore {
    /// Opens the profile in `dir` for the device `device_id`, creating the directory (mode
    /// `0700` on Unix) and the database if missing, importing the files of the earlier file
    /// store if present, and setting a damaged database aside (see the [module docs](self)).
    /// Sensitive values are sealed with `seal`.
    pub fn open(
        dir: impl Into<PathBuf>,
        seal: Option<LocalSeal>,
        device_id: &str,
        history_limit: usize,
    ) -> Result<(ProfileStore, OpenReport), StoreError> {
        let dir = dir.into();
        let device_id = device_id.to_owned();
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (opened, opening) = std::sync::mpsc::sync_channel(1);
        // The thread opens the database too: no disk work on the caller's thread.
        let thread = std::thread::Builder::new()
            .name("lockstep-store".into())
            .spawn({
                let dir = dir.clone();
                move || {
                    let mut db = match open_profile(&dir, seal, &device_id, history_limit) {
                        Ok((db, report)) => {
                            let _ = opened.send(Ok(report));
                            db
                        }
                        Err(error) => {
                            let _ = opened.send(Err(error));
                            return;
                        }
                    };
                    for job in queue {
                        job(&mut db);
                    }
                }
            })
            .map_err(|e| StoreError::io("start the store thread for", &dir, e))?;
        let report = opening.recv().map_err(|_| StoreError::Stopped)?;
        let store = ProfileStore {
            dir,
            jobs: Some(jobs),
            thread: Some(thread),
        };
        // On failure, dropping the store joins the thread, which has ended.
        Ok((store, report?))
    }

    /// The profile's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or(StoreError::Stopped)
    }

    /// Runs `f` on the store's thread and awaits its answer: the caller's executor thread
    /// never waits on the disk.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.send(Box::new(move |db| {
            let _ = answer.send(f(db));
        }))?;
        answered.await.map_err(|_| StoreError::Stopped)?
    }

    /// Runs `f` on the store's thread and waits for its answer (for synchronous callers).
    pub fn call_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.send(Box::new(move |db| {
            let _ = answer.send(f(db));
        }))?;
        answered.recv().map_err(|_| StoreError::Stopped)?
    }
}

impl Drop for ProfileStore {
    fn drop(&mut self) {
        // Ends the thread's loop once the jobs sent so far are done.
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the profile store's thread panicked");
        }
    }
}

/// Opens the profile in `dir` (see [`ProfileStore::open`]) on the calling thread.
fn open_profile(
    dir: &Path,
    seal: Option<LocalSeal>,
    device_id: &str,
    history_limit: usize,
) -> Result<(Db, OpenReport), StoreError> {
    create_private_dir(dir)?;
    let path = dir.join(DB_FILE);
    let mut report = OpenReport::default();
    let mut db = match open_db(&path, seal.clone(), device_id, history_limit) {
        Ok(db) => db,
        Err(StoreError::Database {
            corrupt: true,
            reason,
            ..
        }) => {
            let (db, damaged) =
                rebuild_damaged(dir, &path, reason, seal.clone(), device_id, history_limit)?;
            report.damaged = Some(damaged);
            db
        }
        Err(other) => return Err(other),
    };
    report.imported = legacy::import(dir, &mut db, seal)?;
    report.unreadable = db.unreadable().clone();
    Ok((db, report))
}

/// Opens the database at `path`, creating it readable by its owner only.
fn open_db(
    path: &Path,
    seal: Option<LocalSeal>,
    device_id: &str,
    history_limit: usize,
) -> Result<Db, StoreError> {
    // SQLite would create the file with the umask's mode; create it private first.
    private_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io("create", path, e))?;
    Db::open(path, seal, device_id, history_limit)
}

/// Moves the damaged database at `path` (and its `-wal` and `-shm` files) aside, opens a new
/// one and carries into it the queued edits and device-only values that still read.
fn rebuild_damaged(
    dir: &Path,
    path: &Path,
    reason: String,
    seal: Option<LocalSeal>,
    device_id: &str,
    history_limit: usize,
) -> Result<(Db, Damaged), StoreError> {
    let salvaged = legacy::salvage(path, seal.as_ref());
    let moved_to = quarantine_path(dir, "profile", ".sqlite3");
    fs::rename(path, &moved_to)
        .map_err(|e| StoreError::io("move the damaged database", path, e))?;
    for suffix in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = moved_to.as_os_str().to_owned();
        to.push(suffix);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::io(
                    "move the damaged database",
                    Path::new(&from),
                    e,
                ));
            }
        }
    }
    sync_dir(dir)?;
    tracing::error!(
        path = %path.display(),
        moved_to = %moved_to.display(),
        %reason,
        kept = salvaged.edits.len(),
        "the profile's database was damaged; it was moved aside and is rebuilt from the server"
    );
    let mut db = open_db(path, seal, device_id, history_limit)?;
    let kept_edits = salvaged.edits.len();
    db.write(|tx| {
        for (key, value) in &salvaged.device_only {
            tx.set_device_local(key, value.clone(), crate::clock_ms())?;
        }
        tx.queue(&salvaged.edits)
    })?;
    Ok((
        db,
        Damaged {
            reason,
            moved_to,
            kept_edits,
        },
    ))
}

/// Creates `dir` and its parents if missing; on Unix a created directory gets mode `0700`.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| StoreError::io("create the directory", dir, e))
}

/// Open options for a file only its owner may read (mode `0600` on Unix when created).
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Makes renames and file creations in `dir` durable.
///
/// On Unix this `fsync`s the directory; filesystems that cannot (they answer "invalid input"
/// or "unsupported") are tolerated. Elsewhere (Windows) directories cannot be opened this way
/// and the rename itself is what the OS offers, so this does nothing.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        let result = File::open(dir).and_then(|d| d.sync_all());
        match result {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(StoreError::io("sync the directory", dir, e)),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically and durably: a new temporary file beside it
/// (`.<name>.<random>.tmp`, created exclusively and, on Unix, readable by its owner only, by
/// `tempfile`), `fsync`, rename over `path`, `fsync` of the directory.
///
/// After a crash `path` holds either the old or the new content, never a mix; a temporary file
/// a crash left behind is removed by [`remove_stale_temp_files`] when the store next opens.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;

    let dir = parent_dir(path);
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)
        .map_err(|e| StoreError::io("create a temporary file in", dir, e))?;
    // On failure the temporary file is deleted when `tmp` drops.
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| StoreError::io("write", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| StoreError::io("replace", path, e.error))?;
    sync_dir(dir)
}

/// How the temporary files of [`write_atomic`] end.
const TEMP_SUFFIX: &str = ".tmp";

/// Removes the temporary files (`.<name>.<random>.tmp`) that an interrupted [`write_atomic`]
/// left in `dir`. Only the process holding the profile's lock may call this: another one could
/// be in the middle of a write.
fn remove_stale_temp_files(dir: &Path) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove the stale", &path, e)),
            }
        }
    }
    Ok(())
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A path in `dir` named `<stem>.corrupt-<unix ms><ext>` that does not exist yet (a `-<n>`
/// suffix is added after the time when needed).
fn quarantine_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    let ms = crate::clock_ms();
    let mut n = 0u32;
    loop {
        let name = if n == 0 {
            format!("{stem}.corrupt-{ms}{ext}")
        } else {
            format!("{stem}.corrupt-{ms}-{n}{ext}")
        };
        let path = dir.join(name);
        if !path.exists() {
            return path;
        }
        n += 1;
    }
}

/// Describes a JSON error by kind and position only: serde's own messages can quote the value
/// they choked on, which may be a secret.
fn describe_json_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match error.classify() {
        Category::Eof => "it ends too early (cut short)",
        Category::Syntax => "it is not valid JSON",
        Category::Data => "its content has the wrong shape",
        Category::Io => "it could not be read",
    };
    if error.line() == 0 {
        what.to_owned()
    } else {
        format!("{what} (line {}, column {})", error.line(), error.column())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lockstep_protocol::sync::SettingRow;

    /// The names of the files in `dir`, sorted.
    pub(crate) fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    use lockstep_protocol::hlc::Hlc;
    use serde_json::json;

    fn seal() -> LocalSeal {
        LocalSeal::from_keychain_text(&LocalSeal::generate_key()).unwrap()
    }

    fn open(dir: &Path, seal: &LocalSeal) -> ProfileStore {
        let (store, report) = ProfileStore::open(
            dir,
            Some(seal.clone()),
            "this-device",
            DEFAULT_HISTORY_LIMIT,
        )
        .unwrap();
        assert!(report.is_clean(), "{report:?}");
        store
    }

    fn edit(key: &str, value: Value, at: u64) -> OutboxEntry {
        OutboxEntry::new(key, value, Hlc::new(at, 0), false, at as i64)
    }

    #[test]
    fn two_stores_share_one_profile_and_see_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profiles").join("default");
        let seal = seal();
        let first = open(&profile, &seal);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&profile).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            let mode = fs::metadata(profile.join(DB_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second process on the same profile (the CLI beside the app).
        let second = open(&profile, &seal);
        first
            .call_blocking(|db| db.write(|tx| tx.queue(&[edit("custom.a", json!(1), 10)])))
            .unwrap();
        let seen = second
            .call_blocking(|db| {
                let seen =
                    db.read(|v| v.outbox.iter().map(|e| e.key.clone()).collect::<Vec<_>>())?;
                Ok((seen, db.take_elsewhere()?))
            })
            .unwrap();
        assert_eq!(seen.0, ["custom.a"]);
        assert!(seen.1.outbox_changed);
        assert_eq!(seen.1.changed.get("custom.a"), Some(&None), "{:?}", seen.1);
        // Its own writes are not news to itself.
        let again = first.call_blocking(|db| db.take_elsewhere()).unwrap();
        assert_eq!(again, Elsewhere::default());
        drop((first, second));

        let reopened = open(&profile, &seal);
        let value = reopened
            .call_blocking(|db| db.read(|v| v.cache.effective("custom.a")))
            .unwrap();
        assert_eq!(value, Some(json!(1)));
        assert_eq!(reopened.dir(), profile);
    }

    #[test]
    fn a_process_still_holding_the_old_key_after_a_wipe_elsewhere_is_told_to_take_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = seal();
        let wiping = open(dir.path(), &old);
        let following = open(dir.path(), &old);
        let new = seal();
        let new_for_wipe = new.clone();
        wiping
            .call_blocking(move |db| {
                db.write(|tx| tx.clear(Some(&new_for_wipe)))?;
                db.set_seal(Some(new_for_wipe))
            })
            .unwrap();
        let told = following.call_blocking(|db| db.take_elsewhere()).unwrap();
        assert!(told.seal_changed, "{told:?}");
        let new_for_follower = new.clone();
        following
            .call_blocking(move |db| {
                db.set_seal(Some(new_for_follower))?;
                db.write(|tx| tx.queue(&[edit("integrations.github", json!("ghp_after_wipe"), 10)]))
            })
            .unwrap();
        assert!(
            !following
                .call_blocking(|db| db.take_elsewhere())
                .unwrap()
                .seal_changed
        );
        let seen = wiping
            .call_blocking(|db| db.read(|v| v.outbox.first().map(|e| e.value.clone())))
            .unwrap();
        assert_eq!(
            seen,
            Some(json!("ghp_after_wipe")),
            "sealed with the key both now hold"
        );
    }

    #[test]
    fn a_second_edit_of_a_key_replaces_the_first_and_a_set_aside_one() {
        let dir = tempfile::tempdir().unwrap();
        let seal = seal();
        let store = open(dir.path(), &seal);
        let outbox = store
            .call_blocking(|db| {
                db.write(|tx| {
                    tx.queue(&[
                        edit("custom.a", json!(1), 10),
                        edit("custom.b", json!(2), 11),
                    ])?;
                    let first = tx.view().outbox[0].id.clone();
                    tx.mark_set_aside(
                        &[first],
                        &Refusal {
                            reason: "no".into(),
                            code: None,
                            at_ms: 0,
                        },
                    )?;
                    tx.queue(&[edit("custom.a", json!(3), 12)])
                })?;
                db.read(|v| v.outbox.clone())
            })
            .unwrap();
        let shown: Vec<(&str, &Value, bool)> = outbox
            .iter()
            .map(|e| (e.key.as_str(), &e.value, e.set_aside.is_some()))
            .collect();
        assert_eq!(
            shown,
            [
                ("custom.b", &json!(2), false),
                ("custom.a", &json!(3), false)
            ],
            "one row per key, in the order last edited"
        );
    }

    #[test]
    fn the_history_keeps_every_value_up_to_its_limit_and_seals_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let seal = seal();
        let (store, _) =
            ProfileStore::open(dir.path(), Some(seal.clone()), "this-device", 3).unwrap();
        store
            .call_blocking(|db| {
                db.write(|tx| {
                    for n in 1..=5 {
                        tx.queue(&[edit("custom.a", json!(n), n)])?;
                    }
                    tx.queue(&[edit("integrations.github", json!("ghp_history_secret"), 9)])?;
                    tx.apply_remote(
                        SettingRow {
                            key: "custom.a".into(),
                            value: json!("theirs"),
                            hlc: Hlc::new(20, 0),
                            device_id: "other".into(),
                            device_name: Some("Other laptop".into()),
                            updated_at: lockstep_protocol::timestamp::from_millis(20),
                            deleted: false,
                        },
                        20,
                    )
                })
            })
            .unwrap();
        let history = store.call_blocking(|db| db.history("custom.a")).unwrap();
        let values: Vec<(Option<Value>, HistoryOrigin)> = history
            .iter()
            .map(|h| (h.value.clone(), h.origin))
            .collect();
        assert_eq!(
            values,
            [
                (Some(json!("theirs")), HistoryOrigin::Arrived),
                (Some(json!(5)), HistoryOrigin::Here),
                (Some(json!(4)), HistoryOrigin::Here),
            ]
        );
        assert_eq!(history[0].device_name.as_deref(), Some("Other laptop"));
        assert!(history[0].version > history[1].version);
        let secret = store
            .call_blocking(|db| db.history("integrations.github"))
            .unwrap();
        assert_eq!(secret[0].value, Some(json!("ghp_history_secret")));
        drop(store);
        let bytes = fs::read(dir.path().join(DB_FILE)).unwrap();
        let wal = fs::read(dir.path().join(format!("{DB_FILE}-wal"))).unwrap_or_default();
        for file in [&bytes, &wal] {
            assert!(
                !file.windows(18).any(|w| w == b"ghp_history_secret"),
                "a secret reached the disk in plain text"
            );
        }
    }

    #[test]
    fn the_live_lease_goes_to_one_holder_until_it_expires_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let seal = seal();
        let store = open(dir.path(), &seal);
        let take = |holder: &'static str, now: i64| {
            store
                .call_blocking(move |db| db.take_lease(holder, now, 3_000))
                .unwrap()
        };
        assert!(take("app", 1_000));
        assert!(!take("cli", 2_000), "held until it expires");
        assert!(take("app", 3_500), "its holder renews it");
        assert!(!take("cli", 6_000));
        assert!(
            take("cli", 6_500),
            "taken over once expired (its holder died)"
        );
        store.call_blocking(|db| db.release_lease("cli")).unwrap();
        assert!(take("app", 6_600), "free again once released");
        // The clock goes back an hour: a lease that runs for longer than its time to live from
        // now is not one its holder renewed within it.
        assert!(!take("cli", 9_000));
        assert!(
            take("cli", 6_600 - 3_600_000),
            "taken once the clock went back"
        );
    }

    #[test]
    fn a_damaged_database_is_set_aside_and_its_readable_edits_kept() {
        let dir = tempfile::tempdir().unwrap();
        let seal = seal();
        let store = open(dir.path(), &seal);
        store
            .call_blocking(|db| db.write(|tx| tx.queue(&[edit("custom.kept", json!("yes"), 10)])))
            .unwrap();
        drop(store);
        // Damage the settings table's pages but not the outbox's: overwrite the second half.
        let path = dir.path().join(DB_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let page = 4096;
        let settings_root = page; // page 2 holds the first table created: `meta`.
        for b in &mut bytes[settings_root..settings_root + 100] {
            *b = 0xff;
        }
        fs::write(&path, &bytes).unwrap();

        let (store, report) =
            ProfileStore::open(dir.path(), Some(seal.clone()), "this-device", 10).unwrap();
        let damaged = report.damaged.clone().expect("reported as damaged");
        assert!(damaged.moved_to.exists(), "the damaged file is kept");
        assert!(report.needs_full_pull());
        assert!(
            report.problems()[0].contains("damaged"),
            "{:?}",
            report.problems()
        );
        let kept = store
            .call_blocking(|db| {
                db.read(|v| v.outbox.iter().map(|e| e.key.clone()).collect::<Vec<_>>())
            })
            .unwrap();
        assert_eq!(kept.len(), damaged.kept_edits);
        assert_eq!(kept, ["custom.kept"]);
    }

    #[test]
    fn a_database_from_a_newer_lockstep_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let seal = seal();
        drop(open(dir.path(), &seal));
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = ProfileStore::open(dir.path(), Some(seal), "this-device", 10).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerFormat { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("update Lockstep"), "{err}");
    }

    #[test]
    fn io_errors_name_the_path_and_what_to_do() {
        let err = StoreError::io(
            "write",
            Path::new("/x/outbox.jsonl"),
            io::Error::other("disk full"),
        );
        let text = err.to_string();
        assert!(
            text.starts_with("could not write /x/outbox.jsonl: disk full;"),
            "{text}"
        );
        assert!(text.contains("not full"), "{text}");
    }

    #[test]
    fn write_atomic_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"first version, rather long").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(
            file_names(dir.path()),
            ["f.json"],
            "no temporary file is left"
        );
    }

    #[test]
    fn stale_temporary_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            ".cache.json.x1Yz.tmp",
            ".outbox.jsonl.Ab3d.tmp",
            "cache.json",
            "notes.tmp",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_stale_temp_files(dir.path()).unwrap();
        assert_eq!(file_names(dir.path()), ["cache.json", "notes.tmp"]);
    }

    #[test]
    fn quarantine_paths_do_not_collide() {
        let dir = tempfile::tempdir().unwrap();
        let first = quarantine_path(dir.path(), "cache", ".json");
        fs::write(&first, b"x").unwrap();
        let second = quarantine_path(dir.path(), "cache", ".json");
        assert_ne!(first, second);
        let name = second.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("cache.corrupt-") && name.ends_with(".json"),
            "{name}"
        );
    }

    #[test]
    fn json_errors_are_described_without_content() {
        let err = serde_json::from_str::<i64>("\"sk_live_secret\"").unwrap_err();
        let text = describe_json_error(&err);
        assert!(!text.contains("sk_live"), "{text}");
        assert!(text.contains("wrong shape"), "{text}");
        let err = serde_json::from_str::<serde_json::Value>("{\"a\": ").unwrap_err();
        assert!(describe_json_error(&err).contains("cut short"));
    }
}
