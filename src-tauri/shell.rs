//! The shell's state: which profile this instance is, its engine and live loop once connected,
//! and where engine events go (the window, notifications, the tray). No sync logic lives here.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use lockstep_core::{
    account::Enrollment,
    app_lock::Unlock,
    engine::{Engine, EngineEvent},
    live::{self, LiveHandle, LiveOptions},
    profile::{self, OpenOptions, ProfileArgs},
};
use tokio::sync::{Mutex, broadcast};

use crate::dto::{ErrorCode, ErrorDto};

/// How this instance was started: the profile arguments it shares with the CLI (`--profile`,
/// `--home`, `--device-name`, and `--server`/`--anon-key` to prefill the connect form), each
/// also read from its `LOCKSTEP_*` variable (`cargo xtask run` sets them).
pub type Launch = ProfileArgs;

/// The desktop app's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "lockstep-desktop",
    version,
    about = "The Lockstep desktop app: settings that sync across your devices"
)]
struct DesktopArgs {
    #[command(flatten)]
    profile: ProfileArgs,
}

/// Reads the command line (`args` includes the program name) and the environment. Arguments
/// that are not ours are passed over, wherever they stand: WebDriver and the OS may add their
/// own.
pub fn parse_launch<I, T>(args: I) -> Launch
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory as _, Parser as _};

    let mut command = DesktopArgs::command();
    command.build();
    // Each long option we know, and whether it takes a value.
    let known: Vec<(String, bool)> = command
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            Some((format!("--{long}"), arg.get_action().takes_values()))
        })
        .collect();
    let mut args = args.into_iter().map(Into::into);
    let mut ours: Vec<std::ffi::OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        let name = text.split_once('=').map_or(&*text, |(name, _)| name);
        let Some(&(_, takes_value)) = known.iter().find(|(long, _)| long == name) else {
            continue;
        };
        let inline_value = text.contains('=');
        ours.push(arg);
        if takes_value && !inline_value {
            ours.extend(args.next());
        }
    }
    DesktopArgs::parse_from(ours).profile
}

/// Where engine events go, installed by the app at start (tests install their own). Called on
/// an async task, in the order the events came: it must not wait (read the engine on a
/// blocking thread, as the app's notifications do).
pub type Sink = Arc<dyn Fn(&Arc<Engine>, &EngineEvent) + Send + Sync>;

struct Running {
    engine: Arc<Engine>,
    live: LiveHandle,
    forwarder: tokio::task::JoinHandle<()>,
}

/// What sees every engine event at once, locked or not, and is told when the lock changes: the
/// desktop notifications, which hold what they would show while locked (see
/// [`crate::notify::Notifications`]).
pub trait Observer: Send + Sync {
    fn event(&self, engine: &Arc<Engine>, event: &EngineEvent);
    fn locked(&self, engine: Option<&Arc<Engine>>, locked: bool);
}

/// The app lock's gate: whether commands and events are let through. The profile keeps the
/// lock itself (`lockstep_core::app_lock`); this mirrors it for every command to read.
#[derive(Default)]
struct Gate {
    locked: AtomicBool,
    /// Engine events that came while locked (values, device names): sent on unlock.
    held: std::sync::Mutex<Vec<EngineEvent>>,
    sink: std::sync::Mutex<Option<Sink>>,
    observer: std::sync::Mutex<Option<Arc<dyn Observer>>>,
}

impl Gate {
    fn observer(&self) -> Option<Arc<dyn Observer>> {
        self.observer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn sink(&self) -> Option<Sink> {
        self.sink
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `event` on, or holds it while locked (a status passes: it shows no data). The
    /// observer sees it at once either way.
    fn forward(&self, engine: &Arc<Engine>, event: EngineEvent) {
        if let Some(observer) = self.observer() {
            observer.event(engine, &event);
        }
        let Some(sink) = self.sink() else { return };
        if self.locked.load(Ordering::SeqCst) && !matches!(event, EngineEvent::Status(_)) {
            let mut held = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A long lock keeps the newest events only.
            if held.len() >= HELD_EVENTS {
                held.remove(0);
            }
            held.push(event);
            return;
        }
        sink(engine, &event);
    }

    fn set_locked(&self, engine: Option<&Arc<Engine>>, locked: bool) {
        self.locked.store(locked, Ordering::SeqCst);
        if let Some(observer) = self.observer() {
            observer.locked(engine, locked);
        }
        if locked {
            return;
        }
        let held = std::mem::take(
            &mut *self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if let (Some(engine), Some(sink)) = (engine, self.sink()) {
            for event in held {
                sink(engine, &event);
            }
        }
    }
}

/// How many events a lock holds at most.
const HELD_EVENTS: usize = 1_000;

impl Drop for Running {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// The state every command reaches through `tauri::State<Shell>`.
pub struct Shell {
    pub launch: Launch,
    running: Mutex<Option<Running>>,
    enrollment: Mutex<Option<Enrollment>>,
    gate: Arc<Gate>,
    pub problems: std::sync::Mutex<Vec<String>>,
    pub live_options: LiveOptions,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("launch", &self.launch)
            .finish_non_exhaustive()
    }
}

impl Shell {
    pub fn new(launch: Launch) -> Shell {
        Shell {
            launch,
            running: Mutex::new(None),
            enrollment: Mutex::new(None),
            gate: Arc::new(Gate::default()),
            problems: std::sync::Mutex::new(Vec::new()),
            live_options: LiveOptions::default(),
        }
    }

    /// Sets where engine events go.
    pub fn set_sink(&self, sink: Sink) {
        *self
            .gate
            .sink
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sink);
    }

    /// Sets what sees every event at once, locked or not (the notifications).
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        *self
            .gate
            .observer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(observer);
    }

    /// Opens the profile (with a server the first time) and starts its live loop.
    pub async fn open(&self, options: OpenOptions) -> Result<(), ErrorDto> {
        let mut running = self.running.lock().await;
        if running.is_some() && options.server_url.is_none() {
            return Ok(());
        }
        *running = None;
        // Opening reads and writes the profile's files and database: not on an async worker.
        let (base, name) = (self.launch.base_dir(), self.launch.name.clone());
        let opened =
            tauri::async_runtime::spawn_blocking(move || profile::open(&base, &name, options))
                .await
                .map_err(|error| {
                    ErrorDto::new(
                        ErrorCode::Storage,
                        format!("the profile could not be opened: {error}"),
                    )
                })??;
        self.problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(opened.problems);
        let engine = opened.engine;
        // Locked before any command or event gets through.
        let locked = engine.lock_at_start().await?;
        self.gate.set_locked(Some(&engine), locked);
        let mut events = engine.subscribe();
        let (gate, forwarded) = (self.gate.clone(), engine.clone());
        let forwarder = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => gate.forward(&forwarded, event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the window missed engine events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        // A sign-out the server has not heard of yet (made offline): tell it now.
        let finishing = engine.clone();
        tokio::spawn(async move { finishing.finish_pending_sign_out_quietly().await });
        let live = live::start(engine.clone(), self.live_options.clone());
        *running = Some(Running {
            engine,
            live,
            forwarder,
        });
        Ok(())
    }

    /// Opens the profile if it was set up before (no server needed); `false` if it was not.
    pub async fn open_existing(&self) -> Result<bool, ErrorDto> {
        match self.open(self.default_options()).await {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.code, ErrorCode::NotConnected) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The launch's options without its server: that only prefills the connect form.
    fn default_options(&self) -> OpenOptions {
        OpenOptions {
            server_url: None,
            anon_key: None,
            ..self.launch.open_options()
        }
    }

    /// The engine, or `NotConnected`, or `Locked` while the app lock is on: what every
    /// command that reads or changes anything goes through.
    pub async fn engine(&self) -> Result<Arc<Engine>, ErrorDto> {
        self.unlocked()?;
        self.engine_while_locked().await
    }

    /// The gate: `Locked` while the app lock is on.
    pub fn unlocked(&self) -> Result<(), ErrorDto> {
        if self.is_locked() {
            return Err(ErrorDto::new(
                ErrorCode::Locked,
                "Lockstep is locked: enter a code from your authenticator app",
            ));
        }
        Ok(())
    }

    /// The engine even while locked: only for unlocking, signing out and the lock screen.
    pub async fn engine_while_locked(&self) -> Result<Arc<Engine>, ErrorDto> {
        self.running
            .lock()
            .await
            .as_ref()
            .map(|r| r.engine.clone())
            .ok_or_else(|| {
                ErrorDto::new(
                    ErrorCode::NotConnected,
                    "connect to a Lockstep server first",
                )
            })
    }

    /// Runs `f` with the live loop's handle, if running.
    pub async fn with_live(&self, f: impl FnOnce(&LiveHandle)) {
        if let Some(running) = self.running.lock().await.as_ref() {
            f(&running.live);
        }
    }

    /// Whether the app lock is on.
    pub fn is_locked(&self) -> bool {
        self.gate.locked.load(Ordering::SeqCst)
    }

    /// Locks the app now: commands are refused and events held until a code unlocks it.
    pub async fn lock_now(&self) -> Result<(), ErrorDto> {
        let engine = self.engine_while_locked().await?;
        engine.lock().await?;
        self.gate.set_locked(Some(&engine), true);
        Ok(())
    }

    /// Tries to unlock with a code (`recovery`: one of the account's recovery codes).
    pub async fn unlock(&self, code: &str, recovery: bool) -> Result<Unlock, ErrorDto> {
        let engine = self.engine_while_locked().await?;
        let outcome = if recovery {
            engine.unlock_with_recovery_code(code).await?
        } else {
            engine.unlock_with_code(code).await?
        };
        if outcome == Unlock::Unlocked {
            self.gate.set_locked(Some(&engine), false);
        }
        Ok(outcome)
    }

    /// After a sign-out of this device: its lock went with its secrets.
    pub async fn signed_out(&self) {
        *self.enrollment.lock().await = None;
        let engine = self.engine_while_locked().await.ok();
        self.gate.set_locked(engine.as_ref(), false);
    }

    /// The authenticator enrollment waiting for its first code, if any (held while the
    /// guard lives: one enrollment at a time).
    pub async fn enrollment(&self) -> tokio::sync::MutexGuard<'_, Option<Enrollment>> {
        self.enrollment.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launch_reads_the_shared_profile_arguments_and_ignores_foreign_ones() {
        let launch = parse_launch([
            "lockstep-desktop",
            "--profile",
            "work",
            "--webdriver-port=4444",
            "-psn_0_12345",
            "stray",
            "--device-name",
            "Work laptop",
            "--home=/tmp/lockstep-home",
        ]);
        assert_eq!(launch.name, "work");
        assert_eq!(launch.device_name.as_deref(), Some("Work laptop"));
        assert_eq!(
            launch.base_dir(),
            std::path::Path::new("/tmp/lockstep-home")
        );
    }
}
