//! The session check of each request is remembered per node (`session_cache`), yet every change
//! to the account takes effect on the very next request: on the node that made it at once, on
//! the other nodes as soon as their listener hears of it. Each test first has the node remember
//! the session, so it fails if the change does not make the node forget it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Backend, TestApp, access_token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

backend_tests! {
    a_signed_out_session_is_refused_on_its_next_request,
    a_revoked_device_is_refused_on_its_next_request,
    turning_mfa_on_refuses_an_aal1_session_data_on_its_next_request,
    a_device_last_seen_time_still_moves_once_a_minute,
}

/// Asks `app` as `session` until it refuses with `status`, for at most five seconds.
async fn until_refused(app: &TestApp, path: &str, session: &Value, status: StatusCode) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = app.get_as(path, session).await;
        if reply.status == status {
            return;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} was still served 5 s after the change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_signed_out_session_is_refused_on_its_next_request(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let phone = app.sign_in("ada@example.com", "phone").await;
    for session in [&laptop, &desktop, &phone] {
        app.get_as("/rest/v1/user_settings", session)
            .await
            .expect(StatusCode::OK);
        app.expect_signed_in(session).await;
    }
    // A session signs itself out.
    app.call_as(Method::POST, "/auth/v1/logout", &desktop)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.expect_session_gone(&desktop).await;
    app.get_as("/rest/v1/user_settings", &desktop)
        .await
        .expect_rest_error(StatusCode::UNAUTHORIZED, "PGRST301");
    // One session signs the others out.
    app.call_as(Method::POST, "/auth/v1/logout?scope=others", &laptop)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.expect_session_gone(&phone).await;
    app.expect_signed_in(&laptop).await;
}

async fn a_revoked_device_is_refused_on_its_next_request(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    app.get_as("/rest/v1/devices", &desktop)
        .await
        .expect(StatusCode::OK);
    app.call_as(Method::DELETE, "/rest/v1/devices?id=eq.desktop", &laptop)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.get_as("/rest/v1/devices", &desktop)
        .await
        .expect_rest_error(StatusCode::UNAUTHORIZED, "PGRST301");
    app.expect_session_gone(&desktop).await;
}

/// Enrolls and verifies a TOTP factor as `session`, which becomes aal2.
async fn turn_mfa_on(app: &TestApp, session: &Value) {
    let token = access_token(session);
    let enrolled = app
        .post(
            "/auth/v1/factors",
            Some(token),
            json!({ "factor_type": "totp" }),
        )
        .await;
    enrolled.expect(StatusCode::OK);
    let factor = enrolled.body["id"].as_str().unwrap();
    let secret = enrolled.body["totp"]["secret"].as_str().unwrap();
    let challenge = app
        .post(
            &format!("/auth/v1/factors/{factor}/challenge"),
            Some(token),
            json!({}),
        )
        .await;
    challenge.expect(StatusCode::OK);
    let now = lockstep_cloud::clock::Clock::now(&app.clock).unix_timestamp();
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    let code = totp.generate(u64::try_from(now).unwrap()).to_string();
    app.post(
        &format!("/auth/v1/factors/{factor}/verify"),
        Some(token),
        json!({ "challenge_id": challenge.body["id"], "code": code }),
    )
    .await
    .expect(StatusCode::OK);
}

async fn turning_mfa_on_refuses_an_aal1_session_data_on_its_next_request(backend: Backend) {
    let app = TestApp::start(backend).await;
    let laptop = app.signup_confirmed("ada@example.com", "laptop").await;
    let desktop = app.sign_in("ada@example.com", "desktop").await;
    app.get_as("/rest/v1/user_settings", &desktop)
        .await
        .expect(StatusCode::OK);
    turn_mfa_on(&app, &laptop).await;
    app.get_as("/rest/v1/user_settings", &desktop)
        .await
        .expect_rest_error(StatusCode::FORBIDDEN, "insufficient_aal");
    // Refused data, not signed out.
    app.expect_signed_in(&desktop).await;
}

/// Requests do not write the device's last-seen time each time, but it still moves once a
/// minute has passed.
async fn a_device_last_seen_time_still_moves_once_a_minute(backend: Backend) {
    let app = TestApp::start(backend).await;
    let laptop = app.signup("ada@example.com", "laptop").await;
    let last_seen = || async {
        let devices = app.get_as("/rest/v1/devices", &laptop).await;
        devices.expect(StatusCode::OK);
        devices.body[0]["last_seen_at"].as_str().unwrap().to_owned()
    };
    let first = last_seen().await;
    app.clock.advance(time::Duration::seconds(30));
    assert_eq!(last_seen().await, first, "not within the minute");
    app.clock.advance(time::Duration::seconds(31));
    let later = last_seen().await;
    assert!(later > first, "{later} after {first}");
}

/// Two nodes on one PostgreSQL database: a sign-out through one is refused by the other,
/// which had the session remembered, as soon as its listener hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_signed_out_through_one_node_is_refused_by_another() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let one = TestApp::start(backend).await;
    let two = one.another_node().await;
    let (laptop, desktop) = one.ada_on_two_devices().await;
    two.expect_signed_in(&desktop).await;
    two.get_as("/rest/v1/user_settings", &desktop)
        .await
        .expect(StatusCode::OK);
    one.call_as(Method::POST, "/auth/v1/logout", &desktop)
        .await
        .expect(StatusCode::NO_CONTENT);
    until_refused(&two, "/auth/v1/user", &desktop, StatusCode::FORBIDDEN).await;
    two.expect_session_gone(&desktop).await;
    two.expect_signed_in(&laptop).await;
}

/// Two nodes on one PostgreSQL database: MFA turned on through one refuses an aal1 session's
/// data on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_turned_on_through_one_node_refuses_aal1_data_on_another() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let one = TestApp::start(backend).await;
    let two = one.another_node().await;
    let laptop = one.signup_confirmed("ada@example.com", "laptop").await;
    let desktop = one.sign_in("ada@example.com", "desktop").await;
    two.get_as("/rest/v1/user_settings", &desktop)
        .await
        .expect(StatusCode::OK);
    turn_mfa_on(&one, &laptop).await;
    until_refused(
        &two,
        "/rest/v1/user_settings",
        &desktop,
        StatusCode::FORBIDDEN,
    )
    .await;
    two.get_as("/rest/v1/user_settings", &desktop)
        .await
        .expect_rest_error(StatusCode::FORBIDDEN, "insufficient_aal");
}
