//! Several nodes on one database: a node with other keys refuses to start, and the hourly prune
//! runs on one node at a time.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{Backend, TestApp};
use lockstep_cloud::{AppState, Config, clock::ManualClock, keys::ServerKeys};

backend_tests! {
    a_node_with_another_jwt_secret_refuses_to_start,
    a_node_with_another_data_key_refuses_to_start_and_an_added_key_is_welcome,
    the_feed_is_pruned_by_one_node_at_a_time,
}

/// Starts a node on `app`'s database with the keys in `secrets` (written to a data dir of its
/// own, as `secrets.json`).
async fn start_node_with(app: &TestApp, secrets: &ServerKeys) -> anyhow::Result<AppState> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secrets.json"),
        serde_json::to_vec(secrets).unwrap(),
    )
    .unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.database_url = Some(app.database_url.clone().into());
    let started = AppState::new(config, Arc::new(ManualClock::starting_now())).await;
    drop(dir);
    started
}

async fn a_node_with_another_jwt_secret_refuses_to_start(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut secrets = app.state.keys.clone();
    secrets.jwt_secret = ServerKeys::generate().jwt_secret;
    let refused = start_node_with(&app, &secrets).await.unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("JWT secret"), "{message}");
    assert!(message.contains("LOCKSTEP_JWT_SECRET"), "{message}");
    assert!(
        !message.contains(&secrets.jwt_secret) && !message.contains(&app.state.keys.jwt_secret),
        "no secret is printed: {message}"
    );
    // The same keys start fine: the check is about the keys, not about a second node.
    start_node_with(&app, &app.state.keys.clone())
        .await
        .unwrap();
}

async fn a_node_with_another_data_key_refuses_to_start_and_an_added_key_is_welcome(
    backend: Backend,
) {
    let app = TestApp::start(backend).await;
    let ours = app.state.keys.clone();
    let (id, _) = ours.data_keys.split_once(':').unwrap();
    let mut other = ours.clone();
    other.data_keys = lockstep_cloud::sealing::DataKeys::generate_spec(id);
    let refused = start_node_with(&app, &other).await.unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains(&format!("data key {id}")), "{message}");
    assert!(message.contains("LOCKSTEP_DATA_KEYS"), "{message}");

    // Rotation: a new active key in front of the old one is recorded, and from then on binds
    // every node to it as well.
    let mut rotated = ours.clone();
    rotated.data_keys = format!(
        "{},{}",
        lockstep_cloud::sealing::DataKeys::generate_spec("k9"),
        ours.data_keys
    );
    start_node_with(&app, &rotated).await.unwrap();
    let mut clash = ours.clone();
    clash.data_keys = format!(
        "{},{}",
        lockstep_cloud::sealing::DataKeys::generate_spec("k9"),
        ours.data_keys
    );
    let refused = start_node_with(&app, &clash).await.unwrap_err();
    assert!(
        format!("{refused:#}").contains("data key k9"),
        "{refused:#}"
    );
}

async fn the_feed_is_pruned_by_one_node_at_a_time(backend: Backend) {
    let a = TestApp::start(backend).await;
    let b = a.another_node().await;
    let c = a.another_node().await;
    let nodes = [&a.state, &b.state, &c.state];
    let once = || async {
        futures::future::join_all(nodes.iter().map(|n| lockstep_cloud::feed::prune_if_due(n)))
            .await
            .into_iter()
            .map(|r| r.unwrap().is_some())
            .filter(|&pruned| pruned)
            .count()
    };
    assert_eq!(once().await, 1, "of three nodes at once, one prunes");
    assert_eq!(once().await, 0, "and none again within the hour");
    a.clock.advance(time::Duration::minutes(30));
    assert_eq!(once().await, 0, "not half an hour later either");
    a.clock.advance(time::Duration::minutes(31));
    assert_eq!(once().await, 1, "an hour later, one node prunes again");
}
