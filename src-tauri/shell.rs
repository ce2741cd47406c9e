//! The shell's state: which profile this instance is, its engine and live loop once connected,
//! and where engine events go (the window, notifications, the tray). No sync logic lives here.

use std::{path::PathBuf, sync::Arc};

use lockstep_core::{
    account::Enrollment,
    engine::{Engine, EngineEvent},
    live::{self, LiveHandle, LiveOptions},
    profile::{self, OpenOptions},
};
use tokio::sync::{Mutex, broadcast};

use crate::dto::{ErrorCode, ErrorDto};

/// How this instance was started: `--profile NAME` (or `LOCKSTEP_PROFILE`), and the server to
/// prefill (`LOCKSTEP_SERVER`, `LOCKSTEP_ANON_KEY`; `cargo xtask run` sets them).
#[derive(Debug, Clone)]
pub struct Launch {
    pub profile: String,
    pub base_dir: PathBuf,
    pub server_url: Option<String>,
    pub anon_key: Option<String>,
    pub device_name: Option<String>,
}

impl Launch {
    /// From the command line and the environment. Unknown arguments are ignored (WebDriver and
    /// the OS may add their own).
    pub fn from_env(args: impl IntoIterator<Item = String>) -> Launch {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut profile = env("LOCKSTEP_PROFILE");
        let mut device_name = env("LOCKSTEP_DEVICE_NAME");
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--profile" => profile = args.next(),
                "--device-name" => device_name = args.next(),
                other => {
                    if let Some(value) = other.strip_prefix("--profile=") {
                        profile = Some(value.to_owned());
                    }
                }
            }
        }
        Launch {
            profile: profile.unwrap_or_else(|| "default".into()),
            base_dir: profile::default_base_dir(),
            server_url: env("LOCKSTEP_SERVER"),
            anon_key: env("LOCKSTEP_ANON_KEY"),
            device_name,
        }
    }
}

/// Where engine events go, installed by the app at start (tests install their own).
pub type Sink = Arc<dyn Fn(&Engine, &EngineEvent) + Send + Sync>;

struct Running {
    engine: Arc<Engine>,
    live: LiveHandle,
    forwarder: tokio::task::JoinHandle<()>,
}

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
    sink: std::sync::Mutex<Option<Sink>>,
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
            sink: std::sync::Mutex::new(None),
            problems: std::sync::Mutex::new(Vec::new()),
            live_options: LiveOptions::default(),
        }
    }

    /// Sets where engine events go.
    pub fn set_sink(&self, sink: Sink) {
        *self
            .sink
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sink);
    }

    /// Opens the profile (with a server the first time) and starts its live loop.
    pub async fn open(&self, options: OpenOptions) -> Result<(), ErrorDto> {
        let mut running = self.running.lock().await;
        if running.is_some() && options.server_url.is_none() {
            return Ok(());
        }
        *running = None;
        let opened = profile::open(&self.launch.base_dir, &self.launch.profile, options)?;
        self.problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(opened.problems);
        let engine = opened.engine;
        let mut events = engine.subscribe();
        let sink = self
            .sink
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let forwarded = engine.clone();
        let forwarder = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if let Some(sink) = &sink {
                            sink(&forwarded, &event);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the window missed engine events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
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

    fn default_options(&self) -> OpenOptions {
        OpenOptions {
            server_url: None,
            anon_key: None,
            device_name: self.launch.device_name.clone(),
        }
    }

    /// The engine, or `NotConnected`.
    pub async fn engine(&self) -> Result<Arc<Engine>, ErrorDto> {
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

    pub async fn keep_enrollment(&self, enrollment: Enrollment) {
        *self.enrollment.lock().await = Some(enrollment);
    }

    pub async fn take_enrollment(&self) -> Option<Enrollment> {
        self.enrollment.lock().await.take()
    }

    pub async fn put_back_enrollment(&self, enrollment: Enrollment) {
        *self.enrollment.lock().await = Some(enrollment);
    }
}
