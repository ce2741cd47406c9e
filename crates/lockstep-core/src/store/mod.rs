//! Durable local state of one profile: the settings cache, the sync cursor and the outbox of
//! edits not yet acknowledged by the server.
//!
//! A profile's data directory holds:
//!
//! | file | what | written |
//! |---|---|---|
//! | `outbox.jsonl` | [`Outbox`]: one checksummed line per local edit, oldest first | appended and `fsync`ed before [`Outbox::append`] returns; rewritten atomically when the server acknowledges edits |
//! | `outbox.lock` | held (OS file lock) while a process has the outbox open | once |
//! | `cache.json` | [`SettingsCache`]: the synced rows, the feed cursor and the device-only settings, with a checksum | whole, atomically (temp file, `fsync`, rename, `fsync` of the directory) |
//!
//! Recovery rules, so that no acknowledged edit is ever lost and nothing is dropped silently:
//!
//! - The outbox is the only place an unsent edit lives. A torn last line (a crash during an
//!   append that therefore never returned) is cut off and reported in [`OpenReport`]; damage
//!   anywhere else keeps every readable entry, copies the whole file aside to
//!   `outbox.corrupt-<unix ms>.jsonl` and reports how many lines could not be read.
//! - The cache can be rebuilt from the server: a truncated, unparsable or wrong-checksum cache is
//!   moved aside to `cache.corrupt-<unix ms>.json` and reported as [`LoadOutcome::Corrupt`], and
//!   the engine does a full pull.
//!
//! The store writes what it is given and interprets nothing but the merge rule; it never logs
//! values, and its `Debug` output hides the values of sensitive keys (`integrations.*`). On Unix
//! the files are created readable by their owner only, and [`ProfileStore::open`] creates a
//! missing data directory with mode `0700`.
//!
//! The parsing and checking of the files are pure functions over bytes (see the `parse_*` and
//! `encode_*` helpers in [`outbox`] and [`cache`]); only the thin layers that read, write and
//! rename files touch the disk.

pub mod cache;
pub mod outbox;
pub mod seal;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub use cache::{CACHE_FILE, CACHE_FORMAT_VERSION, CacheData, LoadOutcome, SettingsCache};
pub use outbox::{OUTBOX_FILE, OUTBOX_LOCK_FILE, OpenReport, Outbox, OutboxEntry, Refusal};
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
    /// Another process holds the profile's outbox.
    #[error(
        "another Lockstep process (the desktop app or another `lockstep` command) is using the \
         profile at {}; close it and try again",
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
    /// An append failed half-way and the partial line could not be cut off again, so further
    /// appends could land after garbage. The outbox refuses writes until it is reopened.
    #[error(
        "the outbox at {} could not be repaired after a failed write; restart Lockstep (queued \
         edits are kept and checked when it reopens)",
        path.display()
    )]
    OutboxPoisoned {
        /// The outbox file.
        path: PathBuf,
    },
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

/// A profile's data directory with its outbox open (and locked against other processes).
#[derive(Debug)]
pub struct ProfileStore {
    dir: PathBuf,
    outbox: Outbox,
    seal: Option<LocalSeal>,
}

/// What [`ProfileStore::open`] found: the store, the cache as loaded, and what was repaired in
/// the outbox.
#[derive(Debug)]
pub struct OpenedProfile {
    /// The opened store.
    pub store: ProfileStore,
    /// The cache: loaded, missing (first run) or corrupt (moved aside; do a full pull).
    pub cache: LoadOutcome,
    /// What opening the outbox repaired; tell the user when it is not
    /// [clean](OpenReport::is_clean).
    pub outbox_report: OpenReport,
}

impl ProfileStore {
    /// Opens the profile in `dir`, creating the directory (mode `0700` on Unix) if missing:
    /// opens and locks the outbox (see [`Outbox::open`]) and loads the cache (see
    /// [`SettingsCache::load`]).
    ///
    /// Fails with [`StoreError::Busy`] when another process has the profile open.
    pub fn open(dir: impl Into<PathBuf>) -> Result<OpenedProfile, StoreError> {
        ProfileStore::open_sealed(dir, None)
    }

    /// [`ProfileStore::open`], sealing sensitive values in both files with `seal` (see
    /// [`seal`]).
    pub fn open_sealed(
        dir: impl Into<PathBuf>,
        seal: Option<LocalSeal>,
    ) -> Result<OpenedProfile, StoreError> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        let (outbox, outbox_report) = Outbox::open_sealed(&dir, seal.clone())?;
        let cache = SettingsCache::load_sealed(&dir, seal.as_ref())?;
        Ok(OpenedProfile {
            store: ProfileStore { dir, outbox, seal },
            cache,
            outbox_report,
        })
    }

    /// The profile's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The outbox of unacknowledged edits.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The outbox, to append to or to remove acknowledged edits from.
    pub fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// Saves `data` as the profile's cache, durably (see [`SettingsCache::save`]).
    pub fn save_cache(&self, data: &CacheData) -> Result<(), StoreError> {
        SettingsCache::save_sealed(&self.dir, data, self.seal.as_ref())
    }

    /// Forgets the profile's account data: empties the outbox and removes the cache file.
    /// From now on, sensitive values are sealed with `seal` (the wiped profile's key is gone).
    pub fn clear(&mut self, seal: Option<LocalSeal>) -> Result<(), StoreError> {
        self.outbox.clear(seal.clone())?;
        self.seal = seal;
        let cache = self.dir.join(CACHE_FILE);
        match fs::remove_file(&cache) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", &cache, e)),
        }
    }
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

    /// The names of the files in `dir`, sorted.
    pub(crate) fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn profile_store_opens_both_and_locks_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profiles").join("default");
        let opened = ProfileStore::open(&profile).unwrap();
        assert!(matches!(opened.cache, LoadOutcome::Missing));
        assert!(opened.outbox_report.is_clean());
        assert!(opened.store.outbox().is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&profile).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }

        let err = ProfileStore::open(&profile).unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("close it and try again"), "{err}");

        let data = CacheData {
            cursor: 42,
            ..CacheData::default()
        };
        opened.store.save_cache(&data).unwrap();
        drop(opened);

        let again = ProfileStore::open(&profile).unwrap();
        match again.cache {
            LoadOutcome::Loaded(loaded) => assert_eq!(loaded.cursor, 42),
            other => panic!("expected the cache to load, got {other:?}"),
        }
        assert_eq!(again.store.dir(), profile);
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
