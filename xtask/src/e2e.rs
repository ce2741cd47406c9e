//! What the desktop app's end-to-end test (`tests/e2e.rs`) needs: `tauri-driver` (installed
//! with `cargo install` into `target/xtask/tools`, pinned), and the test command run on a
//! virtual display (`xvfb-run`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd;

/// The tauri-driver release the test is written against.
const TAURI_DRIVER_VERSION: &str = "2.1.0";

/// Tells the test where tauri-driver is.
pub const DRIVER_VAR: &str = "LOCKSTEP_TAURI_DRIVER";

/// Set by xtask: a missing prerequisite fails the end-to-end test instead of skipping it.
pub const REQUIRE_VAR: &str = "LOCKSTEP_REQUIRE_E2E";

/// Where the end-to-end test finds axe-core (the accessibility checker it injects into each
/// screen), and the file under `src-ui/` that `npm ci` puts there.
pub const AXE_VAR: &str = "LOCKSTEP_AXE";
pub const AXE_SCRIPT: &str = "node_modules/axe-core/axe.min.js";

/// The path of tauri-driver, installing it first if needed.
pub fn tauri_driver() -> Result<PathBuf> {
    let root = cmd::workspace_root()
        .join("target")
        .join("xtask")
        .join("tools");
    let binary = root.join("bin").join("tauri-driver");
    let installed = cmd::output(Command::new(&binary).arg("--version"))
        .is_ok_and(|version| version.contains(TAURI_DRIVER_VERSION));
    if !installed {
        let mut install = cmd::cargo();
        install
            .args([
                "install",
                "tauri-driver",
                "--locked",
                "--version",
                TAURI_DRIVER_VERSION,
            ])
            .arg("--root")
            .arg(&root);
        cmd::run(&mut install).context("could not install tauri-driver")?;
    }
    Ok(binary)
}

/// `inner` run on a fresh virtual display (`xvfb-run -a`), with its environment.
pub fn on_virtual_display(inner: &Command) -> Command {
    let mut wrapped = Command::new("xvfb-run");
    wrapped
        // Wide enough for the end-to-end test's two windows side by side.
        .args(["-a", "-s", "-screen 0 2160x800x24"])
        .arg(inner.get_program())
        .args(inner.get_args());
    if let Some(dir) = inner.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}
