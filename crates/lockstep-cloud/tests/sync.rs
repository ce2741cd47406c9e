//! Synced settings, the change feed and its SSE stream: delivery, resume, merge, isolation.
#![allow(clippy::unwrap_used)]

pub mod common;

use common::{Backend, TestApp, access_token, hlc_at};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::Duration;

backend_tests! {
    a_write_reaches_every_stream_of_the_user,
    resume_replays_exactly_the_missed_events,
    resume_survives_a_server_restart,
    a_pruned_log_answers_must_refetch,
    a_losing_write_is_reported_as_superseded,
    conflicting_writes_converge_to_the_merge_rule,
    push_is_idempotent_on_retry,
    plain_supabase_writes_are_stamped_by_the_server,
    invalid_settings_and_stamps_are_refused_clearly,
    users_never_see_each_others_settings_or_events,
    sensitive_values_are_sealed_at_rest,
    account_and_device_changes_are_on_the_feed,
    revocation_ends_the_stream_and_reconnecting_is_refused,
    signing_out_ends_the_stream,
    changes_endpoint_pages_through_the_log,
    the_stream_sends_a_retry_hint_and_heartbeats,
    an_expiring_token_loses_no_events,
    every_stream_of_a_user_gets_a_burst_of_pushes_whole_and_in_order,
    pushes_clicked_twice_at_once_apply_once_beside_refused_ones,
}

fn theme(app: &TestApp, value: &str, offset_ms: i64) -> Value {
    json!([{ "key": "appearance.theme", "value": value, "hlc": hlc_at(app, offset_ms, 0) }])
}

async fn a_write_reaches_every_stream_of_the_user(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let mut laptop_feed = app.stream(access_token(&laptop), None).await;
    let mut desktop_feed = app.stream(access_token(&desktop), None).await;
    let head = laptop_feed.ready().await;
    assert_eq!(desktop_feed.ready().await, head);

    let pushed = app
        .push(access_token(&laptop), "m1", theme(&app, "dark", 0))
        .await;
    pushed.expect(StatusCode::OK);
    assert_eq!(pushed.body["seq"], head + 1);
    assert_eq!(pushed.body["applied"][0]["value"], "dark");

    for feed in [&mut desktop_feed, &mut laptop_feed] {
        let change = feed.next_change().await;
        assert_eq!(change["seq"], head + 1);
        assert_eq!(change["table"], "user_settings");
        assert_eq!(change["eventType"], "INSERT");
        assert_eq!(change["schema"], "public");
        assert_eq!(change["new"]["key"], "appearance.theme");
        assert_eq!(change["new"]["value"], "dark");
        assert_eq!(change["new"]["user_id"], laptop["user"]["id"]);
        assert_eq!(
            change["device_id"], "laptop",
            "clients filter their own echoes by device id"
        );
        assert_eq!(change["device_name"], "Device laptop");
        assert!(change["commit_timestamp"].is_string());
    }
    // An update carries the old row too.
    app.push(access_token(&desktop), "m2", theme(&app, "light", 1))
        .await
        .expect(StatusCode::OK);
    let change = laptop_feed.next_change().await;
    assert_eq!(change["eventType"], "UPDATE");
    assert_eq!(change["old"]["value"], "dark");
    assert_eq!(change["new"]["value"], "light");
    assert_eq!(change["device_name"], "Device desktop");
}

/// Disconnects, writes `n` changes, reconnects with Last-Event-ID and expects exactly those.
async fn assert_resume(app: TestApp, restart: bool) {
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session).to_owned();
    let mut feed = app.stream(&token, None).await;
    let last = feed.ready().await;
    drop(feed);
    let keys = [
        "appearance.theme",
        "notifications.desktop",
        "security.lock_after_minutes",
        "custom.editor.font",
        "custom.editor.size",
    ];
    let values = [
        json!("dark"),
        json!(false),
        json!(5),
        json!("Iosevka"),
        json!(13),
    ];
    for (i, (key, value)) in keys.iter().zip(values.iter()).enumerate() {
        let change = json!([{ "key": key, "value": value, "hlc": hlc_at(&app, 0, i as u32) }]);
        app.push(&token, &format!("m{i}"), change)
            .await
            .expect(StatusCode::OK);
    }
    let app = if restart { app.restart().await } else { app };
    let mut feed = app.stream(&token, Some(last)).await;
    for (i, key) in keys.iter().enumerate() {
        let change = feed.next_change().await;
        assert_eq!(change["seq"], last + 1 + i as i64, "in order, no gap");
        assert_eq!(change["new"]["key"], *key);
        assert_eq!(change["new"]["value"], values[i]);
    }
    let ready = feed.next().await.unwrap();
    assert_eq!(
        (ready.event.as_str(), ready.id.as_str()),
        ("ready", (last + 5).to_string().as_str()),
        "no duplicate, nothing extra"
    );
    // And it goes on live after the replay.
    app.push(&token, "live", theme(&app, "light", 10))
        .await
        .expect(StatusCode::OK);
    assert_eq!(feed.next_change().await["seq"], last + 6);
}

async fn resume_replays_exactly_the_missed_events(backend: Backend) {
    assert_resume(TestApp::start(backend).await, false).await;
}

async fn resume_survives_a_server_restart(backend: Backend) {
    assert_resume(TestApp::start(backend).await, true).await;
}

async fn a_pruned_log_answers_must_refetch(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session).to_owned();
    let mut feed = app.stream(&token, None).await;
    let old = feed.ready().await;
    drop(feed);
    app.push(&token, "m1", theme(&app, "dark", 0))
        .await
        .expect(StatusCode::OK);
    app.clock.advance(Duration::days(31));
    // Refresh so the session's access token is valid at the new time.
    let token = access_token(&app.refresh(common::refresh_token(&session)).await.body).to_owned();
    assert!(lockstep_cloud::feed::prune(&app.state).await.unwrap() > 0);

    let mut feed = app.stream(&token, Some(old)).await;
    let refetch = feed.next().await.unwrap();
    assert_eq!(refetch.event, "must-refetch");
    let head: i64 = refetch.id.parse().unwrap();
    assert!(head > old);
    assert_eq!(feed.ready().await, head, "then it continues from the head");
    let page = app
        .get(&format!("/rest/v1/rpc/changes?since={old}"), Some(&token))
        .await;
    assert_eq!(page.body["must_refetch"], true);
    assert_eq!(page.body["head"], head);
    // The settings themselves are all still there for the full pull.
    let rows = app
        .get(
            "/rest/v1/user_settings?key=eq.appearance.theme",
            Some(&token),
        )
        .await;
    assert_eq!(rows.body[0]["value"], "dark");
}

async fn a_losing_write_is_reported_as_superseded(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    app.push(access_token(&laptop), "newer", theme(&app, "dark", 0))
        .await
        .expect(StatusCode::OK);
    // The desktop was offline and made an older edit; it arrives later and loses.
    let late = app
        .push(
            access_token(&desktop),
            "older",
            theme(&app, "light", -5_000),
        )
        .await;
    late.expect(StatusCode::OK);
    assert_eq!(late.body["applied"], json!([]));
    let lost = &late.body["superseded"][0];
    assert_eq!(lost["key"], "appearance.theme");
    assert_eq!(lost["current"]["value"], "dark");
    assert_eq!(
        lost["current"]["device_name"], "Device laptop",
        "the user is told who won"
    );
    let rows = app.get_as("/rest/v1/user_settings", &desktop).await;
    assert_eq!(rows.body[0]["value"], "dark");
}

/// A tiny deterministic generator, so a failure can be reproduced from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

async fn conflicting_writes_converge_to_the_merge_rule(backend: Backend) {
    use lockstep_protocol::{
        hlc::Hlc,
        sync::{FieldVersion, winner},
    };
    let app = TestApp::start(backend).await;
    let devices = ["dev-a", "dev-b", "dev-c"];
    let mut tokens = Vec::new();
    app.signup("ada@example.com", "setup").await;
    for d in devices {
        tokens.push(access_token(&app.sign_in("ada@example.com", d).await).to_owned());
    }
    let keys = [
        "appearance.theme",
        "security.lock_after_minutes",
        "custom.a",
        "notifications.desktop",
    ];
    let now =
        lockstep_cloud::clock::to_millis(lockstep_cloud::clock::Clock::now(&app.clock)) as u64;
    let seed = now;
    let mut rng = Lcg(seed);
    // 60 writes: (device index, key, value, hlc), stamps from a narrow range to force ties.
    let mut writes = Vec::new();
    for i in 0..60 {
        let device = rng.next(3) as usize;
        let key = keys[rng.next(4) as usize];
        let value = match key {
            "appearance.theme" => json!(["light", "dark", "system"][rng.next(3) as usize]),
            "security.lock_after_minutes" => json!(rng.next(100)),
            "notifications.desktop" => json!(rng.next(2) == 1),
            _ => json!({ "write": i }),
        };
        // A device's clock never stamps twice the same: bump the counter on a collision.
        let mut hlc = Hlc::new(now - 10_000 + rng.next(20), rng.next(2) as u32);
        while writes
            .iter()
            .any(|w: &(usize, &str, Value, Hlc, usize)| w.0 == device && w.3 == hlc)
        {
            hlc.counter += 1;
        }
        writes.push((device, key, value, hlc, i));
    }
    // Send in rounds: each device pushes its writes in a random order, rounds interleaved and
    // run concurrently; some pushes are retried with the same mutation id.
    let pushes = writes.iter().map(|(device, key, value, hlc, i)| {
        let change = json!([{ "key": key, "value": value, "hlc": hlc.to_string() }]);
        (*device, format!("w{i}"), change)
    });
    let mut pushes: Vec<_> = pushes.collect();
    for i in (1..pushes.len()).rev() {
        pushes.swap(i, rng.next(i as u64 + 1) as usize);
    }
    for chunk in pushes.chunks(6) {
        let replies = futures::future::join_all(
            chunk
                .iter()
                .map(|(device, id, change)| app.push(&tokens[*device], id, change.clone())),
        )
        .await;
        for reply in &replies {
            reply.expect(StatusCode::OK);
        }
        let (device, id, change) = &chunk[0];
        app.push(&tokens[*device], id, change.clone())
            .await
            .expect(StatusCode::OK);
    }
    let rows = app.get("/rest/v1/user_settings", Some(&tokens[0])).await;
    for key in keys {
        let versions: Vec<FieldVersion> = writes
            .iter()
            .filter(|w| w.1 == key)
            .map(|(device, _, value, hlc, _)| FieldVersion {
                value: value.clone(),
                hlc: *hlc,
                device_id: devices[*device].to_owned(),
                deleted: false,
            })
            .collect();
        let expected = winner(&versions);
        let row = rows
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key);
        match (expected, row) {
            (Some(expected), Some(row)) => {
                assert_eq!(row["value"], expected.value, "seed {seed}, key {key}");
                assert_eq!(
                    row["hlc"],
                    expected.hlc.to_string(),
                    "seed {seed}, key {key}"
                );
                assert_eq!(
                    row["device_id"], expected.device_id,
                    "seed {seed}, key {key}"
                );
            }
            (None, None) => {}
            other => panic!("seed {seed}, key {key}: {other:?}"),
        }
    }
}

async fn push_is_idempotent_on_retry(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let first = app.push(token, "same-id", theme(&app, "dark", 0)).await;
    first.expect(StatusCode::OK);
    let retry = app.push(token, "same-id", theme(&app, "dark", 0)).await;
    retry.expect(StatusCode::OK);
    assert_eq!(retry.body, first.body, "the first answer again");
    let page = app
        .get(
            &format!(
                "/rest/v1/rpc/changes?since={}",
                first.body["seq"].as_i64().unwrap() - 1
            ),
            Some(token),
        )
        .await;
    assert_eq!(
        page.body["changes"].as_array().unwrap().len(),
        1,
        "applied once"
    );
}

async fn plain_supabase_writes_are_stamped_by_the_server(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let upsert = |value: &str, merge: bool| {
        let mut req = app
            .request(
                Method::POST,
                "/rest/v1/user_settings?on_conflict=key",
                Some(token),
            )
            .header("Prefer", "return=representation")
            .json(&json!({ "key": "appearance.theme", "value": value }));
        if merge {
            req = req.header("Prefer", "resolution=merge-duplicates");
        }
        app.send(req)
    };
    let created = upsert("dark", false).await;
    created.expect(StatusCode::CREATED);
    assert_eq!(created.body[0]["value"], "dark");
    assert_eq!(created.body[0]["device_id"], "laptop");
    upsert("light", false)
        .await
        .expect_rest_error(StatusCode::CONFLICT, "23505");
    // A later plain write wins even over a stamp slightly ahead of the server's clock.
    app.push(token, "ahead", theme(&app, "system", 30_000))
        .await
        .expect(StatusCode::OK);
    let merged = upsert("light", true).await;
    merged.expect(StatusCode::CREATED);
    assert_eq!(merged.body[0]["value"], "light");

    let patched = app
        .send(
            app.request(
                Method::PATCH,
                "/rest/v1/user_settings?key=eq.appearance.theme",
                Some(token),
            )
            .header("Prefer", "return=representation")
            .json(&json!({ "value": "dark" })),
        )
        .await;
    patched.expect(StatusCode::OK);
    assert_eq!(patched.body[0]["value"], "dark");
    app.call(
        Method::DELETE,
        "/rest/v1/user_settings?key=eq.appearance.theme",
        Some(token),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let rows = app
        .get(
            "/rest/v1/user_settings?key=eq.appearance.theme",
            Some(token),
        )
        .await;
    assert_eq!(
        rows.body[0]["deleted"], true,
        "a delete is a tombstone that syncs"
    );
    assert_eq!(rows.body[0]["value"], Value::Null);
    let live = app
        .get("/rest/v1/user_settings?deleted=is.false", Some(token))
        .await;
    assert_eq!(live.body, json!([]));
    // After a delete the key can be inserted again.
    upsert("dark", false).await.expect(StatusCode::CREATED);
}

async fn invalid_settings_and_stamps_are_refused_clearly(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let now = hlc_at(&app, 0, 0);
    let cases = [
        (
            json!([{ "key": "appearance.theme", "value": "blue", "hlc": now }]),
            "appearance.theme",
        ),
        (
            json!([{ "key": "security.lock_after_minutes", "value": 99999, "hlc": now }]),
            "security.lock_after_minutes",
        ),
        (
            json!([{ "key": "wallpaper", "value": 1, "hlc": now }]),
            "wallpaper",
        ),
        (
            json!([{ "key": "appearance.theme", "value": "dark", "hlc": hlc_at(&app, 3_600_000, 0) }]),
            "too far ahead",
        ),
        (
            json!([{ "key": "appearance.theme", "value": "dark", "hlc": "yesterday" }]),
            "hlc",
        ),
        (
            json!([{ "key": "appearance.theme", "value": "dark", "hlc": now, "deleted": true }]),
            "appearance.theme",
        ),
        (
            json!([{ "key": "custom.big", "value": "x".repeat(17 * 1024), "hlc": now }]),
            "too large",
        ),
        (json!([]), "change"),
    ];
    for (changes, needle) in cases {
        let reply = app.push(token, "bad", changes.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{changes}: {}",
            reply.text
        );
        assert!(
            reply.body["message"].as_str().unwrap().contains(needle),
            "{needle}: {}",
            reply.text
        );
    }
    let reply = app
        .post(
            "/rest/v1/rpc/push_settings",
            Some(token),
            json!({ "mutation_id": "", "changes": [] }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    for (path, status, code) in [
        (
            "/rest/v1/user_settings?key=near.x",
            StatusCode::BAD_REQUEST,
            "PGRST100",
        ),
        (
            "/rest/v1/rpc/changes?since=-4",
            StatusCode::BAD_REQUEST,
            "PGRST100",
        ),
        (
            "/rest/v1/rpc/changes?limit=0",
            StatusCode::BAD_REQUEST,
            "PGRST100",
        ),
    ] {
        app.get(path, Some(token))
            .await
            .expect_rest_error(status, code);
    }
    let bad_resume = app
        .send(
            app.request(Method::GET, "/realtime/v1/sse", Some(token))
                .header("Last-Event-ID", "tomorrow"),
        )
        .await;
    bad_resume.expect_error(StatusCode::BAD_REQUEST, "validation_failed");
    let huge = json!({ "mutation_id": "m", "changes": [{ "key": "custom.x", "value": "x".repeat(300 * 1024), "hlc": now }] });
    let reply = app
        .post("/rest/v1/rpc/push_settings", Some(token), huge)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text
    );
    // Nothing was applied by any of it.
    assert_eq!(
        app.get("/rest/v1/user_settings", Some(token)).await.body,
        json!([])
    );
}

async fn users_never_see_each_others_settings_or_events(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ada = app.signup("ada@example.com", "ada-laptop").await;
    let bob = app.signup("bob@example.com", "bob-laptop").await;
    let mut bob_feed = app.ready_stream(&bob).await;
    app.push(access_token(&ada), "a1", theme(&app, "dark", 0))
        .await
        .expect(StatusCode::OK);
    app.push(access_token(&bob), "b1", theme(&app, "light", 0))
        .await
        .expect(StatusCode::OK);
    // Bob's stream: his own change is the first one it carries; Ada's never came.
    let first = bob_feed.next_change().await;
    assert_eq!(first["new"]["value"], "light");
    assert_eq!(first["new"]["user_id"], bob["user"]["id"]);

    let bob_rows = app.get_as("/rest/v1/user_settings", &bob).await;
    assert_eq!(bob_rows.body.as_array().unwrap().len(), 1);
    assert_eq!(bob_rows.body[0]["value"], "light");
    let ada_id = ada["user"]["id"].as_str().unwrap();
    let filtered = app
        .get(
            &format!("/rest/v1/user_settings?user_id=eq.{ada_id}"),
            Some(access_token(&bob)),
        )
        .await;
    assert_eq!(filtered.body, json!([]));
    let forged = app
        .send(
            app.request(
                Method::POST,
                "/rest/v1/user_settings",
                Some(access_token(&bob)),
            )
            .header("Prefer", "resolution=merge-duplicates")
            .json(&json!({ "user_id": ada_id, "key": "appearance.theme", "value": "system" })),
        )
        .await;
    forged.expect_rest_error(StatusCode::FORBIDDEN, "42501");
    let ada_rows = app.get_as("/rest/v1/user_settings", &ada).await;
    assert_eq!(ada_rows.body[0]["value"], "dark");
    let ada_changes = app.get_as("/rest/v1/rpc/changes?since=0", &bob).await;
    assert!(
        !ada_changes.text.contains(ada_id),
        "Bob's log holds nothing of Ada's"
    );
}

async fn sensitive_values_are_sealed_at_rest(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let mut feed = app.ready_stream(&desktop).await;
    let secret = "ghp_SuperSecretToken1234567890";
    let change =
        json!([{ "key": "integrations.github", "value": secret, "hlc": hlc_at(&app, 0, 0) }]);
    app.push(access_token(&laptop), "k1", change)
        .await
        .expect(StatusCode::OK);
    // The owner's devices get it back in clear.
    assert_eq!(feed.next_change().await["new"]["value"], secret);
    let rows = app
        .get_as(
            "/rest/v1/user_settings?key=eq.integrations.github",
            &desktop,
        )
        .await;
    assert_eq!(rows.body[0]["value"], secret);
    // The database never holds it in clear.
    for table in ["user_settings", "change_feed", "push_receipts"] {
        let dump = format!(
            "{:?}",
            app.raw_rows(&format!("SELECT * FROM {table}")).await
        );
        assert!(!dump.contains(secret), "{table} holds the secret in clear");
        assert!(dump.contains("enc:v1:"), "{table} holds it sealed");
    }
}

async fn account_and_device_changes_are_on_the_feed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let laptop = app.signup("ada@example.com", "laptop").await;
    let mut feed = app.ready_stream(&laptop).await;
    app.open_latest_link("ada@example.com").await;
    let verified = feed.next_change().await;
    assert_eq!(verified["table"], "users");
    assert!(verified["old"]["email_confirmed_at"].is_null());
    assert!(verified["new"]["email_confirmed_at"].is_string());

    app.sign_in("ada@example.com", "desktop").await;
    let device = feed.next_change().await;
    assert_eq!(
        (device["table"].as_str(), device["eventType"].as_str()),
        (Some("devices"), Some("INSERT"))
    );
    assert_eq!(device["new"]["name"], "Device desktop");
    let session = feed.next_change().await;
    assert_eq!(
        (session["table"].as_str(), session["eventType"].as_str()),
        (Some("sessions"), Some("INSERT"))
    );
    assert_eq!(session["device_id"], "desktop");

    app.send(
        app.request(
            Method::PATCH,
            "/rest/v1/devices?id=eq.desktop",
            Some(access_token(&laptop)),
        )
        .json(&json!({ "name": "Home desktop" })),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let renamed = feed.next_change().await;
    assert_eq!(renamed["new"]["name"], "Home desktop");
    assert_eq!(renamed["old"]["name"], "Device desktop");
    assert_eq!(renamed["device_name"], "Device laptop", "who renamed it");
}

async fn revocation_ends_the_stream_and_reconnecting_is_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let mut feed = app.ready_stream(&desktop).await;
    app.call_as(Method::DELETE, "/rest/v1/devices?id=eq.desktop", &laptop)
        .await
        .expect(StatusCode::NO_CONTENT);
    let ended = feed.next_change().await;
    assert_eq!(
        (ended["table"].as_str(), ended["eventType"].as_str()),
        (Some("sessions"), Some("DELETE"))
    );
    assert_eq!(ended["old"]["reason"], "device_revoked");
    assert_eq!(ended["device_name"], "Device laptop", "signed out by whom");
    let revoked = feed.next_change().await;
    assert_eq!(
        (revoked["table"].as_str(), revoked["eventType"].as_str()),
        (Some("devices"), Some("DELETE"))
    );
    feed.expect_ended("signed_out").await;
    assert!(feed.next().await.is_none(), "the stream ends");
    let again = app.get_as("/realtime/v1/sse", &desktop).await;
    again.expect_error(StatusCode::UNAUTHORIZED, "session_not_found");
}

/// Signing out (this session only) ends its stream at once, and nobody else's.
async fn signing_out_ends_the_stream(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let mut desktop_feed = app.ready_stream(&desktop).await;
    let mut laptop_feed = app.ready_stream(&laptop).await;
    app.call_as(Method::POST, "/auth/v1/logout?scope=local", &desktop)
        .await
        .expect(StatusCode::NO_CONTENT);
    let ended = desktop_feed.next_change().await;
    assert_eq!(
        (ended["table"].as_str(), ended["old"]["reason"].as_str()),
        (Some("sessions"), Some("signed_out"))
    );
    desktop_feed.expect_ended("signed_out").await;
    assert!(desktop_feed.next().await.is_none(), "the stream ends");
    // The laptop's stream saw the sign-out and goes on.
    let seen = laptop_feed.next_change().await;
    assert_eq!(seen["table"], "sessions");
    app.push(
        access_token(&laptop),
        "after-logout",
        theme(&app, "dark", 0),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(laptop_feed.next_change().await["new"]["value"], "dark");
}

async fn changes_endpoint_pages_through_the_log(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let start = app
        .get("/rest/v1/rpc/changes?since=0", Some(token))
        .await
        .body["head"]
        .as_i64()
        .unwrap();
    for i in 0..5 {
        let change =
            json!([{ "key": format!("custom.k{i}"), "value": i, "hlc": hlc_at(&app, 0, i) }]);
        app.push(token, &format!("m{i}"), change)
            .await
            .expect(StatusCode::OK);
    }
    let first = app
        .get(
            &format!("/rest/v1/rpc/changes?since={start}&limit=2"),
            Some(token),
        )
        .await;
    let seqs: Vec<i64> = first.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [start + 1, start + 2]);
    assert_eq!(first.body["head"], start + 5);
    assert_eq!(first.body["must_refetch"], false);
    let rest = app
        .get(
            &format!("/rest/v1/rpc/changes?since={}", start + 2),
            Some(token),
        )
        .await;
    assert_eq!(rest.body["changes"].as_array().unwrap().len(), 3);
    let beyond = app
        .get(
            &format!("/rest/v1/rpc/changes?since={}", start + 99),
            Some(token),
        )
        .await;
    assert_eq!(
        beyond.body["must_refetch"], true,
        "a cursor from elsewhere means refetch"
    );
}

/// A `lockstep-cloud` process, started from the built binary.
struct Node {
    child: std::process::Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(data_dir: &std::path::Path, database_url: &str) -> Node {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lockstep-cloud"))
            .args(["--bind", "127.0.0.1:0", "--dev"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("LOCKSTEP_DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                line.trim()
                    .strip_prefix("URL:")
                    .map(|u| u.trim().to_owned())
            })
            .expect("the server prints its URL");
        // Keep reading, so the server's later output never meets a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Node { child, url }
    }
}

/// Two server processes on one PostgreSQL: a write through one reaches a stream on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_process_reaches_a_stream_on_another() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    // The in-process app creates the database and the shared keys; then two real processes
    // serve it, and the test talks to them only over HTTP.
    let setup = TestApp::start(backend).await;
    let data_dir = setup.state.config.data_dir.clone();
    let node1 = Node::start(&data_dir, &setup.database_url);
    let node2 = Node::start(&data_dir, &setup.database_url);
    let http = reqwest::Client::new();
    let (url1, url2) = (node1.url.clone(), node2.url.clone());
    let anon = setup.anon_key.clone();
    let post = |url: String, token: Option<String>, body: Value| {
        let http = http.clone();
        let anon = anon.clone();
        async move {
            let mut req = http.post(url).header("apikey", anon).json(&body);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            common::Reply::from(req.send().await.unwrap()).await
        }
    };
    let password = json!({ "email": "ada@example.com", "password": common::PASSWORD });
    let laptop = post(format!("{url1}/auth/v1/signup"), None, password.clone()).await;
    laptop.expect(StatusCode::OK);
    let desktop = post(
        format!("{url2}/auth/v1/token?grant_type=password"),
        None,
        password,
    )
    .await;
    desktop.expect(StatusCode::OK);

    let response = http
        .get(format!("{url2}/realtime/v1/sse"))
        .header("apikey", &setup.anon_key)
        .bearer_auth(access_token(&desktop.body))
        .send()
        .await
        .unwrap();
    let mut feed = common::Feed::open(response);
    feed.ready().await;
    let push = json!({ "mutation_id": "m1", "changes": [{ "key": "appearance.theme", "value": "dark", "hlc": hlc_at(&setup, 0, 0) }] });
    post(
        format!("{url1}/rest/v1/rpc/push_settings"),
        Some(access_token(&laptop.body).to_owned()),
        push,
    )
    .await
    .expect(StatusCode::OK);
    let change = feed.next_change().await;
    assert_eq!(change["table"], "user_settings");
    assert_eq!(change["new"]["value"], "dark");
}

/// The stream sends a retry hint and heartbeat comments (read off the raw bytes: comments are
/// invisible to an EventSource client).
async fn the_stream_sends_a_retry_hint_and_heartbeats(backend: Backend) {
    use futures::StreamExt;
    let app = TestApp::start_with(backend, |c| c.sse_heartbeat_seconds = 1).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let response = app
        .request(
            Method::GET,
            "/realtime/v1/sse",
            Some(access_token(&session)),
        )
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::new();
    for _ in 0..20 {
        if text.contains("\n: heartbeat\n") {
            break;
        }
        let chunk = tokio::time::timeout(common::EVENT_WAIT, body.next())
            .await
            .expect("bytes in time");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    assert!(text.contains("\n: heartbeat\n"), "{text}");
    assert!(text.contains("retry: 2000\n"), "{text}");
}

/// An access token that expires ends the stream with a notice; reconnecting with a fresh token
/// and Last-Event-ID loses nothing.
async fn an_expiring_token_loses_no_events(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.jwt_expiry_seconds = 5).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let mut feed = app.stream(access_token(&desktop), None).await;
    let mut last = feed.ready().await;
    let notice = feed.next_of("session").await;
    assert_eq!(
        serde_json::from_str::<Value>(&notice.data).unwrap()["reason"],
        "token_expired"
    );
    last = last.max(notice.id.parse().unwrap());
    // Meanwhile the laptop (with a fresh token) writes.
    let laptop = app.refresh(common::refresh_token(&laptop)).await.body;
    app.clock.advance(Duration::seconds(6));
    let laptop = app.refresh(common::refresh_token(&laptop)).await.body;
    app.push(access_token(&laptop), "m1", theme(&app, "dark", 0))
        .await
        .expect(StatusCode::OK);
    let desktop = app.refresh(common::refresh_token(&desktop)).await.body;
    let mut feed = app.stream(access_token(&desktop), Some(last)).await;
    let change = feed.next_change().await;
    assert_eq!(change["new"]["value"], "dark");
}

/// Five streams of one user (three of one session, two of another) and a burst of 50 pushes
/// from 8 concurrent tasks on a third device: every stream delivers exactly the log's entries
/// after its start, each once, in order, as `rpc/changes` lists them.
async fn every_stream_of_a_user_gets_a_burst_of_pushes_whole_and_in_order(backend: Backend) {
    const PUSHES: usize = 50;
    const TASKS: usize = 8;
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let writer = app.sign_in("ada@example.com", "tablet").await;
    let mut feeds = Vec::new();
    let mut start = None;
    for session in [&laptop, &laptop, &laptop, &desktop, &desktop] {
        let mut feed = app.stream(access_token(session), None).await;
        let ready = feed.ready().await;
        assert_eq!(
            *start.get_or_insert(ready),
            ready,
            "no write while the streams open"
        );
        feeds.push(feed);
    }
    let start = start.unwrap();

    let (app, token) = (&app, access_token(&writer));
    let tasks = (0..TASKS).map(|task| async move {
        for i in (task..PUSHES).step_by(TASKS) {
            let change =
                json!([{ "key": format!("custom.burst.{i}"), "value": i, "hlc": hlc_at(app, 0, i as u32) }]);
            app.push(token, &format!("burst-{i}"), change)
                .await
                .expect(StatusCode::OK);
        }
    });
    futures::future::join_all(tasks).await;

    let page = app
        .get(&format!("/rest/v1/rpc/changes?since={start}"), Some(token))
        .await;
    page.expect(StatusCode::OK);
    let logged: Vec<i64> = page.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(logged.len(), PUSHES, "one entry per push");
    let expected: Vec<i64> = (start + 1..=start + PUSHES as i64).collect();
    assert_eq!(logged, expected, "the log itself has no gap");
    for (n, feed) in feeds.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while seen.len() < PUSHES {
            let change = feed.next_change().await;
            assert_eq!(
                change["new"]["key"],
                format!("custom.burst.{}", change["new"]["value"])
            );
            seen.push(change["seq"].as_i64().unwrap());
        }
        assert_eq!(seen, logged, "stream {n}: every entry once, in order");
    }
    // Nothing more: the next event of every stream is a new push's change.
    app.push(token, "after-burst", theme(app, "dark", 0))
        .await
        .expect(StatusCode::OK);
    for feed in &mut feeds {
        assert_eq!(feed.next_change().await["seq"], start + PUSHES as i64 + 1);
    }
}

/// People click twice: every push is sent twice at the same moment (same mutation id), from
/// several devices at once, while other pushes reuse a mutation id for other changes (refused)
/// in the same instant, so that on SQLite they share transactions (group commit). Each pair
/// gets one answer twice, each push is in the log exactly once, and a refused push leaves
/// nothing behind and takes nothing from the pushes committed with it.
async fn pushes_clicked_twice_at_once_apply_once_beside_refused_ones(backend: Backend) {
    const PUSHES: usize = 40;
    let app = TestApp::start(backend).await;
    app.signup("ada@example.com", "setup").await;
    let mut tokens = Vec::new();
    for device in ["dev-a", "dev-b", "dev-c", "dev-d"] {
        tokens.push(access_token(&app.sign_in("ada@example.com", device).await).to_owned());
    }
    let head = app
        .get("/rest/v1/rpc/changes?since=0", Some(&tokens[0]))
        .await
        .body["head"]
        .as_i64()
        .unwrap();
    let change = |i: usize| json!([{ "key": format!("custom.click.{i}"), "value": i, "hlc": hlc_at(&app, 0, i as u32) }]);
    // The ids that others will reuse exist first.
    for i in 0..PUSHES / 4 {
        app.push(&tokens[0], &format!("taken-{i}"), change(1000 + i))
            .await
            .expect(StatusCode::OK);
    }
    let (app, tokens) = (&app, &tokens);
    let pairs = (0..PUSHES).map(|i| async move {
        let token = &tokens[i % tokens.len()];
        let id = format!("click-{i}");
        let (first, second, refused) = futures::future::join3(
            app.push(token, &id, change(i)),
            app.push(token, &id, change(i)),
            app.push(token, &format!("taken-{}", i % (PUSHES / 4)), change(i)),
        )
        .await;
        (i, first, second, refused)
    });
    let answers = futures::future::join_all(pairs).await;
    for (i, first, second, refused) in &answers {
        first.expect(StatusCode::OK);
        second.expect(StatusCode::OK);
        assert_eq!(
            first.body, second.body,
            "push {i}: one answer for both clicks"
        );
        refused.expect(StatusCode::CONFLICT);
    }
    let page = app
        .get(
            &format!("/rest/v1/rpc/changes?since={}", head + (PUSHES / 4) as i64),
            Some(&tokens[0]),
        )
        .await;
    page.expect(StatusCode::OK);
    let mut keys: Vec<String> = page.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["new"]["key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    let mut expected: Vec<String> = (0..PUSHES).map(|i| format!("custom.click.{i}")).collect();
    expected.sort();
    assert_eq!(
        keys, expected,
        "each push once; nothing from the refused ones"
    );
    for (i, first, _, _) in &answers {
        let seq = first.body["seq"].as_i64().unwrap();
        let entry = page.body["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["seq"] == seq)
            .unwrap_or_else(|| panic!("push {i}: its answer's seq {seq} is in the log"));
        assert_eq!(entry["new"]["key"], format!("custom.click.{i}"));
    }
}

mod reuse {
    use super::*;

    backend_tests! { a_mutation_id_reused_for_other_changes_is_refused }

    async fn a_mutation_id_reused_for_other_changes_is_refused(backend: Backend) {
        let app = TestApp::start(backend).await;
        let session = app.signup("ada@example.com", "laptop").await;
        let token = access_token(&session);
        let first = theme(&app, "dark", 0);
        app.push(token, "m-1", first.clone())
            .await
            .expect(StatusCode::OK);
        app.push(token, "m-1", first).await.expect(StatusCode::OK);
        let other =
            json!([{ "key": "notifications.desktop", "value": false, "hlc": hlc_at(&app, 1, 0) }]);
        let reused = app.push(token, "m-1", other).await;
        reused.expect_rest_error(StatusCode::CONFLICT, "23505");
        assert!(reused.body["message"].as_str().unwrap().contains("m-1"));
    }
}
