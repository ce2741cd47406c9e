//! Email verification, resend, password recovery and email change, through the dev mailbox.
#![allow(clippy::unwrap_used)]

pub mod common;

use common::{Backend, PASSWORD, TestApp, access_token, claims, fragment};
use reqwest::{Method, StatusCode};
use serde_json::json;
use time::Duration;

backend_tests! {
    confirmation_link_verifies_the_email_once,
    confirmation_link_expires,
    confirmation_redirects_only_to_allowed_urls,
    verify_by_link_token_or_emailed_code,
    verify_rejects_bad_input,
    resend_sends_a_new_link_and_is_rate_limited_per_address,
    wrong_codes_are_limited_per_address,
    recovery_link_signs_in_to_set_a_new_password,
    email_change_takes_effect_when_the_new_address_confirms,
    unknown_addresses_are_not_revealed,
    recover_answers_before_any_work_for_the_address_even_with_a_hung_mail_server,
    mailbox_is_only_served_in_dev_mode,
}

async fn confirmation_link_verifies_the_email_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let mail = app.mailbox("ada@example.com").await;
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0]["subject"], "Confirm your Lockstep email address");
    let link = mail[0]["links"][0].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/auth/v1/verify?token=", app.url)),
        "{link}"
    );
    assert!(mail[0]["text"].as_str().unwrap().contains(link));

    let location = app.open_link(link).await;
    assert!(
        location.starts_with(&format!("{}/", app.url)),
        "lands on the site URL: {location}"
    );
    let params = fragment(&location);
    assert_eq!(params["type"], "signup");
    assert!(
        !params.contains_key("access_token"),
        "a confirmation link does not sign the browser in"
    );

    let user = app.get_as("/auth/v1/user", &session).await;
    assert!(user.body["email_confirmed_at"].is_string(), "{}", user.text);
    assert_eq!(
        user.body["identities"][0]["identity_data"]["email_verified"],
        true
    );

    // Single use.
    let again = fragment(&app.open_link(link).await);
    assert_eq!(again["error_code"], "otp_expired");

    let audit = app
        .get_as(
            "/rest/v1/audit_log_entries?action=eq.email_verified",
            &session,
        )
        .await;
    assert_eq!(audit.body.as_array().unwrap().len(), 1);
}

async fn confirmation_link_expires(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let link = app.latest_link("ada@example.com").await;
    app.clock
        .advance(Duration::hours(24) + Duration::seconds(1));
    let params = fragment(&app.open_link(&link).await);
    assert_eq!(params["error_code"], "otp_expired");
    assert_eq!(params["error"], "access_denied");
    let user = app
        .get(
            "/auth/v1/user",
            Some(access_token(
                &app.refresh(common::refresh_token(&session)).await.body,
            )),
        )
        .await;
    assert!(user.body["email_confirmed_at"].is_null());
}

async fn confirmation_redirects_only_to_allowed_urls(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.redirect_allow_list = vec!["lockstep://".into()];
    })
    .await;
    let app = &app;
    let signup = |email: &str, redirect: &str| {
        let path = format!(
            "/auth/v1/signup?redirect_to={}",
            common::urlencoding(redirect)
        );
        let body = json!({ "email": email, "password": PASSWORD });
        async move { app.post(&path, None, body).await }
    };
    signup("ada@example.com", "https://evil.example/")
        .await
        .expect(StatusCode::OK);
    let evil = app.open_latest_link("ada@example.com").await;
    assert!(
        evil.starts_with(&app.state.config.site_url()),
        "unlisted target replaced: {evil}"
    );

    signup("bob@example.com", "lockstep://verified")
        .await
        .expect(StatusCode::OK);
    let allowed = app.open_latest_link("bob@example.com").await;
    assert!(allowed.starts_with("lockstep://verified#"), "{allowed}");

    // Recovery honours redirect_to too (supabase-js sends `redirectTo` this way).
    app.recover_reply("?redirect_to=lockstep%3A%2F%2Freset", "bob@example.com")
        .await
        .expect(StatusCode::OK);
    let reset = app.open_latest_link("bob@example.com").await;
    assert!(
        reset.starts_with("lockstep://reset#access_token="),
        "{reset}"
    );
}

impl TestApp {
    async fn resend_after_interval(&self, email: &str) {
        self.clock.advance(Duration::seconds(61));
        self.resend("signup", email).await.expect(StatusCode::OK);
    }
}

/// The 6-digit code in the newest mail to `to`.
async fn emailed_code(app: &TestApp, to: &str) -> String {
    let text = app.mailbox(to).await[0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    text.split("code in the app: ").nth(1).unwrap()[..6].to_owned()
}

async fn verify_by_link_token_or_emailed_code(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.signup("ada@example.com", "laptop").await;
    let link = app.latest_link("ada@example.com").await;
    let token = url::Url::parse(&link)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "token")
        .unwrap()
        .1
        .into_owned();
    let session = app
        .post("/auth/v1/verify", None, json!({ "type": "signup", "token_hash": token, "device": common::device_json("phone") }))
        .await;
    session.expect(StatusCode::OK);
    assert!(session.body["user"]["email_confirmed_at"].is_string());
    assert_eq!(claims(access_token(&session.body))["device_id"], "phone");

    app.signup("bob@example.com", "laptop").await;
    let code = emailed_code(&app, "bob@example.com").await;
    assert!(code.chars().all(|c| c.is_ascii_digit()));
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let attempt = |c: &str| {
        app.post(
            "/auth/v1/verify",
            None,
            json!({ "type": "email", "token": c, "email": "bob@example.com" }),
        )
    };
    attempt(wrong)
        .await
        .expect_error(StatusCode::FORBIDDEN, "otp_expired");
    let session = attempt(&code).await;
    session.expect(StatusCode::OK);
    assert!(session.body["user"]["email_confirmed_at"].is_string());
    // The code is single use too.
    attempt(&code)
        .await
        .expect_error(StatusCode::FORBIDDEN, "otp_expired");
}

async fn wrong_codes_are_limited_per_address(backend: Backend) {
    let app = TestApp::start_with(backend, |c| {
        c.rate_limits.code_failures_per_account = lockstep_cloud::config::Limit::new(3, 900);
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    let code = emailed_code(&app, "ada@example.com").await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let attempt = |c: &str| {
        app.post(
            "/auth/v1/verify",
            None,
            json!({ "type": "signup", "token": c, "email": "ada@example.com" }),
        )
    };
    for _ in 0..3 {
        attempt(wrong)
            .await
            .expect_error(StatusCode::FORBIDDEN, "otp_expired");
    }
    // Now even the right code must wait: guessing is capped per address, not only per IP.
    attempt(&code)
        .await
        .expect_error(StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit");
    app.clock.advance(Duration::minutes(16));
    attempt(&code).await.expect(StatusCode::OK);
}

async fn verify_rejects_bad_input(backend: Backend) {
    let app = TestApp::start(backend).await;
    for (body, status, error_code) in [
        (
            json!({ "type": "signup" }),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({ "type": "sorcery", "token_hash": "x" }),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            json!({ "type": "signup", "token_hash": "never-issued" }),
            StatusCode::FORBIDDEN,
            "otp_expired",
        ),
    ] {
        app.post("/auth/v1/verify", None, body)
            .await
            .expect_error(status, error_code);
    }
    for query in ["", "?token=abc", "?type=signup", "?token=abc&type=sorcery"] {
        let location = app
            .open_link(&format!("{}/auth/v1/verify{query}", app.url))
            .await;
        assert!(
            fragment(&location).contains_key("error_code"),
            "{query}: {location}"
        );
    }
}

async fn resend_sends_a_new_link_and_is_rate_limited_per_address(backend: Backend) {
    let app = TestApp::start(backend).await;
    let session = app.signup("ada@example.com", "laptop").await;
    let first = app.latest_link("ada@example.com").await;
    let early = app.resend("signup", "ada@example.com").await;
    // Too early: nothing is sent, and the answer is the one an unknown address gets.
    early.expect(StatusCode::OK);
    assert_eq!(early.body, json!({}));
    assert_eq!(app.mailbox("ada@example.com").await.len(), 1);
    app.resend_after_interval("ada@example.com").await;
    let second = app.latest_link("ada@example.com").await;
    assert_ne!(first, second);
    assert_eq!(app.mailbox("ada@example.com").await.len(), 2);
    // The new link replaces the old one.
    assert_eq!(
        fragment(&app.open_link(&first).await)["error_code"],
        "otp_expired"
    );
    assert_eq!(fragment(&app.open_link(&second).await)["type"], "signup");
    // Once verified, resend sends nothing.
    app.clock.advance(Duration::seconds(61));
    app.resend("signup", "ada@example.com")
        .await
        .expect(StatusCode::OK);
    assert_eq!(app.mailbox("ada@example.com").await.len(), 2);
    app.resend("recovery", "ada@example.com")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "validation_failed");
    drop(session);
}

async fn recovery_link_signs_in_to_set_a_new_password(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.signup("ada@example.com", "laptop").await;
    app.recover_reply("", "ada@example.com")
        .await
        .expect(StatusCode::OK);
    let mail = &app.mailbox("ada@example.com").await[0];
    assert_eq!(mail["subject"], "Reset your Lockstep password");
    let params = fragment(&app.open_link(mail["links"][0].as_str().unwrap()).await);
    assert_eq!(params["type"], "recovery");
    let token = &params["access_token"];
    assert_eq!(claims(token)["amr"][0]["method"], "recovery");
    app.send(
        app.request(Method::PUT, "/auth/v1/user", Some(token))
            .json(&json!({ "password": "Recovered pass 9" })),
    )
    .await
    .expect(StatusCode::OK);
    app.sign_in_reply("ada@example.com", PASSWORD, "x")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_credentials");
    app.sign_in_reply("ada@example.com", "Recovered pass 9", "x")
        .await
        .expect(StatusCode::OK);
    // A recovery link expires after an hour.
    app.clock.advance(Duration::seconds(61));
    app.recover_reply("", "ada@example.com")
        .await
        .expect(StatusCode::OK);
    let link = app.latest_link("ada@example.com").await;
    app.clock.advance(Duration::minutes(61));
    assert_eq!(
        fragment(&app.open_link(&link).await)["error_code"],
        "otp_expired"
    );
}

async fn email_change_takes_effect_when_the_new_address_confirms(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ada = app.signup("ada@example.com", "laptop").await;
    app.signup("bob@example.com", "bobs").await;
    let put = |body: serde_json::Value| {
        app.send(
            app.request(Method::PUT, "/auth/v1/user", Some(access_token(&ada)))
                .json(&body),
        )
    };
    put(json!({ "email": "bob@example.com" }))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "email_exists");
    put(json!({ "email": "not-an-email" }))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "email_address_invalid");
    let pending = put(json!({ "email": "Ada.New@example.com" })).await;
    pending.expect(StatusCode::OK);
    assert_eq!(
        pending.body["email"], "ada@example.com",
        "unchanged until confirmed"
    );
    assert_eq!(pending.body["new_email"], "ada.new@example.com");
    let mail = &app.mailbox("ada.new@example.com").await[0];
    assert_eq!(mail["subject"], "Confirm your new Lockstep email address");
    let params = fragment(&app.open_link(mail["links"][0].as_str().unwrap()).await);
    assert_eq!(params["type"], "email_change");
    let user = app.get_as("/auth/v1/user", &ada).await;
    assert_eq!(user.body["email"], "ada.new@example.com");
    assert!(user.body.get("new_email").is_none_or(|v| v.is_null()));
    app.sign_in("ada.new@example.com", "laptop").await;
    app.sign_in_reply("ada@example.com", PASSWORD, "laptop")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_credentials");
}

/// Asks `path` (recover or resend) for a sign-up mail to `email`.
async fn ask_for_mail(app: &TestApp, path: &str, email: &str) -> common::Reply {
    let body = json!({ "email": email, "type": "signup" });
    app.post(path, None, body).await
}

async fn unknown_addresses_are_not_revealed(backend: Backend) {
    let app = TestApp::start(backend).await;
    for path in ["/auth/v1/recover", "/auth/v1/resend"] {
        let reply = ask_for_mail(&app, path, "nobody@example.com").await;
        reply.expect(StatusCode::OK);
        assert_eq!(reply.body, json!({}));
    }
    assert!(app.mailbox("nobody@example.com").await.is_empty());
    // A known address asked twice within the interval answers exactly the same.
    app.signup("ada@example.com", "laptop").await;
    for path in [
        "/auth/v1/recover",
        "/auth/v1/recover",
        "/auth/v1/resend",
        "/auth/v1/resend",
    ] {
        let known = ask_for_mail(&app, path, "ada@example.com").await;
        let unknown = ask_for_mail(&app, path, "nobody@example.com").await;
        assert_eq!(
            (known.status, &known.body),
            (unknown.status, &unknown.body),
            "{path}"
        );
        assert_eq!(
            known.headers.contains_key("retry-after"),
            unknown.headers.contains_key("retry-after")
        );
    }
}

/// A mail server that accepts connections and never says a word: a known address's recovery
/// mail hangs on it. The answer to `recover` must not wait for that (nor for the token write
/// before it), or its timing tells a known address from an unknown one.
async fn recover_answers_before_any_work_for_the_address_even_with_a_hung_mail_server(
    backend: Backend,
) {
    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smtp = format!("smtp://{}", tarpit.local_addr().unwrap());
    let (connected, mut connections) = tokio::sync::mpsc::unbounded_channel();
    let _tarpit = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = tarpit.accept().await {
            held.push(socket);
            let _ = connected.send(());
        }
    });
    let app = TestApp::start_with(backend, |c| {
        c.smtp_url = Some(smtp.into());
        c.mailer_autoconfirm = true; // so signing up sends nothing
    })
    .await;
    app.signup("ada@example.com", "laptop").await;
    for email in ["ada@example.com", "nobody@example.com"] {
        let answered = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            app.post("/auth/v1/recover", None, json!({ "email": email })),
        )
        .await
        .unwrap_or_else(|_| panic!("recover for {email} waited for the hung mail server"));
        answered.expect(StatusCode::OK);
        assert_eq!(answered.body, json!({}));
    }
    // The mail for the known address is still attempted, after the answer.
    tokio::time::timeout(std::time::Duration::from_secs(20), connections.recv())
        .await
        .expect("the recovery mail went to the mail server")
        .unwrap();
    let requested = app
        .raw_rows("SELECT COUNT(*) FROM one_time_tokens WHERE kind = 'recovery'")
        .await;
    assert_eq!(requested[0][0].as_deref(), Some("1"), "one token, for Ada");
}

async fn mailbox_is_only_served_in_dev_mode(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.dev = false).await;
    app.signup("ada@example.com", "laptop").await;
    app.get("/dev/mailbox", None)
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    // Mail still goes to the data dir for an operator to deliver by hand.
    let files = std::fs::read_dir(app.state.config.data_dir.join("mail"))
        .unwrap()
        .count();
    assert_eq!(files, 1);
}

mod storage {
    use super::*;

    backend_tests! { no_token_code_or_password_is_stored_in_plaintext }

    async fn no_token_code_or_password_is_stored_in_plaintext(backend: Backend) {
        let app = TestApp::start(backend).await;
        let session = app.signup("ada@example.com", "laptop").await;
        let rotated = app.refresh(common::refresh_token(&session)).await.body;
        let mail = &app.mailbox("ada@example.com").await[0];
        let link = mail["links"][0].as_str().unwrap();
        let link_token = url::Url::parse(link)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "token")
            .unwrap()
            .1
            .into_owned();
        let code = mail["text"]
            .as_str()
            .unwrap()
            .split("code in the app: ")
            .nth(1)
            .unwrap()[..6]
            .to_owned();
        let secrets = [
            PASSWORD.to_owned(),
            common::refresh_token(&session).to_owned(),
            common::refresh_token(&rotated).to_owned(),
            access_token(&rotated).to_owned(),
            link_token,
        ];
        let dump = app
            .dump_tables(&[
                "users",
                "sessions",
                "devices",
                "one_time_tokens",
                "audit_log",
            ])
            .await;
        assert!(
            dump.contains("ada@example.com"),
            "the dump did read the tables"
        );
        for secret in &secrets {
            assert!(
                !dump.contains(secret.as_str()),
                "a secret is stored in plaintext"
            );
        }
        let code_hashes = app.raw_rows("SELECT code_hash FROM one_time_tokens").await;
        assert!(
            code_hashes
                .iter()
                .flatten()
                .flatten()
                .all(|h| h.len() == 64 && *h != code)
        );
    }
}
