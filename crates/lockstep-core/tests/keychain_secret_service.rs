//! The keychain against the real OS keychain: on Linux, a Secret Service.
//!
//! `cargo xtask test` runs this under a private D-Bus session with an unlocked gnome-keyring
//! and sets `LOCKSTEP_REQUIRE_SECRET_SERVICE=1`, which makes a missing Secret Service a
//! failure. Under a plain `cargo test` without one, the test says it was skipped and passes.

use std::time::{SystemTime, UNIX_EPOCH};

use lockstep_core::keychain::{Keychain, SecretKind};

/// A profile no other run uses, so parallel or interrupted runs cannot collide.
fn unique_profile() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!(
        "test-{}-{nanos}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_round_trip_through_the_secret_service() {
    if !Keychain::use_platform_store_or_skip() {
        return;
    }
    // Idempotent: a second call keeps the store.
    Keychain::use_platform_store().expect("installing the platform store again");

    let keychain = Keychain::for_profile(&unique_profile());
    let other = Keychain::for_profile(&unique_profile());
    let token = format!("refresh-{}", uuid::Uuid::new_v4());

    assert_eq!(
        keychain.get(SecretKind::RefreshToken).await.expect("get"),
        None
    );
    keychain
        .set(SecretKind::RefreshToken, &token)
        .await
        .expect("set");
    keychain
        .set(SecretKind::LocalKey, "local key")
        .await
        .expect("set");
    other
        .set(SecretKind::RefreshToken, "another profile's token")
        .await
        .expect("set");
    assert_eq!(
        keychain
            .get(SecretKind::RefreshToken)
            .await
            .expect("get")
            .as_deref(),
        Some(token.as_str())
    );

    // Overwriting replaces the item instead of adding a second one.
    keychain
        .set(SecretKind::RefreshToken, "rotated")
        .await
        .expect("overwrite");
    assert_eq!(
        keychain
            .get(SecretKind::RefreshToken)
            .await
            .expect("get after overwrite")
            .as_deref(),
        Some("rotated")
    );

    keychain.wipe().await.expect("wipe");
    for kind in SecretKind::ALL {
        assert_eq!(
            keychain.get(kind).await.expect("get after wipe"),
            None,
            "{kind}"
        );
    }
    assert_eq!(
        other
            .get(SecretKind::RefreshToken)
            .await
            .expect("the other profile")
            .as_deref(),
        Some("another profile's token")
    );

    other.wipe().await.expect("wipe the other profile");
    assert_eq!(
        other.get(SecretKind::RefreshToken).await.expect("get"),
        None
    );
}
