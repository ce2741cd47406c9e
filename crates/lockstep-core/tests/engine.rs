//! The sync engine against a real lockstep-cloud, one sync at a time (no live loop): two
//! devices of one user, offline edits, restarts, a damaged cache, export and import.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Cloud, Device, PASSWORD, open, open_at, unique};
use lockstep_core::engine::{Arrival, EngineEvent};
use serde_json::json;

/// Ada's account on two new devices under `base`, `<prefix>-a` and `<prefix>-b`: `a` signs up,
/// `b` signs in, each syncs once. Only `b` is kept open; `a`'s profile name is returned.
async fn synced_pair(cloud: &Cloud, base: &Path, prefix: &str) -> (String, Device) {
    let (a_name, b_name) = (
        unique(&format!("{prefix}-a")),
        unique(&format!("{prefix}-b")),
    );
    let a = open(cloud, base, &a_name);
    let b = open(cloud, base, &b_name);
    a.engine.sign_up("ada@example.com", PASSWORD).await.unwrap();
    b.engine.sign_in("ada@example.com", PASSWORD).await.unwrap();
    a.engine.sync_once().await.unwrap();
    b.engine.sync_once().await.unwrap();
    (a_name, b)
}

/// Profile `name` under `base` with a server that cannot be reached.
fn open_offline(cloud: &Cloud, base: &Path, name: &str) -> Device {
    open_at("http://127.0.0.1:9", &cloud.anon_key, base, name)
}

/// Opens `name` offline, makes these edits there, and checks that a sync cannot reach the
/// server.
async fn edit_offline<const N: usize>(
    cloud: &Cloud,
    base: &Path,
    name: &str,
    edits: [(&str, serde_json::Value); N],
) -> Device {
    let offline = open_offline(cloud, base, name);
    for (key, value) in edits {
        offline.engine.set(key, value).unwrap();
    }
    let err = offline.engine.sync_once().await.unwrap_err();
    assert!(err.is_offline(), "{err}");
    offline
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<EngineEvent>) -> Vec<EngineEvent> {
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_on_one_device_reaches_the_other_and_defaults_are_never_written() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&cloud, dir.path(), &unique("conv-a"));
    let mut b = open(&cloud, dir.path(), &unique("conv-b"));
    a.engine.sign_up("ada@example.com", PASSWORD).await.unwrap();
    b.engine.sign_in("ada@example.com", PASSWORD).await.unwrap();

    let first = a.engine.sync_once().await.unwrap();
    assert!(first.full_pull);
    assert_eq!(first.pushed, 0, "a new device pushes nothing");
    assert_eq!(
        a.engine.get("appearance.theme"),
        Some(json!("system")),
        "defaults read locally"
    );
    b.engine.sync_once().await.unwrap();
    assert!(
        b.engine.export().settings.is_empty(),
        "defaults are not writes"
    );

    a.engine.set("appearance.theme", json!("dark")).unwrap();
    assert_eq!(a.engine.pending(), 1);
    assert_eq!(
        a.engine.get("appearance.theme"),
        Some(json!("dark")),
        "visible at once"
    );
    assert_eq!(a.engine.sync_once().await.unwrap().pushed, 1);
    assert_eq!(a.engine.pending(), 0);
    drain(&mut b.events);
    let report = b.engine.sync_once().await.unwrap();
    assert_eq!(report.remote_changes, 1);
    assert_eq!(b.engine.get("appearance.theme"), Some(json!("dark")));
    let events = drain(&mut b.events);
    let a_name = format!("Device {}", a.name);
    assert!(
        events.contains(&EngineEvent::RemoteChange {
            key: "appearance.theme".into(),
            old: Some(json!("system")),
            new: Some(json!("dark")),
            device_id: Some(a.engine.profile().device.id.clone()),
            device_name: Some(a_name.clone()),
            // Pulled without a live loop: read in a catch-up.
            arrival: Arrival::CatchUp,
        }),
        "{events:?}"
    );
    let row = b.engine.row("appearance.theme").unwrap();
    assert_eq!(
        row.device_id,
        a.engine.profile().device.id,
        "who changed it is known"
    );
    // An invalid value is refused before it is queued.
    let refused = a.engine.set("appearance.theme", json!("blue")).unwrap_err();
    assert!(
        refused.to_string().contains("appearance.theme"),
        "{refused}"
    );
    assert_eq!(a.engine.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_survive_a_restart_and_the_loser_is_told() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let (a_name, b) = synced_pair(&cloud, dir.path(), "off").await;

    // The laptop goes offline (the server is unreachable from it) and edits two settings.
    let offline = edit_offline(
        &cloud,
        dir.path(),
        &a_name,
        [
            ("appearance.theme", json!("light")),
            ("notifications.desktop", json!(false)),
        ],
    )
    .await;
    assert_eq!(offline.engine.pending(), 2);
    drop(offline);

    // Meanwhile the desktop makes a newer edit of the same key.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    b.engine.set("appearance.theme", json!("dark")).unwrap();
    b.engine.sync_once().await.unwrap();

    // The laptop restarts online: its queued edits are still there and go out.
    let mut a = open(&cloud, dir.path(), &a_name);
    assert_eq!(a.engine.pending(), 2, "queued edits survived the restart");
    let report = a.engine.sync_once().await.unwrap();
    assert_eq!((report.pushed, report.superseded), (2, 1));
    let told = drain(&mut a.events).into_iter().find_map(|e| match e {
        EngineEvent::Superseded { key, lost, winner } => Some((key, lost, winner)),
        _ => None,
    });
    let (key, lost, winner) = told.expect("the user is told the edit was superseded");
    assert_eq!((key.as_str(), lost), ("appearance.theme", json!("light")));
    assert_eq!(winner.value, json!("dark"));
    assert_eq!(winner.device_id, b.engine.profile().device.id);
    b.engine.sync_once().await.unwrap();
    for engine in [&a.engine, &b.engine] {
        assert_eq!(engine.get("appearance.theme"), Some(json!("dark")));
        assert_eq!(engine.get("notifications.desktop"), Some(json!(false)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_reported_set_aside_and_rebuilt_from_the_server() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("damaged-a");
    let a = open(&cloud, dir.path(), &name);
    a.engine.sign_up("ada@example.com", PASSWORD).await.unwrap();
    a.engine.set("appearance.theme", json!("dark")).unwrap();
    a.engine
        .set("security.lock_after_minutes", json!(5))
        .unwrap();
    a.engine.sync_once().await.unwrap();
    // Queued, not sent: it must survive the damage.
    a.engine.set("notifications.desktop", json!(false)).unwrap();
    let database = a.engine.profile().dir.join("profile.sqlite3");
    drop(a);
    // Garbage over the root page of the first table (`meta`, page 2).
    let mut bytes = std::fs::read(&database).unwrap();
    bytes[4096..4196].fill(0xff);
    std::fs::write(&database, &bytes).unwrap();

    Keychain::use_mock_store();
    let opened = lockstep_core::profile::open(dir.path(), &name, Default::default()).unwrap();
    assert_eq!(opened.problems.len(), 1, "{:?}", opened.problems);
    assert!(
        opened.problems[0].contains("damaged") && opened.problems[0].contains("1 queued edit"),
        "{:?}",
        opened.problems
    );
    let kept = std::fs::read_dir(&opened.engine.profile().dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("profile.corrupt-")
        });
    assert!(kept, "the damaged database is kept for a human to look at");
    assert_eq!(opened.engine.pending(), 1, "the queued edit is kept");
    let report = opened.engine.sync_once().await.unwrap();
    assert!(report.full_pull);
    assert_eq!(report.pushed, 1);
    assert_eq!(opened.engine.get("appearance.theme"), Some(json!("dark")));
    assert_eq!(
        opened.engine.get("security.lock_after_minutes"),
        Some(json!(5))
    );
    assert_eq!(
        opened.engine.get("notifications.desktop"),
        Some(json!(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_outbox_file_of_the_old_store_is_imported_with_its_readable_edits() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("outbox-a");
    // A profile left by the earlier file store (the fixture), its journal damaged in the second
    // line (`custom.fixture.note`).
    let profile_dir = dir.path().join("profiles").join(&name);
    std::fs::create_dir_all(&profile_dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/profile-v1");
    for file in ["outbox.jsonl", "outbox.lock", "cache.json"] {
        std::fs::copy(fixture.join(file), profile_dir.join(file)).unwrap();
    }
    let outbox = profile_dir.join("outbox.jsonl");
    let mut bytes = std::fs::read(&outbox).unwrap();
    let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 20;
    bytes[second] ^= 0x01;
    std::fs::write(&outbox, &bytes).unwrap();
    Keychain::use_mock_store();
    Keychain::for_profile(&name)
        .set(
            lockstep_core::keychain::SecretKind::LocalKey,
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        )
        .await
        .unwrap();

    Keychain::use_mock_store();
    let options = lockstep_core::profile::OpenOptions {
        server_url: Some(cloud.url.clone()),
        anon_key: Some(cloud.anon_key.clone()),
        ..Default::default()
    };
    let opened = lockstep_core::profile::open(dir.path(), &name, options).unwrap();
    assert_eq!(opened.problems.len(), 1, "{:?}", opened.problems);
    assert!(
        opened.problems[0].contains("1 queued edit"),
        "{:?}",
        opened.problems
    );
    let names: Vec<String> = std::fs::read_dir(&opened.engine.profile().dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("outbox.corrupt-")),
        "the damaged journal is kept for a human to look at: {names:?}"
    );
    assert!(!names.iter().any(|n| n == "outbox.jsonl"), "{names:?}");
    assert_eq!(opened.engine.pending(), 3, "the readable edits are kept");
    assert!(!opened.engine.is_pending("custom.fixture.note"));
    opened
        .engine
        .sign_up("ada@example.com", PASSWORD)
        .await
        .unwrap();
    assert_eq!(opened.engine.sync_once().await.unwrap().pushed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_leaves_secrets_out_and_import_is_validated_whole() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let a = open(&cloud, dir.path(), &unique("export-a"));
    let b = open(&cloud, dir.path(), &unique("export-b"));
    a.engine.sign_up("ada@example.com", PASSWORD).await.unwrap();
    b.engine.sign_up("bob@example.com", PASSWORD).await.unwrap();
    a.engine.set("appearance.theme", json!("dark")).unwrap();
    a.engine
        .set("integrations.github", json!("ghp_not_for_files"))
        .unwrap();
    a.engine.sync_once().await.unwrap();
    let export = serde_json::to_vec(&a.engine.export()).unwrap();
    let text = String::from_utf8(export.clone()).unwrap();
    assert!(text.contains("appearance.theme"), "{text}");
    assert!(
        !text.contains("ghp_not_for_files"),
        "API keys never go to an export file"
    );

    let bad = br#"{"format":"lockstep-settings","version":1,"settings":{"appearance.theme":"dark","security.lock_after_minutes":"soon"}}"#;
    let refused = b.engine.import(bad).unwrap_err();
    assert!(
        refused.to_string().contains("security.lock_after_minutes"),
        "{refused}"
    );
    assert_eq!(
        b.engine.pending(),
        0,
        "nothing of a refused import is queued"
    );
    assert_eq!(b.engine.import(&export).unwrap(), 1);
    b.engine.sync_once().await.unwrap();
    assert_eq!(b.engine.get("appearance.theme"), Some(json!("dark")));
}

use lockstep_core::keychain::Keychain;

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &std::path::Path, needle: &str) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|entry| {
            let path = entry.path();
            if path.is_dir() {
                any_file_contains(&path, needle)
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_sealed_in_every_local_file() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let (a_name, b_name) = (unique("seal-a"), unique("seal-b"));
    const SECRET: &str = "ghp_sealed_at_rest_1234";
    // Queued offline first, so the outbox holds it.
    let offline = open_offline(&cloud, dir.path(), &a_name);
    offline
        .engine
        .set("integrations.github", json!(SECRET))
        .unwrap();
    offline
        .engine
        .set_device_only("integrations.jira", true)
        .unwrap();
    offline
        .engine
        .set("integrations.jira", json!("jira_local_only_key"))
        .unwrap();
    assert!(
        !any_file_contains(dir.path(), SECRET),
        "the outbox and cache hold no plain API key"
    );
    assert!(!any_file_contains(dir.path(), "jira_local_only_key"));
    drop(offline);

    let a = open(&cloud, dir.path(), &a_name);
    assert_eq!(
        a.engine.get("integrations.github"),
        Some(json!(SECRET)),
        "it opens again"
    );
    assert_eq!(
        a.engine.get("integrations.jira"),
        Some(json!("jira_local_only_key"))
    );
    a.engine.sign_up("ada@example.com", PASSWORD).await.unwrap();
    a.engine.sync_once().await.unwrap();
    let b = open(&cloud, dir.path(), &b_name);
    b.engine.sign_in("ada@example.com", PASSWORD).await.unwrap();
    b.engine.sync_once().await.unwrap();
    assert_eq!(
        b.engine.get("integrations.github"),
        Some(json!(SECRET)),
        "it synced"
    );
    assert_eq!(
        b.engine.get("integrations.jira"),
        None,
        "device-only keys stay home"
    );
    assert!(
        !any_file_contains(dir.path(), SECRET),
        "nor does the other device's cache"
    );
}

/// Regression (issue 10): a key edited twice before a push used to wedge the device for good:
/// the push carried the key twice, the server refused the batch with a 400, and every later sync
/// sent the same refused batch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_edited_twice_offline_syncs_and_later_edits_keep_syncing() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let (a_name, b) = synced_pair(&cloud, dir.path(), "twice").await;

    let offline = edit_offline(
        &cloud,
        dir.path(),
        &a_name,
        [
            ("appearance.theme", json!("dark")),
            ("appearance.theme", json!("light")),
        ],
    )
    .await;
    drop(offline);

    let a = open(&cloud, dir.path(), &a_name);
    assert_eq!(a.engine.pending(), 1, "the second edit replaced the first");
    let report = a.engine.sync_once().await.unwrap();
    assert_eq!(report.pushed, 1, "one push carries the key's newest edit");
    assert_eq!(report.superseded, 0);
    assert_eq!(a.engine.pending(), 0);
    b.engine.sync_once().await.unwrap();
    assert_eq!(a.engine.get("appearance.theme"), Some(json!("light")));
    assert_eq!(b.engine.get("appearance.theme"), Some(json!("light")));

    // Later edits keep leaving the device.
    a.engine.set("notifications.desktop", json!(false)).unwrap();
    a.engine.set("appearance.theme", json!("dark")).unwrap();
    a.engine.set("appearance.theme", json!("system")).unwrap();
    a.engine.sync_once().await.unwrap();
    b.engine.sync_once().await.unwrap();
    assert_eq!(b.engine.get("notifications.desktop"), Some(json!(false)));
    assert_eq!(b.engine.get("appearance.theme"), Some(json!("system")));
}

/// A push the server refuses for good (here: a stamp from a clock far ahead of the server's)
/// is split to find the refused edit, which is set aside and reported; the rest syncs, the
/// device shows the server's value again, and the user can drop the refused edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_edit_is_set_aside_and_the_rest_keeps_syncing() {
    use std::sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    };
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("aside-a");
    let opened = open(&cloud, dir.path(), &name);
    let skew = Arc::new(AtomicI64::new(0));
    let clock = skew.clone();
    let a = Arc::try_unwrap(opened.engine)
        .unwrap()
        .with_clock(Arc::new(move || {
            lockstep_core::clock_ms() + clock.load(Ordering::SeqCst)
        }));
    let mut events = a.subscribe();
    let b = open(&cloud, dir.path(), &unique("aside-b"));
    a.sign_up("ada@example.com", PASSWORD).await.unwrap();
    b.engine.sign_in("ada@example.com", PASSWORD).await.unwrap();
    a.sync_once().await.unwrap();

    a.set("notifications.desktop", json!(false)).unwrap();
    // Ten minutes ahead: the server refuses the stamp (at most 60 s ahead by default).
    skew.store(10 * 60 * 1000, Ordering::SeqCst);
    a.set("appearance.theme", json!("dark")).unwrap();
    assert_eq!(a.pending(), 2);

    let report = a.sync_once().await.unwrap();
    assert_eq!((report.pushed, report.set_aside), (1, 1), "{report:?}");
    assert_eq!(a.pending(), 0);
    let aside = a.set_aside();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(aside[0].key, "appearance.theme");
    assert_eq!(aside[0].value, Some(json!("dark")));
    assert!(aside[0].reason.contains("too far ahead"), "{aside:?}");
    let summary = lockstep_core::engine::describe_set_aside(&aside).unwrap();
    assert!(
        summary.starts_with("1 edit could not be synced: appearance.theme: "),
        "{summary}"
    );
    assert_eq!(a.status().borrow().set_aside, 1);
    assert!(
        drain(&mut events).iter().any(|e| matches!(
            e,
            EngineEvent::SetAside { key, .. } if key == "appearance.theme"
        )),
        "the user is told"
    );
    // The device shows what the server holds, not the refused value.
    assert_eq!(a.get("appearance.theme"), Some(json!("system")));
    b.engine.sync_once().await.unwrap();
    assert_eq!(b.engine.get("notifications.desktop"), Some(json!(false)));
    assert_eq!(b.engine.get("appearance.theme"), Some(json!("system")));

    // Syncing again does not resend it, and a retry that is still refused sets it aside again.
    assert_eq!(a.sync_once().await.unwrap().pushed, 0);
    assert_eq!(a.retry_set_aside(None).unwrap(), 1);
    assert_eq!(a.get("appearance.theme"), Some(json!("dark")));
    let report = a.sync_once().await.unwrap();
    assert_eq!(report.set_aside, 1, "{report:?}");

    // Set aside durably: a restart still has it, and still shows the server's value.
    drop(a);
    let a = open(&cloud, dir.path(), &name);
    assert_eq!(a.engine.set_aside().len(), 1);
    a.engine.sync_once().await.unwrap();
    assert_eq!(a.engine.get("appearance.theme"), Some(json!("system")));
    // A newer edit of the key replaces the refused one.
    a.engine.set("appearance.theme", json!("light")).unwrap();
    a.engine.sync_once().await.unwrap();
    assert!(a.engine.set_aside().is_empty());
    b.engine.sync_once().await.unwrap();
    assert_eq!(b.engine.get("appearance.theme"), Some(json!("light")));
}

/// Dropping a set-aside edit removes it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_aside_edit_can_be_dropped() {
    use std::sync::Arc;
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let opened = open(&cloud, dir.path(), &unique("drop-a"));
    let a = Arc::try_unwrap(opened.engine)
        .unwrap()
        .with_clock(Arc::new(|| lockstep_core::clock_ms() + 10 * 60 * 1000));
    a.sign_up("ada@example.com", PASSWORD).await.unwrap();
    a.set("appearance.theme", json!("dark")).unwrap();
    assert_eq!(a.sync_once().await.unwrap().set_aside, 1);
    assert_eq!(a.drop_set_aside(Some("appearance.theme")).unwrap(), 1);
    assert!(a.set_aside().is_empty());
    assert_eq!(a.status().borrow().set_aside, 0);
    assert_eq!(a.sync_once().await.unwrap().pushed, 0);
}

/// Regression (found by the simulation, seed 17586153 shrunk): a device whose clock is behind
/// learnt another device's newer row from a push answer (or a pull) without its clock
/// observing that row's stamp, so its next edit of the key was stamped older than what it had
/// just seen: the edit did not even show locally, and the server refused it as superseded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_after_seeing_a_newer_row_wins_over_it_even_with_a_slow_clock() {
    use std::sync::Arc;
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let opened = open(&cloud, dir.path(), &unique("slow-a"));
    // Two minutes behind.
    let a = Arc::try_unwrap(opened.engine)
        .unwrap()
        .with_clock(Arc::new(|| lockstep_core::clock_ms() - 120_000));
    let mut events = a.subscribe();
    let b = open(&cloud, dir.path(), &unique("slow-b"));
    a.sign_up("ada@example.com", PASSWORD).await.unwrap();
    b.engine.sign_in("ada@example.com", PASSWORD).await.unwrap();

    b.engine.set("custom.c", json!("from b")).unwrap();
    a.set("custom.c", json!("from a")).unwrap();
    b.engine.sync_once().await.unwrap();
    // A's edit was made before it saw B's: it loses, and A is told.
    assert_eq!(a.push().await.unwrap().superseded, 1);
    assert_eq!(a.get("custom.c"), Some(json!("from b")));
    drain(&mut events);

    // Made after seeing B's row: it shows at once and wins everywhere.
    a.reset("custom.c").unwrap();
    assert_eq!(a.get("custom.c"), None, "the reset shows at once");
    assert_eq!(a.row("custom.c").unwrap().device_id, a.profile().device.id);
    let report = a.sync_once().await.unwrap();
    assert_eq!(report.superseded, 0, "{report:?}: {:?}", drain(&mut events));
    b.engine.sync_once().await.unwrap();
    assert_eq!(b.engine.get("custom.c"), None);

    // The same after a pull.
    b.engine.set("custom.c", json!("again from b")).unwrap();
    b.engine.sync_once().await.unwrap();
    a.sync_once().await.unwrap();
    a.set("custom.c", json!("again from a")).unwrap();
    assert_eq!(a.get("custom.c"), Some(json!("again from a")));
    assert_eq!(a.sync_once().await.unwrap().superseded, 0);
    b.engine.sync_once().await.unwrap();
    assert_eq!(b.engine.get("custom.c"), Some(json!("again from a")));
}

/// Two processes on one profile (the app's engine and a `lockstep sync`), each with edits of its
/// own queued in the shared outbox, sync at the same moment, again and again: every edit reaches
/// the server once, neither reports a superseded edit (nothing of theirs lost to anything), and
/// both end with an empty outbox and the same values as the other device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_syncing_one_profile_at_once_push_every_edit_once() {
    let cloud = Cloud::start();
    let dir = tempfile::tempdir().unwrap();
    let (a_name, b) = synced_pair(&cloud, dir.path(), "both").await;
    let mut app = open(&cloud, dir.path(), &a_name);
    let mut cli = open(&cloud, dir.path(), &a_name);
    for round in 0..5 {
        app.engine
            .set(&format!("custom.both.app{}", round % 2), json!(round))
            .unwrap();
        cli.engine
            .set(&format!("custom.both.cli{}", round % 2), json!(round))
            .unwrap();
        app.engine
            .set("custom.both.shared", json!(round * 10))
            .unwrap();
        let (left, right) = tokio::join!(app.engine.sync_once(), cli.engine.sync_once());
        left.unwrap();
        right.unwrap();
    }
    for device in [&mut app, &mut cli] {
        assert_eq!(device.engine.pending(), 0);
        let superseded: Vec<_> = drain(&mut device.events)
            .into_iter()
            .filter(|e| matches!(e, EngineEvent::Superseded { .. }))
            .collect();
        assert!(superseded.is_empty(), "{superseded:?}");
    }
    b.engine.sync_once().await.unwrap();
    for (key, value) in [
        ("custom.both.app0", json!(4)),
        ("custom.both.app1", json!(3)),
        ("custom.both.cli0", json!(4)),
        ("custom.both.cli1", json!(3)),
        ("custom.both.shared", json!(40)),
    ] {
        assert_eq!(b.engine.get(key), Some(value.clone()), "{key}");
        assert_eq!(cli.engine.get(key), Some(value), "{key}");
    }
    // Each edit reached the server once: five rounds, three edits each.
    let pushed = cloud
        .scalar("SELECT count(*) FROM change_feed WHERE payload LIKE '%custom.both.%'")
        .await;
    assert_eq!(pushed, 15, "feed entries of settings");
}
