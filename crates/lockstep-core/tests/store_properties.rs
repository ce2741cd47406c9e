//! Properties of the profile's SQLite store under sequences nobody scripted:
//!
//! - what the store shows (its in-memory view) is always what is on disk: after any sequence of
//!   transactions (edits, acknowledgements, refusals, retries, drops, remote rows, full pulls,
//!   device-only values, cursors, and transactions that fail half-way and roll back), a fresh
//!   open of the same file reads exactly the same outbox and cache;
//! - a failed transaction leaves nothing behind, in memory or on disk;
//! - the local history agrees with the cache: a key's newest synced version is its current row,
//!   and no key keeps more versions than the limit;
//! - two processes writing edits of the same keys at once never stamp two edits alike, and each
//!   key ends with its newest acknowledged edit, queued and shown.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use lockstep_core::store::{
    HistoryOrigin, LocalSeal, OutboxEntry, ProfileStore, Refusal, StoreError, View,
};
use lockstep_protocol::hlc::Hlc;
use lockstep_protocol::sync::SettingRow;
use proptest::prelude::*;
use serde_json::{Value, json};

const DEVICE: &str = "this-device";
const HISTORY_LIMIT: usize = 4;
const KEYS: [&str; 4] = [
    "custom.p.a",
    "custom.p.b",
    "integrations.p_secret",
    "notifications.desktop",
];

#[derive(Debug, Clone)]
enum Op {
    Edit {
        key: usize,
        value: u8,
        deleted: bool,
    },
    Remote {
        key: usize,
        at: u64,
        mine: bool,
        deleted: bool,
        value: u8,
    },
    Acknowledge {
        nth: usize,
    },
    Refuse {
        nth: usize,
    },
    Retry {
        key: Option<usize>,
    },
    Drop {
        key: Option<usize>,
    },
    DeviceOnly {
        key: usize,
        value: Option<u8>,
    },
    Share {
        key: usize,
    },
    Advance {
        seq: i64,
    },
    FullPull {
        keep: Vec<bool>,
        at: u64,
    },
    /// An edit, then a failure in the same transaction: nothing may remain.
    Failing {
        key: usize,
        value: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    prop_oneof![
        4 => (key.clone(), any::<u8>(), prop::bool::weighted(0.2))
            .prop_map(|(key, value, deleted)| Op::Edit { key, value, deleted }),
        3 => (key.clone(), 1..400u64, any::<bool>(), prop::bool::weighted(0.2), any::<u8>())
            .prop_map(|(key, at, mine, deleted, value)| Op::Remote { key, at, mine, deleted, value }),
        2 => (0..8usize).prop_map(|nth| Op::Acknowledge { nth }),
        1 => (0..8usize).prop_map(|nth| Op::Refuse { nth }),
        1 => prop::option::of(key.clone()).prop_map(|key| Op::Retry { key }),
        1 => prop::option::of(key.clone()).prop_map(|key| Op::Drop { key }),
        1 => (key.clone(), prop::option::of(any::<u8>()))
            .prop_map(|(key, value)| Op::DeviceOnly { key, value }),
        1 => key.clone().prop_map(|key| Op::Share { key }),
        1 => (1..500i64).prop_map(|seq| Op::Advance { seq }),
        1 => (prop::collection::vec(any::<bool>(), KEYS.len()), 1..400u64)
            .prop_map(|(keep, at)| Op::FullPull { keep, at }),
        1 => (key.clone(), any::<u8>()).prop_map(|(key, value)| Op::Failing { key, value }),
        1 => Just(Op::Reopen),
    ]
}

fn value_of(key: &str, n: u8) -> Value {
    match key {
        "notifications.desktop" => json!(n.is_multiple_of(2)),
        k if k.starts_with("integrations.") => json!(format!("secret-{n}")),
        _ => json!(n),
    }
}

fn row(key: &str, at: u64, device: &str, deleted: bool, value: Value) -> SettingRow {
    SettingRow {
        key: key.to_owned(),
        value: if deleted { Value::Null } else { value },
        hlc: Hlc::new(at, 0),
        device_id: device.to_owned(),
        device_name: Some(format!("name of {device}")),
        updated_at: lockstep_protocol::timestamp::from_millis(at as i64),
        deleted,
    }
}

fn open(dir: &Path, seal: &LocalSeal) -> ProfileStore {
    let (store, report) =
        ProfileStore::open(dir, Some(seal.clone()), DEVICE, HISTORY_LIMIT).unwrap();
    assert!(report.is_clean(), "{report:?}");
    store
}

fn view(store: &ProfileStore) -> View {
    store.call_blocking(|db| db.read(Clone::clone)).unwrap()
}

/// Runs `op` as one transaction (or reopens).
fn apply(store: &mut ProfileStore, dir: &Path, seal: &LocalSeal, op: &Op, clock: &mut i64) {
    *clock += 1;
    let now = *clock;
    let result = match op.clone() {
        Op::Reopen => {
            *store = open(dir, seal);
            return;
        }
        Op::Edit {
            key,
            value,
            deleted,
        } => store.call_blocking(move |db| {
            db.write(|tx| {
                let key = KEYS[key];
                if tx.view().cache.is_device_local(key) {
                    return tx.set_device_local(key, (!deleted).then(|| value_of(key, value)), now);
                }
                let hlc = tx.tick(now);
                tx.queue(&[OutboxEntry::new(
                    key,
                    value_of(key, value),
                    hlc,
                    deleted,
                    now,
                )])
            })
        }),
        Op::Remote {
            key,
            at,
            mine,
            deleted,
            value,
        } => store.call_blocking(move |db| {
            db.write(|tx| {
                let key = KEYS[key];
                let device = if mine { DEVICE } else { "other-device" };
                tx.apply_remote(row(key, at, device, deleted, value_of(key, value)), now)
                    .map(drop)
            })
        }),
        Op::Acknowledge { nth } => store.call_blocking(move |db| {
            db.write(|tx| {
                let ids: Vec<String> = tx
                    .view()
                    .outbox
                    .get(nth)
                    .map(|e| e.id.clone())
                    .into_iter()
                    .collect();
                tx.remove_acknowledged(&ids)
            })
        }),
        Op::Refuse { nth } => store.call_blocking(move |db| {
            db.write(|tx| {
                let ids: Vec<String> = tx
                    .view()
                    .outbox
                    .get(nth)
                    .map(|e| e.id.clone())
                    .into_iter()
                    .collect();
                tx.mark_set_aside(
                    &ids,
                    &Refusal {
                        reason: "refused".into(),
                        code: Some("22023".into()),
                        at_ms: now,
                    },
                )
            })
        }),
        Op::Retry { key } => store.call_blocking(move |db| {
            db.write(|tx| tx.retry_set_aside(key.map(|k| KEYS[k])).map(drop))
        }),
        Op::Drop { key } => store.call_blocking(move |db| {
            db.write(|tx| tx.drop_set_aside(key.map(|k| KEYS[k])).map(drop))
        }),
        Op::DeviceOnly { key, value } => store.call_blocking(move |db| {
            db.write(|tx| {
                tx.set_device_local(KEYS[key], value.map(|v| value_of(KEYS[key], v)), now)
            })
        }),
        Op::Share { key } => {
            store.call_blocking(move |db| db.write(|tx| tx.clear_device_local(KEYS[key])))
        }
        Op::Advance { seq } => store.call_blocking(move |db| db.write(|tx| tx.advance_cursor(seq))),
        Op::FullPull { keep, at } => store.call_blocking(move |db| {
            db.write(|tx| {
                let rows: BTreeMap<String, SettingRow> = KEYS
                    .iter()
                    .zip(keep)
                    .filter(|(_, keep)| *keep)
                    .map(|(key, _)| {
                        (
                            (*key).to_owned(),
                            row(key, at, "other-device", false, value_of(key, 7)),
                        )
                    })
                    .collect();
                tx.replace_rows(rows, now)?;
                tx.set_cursor(at as i64)
            })
        }),
        Op::Failing { key, value } => {
            let before = view(store);
            let result: Result<(), StoreError> = store.call_blocking(move |db| {
                db.write(|tx| {
                    let hlc = tx.tick(now);
                    let key = KEYS[key];
                    tx.queue(&[OutboxEntry::new(key, value_of(key, value), hlc, false, now)])?;
                    tx.set_cursor(999_999)?;
                    Err(StoreError::Stopped)
                })
            });
            assert!(matches!(result, Err(StoreError::Stopped)));
            let after = view(store);
            assert_eq!(
                after.outbox, before.outbox,
                "a failed transaction left an edit"
            );
            assert_eq!(
                after.cache, before.cache,
                "a failed transaction left a change"
            );
            Ok(())
        }
    };
    result.unwrap();
}

fn check(store: &ProfileStore, dir: &Path, seal: &LocalSeal) {
    let shown = view(store);
    let fresh = open(dir, seal);
    let on_disk = view(&fresh);
    assert_eq!(
        shown.outbox, on_disk.outbox,
        "the outbox shown is not the one on disk"
    );
    assert_eq!(
        shown.cache, on_disk.cache,
        "the cache shown is not the one on disk"
    );
    let keys: std::collections::BTreeSet<&str> =
        shown.outbox.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys.len(), shown.outbox.len(), "one queued edit per key");
    for key in KEYS {
        let history = fresh.call_blocking(move |db| db.history(key)).unwrap();
        assert!(
            history.len() <= HISTORY_LIMIT,
            "{key}: {} versions",
            history.len()
        );
        let newest_synced = history
            .iter()
            .find(|h| h.origin != HistoryOrigin::DeviceOnly);
        if let (Some(version), Some(current)) = (newest_synced, shown.cache.rows.get(key)) {
            let current_value = (!current.deleted).then(|| current.value.clone());
            assert_eq!(
                version.value, current_value,
                "{key}: the history's newest is not the row"
            );
            assert_eq!(version.hlc, Some(current.hlc), "{key}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn what_the_store_shows_is_what_is_on_disk(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let seal = LocalSeal::from_keychain_text(&LocalSeal::generate_key()).unwrap();
        let mut store = open(dir.path(), &seal);
        let mut clock = 1_000;
        for op in &ops {
            apply(&mut store, dir.path(), &seal, op, &mut clock);
            check(&store, dir.path(), &seal);
        }
    }
}

#[test]
fn two_processes_editing_the_same_keys_at_once_keep_every_newest_edit() {
    const WRITERS: usize = 4;
    const EDITS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let seal = LocalSeal::from_keychain_text(&LocalSeal::generate_key()).unwrap();
    // Two stores on one profile (two processes); two threads on each.
    let stores = [
        Arc::new(open(dir.path(), &seal)),
        Arc::new(open(dir.path(), &seal)),
    ];
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = stores[w % 2].clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for n in 0..EDITS {
                    let key = KEYS[n % 2];
                    // The same wall clock for everyone: only the stamps' order can tell edits apart.
                    let (hlc, id) = store
                        .call_blocking(move |db| {
                            db.write(|tx| {
                                let hlc = tx.tick(5_000);
                                let entry =
                                    OutboxEntry::new(key, json!(w * 1000 + n), hlc, false, 5_000);
                                let id = entry.id.clone();
                                tx.queue(&[entry])?;
                                Ok((hlc, id))
                            })
                        })
                        .unwrap();
                    acknowledged.push((key, hlc, id));
                }
                acknowledged
            })
        })
        .collect();
    let acknowledged: Vec<(&str, Hlc, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let stamps: std::collections::BTreeSet<Hlc> = acknowledged.iter().map(|(_, h, _)| *h).collect();
    assert_eq!(
        stamps.len(),
        acknowledged.len(),
        "two edits were stamped alike"
    );
    drop(stores);
    let store = open(dir.path(), &seal);
    let shown = view(&store);
    for key in &KEYS[..2] {
        let newest = acknowledged
            .iter()
            .filter(|(k, _, _)| k == key)
            .max_by_key(|(_, h, _)| *h)
            .unwrap();
        let queued = shown.outbox.iter().find(|e| e.key == *key).unwrap();
        assert_eq!(
            queued.id, newest.2,
            "{key}: the queued edit is not the newest acknowledged"
        );
        assert_eq!(
            shown.cache.rows[*key].hlc, newest.1,
            "{key}: the cache shows another edit"
        );
    }
}
