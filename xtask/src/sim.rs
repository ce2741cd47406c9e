//! `cargo xtask sim`: the deterministic simulation of many devices and one server
//! (`crates/lockstep-core/tests/simulation.rs`) run long, in a release build, printing
//! schedules per second and how often each fault was injected. `cargo xtask test` runs a
//! bounded slice of it (200 schedules) in the normal test build.

use anyhow::Result;

use crate::cmd;

/// Options of `cargo xtask sim`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many schedules to run.
    #[arg(long, default_value_t = 10_000)]
    schedules: u64,
    /// The first seed (schedule N uses seed + N). A failure prints the seed to replay it with
    /// `--schedules 1 --seed S`.
    #[arg(long)]
    seed: Option<u64>,
    /// Operations per schedule.
    #[arg(long, default_value_t = 24)]
    steps: u64,
}

/// Runs the simulation test alone, in release mode, with its output shown.
pub fn run(args: &Args) -> Result<()> {
    let mut sim = cmd::cargo();
    sim.args([
        "test",
        "--release",
        "--locked",
        "-p",
        "lockstep-core",
        "--test",
        "simulation",
        "--",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("LOCKSTEP_SIM_SCHEDULES", args.schedules.to_string())
    .env("LOCKSTEP_SIM_STEPS", args.steps.to_string());
    if let Some(seed) = args.seed {
        sim.env("LOCKSTEP_SIM_SEED", seed.to_string());
    }
    cmd::run(&mut sim)
}
