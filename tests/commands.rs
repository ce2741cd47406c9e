//! The shell's command layer under `tauri::test` (mock runtime, no window), against a real
//! lockstep-cloud on loopback: two app instances (two profiles) of one user, driven through the
//! same IPC commands the window calls.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Cloud, Instance, confirm_email, totp_code, unique};

#[test]
fn two_instances_sync_through_the_commands_and_a_revoked_one_is_signed_out() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let a = Instance::start(base.path(), &unique("app-a"));
    let b = Instance::start(base.path(), &unique("app-b"));

    // First run: not connected; commands that need a profile say so by code.
    let launched = a.ok("launch", json!({}));
    assert_eq!(launched["connected"], false);
    let err = a.call("settings", json!({})).unwrap_err();
    assert_eq!(err["code"], "not_connected", "{err}");
    let bad = a
        .call(
            "connect",
            json!({"serverUrl": "ftp://x", "anonKey": "k", "deviceName": "A"}),
        )
        .unwrap_err();
    assert_eq!(bad["code"], "invalid");

    a.ok("connect", json!({"serverUrl": cloud.server.url, "anonKey": cloud.server.anon_key, "deviceName": "Work laptop"}));
    b.ok("connect", json!({"serverUrl": cloud.server.url, "anonKey": cloud.server.anon_key, "deviceName": "Home desktop"}));
    a.ok(
        "sign_up",
        json!({"email": "ada@example.com", "password": "Correct horse 42"}),
    );
    assert_eq!(
        b.ok(
            "sign_in",
            json!({"email": "ada@example.com", "password": "Correct horse 42"})
        ),
        "done"
    );
    let account = a.ok("account", json!({}));
    assert_eq!(
        account["email_verified"], false,
        "the banner shows until the link is opened"
    );
    assert_eq!(account["device_name"], "Work laptop");
    a.wait_event("A live", |e| {
        e["event"] == "status" && e["connection"] == "live"
    });
    b.wait_event("B live", |e| {
        e["event"] == "status" && e["connection"] == "live"
    });

    // A change of theme on A reaches B, with the device's name; B's "last synced" moves with
    // it (issue 15: it stayed at the time B connected).
    let synced_before = b.ok("status", json!({}))["last_synced_ms"]
        .as_i64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    a.ok(
        "set_setting",
        json!({"key": "appearance.theme", "value": "dark"}),
    );
    b.wait_event("the theme change", |e| {
        e["event"] == "remote_change"
            && e["key"] == "appearance.theme"
            && e["new"] == "dark"
            && e["device_name"] == "Work laptop"
    });
    let synced_after = b.ok("status", json!({}))["last_synced_ms"]
        .as_i64()
        .unwrap();
    assert!(
        synced_after > synced_before,
        "last synced {synced_before} → {synced_after}"
    );
    let theme = b.setting("appearance.theme");
    assert_eq!(theme["value"], "dark");
    assert_eq!(theme["changed_by"], "Work laptop");
    assert_eq!(a.setting("appearance.theme")["changed_by"], "this device");
    // Invalid values are refused with a code the UI can act on.
    let refused = a
        .call(
            "set_setting",
            json!({"key": "appearance.theme", "value": "blue"}),
        )
        .unwrap_err();
    assert_eq!(refused["code"], "invalid");
    // In words (issue 15: raw key names), the key behind the disclosure.
    assert_eq!(
        refused["message"], "Theme: must be one of light, dark, system",
        "{refused}"
    );
    assert_eq!(refused["detail"], "appearance.theme", "{refused}");
    // API keys are flagged sensitive for masking.
    a.ok(
        "set_setting",
        json!({"key": "integrations.github", "value": "ghp_shell_test"}),
    );
    assert_eq!(a.setting("integrations.github")["sensitive"], true);

    // Devices: both listed, this one marked; A revokes B, and B learns it is signed out.
    let devices = a.ok("devices", json!({}));
    let list = devices.as_array().unwrap();
    assert_eq!(list.len(), 2, "{devices}");
    let b_id = list.iter().find(|d| d["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ok("revoke_device", json!({"deviceId": b_id}));
    b.wait_event("the sign-out", |e| {
        e["event"] == "security" && e["kind"] == "signed_out" && e["by"] == "Work laptop"
    });
    let after = b.call("account", json!({})).unwrap_err();
    assert_eq!(after["code"], "signed_out", "{after}");
}

/// Regression (issue 10), through the app's commands: two quick theme changes while the server
/// is down used to wedge the instance; once the server is back both instances show the second.
#[test]
fn two_theme_changes_while_offline_reach_the_other_instance_once_online() {
    let mut cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let a = Instance::start(base.path(), &unique("twice-a"));
    let b = Instance::start(base.path(), &unique("twice-b"));
    a.ok("launch", json!({}));
    b.ok("launch", json!({}));
    let (url, anon) = (cloud.server.url.clone(), cloud.server.anon_key.clone());
    a.ok(
        "connect",
        json!({"serverUrl": url, "anonKey": anon, "deviceName": "Work laptop"}),
    );
    b.ok(
        "connect",
        json!({"serverUrl": url, "anonKey": anon, "deviceName": "Home desktop"}),
    );
    let credentials = json!({"email": "twice@example.com", "password": "Correct horse 42"});
    a.ok("sign_up", credentials.clone());
    b.ok("sign_in", credentials);
    for instance in [&a, &b] {
        instance.wait_event("live", |e| {
            e["event"] == "status" && e["connection"] == "live"
        });
    }

    cloud.server.kill();
    a.wait_event("offline", |e| {
        e["event"] == "status" && e["connection"] != "live"
    });
    for theme in ["dark", "light"] {
        a.ok(
            "set_setting",
            json!({"key": "appearance.theme", "value": theme}),
        );
    }
    assert_eq!(a.ok("status", json!({}))["pending"], 1, "coalesced per key");
    cloud.server.restart().unwrap();
    a.ok("sync_now", json!({}));
    b.wait_event("the second theme", |e| {
        e["event"] == "remote_change" && e["key"] == "appearance.theme" && e["new"] == "light"
    });
    assert_eq!(b.setting("appearance.theme")["value"], "light");
    assert_eq!(a.setting("appearance.theme")["value"], "light");
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.ok("status", json!({}))["pending"] != 0 {
        assert!(Instant::now() < deadline, "A still has edits pending");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.ok("set_aside", json!({})), json!([]));
    assert_eq!(a.ok("status", json!({}))["set_aside"], 0);

    // Later edits keep syncing.
    a.ok(
        "set_setting",
        json!({"key": "notifications.desktop", "value": false}),
    );
    b.wait_event("a later edit", |e| {
        e["event"] == "remote_change" && e["key"] == "notifications.desktop"
    });
}

/// The local history through the commands: two values set here and one from the other instance,
/// newest first with where each came from; a restore of the oldest shows at once, syncs to the
/// other instance, and becomes the newest version.
#[test]
fn a_setting_history_lists_its_versions_and_a_restore_syncs() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let a_profile = unique("hist-a");
    let a = Instance::start(base.path(), &a_profile);
    let b = Instance::start(base.path(), &unique("hist-b"));
    a.ok("launch", json!({}));
    b.ok("launch", json!({}));
    let (url, anon) = (cloud.server.url.clone(), cloud.server.anon_key.clone());
    a.ok(
        "connect",
        json!({"serverUrl": url, "anonKey": anon, "deviceName": "Work laptop"}),
    );
    b.ok(
        "connect",
        json!({"serverUrl": url, "anonKey": anon, "deviceName": "Home desktop"}),
    );
    let credentials = json!({"email": "history@example.com", "password": "Correct horse 42"});
    a.ok("sign_up", credentials.clone());
    b.ok("sign_in", credentials);
    for instance in [&a, &b] {
        instance.wait_event("live", |e| {
            e["event"] == "status" && e["connection"] == "live"
        });
    }

    // Nothing yet; a key outside the schema is refused.
    assert_eq!(
        a.ok("setting_history", json!({"key": "appearance.theme"})),
        json!([])
    );
    let unknown = a
        .call("setting_history", json!({"key": "appearance.nope"}))
        .unwrap_err();
    assert_eq!(unknown["code"], "invalid", "{unknown}");

    // Two values set on A, then one set on B.
    for theme in ["dark", "light"] {
        a.ok(
            "set_setting",
            json!({"key": "appearance.theme", "value": theme}),
        );
    }
    b.wait_event("light from A", |e| {
        e["event"] == "remote_change" && e["key"] == "appearance.theme" && e["new"] == "light"
    });
    b.ok(
        "set_setting",
        json!({"key": "appearance.theme", "value": "system"}),
    );
    a.wait_event("system from B", |e| {
        e["event"] == "remote_change"
            && e["key"] == "appearance.theme"
            && e["new"] == "system"
            && e["device_name"] == "Home desktop"
    });

    let history = a.ok("setting_history", json!({"key": "appearance.theme"}));
    let versions = history.as_array().unwrap();
    let shown: Vec<(&Value, &Value, &Value, &Value)> = versions
        .iter()
        .map(|v| {
            (
                &v["value"],
                &v["origin"],
                &v["origin_label"],
                &v["changed_by"],
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                &json!("system"),
                &json!("arrived"),
                &json!("arrived"),
                &json!("Home desktop")
            ),
            (
                &json!("light"),
                &json!("here"),
                &json!("set here"),
                &json!("this device")
            ),
            (
                &json!("dark"),
                &json!("here"),
                &json!("set here"),
                &json!("this device")
            ),
        ],
        "newest first: {history}"
    );
    let numbers: Vec<i64> = versions
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] > w[1]), "{numbers:?}");
    for version in versions {
        assert_eq!(version["key"], "appearance.theme");
        let at = version["changed_at"].as_str().unwrap();
        assert!(
            lockstep_protocol::timestamp::parse_rfc3339(at).is_some(),
            "{at} is not RFC 3339"
        );
    }
    // B's own newest version is its own.
    let on_b = b.ok("setting_history", json!({"key": "appearance.theme"}));
    assert_eq!(on_b[0]["value"], "system", "{on_b}");
    assert_eq!(on_b[0]["changed_by"], "this device", "{on_b}");
    assert_eq!(on_b[1]["value"], "light", "{on_b}");
    assert_eq!(on_b[1]["changed_by"], "Work laptop", "{on_b}");

    // A restores the oldest version: shown at once, the newest version now, and synced to B.
    // (B may have seen A's first `dark` already: only what arrives from now on counts.)
    b.events.lock().unwrap().clear();
    let oldest = numbers[2];
    let restored = a.ok(
        "restore_setting",
        json!({"key": "appearance.theme", "version": oldest}),
    );
    assert_eq!(restored["version"], oldest, "{restored}");
    assert_eq!(restored["value"], "dark", "{restored}");
    let theme = a.setting("appearance.theme");
    assert_eq!(theme["value"], "dark");
    assert_eq!(theme["changed_by"], "this device");
    let after = a.ok("setting_history", json!({"key": "appearance.theme"}));
    assert_eq!(after.as_array().unwrap().len(), 4, "{after}");
    assert_eq!(after[0]["value"], "dark", "{after}");
    assert_eq!(after[0]["origin"], "here", "{after}");
    assert!(
        after[0]["version"].as_i64().unwrap() > numbers[0],
        "{after}"
    );
    b.wait_event("the restored theme", |e| {
        e["event"] == "remote_change"
            && e["key"] == "appearance.theme"
            && e["new"] == "dark"
            && e["device_name"] == "Work laptop"
    });
    assert_eq!(b.setting("appearance.theme")["value"], "dark");

    // Without a version: the one before the current. An unknown version is refused.
    let previous = a.ok(
        "restore_setting",
        json!({"key": "appearance.theme", "version": null}),
    );
    assert_eq!(previous["value"], "system", "{previous}");
    assert_eq!(a.setting("appearance.theme")["value"], "system");
    let missing = a
        .call(
            "restore_setting",
            json!({"key": "appearance.theme", "version": numbers[0] + 1_000_000}),
        )
        .unwrap_err();
    assert_eq!(missing["code"], "invalid", "{missing}");

    // API keys stay masked in the history.
    for secret in ["ghp_history_one", "ghp_history_two"] {
        a.ok(
            "set_setting",
            json!({"key": "integrations.github", "value": secret}),
        );
    }
    let secrets = a.ok("setting_history", json!({"key": "integrations.github"}));
    assert_eq!(secrets.as_array().unwrap().len(), 2, "{secrets}");
    assert!(!secrets.to_string().contains("ghp_history"), "{secrets}");

    // A second window on A's profile follows A's connection ("shared"), and shows the same
    // history, A's versions as this device's.
    let again = Instance::start(base.path(), &a_profile);
    assert_eq!(again.ok("launch", json!({}))["connected"], true);
    again.wait_event("the shared connection", |e| {
        e["event"] == "status" && e["connection"] == "shared" && e["label"] == "Shared"
    });
    assert_eq!(again.ok("status", json!({}))["connection"], "shared");
    let shared = again.ok("setting_history", json!({"key": "appearance.theme"}));
    assert_eq!(
        shared,
        a.ok("setting_history", json!({"key": "appearance.theme"}))
    );
    assert_eq!(shared[0]["changed_by"], "this device", "{shared}");
}

/// Regression (issue 15): with "ask for a code when the app starts" on, the restarted app
/// showed the device list with working buttons, and every command worked over IPC while the
/// window said "locked". The lock is a gate in the shell: while locked, every command but
/// unlock and sign-out is refused with `locked`, events that carry data are held until the
/// unlock, wrong codes back off (kept across restarts), and a code unlocks once only.
#[test]
fn a_locked_app_refuses_every_command_but_unlock_and_sign_out() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let a_profile = unique("lock-a");
    let (url, anon) = (cloud.server.url.clone(), cloud.server.anon_key.clone());
    let credentials = json!({"email": "lock@example.com", "password": "Correct horse 42"});
    let b = Instance::start(base.path(), &unique("lock-b"));
    let (secret, recovery_code) = {
        let a = Instance::start(base.path(), &a_profile);
        a.ok("launch", json!({}));
        a.ok(
            "connect",
            json!({"serverUrl": url, "anonKey": anon, "deviceName": "Work laptop"}),
        );
        a.ok("sign_up", credentials.clone());
        confirm_email(&cloud, "lock@example.com");
        let enrollment = a.ok("enroll_totp", json!({"friendlyName": "Phone"}));
        let secret = enrollment["secret"].as_str().unwrap().to_owned();
        // Issue 15: a wrong code, or asking again, used to throw the scanned secret away.
        let wrong = a
            .call("confirm_enrollment", json!({"code": "000000"}))
            .unwrap_err();
        assert_eq!(wrong["code"], "refused", "{wrong}");
        let again = a.ok("enroll_totp", json!({"friendlyName": "Phone"}));
        assert_eq!(again, enrollment, "the same enrollment, the same secret");
        let codes = a.ok("confirm_enrollment", json!({"code": totp_code(&secret, 0)}));
        assert_eq!(a.ok("account", json!({}))["offline_codes"], true);
        a.ok(
            "set_setting",
            json!({"key": "security.require_code_on_unlock", "value": true}),
        );
        assert_eq!(a.ok("launch", json!({}))["locked"], false, "locks at start");
        (secret, codes[0].as_str().unwrap().to_owned())
    };
    b.ok("launch", json!({}));
    b.ok(
        "connect",
        json!({"serverUrl": url, "anonKey": anon, "deviceName": "Home desktop"}),
    );
    // B signs in with a recovery code, and can then check codes offline too (issue 15: after
    // a recovery code the device could not fetch the authenticator secret).
    assert_eq!(b.ok("sign_in", credentials), "code_needed");
    b.ok("verify_recovery_code", json!({"code": recovery_code}));
    assert_eq!(b.ok("account", json!({}))["offline_codes"], true);

    // The app starts again: locked before anything answers.
    let a = Instance::start(base.path(), &a_profile);
    assert_eq!(a.ok("launch", json!({}))["locked"], true);
    let refused = [
        ("settings", json!({})),
        ("status", json!({})),
        ("account", json!({})),
        ("devices", json!({})),
        ("activity", json!({})),
        ("set_aside", json!({})),
        ("setting_history", json!({"key": "appearance.theme"})),
        (
            "set_setting",
            json!({"key": "appearance.theme", "value": "dark"}),
        ),
        ("revoke_device", json!({"deviceId": "anything"})),
        ("sign_out", json!({"scope": "others"})),
        ("enroll_totp", json!({"friendlyName": "Another"})),
        ("disable_mfa", json!({"code": "123456"})),
        ("sync_now", json!({})),
        ("pause_sync", json!({"paused": true})),
        (
            "connect",
            json!({"serverUrl": url, "anonKey": anon, "deviceName": "Thief"}),
        ),
    ];
    for (cmd, args) in refused {
        let error = a.call(cmd, args).unwrap_err();
        assert_eq!(error["code"], "locked", "{cmd}: {error}");
    }
    let screen = a.ok("lock_screen", json!({}));
    assert_eq!(screen["locked"], true);
    assert_eq!(screen["device_name"], "Work laptop");

    // A change made on B while A is locked is held: no event with its value reaches A's window.
    b.ok(
        "set_setting",
        json!({"key": "appearance.theme", "value": "light"}),
    );
    std::thread::sleep(Duration::from_secs(2));
    let shown = |instance: &Instance| {
        instance
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| serde_json::to_value(e).unwrap()["event"] == "remote_change")
    };
    assert!(!shown(&a), "a change reached the window while locked");

    // Four wrong codes are free; the right one unlocks and the held change comes through.
    for n in 1..=4 {
        let wrong = a.ok("unlock", json!({"code": "000000"}));
        assert_eq!(wrong["unlocked"], false);
        assert_eq!(wrong["failures"], n);
        assert_eq!(wrong["retry_in_ms"], Value::Null, "attempt {n} is free");
    }
    let right = totp_code(&secret, 0);
    assert_eq!(a.ok("unlock", json!({"code": right}))["unlocked"], true);
    a.wait_event("the held change", |e| {
        e["event"] == "remote_change" && e["key"] == "appearance.theme" && e["new"] == "light"
    });
    assert_eq!(a.setting("appearance.theme")["value"], "light");

    // Locked again: the code that unlocked does not unlock twice.
    a.ok("lock_now", json!({}));
    assert_eq!(a.call("settings", json!({})).unwrap_err()["code"], "locked");
    let replay = a.ok("unlock", json!({"code": right}));
    assert_eq!(replay["unlocked"], false, "a code unlocks once");

    // Wrong codes past the free ones make the next try wait, even with the right code, and
    // across a restart.
    let mut last = Value::Null;
    for _ in 0..4 {
        last = a.ok("unlock", json!({"code": "000000"}));
    }
    assert_eq!(last["failures"], 5);
    let wait = last["retry_in_ms"]
        .as_i64()
        .expect("a wait after five wrong codes");
    assert!(wait > 10_000, "{last}");
    let next = totp_code(&secret, 1);
    let early = a.ok("unlock", json!({"code": next}));
    assert_eq!(early["unlocked"], false, "{early}");
    assert!(early["retry_in_ms"].as_i64().unwrap() > 0, "{early}");
    drop(a);
    let again = Instance::start(base.path(), &a_profile);
    assert_eq!(again.ok("launch", json!({}))["locked"], true);
    let screen = again.ok("lock_screen", json!({}));
    assert!(screen["retry_in_ms"].as_i64().unwrap() > 0, "{screen}");
    assert_eq!(
        again.ok("unlock", json!({"code": next}))["unlocked"],
        false,
        "a restart does not reset the wait"
    );

    // Signing out works while locked, and takes the lock with the device's secrets.
    again.ok("sign_out", json!({"scope": "this_device"}));
    assert_eq!(again.ok("launch", json!({}))["locked"], false);
    assert_eq!(
        again.call("account", json!({})).unwrap_err()["code"],
        "signed_out"
    );
}

/// Regression (issue 15): signing out dropped unsynced edits silently. With an edit that has
/// not reached the server, `sign_out` refuses with `unsynced`, saying how many, and keeps
/// everything; once synced (or when told to discard them) it signs out.
#[test]
fn signing_out_with_a_pending_edit_warns_and_keeps_it() {
    let mut cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let a = Instance::start(base.path(), &unique("bye-a"));
    a.ok("launch", json!({}));
    let (url, anon) = (cloud.server.url.clone(), cloud.server.anon_key.clone());
    a.ok(
        "connect",
        json!({"serverUrl": url, "anonKey": anon, "deviceName": "Work laptop"}),
    );
    a.ok(
        "sign_up",
        json!({"email": "bye@example.com", "password": "Correct horse 42"}),
    );
    a.wait_event("live", |e| {
        e["event"] == "status" && e["connection"] == "live"
    });
    // Paused, an edit waits here too.
    a.ok("pause_sync", json!({"paused": true}));
    a.ok(
        "set_setting",
        json!({"key": "notifications.desktop", "value": false}),
    );
    assert_eq!(
        a.ok("status", json!({}))["pending"],
        1,
        "queued while paused"
    );
    let paused = a
        .call("sign_out", json!({"scope": "this_device"}))
        .unwrap_err();
    assert_eq!(paused["code"], "unsynced", "{paused}");
    a.ok("pause_sync", json!({"paused": false}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.ok("status", json!({}))["pending"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the edit never synced once resumed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    cloud.server.kill();
    a.ok(
        "set_setting",
        json!({"key": "appearance.theme", "value": "dark"}),
    );
    let refused = a
        .call("sign_out", json!({"scope": "this_device"}))
        .unwrap_err();
    assert_eq!(refused["code"], "unsynced", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("1 change"),
        "{refused}"
    );
    assert_eq!(a.setting("appearance.theme")["pending"], true, "kept");
    // Signing the other devices out loses nothing here: no warning (it fails offline).
    let others = a.call("sign_out", json!({"scope": "others"})).unwrap_err();
    assert_ne!(others["code"], "unsynced", "{others}");

    cloud.server.restart().unwrap();
    a.ok("sync_now", json!({}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.ok("status", json!({}))["pending"] != 0 {
        assert!(Instant::now() < deadline, "the edit never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.ok("sign_out", json!({"scope": "this_device"}));
    assert_eq!(
        a.call("account", json!({})).unwrap_err()["code"],
        "signed_out"
    );

    // Told to discard them, it signs out with an edit pending.
    a.ok(
        "sign_in",
        json!({"email": "bye@example.com", "password": "Correct horse 42"}),
    );
    cloud.server.kill();
    a.ok(
        "set_setting",
        json!({"key": "appearance.theme", "value": "light"}),
    );
    a.ok(
        "sign_out",
        json!({"scope": "this_device", "discardPending": true}),
    );
    assert_eq!(
        a.call("account", json!({})).unwrap_err()["code"],
        "signed_out"
    );

    // That sign-out could not reach the server: it ends the session there once it can (issue
    // 15: signing out offline left the session alive on the server). The account's log shows
    // both sign-outs once this device is back.
    cloud.server.restart().unwrap();
    a.ok(
        "sign_in",
        json!({"email": "bye@example.com", "password": "Correct horse 42"}),
    );
    let activity = a.ok("activity", json!({}));
    let sign_outs = activity
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "logout")
        .count();
    assert_eq!(sign_outs, 2, "{activity:#}");
}

/// A web server on loopback that answers every request with a page: not a Lockstep server.
fn web_page_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            use std::io::{Read as _, Write as _};
            let mut request = [0_u8; 4096];
            let _ = stream.read(&mut request);
            let page = "<html><body>Hello</body></html>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    url
}

/// Regression (issue 15): a wrong server URL was saved unchecked, with no way back but deleting
/// the profile. Connecting checks the server (it answers as a Lockstep server and takes the anon
/// key) and names the URL when it does not; nothing is saved until it does; a signed-out profile
/// can move to another server.
#[test]
fn connecting_checks_the_server_and_names_the_url_when_it_is_wrong() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let a = Instance::start(base.path(), &unique("check-a"));
    a.ok("launch", json!({}));
    let (url, anon) = (cloud.server.url.clone(), cloud.server.anon_key.clone());
    let connect = |server: &str, key: &str| {
        a.call(
            "connect",
            json!({"serverUrl": server, "anonKey": key, "deviceName": "Work laptop"}),
        )
    };
    let nobody = format!("http://127.0.0.1:{}", {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().port()
    });
    let page = web_page_server();
    for (server, key, code, says) in [
        (
            "ftp://example.com",
            anon.as_str(),
            "invalid",
            "is not a web address",
        ),
        (
            "lockstep.example",
            anon.as_str(),
            "invalid",
            "is not a web address",
        ),
        (
            nobody.as_str(),
            anon.as_str(),
            "offline",
            "nothing answers at",
        ),
        (
            page.as_str(),
            anon.as_str(),
            "invalid",
            "not a Lockstep server",
        ),
        (
            url.as_str(),
            "not-the-key",
            "invalid",
            "does not take that anon key",
        ),
    ] {
        let error = connect(server, key).unwrap_err();
        assert_eq!(error["code"], code, "{server}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(server) && message.contains(says),
            "{server}: {message}"
        );
        assert!(
            !message.contains(key) || key == anon,
            "the key is not echoed"
        );
        assert_eq!(
            a.ok("launch", json!({}))["connected"],
            false,
            "{server}: nothing saved"
        );
    }

    connect(&url, &anon).unwrap();
    a.ok(
        "sign_up",
        json!({"email": "where@example.com", "password": "Correct horse 42"}),
    );
    assert_eq!(a.ok("account", json!({}))["server_url"], url);
    // Signed in: moving to another server needs a sign-out first.
    let moving = connect(&url, &anon).unwrap_err();
    assert_eq!(moving["code"], "invalid", "{moving}");
    a.ok("sign_out", json!({"scope": "this_device"}));
    let other = Cloud::start();
    connect(&other.server.url, &other.server.anon_key).unwrap();
    a.ok(
        "sign_up",
        json!({"email": "where@example.com", "password": "Correct horse 42"}),
    );
    assert_eq!(a.ok("account", json!({}))["server_url"], other.server.url);
}
