//! Rate limits and malformed input: every bad request gets a 4xx that names the problem, never a
//! 5xx or a dropped connection.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, PASSWORD, TestApp, access_token, hlc_at};
use lockstep_cloud::config::Limit;
use reqwest::{Method, StatusCode};
use serde_json::json;
use time::Duration;

backend_tests! {
    failed_sign_ins_lock_the_account_for_a_while,
    failed_sign_ins_are_limited_per_ip,
    verify_signup_and_email_sending_are_limited_per_ip,
    malformed_bodies_get_clear_4xx_answers,
    oversized_and_mistyped_requests_are_refused,
    unknown_routes_and_methods_answer_json,
    a_burst_of_wrong_passwords_for_one_account_gets_no_more_checks_than_its_limit,
    a_burst_of_wrong_passwords_from_one_ip_gets_no_more_checks_than_its_limit,
    a_burst_of_wrong_emailed_codes_gets_no_more_checks_than_the_limit,
    a_saturated_password_queue_answers_503_with_retry_after_and_others_are_served,
    one_ip_flooding_the_password_hashers_does_not_starve_another,
    a_recovery_link_never_carries_tokens_to_a_look_alike_host,
    a_spoofed_x_forwarded_for_does_not_escape_the_ip_limit,
    what_is_accepted_at_the_nesting_limit_always_reads_back,
    nul_characters_in_keys_ids_filters_and_values_get_a_4xx,
    email_change_mails_are_limited_like_resends,
    one_users_clock_ahead_does_not_move_another_users_server_stamps,
    pathological_like_filters_are_bounded_and_answered,
    streams_past_the_caps_close_the_oldest_with_a_reason,
    one_user_runs_at_most_their_share_of_requests_at_once,
    a_saturated_database_pool_answers_503_with_retry_after,
}

/// Sends `n` sign-ins at once, the `i`th with the email and password `attempt(i)` gives.
async fn sign_in_burst(
    app: &TestApp,
    n: usize,
    attempt: impl Fn(usize) -> (String, String),
) -> Vec<common::Reply> {
    let burst = (0..n).map(|i| {
        let (email, password) = attempt(i);
        async move { app.sign_in_reply(&email, &password, "x").await }
    });
    futures::future::join_all(burst).await
}

async fn a_burst_of_wrong_passwords_for_one_account_gets_no_more_checks_than_its_limit(
    backend: Backend,
) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.sign_in_failures_per_account = Limit::new(10, 900);
        c.rate_limits.sign_in_failures_per_ip = Limit::new(10_000, 300);
        c.password_queue_per_ip = 100; // the limit alone decides what is checked
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    let burst = sign_in_burst(&app, 40, |i| {
        ("ada@example.com".into(), format!("Wrong password {i}"))
    });
    let counts = common::tally(&burst.await);
    common::assert_counts(
        &counts,
        &[
            (400, "invalid_credentials", 10),
            (429, "over_request_rate_limit", 30),
        ],
    );
}

async fn a_burst_of_wrong_passwords_from_one_ip_gets_no_more_checks_than_its_limit(
    backend: Backend,
) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.sign_in_failures_per_ip = Limit::new(30, 300);
        c.password_queue_per_ip = 100; // the limit alone decides what is checked
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    let burst = sign_in_burst(&app, 60, |i| {
        (format!("guess{i}@example.com"), PASSWORD.into())
    });
    let counts = common::tally(&burst.await);
    common::assert_counts(
        &counts,
        &[
            (400, "invalid_credentials", 30),
            (429, "over_request_rate_limit", 30),
        ],
    );
    // A success is refunded: it never uses up the limit of the people who type correctly.
    app.clock.advance(Duration::seconds(301));
    for _ in 0..40 {
        app.sign_in("ada@example.com", "x").await;
    }
}

async fn a_burst_of_wrong_emailed_codes_gets_no_more_checks_than_the_limit(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.code_failures_per_account = Limit::new(5, 900);
        c.rate_limits.verify_per_ip = Limit::new(10_000, 300);
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    let burst = app.post_burst(40, "/auth/v1/verify", None, |i| {
        json!({ "type": "signup", "email": "ada@example.com", "token": format!("{:06}", 100_000 + i) })
    });
    let counts = common::tally(&burst.await);
    let checked: usize = counts
        .iter()
        .filter(|((status, _), _)| *status != 429)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(checked, 5, "{counts:?}");
    common::assert_counts(&counts, &[(429, "over_request_rate_limit", 35)]);
}

/// One hasher, a queue of two: a burst of sign-ins beyond that is answered 503 with
/// Retry-After at once (none waits, none is a 500), and the server keeps serving.
async fn a_saturated_password_queue_answers_503_with_retry_after_and_others_are_served(
    backend: Backend,
) {
    let app = TestApp::start_with(backend, |c| {
        c.password_hash_threads = Some(1);
        c.password_queue = 2;
        c.rate_limits.sign_in_failures_per_ip = Limit::new(10_000, 300);
        c.rate_limits.sign_in_failures_per_account = Limit::new(10_000, 300);
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    let replies = sign_in_burst(&app, 30, |i| {
        (format!("guess{i}@example.com"), PASSWORD.into())
    })
    .await;
    let counts = common::tally(&replies);
    let busy = common::count(&counts, 503, "request_timeout").unwrap_or(0);
    assert!(busy > 0, "{counts:?}");
    assert_eq!(
        busy + common::count(&counts, 400, "invalid_credentials").unwrap_or(0),
        30,
        "only wrong-password or busy answers: {counts:?}"
    );
    for reply in replies.iter().filter(|r| r.status.as_u16() == 503) {
        let retry: u64 = reply.retry_after();
        assert!(retry >= 1);
    }
    app.get("/auth/v1/health", None)
        .await
        .expect(StatusCode::OK);
    app.sign_in("ada@example.com", "x").await;
}

/// One IP keeps the hashers flooded with wrong sign-ins (its limits raised, so each one is
/// hashed) while another IP signs in. The other IP's check waits for at most a few of the
/// flood's (the hashers take waiting IPs in turn), not for the whole queue in front of it, and
/// the flood past its share of the queue is told to wait (429 with `Retry-After`). Counted in
/// checks, not in seconds: how many of the flood's passwords were checked while Bob waited.
async fn one_ip_flooding_the_password_hashers_does_not_starve_another(backend: Backend) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let app = TestApp::start_with(backend, |c| {
        c.password_hash_threads = Some(1);
        c.password_queue = 250;
        c.password_wait_seconds = 30;
        c.rate_limits.sign_in_failures_per_ip = Limit::new(1_000_000, 300);
        c.rate_limits.sign_in_failures_per_account = Limit::new(1_000_000, 300);
    })
    .await;
    app.signup("bob@example.com", "laptop").await;
    let app = &app;
    let (checked, told_to_wait, stop) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicBool::new(false),
    );
    let (checked, told_to_wait, stop) = (&checked, &told_to_wait, &stop);
    let flood = futures::future::join_all((0..150).map(|i| async move {
        while !stop.load(Ordering::SeqCst) {
            let reply = app
                .sign_in_reply(&format!("guess{i}@example.com"), "Wrong password 1", "x")
                .await;
            match reply.status.as_u16() {
                400 => {
                    checked.fetch_add(1, Ordering::SeqCst);
                }
                429 => {
                    assert!(reply.headers.contains_key("retry-after"));
                    told_to_wait.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => panic!("the flood got {other}: {}", reply.text),
            }
        }
    }));
    let bob = async {
        // Wait until the flood keeps the hasher busy.
        while checked.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let other_ip = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        // Connected before counting (keep-alive), so the count is about the queue.
        other_ip
            .get(format!("{}/health", app.url))
            .send()
            .await
            .unwrap();
        let before = checked.load(Ordering::SeqCst);
        let reply = other_ip
            .post(format!("{}/auth/v1/token?grant_type=password", app.url))
            .header("apikey", &app.anon_key)
            .json(&json!({ "email": "bob@example.com", "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        let waited_for = checked.load(Ordering::SeqCst) - before;
        stop.store(true, Ordering::SeqCst);
        (reply.status(), waited_for)
    };
    let (_, (bob_status, waited_for)) = tokio::join!(flood, bob);
    assert_eq!(
        bob_status,
        StatusCode::OK,
        "the other IP's sign-in is served"
    );
    // First come, first served, Bob would wait for every one of the ~150 the flood keeps
    // queued; in turn, for about one (plus what is checked while his request reaches the
    // queue: connecting, the account lookup).
    assert!(
        waited_for < 40,
        "Bob waited while {waited_for} of the flood's passwords were checked"
    );
    assert!(
        told_to_wait.load(Ordering::SeqCst) > 0,
        "past its share the flood is refused"
    );
}

async fn failed_sign_ins_lock_the_account_for_a_while(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.sign_in_failures_per_account = Limit::new(3, 60);
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    app.signup("bob@example.com", "laptop").await;
    for _ in 0..3 {
        app.sign_in_reply("ada@example.com", "Wrong password 1", "x")
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_credentials");
    }
    // Even the right password is refused while the account is locked.
    let locked = app.sign_in_reply("ada@example.com", PASSWORD, "x").await;
    locked.expect_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");
    let retry: u64 = locked.retry_after();
    assert!((1..=60).contains(&retry), "{retry}");
    // Other accounts from the same address are unaffected.
    app.sign_in("bob@example.com", "x").await;
    app.clock.advance(Duration::seconds(61));
    app.sign_in("ada@example.com", "x").await;
}

async fn failed_sign_ins_are_limited_per_ip(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.sign_in_failures_per_ip = Limit::new(4, 300);
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    for i in 0..4 {
        app.sign_in_reply(&format!("guess{i}@example.com"), PASSWORD, "x")
            .await
            .expect(StatusCode::BAD_REQUEST);
    }
    app.sign_in_reply("ada@example.com", PASSWORD, "x")
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");
    app.clock.advance(Duration::seconds(301));
    app.sign_in("ada@example.com", "x").await;
}

async fn verify_signup_and_email_sending_are_limited_per_ip(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.verify_per_ip = Limit::new(3, 60);
        c.rate_limits.signups_per_ip = Limit::new(2, 3600);
        c.rate_limits.emails_per_ip = Limit::new(2, 3600);
    })
    .await;
    for _ in 0..3 {
        app.post(
            "/auth/v1/verify",
            None,
            json!({ "type": "signup", "token_hash": "guess" }),
        )
        .await
        .expect_error(StatusCode::FORBIDDEN, "otp_expired");
    }
    app.post(
        "/auth/v1/verify",
        None,
        json!({ "type": "signup", "token_hash": "guess" }),
    )
    .await
    .expect_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");

    app.signup("a@example.com", "x").await;
    app.signup("b@example.com", "x").await;
    app.signup_reply("c@example.com", PASSWORD)
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");

    for email in ["x@example.com", "y@example.com"] {
        app.recover_reply("", email).await.expect(StatusCode::OK);
    }
    app.recover_reply("", "z@example.com")
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "over_email_send_rate_limit");
}

/// Every (method, path) that takes a JSON body, with a valid token where one is needed.
async fn body_endpoints(app: &TestApp) -> Vec<(Method, String, Option<String>)> {
    let session = app.signup("ada@example.com", "laptop").await;
    let token = Some(access_token(&session).to_owned());
    vec![
        (Method::POST, "/auth/v1/signup".into(), None),
        (
            Method::POST,
            "/auth/v1/token?grant_type=password".into(),
            None,
        ),
        (
            Method::POST,
            "/auth/v1/token?grant_type=refresh_token".into(),
            None,
        ),
        (Method::POST, "/auth/v1/verify".into(), None),
        (Method::POST, "/auth/v1/resend".into(), None),
        (Method::POST, "/auth/v1/recover".into(), None),
        (Method::PUT, "/auth/v1/user".into(), token.clone()),
        (Method::PATCH, "/rest/v1/devices?id=eq.laptop".into(), token),
    ]
}

async fn malformed_bodies_get_clear_4xx_answers(backend: Backend) {
    let app = TestApp::start(backend).await;
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"42".to_vec(),
        b"\"text\"".to_vec(),
        br#"{"email": 5, "password": ["x"]}"#.to_vec(),
        br#"{"email": ["a@example.com"], "password": "Pass\u0000word 1", "type": 7, "device": "laptop"}"#.to_vec(),
        br#"{"refresh_token": {"nested": true}}"#.to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        nested.into_bytes(),
    ];
    for (method, path, token) in body_endpoints(&app).await {
        for body in &bodies {
            let reply = app
                .send(
                    app.request(method.clone(), &path, token.as_deref())
                        .header("content-type", "application/json")
                        .body(body.clone()),
                )
                .await;
            let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
            assert!(
                reply.status.is_client_error(),
                "{method} {path} {shown:?} → {} {}",
                reply.status,
                reply.text
            );
            let message = reply
                .body
                .get("msg")
                .or(reply.body.get("message"))
                .or(reply.body.get("error_description"));
            assert!(
                message
                    .and_then(|m| m.as_str())
                    .is_some_and(|m| !m.is_empty()),
                "{method} {path} {shown:?}: {}",
                reply.text
            );
        }
    }
    // The server is still healthy afterwards.
    app.get("/health", None).await.expect(StatusCode::OK);
}

async fn oversized_and_mistyped_requests_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let huge = json!({ "email": "a@example.com", "password": "x".repeat(300 * 1024) });
    app.post("/auth/v1/signup", None, huge)
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large");
    let long_password = app
        .signup_reply("a@example.com", &format!("Aa1{}", "x".repeat(300)))
        .await;
    long_password.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "weak_password");
    let form = app
        .send(
            app.request(Method::POST, "/auth/v1/signup", None)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("email=a%40example.com&password=x"),
        )
        .await;
    form.expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    // `curl -d '{…}'` labels JSON as a form; JSON is JSON whatever the label.
    let curl_d = app
        .send(
            app.sign_in_request()
                .header("content-type", "application/x-www-form-urlencoded")
                .body(json!({ "email": "nobody@example.com", "password": PASSWORD }).to_string()),
        )
        .await;
    curl_d.expect_error(StatusCode::BAD_REQUEST, "invalid_credentials");
    // No Content-Type at all is fine too.
    let bare = app
        .send(
            app.request(Method::POST, "/auth/v1/signup", None)
                .body(json!({ "email": "a@example.com", "password": PASSWORD }).to_string()),
        )
        .await;
    bare.expect(StatusCode::OK);
    let bad_header = app
        .send(
            app.sign_in_request()
                .header("X-Lockstep-Device-Id", "d1")
                .header("X-Lockstep-Device-Name", "%FF%FE")
                .json(&json!({ "email": "a@example.com", "password": PASSWORD })),
        )
        .await;
    bad_header.expect_error(StatusCode::BAD_REQUEST, "validation_failed");
    let garbage_query = app
        .get_as("/rest/v1/devices?id=eq.%ZZ&order=%", &bare.body)
        .await;
    assert!(
        garbage_query.status.is_client_error() || garbage_query.status.is_success(),
        "{}",
        garbage_query.text
    );
}

async fn unknown_routes_and_methods_answer_json(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.get("/auth/v1/nothing-here", None)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    app.get("/nothing", None)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    app.call(Method::DELETE, "/auth/v1/signup", None)
        .await
        .expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

/// Asks for Ada's recovery link with this (encoded) `redirect_to` and opens it: where it lands.
async fn land_from_recovery(app: &TestApp, redirect_to: &str) -> String {
    app.recover_reply(&format!("?redirect_to={redirect_to}"), "ada@example.com")
        .await
        .expect(StatusCode::OK);
    app.open_latest_link("ada@example.com").await
}

/// A site URL and an allow-list entry without a trailing slash: look-alike targets that start
/// with the same characters get the site URL instead, so the tokens in a recovery link's
/// fragment never reach another host.
async fn a_recovery_link_never_carries_tokens_to_a_look_alike_host(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.site_url = Some("http://localhost:3000".into());
        c.redirect_allow_list = vec!["http://127.0.0.1:4000".into()];
        c.rate_limits.emails_per_ip = Limit::new(1000, 3600);
        c.rate_limits.email_interval_seconds = 0;
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    for evil in [
        "http://localhost:3000@evil.example/",
        "http://localhost:3000.evil.example/",
        "http://127.0.0.1:4000@evil.example/",
        "http://127.0.0.1:40001/",
        "http://user:pw@localhost:3000/",
    ] {
        let landed = land_from_recovery(&app, &common::urlencoding(evil)).await;
        let target = reqwest::Url::parse(&landed).unwrap();
        assert_eq!(
            (target.host_str(), target.port(), target.username()),
            (Some("localhost"), Some(3000), ""),
            "{evil} landed on {landed}"
        );
        assert!(
            landed.contains("access_token="),
            "a recovery link signs in: {landed}"
        );
    }
    let landed = land_from_recovery(&app, "http%3A%2F%2F127.0.0.1%3A4000%2Freset").await;
    assert!(
        landed.starts_with("http://127.0.0.1:4000/reset#"),
        "{landed}"
    );
}

/// Behind one trusted proxy, an attacker who writes their own `X-Forwarded-For` entries is
/// still limited by the address the proxy appended.
async fn a_spoofed_x_forwarded_for_does_not_escape_the_ip_limit(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.trusted_proxies = 1;
        c.rate_limits.sign_in_failures_per_ip = Limit::new(3, 300);
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    let attempt = |spoof: String| {
        let req = app
            .sign_in_request()
            .header("x-forwarded-for", format!("{spoof}, 198.51.100.9"))
            .json(&json!({ "email": "nobody@example.com", "password": "Wrong password 1" }));
        app.send(req)
    };
    for i in 0..3 {
        attempt(format!("10.0.0.{i}"))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_credentials");
    }
    attempt("10.0.0.99".into())
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");
    // Another client behind the same proxy is its own address.
    let other = app
        .sign_in_request()
        .header("x-forwarded-for", "198.51.100.10")
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }));
    app.send(other).await.expect(StatusCode::OK);
}

fn nested(depth: usize) -> serde_json::Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = json!([value]);
    }
    value
}

/// Deeply nested values are refused up front; the deepest accepted one still reads back
/// through the REST read, the change feed and a stream replay.
async fn what_is_accepted_at_the_nesting_limit_always_reads_back(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let hlc = common::hlc_at(&app, 0, 0);
    let too_deep = app
        .push(
            token,
            "deep",
            json!([{ "key": "custom.deep", "value": nested(126), "hlc": hlc }]),
        )
        .await;
    too_deep.expect(StatusCode::BAD_REQUEST);
    assert!(too_deep.text.contains("nests"), "{}", too_deep.text);
    let metadata = app
        .request(Method::PUT, "/auth/v1/user", Some(token))
        .json(&json!({ "data": { "x": nested(126) } }));
    app.send(metadata).await.expect(StatusCode::BAD_REQUEST);

    // The deepest a value can be inside a push's envelope (changes → [ → { → value).
    let limit = lockstep_cloud::extract::MAX_JSON_DEPTH - 3;
    app.push(
        token,
        "deepest",
        json!([{ "key": "custom.deep", "value": nested(limit), "hlc": hlc }]),
    )
    .await
    .expect(StatusCode::OK);
    let read = app
        .get("/rest/v1/user_settings?key=eq.custom.deep", Some(token))
        .await;
    read.expect(StatusCode::OK);
    assert_eq!(read.body[0]["value"], nested(limit));
    app.get("/rest/v1/rpc/changes?since=0", Some(token))
        .await
        .expect(StatusCode::OK);
    let mut feed = app.stream(token, Some(0)).await;
    feed.ready().await;
}

/// PostgreSQL refuses NUL in text; both backends now answer 400 before any query runs.
async fn nul_characters_in_keys_ids_filters_and_values_get_a_4xx(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let hlc = common::hlc_at(&app, 0, 0);
    for changes in [
        json!([{ "key": "custom.a\u{0}b", "value": 1, "hlc": hlc }]),
        json!([{ "key": "custom.a", "value": "x\u{0}y", "hlc": hlc }]),
    ] {
        let reply = app.push(token, "nul", changes).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
        assert!(reply.text.contains("NUL"), "{}", reply.text);
    }
    for path in [
        "/rest/v1/user_settings?key=eq.custom.a%00b",
        "/auth/v1/factors/abc%00def",
    ] {
        let reply = app.get(path, Some(token)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.text
        );
    }
    for path in [
        "/auth/v1/factors/abc%00def/challenge",
        "/auth/v1/factors/abc%00def/verify",
    ] {
        let reply = app
            .post(
                path,
                Some(token),
                json!({ "challenge_id": "x", "code": "1" }),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.text
        );
    }
    let metadata = app
        .request(Method::PUT, "/auth/v1/user", Some(token))
        .json(&json!({ "data": { "name": "a\u{0}" } }));
    app.send(metadata).await.expect(StatusCode::BAD_REQUEST);
    app.get("/rest/v1/user_settings", Some(token))
        .await
        .expect(StatusCode::OK);
}

/// Asking again and again to move the address to a third party's mails them once per
/// interval, and no more than the per-IP mail limit.
async fn email_change_mails_are_limited_like_resends(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.emails_per_ip = Limit::new(3, 3600);
        c.rate_limits.email_interval_seconds = 60;
    })
    .await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let change = |to: &str| {
        app.send(
            app.request(Method::PUT, "/auth/v1/user", Some(token))
                .json(&json!({ "email": to })),
        )
    };
    change("victim@example.com").await.expect(StatusCode::OK);
    let again = change("victim@example.com").await;
    again.expect_error(StatusCode::TOO_MANY_REQUESTS, "over_email_send_rate_limit");
    assert!(again.headers.contains_key("retry-after"));
    assert_eq!(
        app.mailbox("victim@example.com").await.len(),
        1,
        "one mail per interval"
    );
    app.clock.advance(Duration::seconds(61));
    change("victim@example.com").await.expect(StatusCode::OK);
    assert_eq!(app.mailbox("victim@example.com").await.len(), 2);
    // Three requests from this IP within the hour: the fourth is refused whatever the interval.
    app.clock.advance(Duration::seconds(61));
    change("victim@example.com")
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "over_email_send_rate_limit");
    assert_eq!(app.mailbox("victim@example.com").await.len(), 2);
}

/// Ada's device runs 55 s ahead (within the allowed skew); the server's stamps for Bob's
/// REST writes stay on the server's clock, while Ada's own later writes still order after hers.
async fn one_users_clock_ahead_does_not_move_another_users_server_stamps(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ada = app.signup("ada@example.com", "laptop").await;
    let bob = app.signup("bob@example.com", "laptop").await;
    let ahead = common::hlc_at(&app, 55_000, 0);
    let app = &app;
    app.push(
        access_token(&ada),
        "ahead",
        json!([{ "key": "appearance.theme", "value": "dark", "hlc": ahead }]),
    )
    .await
    .expect(StatusCode::OK);
    let write = |token: &str, value: &str| {
        app.send(
            app.request(Method::POST, "/rest/v1/user_settings", Some(token))
                .header("Prefer", "resolution=merge-duplicates")
                .json(&json!({ "key": "custom.accent", "value": value })),
        )
    };
    write(access_token(&bob), "red")
        .await
        .expect(StatusCode::CREATED);
    write(access_token(&ada), "blue")
        .await
        .expect(StatusCode::CREATED);
    let millis = |token: &str| {
        let token = token.to_owned();
        async move {
            let rows = app
                .get("/rest/v1/user_settings?key=eq.custom.accent", Some(&token))
                .await;
            let hlc = rows.body[0]["hlc"].as_str().unwrap().to_owned();
            hlc.split('-').next().unwrap().parse::<i64>().unwrap()
        }
    };
    let now = lockstep_cloud::clock::to_millis(lockstep_cloud::clock::Clock::now(&app.clock));
    let bob_ms = millis(access_token(&bob)).await;
    assert!(
        bob_ms < now + 1_000,
        "Bob's stamp follows the server clock: {bob_ms} vs {now}"
    );
    let ada_ms = millis(access_token(&ada)).await;
    assert!(
        ada_ms >= now + 55_000,
        "Ada's own clock moved on: {ada_ms} vs {now}"
    );
}

/// `like`/`ilike` over a user's own large values: a pattern past the cap is refused with a
/// message naming it; one at the cap, built to make a backtracking matcher take text × pattern
/// steps per row, is answered correctly while the server keeps answering others.
async fn pathological_like_filters_are_bounded_and_answered(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let token = access_token(&session);
    let hlc = common::hlc_at(&app, 0, 0);
    let long = "a".repeat(15_000);
    for batch in 0..2 {
        let changes: Vec<_> = (0..10)
            .map(|i| json!({ "key": format!("custom.big{batch}x{i}"), "value": long, "hlc": hlc }))
            .collect();
        app.push(token, &format!("big{batch}"), json!(changes))
            .await
            .expect(StatusCode::OK);
    }
    let over = common::urlencoding(&format!("%{}", "a".repeat(256)));
    app.get(
        &format!("/rest/v1/user_settings?value=ilike.{over}"),
        Some(token),
    )
    .await
    .expect_rest_error(StatusCode::BAD_REQUEST, "PGRST100");
    let at_cap = common::urlencoding(&format!("{}b", "%a".repeat(127)));
    let filter = |pattern: String| {
        let path = format!("/rest/v1/user_settings?select=key&value=ilike.{pattern}");
        let app = &app;
        async move { app.get(&path, Some(token)).await }
    };
    let (first, second, health) = tokio::join!(
        filter(at_cap.clone()),
        filter(at_cap),
        app.get("/health", None)
    );
    for reply in [&first, &second] {
        reply.expect(StatusCode::OK);
        assert_eq!(reply.body, json!([]), "no value ends in b");
    }
    health.expect(StatusCode::OK);
    let matching = filter(common::urlencoding(&format!("{}a", "%a".repeat(127)))).await;
    matching.expect(StatusCode::OK);
    assert_eq!(matching.body.as_array().unwrap().len(), 20);
}

/// A flood of streams from one account: each session keeps its newest
/// `max_streams_per_session`, the account its newest `max_streams_per_user`; the oldest end
/// with `event: session` `too_many_streams` and the rest still get every change.
async fn streams_past_the_caps_close_the_oldest_with_a_reason(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.max_streams_per_session = 2;
        c.max_streams_per_user = 3;
    })
    .await;
    let (laptop, desktop) = app.ada_on_two_devices().await;
    let bob = app.signup("bob@example.com", "laptop").await;
    let ended = |reason: &str| {
        let data: serde_json::Value = serde_json::from_str(reason).unwrap();
        data["reason"].as_str().unwrap().to_owned()
    };
    let mut bobs = app.ready_stream(&bob).await;
    let mut laptop_streams = Vec::new();
    for _ in 0..3 {
        let feed = app.ready_stream(&laptop).await;
        laptop_streams.push(feed);
    }
    // The laptop's first stream made room for its third.
    let oldest = laptop_streams.remove(0);
    let mut oldest = oldest;
    assert_eq!(
        ended(&oldest.next_of("session").await.data),
        "too_many_streams"
    );
    assert!(oldest.next().await.is_none(), "the stream ends there");
    // Two more from the desktop: the account holds four, so its oldest (the laptop's) goes.
    let mut desktop_streams = Vec::new();
    for _ in 0..2 {
        let feed = app.ready_stream(&desktop).await;
        desktop_streams.push(feed);
    }
    let mut second = laptop_streams.remove(0);
    assert_eq!(
        ended(&second.next_of("session").await.data),
        "too_many_streams"
    );
    let hlc = common::hlc_at(&app, 0, 0);
    app.push(
        access_token(&desktop),
        "after-flood",
        json!([{ "key": "appearance.theme", "value": "dark", "hlc": hlc }]),
    )
    .await
    .expect(StatusCode::OK);
    for feed in laptop_streams.iter_mut().chain(desktop_streams.iter_mut()) {
        let change = feed.next_change().await;
        assert_eq!(change["new"]["key"], "appearance.theme");
    }
    // Bob's stream was never counted with Ada's.
    app.push(
        access_token(&bob),
        "bob",
        json!([{ "key": "appearance.theme", "value": "light", "hlc": hlc }]),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(bobs.next_change().await["new"]["value"], "light");
}

/// Holds every database connection of the node, so requests that reach the database wait:
/// the writer's, and on SQLite the readers' too (on PostgreSQL they are the same pool).
async fn hold_the_pool(app: &TestApp) -> Vec<sqlx::pool::PoolConnection<sqlx::Any>> {
    let db = &app.state.db;
    let mut pools = vec![&db.pool];
    if db.backend == lockstep_cloud::db::Backend::Sqlite {
        pools.push(&db.readers);
    }
    let mut held = Vec::new();
    for pool in pools {
        for _ in 0..pool.options().get_max_connections() {
            held.push(pool.acquire().await.unwrap());
        }
    }
    held
}

/// Ada sends more requests at once than her share while the database is slow: her share run,
/// the rest are answered 429 with `Retry-After` without waiting on the database, and Bob is
/// served all the while.
async fn one_user_runs_at_most_their_share_of_requests_at_once(backend: Backend) {
    use futures::StreamExt;
    let app = TestApp::start_with(backend, |c| {
        c.max_requests_per_user = 3;
        c.database_wait_seconds = 60;
    })
    .await;
    let ada = app.signup("ada@example.com", "laptop").await;
    let bob = app.signup("bob@example.com", "laptop").await;
    let held = hold_the_pool(&app).await;
    let send = |token: &str| {
        let request = app.request(Method::GET, "/rest/v1/user_settings", Some(token));
        tokio::spawn(async move { common::Reply::from(request.send().await.unwrap()).await })
    };
    let mut adas: futures::stream::FuturesUnordered<_> =
        (0..5).map(|_| send(access_token(&ada))).collect();
    let bobs = send(access_token(&bob));
    // Three of Ada's hold her slots, waiting on the database; two find none free.
    for _ in 0..2 {
        let refused = adas.next().await.unwrap().unwrap();
        refused.expect_rest_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");
        assert!(refused.headers.contains_key("retry-after"));
    }
    drop(held);
    let served: Vec<_> = adas.map(|r| r.unwrap()).collect().await;
    assert_eq!(served.len(), 3);
    for reply in &served {
        reply.expect(StatusCode::OK);
    }
    bobs.await.unwrap().expect(StatusCode::OK);
    // The share came back: Ada is served again.
    app.get_as("/rest/v1/user_settings", &ada)
        .await
        .expect(StatusCode::OK);
}

/// With every database connection in use, a request is answered 503 with `Retry-After` once
/// `--database-wait-seconds` passed, never 500.
async fn a_saturated_database_pool_answers_503_with_retry_after(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.database_wait_seconds = 1).await;
    let ada = app.signup("ada@example.com", "laptop").await;
    let held = hold_the_pool(&app).await;
    for path in [
        "/rest/v1/user_settings",
        "/auth/v1/user",
        "/rest/v1/rpc/changes?since=0",
    ] {
        let reply = app.get(path, Some(access_token(&ada))).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            reply.text
        );
        assert!(reply.headers.contains_key("retry-after"), "{path}");
    }
    // A push waits for a transaction (on SQLite, for its batch's) as long, then is told the
    // same, and nothing of it stays behind.
    let change = json!([{ "key": "appearance.theme", "value": "dark", "hlc": hlc_at(&app, 0, 0) }]);
    let refused = app
        .push(access_token(&ada), "while-busy", change.clone())
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text
    );
    assert!(refused.headers.contains_key("retry-after"));
    drop(held);
    app.get_as("/rest/v1/user_settings", &ada)
        .await
        .expect(StatusCode::OK);
    let retried = app.push(access_token(&ada), "while-busy", change).await;
    retried.expect(StatusCode::OK);
    assert_eq!(retried.body["applied"][0]["value"], "dark");
}
