//! The live loop against a real lockstep-cloud over HTTP: propagation between three devices
//! (measured), offline edits reconciled after a server outage, streams cut by a killed server
//! and resumed without loss, a blocked stream endpoint (polling), revocation, and two-factor
//! authentication turned on elsewhere.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Cloud, Device, PASSWORD, eventually, fast_options, open, unique};
use lockstep_core::{
    api::Client,
    engine::{Connection, EngineEvent},
    feed::SecurityEvent,
    keychain::SecretKind,
    totp,
};
use lockstep_protocol::{hlc::Hlc, sync::PushRequest, sync::SettingChange};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Signs `devices[0]` up and the others in, and starts every live loop; waits until all are
/// live.
async fn live_devices(
    cloud: &Cloud,
    base: &std::path::Path,
    names: &[&str],
    email: &str,
) -> Vec<Device> {
    let mut devices: Vec<Device> = names
        .iter()
        .map(|n| open(cloud, base, &unique(n)))
        .collect();
    devices[0].engine.sign_up(email, PASSWORD).await.unwrap();
    for device in &devices[1..] {
        device.engine.sign_in(email, PASSWORD).await.unwrap();
    }
    for device in &mut devices {
        device.go_live(fast_options());
    }
    for device in &devices {
        device.wait_connection(20, Connection::Live).await;
    }
    devices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_of_three_devices_reaches_the_others_live() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let mut devices = live_devices(
        &cloud,
        base.path(),
        &["prop-a", "prop-b", "prop-c"],
        "ada@example.com",
    )
    .await;

    const CHANGES: usize = 120;
    let mut latencies = Vec::new();
    for i in 0..CHANGES {
        let writer = i % devices.len();
        let key = format!("custom.counter.{}", i % 5);
        let value = json!(i);
        let sent = Instant::now();
        devices[writer].engine.set(&key, value.clone()).unwrap();
        for (index, device) in devices.iter_mut().enumerate() {
            if index == writer {
                continue;
            }
            device
                .wait_for(20, "the remote change", |e| {
                    matches!(e, EngineEvent::RemoteChange { key: k, new: Some(v), .. } if *k == key && *v == value)
                })
                .await;
            latencies.push(sent.elapsed());
        }
    }
    latencies.sort();
    println!(
        "propagation over {} deliveries ({CHANGES} changes, 3 devices): p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    for device in &devices {
        for k in 0..5 {
            let last = (0..CHANGES).rev().find(|i| i % 5 == k).unwrap();
            assert_eq!(
                device.engine.get(&format!("custom.counter.{k}")),
                Some(json!(last))
            );
        }
        assert_eq!(device.engine.pending(), 0);
        assert_eq!(device.engine.status().borrow().connection, Connection::Live);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_while_the_server_is_down_converge_and_the_loser_is_told() {
    let mut cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let mut devices = live_devices(
        &cloud,
        base.path(),
        &["down-a", "down-b"],
        "ada@example.com",
    )
    .await;

    cloud.kill();
    devices[0].wait_connection(20, Connection::Offline).await;
    // Both devices edit the theme (B later, so B wins) and a key of their own.
    devices[0]
        .engine
        .set("appearance.theme", json!("light"))
        .unwrap();
    devices[0]
        .engine
        .set("notifications.desktop", json!(false))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    devices[1]
        .engine
        .set("appearance.theme", json!("dark"))
        .unwrap();
    devices[1]
        .engine
        .set("security.lock_after_minutes", json!(30))
        .unwrap();
    assert_eq!(devices[0].engine.pending(), 2, "edits queue while offline");
    assert_eq!(
        devices[0].engine.get("appearance.theme"),
        Some(json!("light")),
        "and apply locally"
    );

    // A is paused while the server comes back, so that B's newer edit reaches it first and
    // A's older one arrives second and loses (the other order is a plain remote change).
    devices[0].live.as_ref().unwrap().pause();
    devices[0].wait_connection(20, Connection::Paused).await;
    cloud.restart();
    let b = devices[1].engine.clone();
    eventually(30, "B's edits pushed", move || b.pending() == 0).await;
    devices[0].live.as_ref().unwrap().resume();
    let superseded = devices[0]
        .wait_for(30, "the superseded edit", |e| {
            matches!(e, EngineEvent::Superseded { .. })
        })
        .await;
    let EngineEvent::Superseded { key, lost, winner } = superseded else {
        unreachable!()
    };
    assert_eq!((key.as_str(), lost), ("appearance.theme", json!("light")));
    assert_eq!(winner.value, json!("dark"));
    assert_eq!(winner.device_id, devices[1].engine.profile().device.id);

    for device in &devices {
        device.wait_connection(30, Connection::Live).await;
    }
    for device in &devices {
        let engine = device.engine.clone();
        eventually(20, "convergence", move || {
            engine.pending() == 0
                && engine.get("appearance.theme") == Some(json!("dark"))
                && engine.get("notifications.desktop") == Some(json!(false))
                && engine.get("security.lock_after_minutes") == Some(json!(30))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_by_a_killed_server_resume_without_missing_a_change() {
    let mut cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let mut watcher = open(&cloud, base.path(), &unique("cut-watcher"));
    watcher
        .engine
        .sign_up("ada@example.com", PASSWORD)
        .await
        .unwrap();
    // A slow first retry, so that changes land while it is disconnected.
    let mut options = fast_options();
    options.backoff_initial = Duration::from_secs(3);
    options.backoff_max = Duration::from_secs(3);
    watcher.go_live(options);
    watcher.wait_connection(20, Connection::Live).await;

    // Another device of the user, written through the plain API.
    let writer = Client::new(
        &cloud.url,
        &cloud.anon_key,
        lockstep_protocol::devices::DeviceInfo {
            id: "writer-1".into(),
            name: "Writer".into(),
            platform: "linux".into(),
            app_version: "test".into(),
        },
    )
    .unwrap();
    let push = |n: usize, token: String| {
        let writer = writer.clone();
        async move {
            let hlc = Hlc::ZERO.tick(u64::try_from(lockstep_core::clock_ms()).unwrap());
            let request = PushRequest {
                mutation_id: format!("cut-{n}"),
                changes: vec![SettingChange {
                    key: format!("custom.cut.{n}"),
                    value: json!(n),
                    hlc,
                    deleted: false,
                }],
            };
            writer.push(&token, &request).await.unwrap();
        }
    };

    cloud.kill();
    watcher.wait_connection(20, Connection::Offline).await;
    cloud.restart();
    let token = writer
        .sign_in("ada@example.com", PASSWORD)
        .await
        .unwrap()
        .access_token;
    const MISSED: usize = 8;
    for n in 0..MISSED {
        push(n, token.clone()).await;
    }
    // It comes back (after its backoff), replays exactly those, in order, then goes live.
    let mut seen = Vec::new();
    while seen.len() < MISSED {
        let event = watcher
            .wait_for(30, "the missed changes", |e| {
                matches!(e, EngineEvent::RemoteChange { .. })
            })
            .await;
        if let EngineEvent::RemoteChange { key, .. } = event {
            seen.push(key);
        }
    }
    let expected: Vec<String> = (0..MISSED).map(|n| format!("custom.cut.{n}")).collect();
    assert_eq!(seen, expected, "every missed change, once, in order");
    watcher.wait_connection(20, Connection::Live).await;
    // And the live stream works again.
    push(MISSED, token.clone()).await;
    watcher
        .wait_for(
            20,
            "a live change",
            |e| matches!(e, EngineEvent::RemoteChange { key, .. } if key == "custom.cut.8"),
        )
        .await;
    assert_eq!(watcher.engine.get("custom.cut.3"), Some(json!(3)));
}

/// A port that answers every request with 503, like a proxy that refuses long-lived streams.
async fn blocked_endpoint() -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    format!("http://{addr}/realtime/v1/sse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_stream_blocked_a_device_polls_and_still_converges() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let mut a = open(&cloud, base.path(), &unique("poll-a"));
    let mut b = open(&cloud, base.path(), &unique("poll-b"));
    a.engine.sign_up("ada@example.com", PASSWORD).await.unwrap();
    b.engine.sign_in("ada@example.com", PASSWORD).await.unwrap();
    a.go_live(fast_options());
    let mut options = fast_options();
    options.stream_url = Some(blocked_endpoint().await);
    b.go_live(options);
    a.wait_connection(20, Connection::Live).await;
    b.wait_connection(20, Connection::Polling).await;

    a.engine.set("appearance.theme", json!("dark")).unwrap();
    b.wait_for(20, "the change, by polling", |e| {
        matches!(e, EngineEvent::RemoteChange { key, new: Some(v), .. } if key == "appearance.theme" && *v == json!("dark"))
    })
    .await;
    // Edits on the polling device go out too.
    b.engine.set("notifications.desktop", json!(false)).unwrap();
    a.wait_for(
        20,
        "the polling device's edit",
        |e| matches!(e, EngineEvent::RemoteChange { key, .. } if key == "notifications.desktop"),
    )
    .await;
    assert_eq!(b.engine.status().borrow().connection, Connection::Polling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_wipes_its_secrets_and_cache_when_it_hears() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let mut devices =
        live_devices(&cloud, base.path(), &["rev-a", "rev-b"], "ada@example.com").await;
    devices[1]
        .engine
        .set("appearance.theme", json!("dark"))
        .unwrap();
    devices[0]
        .wait_for(20, "B's edit", |e| {
            matches!(e, EngineEvent::RemoteChange { .. })
        })
        .await;
    let b_dir = devices[1].engine.profile().dir.clone();
    assert!(devices[1].engine.row("appearance.theme").is_some());
    assert!(
        !devices[1]
            .engine
            .history("appearance.theme")
            .unwrap()
            .is_empty()
    );
    assert!(
        devices[1]
            .engine
            .keychain()
            .get(SecretKind::RefreshToken)
            .await
            .unwrap()
            .is_some()
    );

    let old_key = devices[1]
        .engine
        .keychain()
        .get(SecretKind::LocalKey)
        .await
        .unwrap();
    let b_id = devices[1].engine.profile().device.id.clone();
    let started = Instant::now();
    devices[0].engine.revoke_device(&b_id).await.unwrap();
    let event = devices[1]
        .wait_for(20, "the sign-out", |e| {
            matches!(e, EngineEvent::Security(SecurityEvent::SignedOut { .. }))
        })
        .await;
    println!("revocation to wiped device: {:?}", started.elapsed());
    let a_name = format!("Device {}", devices[0].name);
    assert_eq!(
        event,
        EngineEvent::Security(SecurityEvent::SignedOut { by: Some(a_name) })
    );
    let keychain = devices[1].engine.keychain();
    assert_eq!(
        keychain.get(SecretKind::RefreshToken).await.unwrap(),
        None,
        "refresh token wiped"
    );
    assert_eq!(keychain.get(SecretKind::TotpSecret).await.unwrap(), None);
    let new_key = keychain.get(SecretKind::LocalKey).await.unwrap();
    assert!(
        new_key.is_some() && new_key != old_key,
        "the local key was replaced"
    );
    assert!(b_dir.join("profile.sqlite3").exists());
    assert_eq!(
        devices[1].engine.row("appearance.theme"),
        None,
        "the cache is gone"
    );
    assert!(
        devices[1]
            .engine
            .history("appearance.theme")
            .unwrap()
            .is_empty(),
        "and the history with it"
    );
    assert_eq!(
        devices[1].engine.get("appearance.theme"),
        Some(json!("system"))
    );
    assert_eq!(
        devices[1].engine.status().borrow().connection,
        Connection::SignedOut
    );
    // A learns of it too, as its own doing, and keeps working.
    devices[0]
        .wait_for(20, "the revocation", |e| {
            matches!(
                e,
                EngineEvent::OwnSecurity(SecurityEvent::DeviceRevoked { .. })
            )
        })
        .await;
    devices[0]
        .engine
        .set("appearance.theme", json!("light"))
        .unwrap();
    devices[0].engine.sync_once().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_turned_on_elsewhere_asks_this_device_for_a_code() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let mut devices =
        live_devices(&cloud, base.path(), &["mfa-a", "mfa-b"], "ada@example.com").await;

    // Two-factor authentication needs a confirmed address.
    cloud.confirm_email("ada@example.com").await;
    let enrollment = devices[0].engine.enroll_totp("Phone").await.unwrap();
    let now = || u64::try_from(lockstep_core::clock_ms() / 1000).unwrap();
    let code = totp::code_at(&enrollment.secret, now()).unwrap();
    let recovery = devices[0]
        .engine
        .confirm_enrollment(&enrollment, &code)
        .await
        .unwrap();
    assert_eq!(
        recovery.len(),
        10,
        "recovery codes come with the first factor"
    );
    assert_eq!(
        devices[0]
            .engine
            .keychain()
            .get(SecretKind::TotpSecret)
            .await
            .unwrap()
            .as_deref(),
        Some(enrollment.secret.as_str()),
        "the secret is in the keychain once confirmed"
    );

    // B hears that MFA is on, and is asked for a code.
    devices[1]
        .wait_for(20, "MFA enabled", |e| {
            matches!(e, EngineEvent::Security(SecurityEvent::MfaEnabled { .. }))
        })
        .await;
    devices[1]
        .wait_connection(20, Connection::StepUpRequired)
        .await;
    let refused = devices[1].engine.sync_once().await.unwrap_err();
    assert!(refused.needs_second_factor(), "{refused}");
    // Its edits still queue meanwhile.
    devices[1]
        .engine
        .set("appearance.theme", json!("dark"))
        .unwrap();

    // A code of the next step (A's code is spent: replays are refused).
    let next = totp::code_at(&enrollment.secret, now() + 30).unwrap();
    devices[1].engine.verify_code(&next).await.unwrap();
    devices[1].wait_connection(20, Connection::Live).await;
    devices[0]
        .wait_for(
            20,
            "B's queued edit",
            |e| matches!(e, EngineEvent::RemoteChange { key, .. } if key == "appearance.theme"),
        )
        .await;
    // B fetched the secret for the app lock: codes check offline now.
    assert!(devices[1].engine.has_offline_secret().await.unwrap());
    let current = totp::code_at(&enrollment.secret, now()).unwrap();
    assert!(
        devices[1]
            .engine
            .check_code_offline(&current)
            .await
            .unwrap()
    );
    assert!(
        !devices[1]
            .engine
            .check_code_offline(&current)
            .await
            .unwrap(),
        "once only"
    );
    let wrong = if current == "000000" {
        "111111"
    } else {
        "000000"
    };
    assert!(!devices[1].engine.check_code_offline(wrong).await.unwrap());
}

/// A stream endpoint in front of the server that answers 503 while `blocked` is set, and
/// forwards to the server once it is cleared.
async fn switchable_endpoint(
    server_url: &str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = server_url.trim_start_matches("http://").to_owned();
    let blocked = Arc::new(AtomicBool::new(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flag = blocked.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let blocked = flag.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if blocked {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut server).await;
                }
            });
        }
    });
    (format!("http://{addr}/realtime/v1/sse"), blocked)
}

/// Regression (issue 10): after falling back to polling, the device goes back to the stream
/// (and says `Live`) as soon as the stream works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_device_returns_to_live_when_the_stream_works_again() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let mut a = open(&cloud, base.path(), &unique("back-a"));
    let mut b = open(&cloud, base.path(), &unique("back-b"));
    a.engine.sign_up("ada@example.com", PASSWORD).await.unwrap();
    b.engine.sign_in("ada@example.com", PASSWORD).await.unwrap();
    a.go_live(fast_options());
    let (url, blocked) = switchable_endpoint(&cloud.url).await;
    let mut options = fast_options();
    options.stream_url = Some(url);
    b.go_live(options);
    b.wait_connection(20, Connection::Polling).await;

    blocked.store(false, std::sync::atomic::Ordering::SeqCst);
    b.wait_connection(20, Connection::Live).await;
    // And live means live: a change arrives over the stream.
    a.engine.set("appearance.theme", json!("dark")).unwrap();
    b.wait_for(
        20,
        "the change, live",
        |e| matches!(e, EngineEvent::RemoteChange { key, .. } if key == "appearance.theme"),
    )
    .await;
    assert_eq!(b.engine.status().borrow().connection, Connection::Live);
}

/// A stopped live loop must not leave the status saying "Live": the tray would claim a
/// connection that is gone, and a caller waiting for "Live" after starting the loop again would
/// go on before the catch-up (the simulation found this: an edit made "once live" raced the
/// catch-up pull).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_live_loop_no_longer_reports_live() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let mut devices = live_devices(&cloud, base.path(), &["stop-a"], "stop@example.com").await;
    let device = &mut devices[0];
    device.live.take().unwrap().stop().await;
    let after_stop = device.engine.status().borrow().connection.clone();
    assert_eq!(after_stop, Connection::Connecting, "after stop");

    // Started again, it reports "Live" only once the new stream is ready.
    device.go_live(fast_options());
    device.wait_connection(20, Connection::Live).await;
    device.live.take().unwrap().stop().await;
    assert_eq!(
        device.engine.status().borrow().connection,
        Connection::Connecting
    );
}

/// Two engines on one profile (the app and a `lockstep watch`): one runs the live loop, the
/// other follows it (`Shared`) and still hears of changes made elsewhere; when the first loop's
/// handle is dropped without `stop` (an app quitting), its lease is given up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_profile_share_one_live_loop() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let name = unique("shared");
    let mut first = open(&cloud, base.path(), &name);
    first
        .engine
        .sign_up("shared@example.com", PASSWORD)
        .await
        .unwrap();
    first.go_live(fast_options());
    first.wait_connection(20, Connection::Live).await;
    let mut second = open(&cloud, base.path(), &name);
    second.go_live(fast_options());
    second.wait_connection(20, Connection::Shared).await;

    let other = open(&cloud, base.path(), &unique("elsewhere"));
    other
        .engine
        .sign_in("shared@example.com", PASSWORD)
        .await
        .unwrap();
    other.engine.set("appearance.theme", json!("dark")).unwrap();
    other.engine.sync_once().await.unwrap();
    second
        .wait_for(20, "the change, through the profile", |e| {
            matches!(e, EngineEvent::RemoteChange { key, new: Some(v), .. } if key == "appearance.theme" && *v == json!("dark"))
        })
        .await;

    // The first handle goes away without `stop`: its lease is free at once.
    drop(first.live.take());
    let free = second
        .engine
        .store()
        .call_blocking(|db| db.take_lease("probe", lockstep_core::clock_ms(), 1))
        .unwrap();
    assert!(free, "the dropped loop still holds the lease");
}
