//! The live loop of one profile: keeps the device in sync for as long as it runs.
//!
//! 1. Catch up: push the outbox and pull what changed since the cursor ([`Engine::sync_once`]).
//! 2. Open the change stream (`/realtime/v1/sse`) with `Last-Event-ID` set to the cursor, so the
//!    server replays exactly what this device has not applied, then streams live changes.
//!    Each change is applied (own echoes are recognised by device id) and the cursor saved.
//! 3. While the stream is open, a local edit is pushed at once.
//! 4. When the stream ends: a `token_expired` end reconnects at once with a refreshed token;
//!    `must-refetch` does a full pull; an ended session is checked with the server and, if it
//!    is really gone, the profile's secrets and cache are wiped ("signed out by" a named device);
//!    `insufficient_aal` waits for the user to verify a code. Anything else is a failure:
//!    reconnect with exponential backoff and jitter. A watchdog treats a stream that has been
//!    silent for longer than [`LiveOptions::heartbeat_timeout`] as dead (the server sends a
//!    heartbeat every 15 s).
//! 5. After [`LiveOptions::failures_before_polling`] failures in a row (a proxy that kills
//!    long-lived connections, say), it polls the change log every
//!    [`LiveOptions::poll_interval`] and keeps retrying the stream in between.
//!
//! The status ([`Connection`]) follows: `Live` once the replay is over, `Polling`, `Offline`
//! when the server cannot be reached, `StepUpRequired`, `SignedOut`, `Paused`.

use std::{sync::Arc, time::Duration};

use eventsource_client::{self as es, Client as _, SSE};
use futures::{FutureExt as _, StreamExt as _};
use lockstep_protocol::{
    devices,
    sync::{ChangeEvent, StreamEventKind},
};
use rand::Rng as _;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use crate::{
    engine::{Connection, Engine, EngineError, EngineEvent},
    feed::SecurityEvent,
    session::SessionError,
};

/// Tuning of the live loop.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// How often the change log is polled when the stream cannot be used.
    pub poll_interval: Duration,
    /// A stream silent for this long is considered dead.
    pub heartbeat_timeout: Duration,
    /// First reconnect delay; doubles on each failure up to [`LiveOptions::backoff_max`].
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Stream failures in a row before polling takes over.
    pub failures_before_polling: u32,
    /// The stream's URL, when it is not `<server>/realtime/v1/sse` (a deployment that serves
    /// realtime elsewhere).
    pub stream_url: Option<String>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            poll_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(45),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            failures_before_polling: 3,
            stream_url: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Pause,
    Stop,
    /// Another process on this profile runs the live loop: follow what it writes.
    Follow,
}

/// How long the live loop's lease lasts unless renewed: how soon another process takes over
/// when the one running the loop dies.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often the holder renews the lease, and the others try to take it.
const LEASE_RENEW: Duration = Duration::from_secs(1);
/// At most this many streamed changes are applied as one transaction.
const STREAM_BATCH: usize = 500;
/// How often the profile is checked for what other processes on it wrote.
const ELSEWHERE_EVERY: Duration = Duration::from_millis(100);

/// The running loop. Dropping the handle stops it.
#[derive(Debug)]
pub struct LiveHandle {
    control: watch::Sender<Control>,
    kick: Arc<Notify>,
    task: Option<JoinHandle<()>>,
    engine: Arc<Engine>,
}

impl LiveHandle {
    /// Pauses syncing (edits keep queueing locally).
    pub fn pause(&self) {
        self.control.send_replace(Control::Pause);
    }

    pub fn resume(&self) {
        self.control.send_replace(Control::Run);
    }

    pub fn is_paused(&self) -> bool {
        *self.control.borrow() == Control::Pause
    }

    /// Syncs now, and retries at once whatever was waiting (a reconnect, a step-up, a sign-in).
    pub fn sync_now(&self) {
        self.kick.notify_one();
    }

    /// Stops the loop and waits for it to finish.
    pub async fn stop(mut self) {
        self.control.send_replace(Control::Stop);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        not_running(&self.engine);
    }
}

impl Drop for LiveHandle {
    /// Stops the loop without waiting for it, and gives the lease up at once (a short
    /// transaction, waited for here), so that another process on the profile takes over
    /// without waiting for it to expire: an app that quits does not [`LiveHandle::stop`].
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            not_running(&self.engine);
            if let Err(error) = self.engine.release_live_lease_blocking() {
                tracing::warn!(%error, "could not give up the live loop's lease");
            }
        }
    }
}

/// The status of an engine whose live loop is not running: a connection state the loop set
/// (live, polling, offline, paused) is no longer true, while "signed out" and "code needed" are
/// facts about the session and stay.
fn not_running(engine: &Engine) {
    let stale = !matches!(
        engine.status().borrow().connection,
        Connection::SignedOut | Connection::StepUpRequired
    );
    if stale {
        engine.set_connection(Connection::Connecting);
    }
}

/// Starts the live loop of `engine` on the tokio runtime.
pub fn start(engine: Arc<Engine>, options: LiveOptions) -> LiveHandle {
    let (control, rx) = watch::channel(Control::Run);
    let kick = engine.kick.clone();
    // Until the new stream says "ready", no earlier "Live" holds.
    not_running(&engine);
    let task = tokio::spawn(run_leased(engine.clone(), options, rx));
    LiveHandle {
        control,
        kick,
        task: Some(task),
        engine,
    }
}

/// Why a stream ended.
#[derive(Debug)]
enum StreamEnd {
    /// Paused or stopped.
    Control,
    /// The access token expired: reconnect at once with a fresh one.
    TokenExpired,
    MustRefetch,
    StepUp,
    /// The server says the session ended (or refused the token): check and maybe wipe.
    SessionEnded,
    /// The server cannot be reached.
    Offline(String),
    /// Anything else (dropped, silent, refused): back off and retry.
    Failed(String),
}

/// What to do after a failed catch-up.
enum Next {
    Continue,
    Wait(Connection),
}

struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    fn delay(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        let base = self.initial.saturating_mul(1 << exp).min(self.max);
        // Full jitter in the upper half: spread reconnects of many clients after an outage.
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// Runs the live loop while this engine holds the profile's lease, and follows the process
/// that holds it otherwise; gives the lease up when stopped.
async fn run_leased(engine: Arc<Engine>, options: LiveOptions, user: watch::Receiver<Control>) {
    // The lease first, so that a loop nobody else runs starts running, not following.
    let held = match engine.take_live_lease(LEASE_TTL).await {
        Ok(held) => held,
        Err(error) => {
            tracing::warn!(%error, "could not take the live loop's lease");
            false
        }
    };
    let first = match (*user.borrow(), held) {
        (Control::Stop, _) => Control::Stop,
        (Control::Pause, _) => Control::Pause,
        (_, true) => Control::Run,
        (_, false) => Control::Follow,
    };
    let (effective, effective_rx) = watch::channel(first);
    // Aborted (and its hold on the engine dropped) however this task ends, aborted included.
    let keeper = AbortOnDrop(tokio::spawn(keep_lease(
        engine.clone(),
        user,
        effective,
        held,
    )));
    run(engine.clone(), options, effective_rx).await;
    keeper.stop().await;
    if let Err(error) = engine.release_live_lease().await {
        tracing::warn!(%error, "could not give up the live loop's lease");
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Aborts the task and waits until it is gone.
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Takes (and renews) the live loop's lease, takes in what other processes on the profile
/// wrote, and turns the user's wish and the lease into what the loop does: run, pause, follow
/// or stop. The lease is kept while paused, so that a paused profile is not synced by another
/// process either. Ends when the loop is stopped or its handle dropped.
async fn keep_lease(
    engine: Arc<Engine>,
    mut user: watch::Receiver<Control>,
    effective: watch::Sender<Control>,
    mut held: bool,
) {
    let mut renewed = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(ELSEWHERE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = user.changed() => {
                if changed.is_err() {
                    // The handle is gone.
                    effective.send_replace(Control::Stop);
                    return;
                }
            }
        }
        let wanted = *user.borrow_and_update();
        if wanted == Control::Stop {
            effective.send_replace(Control::Stop);
            return;
        }
        if renewed.elapsed() >= LEASE_RENEW {
            match engine.take_live_lease(LEASE_TTL).await {
                Ok(now_held) => {
                    if now_held != held {
                        tracing::info!(held = now_held, "the live loop's lease changed hands");
                    }
                    held = now_held;
                    renewed = tokio::time::Instant::now();
                }
                Err(error) => tracing::warn!(%error, "could not renew the live loop's lease"),
            }
        }
        if let Err(error) = engine.take_in_elsewhere().await {
            tracing::warn!(%error, "could not read what other processes changed");
        }
        let next = match (wanted, held) {
            (Control::Pause, _) => Control::Pause,
            (_, true) => Control::Run,
            (_, false) => Control::Follow,
        };
        effective.send_if_modified(|current| {
            let changed = *current != next;
            *current = next;
            changed
        });
    }
}

async fn run(engine: Arc<Engine>, options: LiveOptions, mut control: watch::Receiver<Control>) {
    // rustls wants one process-wide crypto provider; where several are compiled in (the desktop
    // app's dependencies bring more than one) it cannot pick, so pick ring, unless the program
    // chose already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = match launchdarkly_sdk_transport::HyperTransport::builder()
        .connect_timeout(Duration::from_secs(10))
        .build_https()
    {
        Ok(transport) => transport,
        Err(error) => {
            engine.emit(EngineEvent::Problem(format!(
                "cannot start the live connection: {error}"
            )));
            return;
        }
    };
    let mut backoff = Backoff {
        initial: options.backoff_initial,
        max: options.backoff_max,
        failures: 0,
    };
    loop {
        let wanted = *control.borrow_and_update();
        match wanted {
            Control::Stop => return,
            Control::Pause | Control::Follow => {
                engine.set_connection(if wanted == Control::Pause {
                    Connection::Paused
                } else {
                    Connection::Shared
                });
                if control.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Control::Run => {}
        }

        // Catch up (and learn whether the server is there at all).
        if let Err(error) = engine.sync_once().await {
            // A server that asked us to slow down (429/503 with `Retry-After`) is obeyed.
            let asked = error.retry_after().unwrap_or_default();
            match after_error(&engine, error).await {
                Next::Continue => continue,
                Next::Wait(Connection::Offline) => {
                    backoff.failures += 1;
                    engine.set_connection(Connection::Offline);
                    wait(&engine, &mut control, Some(backoff.delay().max(asked))).await;
                }
                Next::Wait(connection) => {
                    engine.set_connection(connection);
                    wait(&engine, &mut control, None).await;
                }
            }
            continue;
        }
        if check_session_if_due(&engine).await {
            continue;
        }

        if backoff.failures >= options.failures_before_polling {
            // The stream keeps failing: poll until the next attempt.
            engine.set_connection(Connection::Polling);
            let until = tokio::time::Instant::now() + backoff.delay();
            if !poll_until(&engine, &options, &mut control, until).await {
                continue;
            }
        } else if engine.status().borrow().connection != Connection::Live {
            engine.set_connection(Connection::Connecting);
        }

        let end = stream(&engine, &options, &transport, &mut control, &mut backoff).await;
        tracing::debug!(?end, "change stream ended");
        match end {
            StreamEnd::Control | StreamEnd::TokenExpired => {}
            StreamEnd::MustRefetch => engine.require_full_pull(),
            StreamEnd::StepUp => {
                // The stream judged the session as it was when it opened; this device may
                // have stepped up since (it turned MFA on itself). Ask again.
                match engine.sync_once().await {
                    Ok(_) => tracing::debug!("synced after the stream asked for a second factor"),
                    Err(error) => {
                        tracing::debug!(%error, "the stream asked for a second factor");
                        if let Next::Wait(connection) = after_error(&engine, error).await {
                            // Offline: retry later; otherwise wait for the user (a code).
                            let delay =
                                (connection == Connection::Offline).then(|| backoff.delay());
                            engine.set_connection(connection);
                            wait(&engine, &mut control, delay).await;
                        }
                    }
                }
            }
            StreamEnd::SessionEnded => {
                if !confirm_session(&engine).await {
                    wait(&engine, &mut control, None).await;
                }
            }
            StreamEnd::Offline(ref reason) | StreamEnd::Failed(ref reason) => {
                backoff.failures += 1;
                tracing::info!(%reason, failures = backoff.failures, "change stream failed");
                let next = if backoff.failures >= options.failures_before_polling {
                    Connection::Polling
                } else if matches!(end, StreamEnd::Offline(_)) {
                    Connection::Offline
                } else {
                    Connection::Connecting
                };
                engine.set_connection(next);
                if backoff.failures < options.failures_before_polling {
                    wait(&engine, &mut control, Some(backoff.delay())).await;
                }
            }
        }
    }
}

/// Classifies a failed catch-up.
async fn after_error(engine: &Engine, error: EngineError) -> Next {
    if error.needs_second_factor() {
        step_up_needed(engine);
        return Next::Wait(Connection::StepUpRequired);
    }
    match error {
        EngineError::Session(SessionError::SignedOut) => Next::Wait(Connection::SignedOut),
        EngineError::Session(SessionError::Ended(_)) => {
            signed_out(engine).await;
            Next::Wait(Connection::SignedOut)
        }
        e if e.is_signed_out() => {
            if confirm_session(engine).await {
                Next::Continue
            } else {
                Next::Wait(Connection::SignedOut)
            }
        }
        e if e.is_offline() => Next::Wait(Connection::Offline),
        e => {
            tracing::warn!(error = %e, "sync failed");
            engine.emit(EngineEvent::Problem(format!("Sync failed: {e}")));
            Next::Wait(Connection::Offline)
        }
    }
}

fn step_up_needed(engine: &Engine) {
    if engine.status().borrow().connection != Connection::StepUpRequired {
        engine.emit(EngineEvent::Security(SecurityEvent::StepUpRequired));
    }
    engine.set_connection(Connection::StepUpRequired);
}

/// Asks the server whether this session still exists (by refreshing it). If it does not, the
/// profile is wiped. Returns whether the session is alive.
async fn confirm_session(engine: &Engine) -> bool {
    match engine.session().refresh_now().await {
        Ok(_) => {
            engine.take_session_check();
            true
        }
        Err(SessionError::Ended(_) | SessionError::SignedOut) => {
            signed_out(engine).await;
            false
        }
        // Cannot tell now (offline): assume alive, the next request will tell.
        Err(_) => true,
    }
}

/// A feed entry said this device's session may have ended: check. Returns whether the
/// device was signed out.
async fn check_session_if_due(engine: &Engine) -> bool {
    if !engine.session_check_due() {
        return false;
    }
    !confirm_session(engine).await
}

/// Wipes the profile after the server ended its session, and says so.
async fn signed_out(engine: &Engine) {
    let by = engine.take_session_check().flatten();
    match engine.wipe().await {
        Ok(dropped) => {
            if dropped > 0 {
                engine.emit(EngineEvent::Problem(format!(
                    "{dropped} edit(s) not yet synced were discarded with the signed-out session"
                )));
            }
        }
        Err(error) => {
            tracing::error!(%error, "could not wipe the signed-out profile");
            engine.emit(EngineEvent::Problem(format!(
                "Signed out, but this device's data could not be fully removed: {error}"
            )));
        }
    }
    engine.emit(EngineEvent::Security(SecurityEvent::SignedOut { by }));
}

/// Waits for a kick, a control change or (if given) a delay.
async fn wait(engine: &Engine, control: &mut watch::Receiver<Control>, delay: Option<Duration>) {
    let sleep = async {
        match delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = sleep => {}
        () = engine.kick.notified() => {}
        _ = control.changed() => {}
    }
}

/// Polls the change log until `until`. Returns false when polling ended for another reason
/// (paused, offline, signed out): go round the main loop again.
async fn poll_until(
    engine: &Engine,
    options: &LiveOptions,
    control: &mut watch::Receiver<Control>,
    until: tokio::time::Instant,
) -> bool {
    loop {
        let next = (tokio::time::Instant::now() + options.poll_interval).min(until);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = engine.edited.notified() => {}
            () = engine.kick.notified() => {}
            _ = control.changed() => return false,
        }
        if let Err(error) = engine.sync_once().await {
            match after_error(engine, error).await {
                Next::Continue | Next::Wait(_) => return false,
            }
        }
        if check_session_if_due(engine).await {
            return false;
        }
        if tokio::time::Instant::now() >= until {
            return true;
        }
    }
}

async fn stream<T: launchdarkly_sdk_transport::HttpTransport>(
    engine: &Engine,
    options: &LiveOptions,
    transport: &T,
    control: &mut watch::Receiver<Control>,
    backoff: &mut Backoff,
) -> StreamEnd {
    let token = match engine.session().access_token().await {
        Ok(token) => token,
        Err(SessionError::Api(e)) if e.is_transient() => return StreamEnd::Offline(e.to_string()),
        Err(_) => return StreamEnd::SessionEnded,
    };
    let client = engine.session().client();
    let url = options
        .stream_url
        .clone()
        .unwrap_or_else(|| format!("{}/realtime/v1/sse", client.base_url()));
    let since = match engine.cursor_async().await {
        Ok(since) => since,
        Err(error) => return StreamEnd::Failed(format!("could not read the cursor: {error}")),
    };
    let built = es::ClientBuilder::for_url(&url)
        .and_then(|b| b.header("apikey", client.anon_key()))
        .and_then(|b| b.header("authorization", &format!("Bearer {token}")))
        .and_then(|b| b.header(devices::DEVICE_ID_HEADER, &client.device().id))
        .map(|b| {
            b.last_event_id(since.to_string())
                .reconnect(es::ReconnectOptions::reconnect(false).build())
        });
    let sse = match built {
        Ok(builder) => builder.build_with_transport(transport.clone()),
        Err(error) => return StreamEnd::Failed(format!("bad stream request: {error}")),
    };
    let mut events = sse.stream();
    // An item read ahead while batching changes, handled next.
    let mut pending: Option<Option<Result<SSE, es::Error>>> = None;
    loop {
        let item = if let Some(item) = pending.take() {
            Ok(item)
        } else {
            tokio::select! {
                item = tokio::time::timeout(options.heartbeat_timeout, events.next()) => item,
                () = engine.edited.notified() => {
                    if let Err(error) = engine.push().await {
                        match error {
                            e if e.is_offline() => return StreamEnd::Offline(e.to_string()),
                            e if e.needs_second_factor() => return StreamEnd::StepUp,
                            e if e.is_signed_out() => return StreamEnd::SessionEnded,
                            e => engine.emit(EngineEvent::Problem(format!("Push failed: {e}"))),
                        }
                    }
                    continue;
                }
                () = engine.kick.notified() => {
                    // "Sync now" while live: push and re-read the log (cheap; the stream stays).
                    if let Err(error) = engine.sync_once().await {
                        tracing::info!(%error, "sync while live failed");
                    }
                    continue;
                }
                _ = control.changed() => return StreamEnd::Control,
            }
        };
        let event = match item {
            Err(_) => {
                return StreamEnd::Failed(format!(
                    "no heartbeat for {} s",
                    options.heartbeat_timeout.as_secs()
                ));
            }
            Ok(None) => return StreamEnd::Failed("the stream closed".into()),
            Ok(Some(Err(error))) => return classify_stream_error(error),
            Ok(Some(Ok(SSE::Event(event)))) => event,
            Ok(Some(Ok(SSE::Comment(_) | SSE::Connected(_)))) => continue,
        };
        let Some(kind) = StreamEventKind::parse(&event.event_type) else {
            tracing::debug!(event = event.event_type, "unknown stream event ignored");
            continue;
        };
        match kind {
            StreamEventKind::Change => {
                // This change and every one already received after it: one transaction.
                let mut batch = Vec::new();
                let mut next = Some(event);
                let mut ended = None;
                while let Some(event) = next.take() {
                    match serde_json::from_str::<ChangeEvent>(&event.data) {
                        Ok(change) => batch.push(change),
                        Err(error) => {
                            tracing::warn!(%error, "unreadable change event");
                            ended = Some(StreamEnd::Failed(format!(
                                "unreadable change event: {error}"
                            )));
                            break;
                        }
                    }
                    if batch.len() >= STREAM_BATCH {
                        break;
                    }
                    match events.next().now_or_never() {
                        Some(Some(Ok(SSE::Event(more))))
                            if StreamEventKind::parse(&more.event_type)
                                == Some(StreamEventKind::Change) =>
                        {
                            next = Some(more);
                        }
                        // Comments and heartbeats carry nothing.
                        Some(Some(Ok(SSE::Comment(_) | SSE::Connected(_)))) => {}
                        // Anything else is handled in order: apply the batch first.
                        Some(other) => {
                            pending = Some(other);
                        }
                        None => {}
                    }
                }
                if let Err(error) = engine.apply_changes(batch).await {
                    tracing::warn!(%error, "could not apply streamed changes");
                    engine.emit(EngineEvent::Problem(format!(
                        "Could not save changes from other devices: {error}"
                    )));
                    return StreamEnd::Failed(format!("could not save changes: {error}"));
                }
                // What arrived is in: this device is in step with the server as of now.
                let now = engine.now_ms();
                engine.update_status(|s| s.last_synced_ms = Some(now));
                if let Some(end) = ended {
                    return end;
                }
                if engine.session_check_due() {
                    return StreamEnd::SessionEnded;
                }
            }
            StreamEventKind::Ready => {
                backoff.failures = 0;
                engine.set_connection(Connection::Live);
                let now = engine.now_ms();
                engine.update_status(|s| s.last_synced_ms = Some(now));
            }
            StreamEventKind::MustRefetch => return StreamEnd::MustRefetch,
            StreamEventKind::InsufficientAal => return StreamEnd::StepUp,
            StreamEventKind::Session => {
                use lockstep_protocol::sync::{StreamEnd as Ended, StreamEndReason as Reason};
                let reason = serde_json::from_str::<Ended>(&event.data)
                    .ok()
                    .map(|end| end.reason);
                return match reason {
                    Some(Reason::TokenExpired) => StreamEnd::TokenExpired,
                    // The server is restarting: reconnect (with Last-Event-ID), stay signed in.
                    Some(Reason::ServerShutdown) => {
                        StreamEnd::Offline("the server is restarting".into())
                    }
                    // Newer streams of this account took this one's place: retry after the
                    // back-off, so two copies of the app take turns slowly, never in a loop.
                    Some(Reason::TooManyStreams) => StreamEnd::Failed(
                        "newer change streams of this account replaced this one".into(),
                    ),
                    // Signed out, or a reason this version does not know: check the session.
                    Some(Reason::SignedOut) | None => StreamEnd::SessionEnded,
                };
            }
        }
    }
}

fn classify_stream_error(error: es::Error) -> StreamEnd {
    match error {
        es::Error::UnexpectedResponse(response, _) => match response.status() {
            401 => StreamEnd::SessionEnded,
            403 => StreamEnd::StepUp,
            status => StreamEnd::Failed(format!("the stream was refused (HTTP {status})")),
        },
        es::Error::Transport(error) => StreamEnd::Offline(error.to_string()),
        es::Error::TimedOut => StreamEnd::Offline("timed out".into()),
        other => StreamEnd::Failed(other.to_string()),
    }
}
