//! Devices, revocation, the audit log and the sessions table, including cross-user isolation.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, TestApp, access_token, refresh_token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

backend_tests! {
    devices_are_listed_with_the_current_one_marked,
    devices_from_headers_and_made_up_devices,
    device_can_be_renamed,
    revoked_device_is_refused_on_its_next_request,
    a_device_cannot_revoke_itself,
    users_never_see_or_touch_each_others_rows,
    audit_log_records_the_security_events,
    rest_queries_follow_postgrest,
    errors_take_the_shape_of_their_route_prefix,
}

fn ids(rows: &Value) -> Vec<&str> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect()
}

async fn devices_are_listed_with_the_current_one_marked(backend: Backend) {
    let app = TestApp::start(backend).await;
    let laptop = app.signup("ada@example.com", "laptop").await;
    app.sign_in("ada@example.com", "desktop").await;
    app.sign_in("ada@example.com", "laptop").await; // same device again: not a new row
    let reply = app.get_as("/rest/v1/devices?order=id", &laptop).await;
    reply.expect(StatusCode::OK);
    assert_eq!(ids(&reply.body), ["desktop", "laptop"]);
    let rows = reply.body.as_array().unwrap();
    assert_eq!(rows[1]["current"], true);
    assert_eq!(rows[0]["current"], false);
    assert_eq!(rows[1]["name"], "Device laptop");
    assert_eq!(rows[1]["platform"], "linux");
    assert_eq!(rows[1]["app_version"], "0.1.0");
    assert!(rows[1]["last_seen_at"].is_string());
    assert_eq!(rows[1]["user_id"], laptop["user"]["id"]);
    assert_eq!(reply.headers["content-range"], "0-1/*");
}

async fn devices_from_headers_and_made_up_devices(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.signup("ada@example.com", "laptop").await;
    let by_headers = app
        .send(
            app.sign_in_request()
                .header("X-Lockstep-Device-Id", "web-1")
                .header("X-Lockstep-Device-Name", "Ada%E2%80%99s%20browser")
                .header("X-Lockstep-Device-Platform", "web")
                .json(&json!({ "email": "ada@example.com", "password": common::PASSWORD })),
        )
        .await;
    by_headers.expect(StatusCode::OK);
    let anonymous = app
        .send(
            app.sign_in_request()
                .header("User-Agent", "curl/8")
                .json(&json!({ "email": "ada@example.com", "password": common::PASSWORD })),
        )
        .await;
    anonymous.expect(StatusCode::OK);
    let devices = app.get_as("/rest/v1/devices", &by_headers.body).await;
    let rows = devices.body.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let web = rows.iter().find(|r| r["id"] == "web-1").unwrap();
    assert_eq!(web["name"], "Ada’s browser");
    assert_eq!(web["platform"], "web");
    assert!(
        rows.iter()
            .any(|r| r["name"] == "curl/8" && r["platform"] == "unknown")
    );
}

async fn device_can_be_renamed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let s = app.signup("ada@example.com", "laptop").await;
    app.sign_in("ada@example.com", "desktop").await;
    let token = access_token(&s);
    let patch = |query: &str, body: Value| {
        app.send(
            app.request(
                Method::PATCH,
                &format!("/rest/v1/devices{query}"),
                Some(token),
            )
            .header("Prefer", "return=representation")
            .json(&body),
        )
    };
    let renamed = patch("?id=eq.desktop", json!({ "name": "  Home desktop " })).await;
    renamed.expect(StatusCode::OK);
    assert_eq!(renamed.body[0]["name"], "Home desktop");
    patch("?id=eq.desktop", json!({ "name": "" }))
        .await
        .expect_rest_error(StatusCode::BAD_REQUEST, "22023");
    patch("?id=eq.desktop", json!({ "name": 5 }))
        .await
        .expect_rest_error(StatusCode::BAD_REQUEST, "22023");
    patch("?id=eq.desktop", json!({ "platform": "mac" }))
        .await
        .expect_rest_error(StatusCode::BAD_REQUEST, "PGRST204");
    patch("", json!({ "name": "All of them" }))
        .await
        .expect_rest_error(StatusCode::BAD_REQUEST, "21000");
    let none = patch("?id=eq.nope", json!({ "name": "Ghost" })).await;
    none.expect(StatusCode::OK);
    assert_eq!(none.body, json!([]));
    let audit = app
        .get(
            "/rest/v1/audit_log_entries?action=eq.device_renamed",
            Some(token),
        )
        .await;
    assert_eq!(audit.body[0]["payload"]["new_name"], "Home desktop");
}

async fn revoked_device_is_refused_on_its_next_request(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let desktop_again = app.sign_in("ada@example.com", "desktop").await;
    app.expect_signed_in(&desktop).await;

    app.call_as(Method::DELETE, "/rest/v1/devices?id=eq.desktop", &laptop)
        .await
        .expect(StatusCode::NO_CONTENT);
    for s in [&desktop, &desktop_again] {
        app.expect_session_gone(s).await;
        app.get_as("/rest/v1/devices", s)
            .await
            .expect_rest_error(StatusCode::UNAUTHORIZED, "PGRST301");
        app.refresh(refresh_token(s))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "refresh_token_not_found");
    }
    // The revoking device keeps working and no longer lists the desktop.
    let devices = app.get_as("/rest/v1/devices", &laptop).await;
    assert_eq!(ids(&devices.body), ["laptop"]);
    let audit = app
        .get_as(
            "/rest/v1/audit_log_entries?action=eq.device_revoked",
            &laptop,
        )
        .await;
    assert_eq!(audit.body[0]["payload"]["device_id"], "desktop");
    assert_eq!(
        audit.body[0]["device_id"], "laptop",
        "the actor is recorded"
    );
    // Signing in again registers the device anew.
    app.sign_in("ada@example.com", "desktop").await;
}

async fn a_device_cannot_revoke_itself(backend: Backend) {
    let app = TestApp::start(backend).await;
    let laptop = app.signup("ada@example.com", "laptop").await;
    app.sign_in("ada@example.com", "desktop").await;
    let reply = app
        .send(app.request(
            Method::DELETE,
            "/rest/v1/devices?id=in.(laptop,desktop)",
            Some(access_token(&laptop)),
        ))
        .await;
    reply.expect_rest_error(StatusCode::BAD_REQUEST, "22023");
    assert!(reply.body["message"].as_str().unwrap().contains("logout"));
    // Nothing was revoked.
    assert_eq!(
        app.get_as("/rest/v1/devices", &laptop)
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    app.call_as(Method::DELETE, "/rest/v1/devices", &laptop)
        .await
        .expect_rest_error(StatusCode::BAD_REQUEST, "21000");
}

async fn users_never_see_or_touch_each_others_rows(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ada = app.signup("ada@example.com", "ada-laptop").await;
    let bob = app.signup("bob@example.com", "bob-laptop").await;
    let bob_token = access_token(&bob);
    let ada_id = ada["user"]["id"].as_str().unwrap();

    for table in ["devices", "audit_log_entries", "sessions"] {
        let all = app.get(&format!("/rest/v1/{table}"), Some(bob_token)).await;
        all.expect(StatusCode::OK);
        for row in all.body.as_array().unwrap() {
            assert_ne!(
                row.get("user_id").and_then(Value::as_str),
                Some(ada_id),
                "{table}: {row}"
            );
            assert_ne!(
                row.get("device_id").and_then(Value::as_str),
                Some("ada-laptop"),
                "{table}: {row}"
            );
        }
        // Filtering by Ada's id finds nothing rather than an error (RLS semantics).
        if table != "sessions" {
            let filtered = app
                .get(
                    &format!("/rest/v1/{table}?user_id=eq.{ada_id}"),
                    Some(bob_token),
                )
                .await;
            assert_eq!(filtered.body, json!([]), "{table}");
        }
    }
    // Bob cannot rename or revoke Ada's device: his filter matches none of his rows.
    app.send(
        app.request(
            Method::PATCH,
            "/rest/v1/devices?id=eq.ada-laptop",
            Some(bob_token),
        )
        .json(&json!({ "name": "pwned" })),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call_as(Method::DELETE, "/rest/v1/devices?id=eq.ada-laptop", &bob)
        .await
        .expect(StatusCode::NO_CONTENT);
    let ada_devices = app.get_as("/rest/v1/devices", &ada).await;
    assert_eq!(ada_devices.body[0]["name"], "Device ada-laptop");
    app.expect_signed_in(&ada).await;
    // Bob's sign-out of "others" does not reach Ada.
    app.call_as(Method::POST, "/auth/v1/logout?scope=global", &bob)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.expect_signed_in(&ada).await;
    // A token for Ada's session with Bob's subject cannot be made without the secret; and
    // Ada's own rows stay hers.
    let sessions = app.get_as("/rest/v1/sessions", &ada).await;
    assert_eq!(sessions.body.as_array().unwrap().len(), 1);
    assert_eq!(sessions.body[0]["current"], true);
    assert!(
        !sessions.text.contains(refresh_token(&ada)),
        "sessions never expose tokens"
    );
    let columns: Vec<&String> = sessions.body[0].as_object().unwrap().keys().collect();
    assert!(
        !columns
            .iter()
            .any(|c| c.contains("token") || c.contains("salt")),
        "{columns:?}"
    );
}

async fn audit_log_records_the_security_events(backend: Backend) {
    let app = TestApp::start(backend).await;
    let laptop = app.signup("ada@example.com", "laptop").await;
    app.sign_in_reply("ada@example.com", "Wrong password 1", "desktop")
        .await
        .expect(StatusCode::BAD_REQUEST);
    let desktop = app.sign_in("ada@example.com", "desktop").await;
    app.call_as(Method::POST, "/auth/v1/logout", &desktop)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.open_latest_link("ada@example.com").await;

    let log = app
        .get_as("/rest/v1/audit_log_entries?order=created_at.asc", &laptop)
        .await;
    log.expect(StatusCode::OK);
    let actions: Vec<&str> = log
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "user_signed_up",
        "device_registered",
        "login",
        "login_failed",
        "logout",
        "email_verified",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "device_registered")
            .count(),
        2
    );
    let failed = log
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "login_failed")
        .unwrap();
    assert_eq!(failed["ip_address"], "127.0.0.1");
    assert!(
        failed["device_id"].is_null() && failed["device_name"].is_null(),
        "a failed sign-in's device is the caller's claim, not recorded: {failed}"
    );
    assert!(
        !log.text.contains(common::PASSWORD) && !log.text.contains("Wrong password"),
        "no secrets in the log"
    );
}

async fn rest_queries_follow_postgrest(backend: Backend) {
    let app = TestApp::start(backend).await;
    let s = app.signup("ada@example.com", "laptop").await;
    app.sign_in("ada@example.com", "desktop").await;
    let token = access_token(&s);
    let one = app
        .send(
            app.request(
                Method::GET,
                "/rest/v1/devices?id=eq.laptop&select=id,name",
                Some(token),
            )
            .header("Accept", "application/vnd.pgrst.object+json"),
        )
        .await;
    one.expect(StatusCode::OK);
    assert_eq!(one.body, json!({ "id": "laptop", "name": "Device laptop" }));
    app.send(
        app.request(Method::GET, "/rest/v1/devices", Some(token))
            .header("Accept", "application/vnd.pgrst.object+json"),
    )
    .await
    .expect_rest_error(StatusCode::NOT_ACCEPTABLE, "PGRST116");
    for (path, status, code) in [
        (
            "/rest/v1/devices?name=fuzzy.x",
            StatusCode::BAD_REQUEST,
            "PGRST100",
        ),
        (
            "/rest/v1/devices?password=eq.x",
            StatusCode::BAD_REQUEST,
            "42703",
        ),
        (
            "/rest/v1/devices?limit=ten",
            StatusCode::BAD_REQUEST,
            "PGRST100",
        ),
        ("/rest/v1/secrets", StatusCode::NOT_FOUND, "PGRST205"),
    ] {
        app.get(path, Some(token))
            .await
            .expect_rest_error(status, code);
    }
    app.get("/rest/v1/devices", None)
        .await
        .expect_rest_error(StatusCode::UNAUTHORIZED, "PGRST302");
    let limited = app
        .get("/rest/v1/devices?order=id.desc&limit=1", Some(token))
        .await;
    assert_eq!(ids(&limited.body), ["laptop"]);
}

/// Every refusal, wherever it is raised (a middleware in front of all routes, an extractor, a
/// handler), is answered in the shape of its prefix: PostgREST's under `/rest/v1`, GoTrue's under
/// `/auth/v1` (its 2024 shape when asked for) and under the stream.
async fn errors_take_the_shape_of_their_route_prefix(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.max_body_bytes = 4096).await;
    let s = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&s);
    let url = |path: &str| format!("{}{path}", app.url);
    let big = json!({ "key": "custom.big", "value": "x".repeat(8192) });
    let version_2024 = ("X-Supabase-Api-Version", "2024-01-01");

    // No apikey: refused in front of every route.
    app.send(app.http.get(url("/rest/v1/devices")))
        .await
        .expect_rest_error(StatusCode::UNAUTHORIZED, "no_api_key");
    app.send(app.http.get(url("/auth/v1/user")))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "no_api_key");
    let reply = app
        .send(
            app.http
                .get(url("/auth/v1/user"))
                .header(version_2024.0, version_2024.1),
        )
        .await;
    reply.expect(StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["code"], "no_api_key", "{}", reply.text);
    assert!(reply.body["message"].is_string(), "{}", reply.text);
    assert_eq!(reply.headers[version_2024.0], version_2024.1);

    // A body over the limit: refused before any handler runs.
    app.send(
        app.request(Method::POST, "/rest/v1/user_settings", Some(token))
            .json(&big),
    )
    .await
    .expect_rest_error(StatusCode::PAYLOAD_TOO_LARGE, "PGRST102");
    let reply = app
        .send(
            app.request(Method::PUT, "/auth/v1/user", Some(token))
                .header(version_2024.0, version_2024.1)
                .json(&big),
        )
        .await;
    reply.expect(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["code"], "request_too_large", "{}", reply.text);

    // A token that is not one: refused by the extractor, in each prefix's words.
    app.get("/rest/v1/devices", Some("not-a-jwt"))
        .await
        .expect_rest_error(StatusCode::UNAUTHORIZED, "PGRST301");
    app.get("/auth/v1/user", Some("not-a-jwt"))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "bad_jwt");
    app.get("/realtime/v1/sse", Some("not-a-jwt"))
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "bad_jwt");

    // An ended session: PostgREST's PGRST301, its details saying the session ended.
    app.call(Method::POST, "/auth/v1/logout", Some(token))
        .await
        .expect(StatusCode::NO_CONTENT);
    let reply = app.get("/rest/v1/devices", Some(token)).await;
    reply.expect_rest_error(StatusCode::UNAUTHORIZED, "PGRST301");
    assert_eq!(reply.body["details"], "session_not_found", "{}", reply.text);
}
