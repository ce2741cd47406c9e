//! Queued edits ([`OutboxEntry`], [`Refusal`]), and the reader of the earlier file store's
//! journal of them, for the import into the database ([`super::legacy`]).
//!
//! That store kept `<dir>/outbox.jsonl`, one line per edit, oldest first:
//!
//! ```text
//! 3f9a0c1e {"id":"…","key":"appearance.theme","value":"dark","hlc":"…","deleted":false,"recorded_at_ms":…}
//! ```
//!
//! that is the CRC-32 of the JSON text as 8 lowercase hex digits, a space, the JSON of an
//! [`OutboxEntry`], and a newline; a line was appended and `fsync`ed when an edit was
//! acknowledged. Reading it ([`Outbox::open`]) repairs as that store did:
//!
//! - a last line without its newline, or a last line whose checksum fails, is the append that
//!   was interrupted (it never returned, so nobody was told it was saved): it is cut off and
//!   [`OpenReport::torn_tail_dropped`] says so;
//! - any other damage is corruption: every line that still reads is kept, the original file is
//!   copied to `outbox.corrupt-<unix ms>.jsonl` first, and [`OpenReport::corrupt_lines`] and
//!   [`OpenReport::quarantined`] say what to report. Nothing is dropped silently.
//!
//! The reader holds the OS lock on `outbox.lock` that the file store held while open, so an
//! older Lockstep still running on the profile makes it fail with [`StoreError::Busy`]. The OS
//! releases the lock when a process ends, however it ends.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use lockstep_protocol::hlc::Hlc;
use lockstep_protocol::settings;
use lockstep_protocol::sync::SettingChange;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::seal::{LocalSeal, open_value, seal_value};
use super::{
    StoreError, private_options, quarantine_path, remove_stale_temp_files, sync_dir, write_atomic,
};

/// File name of the journal inside the profile directory.
pub const OUTBOX_FILE: &str = "outbox.jsonl";
/// File name of the lock that keeps a second process out of the outbox.
pub const OUTBOX_LOCK_FILE: &str = "outbox.lock";

/// One local edit waiting for the server.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Unique id (a UUID v4); also the push's mutation id when the entry is pushed alone.
    pub id: String,
    /// The setting key.
    pub key: String,
    /// The new value; `Null` for a deletion.
    pub value: Value,
    /// The stamp of this write.
    pub hlc: Hlc,
    /// Whether the edit deletes the setting.
    pub deleted: bool,
    /// When the user made the edit, Unix milliseconds (for display).
    pub recorded_at_ms: i64,
    /// Set when the server refused the edit for good (retrying it unchanged cannot succeed):
    /// it is kept, not sent, until the user retries or drops it, or a newer edit of the same
    /// key replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_aside: Option<Refusal>,
}

/// Why the server refused an edit for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The server's message (it names the key and the rule, never a value).
    pub reason: String,
    /// The server's error code, e.g. `22023`.
    #[serde(default)]
    pub code: Option<String>,
    /// When it was refused, Unix milliseconds.
    pub at_ms: i64,
}

impl OutboxEntry {
    /// A new entry with a fresh UUID v4 id. A deletion's value is forced to `Null`.
    pub fn new(
        key: impl Into<String>,
        value: Value,
        hlc: Hlc,
        deleted: bool,
        recorded_at_ms: i64,
    ) -> OutboxEntry {
        OutboxEntry {
            id: uuid::Uuid::new_v4().to_string(),
            key: key.into(),
            value: if deleted { Value::Null } else { value },
            hlc,
            deleted,
            recorded_at_ms,
            set_aside: None,
        }
    }

    /// The change to push for this entry.
    pub fn to_change(&self) -> SettingChange {
        SettingChange {
            key: self.key.clone(),
            value: self.value.clone(),
            hlc: self.hlc,
            deleted: self.deleted,
        }
    }
}

impl fmt::Debug for OutboxEntry {
    /// Like a derived `Debug`, but the value of a sensitive key (`integrations.*`) shows as
    /// `<redacted>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("OutboxEntry");
        s.field("id", &self.id).field("key", &self.key);
        if settings::is_sensitive(&self.key) && !self.value.is_null() {
            s.field("value", &format_args!("<redacted>"));
        } else {
            s.field("value", &self.value);
        }
        s.field("hlc", &self.hlc)
            .field("deleted", &self.deleted)
            .field("recorded_at_ms", &self.recorded_at_ms)
            .field("set_aside", &self.set_aside)
            .finish()
    }
}

/// What [`Outbox::open`] repaired. Report anything but a [clean](OpenReport::is_clean) open to
/// the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// An interrupted last append was cut off. It had not returned, so it was never
    /// acknowledged; worth a log line, not an alarm.
    pub torn_tail_dropped: bool,
    /// Lines that could not be read (bad checksum, not an entry) and are missing from the
    /// outbox. Non-zero means queued edits may be lost: tell the user, and where the file was
    /// kept ([`OpenReport::quarantined`]).
    pub corrupt_lines: usize,
    /// Where the damaged journal was copied, untouched, before the readable entries were kept.
    pub quarantined: Option<PathBuf>,
}

impl OpenReport {
    /// Whether the journal was intact.
    pub fn is_clean(&self) -> bool {
        !self.torn_tail_dropped && self.corrupt_lines == 0 && self.quarantined.is_none()
    }
}

/// The journal of unacknowledged edits of one profile. See the [module docs](self).
#[derive(Debug)]
pub struct Outbox {
    entries: Vec<OutboxEntry>,
    /// Holds the OS lock for as long as the outbox is open.
    _lock: File,
}

impl Outbox {
    /// Takes the journal's lock in `dir` and reads the journal (none: no entries), repairing it
    /// as described in the [module docs](self).
    ///
    /// A stale temporary file left by a crash while the file store rewrote the journal is
    /// deleted: the rename had not happened, so the journal itself is the truth.
    pub fn open(dir: &Path) -> Result<(Outbox, OpenReport), StoreError> {
        Outbox::open_sealed(dir, None)
    }

    /// [`Outbox::open`], opening the sealed values of sensitive keys with `seal` (a line whose
    /// value does not open reads as damaged).
    pub fn open_sealed(
        dir: &Path,
        seal: Option<LocalSeal>,
    ) -> Result<(Outbox, OpenReport), StoreError> {
        let lock = acquire_lock(dir)?;
        let path = dir.join(OUTBOX_FILE);

        // Holding the lock, no write of this profile can be in progress.
        remove_stale_temp_files(dir)?;

        let bytes = match fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        let Some(bytes) = bytes else {
            return Ok((
                Outbox {
                    entries: Vec::new(),
                    _lock: lock,
                },
                OpenReport::default(),
            ));
        };

        let parsed = parse_journal_with(&bytes, seal.as_ref());
        let mut report = OpenReport::default();
        match parsed.damage {
            Damage::None => {}
            Damage::TornTail => {
                let file = open_journal(&path, false)?;
                file.set_len(parsed.good_len)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| StoreError::io("repair", &path, e))?;
                report.torn_tail_dropped = true;
                tracing::warn!(
                    path = %path.display(),
                    "cut off an interrupted, never acknowledged write at the end of the outbox"
                );
            }
            Damage::Corrupt {
                bad_lines,
                torn_tail,
            } => {
                let quarantined = quarantine_path(dir, "outbox", ".jsonl");
                copy_durably(&path, &quarantined)?;
                sync_dir(dir)?;
                let text = encode_journal(&parsed.entries, &path, seal.as_ref())?;
                write_atomic(&path, text.as_bytes())?;
                tracing::error!(
                    path = %path.display(),
                    kept = parsed.entries.len(),
                    unreadable = bad_lines,
                    quarantined = %quarantined.display(),
                    "the outbox was damaged; kept every readable entry and a copy of the file"
                );
                report.torn_tail_dropped = torn_tail;
                report.corrupt_lines = bad_lines;
                report.quarantined = Some(quarantined);
            }
        }
        let outbox = Outbox {
            entries: parsed.entries,
            _lock: lock,
        };
        Ok((outbox, report))
    }

    /// The entries read, oldest first.
    pub fn entries(&self) -> &[OutboxEntry] {
        &self.entries
    }
}

/// Takes the outbox lock in `dir`, or fails with [`StoreError::Busy`].
fn acquire_lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(OUTBOX_LOCK_FILE);
    let file = private_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Busy {
            dir: dir.to_owned(),
        }),
        Err(TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {
            tracing::warn!(
                path = %path.display(),
                "file locks are not supported here; not guarding the outbox against a second process"
            );
            Ok(file)
        }
        Err(TryLockError::Error(e)) => Err(StoreError::io("lock", &path, e)),
    }
}

/// Opens the journal for writing (never truncating), creating it if `create`.
fn open_journal(path: &Path, create: bool) -> Result<File, StoreError> {
    private_options()
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))
}

/// Copies `from` to `to` (a new file) and `fsync`s the copy.
fn copy_durably(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::copy(from, to)
        .and_then(|_| File::open(to)?.sync_all())
        .map_err(|e| StoreError::io("copy the damaged outbox to", to, e))
}

/// Encodes entries as journal text.
fn encode_journal(
    entries: &[OutboxEntry],
    path: &Path,
    seal: Option<&LocalSeal>,
) -> Result<String, StoreError> {
    let mut text = String::new();
    for entry in entries {
        let line = encode_line_with(entry, seal).map_err(|e| StoreError::Encode {
            what: "an outbox entry",
            path: path.to_owned(),
            reason: super::describe_json_error(&e),
        })?;
        text.push_str(&line);
    }
    Ok(text)
}

/// One journal line: `<crc32 of json, 8 lowercase hex> <json>\n`.
#[cfg(test)]
fn encode_line(entry: &OutboxEntry) -> Result<String, serde_json::Error> {
    encode_line_with(entry, None)
}

/// [`encode_line`], with the value sealed when the key is sensitive and `seal` is given.
fn encode_line_with(
    entry: &OutboxEntry,
    seal: Option<&LocalSeal>,
) -> Result<String, serde_json::Error> {
    let stored = OutboxEntry {
        value: seal_value(seal, &entry.key, &entry.value),
        ..entry.clone()
    };
    let json = serde_json::to_string(&stored)?;
    let crc = crc32fast::hash(json.as_bytes());
    Ok(format!("{crc:08x} {json}\n"))
}

/// Reads one journal line (without its newline), or `None` if it is damaged.
#[cfg(test)]
fn decode_line(line: &[u8]) -> Option<OutboxEntry> {
    decode_line_with(line, None)
}

/// [`decode_line`], opening a sealed value with `seal` (`None` if it does not open).
fn decode_line_with(line: &[u8], seal: Option<&LocalSeal>) -> Option<OutboxEntry> {
    let (crc, rest) = line.split_at_checked(8)?;
    let json = rest.strip_prefix(b" ")?;
    if !crc.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc32fast::hash(json) != crc {
        return None;
    }
    let mut entry: OutboxEntry = serde_json::from_slice(json).ok()?;
    entry.value = open_value(seal, &entry.key, entry.value)?;
    Some(entry)
}

/// What is wrong with a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// Nothing.
    None,
    /// Only the last line: it lacks its newline, or it is the last line and fails its check.
    TornTail,
    /// Lines that do not read, with readable lines after them (or more than one damaged line
    /// at the end, which one interrupted append cannot produce).
    Corrupt {
        /// Newline-terminated lines that do not read.
        bad_lines: usize,
        /// Whether there was also an unterminated last line (dropped as well).
        torn_tail: bool,
    },
}

/// A journal as read.
#[derive(Debug)]
struct ParsedJournal {
    /// Every readable entry, in order.
    entries: Vec<OutboxEntry>,
    /// Bytes up to the end of the last readable line; the file's correct length when the
    /// damage is a torn tail.
    good_len: u64,
    damage: Damage,
}

/// Reads a journal's bytes and classifies its damage (pure).
#[cfg(test)]
fn parse_journal(bytes: &[u8]) -> ParsedJournal {
    parse_journal_with(bytes, None)
}

/// [`parse_journal`], opening sealed values with `seal`.
fn parse_journal_with(bytes: &[u8], seal: Option<&LocalSeal>) -> ParsedJournal {
    let mut entries = Vec::new();
    let mut good_len = 0u64;
    let mut offset = 0usize;
    let mut bad_lines = 0usize;
    // Whether the last newline-terminated line read so far was damaged.
    let mut last_bad = false;
    let mut rest = bytes;
    while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..pos];
        offset += pos + 1;
        rest = &rest[pos + 1..];
        match decode_line_with(line, seal) {
            Some(entry) => {
                entries.push(entry);
                good_len = offset as u64;
                last_bad = false;
            }
            None => {
                bad_lines += 1;
                last_bad = true;
            }
        }
    }
    let unterminated = !rest.is_empty();
    let damage = match (bad_lines, last_bad, unterminated) {
        (0, _, false) => Damage::None,
        (0, _, true) | (1, true, false) => Damage::TornTail,
        _ => Damage::Corrupt {
            bad_lines,
            torn_tail: unterminated,
        },
    };
    ParsedJournal {
        entries,
        good_len,
        damage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(key: &str, value: Value, millis: u64) -> OutboxEntry {
        OutboxEntry::new(key, value, Hlc::new(millis, 0), false, 1_700_000_000_000)
    }

    fn open(dir: &Path) -> (Outbox, OpenReport) {
        Outbox::open(dir).unwrap()
    }

    /// Writes a journal of `entries` in `dir`, as the file store wrote it.
    fn write_journal(dir: &Path, entries: &[OutboxEntry]) {
        let text: String = entries.iter().map(|e| encode_line(e).unwrap()).collect();
        fs::write(dir.join(OUTBOX_FILE), text).unwrap();
    }

    /// A journal in `dir` with `n` entries (`custom.k0`, …), and those entries.
    fn journal_with_entries(dir: &Path, n: u64) -> Vec<OutboxEntry> {
        let written: Vec<_> = (0..n)
            .map(|i| entry(&format!("custom.k{i}"), json!(i), i))
            .collect();
        write_journal(dir, &written);
        written
    }

    #[test]
    fn entries_are_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, report) = open(dir.path());
        assert!(report.is_clean());
        assert!(outbox.entries().is_empty());
        assert!(!dir.path().join(OUTBOX_FILE).exists(), "nothing is created");
        drop(outbox);
        let written = vec![
            entry("appearance.theme", json!("dark"), 1),
            entry("custom.list", json!([1, "two", {"three": null}]), 2),
            OutboxEntry::new("custom.gone", json!("ignored"), Hlc::new(3, 0), true, 5),
        ];
        assert_eq!(written[2].value, Value::Null, "a deletion carries null");
        write_journal(dir.path(), &written);

        let (outbox, report) = open(dir.path());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(outbox.entries(), written.as_slice());
    }

    #[test]
    fn lines_are_checksummed_json() {
        let e = entry("custom.a", json!(1), 7);
        let line = encode_line(&e).unwrap();
        let (crc, json) = line.trim_end().split_once(' ').unwrap();
        assert_eq!(crc.len(), 8);
        assert_eq!(
            u32::from_str_radix(crc, 16).unwrap(),
            crc32fast::hash(json.as_bytes())
        );
        let back: OutboxEntry = serde_json::from_str(json).unwrap();
        assert_eq!(back, e);
        assert_eq!(decode_line(line.trim_end().as_bytes()), Some(e));
        for bad in [
            "",
            "0000000",
            "zzzzzzzz {}",
            "+0000000 {}",
            &line.trim_end().replace("custom.a", "custom.b"),
        ] {
            assert_eq!(decode_line(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_file_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let a = entry("custom.a", json!(1), 1);
        let b = entry("custom.b", json!(2), 2);
        write_journal(dir.path(), &[a.clone(), b.clone()]);
        let path = dir.path().join(OUTBOX_FILE);
        let good = fs::read(&path).unwrap();

        // An append cut short before its newline.
        let partial = encode_line(&entry("custom.c", json!(3), 3)).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(&partial.as_bytes()[..partial.len() / 2]);
        fs::write(&path, &torn).unwrap();

        let (outbox, report) = open(dir.path());
        assert_eq!(
            report,
            OpenReport {
                torn_tail_dropped: true,
                corrupt_lines: 0,
                quarantined: None
            }
        );
        assert_eq!(outbox.entries(), [a.clone(), b.clone()].as_slice());
        assert_eq!(fs::read(&path).unwrap(), good, "the file was cut back");
        drop(outbox);
        let (outbox, report) = open(dir.path());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(outbox.entries(), [a, b].as_slice());
    }

    #[test]
    fn a_bad_checksum_on_the_last_line_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let a = entry("custom.a", json!(1), 1);
        write_journal(dir.path(), std::slice::from_ref(&a));
        let path = dir.path().join(OUTBOX_FILE);
        let good = fs::read(&path).unwrap();
        let mut damaged = good.clone();
        // A full-length line whose middle never reached the disk (zeros).
        let mut last = encode_line(&entry("custom.b", json!("x".repeat(50)), 2))
            .unwrap()
            .into_bytes();
        let n = last.len();
        last[20..n - 10].fill(0);
        damaged.extend_from_slice(&last);
        fs::write(&path, &damaged).unwrap();

        let (outbox, report) = open(dir.path());
        assert!(report.torn_tail_dropped);
        assert_eq!(report.corrupt_lines, 0);
        assert_eq!(outbox.entries(), [a].as_slice());
        assert_eq!(fs::read(&path).unwrap(), good);
    }

    #[test]
    fn a_corrupt_middle_line_is_quarantined_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let written = journal_with_entries(dir.path(), 4);
        let path = dir.path().join(OUTBOX_FILE);
        let original = fs::read_to_string(&path).unwrap();
        // Flip a character inside the second line's JSON.
        let damaged = original.replacen("custom.k1", "custom.kX", 1);
        fs::write(&path, &damaged).unwrap();

        let (outbox, report) = open(dir.path());
        assert_eq!(report.corrupt_lines, 1);
        assert!(!report.torn_tail_dropped);
        let quarantined = report.quarantined.clone().unwrap();
        assert_eq!(fs::read_to_string(&quarantined).unwrap(), damaged);
        let name = quarantined.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("outbox.corrupt-") && name.ends_with(".jsonl"),
            "{name}"
        );
        let expected = vec![written[0].clone(), written[2].clone(), written[3].clone()];
        assert_eq!(outbox.entries(), expected.as_slice());
        drop(outbox);

        // The journal itself was rewritten clean.
        let (outbox, report) = open(dir.path());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(outbox.entries(), expected.as_slice());
    }

    #[test]
    fn two_damaged_lines_at_the_end_are_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let a = entry("custom.a", json!(1), 1);
        write_journal(dir.path(), std::slice::from_ref(&a));
        let path = dir.path().join(OUTBOX_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(b"garbage line\nmore garbage\n");
        fs::write(&path, &bytes).unwrap();

        let (outbox, report) = open(dir.path());
        assert_eq!(report.corrupt_lines, 2);
        assert!(report.quarantined.is_some());
        assert_eq!(outbox.entries(), [a].as_slice());
    }

    #[test]
    fn parse_journal_classifies_damage() {
        let a = encode_line(&entry("custom.a", json!(1), 1)).unwrap();
        let b = encode_line(&entry("custom.b", json!(2), 2)).unwrap();
        let ab = format!("{a}{b}");
        let cases: Vec<(String, Damage, usize, usize)> = vec![
            (String::new(), Damage::None, 0, 0),
            (ab.clone(), Damage::None, 2, ab.len()),
            (format!("{ab}{}", &a[..5]), Damage::TornTail, 2, ab.len()),
            (format!("{a}junk\n"), Damage::TornTail, 1, a.len()),
            (
                format!("{a}junk\n{b}"),
                Damage::Corrupt {
                    bad_lines: 1,
                    torn_tail: false,
                },
                2,
                ab.len() + 5,
            ),
            (
                format!("\n{ab}"),
                Damage::Corrupt {
                    bad_lines: 1,
                    torn_tail: false,
                },
                2,
                ab.len() + 1,
            ),
            (
                format!("{a}junk\n{}", &b[..3]),
                Damage::Corrupt {
                    bad_lines: 1,
                    torn_tail: true,
                },
                1,
                a.len(),
            ),
        ];
        for (text, damage, n, good_len) in cases {
            let parsed = parse_journal(text.as_bytes());
            assert_eq!(parsed.damage, damage, "{text:?}");
            assert_eq!(parsed.entries.len(), n, "{text:?}");
            assert_eq!(parsed.good_len, good_len as u64, "{text:?}");
        }
        // Invalid UTF-8 is just a damaged line.
        let mut bytes = a.clone().into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        bytes.extend_from_slice(b.as_bytes());
        assert!(matches!(
            parse_journal(&bytes).damage,
            Damage::Corrupt { bad_lines: 1, .. }
        ));
    }

    #[test]
    fn a_stale_temp_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let a = entry("custom.a", json!(1), 1);
        write_journal(dir.path(), std::slice::from_ref(&a));
        let tmp = dir.path().join(".outbox.jsonl.k3Xq9a.tmp");
        fs::write(&tmp, b"half a rewrite").unwrap();
        let (outbox, report) = open(dir.path());
        assert!(report.is_clean());
        assert_eq!(outbox.entries(), [a].as_slice());
        assert!(!tmp.exists());
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = open(dir.path());
        let err = Outbox::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        drop(outbox);
        open(dir.path());
    }

    #[test]
    fn an_entry_is_the_change_it_pushes() {
        let gone = OutboxEntry::new("custom.b", json!("x"), Hlc::new(30, 0), true, 0);
        assert_eq!(gone.to_change().value, Value::Null);
        assert!(gone.to_change().deleted);
        let theme = entry("appearance.theme", json!("dark"), 20);
        assert_eq!(theme.to_change().hlc, Hlc::new(20, 0));
        assert_eq!(theme.to_change().value, json!("dark"));
    }

    #[test]
    fn debug_hides_sensitive_values() {
        let secret = entry("integrations.github", json!("ghp_secret"), 1);
        let text = format!("{secret:?}");
        assert!(!text.contains("ghp_secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        let plain = entry("appearance.theme", json!("dark"), 1);
        assert!(format!("{plain:?}").contains("dark"));
    }

    #[test]
    fn entry_ids_are_valid_mutation_ids() {
        let e = entry("custom.a", json!(1), 1);
        assert!(e.id.len() <= lockstep_protocol::sync::MAX_MUTATION_ID_LEN);
        assert!(
            e.id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(e.id, entry("custom.a", json!(1), 1).id);
    }
}
