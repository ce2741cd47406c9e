//! TOTP MFA over real HTTP: codes come from an independent RFC 6238 implementation below, QR
//! codes are decoded by a real barcode reader, and the database is searched for leaked secrets.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestApp, access_token, claims, refresh_token};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use time::Duration;

// ---- an independent RFC 6238 (TOTP) / RFC 4226 (HOTP) implementation -----------------------

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u64, Vec::new());
    for c in text.trim_end_matches('=').bytes() {
        let index = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .expect("base32");
        value = (value << 5) | index as u64;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
        }
    }
    out
}

fn hotp(key: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(&counter.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = (hash[19] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        hash[offset] & 0x7f,
        hash[offset + 1],
        hash[offset + 2],
        hash[offset + 3],
    ]);
    format!(
        "{:0width$}",
        binary % 10u32.pow(digits),
        width = digits as usize
    )
}

fn totp_at(key: &[u8], unix_seconds: i64, digits: u32) -> String {
    hotp(key, (unix_seconds / 30) as u64, digits)
}

#[test]
fn the_test_totp_passes_the_rfc_6238_vectors() {
    let key = b"12345678901234567890";
    for (t, expected) in [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ] {
        assert_eq!(totp_at(key, t, 8), expected, "T = {t}");
    }
}

// ---- helpers ---------------------------------------------------------------------------------

/// The code an authenticator app would show now, by the app's clock.
fn code_now(app: &TestApp, secret: &str) -> String {
    let now = lockstep_cloud::clock::Clock::now(&app.clock).unix_timestamp();
    totp_at(&base32_decode(secret), now, 6)
}

struct Enrolled {
    factor_id: String,
    secret: String,
    body: Value,
}

/// Asks to enroll a TOTP factor named "Phone".
async fn enroll_reply(app: &TestApp, token: &str) -> common::Reply {
    app.post(
        "/auth/v1/factors",
        Some(token),
        json!({ "factor_type": "totp", "friendly_name": "Phone" }),
    )
    .await
}

async fn enroll(app: &TestApp, token: &str) -> Enrolled {
    let reply = enroll_reply(app, token).await;
    reply.expect(StatusCode::OK);
    Enrolled {
        factor_id: reply.body["id"].as_str().unwrap().to_owned(),
        secret: reply.body["totp"]["secret"].as_str().unwrap().to_owned(),
        body: reply.body.clone(),
    }
}

async fn challenge(app: &TestApp, token: &str, factor: &str) -> String {
    let reply = app
        .post(
            &format!("/auth/v1/factors/{factor}/challenge"),
            Some(token),
            json!({}),
        )
        .await;
    reply.expect(StatusCode::OK);
    reply.body["id"].as_str().unwrap().to_owned()
}

async fn verify(app: &TestApp, token: &str, factor: &str, code: &str) -> common::Reply {
    let challenge_id = challenge(app, token, factor).await;
    answer(app, token, factor, &challenge_id, code).await
}

/// Answers the challenge `challenge_id` of `factor` with `code`.
async fn answer(
    app: &TestApp,
    token: &str,
    factor: &str,
    challenge_id: &str,
    code: &str,
) -> common::Reply {
    app.post(
        &format!("/auth/v1/factors/{factor}/verify"),
        Some(token),
        json!({ "challenge_id": challenge_id, "code": code }),
    )
    .await
}

/// Verifies `factor` with the code it shows now.
async fn verify_now(app: &TestApp, token: &str, factor: &Enrolled) -> common::Reply {
    verify(
        app,
        token,
        &factor.factor_id,
        &code_now(app, &factor.secret),
    )
    .await
}

/// Moves to the next code and verifies `factor` with it as `session`.
async fn step_up_with_code(app: &TestApp, session: &Value, factor: &Enrolled) -> common::Reply {
    next_step(app);
    verify_now(app, access_token(session), factor).await
}

/// Signs up, enrolls and verifies a factor: the aal2 session and the factor.
async fn with_mfa(app: &TestApp, email: &str, device: &str) -> (Value, Enrolled) {
    let session = app.signup_confirmed(email, device).await;
    let factor = enroll(app, access_token(&session)).await;
    let reply = verify_now(app, access_token(&session), &factor).await;
    reply.expect(StatusCode::OK);
    (reply.body.clone(), factor)
}

/// Moves the clock to the next 30-second step (a new code).
fn next_step(app: &TestApp) {
    app.clock.advance(Duration::seconds(30));
}

// ---- tests -----------------------------------------------------------------------------------

backend_tests! {
    enroll_challenge_verify_reaches_aal2_and_sign_in_steps_up_again,
    the_qr_code_decodes_to_the_uri,
    an_accepted_code_is_never_accepted_again,
    wrong_codes_lock_the_factor_for_five_minutes,
    recovery_codes_work_once_each,
    an_aal1_session_is_refused_data_and_told_to_step_up,
    another_factor_needs_a_recent_verification,
    removing_the_factor_turns_mfa_off_everywhere,
    the_secret_is_handed_to_a_second_device_only_after_a_fresh_code,
    no_secret_or_recovery_code_is_stored_in_plaintext,
    malformed_mfa_requests_get_clear_errors,
    an_unverified_enrollment_expires_and_a_new_one_replaces_it,
    a_burst_of_wrong_codes_gets_no_more_checks_than_the_lockout_allows,
    a_burst_of_wrong_recovery_codes_gets_no_more_checks_than_the_lockout_allows,
    an_aal1_session_cannot_sign_out_the_owners_other_sessions,
    concurrent_enrollments_leave_one_pending_factor,
    a_factor_cannot_be_enrolled_before_the_address_is_confirmed,
    a_password_reset_by_email_takes_the_account_back_from_a_squatter,
    a_recovery_keeps_the_owners_factor_after_an_email_change_and_ends_every_session,
}

async fn concurrent_enrollments_leave_one_pending_factor(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup_confirmed("ada@example.com", "laptop").await;
    let burst = app.post_burst(
        12,
        "/auth/v1/factors",
        Some(access_token(&session)),
        |_| json!({ "factor_type": "totp", "friendly_name": "Phone" }),
    );
    for reply in burst.await {
        assert!(
            reply.status.is_success() || reply.status.is_client_error(),
            "{}",
            reply.text
        );
    }
    let rows = app
        .raw_rows("SELECT id FROM mfa_factors WHERE status = 'unverified'")
        .await;
    assert_eq!(rows.len(), 1, "one pending enrollment: {rows:?}");
}

async fn an_aal1_session_cannot_sign_out_the_owners_other_sessions(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (aal2, _) = with_mfa(&app, "ada@example.com", "laptop").await;
    let stolen = app.sign_in("ada@example.com", "attacker").await;
    for scope in ["others", "global"] {
        app.call(
            Method::POST,
            &format!("/auth/v1/logout?scope={scope}"),
            Some(access_token(&stolen)),
        )
        .await
        .expect_error(StatusCode::FORBIDDEN, "insufficient_aal");
    }
    app.expect_signed_in(&aal2).await;
    // Its own session it may always end.
    app.call_as(Method::POST, "/auth/v1/logout", &stolen)
        .await
        .expect(StatusCode::NO_CONTENT);
    // The verified session may end the others.
    app.call_as(Method::POST, "/auth/v1/logout?scope=others", &aal2)
        .await
        .expect(StatusCode::NO_CONTENT);
}

/// 80 wrong codes at once, split over two nodes where the backend has several (the lockout
/// counter lives in the database): at most five are checked, the rest are refused unchecked.
async fn a_burst_of_wrong_codes_gets_no_more_checks_than_the_lockout_allows(backend: Backend) {
    let app = TestApp::start_with(backend.clone(), |c| {
        c.rate_limits.mfa_per_ip = lockstep_cloud::config::Limit::new(10_000, 60);
    })
    .await;
    let (_, factor) = with_mfa(&app, "ada@example.com", "laptop").await;
    let second = match backend {
        Backend::Postgres { .. } => Some(app.another_node().await),
        Backend::Sqlite => None,
    };
    next_step(&app);
    let session = app.sign_in("ada@example.com", "tablet").await;
    let token = access_token(&session).to_owned();
    let challenge_id = challenge(&app, &token, &factor.factor_id).await;
    let right = code_now(&app, &factor.secret);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    let app = &app;
    let nodes: Vec<&TestApp> = match &second {
        Some(other) => vec![app, other],
        None => vec![app],
    };
    let burst = (0..80).map(|i| {
        let node = nodes[i % nodes.len()];
        let (token, challenge_id, wrong, factor_id) =
            (&token, &challenge_id, &wrong, &factor.factor_id);
        async move {
            node.post(
                &format!("/auth/v1/factors/{factor_id}/verify"),
                Some(token),
                json!({ "challenge_id": challenge_id, "code": wrong }),
            )
            .await
        }
    });
    let replies = futures::future::join_all(burst).await;
    let counts = common::tally(&replies);
    common::assert_counts(
        &counts,
        &[
            (422, "mfa_verification_failed", 5),
            (429, "over_request_rate_limit", 75),
        ],
    );
    // Locked: even the right code waits for the window.
    answer(app, &token, &factor.factor_id, &challenge_id, &right)
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");
}

async fn a_burst_of_wrong_recovery_codes_gets_no_more_checks_than_the_lockout_allows(
    backend: Backend,
) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.mfa_per_ip = lockstep_cloud::config::Limit::new(10_000, 60);
    })
    .await;
    let (aal2, _) = with_mfa(&app, "ada@example.com", "laptop").await;
    app.post_as("/auth/v1/factors/recovery-codes", &aal2, json!({}))
        .await
        .expect(StatusCode::OK);
    let session = app.sign_in("ada@example.com", "tablet").await;
    let burst = app.post_burst(
        60,
        "/auth/v1/factors/recovery-codes/verify",
        Some(access_token(&session)),
        |i| json!({ "code": format!("wrongcode{i:03}") }),
    );
    let counts = common::tally(&burst.await);
    common::assert_counts(
        &counts,
        &[
            (422, "mfa_verification_failed", 5),
            (429, "over_request_rate_limit", 55),
        ],
    );
}

async fn an_unverified_enrollment_expires_and_a_new_one_replaces_it(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup_confirmed("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let first = enroll(&app, token).await;
    let second = enroll(&app, token).await;
    let user = app.get("/auth/v1/user", Some(token)).await;
    let ids: Vec<&str> = user.body["factors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [second.factor_id.as_str()],
        "at most one unverified factor"
    );
    app.post(
        &format!("/auth/v1/factors/{}/challenge", first.factor_id),
        Some(token),
        json!({}),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "mfa_factor_not_found");
    app.clock.advance(Duration::minutes(11));
    let expired = app
        .post(
            &format!("/auth/v1/factors/{}/challenge", second.factor_id),
            Some(token),
            json!({}),
        )
        .await;
    expired.expect_error(StatusCode::NOT_FOUND, "mfa_factor_not_found");
    assert!(expired.body["msg"].as_str().unwrap().contains("expired"));
    let user = app.get("/auth/v1/user", Some(token)).await;
    assert_eq!(user.body["factors"], json!([]));
    assert!(
        app.raw_rows("SELECT id FROM mfa_factors").await.is_empty(),
        "cleaned up"
    );
}

async fn enroll_challenge_verify_reaches_aal2_and_sign_in_steps_up_again(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup_confirmed("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let factor = enroll(&app, token).await;
    assert_eq!(factor.body["type"], "totp");
    assert_eq!(factor.body["friendly_name"], "Phone");
    assert_eq!(base32_decode(&factor.secret).len(), 20, "a 160-bit secret");
    let uri = factor.body["totp"]["uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Lockstep:ada%40example.com?"),
        "{uri}"
    );
    assert!(
        uri.contains(&format!("secret={}", factor.secret)) && uri.contains("issuer=Lockstep"),
        "{uri}"
    );
    let user = app.get("/auth/v1/user", Some(token)).await;
    assert_eq!(user.body["factors"][0]["status"], "unverified");
    assert!(
        user.body["factors"][0].get("secret").is_none(),
        "never the secret"
    );

    let verified = verify_now(&app, token, &factor).await;
    verified.expect(StatusCode::OK);
    let aal2 = claims(access_token(&verified.body));
    assert_eq!(aal2["aal"], "aal2");
    assert_eq!(aal2["amr"][0]["method"], "totp");
    assert_eq!(aal2["amr"][1]["method"], "password");
    assert_eq!(
        aal2["session_id"],
        claims(token)["session_id"],
        "raised in place"
    );
    assert_ne!(
        refresh_token(&verified.body),
        refresh_token(&session),
        "a new refresh token"
    );
    assert_eq!(verified.body["user"]["factors"][0]["status"], "verified");
    // The refreshed session stays aal2.
    let refreshed = app.refresh(refresh_token(&verified.body)).await;
    assert_eq!(claims(access_token(&refreshed.body))["aal"], "aal2");

    app.call_as(Method::POST, "/auth/v1/logout", &refreshed.body)
        .await
        .expect(StatusCode::NO_CONTENT);
    let again = app.sign_in("ada@example.com", "laptop").await;
    assert_eq!(claims(access_token(&again))["aal"], "aal1");
    let stepped = step_up_with_code(&app, &again, &factor).await;
    stepped.expect(StatusCode::OK);
    assert_eq!(claims(access_token(&stepped.body))["aal"], "aal2");
}

async fn the_qr_code_decodes_to_the_uri(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup_confirmed("ada@example.com", "laptop").await;
    let factor = enroll(&app, access_token(&session)).await;
    let svg = factor.body["totp"]["qr_code"].as_str().unwrap();
    assert!(
        svg.starts_with("<?xml") || svg.starts_with("<svg"),
        "raw SVG markup"
    );
    let dir = tempfile::tempdir().unwrap();
    let (svg_path, png_path) = (dir.path().join("qr.svg"), dir.path().join("qr.png"));
    std::fs::write(&svg_path, svg).unwrap();
    let raster = std::process::Command::new("rsvg-convert")
        .args(["--width", "400", "--background-color", "white", "-o"])
        .arg(&png_path)
        .arg(&svg_path)
        .status()
        .expect("rsvg-convert is installed (cargo xtask test installs librsvg2-bin)");
    assert!(raster.success());
    let decoded = std::process::Command::new("zbarimg")
        .args(["--quiet", "--raw"])
        .arg(&png_path)
        .output()
        .expect("zbarimg is installed (cargo xtask test installs zbar-tools)");
    assert!(decoded.status.success(), "zbarimg found no QR code");
    assert_eq!(
        String::from_utf8(decoded.stdout).unwrap().trim(),
        factor.body["totp"]["uri"].as_str().unwrap()
    );
}

async fn an_accepted_code_is_never_accepted_again(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup_confirmed("ada@example.com", "laptop").await;
    let factor = enroll(&app, access_token(&session)).await;
    let code = code_now(&app, &factor.secret);
    verify(&app, access_token(&session), &factor.factor_id, &code)
        .await
        .expect(StatusCode::OK);
    // Another device (or an attacker who saw it) tries the same code on a fresh challenge.
    let other = app.sign_in("ada@example.com", "desktop").await;
    let replay = verify(&app, access_token(&other), &factor.factor_id, &code).await;
    replay.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "mfa_verification_failed");
    assert!(
        replay.body["msg"]
            .as_str()
            .unwrap()
            .contains("already used")
    );
    // An earlier step's code is refused too; the next step's code works.
    app.clock.advance(Duration::seconds(-30));
    let earlier = code_now(&app, &factor.secret);
    app.clock.advance(Duration::seconds(30));
    verify(&app, access_token(&other), &factor.factor_id, &earlier)
        .await
        .expect(StatusCode::UNPROCESSABLE_ENTITY);
    step_up_with_code(&app, &other, &factor)
        .await
        .expect(StatusCode::OK);
}

async fn wrong_codes_lock_the_factor_for_five_minutes(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (aal2, factor) = with_mfa(&app, "ada@example.com", "laptop").await;
    let other = app.sign_in("ada@example.com", "desktop").await;
    let token = access_token(&other);
    next_step(&app);
    let right = code_now(&app, &factor.secret);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let challenge_id = challenge(&app, token, &factor.factor_id).await;
    for _ in 0..5 {
        // A wrong code does not use up the challenge.
        let reply = answer(&app, token, &factor.factor_id, &challenge_id, wrong).await;
        reply.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "mfa_verification_failed");
    }
    let locked = answer(&app, token, &factor.factor_id, &challenge_id, &right).await;
    locked.expect_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");
    assert!(locked.body["msg"].as_str().unwrap().contains("locked"));
    let retry: i64 = locked.retry_after();
    assert!((1..=300).contains(&retry), "{retry}");
    let log = app
        .get_as("/rest/v1/audit_log_entries?action=eq.mfa_locked_out", &aal2)
        .await;
    assert_eq!(log.body.as_array().unwrap().len(), 1, "{}", log.text);
    app.clock.advance(Duration::minutes(5));
    verify_now(&app, token, &factor)
        .await
        .expect(StatusCode::OK);
}

async fn recovery_codes_work_once_each(backend: Backend) {
    let app = TestApp::start(backend).await;
    let plain = app.signup_confirmed("bob@example.com", "laptop").await;
    app.post_as("/auth/v1/factors/recovery-codes", &plain, json!({}))
        .await
        .expect_error(StatusCode::FORBIDDEN, "insufficient_aal");
    let (aal2, _) = with_mfa(&app, "ada@example.com", "laptop").await;
    let token = access_token(&aal2);
    let generated = app
        .post(
            "/auth/v1/factors/recovery-codes",
            Some(token),
            json!({ "friendly_name": "Backup" }),
        )
        .await;
    generated.expect(StatusCode::OK);
    assert_eq!(generated.body["type"], "recovery_code");
    let codes: Vec<String> = generated.body["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    assert!(
        codes.iter().all(|c| c
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit())),
        "canonical lowercase"
    );
    app.post("/auth/v1/factors/recovery-codes", Some(token), json!({}))
        .await
        .expect_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "mfa_verified_factor_exists",
        );
    let status = app
        .get("/auth/v1/factors/recovery-codes", Some(token))
        .await;
    assert_eq!(
        (
            status.body["total"].as_i64(),
            status.body["remaining"].as_i64()
        ),
        (Some(10), Some(10))
    );

    // Lost phone: sign in on a new device and use a code, typed sloppily.
    let fresh = app.sign_in("ada@example.com", "tablet").await;
    let sloppy = format!(" {}-{} ", codes[3][..6].to_uppercase(), &codes[3][6..]);
    let used = app
        .post_as(
            "/auth/v1/factors/recovery-codes/verify",
            &fresh,
            json!({ "code": sloppy }),
        )
        .await;
    used.expect(StatusCode::OK);
    let c = claims(access_token(&used.body));
    assert_eq!(c["aal"], "aal2");
    assert_eq!(c["amr"][0]["method"], "mfa/recovery_code");
    let again = app.sign_in("ada@example.com", "tablet-2").await;
    app.post_as(
        "/auth/v1/factors/recovery-codes/verify",
        &again,
        json!({ "code": codes[3] }),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "mfa_verification_failed");
    let status = app
        .get("/auth/v1/factors/recovery-codes", Some(token))
        .await;
    assert_eq!(status.body["remaining"], 9);
    // Regenerating replaces every old code.
    let renewed = app
        .post(
            "/auth/v1/factors/recovery-codes/regenerate",
            Some(token),
            json!({}),
        )
        .await;
    renewed.expect(StatusCode::OK);
    app.post_as(
        "/auth/v1/factors/recovery-codes/verify",
        &again,
        json!({ "code": codes[4] }),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "mfa_verification_failed");
    let log = app
        .get(
            "/rest/v1/audit_log_entries?action=eq.recovery_code_used",
            Some(token),
        )
        .await;
    assert_eq!(log.body.as_array().unwrap().len(), 1);
}

async fn an_aal1_session_is_refused_data_and_told_to_step_up(backend: Backend) {
    let app = TestApp::start(backend).await;
    let laptop = app.signup_confirmed("ada@example.com", "laptop").await;
    let desktop = app.sign_in("ada@example.com", "desktop").await;
    let mut desktop_feed = app.ready_stream(&desktop).await;
    app.get_as("/rest/v1/devices", &desktop)
        .await
        .expect(StatusCode::OK);

    // MFA is turned on from the laptop.
    let factor = enroll(&app, access_token(&laptop)).await;
    let enrolled = desktop_feed.next_change().await;
    assert_eq!(
        (enrolled["table"].as_str(), enrolled["eventType"].as_str()),
        (Some("mfa_factors"), Some("INSERT"))
    );
    verify_now(&app, access_token(&laptop), &factor)
        .await
        .expect(StatusCode::OK);
    let enabled = desktop_feed.next_change().await;
    assert_eq!(enabled["table"], "mfa_factors");
    assert_eq!(enabled["new"]["status"], "verified");
    assert_eq!(enabled["device_name"], "Device laptop");
    let step_up = desktop_feed.next_of("insufficient_aal").await;
    assert_eq!(
        serde_json::from_str::<Value>(&step_up.data).unwrap()["reason"],
        "mfa_enabled"
    );

    // The desktop is refused data, not signed out.
    for path in [
        "/rest/v1/devices",
        "/rest/v1/user_settings",
        "/rest/v1/audit_log_entries",
        "/rest/v1/rpc/changes",
    ] {
        app.get(path, Some(access_token(&desktop)))
            .await
            .expect_rest_error(StatusCode::FORBIDDEN, "insufficient_aal");
    }
    app.get_as("/realtime/v1/sse", &desktop)
        .await
        .expect_error(StatusCode::FORBIDDEN, "insufficient_aal");
    // Writes too: a push, a plain upsert, a device rename.
    let push = json!({"mutation_id": "aal1-push", "changes": [
        {"key": "appearance.theme", "value": "dark", "hlc": "000000000000001-0000000000"}
    ]});
    let writes = [
        (Method::POST, "/rest/v1/rpc/push_settings", push),
        (
            Method::POST,
            "/rest/v1/user_settings",
            json!({"key": "appearance.theme", "value": "dark"}),
        ),
        (
            Method::PATCH,
            "/rest/v1/devices?id=eq.desktop",
            json!({"name": "Renamed"}),
        ),
    ];
    for (method, path, body) in writes {
        let request = app.request(method, path, Some(access_token(&desktop)));
        app.send(request.json(&body))
            .await
            .expect_rest_error(StatusCode::FORBIDDEN, "insufficient_aal");
    }
    app.expect_signed_in(&desktop).await;
    // A password alone can no longer change the password or the email.
    let takeover = app.request(Method::PUT, "/auth/v1/user", Some(access_token(&desktop)));
    app.send(takeover.json(&json!({ "password": "Attacker pass 9" })))
        .await
        .expect_error(StatusCode::FORBIDDEN, "insufficient_aal");
    // It steps up with a code and is back.
    let stepped = step_up_with_code(&app, &desktop, &factor).await;
    stepped.expect(StatusCode::OK);
    app.get_as("/rest/v1/devices", &stepped.body)
        .await
        .expect(StatusCode::OK);
}

async fn another_factor_needs_a_recent_verification(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (aal2, factor) = with_mfa(&app, "ada@example.com", "laptop").await;
    let aal1 = app.sign_in("ada@example.com", "desktop").await;
    let body = json!({ "factor_type": "totp", "friendly_name": "Backup phone" });
    app.post_as("/auth/v1/factors", &aal1, body.clone())
        .await
        .expect_error(StatusCode::FORBIDDEN, "insufficient_aal");
    // An aal2 session whose last code is older than 5 minutes (e.g. a stolen one) is refused too.
    app.clock.advance(Duration::minutes(6));
    let stale = app.refresh(refresh_token(&aal2)).await.body;
    assert_eq!(claims(access_token(&stale))["aal"], "aal2");
    app.post_as("/auth/v1/factors", &stale, body.clone())
        .await
        .expect_error(StatusCode::FORBIDDEN, "reauthentication_needed");
    // A fresh code makes it possible.
    let fresh = verify_now(&app, access_token(&stale), &factor).await;
    fresh.expect(StatusCode::OK);
    let second = app.post_as("/auth/v1/factors", &fresh.body, body).await;
    second.expect(StatusCode::OK);
    assert_eq!(second.body["friendly_name"], "Backup phone");
}

async fn removing_the_factor_turns_mfa_off_everywhere(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (aal2, factor) = with_mfa(&app, "ada@example.com", "laptop").await;
    app.clock.advance(Duration::minutes(6));
    let token = access_token(&app.refresh(refresh_token(&aal2)).await.body).to_owned();
    app.call(
        Method::DELETE,
        &format!("/auth/v1/factors/{}", factor.factor_id),
        Some(&token),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "reauthentication_needed");
    let fresh = verify_now(&app, &token, &factor).await;
    fresh.expect(StatusCode::OK);
    let removed = app
        .send(app.request(
            Method::DELETE,
            &format!("/auth/v1/factors/{}", factor.factor_id),
            Some(access_token(&fresh.body)),
        ))
        .await;
    removed.expect(StatusCode::OK);
    assert_eq!(removed.body["id"], factor.factor_id.as_str());
    let user = app.get_as("/auth/v1/user", &fresh.body).await;
    assert_eq!(user.body["factors"], json!([]));
    // The session dropped to aal1 (a refresh shows it) and aal1 may read data again.
    let refreshed = app.refresh(refresh_token(&fresh.body)).await.body;
    assert_eq!(claims(access_token(&refreshed))["aal"], "aal1");
    let aal1 = app.sign_in("ada@example.com", "desktop").await;
    app.get_as("/rest/v1/devices", &aal1)
        .await
        .expect(StatusCode::OK);
}

async fn the_secret_is_handed_to_a_second_device_only_after_a_fresh_code(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, factor) = with_mfa(&app, "ada@example.com", "laptop").await;
    let mut laptop_feed = app.ready_stream(&laptop).await;
    let desktop = app.sign_in("ada@example.com", "desktop").await;
    let path = format!("/auth/v1/factors/{}/secret", factor.factor_id);
    app.get(&path, Some(access_token(&desktop)))
        .await
        .expect_error(StatusCode::FORBIDDEN, "insufficient_aal");
    let stepped = step_up_with_code(&app, &desktop, &factor).await;
    let handed = app.get(&path, Some(access_token(&stepped.body))).await;
    handed.expect(StatusCode::OK);
    assert_eq!(handed.body["secret"], factor.secret.as_str());
    assert!(
        handed.body["uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    // The laptop hears of it.
    loop {
        let change = laptop_feed.next_change().await;
        if change["table"] == "mfa_events" {
            assert_eq!(change["new"]["action"], "mfa_secret_handed_over");
            assert_eq!(change["device_name"], "Device desktop");
            break;
        }
    }
    app.clock.advance(Duration::minutes(6));
    let stale = app.refresh(refresh_token(&stepped.body)).await.body;
    app.get(&path, Some(access_token(&stale)))
        .await
        .expect_error(StatusCode::FORBIDDEN, "reauthentication_needed");
}

async fn no_secret_or_recovery_code_is_stored_in_plaintext(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (aal2, factor) = with_mfa(&app, "ada@example.com", "laptop").await;
    let generated = app
        .post_as("/auth/v1/factors/recovery-codes", &aal2, json!({}))
        .await;
    let codes: Vec<String> = generated.body["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let raw_secret = base32_decode(&factor.secret);
    let dump = app
        .dump_tables(&[
            "mfa_factors",
            "mfa_challenges",
            "recovery_codes",
            "recovery_code_sets",
            "change_feed",
            "audit_log",
            "sessions",
            "users",
        ])
        .await;
    assert!(
        dump.contains(&factor.factor_id),
        "the dump did read the factor"
    );
    assert!(!dump.contains(&factor.secret), "base32 secret in plaintext");
    assert!(!dump.to_lowercase().contains(&factor.secret.to_lowercase()));
    assert!(
        !dump
            .as_bytes()
            .windows(raw_secret.len())
            .any(|w| w == raw_secret.as_slice()),
        "raw secret bytes"
    );
    for code in &codes {
        assert!(
            !dump.contains(code.as_str()),
            "a recovery code in plaintext"
        );
    }
}

async fn malformed_mfa_requests_get_clear_errors(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup_confirmed("ada@example.com", "laptop").await;
    let token = access_token(&session);
    app.post(
        "/auth/v1/factors",
        Some(token),
        json!({ "factor_type": "sms" }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "validation_failed");
    app.post(
        "/auth/v1/factors",
        Some(token),
        json!({ "factor_type": "totp", "issuer": "Bad:Issuer" }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "validation_failed");
    let factor = enroll(&app, token).await;
    let verify_path = format!("/auth/v1/factors/{}/verify", factor.factor_id);
    app.post(
        &verify_path,
        Some(token),
        json!({ "challenge_id": "not-a-uuid", "code": "123456" }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "bad_json");
    app.post(
        &verify_path,
        Some(token),
        json!({ "challenge_id": uuid::Uuid::new_v4(), "code": "123456" }),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "mfa_challenge_expired");
    let challenge_id = challenge(&app, token, &factor.factor_id).await;
    app.post(
        &verify_path,
        Some(token),
        json!({ "challenge_id": challenge_id, "code": "  " }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "validation_failed");
    app.clock.advance(Duration::seconds(301));
    app.post(
        &verify_path,
        Some(token),
        json!({ "challenge_id": challenge_id, "code": code_now(&app, &factor.secret) }),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "mfa_challenge_expired");
    app.post(
        &format!("/auth/v1/factors/{}/challenge", uuid::Uuid::new_v4()),
        Some(token),
        json!({}),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "mfa_factor_not_found");
    // Another user's factor is simply not found.
    let bob = app.signup_confirmed("bob@example.com", "bobs").await;
    app.post(
        &format!("/auth/v1/factors/{}/challenge", factor.factor_id),
        Some(access_token(&bob)),
        json!({}),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "mfa_factor_not_found");
}

/// Mallory signs up with Ada's address: she cannot add a factor before the address is
/// confirmed. Once Ada confirms it, enrolling works.
async fn a_factor_cannot_be_enrolled_before_the_address_is_confirmed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    enroll_reply(&app, token)
        .await
        .expect_error(StatusCode::FORBIDDEN, "email_not_confirmed");
    let user = app.get("/auth/v1/user", Some(token)).await;
    assert_eq!(user.body["factors"], json!([]), "nothing was stored");
    let link = app.latest_link("ada@example.com").await;
    app.open_link(&link).await;
    let factor = enroll(&app, token).await;
    verify_now(&app, token, &factor)
        .await
        .expect(StatusCode::OK);
}

/// A squatter's account as a server before the fix left it: a verified factor and an aal2
/// session on an address that was never confirmed. The owner resets the password by email:
/// every earlier session ends, the squatter's factor goes, and the owner can set a password.
async fn a_password_reset_by_email_takes_the_account_back_from_a_squatter(backend: Backend) {
    let app = TestApp::start(backend).await;
    let squatter = app.signup("ada@example.com", "mallory-pc").await;
    // Enrolling needs a confirmed address now; the squatter's state is made by hand.
    app.raw_rows("UPDATE users SET email_confirmed_at = 1")
        .await;
    let factor = enroll(&app, access_token(&squatter)).await;
    let aal2 = verify_now(&app, access_token(&squatter), &factor).await;
    aal2.expect(StatusCode::OK);
    let squatter_token = access_token(&aal2.body).to_owned();
    app.raw_rows("UPDATE users SET email_confirmed_at = NULL")
        .await;

    let owner = &app.recover("ada@example.com").await;
    assert_signed_out(&app, &squatter_token).await;
    let user = app.get("/auth/v1/user", Some(owner)).await;
    user.expect(StatusCode::OK);
    assert_eq!(user.body["factors"], json!([]), "{}", user.text);
    assert!(user.body["email_confirmed_at"].is_string());
    app.send(
        app.request(Method::PUT, "/auth/v1/user", Some(owner))
            .json(&json!({ "password": "the owner's own password" })),
    )
    .await
    .expect(StatusCode::OK);
    app.sign_in_reply("ada@example.com", common::PASSWORD, "mallory-pc")
        .await
        .expect(StatusCode::BAD_REQUEST);
    app.get("/rest/v1/user_settings", Some(owner))
        .await
        .expect(StatusCode::OK);
}

/// The owner's own factor survives a recovery, also after an email change (which moves
/// `email_confirmed_at` on); the sessions from before it end all the same.
async fn a_recovery_keeps_the_owners_factor_after_an_email_change_and_ends_every_session(
    backend: Backend,
) {
    let app = TestApp::start(backend).await;
    let (session, _) = with_mfa(&app, "ada@example.com", "laptop").await;
    app.send(
        app.request(Method::PUT, "/auth/v1/user", Some(access_token(&session)))
            .json(&json!({ "email": "ada@new.example" })),
    )
    .await
    .expect(StatusCode::OK);
    let link = app.latest_link("ada@new.example").await;
    app.open_link(&link).await;

    let owner = app.recover("ada@new.example").await;
    assert_signed_out(&app, access_token(&session)).await;
    let user = app.get("/auth/v1/user", Some(&owner)).await;
    user.expect(StatusCode::OK);
    assert_eq!(
        user.body["factors"].as_array().map(Vec::len),
        Some(1),
        "the owner's factor stays: {}",
        user.text
    );
}

/// The session of `token` has ended: the server no longer answers it.
async fn assert_signed_out(app: &TestApp, token: &str) {
    let gone = app.get("/auth/v1/user", Some(token)).await;
    assert!(
        gone.status == StatusCode::FORBIDDEN || gone.status == StatusCode::UNAUTHORIZED,
        "the session ended: {} {}",
        gone.status,
        gone.text
    );
}
