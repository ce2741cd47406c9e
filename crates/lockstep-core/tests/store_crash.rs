//! Real crash tests of the durable store: a child process writes in a loop and is killed with
//! SIGKILL (`Child::kill`) at an arbitrary moment; the test then reopens what it left.
//!
//! The child is this very test binary, re-executed to run only one of the `*_child` tests below
//! with an environment variable set (without it those tests return at once). It prints a line
//! after each operation *returns*, so every line the parent read is a promise the store made.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use lockstep_core::store::{CacheData, LoadOutcome, Outbox, OutboxEntry, SettingsCache};
use lockstep_protocol::hlc::Hlc;
use serde_json::json;

const OUTBOX_DIR_VAR: &str = "LOCKSTEP_OUTBOX_WRITER_DIR";
const CACHE_DIR_VAR: &str = "LOCKSTEP_CACHE_WRITER_DIR";

/// Starts every line a child prints (the test harness may print on the same line).
const MARK: &str = "@@lockstep@@ ";

/// How many acknowledged operations to wait for before killing the child.
const ACKS_BEFORE_KILL: usize = 200;

/// Child mode: appends forever, printing `ack <id>` after each append returns; every 40
/// appends removes the 20 oldest entries, printing `removing <ids>` before and `removed`
/// after.
#[test]
fn outbox_writer_child() {
    let Some(dir) = std::env::var_os(OUTBOX_DIR_VAR) else {
        return;
    };
    let (mut outbox, _) = Outbox::open(Path::new(&dir)).expect("open the outbox");
    let mut out = std::io::stdout().lock();
    let mut hlc = outbox
        .entries()
        .iter()
        .map(|e| e.hlc)
        .max()
        .unwrap_or(Hlc::ZERO);
    for i in 0u64.. {
        hlc = hlc.tick(0);
        // Sizes vary so that lines straddle page boundaries.
        let value = json!({"n": i, "pad": "x".repeat(((i * 997) % 9000) as usize)});
        let entry = OutboxEntry::new(format!("custom.k{}", i % 7), value, hlc, false, 0);
        let id = entry.id.clone();
        outbox.append(entry).expect("append");
        writeln!(out, "{MARK}ack {id}").expect("stdout");
        out.flush().expect("stdout");
        if i % 40 == 39 {
            let oldest: Vec<String> = outbox
                .entries()
                .iter()
                .take(20)
                .map(|e| e.id.clone())
                .collect();
            writeln!(out, "{MARK}removing {}", oldest.join(",")).expect("stdout");
            out.flush().expect("stdout");
            outbox.remove_acknowledged(&oldest).expect("remove");
            writeln!(out, "{MARK}removed").expect("stdout");
            out.flush().expect("stdout");
        }
    }
}

/// Child mode: saves the cache forever with a growing cursor, printing `saved <cursor>` after
/// each save returns.
#[test]
fn cache_writer_child() {
    let Some(dir) = std::env::var_os(CACHE_DIR_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let mut data = match SettingsCache::load(dir).expect("load the cache") {
        LoadOutcome::Loaded(data) => data,
        other => panic!("the cache should load, got {other:?}"),
    };
    let mut out = std::io::stdout().lock();
    loop {
        data.cursor += 1;
        let entry = OutboxEntry::new(
            format!("custom.k{}", data.cursor % 50),
            json!("y".repeat((data.cursor as usize * 131) % 5000)),
            Hlc::new(data.cursor as u64, 0),
            false,
            0,
        );
        data.apply_local(&entry, "crash-test-device");
        SettingsCache::save(dir, &data).expect("save");
        writeln!(out, "{MARK}saved {}", data.cursor).expect("stdout");
        out.flush().expect("stdout");
    }
}

/// The child's message in a line of its output, if any.
fn unmark(line: &str) -> Option<String> {
    let (_, message) = line.split_once(MARK)?;
    Some(message.trim_end().to_owned())
}

/// Runs `test_name` of this binary as a child with `var=dir`, waits for `ACKS_BEFORE_KILL`
/// lines starting with `count_prefix`, kills it with SIGKILL and returns every line it printed.
fn run_and_kill(test_name: &str, var: &str, dir: &Path, count_prefix: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, dir)
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

#[test]
fn killing_a_writer_loses_no_acknowledged_outbox_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What the outbox must hold, in order: acknowledged and not known to be removed.
    let mut expected: Vec<String> = Vec::new();
    for round in 0..3 {
        let lines = run_and_kill("outbox_writer_child", OUTBOX_DIR_VAR, dir.path(), "ack ");
        // The ids of a removal the child started and did not finish.
        let mut in_flight: HashSet<String> = HashSet::new();
        for line in &lines {
            if let Some(id) = line.strip_prefix("ack ") {
                // (The kill may cut the last line short.)
                if id.len() == 36 {
                    expected.push(id.to_owned());
                }
            } else if let Some(ids) = line.strip_prefix("removing ") {
                in_flight = ids
                    .split(',')
                    .filter(|id| id.len() == 36)
                    .map(str::to_owned)
                    .collect();
            } else if line == "removed" {
                expected.retain(|id| !in_flight.contains(id));
                in_flight.clear();
            }
        }

        let (outbox, report) = Outbox::open(dir.path()).expect("reopen the outbox");
        assert_eq!(report.corrupt_lines, 0, "round {round}: {report:?}");
        assert!(report.quarantined.is_none(), "round {round}: {report:?}");
        let found: Vec<String> = outbox.entries().iter().map(|e| e.id.clone()).collect();
        drop(outbox);

        let unique: HashSet<&String> = found.iter().collect();
        assert_eq!(
            unique.len(),
            found.len(),
            "round {round}: an entry appears twice"
        );

        // A removal is all or nothing.
        let survivors: HashSet<&String> =
            found.iter().filter(|id| in_flight.contains(*id)).collect();
        assert!(
            survivors.is_empty() || survivors.len() == in_flight.len(),
            "round {round}: a removal was half done ({} of {} left)",
            survivors.len(),
            in_flight.len()
        );

        // Every acknowledged entry is there, in order; after them at most the one append that
        // was synced but whose ack was not (completely) printed.
        let settled = |ids: &[String]| -> Vec<String> {
            ids.iter()
                .filter(|id| !in_flight.contains(*id))
                .cloned()
                .collect()
        };
        let (want, got) = (settled(&expected), settled(&found));
        assert!(
            got.starts_with(&want),
            "round {round}: acknowledged entries missing or out of order \
             ({} acknowledged, {} found)",
            want.len(),
            got.len()
        );
        let extra = got.len() - want.len();
        assert!(
            extra <= 1,
            "round {round}: {extra} entries that were never acknowledged"
        );

        // The repaired journal is consistent: a second reopen finds nothing to fix.
        let (outbox, report) = Outbox::open(dir.path()).expect("reopen again");
        assert!(report.is_clean(), "round {round}: {report:?}");
        let again: Vec<String> = outbox.entries().iter().map(|e| e.id.clone()).collect();
        assert_eq!(again, found, "round {round}");
        drop(outbox);

        // The next round starts from what is really there.
        expected = found;
    }
}

#[test]
fn killing_a_cache_writer_leaves_a_cache_that_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    SettingsCache::save(dir.path(), &CacheData::default()).expect("first save");
    for round in 0..3 {
        let lines = run_and_kill("cache_writer_child", CACHE_DIR_VAR, dir.path(), "saved ");
        let last_saved: i64 = lines
            .iter()
            .filter_map(|l| l.strip_prefix("saved "))
            .filter_map(|n| n.parse().ok())
            .max()
            .expect("some saves");
        match SettingsCache::load(dir.path()).expect("load") {
            LoadOutcome::Loaded(data) => {
                assert!(
                    data.cursor == last_saved || data.cursor == last_saved + 1,
                    "round {round}: cursor {} after acknowledged save {last_saved}",
                    data.cursor
                );
                assert_eq!(data.rows.len(), 50.min(data.cursor as usize));
            }
            other => panic!("round {round}: the cache should load, got {other:?}"),
        }
    }
}
