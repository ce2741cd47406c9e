//! What the engine says about where a remote change came from, against a real lockstep-cloud
//! over HTTP: live or in a catch-up ([`Arrival`]), and whether this device itself caused it
//! (what the desktop's notifications leave out).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cloud, Device, PASSWORD, eventually, fast_options, open, unique};
use lockstep_core::{
    engine::{Arrival, Connection, EngineEvent},
    feed::SecurityEvent,
    totp,
};
use serde_json::json;

/// Signs `a` up and `b` in, and starts both live loops; waits until both are live.
async fn two_live_devices(cloud: &Cloud, base: &std::path::Path, email: &str) -> (Device, Device) {
    let mut a = open(cloud, base, &unique("arrival-a"));
    let mut b = open(cloud, base, &unique("arrival-b"));
    a.engine.sign_up(email, PASSWORD).await.unwrap();
    b.engine.sign_in(email, PASSWORD).await.unwrap();
    for device in [&mut a, &mut b] {
        device.go_live(fast_options());
        device.wait_connection(20, Connection::Live).await;
    }
    (a, b)
}

/// Waits for the remote change of `key` on `device`; returns its writer's id and its arrival.
async fn change_of(device: &mut Device, key: &str) -> (Option<String>, Arrival) {
    let event = device
        .wait_for(
            20,
            key,
            |e| matches!(e, EngineEvent::RemoteChange { key: k, .. } if k == key),
        )
        .await;
    let EngineEvent::RemoteChange {
        device_id, arrival, ..
    } = event
    else {
        unreachable!("matched above");
    };
    (device_id, arrival)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_caught_up_on_reconnecting_are_marked_so_and_streamed_ones_are_live() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let (mut a, b) = two_live_devices(&cloud, base.path(), "arrival@example.com").await;
    let b_id = b.engine.profile().device.id.clone();

    // Both live: streamed as it happens.
    b.engine.set("appearance.theme", json!("dark")).unwrap();
    assert_eq!(
        change_of(&mut a, "appearance.theme").await,
        (Some(b_id.clone()), Arrival::Live)
    );

    // A goes away; B makes five changes meanwhile.
    a.live.take().unwrap().stop().await;
    for i in 0..5 {
        b.engine.set(&format!("custom.away.{i}"), json!(i)).unwrap();
    }
    eventually(20, "B's changes reach the server", || {
        b.engine.pending() == 0
    })
    .await;

    // A comes back: the five arrive in the catch-up.
    a.go_live(fast_options());
    for i in 0..5 {
        assert_eq!(
            change_of(&mut a, &format!("custom.away.{i}")).await,
            (Some(b_id.clone()), Arrival::CatchUp),
            "change {i}"
        );
    }
    a.wait_connection(20, Connection::Live).await;

    // Live again: streamed, live.
    b.engine.set("custom.back", json!(true)).unwrap();
    assert_eq!(
        change_of(&mut a, "custom.back").await,
        (Some(b_id), Arrival::Live)
    );
}

/// An edit made on this device by another process on its profile (a `lockstep set` while the
/// app runs) reaches the app as a change written by this device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_by_another_process_on_this_profile_is_this_devices_own() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let (mut a, _b) = two_live_devices(&cloud, base.path(), "own@example.com").await;
    let here = a.engine.profile().device.id.clone();

    let command = open(&cloud, base.path(), &a.name);
    command
        .engine
        .set("appearance.theme", json!("dark"))
        .unwrap();
    let (writer, arrival) = change_of(&mut a, "appearance.theme").await;
    assert_eq!(writer.as_deref(), Some(here.as_str()));
    assert_eq!(arrival, Arrival::Live);
}

/// Two-factor authentication turned on here is this device's own security change; the other
/// device hears of it as news.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_change_made_here_is_told_back_as_this_devices_own() {
    let cloud = Cloud::start();
    let base = tempfile::tempdir().unwrap();
    let (mut a, mut b) = two_live_devices(&cloud, base.path(), "mfa-own@example.com").await;

    cloud.confirm_email("mfa-own@example.com").await;
    let enrollment = a.engine.enroll_totp("Phone").await.unwrap();
    let now = u64::try_from(lockstep_core::clock_ms() / 1000).unwrap();
    let code = totp::code_at(&enrollment.secret, now).unwrap();
    a.engine
        .confirm_enrollment(&enrollment, &code)
        .await
        .unwrap();

    b.wait_for(20, "MFA enabled, as news", |e| {
        matches!(e, EngineEvent::Security(SecurityEvent::MfaEnabled { .. }))
    })
    .await;
    a.wait_for(20, "MFA enabled, as its own", |e| {
        assert!(
            !matches!(e, EngineEvent::Security(SecurityEvent::MfaEnabled { .. })),
            "told as news to the device that did it"
        );
        matches!(
            e,
            EngineEvent::OwnSecurity(SecurityEvent::MfaEnabled { .. })
        )
    })
    .await;
}
