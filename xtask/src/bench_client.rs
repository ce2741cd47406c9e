//! `cargo xtask bench-client`: figures of the client's local store (`set` latency, applying
//! 1,000 streamed changes, opening a profile with 500 keys and 1,000 queued edits), measured by
//! `crates/lockstep-core/examples/bench_client.rs` in a release build against an embedded
//! `lockstep-cloud` on loopback. It prints them and writes them to
//! `target/bench/client-<label>.json`; it asserts nothing.

use anyhow::Result;

use crate::cmd;

/// Options of `cargo xtask bench-client`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A name for this run's figures (`before`, `after`, …): the JSON file is named after it.
    #[arg(long, default_value = "latest")]
    label: String,
    /// How many times to measure (each run prints its own figures).
    #[arg(long, default_value_t = 1)]
    runs: u32,
}

/// Builds the measuring program in release mode and runs it `runs` times.
pub fn run(args: &Args) -> Result<()> {
    for run in 1..=args.runs.max(1) {
        let label = if args.runs > 1 {
            format!("{}-{run}", args.label)
        } else {
            args.label.clone()
        };
        let mut bench = cmd::cargo();
        bench.args([
            "run",
            "--release",
            "--locked",
            "-p",
            "lockstep-core",
            "--example",
            "bench_client",
            "--",
            &label,
        ]);
        cmd::run(&mut bench)?;
    }
    Ok(())
}
