//! The harness of the desktop app's command tests (`tests/commands.rs`, `tests/account.rs`):
//! a lockstep-cloud on loopback and app instances under `tauri::test` (the mock runtime, no
//! window), driven through the IPC commands the window calls. Each test crate uses part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lockstep_core::{engine::EngineEvent, keychain::Keychain, report::EventReport};
use lockstep_desktop::shell::{Launch, Shell};
use serde_json::{Value, json};
use tauri::{
    Manager, WebviewWindow,
    ipc::{CallbackFn, InvokeBody},
    test::{INVOKE_KEY, MockRuntime, get_ipc_response, mock_builder, mock_context, noop_assets},
    webview::InvokeRequest,
};

/// A lockstep-cloud on its own runtime and thread, in a temporary directory.
pub struct Cloud {
    pub server: lockstep_cloud::embedded::EmbeddedCloud,
    _dir: tempfile::TempDir,
}

impl Cloud {
    pub fn start() -> Cloud {
        Cloud::start_with(|_| {})
    }

    /// With dev mode on and `configure` applied.
    pub fn start_with(configure: fn(&mut lockstep_cloud::Config)) -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let server = lockstep_cloud::embedded::EmbeddedCloud::start(
            dir.path(),
            Arc::new(move |c| {
                c.dev = true;
                configure(c);
            }),
        )
        .unwrap();
        Cloud { server, _dir: dir }
    }

    /// How many messages were mailed to `to`.
    pub fn mail_count(&self, to: &str) -> usize {
        self.server.mail_to(to).unwrap().len()
    }

    /// Waits (up to 20 s) until `to` has `count` messages (mail is sent after the answer);
    /// answers the code of the newest.
    pub fn wait_mail(&self, to: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.mail_count(to) < count {
            assert!(Instant::now() < deadline, "mail {count} to {to} never came");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            self.mail_count(to),
            count,
            "more mail than expected to {to}"
        );
        self.server.newest_code(to).unwrap()
    }
}

/// One app instance: its mock window and the engine events its shell forwarded.
pub struct Instance {
    pub window: WebviewWindow<MockRuntime>,
    pub events: Arc<Mutex<Vec<EventReport>>>,
    _app: tauri::App<MockRuntime>,
}

impl Instance {
    pub fn start(base: &Path, profile: &str) -> Instance {
        Keychain::use_mock_store();
        let launch = Launch {
            name: profile.into(),
            home: Some(base.to_owned()),
            ..Launch::default()
        };
        let app = mock_builder()
            .manage(Shell::new(launch))
            .invoke_handler(lockstep_desktop::handler!())
            .build(mock_context(noop_assets()))
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        app.state::<Shell>()
            .set_sink(Arc::new(move |_, event: &EngineEvent| {
                seen.lock().unwrap().push(EventReport::from(event));
            }));
        let window = tauri::WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .unwrap();
        Instance {
            window,
            events,
            _app: app,
        }
    }

    /// Launches and connects to `cloud` as `device_name`.
    pub fn connected(base: &Path, profile: &str, cloud: &Cloud, device_name: &str) -> Instance {
        let instance = Instance::start(base, profile);
        instance.ok("launch", json!({}));
        instance.ok(
            "connect",
            json!({
                "serverUrl": cloud.server.url,
                "anonKey": cloud.server.anon_key,
                "deviceName": device_name,
            }),
        );
        instance
    }

    pub fn call(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        let request = InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        };
        get_ipc_response(&self.window, request).map(|body| body.deserialize::<Value>().unwrap())
    }

    pub fn ok(&self, cmd: &str, args: Value) -> Value {
        self.call(cmd, args.clone())
            .unwrap_or_else(|e| panic!("{cmd} {args}: {e}"))
    }

    /// The error `cmd` answers (it must fail).
    pub fn refused(&self, cmd: &str, args: Value) -> Value {
        self.call(cmd, args.clone())
            .err()
            .unwrap_or_else(|| panic!("{cmd} {args} should have failed"))
    }

    /// Waits (up to 20 s) until `pred` holds for some forwarded event.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .events
                .lock()
                .unwrap()
                .iter()
                .any(|e| pred(&serde_json::to_value(e).unwrap()));
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; saw {:?}",
                self.events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn setting(&self, key: &str) -> Value {
        let all = self.ok("settings", json!({}));
        all.as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub fn wait_live(&self, what: &str) {
        self.wait_event(what, |e| {
            e["event"] == "status" && e["connection"] == "live"
        });
    }
}

/// A profile name no other test or run uses.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
        + &format!("-{:?}", Instant::now()).replace(|c: char| !c.is_ascii_alphanumeric(), "")[..6]
}

/// The code of `secret` `offset` steps from now.
pub fn totp_code(secret: &str, offset: i64) -> String {
    let now = lockstep_core::clock_ms() / 1000 + offset * 30;
    lockstep_core::totp::code_at(secret, u64::try_from(now).unwrap()).unwrap()
}

/// Opens the link mailed to `email`, as its owner would in a browser.
pub fn confirm_email(cloud: &Cloud, email: &str) {
    let link = cloud.server.newest_link(email).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let landed = runtime.block_on(reqwest::get(link)).unwrap();
    assert!(landed.status().is_success(), "{}", landed.status());
}
