//! `cargo xtask run`: the cloud server in development mode.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::{cmd, system};

/// Where the development server listens.
const BIND: &str = "127.0.0.1:54321";

/// Builds and runs `lockstep-cloud --dev`, passing `extra_args` through, and
/// exits with the server's exit code. The server prints its URL and keys.
pub fn run(extra_args: &[String]) -> Result<ExitCode> {
    system::ensure(system::BUILD)?;

    let data_dir = cmd::workspace_root().join(".lockstep-dev").join("cloud");
    let mut server = cmd::cargo();
    server
        .args(["run", "--package", "lockstep-cloud", "--"])
        .args(["--dev", "--bind", BIND, "--data-dir"])
        .arg(&data_dir)
        .args(extra_args);

    let shown = cmd::display(&server);
    println!("==> {shown}");
    // Ctrl-C reaches the server directly: it is in our process group.
    let status = server
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    Ok(status
        .code()
        .and_then(|code| u8::try_from(code).ok())
        .map_or(ExitCode::FAILURE, ExitCode::from))
}
