//! `cargo xtask run`: the cloud server in development mode, and the desktop app against it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, system};

/// Where the development server listens.
const BIND: &str = "127.0.0.1:54321";

/// Options of `cargo xtask run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many desktop app instances to open, each its own device (profiles `device-1`, …);
    /// 0 runs the server alone. Without a display the app is skipped with a message.
    #[arg(long, default_value_t = 1)]
    devices: u8,

    /// Extra arguments for `lockstep-cloud`, after `--`.
    #[arg(last = true, value_name = "SERVER_ARGS")]
    server_args: Vec<String>,
}

/// Builds the server (and the app), runs `lockstep-cloud --dev` with the extra arguments,
/// opens the app instances once it answers, and exits with the server's exit code. The server
/// prints its URL and keys.
pub fn run(args: &Args) -> Result<ExitCode> {
    system::ensure(system::BUILD)?;
    let root = cmd::workspace_root();
    let devices = if args.devices > 0 && !has_display() {
        println!(
            "==> no display (neither DISPLAY nor WAYLAND_DISPLAY is set): running the server \
             without the desktop app"
        );
        0
    } else {
        args.devices
    };

    // The default members (server, app, CLI), always all of them: their features are the ones
    // `cargo test` and `cargo doc` build with too (xtask/tests/dependencies.rs checks it), so
    // after `cargo xtask test` nothing is compiled again, and the reverse.
    let mut build = cmd::cargo();
    build.args(["build", "--locked"]);
    cmd::run(&mut build)?;

    let bin = target_dir(&root).join("debug");
    let data_dir = root.join(".lockstep-dev").join("cloud");
    let mut server = Command::new(bin.join("lockstep-cloud"));
    server
        .args(["--dev", "--bind", BIND, "--data-dir"])
        .arg(&data_dir)
        .args(&args.server_args);
    let shown = cmd::display(&server);
    println!("==> {shown}");
    // Ctrl-C reaches the server (and the apps) directly: they are in our process group.
    let mut server = server
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;

    let mut apps: Vec<Child> = Vec::new();
    if devices > 0 {
        match wait_for_server(&mut server, &data_dir) {
            Ok(anon_key) => {
                for n in 1..=devices {
                    let mut app = Command::new(bin.join("lockstep-desktop"));
                    app.args(["--profile", &format!("device-{n}")])
                        .args(["--device-name", &format!("Device {n}")])
                        .env("LOCKSTEP_SERVER", format!("http://{BIND}"))
                        .env("LOCKSTEP_ANON_KEY", &anon_key)
                        .env("LOCKSTEP_HOME", root.join(".lockstep-dev").join("app"));
                    println!("==> the desktop app as device-{n}");
                    match app.spawn() {
                        Ok(child) => apps.push(child),
                        Err(err) => eprintln!("warning: could not start the desktop app: {err}"),
                    }
                }
            }
            Err(err) => eprintln!("warning: not opening the desktop app: {err:#}"),
        }
    }

    let status = server.wait().context("waiting for the server")?;
    for mut app in apps {
        let _ = app.kill();
        let _ = app.wait();
    }
    Ok(status
        .code()
        .and_then(|code| u8::try_from(code).ok())
        .map_or(ExitCode::FAILURE, ExitCode::from))
}

fn has_display() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// `$CARGO_TARGET_DIR`, or `target/` in the workspace.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root.join("target"), PathBuf::from)
}

/// Waits (up to 60 s) until the server accepts connections, and returns its anon key from the
/// data dir's `secrets.json` (or `$LOCKSTEP_ANON_KEY`).
fn wait_for_server(server: &mut Child, data_dir: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.try_wait()? {
            bail!("the server exited ({status})");
        }
        if TcpStream::connect(BIND).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server did not answer on {BIND} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(key) = std::env::var("LOCKSTEP_ANON_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    {
        return Ok(key);
    }
    let path = data_dir.join("secrets.json");
    let text =
        std::fs::read(&path).with_context(|| format!("could not read {}", path.display()))?;
    let keys: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    keys["anon_key"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{} has no anon_key", path.display()))
}
