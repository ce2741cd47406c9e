//! `cargo xtask bench-client`: figures of the client's local store, through the engine's public
//! API, so that the same program measures any store behind it. It asserts nothing.
//!
//! - `set`: latency of [`Engine::set`] (validated, stamped, durable) over 1,000 edits of 500
//!   keys, p50/p99/max;
//! - `open`: [`profile::open`] of that profile (500 keys, 1,000 acknowledged edits not yet sent),
//!   median and max of five opens;
//! - `apply`: 1,000 changes pushed by another device (ten pushes of 100) while this one is live:
//!   from the first push until this device's cursor reaches the last, and how far behind it
//!   still was when the last push returned (they arrive over the change stream);
//!
//! against a real `lockstep-cloud` (embedded, SQLite) on loopback. The keychain is the in-memory
//! one: the figures are the store's, not the OS keychain's. Figures go to stdout and, as JSON,
//! to `target/bench/client-latest.json`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use lockstep_cloud::embedded::EmbeddedCloud;
use lockstep_core::{
    engine::{Connection, Engine},
    keychain::Keychain,
    live::{self, LiveOptions},
    profile::{self, OpenOptions},
};
use serde_json::json;

const KEYS: usize = 500;
const EDITS: usize = 1_000;
const OPENS: usize = 5;
const STREAMED: usize = 1_000;
const PASSWORD: &str = "Correct horse 42";

fn open(base: &Path, name: &str, server: &str, anon_key: &str) -> Arc<Engine> {
    let opened = profile::open(
        base,
        name,
        OpenOptions {
            server_url: Some(server.to_owned()),
            anon_key: Some(anon_key.to_owned()),
            device_name: Some(format!("Bench {name}")),
        },
    )
    .unwrap();
    opened.engine
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    Keychain::use_mock_store();
    let label = std::env::args().nth(1).unwrap_or_else(|| "latest".into());
    let cloud_dir = tempfile::tempdir().unwrap();
    let cloud =
        EmbeddedCloud::start(cloud_dir.path(), Arc::new(|config| config.dev = true)).unwrap();
    let base = tempfile::tempdir().unwrap();

    // `set`: 1,000 edits of 500 keys, each acknowledged on disk before the next.
    let engine = open(base.path(), "editor", &cloud.url, &cloud.anon_key);
    let mut sets = Vec::with_capacity(EDITS);
    for i in 0..EDITS {
        let key = format!("custom.bench.k{}", i % KEYS);
        let started = Instant::now();
        engine.set(&key, json!(format!("value {i}"))).unwrap();
        sets.push(started.elapsed());
    }
    sets.sort();
    assert_eq!(engine.pending(), KEYS);
    drop(engine);

    // `open`: the profile just written, 500 keys with 1,000 edits queued.
    let mut opens = Vec::with_capacity(OPENS);
    for _ in 0..OPENS {
        let started = Instant::now();
        let engine = open(base.path(), "editor", &cloud.url, &cloud.anon_key);
        opens.push(started.elapsed());
        assert_eq!(engine.pending(), KEYS);
        drop(engine);
    }
    opens.sort();

    // `apply`: a reader catches up on 1,000 changes over its stream.
    let writer = open(base.path(), "writer", &cloud.url, &cloud.anon_key);
    writer.sign_up("bench@example.com", PASSWORD).await.unwrap();
    let reader = open(base.path(), "reader", &cloud.url, &cloud.anon_key);
    reader.sign_in("bench@example.com", PASSWORD).await.unwrap();
    reader.sync_once().await.unwrap();
    let handle = live::start(reader.clone(), LiveOptions::default());
    let mut status = reader.status();
    status
        .wait_for(|s| s.connection == Connection::Live)
        .await
        .unwrap();
    // Ten pushes of 100 changes, as fast as the writer can; the reader applies them as they
    // stream in.
    let started = Instant::now();
    for batch in 0..STREAMED / 100 {
        let edits = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                (format!("custom.stream.k{}", n % KEYS), json!(n))
            })
            .collect();
        writer.set_many(edits).unwrap();
        writer.push().await.unwrap();
    }
    let pushed = started.elapsed();
    let head = writer.sync_once().await.map(|_| writer.cursor()).unwrap();
    let last_push = Instant::now();
    while reader.cursor() < head {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the reader never caught up"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let apply = started.elapsed();
    let behind = last_push.elapsed();
    handle.stop().await;

    let figures = json!({
        "label": label,
        "set_ms": { "p50": ms(percentile(&sets, 0.5)), "p99": ms(percentile(&sets, 0.99)), "max": ms(sets[sets.len() - 1]) },
        "open_500_keys_1000_edits_ms": { "median": ms(percentile(&opens, 0.5)), "max": ms(opens[opens.len() - 1]) },
        "apply_1000_streamed_ms": { "first_push_to_applied": ms(apply), "pushes_alone": ms(pushed), "behind_after_last_push": ms(behind) },
    });
    println!("client store figures ({label}):");
    println!(
        "  set latency (1,000 edits of 500 keys)     p50 {:>9.3} ms  p99 {:>9.3} ms  max {:>9.3} ms",
        ms(percentile(&sets, 0.5)),
        ms(percentile(&sets, 0.99)),
        ms(sets[sets.len() - 1])
    );
    println!(
        "  open (500 keys, 1,000 queued edits)       median {:>9.3} ms  max {:>9.3} ms",
        ms(percentile(&opens, 0.5)),
        ms(opens[opens.len() - 1])
    );
    println!(
        "  apply 1,000 streamed changes               first push to applied {:>9.3} ms (the pushes alone {:>9.3} ms), behind after the last push {:>9.3} ms",
        ms(apply),
        ms(pushed),
        ms(behind)
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(format!("client-{label}.json")),
        serde_json::to_string_pretty(&figures).unwrap(),
    )
    .unwrap();
}
