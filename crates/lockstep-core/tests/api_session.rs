//! The HTTP client and the session keeper against a real lockstep-cloud.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use common::{Cloud, PASSWORD};
use lockstep_protocol::{
    auth::Session,
    devices::DeviceInfo,
    errors::{Code, ErrorCode},
};

fn device(id: &str) -> DeviceInfo {
    DeviceInfo {
        id: id.into(),
        name: format!("Device {id}"),
        platform: "linux".into(),
        app_version: "test".into(),
    }
}
use lockstep_core::{
    api::Client,
    keychain::{Keychain, SecretKind},
    session::{SessionError, SessionKeeper},
};

fn keeper(cloud: &Cloud, profile: &str, now: Arc<AtomicI64>) -> SessionKeeper {
    Keychain::use_mock_store();
    let client = Client::new(&cloud.url, &cloud.anon_key, device(profile)).unwrap();
    SessionKeeper::new(
        client,
        Keychain::for_profile(profile),
        Arc::new(move || now.load(Ordering::SeqCst)),
    )
}

/// A keeper for `profile` holding a session of Ada's: a new account if `sign_up`, else a
/// sign-in.
async fn keeper_with_session(
    cloud: &Cloud,
    profile: &str,
    clock: &Arc<AtomicI64>,
    sign_up: bool,
) -> (SessionKeeper, Session) {
    let keeper = keeper(cloud, profile, clock.clone());
    let client = keeper.client();
    let session = if sign_up {
        client.signup("ada@example.com", PASSWORD).await
    } else {
        client.sign_in("ada@example.com", PASSWORD).await
    }
    .unwrap();
    keeper.install(&session).await.unwrap();
    (keeper, session)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_typed() {
    let cloud = Cloud::start();
    let client = Client::new(&cloud.url, &cloud.anon_key, device("laptop")).unwrap();
    client.signup("ada@example.com", PASSWORD).await.unwrap();
    let wrong = client
        .sign_in("ada@example.com", "Wrong password 1")
        .await
        .unwrap_err();
    assert_eq!(
        wrong.code(),
        Some(&Code::Auth(ErrorCode::InvalidCredentials))
    );
    assert_eq!(wrong.status(), Some(400));
    assert!(!wrong.is_transient());
    let offline = Client::new("http://127.0.0.1:9", &cloud.anon_key, device("x")).unwrap();
    let err = offline
        .sign_in("ada@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_is_single_flight_and_saved_to_the_keychain() {
    let cloud = Cloud::start();
    let clock = Arc::new(AtomicI64::new(now()));
    let (keeper, session) = keeper_with_session(&cloud, "laptop-sf", &clock, true).await;
    assert_eq!(
        keeper.access_token().await.unwrap(),
        session.access_token,
        "fresh token reused"
    );

    // Past expiry, ten tasks ask at once: one refresh reaches the server.
    clock.store(session.expires_at, Ordering::SeqCst);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let k = keeper.clone();
            tokio::spawn(async move { k.access_token().await })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 1, "everyone got the same new token");
    assert_eq!(
        cloud
            .scalar("SELECT MAX(refresh_counter) FROM sessions")
            .await,
        1,
        "exactly one rotation"
    );
    let saved = Keychain::for_profile("laptop-sf")
        .get(SecretKind::RefreshToken)
        .await
        .unwrap();
    assert_eq!(
        saved,
        keeper.current().await.map(|t| t.refresh_token),
        "the keychain holds the newest token"
    );

    // A rejected token refreshes once; a stale rejection does not refresh again.
    // (A second later, so the new access token's `iat`, and so the token, differs.)
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let current = keeper.current().await.unwrap().access_token;
    let renewed = keeper.refresh_after_rejection(&current).await.unwrap();
    assert!(renewed != current, "a rejected token is replaced");
    assert!(
        keeper.refresh_after_rejection(&current).await.unwrap() == renewed,
        "once"
    );
    assert_eq!(
        cloud
            .scalar("SELECT MAX(refresh_counter) FROM sessions")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_the_session_from_the_keychain_and_a_revocation_ends_it() {
    let cloud = Cloud::start();
    let clock = Arc::new(AtomicI64::new(now()));
    let (laptop, _) = keeper_with_session(&cloud, "laptop-rs", &clock, true).await;
    let (_desktop, _) = keeper_with_session(&cloud, "desktop-rs", &clock, false).await;

    // A new process for the desktop: nothing in memory, the refresh token in the keychain.
    let restarted = keeper(&cloud, "desktop-rs", clock.clone());
    let token = restarted.access_token().await.unwrap();
    assert_eq!(
        restarted.client().user(&token).await.unwrap().email,
        "ada@example.com"
    );

    // The laptop revokes the desktop: its next refresh says the session ended.
    let laptop_token = laptop.access_token().await.unwrap();
    laptop
        .client()
        .revoke_device(&laptop_token, "desktop-rs")
        .await
        .unwrap();
    let gone = restarted.client().user(&token).await.unwrap_err();
    assert!(gone.is_session_gone(), "{gone}");
    clock.store(now() + 7200, Ordering::SeqCst);
    match restarted.access_token().await {
        Err(SessionError::Ended(e)) => assert!(e.is_session_gone()),
        other => panic!("expected the session to have ended, got {other:?}"),
    }
    restarted.clear().await.unwrap();
    assert!(matches!(
        restarted.access_token().await,
        Err(SessionError::SignedOut)
    ));
}
