//! The settings cache as the engine reads it ([`CacheData`]: the synced rows, the feed cursor,
//! the device-only settings, and the pure merge and overlay rules [`CacheData::apply_remote`],
//! [`CacheData::effective`], [`CacheData::effective_all`]), and the reader of the earlier file
//! store's snapshot of it, for the import into the database ([`super::legacy`]).
//!
//! That store kept `<dir>/cache.json`:
//!
//! ```json
//! {"version":1,"checksum":"<crc32 of the data's JSON text, 8 lowercase hex>","data":{…}}
//! ```
//!
//! where `data` is a [`CacheData`]; the checksum covers the exact bytes of `data` as written, so
//! any truncation or flipped byte is caught. [`SettingsCache::load`] moves a damaged file aside
//! and reports it (the cache is then rebuilt from the server).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use lockstep_protocol::settings;
use lockstep_protocol::sync::{MergeOutcome, SettingRow, merge};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::outbox::OutboxEntry;
#[cfg(test)]
use super::seal::seal_value;
use super::seal::{LocalSeal, open_value};
#[cfg(test)]
use super::write_atomic;
use super::{StoreError, describe_json_error, quarantine_path, sync_dir};

/// File name of the cache inside the profile directory.
pub const CACHE_FILE: &str = "cache.json";
/// The format version this code writes and reads.
pub const CACHE_FORMAT_VERSION: u64 = 1;

/// What the cache holds.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheData {
    /// The synced settings as last seen from the server (or written here and not yet
    /// contradicted), tombstones included, by key.
    pub rows: BTreeMap<String, SettingRow>,
    /// The sequence number of the last change-feed entry applied (0: none).
    pub cursor: i64,
    /// Keys this device keeps to itself ("this device only"): their synced rows are still
    /// tracked but not used.
    pub device_local: BTreeSet<String>,
    /// Values of device-only keys; never synced. A device-only key without a value here reads
    /// as its default.
    pub local_values: BTreeMap<String, Value>,
}

impl fmt::Debug for CacheData {
    /// Keys and stamps only: values (which may be secrets) are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: BTreeMap<&str, String> = self
            .rows
            .iter()
            .map(|(k, r)| {
                let state = if r.deleted { " deleted" } else { "" };
                (k.as_str(), format!("{} by {}{state}", r.hlc, r.device_id))
            })
            .collect();
        f.debug_struct("CacheData")
            .field("rows", &rows)
            .field("cursor", &self.cursor)
            .field("device_local", &self.device_local)
            .field(
                "local_values",
                &self.local_values.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl CacheData {
    /// Applies a row from the server (a pull, the feed, or a push answer) by the merge rule:
    /// it replaces the cached row of its key only if its `(hlc, device_id)` is greater.
    /// Returns whether the cache changed.
    ///
    /// An identical stamp is the same write seen again and changes nothing.
    pub fn apply_remote(&mut self, row: SettingRow) -> bool {
        let current = self.rows.get(&row.key).map(SettingRow::version);
        match merge(current.as_ref(), &row.version()) {
            MergeOutcome::Applied => {
                self.rows.insert(row.key.clone(), row);
                true
            }
            MergeOutcome::Superseded | MergeOutcome::Unchanged => false,
        }
    }

    /// Applies a local edit optimistically, as the row the server will store when
    /// `device_id` pushes it (same merge rule as [`CacheData::apply_remote`]). The push's
    /// answer then changes nothing, or replaces it with the newer version that won.
    pub fn apply_local(&mut self, entry: &OutboxEntry, device_id: &str) -> bool {
        self.apply_remote(local_row(entry, device_id))
    }

    /// Advances the cursor to `seq` if it is further along. (After a full pull that must start
    /// over, set [`CacheData::cursor`] directly.)
    pub fn advance_cursor(&mut self, seq: i64) {
        self.cursor = self.cursor.max(seq);
    }

    /// Whether `key` is kept to this device.
    pub fn is_device_local(&self, key: &str) -> bool {
        self.device_local.contains(key)
    }

    /// Makes `key` device-only with `value` (`None`: its default), or changes its value.
    pub fn set_device_local(&mut self, key: &str, value: Option<Value>) {
        self.device_local.insert(key.to_owned());
        match value {
            Some(value) => {
                self.local_values.insert(key.to_owned(), value);
            }
            None => {
                self.local_values.remove(key);
            }
        }
    }

    /// Makes `key` follow the synced value again, forgetting its device-only value.
    pub fn clear_device_local(&mut self, key: &str) {
        self.device_local.remove(key);
        self.local_values.remove(key);
    }

    /// The value `key` has on this device:
    ///
    /// 1. a device-only key: its device-only value, or its default;
    /// 2. otherwise its synced value, unless deleted;
    /// 3. otherwise its default (`None` for keys without one, such as `custom.*`).
    pub fn effective(&self, key: &str) -> Option<Value> {
        if self.device_local.contains(key) {
            return self
                .local_values
                .get(key)
                .cloned()
                .or_else(|| default_of(key));
        }
        match self.rows.get(key) {
            Some(row) if !row.deleted => Some(row.value.clone()),
            _ => default_of(key),
        }
    }

    /// Every key that has a value on this device, with that value: the defaults, overlaid
    /// with the synced values that are not deleted, overlaid with the device-only settings
    /// (a device-only key without a value of its own shows its default). Agrees with
    /// [`CacheData::effective`] key by key.
    pub fn effective_all(&self) -> BTreeMap<String, Value> {
        let defaults = settings::defaults();
        let mut all: BTreeMap<String, Value> = defaults
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        for (key, row) in &self.rows {
            if !row.deleted {
                all.insert(key.clone(), row.value.clone());
            } else if let Some(default) = defaults.get(key.as_str()) {
                all.insert(key.clone(), default.clone());
            } else {
                all.remove(key);
            }
        }
        for key in &self.device_local {
            match self
                .local_values
                .get(key)
                .or_else(|| defaults.get(key.as_str()))
            {
                Some(value) => {
                    all.insert(key.clone(), value.clone());
                }
                None => {
                    all.remove(key);
                }
            }
        }
        all
    }

    /// Checks what the checksum cannot: each row is filed under its own key.
    fn check_consistency(&self) -> Result<(), String> {
        match self.rows.iter().find(|(key, row)| **key != row.key) {
            Some(_) => Err("a row is filed under another key".to_owned()),
            None => Ok(()),
        }
    }
}

/// The row a local edit shows as until the server answers: the row the server will store when
/// `device_id` pushes it.
pub fn local_row(entry: &OutboxEntry, device_id: &str) -> SettingRow {
    SettingRow {
        key: entry.key.clone(),
        value: if entry.deleted {
            Value::Null
        } else {
            entry.value.clone()
        },
        hlc: entry.hlc,
        device_id: device_id.to_owned(),
        device_name: None,
        updated_at: lockstep_protocol::timestamp::from_millis(entry.recorded_at_ms),
        deleted: entry.deleted,
    }
}

/// The default of `key`, if it has one.
fn default_of(key: &str) -> Option<Value> {
    settings::defaults().remove(key)
}

/// What [`SettingsCache::load`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadOutcome {
    /// The cache, intact.
    Loaded(CacheData),
    /// No cache yet (a new profile, or it was never saved): do a full pull.
    Missing,
    /// The cache was damaged; it was moved aside. Tell the user, then do a full pull.
    Corrupt {
        /// What was wrong, for the user (never the file's content).
        reason: String,
        /// Where the damaged file now is.
        moved_to: PathBuf,
    },
}

/// Reads and writes `cache.json`. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct SettingsCache;

impl SettingsCache {
    /// Loads the cache from `dir`.
    ///
    /// A file that is cut short, is not JSON, fails its checksum or does not hold a
    /// [`CacheData`] is renamed to `cache.corrupt-<unix ms>.json` and reported as
    /// [`LoadOutcome::Corrupt`]. A file from a newer format is left alone and refused with
    /// [`StoreError::NewerFormat`].
    pub fn load(dir: &Path) -> Result<LoadOutcome, StoreError> {
        SettingsCache::load_sealed(dir, None)
    }

    /// [`SettingsCache::load`], opening sealed values with `seal`; a value that does not open
    /// makes the cache damaged (it is rebuilt from the server).
    pub fn load_sealed(dir: &Path, seal: Option<&LocalSeal>) -> Result<LoadOutcome, StoreError> {
        let path = dir.join(CACHE_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadOutcome::Missing),
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        match decode_cache(&bytes, seal) {
            Ok(data) => Ok(LoadOutcome::Loaded(data)),
            Err(DecodeError::Newer(found)) => Err(StoreError::NewerFormat {
                path,
                found,
                supported: CACHE_FORMAT_VERSION,
            }),
            Err(DecodeError::Damaged(reason)) => {
                let moved_to = quarantine_path(dir, "cache", ".json");
                fs::rename(&path, &moved_to)
                    .map_err(|e| StoreError::io("move the damaged cache", &path, e))?;
                sync_dir(dir)?;
                tracing::warn!(
                    path = %path.display(),
                    moved_to = %moved_to.display(),
                    %reason,
                    "the settings cache was damaged; it will be rebuilt from the server"
                );
                Ok(LoadOutcome::Corrupt { reason, moved_to })
            }
        }
    }

    /// Saves `data` to `dir` as the file store did (tests build profiles of that store with it).
    #[cfg(test)]
    pub(crate) fn save(dir: &Path, data: &CacheData) -> Result<(), StoreError> {
        SettingsCache::save_sealed(dir, data, None)
    }

    /// [`SettingsCache::save`], sealing the values of sensitive keys with `seal`.
    #[cfg(test)]
    pub(crate) fn save_sealed(
        dir: &Path,
        data: &CacheData,
        seal: Option<&LocalSeal>,
    ) -> Result<(), StoreError> {
        let path = dir.join(CACHE_FILE);
        let text = encode_cache(data, seal).map_err(|e| StoreError::Encode {
            what: "the settings cache",
            path: path.clone(),
            reason: describe_json_error(&e),
        })?;
        write_atomic(&path, text.as_bytes())
    }
}

#[cfg(test)]
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    version: u64,
    checksum: String,
    data: &'a RawValue,
}

/// The envelope as read (its version was checked first, through [`VersionOnly`]).
#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    checksum: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u64,
}

/// Why cache bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DecodeError {
    /// Damaged, with a reason for the user.
    Damaged(String),
    /// Written in this newer format.
    Newer(u64),
}

/// The file's text for `data` (pure).
#[cfg(test)]
fn encode_cache(data: &CacheData, seal: Option<&LocalSeal>) -> Result<String, serde_json::Error> {
    let mut stored = data.clone();
    for row in stored.rows.values_mut() {
        row.value = seal_value(seal, &row.key, &row.value);
    }
    for (key, value) in stored.local_values.iter_mut() {
        *value = seal_value(seal, key, value);
    }
    let data_text = serde_json::to_string(&stored)?;
    let raw = RawValue::from_string(data_text)?;
    let envelope = EnvelopeOut {
        version: CACHE_FORMAT_VERSION,
        checksum: format!("{:08x}", crc32fast::hash(raw.get().as_bytes())),
        data: &raw,
    };
    let mut text = serde_json::to_string(&envelope)?;
    text.push('\n');
    Ok(text)
}

/// Reads and checks the file's bytes (pure).
fn decode_cache(bytes: &[u8], seal: Option<&LocalSeal>) -> Result<CacheData, DecodeError> {
    let damaged = |what: &str, e: &serde_json::Error| {
        DecodeError::Damaged(format!("{what}: {}", describe_json_error(e)))
    };
    if bytes.is_empty() {
        return Err(DecodeError::Damaged("the file is empty".to_owned()));
    }
    let version: VersionOnly =
        serde_json::from_slice(bytes).map_err(|e| damaged("the file is unreadable", &e))?;
    if version.version > CACHE_FORMAT_VERSION {
        return Err(DecodeError::Newer(version.version));
    }
    if version.version != CACHE_FORMAT_VERSION {
        return Err(DecodeError::Damaged(format!(
            "unknown format version {}",
            version.version
        )));
    }
    let envelope: EnvelopeIn<'_> =
        serde_json::from_slice(bytes).map_err(|e| damaged("the file is unreadable", &e))?;
    let actual = format!("{:08x}", crc32fast::hash(envelope.data.get().as_bytes()));
    if !envelope.checksum.eq_ignore_ascii_case(&actual) {
        return Err(DecodeError::Damaged(
            "the checksum does not match the content".to_owned(),
        ));
    }
    let mut data: CacheData = serde_json::from_str(envelope.data.get())
        .map_err(|e| damaged("the data is unreadable", &e))?;
    data.check_consistency().map_err(DecodeError::Damaged)?;
    let unopened = || {
        DecodeError::Damaged(
            "a sealed value does not open (this device's local key in the keychain is missing \
             or changed)"
                .to_owned(),
        )
    };
    for row in data.rows.values_mut() {
        let value = std::mem::take(&mut row.value);
        row.value = open_value(seal, &row.key, value).ok_or_else(unopened)?;
    }
    for (key, value) in data.local_values.iter_mut() {
        *value = open_value(seal, key, std::mem::take(value)).ok_or_else(unopened)?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_protocol::hlc::Hlc;
    use serde_json::json;

    fn row(key: &str, value: Value, millis: u64, device: &str) -> SettingRow {
        SettingRow {
            key: key.into(),
            value,
            hlc: Hlc::new(millis, 0),
            device_id: device.into(),
            device_name: Some("Laptop".into()),
            updated_at: time::OffsetDateTime::from_unix_timestamp(1_763_920_000).unwrap(),
            deleted: false,
        }
    }

    fn tombstone(key: &str, millis: u64, device: &str) -> SettingRow {
        SettingRow {
            deleted: true,
            ..row(key, Value::Null, millis, device)
        }
    }

    fn sample() -> CacheData {
        let mut data = CacheData::default();
        data.apply_remote(row("appearance.theme", json!("dark"), 10, "a"));
        data.apply_remote(row(
            "custom.nested",
            json!({"b": [1, 2.5, "x"], "a": null}),
            11,
            "b",
        ));
        data.apply_remote(row("integrations.github", json!("ghp_secret"), 12, "a"));
        data.apply_remote(tombstone("custom.gone", 13, "a"));
        data.cursor = 99;
        data.set_device_local("security.lock_after_minutes", Some(json!(0)));
        data
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            SettingsCache::load(dir.path()).unwrap(),
            LoadOutcome::Missing
        );
        let data = sample();
        SettingsCache::save(dir.path(), &data).unwrap();
        assert_eq!(
            SettingsCache::load(dir.path()).unwrap(),
            LoadOutcome::Loaded(data.clone())
        );

        let mut newer = data;
        newer.cursor = 100;
        SettingsCache::save(dir.path(), &newer).unwrap();
        assert_eq!(
            SettingsCache::load(dir.path()).unwrap(),
            LoadOutcome::Loaded(newer)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CACHE_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_file_format_is_versioned_and_checksummed() {
        let text = encode_cache(&sample(), None).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["version"], 1);
        assert_eq!(json["data"]["cursor"], 99);
        let checksum = json["checksum"].as_str().unwrap();
        assert_eq!(checksum.len(), 8);
        let start = text.find("\"data\":").unwrap() + "\"data\":".len();
        let data_text = &text[start..text.len() - 2];
        assert_eq!(
            checksum,
            format!("{:08x}", crc32fast::hash(data_text.as_bytes()))
        );
    }

    fn assert_corrupt(dir: &Path, original: &[u8], reason_part: &str) {
        match SettingsCache::load(dir).unwrap() {
            LoadOutcome::Corrupt { reason, moved_to } => {
                assert!(reason.contains(reason_part), "{reason}");
                assert!(!reason.contains("ghp_secret"), "{reason}");
                assert_eq!(fs::read(&moved_to).unwrap(), original);
                let name = moved_to.file_name().unwrap().to_str().unwrap();
                assert!(
                    name.starts_with("cache.corrupt-") && name.ends_with(".json"),
                    "{name}"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(!dir.join(CACHE_FILE).exists(), "the damaged file was moved");
        assert_eq!(SettingsCache::load(dir).unwrap(), LoadOutcome::Missing);
    }

    #[test]
    fn a_truncated_cache_is_reported_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        SettingsCache::save(dir.path(), &sample()).unwrap();
        let path = dir.path().join(CACHE_FILE);
        let full = fs::read(&path).unwrap();
        let cut = &full[..full.len() / 2];
        fs::write(&path, cut).unwrap();
        assert_corrupt(dir.path(), cut, "cut short");

        fs::write(&path, b"").unwrap();
        assert_corrupt(dir.path(), b"", "empty");
    }

    #[test]
    fn a_checksum_mismatch_is_reported_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        SettingsCache::save(dir.path(), &sample()).unwrap();
        let path = dir.path().join(CACHE_FILE);
        let text = fs::read_to_string(&path).unwrap();
        // Still valid JSON, but not what was written.
        let edited = text.replace("\"cursor\":99", "\"cursor\":98");
        assert_ne!(edited, text);
        fs::write(&path, &edited).unwrap();
        assert_corrupt(dir.path(), edited.as_bytes(), "checksum");
    }

    #[test]
    fn other_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CACHE_FILE);

        fs::write(&path, b"\x00\x00\x00\x00").unwrap();
        assert_corrupt(dir.path(), b"\x00\x00\x00\x00", "not valid JSON");

        // A right checksum over the wrong shape of data.
        let data = r#"{"rows":"ghp_secret","cursor":1}"#;
        let text = format!(
            r#"{{"version":1,"checksum":"{:08x}","data":{data}}}"#,
            crc32fast::hash(data.as_bytes())
        );
        fs::write(&path, &text).unwrap();
        assert_corrupt(dir.path(), text.as_bytes(), "wrong shape");

        // A row filed under another key.
        let mut inconsistent = sample();
        let mut moved = inconsistent.rows["appearance.theme"].clone();
        moved.key = "custom.other".into();
        inconsistent.rows.insert("appearance.theme".into(), moved);
        let text = encode_cache(&inconsistent, None).unwrap();
        fs::write(&path, &text).unwrap();
        assert_corrupt(dir.path(), text.as_bytes(), "another key");

        let text = r#"{"version":0,"checksum":"00000000","data":{}}"#;
        fs::write(&path, text).unwrap();
        assert_corrupt(dir.path(), text.as_bytes(), "version 0");
    }

    #[test]
    fn a_newer_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CACHE_FILE);
        fs::write(&path, r#"{"version":2,"something":"else"}"#).unwrap();
        let err = SettingsCache::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NewerFormat {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("update Lockstep"), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn apply_remote_obeys_the_merge_rule() {
        let mut data = CacheData::default();
        assert!(data.apply_remote(row("appearance.theme", json!("dark"), 10, "b")));
        // Older stamp: ignored.
        assert!(!data.apply_remote(row("appearance.theme", json!("light"), 9, "z")));
        // Same stamp, smaller device id: ignored; larger device id: wins.
        assert!(!data.apply_remote(row("appearance.theme", json!("light"), 10, "a")));
        assert!(data.apply_remote(row("appearance.theme", json!("system"), 10, "c")));
        // The very same write again: unchanged.
        assert!(!data.apply_remote(row("appearance.theme", json!("system"), 10, "c")));
        assert_eq!(data.effective("appearance.theme"), Some(json!("system")));
        // A newer tombstone wins, and the default shows through.
        assert!(data.apply_remote(tombstone("appearance.theme", 11, "a")));
        assert_eq!(data.effective("appearance.theme"), Some(json!("system")));
        assert!(data.rows["appearance.theme"].deleted);
        // An older write does not resurrect it.
        assert!(!data.apply_remote(row("appearance.theme", json!("dark"), 10, "z")));
        assert!(data.rows["appearance.theme"].deleted);
    }

    #[test]
    fn apply_local_writes_the_row_the_server_will_store() {
        let mut data = CacheData::default();
        let entry = OutboxEntry::new(
            "custom.a",
            json!(1),
            Hlc::new(50, 0),
            false,
            1_763_920_000_123,
        );
        assert!(data.apply_local(&entry, "me"));
        let stored = &data.rows["custom.a"];
        assert_eq!(
            (stored.hlc, stored.device_id.as_str()),
            (Hlc::new(50, 0), "me")
        );
        assert_eq!(stored.updated_at.unix_timestamp(), 1_763_920_000);
        // The push's answer for the same write changes nothing.
        assert!(!data.apply_remote(row("custom.a", json!(1), 50, "me")));
        // A newer remote write wins over it.
        assert!(data.apply_remote(row("custom.a", json!(2), 51, "other")));
        assert_eq!(data.effective("custom.a"), Some(json!(2)));
        let delete = OutboxEntry::new("custom.a", json!("x"), Hlc::new(60, 0), true, 0);
        assert!(data.apply_local(&delete, "me"));
        assert_eq!(data.effective("custom.a"), None);
    }

    #[test]
    fn effective_values_overlay_defaults_synced_and_device_local() {
        let defaults = settings::defaults();
        // (what the cache holds, key, expected effective value)
        type Setup = fn(&mut CacheData);
        let cases: Vec<(&str, Setup, &str, Option<Value>)> = vec![
            (
                "nothing: default",
                |_| {},
                "appearance.theme",
                Some(json!("system")),
            ),
            ("nothing, no default", |_| {}, "custom.a", None),
            (
                "synced value",
                |d| {
                    d.apply_remote(row("appearance.theme", json!("dark"), 1, "a"));
                },
                "appearance.theme",
                Some(json!("dark")),
            ),
            (
                "synced family key",
                |d| {
                    d.apply_remote(row("custom.a", json!([1]), 1, "a"));
                },
                "custom.a",
                Some(json!([1])),
            ),
            (
                "deleted: default",
                |d| {
                    d.apply_remote(tombstone("security.lock_after_minutes", 1, "a"));
                },
                "security.lock_after_minutes",
                Some(json!(15)),
            ),
            (
                "deleted family key: nothing",
                |d| {
                    d.apply_remote(tombstone("custom.a", 1, "a"));
                },
                "custom.a",
                None,
            ),
            (
                "device-local beats synced",
                |d| {
                    d.apply_remote(row("appearance.theme", json!("dark"), 1, "a"));
                    d.set_device_local("appearance.theme", Some(json!("light")));
                },
                "appearance.theme",
                Some(json!("light")),
            ),
            (
                "device-local without a value: default, not synced",
                |d| {
                    d.apply_remote(row("appearance.theme", json!("dark"), 1, "a"));
                    d.set_device_local("appearance.theme", None);
                },
                "appearance.theme",
                Some(json!("system")),
            ),
            (
                "device-local family key without a value: nothing",
                |d| {
                    d.apply_remote(row("custom.a", json!(1), 1, "a"));
                    d.set_device_local("custom.a", None);
                },
                "custom.a",
                None,
            ),
            (
                "device-local family key with a value",
                |d| d.set_device_local("custom.mine", Some(json!("here"))),
                "custom.mine",
                Some(json!("here")),
            ),
            (
                "cleared device-local follows synced again",
                |d| {
                    d.apply_remote(row("appearance.theme", json!("dark"), 1, "a"));
                    d.set_device_local("appearance.theme", Some(json!("light")));
                    d.clear_device_local("appearance.theme");
                },
                "appearance.theme",
                Some(json!("dark")),
            ),
            (
                "a stray local value of a synced key is ignored",
                |d| {
                    d.apply_remote(row("custom.a", json!(1), 1, "a"));
                    d.local_values.insert("custom.a".into(), json!(2));
                },
                "custom.a",
                Some(json!(1)),
            ),
        ];
        for (name, setup, key, expected) in cases {
            let mut data = CacheData::default();
            setup(&mut data);
            assert_eq!(data.effective(key), expected, "{name}");
            let all = data.effective_all();
            assert_eq!(all.get(key).cloned(), expected, "{name}: effective_all");
            // effective_all agrees with effective on every key it or the cache knows.
            let keys: BTreeSet<&str> = all
                .keys()
                .map(String::as_str)
                .chain(data.rows.keys().map(String::as_str))
                .chain(data.device_local.iter().map(String::as_str))
                .chain(defaults.keys().copied())
                .collect();
            for k in keys {
                assert_eq!(all.get(k).cloned(), data.effective(k), "{name}: {k}");
            }
            for k in defaults.keys() {
                assert!(all.contains_key(*k), "{name}: every default is present");
            }
        }
    }

    #[test]
    fn cursor_only_moves_forward() {
        let mut data = CacheData::default();
        data.advance_cursor(5);
        data.advance_cursor(3);
        assert_eq!(data.cursor, 5);
    }

    #[test]
    fn debug_leaves_values_out() {
        let text = format!("{:?}", sample());
        assert!(!text.contains("ghp_secret"), "{text}");
        assert!(text.contains("integrations.github"), "{text}");
        assert!(text.contains("cursor: 99"), "{text}");
    }
}
