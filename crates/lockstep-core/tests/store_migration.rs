//! A profile written by the earlier file store (`tests/fixtures/profile-v1`, made by that
//! store's own code: see the README there) is imported into the SQLite store on first open,
//! losing nothing: pending edits stay pending (one per key), the refused edit stays set aside
//! with its reason, the cache, cursor and device-only values carry over, sealed values stay
//! sealed, and the old files are removed only once the import committed.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Cloud, PASSWORD};
use lockstep_core::{
    keychain::{Keychain, SecretKind},
    profile::{self, OpenOptions},
    store::{DB_FILE, DEFAULT_HISTORY_LIMIT, LocalSeal, ProfileStore},
};
use serde_json::json;

/// The fixture's local seal key (a fixed test key, not a secret).
const FIXTURE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const OLD_FILES: [&str; 3] = ["outbox.jsonl", "outbox.lock", "cache.json"];

/// A copy of the fixture profile in `dir`.
fn fixture_copy(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/profile-v1");
    for name in OLD_FILES {
        std::fs::copy(fixture.join(name), dir.join(name)).unwrap();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn seal() -> LocalSeal {
    LocalSeal::from_keychain_text(FIXTURE_KEY).unwrap()
}

#[test]
fn a_profile_of_the_file_store_is_imported_whole_and_its_files_removed() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("p");
    fixture_copy(&dir);

    let (store, report) =
        ProfileStore::open(&dir, Some(seal()), "fixture-device", DEFAULT_HISTORY_LIMIT).unwrap();
    let imported = report.imported.clone().expect("the files are imported");
    assert_eq!(imported.edits, 5, "one queued edit per key: {imported:?}");
    assert_eq!(imported.rows, 7, "{imported:?}");
    assert_eq!(imported.unreadable_edits, 0);
    assert_eq!(imported.cache_damaged, None);
    assert!(report.problems().is_empty(), "{:?}", report.problems());
    assert!(
        names(&dir).iter().all(|n| !OLD_FILES.contains(&n.as_str())),
        "the old files are gone: {:?}",
        names(&dir)
    );

    let view = store.call_blocking(|db| db.read(Clone::clone)).unwrap();
    let queued: Vec<(&str, serde_json::Value, bool)> = view
        .outbox
        .iter()
        .map(|e| (e.key.as_str(), e.value.clone(), e.set_aside.is_some()))
        .collect();
    assert_eq!(
        queued,
        [
            ("custom.fixture.note", json!("first"), false),
            ("appearance.theme", json!("light"), false),
            ("integrations.github", json!("ghp_fixture_token"), false),
            ("notifications.desktop", json!(null), false),
            ("custom.fixture.refused", json!("x"), true),
        ]
    );
    let refused = view.outbox[4].set_aside.clone().unwrap();
    assert_eq!(
        refused.reason,
        "custom.fixture.refused: refused by the fixture"
    );
    assert_eq!(refused.code.as_deref(), Some("22023"));
    assert_eq!(view.pending(), 4);
    assert_eq!(view.cache.cursor, 41);
    let cache = &view.cache;
    assert_eq!(cache.effective("appearance.theme"), Some(json!("light")));
    assert_eq!(
        cache.effective("integrations.slack"),
        Some(json!("xoxb-fixture"))
    );
    assert_eq!(
        cache.effective("custom.fixture.synced"),
        Some(json!({"n": 1}))
    );
    assert_eq!(
        cache.effective("notifications.remote_changes"),
        Some(json!(false))
    );
    assert!(cache.rows["notifications.desktop"].deleted);
    assert!(cache.is_device_local("security.lock_after_minutes"));
    assert_eq!(
        cache.effective("security.lock_after_minutes"),
        Some(json!(30))
    );
    assert_eq!(
        cache.rows["integrations.slack"].device_name.as_deref(),
        Some("Other laptop")
    );
    drop(store);

    for name in names(&dir) {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        for secret in ["ghp_fixture_token", "xoxb-fixture"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is in {name} in plain text"
            );
        }
    }

    // A second open imports nothing and finds the same.
    let (store, report) =
        ProfileStore::open(&dir, Some(seal()), "fixture-device", DEFAULT_HISTORY_LIMIT).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let again = store.call_blocking(|db| db.read(Clone::clone)).unwrap();
    assert_eq!(again.outbox, view.outbox);
    assert_eq!(again.cache, view.cache);
}

#[test]
fn files_left_behind_by_a_crash_after_the_import_committed_are_not_imported_twice() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("p");
    fixture_copy(&dir);
    let (store, _) =
        ProfileStore::open(&dir, Some(seal()), "fixture-device", DEFAULT_HISTORY_LIMIT).unwrap();
    // The user edits the key after the import...
    store
        .call_blocking(|db| {
            db.write(|tx| {
                let hlc = tx.tick(1_790_000_000_000);
                tx.queue(&[lockstep_core::store::OutboxEntry::new(
                    "appearance.theme",
                    json!("system"),
                    hlc,
                    false,
                    1_790_000_000_000,
                )])
            })
        })
        .unwrap();
    let history = store
        .call_blocking(|db| db.history("appearance.theme"))
        .unwrap();
    drop(store);
    // ... and the old files are back, as if the process died between the commit and their
    // removal.
    fixture_copy(&dir);

    let (store, report) =
        ProfileStore::open(&dir, Some(seal()), "fixture-device", DEFAULT_HISTORY_LIMIT).unwrap();
    assert_eq!(report.imported, None, "already imported: {report:?}");
    assert!(
        names(&dir).iter().all(|n| !OLD_FILES.contains(&n.as_str())),
        "the leftovers are removed: {:?}",
        names(&dir)
    );
    let view = store.call_blocking(|db| db.read(Clone::clone)).unwrap();
    let theme = view
        .outbox
        .iter()
        .find(|e| e.key == "appearance.theme")
        .unwrap();
    assert_eq!(theme.value, json!("system"), "the later edit stands");
    assert_eq!(
        store
            .call_blocking(|db| db.history("appearance.theme"))
            .unwrap(),
        history
    );
    assert!(DB_FILE.ends_with(".sqlite3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_profile_syncs_its_pending_edits_and_keeps_the_refused_one_aside() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let name = common::unique("imported");
    fixture_copy(&profile::profile_dir(base.path(), &name));
    Keychain::use_mock_store();
    Keychain::for_profile(&name)
        .set(SecretKind::LocalKey, FIXTURE_KEY)
        .await
        .unwrap();

    let opened = profile::open(
        base.path(),
        &name,
        OpenOptions {
            server_url: Some(cloud.url.clone()),
            anon_key: Some(cloud.anon_key.clone()),
            device_name: None,
        },
    )
    .unwrap();
    assert!(opened.problems.is_empty(), "{:?}", opened.problems);
    let engine = opened.engine;
    assert_eq!(engine.pending(), 4);
    assert_eq!(engine.set_aside().len(), 1);
    engine.sign_up("mig@example.com", PASSWORD).await.unwrap();
    let report = engine.sync_once().await.unwrap();
    assert_eq!(report.pushed, 4, "{report:?}");
    assert_eq!(engine.pending(), 0);
    assert_eq!(engine.set_aside().len(), 1, "still aside, still kept");

    let other = common::open(&cloud, base.path(), &common::unique("other"));
    other
        .engine
        .sign_in("mig@example.com", PASSWORD)
        .await
        .unwrap();
    other.engine.sync_once().await.unwrap();
    assert_eq!(other.engine.get("appearance.theme"), Some(json!("light")));
    assert_eq!(
        other.engine.get("integrations.github"),
        Some(json!("ghp_fixture_token"))
    );
    assert_eq!(
        other.engine.get("custom.fixture.note"),
        Some(json!("first"))
    );
    assert_eq!(
        other.engine.get("security.lock_after_minutes"),
        Some(json!(15)),
        "the device-only value stayed home (15 is the default)"
    );
}

#[test]
fn a_damaged_old_cache_is_reported_and_the_queued_edits_still_imported() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("p");
    fixture_copy(&dir);
    let cache = dir.join("cache.json");
    let bytes = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, &bytes[..bytes.len() / 2]).unwrap();

    let (store, report) =
        ProfileStore::open(&dir, Some(seal()), "fixture-device", DEFAULT_HISTORY_LIMIT).unwrap();
    let imported = report.imported.clone().unwrap();
    assert!(imported.cache_damaged.is_some(), "{imported:?}");
    let kept = imported.cache_kept_at.clone().unwrap();
    assert!(
        kept.exists(),
        "the damaged cache is kept at {}",
        kept.display()
    );
    let problems = report.problems();
    assert!(
        problems.len() == 1 && problems[0].contains("old settings cache was damaged"),
        "{problems:?}"
    );
    assert_eq!(imported.edits, 5);
    let view = store.call_blocking(|db| db.read(Clone::clone)).unwrap();
    assert_eq!(view.pending(), 4, "the queued edits are imported");
    assert_eq!(view.cache.cursor, 0, "the cache is rebuilt by a full pull");
}
