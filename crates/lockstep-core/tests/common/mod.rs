//! A real `lockstep-cloud` on 127.0.0.1 (embedded SQLite) for the client's tests, and devices
//! (profiles with their engine) to drive against it.
//!
//! The server is an [`EmbeddedCloud`] (a runtime of its own), so a test can kill it the hard
//! way ([`Cloud::kill`]: every task and socket dropped at once, open streams cut mid-flight) and
//! start it again on the same port and data directory ([`Cloud::restart`]).
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use lockstep_cloud::embedded::EmbeddedCloud;
use lockstep_core::{
    engine::{Engine, EngineEvent},
    keychain::Keychain,
    live::{self, LiveHandle, LiveOptions},
    profile::{self, OpenOptions},
};
use tokio::sync::broadcast;

pub const PASSWORD: &str = "Correct horse 42";

#[derive(Debug)]
pub struct Cloud {
    pub url: String,
    pub anon_key: String,
    server: EmbeddedCloud,
    dir: tempfile::TempDir,
}

impl Cloud {
    pub fn start() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let server = EmbeddedCloud::start(
            dir.path(),
            Arc::new(|config| {
                config.dev = true;
                // Small heartbeats keep the watchdog tests short.
                config.sse_heartbeat_seconds = 2;
            }),
        )
        .unwrap();
        Cloud {
            url: server.url.clone(),
            anon_key: server.anon_key.clone(),
            server,
            dir,
        }
    }

    /// Kills the server: its tasks stop and its sockets close at once, as if the process died.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts the server again on the same port and data (the database and keys survive).
    pub fn restart(&mut self) {
        self.server.restart().unwrap();
    }

    /// One integer cell from the server's database (read through a connection of the test's
    /// own: SQLite in WAL mode lets it read beside the server).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let url = format!(
            "sqlite://{}",
            self.dir.path().join("lockstep.sqlite3").display()
        );
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let value = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        value
    }

    /// The newest link mailed to `email`, opened as its owner's browser would (it confirms
    /// the address and lands on the server's page).
    pub async fn confirm_email(&self, email: &str) {
        let link = self.server.newest_link(email).unwrap();
        let landed = reqwest::get(link).await.unwrap();
        assert!(landed.status().is_success(), "{}", landed.status());
    }
}

/// A device: a profile with its engine, optionally its live loop, and its events.
#[derive(Debug)]
pub struct Device {
    pub name: String,
    pub engine: Arc<Engine>,
    pub events: broadcast::Receiver<EngineEvent>,
    pub live: Option<LiveHandle>,
}

/// A profile name no other test (in this process, sharing the mock keychain) uses.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Opens (or reopens, like a new process) profile `name` under `base`, against `server`.
pub fn open(cloud: &Cloud, base: &Path, name: &str) -> Device {
    open_at(&cloud.url, &cloud.anon_key, base, name)
}

pub fn open_at(server: &str, anon_key: &str, base: &Path, name: &str) -> Device {
    Keychain::use_mock_store();
    let opened = profile::open(
        base,
        name,
        OpenOptions {
            server_url: Some(server.to_owned()),
            anon_key: Some(anon_key.to_owned()),
            device_name: Some(format!("Device {name}")),
        },
    )
    .unwrap();
    assert!(opened.problems.is_empty(), "{:?}", opened.problems);
    let events = opened.engine.subscribe();
    Device {
        name: name.to_owned(),
        engine: opened.engine,
        events,
        live: None,
    }
}

/// Fast timings for tests: short backoff, quick polling.
pub fn fast_options() -> LiveOptions {
    LiveOptions {
        poll_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(6),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(800),
        failures_before_polling: 3,
        stream_url: None,
    }
}

impl Device {
    pub fn go_live(&mut self, options: LiveOptions) {
        self.live = Some(live::start(self.engine.clone(), options));
    }

    /// Waits (up to `secs`) for an event matching `pred`, and returns it.
    pub async fn wait_for(
        &mut self,
        secs: u64,
        what: &str,
        mut pred: impl FnMut(&EngineEvent) -> bool,
    ) -> EngineEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut other = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) if pred(&event) => return event,
                Ok(Ok(event)) => other.push(event),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(e)) => panic!("{}: event channel closed: {e}", self.name),
                Err(_) => panic!("{}: no {what} within {secs} s; saw {other:#?}", self.name),
            }
        }
    }

    /// Waits until the engine's status has `connection`.
    pub async fn wait_connection(&self, secs: u64, connection: lockstep_core::engine::Connection) {
        let mut status = self.engine.status();
        let result = tokio::time::timeout(
            Duration::from_secs(secs),
            status.wait_for(|s| s.connection == connection),
        )
        .await;
        assert!(
            matches!(result, Ok(Ok(_))),
            "{}: not {connection:?} within {secs} s (now {:?})",
            self.name,
            self.engine.status().borrow().connection
        );
    }
}

/// Waits until `check` holds, polling every 20 ms, up to `secs`.
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
