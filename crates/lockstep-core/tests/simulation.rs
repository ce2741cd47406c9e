//! A deterministic simulation of many devices and one server (in the spirit of FoundationDB's
//! simulator and TigerBeetle's VOPR): a seeded generator picks a schedule of operations (edits of
//! few keys so that they collide, resets, imports, device-only toggles, syncs, live bursts over
//! the change stream, lost answers, device restarts mid-push, offline devices, a server killed
//! the hard way, clock skew, a device revoked and signed in again) and runs it, one operation at
//! a time, against real engines and a real embedded `lockstep-cloud`. Faults of the network are
//! injected by a TCP proxy in front of each device.
//!
//! After each schedule every fault is healed, every device syncs, and the outcome is checked
//! against an oracle computed from the log of edits alone (see [`check`]): every device holds the
//! same synced values, which are the merge rule applied to every acknowledged edit; no
//! acknowledged edit is lost; device-only values never leave their device; and the superseded
//! events each device reported are exactly its sent edits that lost.
//!
//! A failure prints the seed and a shrunk trace that still fails. Knobs (environment):
//! `LOCKSTEP_SIM_SCHEDULES` (default 200), `LOCKSTEP_SIM_SEED` (the first seed; with
//! `LOCKSTEP_SIM_SCHEDULES=1`, replays one), `LOCKSTEP_SIM_STEPS` (operations per schedule,
//! default 24). `cargo xtask sim` sets them and prints the figures.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{PASSWORD, fast_options};
use lockstep_cloud::embedded::EmbeddedCloud;
use lockstep_core::{
    engine::{Connection, Engine, EngineEvent},
    keychain::Keychain,
    live,
    profile::{self, OpenOptions},
};
use lockstep_protocol::{hlc::Hlc, sync::SettingRow};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{broadcast, watch},
};

/// The keys the devices edit: few, so edits collide.
const KEYS: [&str; 3] = ["custom.sim.a", "custom.sim.b", "custom.sim.c"];
const EMAIL_DOMAIN: &str = "sim.example.com";

// ---------------------------------------------------------------------------------------------
// The network between a device and the server.

/// A TCP proxy in front of the server for one device: it can be down (connections refused and
/// open ones cut), cut every open connection (the stream among them), or lose the answer to the
/// next request after the server has handled it (a crash or a dropped network between commit
/// and acknowledgement).
#[derive(Debug, Clone)]
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    lose_next_answer: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
    /// The accept loop, which ends (closing the listener) when the last clone of the proxy is
    /// dropped. Without it every schedule left its proxies listening, and a long run ran out of
    /// file descriptors after about 4,500 schedules.
    _accepting: Arc<AbortOnDrop>,
}

/// A task aborted when this is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0u64);
        let down = Arc::new(AtomicBool::new(false));
        let lose_next_answer = Arc::new(AtomicBool::new(false));
        // The loop holds the link's parts, not the proxy, so that dropping the proxy ends it.
        let accepting = tokio::spawn({
            let (down, lose, cuts) = (down.clone(), lose_next_answer.clone(), cuts.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(relay(client, upstream, lose.clone(), cuts.subscribe()));
                }
            }
        });
        Proxy {
            addr,
            down,
            lose_next_answer,
            cuts,
            _accepting: Arc::new(AbortOnDrop(accepting)),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Closes every open connection.
    fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

/// Relays one connection until either side closes it or the proxy cuts it; when `lose` is set,
/// the next answer from the server is dropped (and the connection with it).
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    lose: Arc<AtomicBool>,
    mut cut: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // The server has answered, so it has done the work: drop the answer.
                    if lose.swap(false, Ordering::SeqCst) {
                        return;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cut.changed() => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Schedules.

/// One step of a schedule.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// `device` sets `key` to a value no other edit has.
    Edit {
        device: usize,
        key: usize,
    },
    /// `device` resets `key` (a tombstone that syncs).
    Reset {
        device: usize,
        key: usize,
    },
    /// `device` imports an export document of these keys.
    Import {
        device: usize,
        keys: Vec<usize>,
    },
    /// `device` keeps `key` to itself, or shares it again.
    DeviceOnly {
        device: usize,
        key: usize,
        on: bool,
    },
    /// `device` pushes and pulls once.
    Sync {
        device: usize,
    },
    /// `device` pushes only.
    Push {
        device: usize,
    },
    /// `device` runs its live loop (stream) until it is caught up, optionally editing while
    /// live, then the stream is cut.
    Live {
        device: usize,
        edit: Option<usize>,
    },
    /// The answer to `device`'s next request is lost after the server handled it.
    LoseNextAnswer {
        device: usize,
    },
    /// `device`'s process restarts: the engine is dropped and the profile reopened from disk.
    Restart {
        device: usize,
    },
    /// `device`'s process is killed in the middle of a push: its answer is lost, then it
    /// restarts.
    CrashMidPush {
        device: usize,
    },
    /// `device` loses (or regains) the network.
    Offline {
        device: usize,
        on: bool,
    },
    /// The server is killed (kill -9) or started again.
    KillServer,
    StartServer,
    /// `device`'s clock is set `ms` away from the real one (it restarts to take it).
    Skew {
        device: usize,
        ms: i64,
    },
    /// `by` revokes `device`, which is signed out (its unsynced edits discarded) and signs in
    /// again.
    Revoke {
        device: usize,
        by: usize,
    },
}

/// Picks a schedule for `seed`.
fn schedule(seed: u64, steps: usize) -> (usize, Vec<Op>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let devices = rng.gen_range(3..=5);
    let mut ops = Vec::with_capacity(steps);
    for _ in 0..steps {
        let device = rng.gen_range(0..devices);
        let key = rng.gen_range(0..KEYS.len());
        let roll = rng.gen_range(0..100);
        let op = match roll {
            0..=29 => Op::Edit { device, key },
            30..=33 => Op::Reset { device, key },
            34..=36 => {
                let mut keys: Vec<usize> = (0..KEYS.len()).filter(|_| rng.gen_bool(0.6)).collect();
                if keys.is_empty() {
                    keys.push(key);
                }
                Op::Import { device, keys }
            }
            37..=41 => Op::DeviceOnly {
                device,
                key,
                on: rng.gen_bool(0.5),
            },
            42..=57 => Op::Sync { device },
            58..=61 => Op::Push { device },
            62..=66 => Op::Live {
                device,
                edit: rng.gen_bool(0.5).then_some(key),
            },
            67..=71 => Op::LoseNextAnswer { device },
            72..=75 => Op::Restart { device },
            76..=79 => Op::CrashMidPush { device },
            80..=85 => Op::Offline {
                device,
                on: rng.gen_bool(0.5),
            },
            86..=88 => Op::KillServer,
            89..=91 => Op::StartServer,
            92..=95 => Op::Skew {
                device,
                ms: rng.gen_range(-120_000..=30_000),
            },
            _ => Op::Revoke {
                device,
                by: (device + rng.gen_range(1..devices)) % devices,
            },
        };
        ops.push(op);
    }
    (devices, ops)
}

// ---------------------------------------------------------------------------------------------
// What happened: the log the oracle reads.

/// One acknowledged edit of a synced key.
#[derive(Debug, Clone)]
struct Edit {
    device: usize,
    device_id: String,
    key: String,
    /// `None` for a reset.
    value: Option<Value>,
    hlc: Hlc,
    /// Sent to the server in a push that was answered (or replaced by a newer edit of the same
    /// key from the same device before any push).
    fate: Fate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// In the outbox.
    Queued,
    /// Its push was answered.
    Sent,
    /// A newer edit of the key on the same device went in its place.
    Replaced,
    /// The device was signed out (revoked) with the edit still queued: it may or may not have
    /// reached the server (an earlier answer may have been lost).
    Discarded,
}

impl Edit {
    fn stamp(&self) -> (Hlc, &str) {
        (self.hlc, self.device_id.as_str())
    }
}

/// A device of the simulation.
struct Device {
    name: String,
    /// `None` only while the device restarts.
    engine: Option<Arc<Engine>>,
    events: broadcast::Receiver<EngineEvent>,
    proxy: Proxy,
    skew: Arc<AtomicI64>,
    /// Every event it reported.
    seen: Vec<EngineEvent>,
    /// Device-only keys and their value as this device must show it.
    device_only: BTreeMap<String, Option<Value>>,
    /// The profile was wiped (signed out by the server) and the model has not caught up yet.
    wiped: bool,
    /// `SignedOut` events (the live loop's wipes) already accounted for.
    signed_out_seen: usize,
}

struct World {
    cloud: EmbeddedCloud,
    server_up: bool,
    base: tempfile::TempDir,
    email: String,
    devices: Vec<Device>,
    edits: Vec<Edit>,
    /// Values written to device-only keys: they must never reach the server.
    device_only_values: BTreeSet<String>,
    next_value: u64,
    trace: Vec<String>,
    /// Promises broken while the schedule ran (checked with the rest at the end).
    broken: Vec<String>,
}

impl World {
    async fn new(cloud_dir: &Path, backend: &Backend, seed: u64, devices: usize) -> World {
        let database_url = backend.database_url();
        let cloud = EmbeddedCloud::start(
            cloud_dir,
            Arc::new(move |config| {
                config.dev = true;
                config.database_url = database_url.clone().map(Into::into);
                config.sse_heartbeat_seconds = 2;
                // Every schedule signs up and in from 127.0.0.1.
                let many = lockstep_cloud::config::Limit {
                    count: 1_000_000,
                    window: Duration::from_secs(1),
                };
                config.rate_limits.signups_per_ip = many;
                config.rate_limits.sign_in_failures_per_ip = many;
                config.rate_limits.sign_in_failures_per_account = many;
            }),
        )
        .unwrap();
        let base = tempfile::tempdir().unwrap();
        let email = format!(
            "s{seed}-{}@{EMAIL_DOMAIN}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut world = World {
            cloud,
            server_up: true,
            base,
            email,
            devices: Vec::new(),
            edits: Vec::new(),
            device_only_values: BTreeSet::new(),
            next_value: 0,
            trace: Vec::new(),
            broken: Vec::new(),
        };
        for i in 0..devices {
            let proxy = Proxy::start(world.cloud.addr).await;
            let skew = Arc::new(AtomicI64::new(0));
            let name = format!("sim{i}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let (engine, events) = open_engine(
                world.base.path(),
                &name,
                &world.cloud.anon_key,
                &proxy,
                &skew,
            );
            world.devices.push(Device {
                name,
                engine: Some(engine),
                events,
                proxy,
                skew,
                seen: Vec::new(),
                device_only: BTreeMap::new(),
                wiped: false,
                signed_out_seen: 0,
            });
        }
        world
            .engine(0)
            .sign_up(&world.email, PASSWORD)
            .await
            .unwrap();
        for d in 1..devices {
            world
                .engine(d)
                .sign_in(&world.email, PASSWORD)
                .await
                .unwrap();
        }
        world
    }

    fn note(&mut self, line: String) {
        self.trace.push(line);
    }

    fn drain(&mut self, device: usize) {
        let d = &mut self.devices[device];
        loop {
            match d.events.try_recv() {
                Ok(event) => d.seen.push(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    panic!("{}: {n} events were lost (the channel lagged)", d.name)
                }
                Err(_) => break,
            }
        }
    }

    /// The edits of `device` still queued.
    fn queued(&self, device: usize) -> Vec<usize> {
        (0..self.edits.len())
            .filter(|&i| self.edits[i].device == device && self.edits[i].fate == Fate::Queued)
            .collect()
    }

    /// After a network step of `device`: if its outbox is empty, its queued edits were sent
    /// (the newest of each key) or replaced (the older ones).
    fn settle(&mut self, device: usize) {
        if self.engine(device).pending() != 0 {
            return;
        }
        let queued = self.queued(device);
        let mut newest: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in &queued {
            let e = &self.edits[i];
            match newest.get(e.key.as_str()) {
                Some(&j) if self.edits[j].hlc > e.hlc => {}
                _ => {
                    newest.insert(&self.edits[i].key, i);
                }
            }
        }
        let sent: BTreeSet<usize> = newest.into_values().collect();
        for i in queued {
            self.edits[i].fate = if sent.contains(&i) {
                Fate::Sent
            } else {
                Fate::Replaced
            };
        }
    }

    /// Records the local edits `device` just made to `keys`: each synced one must show at once
    /// as this device's own newest write.
    fn record_edits(
        &mut self,
        device: usize,
        keys: &[usize],
        before: &BTreeMap<String, Option<SettingRow>>,
    ) {
        let engine = self.engine(device);
        for &k in keys {
            let key = KEYS[k];
            let changed = engine.row(key).map(|r| r.hlc) != before[key].as_ref().map(|r| r.hlc);
            if !engine.is_device_only(key) && !changed {
                self.broken.push(format!(
                    "device {device}: an edit of {key} did not show at once (it was stamped \
                     older than the row the device already had)"
                ));
            }
        }
        // Only the keys this step edited: a live loop may pull other keys meanwhile. A
        // device-only edit leaves the synced row alone (a pull may still change it).
        for key in keys.iter().map(|&k| KEYS[k]) {
            if engine.is_device_only(key) {
                continue;
            }
            let after = engine.row(key);
            if after.as_ref().map(|r| r.hlc) != before[key].as_ref().map(|r| r.hlc) {
                let row = after.unwrap();
                if row.device_id != engine.profile().device.id {
                    self.broken.push(format!(
                        "device {device}: its edit of {key} shows another device's row"
                    ));
                    continue;
                }
                self.edits.push(Edit {
                    device,
                    device_id: row.device_id.clone(),
                    key: key.to_owned(),
                    value: (!row.deleted).then(|| row.value.clone()),
                    hlc: row.hlc,
                    fate: Fate::Queued,
                });
            }
        }
        for key in KEYS {
            if let Some(slot) = self.devices[device].device_only.get_mut(key) {
                *slot = engine.get(key);
            }
        }
    }

    fn rows(&self, device: usize) -> BTreeMap<String, Option<SettingRow>> {
        let engine = self.engine(device);
        KEYS.iter()
            .map(|k| ((*k).to_owned(), engine.row(k)))
            .collect()
    }

    fn fresh_value(&mut self) -> Value {
        self.next_value += 1;
        json!(format!("v{}", self.next_value))
    }

    async fn restart(&mut self, device: usize) {
        self.drain(device);
        let d = &mut self.devices[device];
        // The old engine must be gone (it holds the profile's lock) before reopening.
        let old = d.engine.take().unwrap();
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "{}: engine still in use",
            d.name
        );
        drop(old);
        let (engine, events) = open_engine(
            self.base.path(),
            &d.name,
            &self.cloud.anon_key,
            &d.proxy,
            &d.skew,
        );
        d.engine = Some(engine);
        d.events = events;
    }

    /// The engine of `device`.
    fn engine(&self, device: usize) -> Arc<Engine> {
        self.devices[device].engine.clone().unwrap()
    }

    /// A device that was signed out (revoked) forgets what it queued and signs in again.
    async fn after_sign_out(&mut self, device: usize) {
        let engine = self.engine(device);
        self.drain(device);
        let d = &mut self.devices[device];
        let heard = d
            .seen
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    EngineEvent::Security(lockstep_core::feed::SecurityEvent::SignedOut { .. })
                )
            })
            .count();
        if heard > d.signed_out_seen {
            d.signed_out_seen = heard;
            d.wiped = true;
        }
        if std::mem::take(&mut self.devices[device].wiped) {
            // What was queued at the wipe went with it, and so did the device-only values
            // (edits made since, signed out, stay queued for the next sign-in).
            for i in self.queued(device) {
                self.edits[i].fate = Fate::Discarded;
            }
            self.devices[device].device_only.clear();
        }
        if engine.session().is_signed_in().await.unwrap() {
            return;
        }
        if !self.server_up || self.devices[device].proxy.down.load(Ordering::SeqCst) {
            return;
        }
        match engine.sign_in(&self.email, PASSWORD).await {
            Ok(_) => self.note(format!("    device {device} signed in again")),
            Err(e) => self.note(format!("    device {device} could not sign in again: {e}")),
        }
    }

    /// What the front ends do when the server says the session is gone: wipe, then (here)
    /// sign in again.
    async fn on_error(&mut self, device: usize, error: &lockstep_core::engine::EngineError) {
        if error.is_signed_out() {
            let engine = self.engine(device);
            let dropped = engine.wipe().await.unwrap();
            self.devices[device].wiped = true;
            self.note(format!(
                "    device {device} signed out, {dropped} queued edit(s) discarded"
            ));
            self.after_sign_out(device).await;
        }
    }

    async fn run(&mut self, op: &Op) {
        self.note(format!("{op:?}"));
        match *op {
            Op::Edit { device, key } => {
                let value = self.fresh_value();
                let before = self.rows(device);
                let only = self.engine(device).is_device_only(KEYS[key]);
                self.engine(device).set(KEYS[key], value.clone()).unwrap();
                if only {
                    self.device_only_values.insert(value.to_string());
                }
                self.record_edits(device, &[key], &before);
            }
            Op::Reset { device, key } => {
                let before = self.rows(device);
                self.engine(device).reset(KEYS[key]).unwrap();
                self.record_edits(device, &[key], &before);
            }
            Op::Import { device, ref keys } => {
                let mut settings = BTreeMap::new();
                for &k in keys {
                    let value = self.fresh_value();
                    if self.engine(device).is_device_only(KEYS[k]) {
                        self.device_only_values.insert(value.to_string());
                    }
                    settings.insert(KEYS[k].to_owned(), value);
                }
                let document =
                    json!({"format": "lockstep-settings", "version": 1, "settings": settings});
                let before = self.rows(device);
                let engine = self.engine(device);
                engine
                    .import(document.to_string().as_bytes())
                    .unwrap_or_else(|e| panic!("import: {e}"));
                self.record_edits(device, keys, &before);
            }
            Op::DeviceOnly { device, key, on } => {
                let engine = self.engine(device);
                engine.set_device_only(KEYS[key], on).unwrap();
                if on {
                    let value = engine.get(KEYS[key]);
                    self.devices[device]
                        .device_only
                        .insert(KEYS[key].to_owned(), value);
                } else {
                    self.devices[device].device_only.remove(KEYS[key]);
                }
            }
            Op::Sync { device } | Op::Push { device } => {
                let engine = self.engine(device);
                let result = if matches!(op, Op::Sync { .. }) {
                    engine.sync_once().await
                } else {
                    engine.push().await
                };
                match result {
                    Ok(report) => self.note(format!("    {report:?}")),
                    Err(error) => {
                        self.note(format!("    error: {error}"));
                        self.on_error(device, &error).await;
                    }
                }
                self.settle(device);
            }
            Op::Live { device, edit } => {
                self.live(device, edit).await;
                self.settle(device);
            }
            Op::LoseNextAnswer { device } => {
                self.devices[device]
                    .proxy
                    .lose_next_answer
                    .store(true, Ordering::SeqCst);
            }
            Op::Restart { device } => self.restart(device).await,
            Op::CrashMidPush { device } => {
                let engine = self.engine(device);
                self.devices[device]
                    .proxy
                    .lose_next_answer
                    .store(true, Ordering::SeqCst);
                let result = engine.push().await;
                self.note(format!(
                    "    push: {:?}",
                    result.as_ref().map(|_| "answered")
                ));
                drop(engine);
                self.settle(device);
                self.restart(device).await;
            }
            Op::Offline { device, on } => self.devices[device].proxy.set_down(on),
            Op::KillServer => {
                self.cloud.kill();
                self.server_up = false;
            }
            Op::StartServer => {
                if !self.server_up {
                    self.cloud.restart().unwrap();
                    self.server_up = true;
                }
            }
            Op::Skew { device, ms } => {
                self.devices[device].skew.store(ms, Ordering::SeqCst);
                self.restart(device).await;
            }
            Op::Revoke { device, by } => {
                let target = self.engine(device).profile().device.id.clone();
                let engine = self.engine(by);
                match engine.revoke_device(&target).await {
                    Ok(()) => self.note("    revoked".into()),
                    Err(error) => {
                        self.note(format!("    revoke failed: {error}"));
                        self.on_error(by, &error).await;
                    }
                }
            }
        }
        // Any lost-answer flag not used up stays for the next request, like a flaky link.
        for device in 0..self.devices.len() {
            self.drain(device);
        }
    }

    /// Runs `device`'s live loop until it is caught up (or briefly, when it cannot be), then
    /// cuts the stream.
    async fn live(&mut self, device: usize, edit: Option<usize>) {
        let engine = self.engine(device);
        let reachable = self.server_up && !self.devices[device].proxy.down.load(Ordering::SeqCst);
        let handle = live::start(engine.clone(), fast_options());
        let mut status = engine.status();
        let deadline = Duration::from_secs(if reachable { 10 } else { 1 });
        let reached = tokio::time::timeout(
            deadline,
            status.wait_for(|s| {
                matches!(s.connection, Connection::Live | Connection::SignedOut) && s.pending == 0
            }),
        )
        .await
        .is_ok();
        if reached && let Some(key) = edit {
            let signed_in = engine.status().borrow().connection == Connection::Live;
            if signed_in {
                let value = self.fresh_value();
                let before = self.rows(device);
                if engine.is_device_only(KEYS[key]) {
                    self.device_only_values.insert(value.to_string());
                }
                engine.set(KEYS[key], value).unwrap();
                self.record_edits(device, &[key], &before);
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    status.wait_for(|s| s.pending == 0),
                )
                .await;
            }
        }
        self.note(format!(
            "    live: {:?}",
            engine.status().borrow().connection
        ));
        handle.stop().await;
        self.devices[device].proxy.cut();
        drop(engine);
        self.after_sign_out(device).await;
    }

    /// Heals every fault and syncs every device until the outboxes are empty.
    async fn heal(&mut self) {
        self.note("-- heal".into());
        if !self.server_up {
            self.cloud.restart().unwrap();
            self.server_up = true;
        }
        for d in &self.devices {
            d.proxy.set_down(false);
            d.proxy.lose_next_answer.store(false, Ordering::SeqCst);
        }
        for round in 0..3 {
            for device in 0..self.devices.len() {
                self.after_sign_out(device).await;
                let engine = self.engine(device);
                let mut tries = 0;
                loop {
                    match engine.sync_once().await {
                        Ok(_) => break,
                        Err(error) => {
                            self.note(format!("    heal {round}: device {device}: {error}"));
                            self.on_error(device, &error).await;
                            tries += 1;
                            assert!(tries < 5, "device {device} cannot sync: {error}");
                        }
                    }
                }
                self.settle(device);
                self.drain(device);
            }
        }
    }
}

fn open_engine(
    base: &Path,
    name: &str,
    anon_key: &str,
    proxy: &Proxy,
    skew: &Arc<AtomicI64>,
) -> (Arc<Engine>, broadcast::Receiver<EngineEvent>) {
    Keychain::use_mock_store();
    let opened = profile::open(
        base,
        name,
        OpenOptions {
            server_url: Some(proxy.url()),
            anon_key: Some(anon_key.to_owned()),
            device_name: Some(format!("Device {name}")),
        },
    )
    .unwrap();
    assert!(opened.problems.is_empty(), "{:?}", opened.problems);
    let skew = skew.clone();
    let engine = Arc::try_unwrap(opened.engine)
        .unwrap()
        .with_clock(Arc::new(move || {
            lockstep_core::clock_ms() + skew.load(Ordering::SeqCst)
        }));
    let events = engine.subscribe();
    (Arc::new(engine), events)
}

// ---------------------------------------------------------------------------------------------
// The oracle.

/// A broken promise, in words.
#[derive(Debug)]
struct Violation(String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the outcome of a healed schedule against the log of edits.
async fn check(world: &World) -> Result<(), Violation> {
    let fail = |s: String| Err(Violation(s));
    if let Some(broken) = world.broken.first() {
        return fail(broken.clone());
    }
    // Nothing is left queued or set aside.
    for (i, d) in world.devices.iter().enumerate() {
        let status = d.engine.as_ref().unwrap().status().borrow().clone();
        if status.pending != 0 || status.set_aside != 0 {
            return fail(format!("device {i} still has {status:?}"));
        }
    }
    // What the server holds, and every write it applied (its change feed).
    let reader = world.engine(0);
    let token = reader.session().access_token().await.unwrap();
    let client = reader.session().client();
    let server: BTreeMap<String, SettingRow> = client
        .pull(&token)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
    let mut applied: BTreeSet<(String, Hlc, String)> = BTreeSet::new();
    let mut since = 0;
    loop {
        let page = client.changes(&token, since, 500).await.unwrap();
        for change in &page.changes {
            if change.table == "user_settings"
                && let Ok(row) = serde_json::from_value::<SettingRow>(change.new.clone())
            {
                applied.insert((row.key, row.hlc, row.device_id));
            }
            since = change.seq;
        }
        if page.changes.len() < 500 {
            break;
        }
    }

    for key in KEYS {
        let edits: Vec<&Edit> = world.edits.iter().filter(|e| e.key == key).collect();
        // Acknowledged and neither discarded nor replaced on its device.
        let definite = edits
            .iter()
            .filter(|e| matches!(e.fate, Fate::Sent | Fate::Replaced))
            .max_by(|a, b| a.stamp().cmp(&b.stamp()));
        let row = server.get(key);
        match (definite, row) {
            (None, None) => {}
            (Some(e), None) => {
                return fail(format!(
                    "{key}: acknowledged edit {e:?} is not on the server"
                ));
            }
            (_, Some(row)) => {
                // The row must be one of the edits, and no acknowledged edit may beat it.
                let Some(source) = edits
                    .iter()
                    .find(|e| e.hlc == row.hlc && e.device_id == row.device_id)
                else {
                    return fail(format!(
                        "{key}: the server holds {row:?}, which no device wrote"
                    ));
                };
                if source.fate == Fate::Queued {
                    return fail(format!("{key}: the server's row comes from a queued edit"));
                }
                let value = (!row.deleted).then(|| row.value.clone());
                if value != source.value {
                    return fail(format!("{key}: server value {value:?} is not {source:?}"));
                }
                if let Some(best) = definite
                    && best.stamp() > source.stamp()
                {
                    return fail(format!(
                        "{key}: acknowledged edit {best:?} lost to the older {source:?}"
                    ));
                }
                if source.fate == Fate::Discarded
                    && !applied.contains(&(key.to_owned(), source.hlc, source.device_id.clone()))
                {
                    return fail(format!("{key}: a discarded edit won without being applied"));
                }
            }
        }
        // Every device agrees with the server.
        for (i, d) in world.devices.iter().enumerate() {
            let engine = d.engine.as_ref().unwrap();
            let mine = engine.row(key);
            let same = match (&mine, row) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.hlc == b.hlc
                        && a.device_id == b.device_id
                        && a.deleted == b.deleted
                        && a.value == b.value
                }
                _ => false,
            };
            if !same {
                return fail(format!(
                    "device {i} holds {mine:?} for {key}, the server {row:?}"
                ));
            }
            let shown = engine.get(key);
            let expected = match d.device_only.get(key) {
                Some(local) => local.clone(),
                None => row.filter(|r| !r.deleted).map(|r| r.value.clone()),
            };
            if shown != expected {
                return fail(format!(
                    "device {i} shows {shown:?} for {key}, expected {expected:?}"
                ));
            }
        }
    }
    // Device-only values never left their device.
    for row in server.values() {
        if world.device_only_values.contains(&row.value.to_string()) {
            return fail(format!("a device-only value reached the server: {row:?}"));
        }
    }
    // Superseded events: exactly the sent edits that the server never applied (plus, after a
    // lost answer, a sent edit that was applied and then beaten before the retry).
    for (i, d) in world.devices.iter().enumerate() {
        let reported: Vec<(&String, &Value, &SettingRow)> = d
            .seen
            .iter()
            .filter_map(|e| match e {
                EngineEvent::Superseded { key, lost, winner } => Some((key, lost, winner)),
                _ => None,
            })
            .collect();
        for (key, lost, winner) in &reported {
            let lost_value = (!lost.is_null()).then(|| (*lost).clone());
            let matching: Vec<&Edit> = world
                .edits
                .iter()
                .filter(|e| e.device == i && &e.key == *key && e.value == lost_value)
                .collect();
            let Some(edit) = matching.iter().find(|e| e.fate != Fate::Queued) else {
                return fail(format!(
                    "device {i} reported {key} = {lost} superseded, but never sent it"
                ));
            };
            if (winner.hlc, winner.device_id.as_str()) <= edit.stamp() {
                return fail(format!(
                    "device {i}: {edit:?} reported lost to the older {winner:?}"
                ));
            }
        }
        for e in world
            .edits
            .iter()
            .filter(|e| e.device == i && e.fate == Fate::Sent)
        {
            let was_applied = applied.contains(&(e.key.clone(), e.hlc, e.device_id.clone()));
            let told = reported.iter().any(|(key, lost, _)| {
                **key == e.key && (!lost.is_null()).then(|| (*lost).clone()) == e.value
            });
            if !was_applied && !told {
                return fail(format!(
                    "device {i}: {e:?} lost without the user being told"
                ));
            }
        }
        let mut once = BTreeSet::new();
        for (key, lost, _) in &reported {
            if !lost.is_null() && !once.insert((key.to_string(), lost.to_string())) {
                return fail(format!(
                    "device {i} reported {key} = {lost} superseded twice"
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running and shrinking.

/// Where the server keeps its data.
#[derive(Debug, Clone)]
enum Backend {
    /// A fresh SQLite file for each schedule.
    Sqlite,
    /// One PostgreSQL database shared by every schedule (each has an account of its own), and
    /// the server keys every schedule's node is given: a node with other keys than the ones the
    /// database was initialised with refuses to start.
    Postgres { url: String, secrets: String },
}

impl Backend {
    fn database_url(&self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres { url, .. } => Some(url.clone()),
        }
    }

    /// Prepares a node's data dir: on PostgreSQL, the keys shared by every schedule.
    fn prepare(&self, cloud_dir: &Path) {
        if let Backend::Postgres { secrets, .. } = self {
            std::fs::write(cloud_dir.join("secrets.json"), secrets).unwrap();
        }
    }
}

/// Runs one schedule from scratch; the trace and the outcome.
async fn run_schedule(
    backend: &Backend,
    seed: u64,
    devices: usize,
    ops: &[Op],
) -> (Vec<String>, Result<(), Violation>, Vec<&'static str>) {
    let cloud_dir = tempfile::tempdir().unwrap();
    backend.prepare(cloud_dir.path());
    let mut world = World::new(cloud_dir.path(), backend, seed, devices).await;
    let mut faults = Vec::new();
    for op in ops {
        world.run(op).await;
        faults.push(fault_name(op));
    }
    world.heal().await;
    let outcome = check(&world).await;
    let trace = std::mem::take(&mut world.trace);
    drop(world);
    (trace, outcome, faults)
}

fn fault_name(op: &Op) -> &'static str {
    match op {
        Op::Edit { .. } => "edit",
        Op::Reset { .. } => "reset",
        Op::Import { .. } => "import",
        Op::DeviceOnly { .. } => "device-only toggle",
        Op::Sync { .. } => "sync",
        Op::Push { .. } => "push",
        Op::Live { .. } => "live burst + stream cut",
        Op::LoseNextAnswer { .. } => "lost answer",
        Op::Restart { .. } => "device restart",
        Op::CrashMidPush { .. } => "device crash mid-push",
        Op::Offline { .. } => "device offline/online",
        Op::KillServer => "server kill -9",
        Op::StartServer => "server start",
        Op::Skew { .. } => "clock skew",
        Op::Revoke { .. } => "revoke + sign in again",
    }
}

/// Removes operations while the schedule still fails: a shorter trace to read.
async fn shrink(backend: &Backend, seed: u64, devices: usize, mut ops: Vec<Op>) -> Vec<Op> {
    let mut chunk = ops.len() / 2;
    let mut runs = 0;
    while chunk > 0 && runs < 40 {
        let mut start = 0;
        let mut shrunk = false;
        while start < ops.len() && runs < 40 {
            let mut candidate = ops.clone();
            candidate.drain(start..(start + chunk).min(ops.len()));
            runs += 1;
            let (_, outcome, _) = run_schedule(backend, seed, devices, &candidate).await;
            if outcome.is_err() {
                ops = candidate;
                shrunk = true;
            } else {
                start += chunk;
            }
        }
        if !shrunk {
            chunk /= 2;
        }
    }
    ops
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `schedules` schedules from `first_seed` on `backend`; panics with the seed and a shrunk
/// trace at the first that breaks a promise.
async fn simulate(backend: Backend, schedules: u64, first_seed: u64, steps: usize) {
    let started = Instant::now();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for n in 0..schedules {
        let seed = first_seed.wrapping_add(n);
        let (devices, ops) = schedule(seed, steps);
        // A panic in the harness (not a broken promise) still says which schedule it was.
        let ran = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run_schedule(
            &backend, seed, devices, &ops,
        )))
        .await;
        let (trace, outcome, faults) = ran.unwrap_or_else(|panic| {
            eprintln!(
                "schedule {seed} ({devices} devices) panicked; replay: cargo xtask sim \
                 --schedules 1 --seed {seed}"
            );
            std::panic::resume_unwind(panic)
        });
        for f in faults {
            *counts.entry(f).or_default() += 1;
        }
        if let Err(violation) = outcome {
            eprintln!(
                "schedule {seed} failed: {violation}\nfull trace:\n  {}",
                trace.join("\n  ")
            );
            let minimal = shrink(&backend, seed, devices, ops).await;
            let (trace, outcome, _) = run_schedule(&backend, seed, devices, &minimal).await;
            panic!(
                "simulation failed on {backend:?}: seed {seed} ({devices} devices): {violation}\n\
                 replay: cargo xtask sim --schedules 1 --seed {seed}\n\
                 shrunk schedule ({} steps, {}):\n  {}",
                minimal.len(),
                match outcome {
                    Ok(()) => "passes when replayed alone: timing-dependent".to_owned(),
                    Err(v) => format!("still fails: {v}"),
                },
                trace.join("\n  ")
            );
        }
        // A long run says how far it got, so one stopped early still tells something.
        if (n + 1) % 500 == 0 && n + 1 < schedules {
            eprintln!(
                "simulation: {} of {schedules} schedules passed ({:.0} s)",
                n + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "simulation on {}: {schedules} schedules of {steps} steps from seed {first_seed} in \
         {secs:.1} s ({:.2} schedules/s); steps run:",
        match backend {
            Backend::Sqlite => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        },
        schedules as f64 / secs
    );
    for (fault, count) in &counts {
        println!("  {fault:<26} {count}");
    }
}

const DEFAULT_SEED: u64 = 17_586_153;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_converge_on_every_acknowledged_edit() {
    simulate(
        Backend::Sqlite,
        env_number("LOCKSTEP_SIM_SCHEDULES", 200),
        env_number("LOCKSTEP_SIM_SEED", DEFAULT_SEED),
        env_number("LOCKSTEP_SIM_STEPS", 24) as usize,
    )
    .await;
}

/// A slice of the same schedules with the server on PostgreSQL (`LOCKSTEP_TEST_POSTGRES`;
/// skipped without it unless `LOCKSTEP_REQUIRE_POSTGRES=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_converge_on_postgres_too() {
    let url = std::env::var("LOCKSTEP_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty());
    let Some(url) = url else {
        assert!(
            std::env::var("LOCKSTEP_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "LOCKSTEP_REQUIRE_POSTGRES=1 but LOCKSTEP_TEST_POSTGRES is not set"
        );
        println!("skipped: no PostgreSQL (set LOCKSTEP_TEST_POSTGRES, or run cargo xtask test)");
        return;
    };
    // A database of its own, shared by its schedules (each has an account of its own).
    let name = format!("lockstep_sim_{}", uuid::Uuid::new_v4().simple());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect to LOCKSTEP_TEST_POSTGRES");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&url).expect("LOCKSTEP_TEST_POSTGRES is a URL");
    url.set_path(&name);
    let schedules = env_number("LOCKSTEP_SIM_SCHEDULES", 200).div_ceil(10);
    simulate(
        Backend::Postgres {
            url: url.to_string(),
            secrets: serde_json::to_string(&lockstep_cloud::keys::ServerKeys::generate()).unwrap(),
        },
        schedules,
        env_number("LOCKSTEP_SIM_SEED", DEFAULT_SEED),
        env_number("LOCKSTEP_SIM_STEPS", 24) as usize,
    )
    .await;
}

#[test]
fn schedules_are_a_function_of_their_seed() {
    assert_eq!(schedule(7, 30), schedule(7, 30));
    assert_ne!(schedule(7, 30).1, schedule(8, 30).1);
    // Over many seeds every kind of step comes up.
    let kinds: BTreeSet<&str> = (0..200)
        .flat_map(|s| schedule(s, 24).1)
        .map(|op| fault_name(&op))
        .collect();
    assert_eq!(kinds.len(), 15, "{kinds:?}");
}
