//! Signing up and in, tokens, refresh rotation, logout scopes, the user record.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, PASSWORD, TestApp, access_token, claims, refresh_token};
use reqwest::{Method, StatusCode};
use serde_json::json;
use time::Duration;

backend_tests! {
    signup_answers_a_session_with_gotrue_claims,
    signup_refuses_duplicates_weak_passwords_and_bad_emails,
    password_sign_in_and_its_failures,
    sign_in_before_verification_can_be_switched_off,
    refresh_rotates_the_token,
    refresh_replay_of_the_previous_token_gets_the_current_one,
    concurrent_refreshes_all_get_the_current_token,
    refresh_token_reuse_deletes_the_session,
    refresh_rejects_forged_and_unknown_tokens,
    logout_local_ends_only_this_session,
    logout_others_keeps_this_session,
    logout_global_ends_every_session,
    access_tokens_expire_and_bad_ones_are_refused,
    update_user_changes_password_and_signs_out_other_sessions,
    update_user_merges_metadata,
    api_key_is_required_except_on_open_routes,
    errors_take_the_2024_shape_when_asked,
}

async fn signup_answers_a_session_with_gotrue_claims(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("Ada@Example.com", "laptop").await;
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(session["expires_in"], 3600);
    let user = &session["user"];
    assert_eq!(user["email"], "ada@example.com", "emails are normalized");
    assert!(user["email_confirmed_at"].is_null(), "not verified yet");
    assert!(user["confirmation_sent_at"].is_string());
    assert_eq!(user["factors"], json!([]), "factors is always present");
    assert_eq!(user["aud"], "authenticated");
    assert_eq!(user["identities"][0]["provider"], "email");

    let c = claims(access_token(&session));
    assert_eq!(c["sub"], user["id"]);
    assert_eq!(c["aud"], "authenticated");
    assert_eq!(c["role"], "authenticated");
    assert_eq!(c["aal"], "aal1");
    assert_eq!(c["amr"][0]["method"], "password");
    assert_eq!(c["email"], "ada@example.com");
    assert_eq!(c["iss"], format!("{}/auth/v1", app.url));
    assert_eq!(c["device_id"], "laptop");
    assert!(c["session_id"].is_string());
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );
    assert_eq!(session["expires_at"], c["exp"]);

    let me = app.get_as("/auth/v1/user", &session).await;
    me.expect(StatusCode::OK);
    assert_eq!(me.body["id"], user["id"]);
}

async fn signup_refuses_duplicates_weak_passwords_and_bad_emails(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.signup("ada@example.com", "laptop").await;
    app.signup_reply("ADA@example.com", PASSWORD)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "user_already_exists");

    let weak = app.signup_reply("bob@example.com", "short").await;
    weak.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "weak_password");
    assert_eq!(
        weak.body["weak_password"]["reasons"],
        json!(["length", "characters"])
    );
    assert!(
        !weak.text.contains("short\""),
        "the password is never echoed"
    );

    for email in ["bob", "bob@", "bob@localhost", "", "a b@example.com"] {
        app.signup_reply(email, PASSWORD)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "email_address_invalid");
    }
    let bad_device = app
        .post(
            "/auth/v1/signup",
            None,
            json!({ "email": "bob@example.com", "password": PASSWORD, "device": { "id": "a/b", "name": "x" } }),
        )
        .await;
    bad_device.expect_error(StatusCode::BAD_REQUEST, "validation_failed");
    assert!(
        bad_device.body["msg"]
            .as_str()
            .unwrap()
            .contains("device id")
    );
}

async fn password_sign_in_and_its_failures(backend: Backend) {
    let app = TestApp::start(backend).await;
    let first = app.signup("ada@example.com", "laptop").await;
    let second = app.sign_in("ada@example.com", "desktop").await;
    assert_eq!(second["user"]["id"], first["user"]["id"]);
    assert_ne!(
        claims(access_token(&second))["session_id"],
        claims(access_token(&first))["session_id"]
    );
    assert!(second["user"]["last_sign_in_at"].is_string());

    let wrong = app
        .sign_in_reply("ada@example.com", "Wrong password 1", "desktop")
        .await;
    wrong.expect_error(StatusCode::BAD_REQUEST, "invalid_credentials");
    let unknown = app
        .sign_in_reply("nobody@example.com", PASSWORD, "desktop")
        .await;
    unknown.expect_error(StatusCode::BAD_REQUEST, "invalid_credentials");
    assert_eq!(
        wrong.body["msg"], unknown.body["msg"],
        "no hint which emails exist"
    );

    app.post("/auth/v1/token?grant_type=magic", None, json!({}))
        .await
        .expect(StatusCode::BAD_REQUEST);
    let no_grant = app
        .post(
            "/auth/v1/token",
            None,
            json!({ "email": "ada@example.com" }),
        )
        .await;
    no_grant.expect(StatusCode::BAD_REQUEST);
    assert_eq!(no_grant.body["error"], "invalid_request");
}

async fn sign_in_before_verification_can_be_switched_off(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.allow_unverified_sign_in = false).await;
    let signup = app.signup_reply("ada@example.com", PASSWORD).await;
    signup.expect(StatusCode::OK);
    assert!(
        signup.body["access_token"].is_null(),
        "no session before verification"
    );
    assert_eq!(
        signup.body["email"], "ada@example.com",
        "answers the user instead"
    );
    app.sign_in_reply("ada@example.com", PASSWORD, "laptop")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "email_not_confirmed");
    let link = app.latest_link("ada@example.com").await;
    app.open_link(&link).await;
    app.sign_in("ada@example.com", "laptop").await;
}

async fn refresh_rotates_the_token(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let next = app.refresh(refresh_token(&session)).await;
    next.expect(StatusCode::OK);
    assert_ne!(refresh_token(&next.body), refresh_token(&session));
    assert_eq!(
        claims(access_token(&next.body))["session_id"],
        claims(access_token(&session))["session_id"]
    );
    let third = app.refresh(refresh_token(&next.body)).await;
    third.expect(StatusCode::OK);
    assert_ne!(refresh_token(&third.body), refresh_token(&next.body));
    app.expect_signed_in(&third.body).await;
}

async fn refresh_replay_of_the_previous_token_gets_the_current_one(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let saved = app.refresh(refresh_token(&session)).await;
    saved.expect(StatusCode::OK);
    // The client crashed before saving that answer and tries its old token much later.
    app.clock.advance(Duration::minutes(30));
    let replay = app.refresh(refresh_token(&session)).await;
    replay.expect(StatusCode::OK);
    assert_eq!(
        refresh_token(&replay.body),
        refresh_token(&saved.body),
        "the current token again"
    );
    // The current token still rotates normally afterwards.
    app.refresh(refresh_token(&replay.body))
        .await
        .expect(StatusCode::OK);
}

async fn concurrent_refreshes_all_get_the_current_token(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = refresh_token(&session).to_owned();
    let replies = futures::future::join_all((0..6).map(|_| app.refresh(&token))).await;
    for reply in &replies {
        reply.expect(StatusCode::OK);
    }
    let tokens: std::collections::HashSet<&str> =
        replies.iter().map(|r| refresh_token(&r.body)).collect();
    assert_eq!(
        tokens.len(),
        1,
        "every racer ends up with the same current token: {tokens:?}"
    );
    app.refresh(tokens.iter().next().unwrap())
        .await
        .expect(StatusCode::OK);
}

async fn refresh_token_reuse_deletes_the_session(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let t0 = refresh_token(&session).to_owned();
    let s1 = app.refresh(&t0).await.body.clone();
    let s2 = app.refresh(refresh_token(&s1)).await.body.clone();
    // Within the reuse interval an older token is still treated as a concurrent refresh.
    app.refresh(&t0).await.expect(StatusCode::OK);
    app.clock.advance(Duration::seconds(11));
    // Two rotations behind, long after: the token leaked. The whole session goes.
    app.refresh(&t0)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "refresh_token_already_used");
    app.refresh(refresh_token(&s2))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "refresh_token_not_found");
    app.expect_session_gone(&s2).await;

    let audit = app
        .get(
            "/rest/v1/audit_log_entries?action=eq.refresh_token_reused",
            Some(access_token(
                &app.sign_in("ada@example.com", "laptop").await,
            )),
        )
        .await;
    audit.expect(StatusCode::OK);
    assert_eq!(
        audit.body.as_array().unwrap().len(),
        1,
        "the reuse is audited"
    );
}

async fn refresh_rejects_forged_and_unknown_tokens(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = refresh_token(&session);
    let mut forged: Vec<char> = token.chars().collect();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    for bad in [forged.as_str(), "garbage", ""] {
        app.refresh(bad)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "refresh_token_not_found");
    }
    app.post(
        "/auth/v1/token?grant_type=refresh_token",
        None,
        json!({ "refresh": token }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "bad_json");
    // The genuine token still works: failed attempts did not disturb it.
    app.refresh(token).await.expect(StatusCode::OK);
}

async fn logout_local_ends_only_this_session(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = app.signup("ada@example.com", "laptop").await;
    let b = app.sign_in("ada@example.com", "desktop").await;
    app.request(Method::POST, "/auth/v1/logout", Some(access_token(&a)))
        .send()
        .await
        .map(|r| assert_eq!(r.status(), StatusCode::NO_CONTENT))
        .unwrap();
    app.expect_session_gone(&a).await;
    app.refresh(refresh_token(&a))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "refresh_token_not_found");
    app.expect_signed_in(&b).await;
}

async fn logout_others_keeps_this_session(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = app.signup("ada@example.com", "laptop").await;
    let b = app.sign_in("ada@example.com", "desktop").await;
    let c = app.sign_in("ada@example.com", "tablet").await;
    let bob = app.signup("bob@example.com", "bobs").await;
    let reply = app
        .send(app.request(
            Method::POST,
            "/auth/v1/logout?scope=others",
            Some(access_token(&a)),
        ))
        .await;
    reply.expect(StatusCode::NO_CONTENT);
    app.expect_signed_in(&a).await;
    for other in [&b, &c] {
        app.expect_session_gone(other).await;
    }
    app.expect_signed_in(&bob).await;
    app.call_as(Method::POST, "/auth/v1/logout?scope=everything", &a)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "validation_failed");
}

async fn logout_global_ends_every_session(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = app.signup("ada@example.com", "laptop").await;
    let b = app.sign_in("ada@example.com", "desktop").await;
    app.call_as(Method::POST, "/auth/v1/logout?scope=global", &a)
        .await
        .expect(StatusCode::NO_CONTENT);
    for s in [&a, &b] {
        app.expect_session_gone(s).await;
    }
    app.call(Method::POST, "/auth/v1/logout", None)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "no_authorization");
}

async fn access_tokens_expire_and_bad_ones_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    app.clock.advance(Duration::seconds(3599));
    app.expect_signed_in(&session).await;
    app.clock.advance(Duration::seconds(2));
    let expired = app.get_as("/auth/v1/user", &session).await;
    expired.expect_error(StatusCode::UNAUTHORIZED, "bad_jwt");
    assert!(expired.body["msg"].as_str().unwrap().contains("expired"));
    // A refresh brings a fresh access token for the same session.
    let fresh = app.refresh(refresh_token(&session)).await;
    app.expect_signed_in(&fresh.body).await;

    app.get("/auth/v1/user", Some("not.a.jwt"))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "bad_jwt");
    app.get("/auth/v1/user", None)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "no_authorization");
    // A token signed with another secret.
    let other = TestApp::start(Backend::Sqlite).await;
    let foreign = other.signup("ada@example.com", "laptop").await;
    app.get_as("/auth/v1/user", &foreign)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "bad_jwt");
}

async fn update_user_changes_password_and_signs_out_other_sessions(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = app.signup("ada@example.com", "laptop").await;
    let b = app.sign_in("ada@example.com", "desktop").await;
    let put = |body: serde_json::Value| {
        app.send(
            app.request(Method::PUT, "/auth/v1/user", Some(access_token(&a)))
                .json(&body),
        )
    };
    put(json!({ "password": PASSWORD }))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "same_password");
    put(json!({ "password": "weak" }))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "weak_password");
    put(json!({ "password": "Brand new pass 7" }))
        .await
        .expect(StatusCode::OK);

    app.sign_in_reply("ada@example.com", PASSWORD, "x")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_credentials");
    app.sign_in_reply("ada@example.com", "Brand new pass 7", "x")
        .await
        .expect(StatusCode::OK);
    app.expect_signed_in(&a).await;
    app.expect_session_gone(&b).await;
}

async fn update_user_merges_metadata(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = app.signup("ada@example.com", "laptop").await;
    let put = |body: serde_json::Value| {
        app.send(
            app.request(Method::PUT, "/auth/v1/user", Some(access_token(&a)))
                .json(&body),
        )
    };
    put(json!({ "data": { "display_name": "Ada", "team": "core" } }))
        .await
        .expect(StatusCode::OK);
    let user = put(json!({ "data": { "team": null, "lang": "en" } })).await;
    user.expect(StatusCode::OK);
    assert_eq!(
        user.body["user_metadata"],
        json!({ "display_name": "Ada", "lang": "en" })
    );
    put(json!({ "data": { "blob": "x".repeat(20_000) } }))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "validation_failed");
    put(json!({ "data": "not an object" }))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "bad_json");
}

async fn api_key_is_required_except_on_open_routes(backend: Backend) {
    let app = TestApp::start(backend).await;
    let no_key = reqwest::Client::new();
    let reply = common::Reply::from(
        no_key
            .get(format!("{}/auth/v1/settings", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.expect_error(StatusCode::UNAUTHORIZED, "no_api_key");
    let reply = common::Reply::from(
        no_key
            .get(format!("{}/auth/v1/settings", app.url))
            .header("apikey", "wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.expect_error(StatusCode::UNAUTHORIZED, "invalid_api_key");
    let by_query = common::Reply::from(
        no_key
            .get(format!(
                "{}/auth/v1/settings?apikey={}",
                app.url, app.anon_key
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    by_query.expect(StatusCode::OK);
    assert_eq!(by_query.body["external"]["email"], true);
    assert_eq!(by_query.body["disable_signup"], false);
    let service = common::Reply::from(
        no_key
            .get(format!("{}/auth/v1/settings", app.url))
            .header("apikey", &app.state.keys.service_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    service.expect(StatusCode::OK);

    let health = common::Reply::from(
        no_key
            .get(format!("{}/health", app.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    health.expect(StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
}

async fn errors_take_the_2024_shape_when_asked(backend: Backend) {
    let app = TestApp::start(backend).await;
    let reply = app
        .send(
            app.sign_in_request()
                .header("X-Supabase-Api-Version", "2024-01-01")
                .json(&json!({ "email": "nobody@example.com", "password": PASSWORD })),
        )
        .await;
    reply.expect(StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        json!({ "code": "invalid_credentials", "message": "Invalid login credentials" })
    );
    assert_eq!(reply.headers["x-supabase-api-version"], "2024-01-01");
    // Successful answers are unchanged but echo the header too.
    let ok = app
        .send(
            app.request(Method::GET, "/auth/v1/settings", None)
                .header("X-Supabase-Api-Version", "2024-01-01"),
        )
        .await;
    ok.expect(StatusCode::OK);
    assert_eq!(ok.headers["x-supabase-api-version"], "2024-01-01");
}

/// The embedded default keeps SQLite in write-ahead-log mode (readers never block the writer).
#[tokio::test]
async fn sqlite_runs_in_wal_mode() {
    let app = TestApp::start(Backend::Sqlite).await;
    let mode = app.raw_rows("PRAGMA journal_mode").await;
    assert_eq!(mode[0][0].as_deref(), Some("wal"));
    let fk = app.raw_rows("PRAGMA foreign_keys").await;
    assert_eq!(fk[0][0].as_deref(), Some("1"));
}
