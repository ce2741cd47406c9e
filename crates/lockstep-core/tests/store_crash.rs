//! Real crash tests of the profile's SQLite store ([`ProfileStore`]): a child process writes in
//! a loop and is killed with SIGKILL (`Child::kill`) at an arbitrary moment; the test then
//! reopens the profile and checks that every write the store acknowledged survived.
//!
//! The child is this very test binary, re-executed to run only one of the `*_child` tests below
//! with an environment variable set (without it those tests return at once). It prints a line
//! after each operation *returns*, so every line the parent read is a promise the store made:
//! the transaction committed (WAL, `synchronous=FULL`) and must outlive the process. The parent
//! passes the child a seal key, so the values of sensitive keys (`integrations.*`) are sealed on
//! disk and must open again after the kill.
//!
//! What the tests prove, after a kill at any point:
//! - the database opens clean: nothing damaged, nothing unreadable (sealed values open), and a
//!   second open finds exactly what the first did;
//! - the outbox holds at most one edit per key, and for each key the last acknowledged edit (or
//!   the one edit in flight when the child died, never an older one); an edit whose removal was
//!   acknowledged is gone, and a removal in flight is all or nothing;
//! - the cache holds, for each key, the last acknowledged row or a newer one, the cursor is at
//!   least the last acknowledged one, and what one transaction wrote (an edit and the row that
//!   shows it; a remote row and the cursor) is found whole or not at all;
//! - killing writers again and again on one profile keeps what every earlier round left.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use lockstep_core::store::{DEFAULT_HISTORY_LIMIT, LocalSeal, OutboxEntry, ProfileStore};
use lockstep_protocol::hlc::Hlc;
use lockstep_protocol::sync::SettingRow;
use lockstep_protocol::timestamp::from_millis;
use serde_json::{Value, json};

const OUTBOX_DIR_VAR: &str = "LOCKSTEP_OUTBOX_WRITER_DIR";
const CACHE_DIR_VAR: &str = "LOCKSTEP_CACHE_WRITER_DIR";
/// The seal key (keychain text) the parent gives the child.
const SEAL_VAR: &str = "LOCKSTEP_CRASH_SEAL_KEY";

/// The device the profile belongs to.
const DEVICE: &str = "crash-test-device";
/// The device the cache writer's remote rows come from.
const OTHER_DEVICE: &str = "crash-test-other-device";

/// Starts every line a child prints (the test harness may print on the same line).
const MARK: &str = "@@lockstep@@ ";

/// How many acknowledged operations to wait for before killing the child.
const ACKS_BEFORE_KILL: usize = 200;

/// The key of the outbox writer's `i`th edit: custom keys, and every tenth a sensitive one (its
/// value is sealed in the outbox and in the cache).
fn edit_key(i: u64) -> String {
    if i % 10 == 9 {
        format!("integrations.k{}", i % 3)
    } else {
        format!("custom.k{}", i % 7)
    }
}

/// The value of the outbox writer's `i`th edit. Sizes vary so that rows straddle pages.
fn edit_value(i: u64) -> Value {
    if i % 10 == 9 {
        json!(format!(
            "sk_crash_{i}_{}",
            "s".repeat(((i * 37) % 2000) as usize)
        ))
    } else {
        json!({"n": i, "pad": "x".repeat(((i * 997) % 9000) as usize)})
    }
}

/// The stamp of the outbox writer's `i`th edit (counter 0; the cache writer's have counter 1, so
/// the two never share a stamp).
fn edit_hlc(i: u64) -> Hlc {
    Hlc::new(i + 1, 0)
}

/// Which edit of the outbox writer a stamp belongs to.
fn edit_number(hlc: Hlc) -> u64 {
    hlc.millis - 1
}

/// The key of the cache writer's `n`th row (`n` is also the cursor saved with it).
fn remote_key(n: i64) -> String {
    format!("custom.k{}", n % 50)
}

/// The cache writer's `n`th row, stamped `hlc`.
fn remote_row(n: i64, hlc: Hlc) -> SettingRow {
    SettingRow {
        key: remote_key(n),
        value: json!({"n": n, "pad": "y".repeat(((n * 131) % 5000) as usize)}),
        hlc,
        device_id: OTHER_DEVICE.into(),
        device_name: Some("Other laptop".into()),
        updated_at: from_millis(n),
        deleted: false,
    }
}

/// Opens the profile in `dir` as the device [`DEVICE`].
fn open_store(dir: &Path, seal: &LocalSeal) -> (ProfileStore, lockstep_core::store::OpenReport) {
    ProfileStore::open(dir, Some(seal.clone()), DEVICE, DEFAULT_HISTORY_LIMIT)
        .expect("open the profile store")
}

/// The seal key the parent passed.
fn child_seal() -> LocalSeal {
    let text = std::env::var(SEAL_VAR).expect("the parent passes a seal key");
    LocalSeal::from_keychain_text(&text).expect("a valid seal key")
}

/// Prints a marked line and flushes it: what the parent reads as a promise.
fn say(out: &mut impl Write, message: std::fmt::Arguments<'_>) {
    writeln!(out, "{MARK}{message}").expect("stdout");
    out.flush().expect("stdout");
}

/// Child mode: queues edits forever (see [`edit_key`], [`edit_value`], [`edit_hlc`]), printing
/// `ack <key> <i> <id>` after each write returns; every 40 edits removes (as the server's
/// acknowledgement would) the queued edits of the 3 keys queued longest, printing
/// `removing <ids>` before and `removed` after.
#[test]
fn outbox_writer_child() {
    let Some(dir) = std::env::var_os(OUTBOX_DIR_VAR) else {
        return;
    };
    let (store, _) = open_store(Path::new(&dir), &child_seal());
    // After every stamp the profile holds, so that stamps keep growing from round to round.
    let start = store
        .call_blocking(|db| db.read(|v| v.hlc.millis))
        .expect("read the clock");
    let mut out = std::io::stdout().lock();
    for i in start.. {
        let key = edit_key(i);
        let entry = OutboxEntry::new(key.clone(), edit_value(i), edit_hlc(i), false, i as i64);
        let id = entry.id.clone();
        store
            .call_blocking(move |db| db.write(|tx| tx.queue(&[entry])))
            .expect("queue an edit");
        say(&mut out, format_args!("ack {key} {i} {id}"));
        if i % 40 == 39 {
            let oldest = store
                .call_blocking(|db| {
                    db.read(|v| {
                        v.outbox
                            .iter()
                            .take(3)
                            .map(|e| e.id.clone())
                            .collect::<Vec<_>>()
                    })
                })
                .expect("read the outbox");
            say(&mut out, format_args!("removing {}", oldest.join(",")));
            store
                .call_blocking(move |db| db.write(|tx| tx.remove_acknowledged(&oldest)))
                .expect("remove acknowledged edits");
            say(&mut out, format_args!("removed"));
        }
    }
}

/// Child mode: applies remote rows forever (see [`remote_row`]), each with the cursor moved to
/// its number in the same transaction, printing `saved <n> <hlc>` after each write returns.
#[test]
fn cache_writer_child() {
    let Some(dir) = std::env::var_os(CACHE_DIR_VAR) else {
        return;
    };
    let (store, _) = open_store(Path::new(&dir), &child_seal());
    let (mut n, mut millis) = store
        .call_blocking(|db| db.read(|v| (v.cache.cursor, v.hlc.millis)))
        .expect("read the cursor");
    let mut out = std::io::stdout().lock();
    loop {
        n += 1;
        millis += 1;
        let hlc = Hlc::new(millis, 1);
        let row = remote_row(n, hlc);
        let applied = store
            .call_blocking(move |db| {
                db.write(|tx| {
                    let applied = tx.apply_remote(row, n)?;
                    tx.advance_cursor(n)?;
                    Ok(applied)
                })
            })
            .expect("save a remote row");
        assert!(applied, "row {n} is newer than anything stored");
        say(&mut out, format_args!("saved {n} {hlc}"));
    }
}

/// The child's message in a line of its output, if any.
fn unmark(line: &str) -> Option<String> {
    let (_, message) = line.split_once(MARK)?;
    Some(message.trim_end().to_owned())
}

/// Runs `test_name` of this binary as a child with `var=dir` and the seal key `seal_key`, waits
/// for `ACKS_BEFORE_KILL` lines starting with `count_prefix`, kills it with SIGKILL and returns
/// every line it printed.
fn run_and_kill(
    test_name: &str,
    var: &str,
    dir: &Path,
    seal_key: &str,
    count_prefix: &str,
) -> Vec<String> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, dir)
        .env(SEAL_VAR, seal_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    let mut counted = 0;
    let mut line = String::new();
    while counted < ACKS_BEFORE_KILL {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .expect("read the writer's output");
        assert!(n > 0, "the writer stopped early; its output: {lines:?}");
        let Some(marked) = unmark(&line) else {
            continue;
        };
        if marked.starts_with(count_prefix) {
            counted += 1;
        }
        lines.push(marked);
    }
    child.kill().expect("kill the writer");
    let status = child.wait().expect("wait for the writer");
    assert!(!status.success(), "the writer was killed");
    // Whatever it printed before it died was acknowledged too.
    for rest in reader.lines() {
        let Ok(rest) = rest else { break };
        lines.extend(unmark(&rest));
    }
    lines
}

/// What a reopen found in the profile. Carried from round to round: it was on disk then, so it
/// must still be there (or be replaced by something newer).
#[derive(Debug, Clone, Default, PartialEq)]
struct Found {
    outbox: Vec<OutboxEntry>,
    rows: BTreeMap<String, SettingRow>,
    cursor: i64,
}

/// Reopens the profile after a kill: it must open clean, and a second open must find the same.
fn reopen(dir: &Path, seal: &LocalSeal, round: &str) -> Found {
    let read = || {
        let (store, report) = open_store(dir, seal);
        assert!(report.damaged.is_none(), "{round}: {report:?}");
        assert!(report.is_clean(), "{round}: {report:?}");
        store
            .call_blocking(|db| {
                db.read(|v| Found {
                    outbox: v.outbox.clone(),
                    rows: v.cache.rows.clone(),
                    cursor: v.cache.cursor,
                })
            })
            .expect("read the profile")
    };
    let found = read();
    assert!(read() == found, "{round}: a second open found otherwise");
    found
}

/// A line `ack <key> <i> <id>`, unless the kill cut it short.
fn parse_ack(line: &str) -> Option<(String, u64, String)> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    let (key, i, id) = (parts.next()?, parts.next()?, parts.next()?);
    if id.len() != 36 || parts.next().is_some() {
        return None;
    }
    Some((key.to_owned(), i.parse().ok()?, id.to_owned()))
}

/// A line `saved <n> <hlc>`, unless the kill cut it short.
fn parse_saved(line: &str) -> Option<(i64, Hlc)> {
    let (n, hlc) = line.strip_prefix("saved ")?.split_once(' ')?;
    Some((n.parse().ok()?, hlc.parse().ok()?))
}

/// Runs the outbox writer on `dir` until killed, reopens and checks that everything it
/// acknowledged, and everything `before` held, is there. Returns what the reopen found.
fn outbox_round(dir: &Path, seal_key: &str, before: &Found, round: &str) -> Found {
    let seal = LocalSeal::from_keychain_text(seal_key).expect("seal key");
    let lines = run_and_kill("outbox_writer_child", OUTBOX_DIR_VAR, dir, seal_key, "ack ");

    // What each key's queue must hold: the acknowledged edit `(i, id)`, or nothing (`None`).
    let mut expected: BTreeMap<String, Option<(u64, String)>> = before
        .outbox
        .iter()
        .map(|e| (e.key.clone(), Some((edit_number(e.hlc), e.id.clone()))))
        .collect();
    // The last acknowledged edit of each key this round (what the cache must show, or newer).
    let mut shown: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_acked = None;
    // The ids of the removal the child started and did not report done; those it did.
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut removed: BTreeSet<String> = BTreeSet::new();
    for line in &lines {
        if line.starts_with("ack ") {
            let Some((key, i, id)) = parse_ack(line) else {
                continue;
            };
            assert_eq!(key, edit_key(i), "{round}: {line}");
            expected.insert(key.clone(), Some((i, id)));
            shown.insert(key, i);
            last_acked = Some(i);
        } else if let Some(ids) = line.strip_prefix("removing ") {
            in_flight = ids
                .split(',')
                .filter(|id| id.len() == 36)
                .map(str::to_owned)
                .collect();
        } else if line == "removed" {
            for slot in expected.values_mut() {
                if slot.as_ref().is_some_and(|(_, id)| in_flight.contains(id)) {
                    *slot = None;
                }
            }
            removed.append(&mut in_flight);
        }
    }
    let last_acked = last_acked.expect("some edits were acknowledged");

    let found = reopen(dir, &seal, round);
    let queued: BTreeMap<&str, &OutboxEntry> =
        found.outbox.iter().map(|e| (e.key.as_str(), e)).collect();
    assert_eq!(
        queued.len(),
        found.outbox.len(),
        "{round}: a key is queued twice"
    );

    // Every queued edit is one the child wrote, whole (a sealed value opened again).
    for e in &found.outbox {
        let i = edit_number(e.hlc);
        assert_eq!(e.hlc, edit_hlc(i), "{round}: a stamp never written");
        assert_eq!(e.key, edit_key(i), "{round}: edit {i} under another key");
        assert!(
            e.value == edit_value(i),
            "{round}: edit {i} has another value"
        );
        assert!(!e.deleted && e.set_aside.is_none(), "{round}: edit {i}");
        assert!(
            !removed.contains(&e.id),
            "{round}: edit {i} is queued after its removal was acknowledged"
        );
    }

    // A removal is one transaction: all or nothing.
    let survivors = found
        .outbox
        .iter()
        .filter(|e| in_flight.contains(&e.id))
        .count();
    assert!(
        survivors == 0 || survivors == in_flight.len(),
        "{round}: a removal was half done ({survivors} of {} left)",
        in_flight.len()
    );

    // Each key holds its last acknowledged edit, or the one edit in flight at the kill.
    let mut unacked = Vec::new();
    let keys: BTreeSet<&str> = expected
        .keys()
        .map(String::as_str)
        .chain(queued.keys().copied())
        .collect();
    for key in keys {
        match (expected.get(key).cloned().flatten(), queued.get(key)) {
            (Some((_, id)), Some(e)) if e.id == id => {}
            (Some((i, id)), None) => assert!(
                in_flight.contains(&id),
                "{round}: the acknowledged edit {i} of {key} was lost"
            ),
            (acked, Some(e)) => {
                let i = edit_number(e.hlc);
                assert!(
                    acked.as_ref().is_none_or(|(acked, _)| i > *acked),
                    "{round}: {key} holds edit {i}, older than the acknowledged {acked:?}"
                );
                unacked.push(i);
            }
            (None, None) => {}
        }
    }
    assert!(
        unacked.is_empty() || unacked == [last_acked + 1],
        "{round}: edits {unacked:?} were never acknowledged (the last was {last_acked})"
    );

    // The cache shows each acknowledged edit (or something newer) and kept what it had; a row
    // that changed was written by an acknowledged edit or by the one in flight, whose outbox
    // row it shares a transaction with.
    let mut unacked_shown = None;
    for (key, row) in &found.rows {
        let old = before.rows.get(key);
        if old == Some(row) {
            continue;
        }
        if let Some(old) = old {
            assert!(row.hlc > old.hlc, "{round}: the row of {key} went back");
        }
        let i = edit_number(row.hlc);
        assert_eq!(
            row.hlc,
            edit_hlc(i),
            "{round}: {key} has a stamp never written"
        );
        assert!(
            row.value == edit_value(i) && row.device_id == DEVICE && !row.deleted,
            "{round}: the row of {key} is not edit {i}"
        );
        if shown.get(key) != Some(&i) {
            assert!(
                i == last_acked + 1 && *key == edit_key(i),
                "{round}: the row of {key} shows edit {i}, never acknowledged"
            );
            unacked_shown = Some(i);
        }
    }
    for (key, i) in &shown {
        let row = found
            .rows
            .get(key)
            .unwrap_or_else(|| panic!("{round}: the acknowledged edit {i} of {key} is not shown"));
        assert!(
            row.hlc >= edit_hlc(*i),
            "{round}: the acknowledged edit {i} of {key} is no longer shown"
        );
    }
    for key in before.rows.keys() {
        assert!(
            found.rows.contains_key(key),
            "{round}: the row of {key} was lost"
        );
    }
    assert_eq!(
        unacked_shown,
        unacked.first().copied(),
        "{round}: an edit and the row that shows it were not written together"
    );
    assert_eq!(found.cursor, before.cursor, "{round}: the cursor moved");
    found
}

/// Runs the cache writer on `dir` until killed, reopens and checks that everything it
/// acknowledged, and everything `before` held, is there. Returns what the reopen found.
fn cache_round(dir: &Path, seal_key: &str, before: &Found, round: &str) -> Found {
    let seal = LocalSeal::from_keychain_text(seal_key).expect("seal key");
    let lines = run_and_kill("cache_writer_child", CACHE_DIR_VAR, dir, seal_key, "saved ");

    // The last acknowledged row of each key: its number and stamp.
    let mut acked: BTreeMap<String, (i64, Hlc)> = BTreeMap::new();
    let mut last_saved = None;
    for (n, hlc) in lines.iter().filter_map(|l| parse_saved(l)) {
        acked.insert(remote_key(n), (n, hlc));
        last_saved = Some(n);
    }
    let last_saved = last_saved.expect("some saves were acknowledged");

    let found = reopen(dir, &seal, round);
    assert!(
        found.outbox == before.outbox,
        "{round}: the outbox changed, and nobody edited"
    );
    assert!(
        found.cursor == last_saved || found.cursor == last_saved + 1,
        "{round}: cursor {} after the acknowledged save {last_saved}",
        found.cursor
    );
    assert!(
        found.cursor >= before.cursor,
        "{round}: the cursor went back"
    );

    // Each key holds its last acknowledged row or a newer one, whole; a row that changed was
    // written by an acknowledged save or by the one in flight, with its cursor.
    let mut unacked = None;
    for (key, row) in &found.rows {
        let old = before.rows.get(key);
        if old == Some(row) {
            continue;
        }
        if let Some(old) = old {
            assert!(row.hlc > old.hlc, "{round}: the row of {key} went back");
        }
        let n = row
            .value
            .get("n")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("{round}: the row of {key} was never written"));
        assert!(
            *row == remote_row(n, row.hlc),
            "{round}: the row of {key} is not row {n}"
        );
        if acked.get(key) != Some(&(n, row.hlc)) {
            assert!(
                n == last_saved + 1,
                "{round}: the row of {key} is row {n}, never acknowledged"
            );
            unacked = Some(n);
        }
    }
    for (key, (n, hlc)) in &acked {
        let row = found
            .rows
            .get(key)
            .unwrap_or_else(|| panic!("{round}: the acknowledged row {n} of {key} was lost"));
        assert!(
            row.hlc >= *hlc,
            "{round}: the acknowledged row {n} of {key} was lost"
        );
    }
    for key in before.rows.keys() {
        assert!(
            found.rows.contains_key(key),
            "{round}: the row of {key} was lost"
        );
    }
    assert_eq!(
        unacked.is_some(),
        found.cursor == last_saved + 1,
        "{round}: a row and its cursor were not written together"
    );
    found
}

#[test]
fn killing_an_outbox_writer_loses_no_acknowledged_edit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seal_key = LocalSeal::generate_key();
    let found = outbox_round(dir.path(), &seal_key, &Found::default(), "outbox writer");
    assert!(!found.outbox.is_empty());
}

#[test]
fn killing_a_cache_writer_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seal_key = LocalSeal::generate_key();
    let found = cache_round(dir.path(), &seal_key, &Found::default(), "cache writer");
    assert_eq!(found.rows.len(), 50);
}

#[test]
fn killing_writers_again_and_again_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seal_key = LocalSeal::generate_key();
    let mut found = Found::default();
    for round in 0..3 {
        found = outbox_round(
            dir.path(),
            &seal_key,
            &found,
            &format!("round {round}, outbox writer"),
        );
        found = cache_round(
            dir.path(),
            &seal_key,
            &found,
            &format!("round {round}, cache writer"),
        );
    }
    assert!(found.cursor >= 3 * ACKS_BEFORE_KILL as i64);
}
