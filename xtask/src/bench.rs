//! `cargo xtask bench`: load figures for `lockstep-cloud`, printed, never asserted. Builds the
//! server and `crates/lockstep-bench` in release mode and runs the bench against a real server
//! process on loopback (bounded: a few bursts of a few hundred requests).

use std::path::PathBuf;

use anyhow::Result;

use crate::{cmd, system};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measure another `lockstep-cloud` binary (an older build, for a before/after table).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Extra arguments for `lockstep-bench` (see `lockstep-bench --help`), after `--`.
    #[arg(last = true, value_name = "BENCH_ARGS")]
    bench_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    system::ensure(system::BUILD)?;
    let mut build = cmd::cargo();
    build.args([
        "build",
        "--release",
        "--locked",
        "-p",
        "lockstep-cloud",
        "-p",
        "lockstep-bench",
    ]);
    cmd::run(&mut build)?;
    let release = crate::server::target_dir(&cmd::workspace_root()).join("release");
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| release.join("lockstep-cloud"));
    let mut bench = std::process::Command::new(release.join("lockstep-bench"));
    bench.arg("--server").arg(server).args(&args.bench_args);
    cmd::run(&mut bench)
}
