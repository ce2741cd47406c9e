//! Developer tasks for the Lockstep workspace, run as `cargo xtask <task>`.
//!
//! Every task installs the system packages it needs (through apt on
//! Debian-like systems), so on a fresh machine with only the Rust toolchain
//! these work out of the box:
//!
//! - `cargo xtask run`: the cloud server in development mode, and the desktop app against it;
//! - `cargo xtask test`: formatting, clippy, docs and every test, against a
//!   throwaway PostgreSQL cluster and a private gnome-keyring (this is what
//!   CI runs);
//! - `cargo xtask postgres`: that throwaway cluster on its own, for running
//!   `cargo test` by hand;
//! - `cargo xtask sim`: the sync engine's deterministic simulation, long and in release mode;
//! - `cargo xtask bench` and `cargo xtask bench-client`: figures of the server and of the
//!   client's local store.

mod bench;
mod bench_client;
mod cmd;
mod e2e;
mod keyring;
mod postgres;
mod server;
mod sim;
mod system;
mod test;

use std::io::{self, Write as _};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

/// Developer tasks for the Lockstep workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build and run the cloud server in development mode on 127.0.0.1:54321, and the desktop
    /// app against it (`--devices N` for N instances, each its own device).
    ///
    /// The server's data lives in `.lockstep-dev/cloud` at the repository root, the app's
    /// profiles in `.lockstep-dev/app`.
    Run(server::Args),
    /// Run everything CI runs: fmt, clippy, docs and all tests against a throwaway PostgreSQL.
    Test(test::Args),
    /// Start a throwaway PostgreSQL for running `cargo test` by hand; Ctrl-D stops it.
    Postgres,
    /// Run the sync engine's deterministic simulation (many seeded schedules of edits and
    /// faults against real engines and a real server) and print its figures.
    Sim(sim::Args),
    /// Print load figures for the cloud server (release build, a real server process on
    /// loopback, bounded load): propagation from one device's push to another's stream, pushes
    /// per second at 8/32/128 writers, and memory and other users' latency under a sign-in
    /// burst.
    Bench(bench::Args),
    /// Print figures of the client's local store (release build): `set` latency, applying
    /// 1,000 streamed changes, and opening a profile with 500 keys and 1,000 queued edits.
    BenchClient(bench_client::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Run(args) => server::run(&args),
        Task::Test(args) => test::run(&args).map(|()| ExitCode::SUCCESS),
        Task::Postgres => postgres_task().map(|()| ExitCode::SUCCESS),
        Task::Sim(args) => sim::run(&args).map(|()| ExitCode::SUCCESS),
        Task::Bench(args) => bench::run(&args).map(|()| ExitCode::SUCCESS),
        Task::BenchClient(args) => bench_client::run(&args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}

/// `cargo xtask postgres`: runs the throwaway cluster until stdin reaches EOF.
fn postgres_task() -> Result<()> {
    system::ensure(&[postgres::PACKAGE])?;
    let cluster = postgres::Cluster::start(postgres::DEV_CLUSTER, postgres::Durability::Throwaway)?;
    let url = cluster.url();
    println!();
    println!("PostgreSQL is running at {url}");
    println!("For `cargo test` in another terminal:");
    println!();
    println!("    export {}={url}", postgres::URL_VAR);
    println!();
    println!("Press Ctrl-D to stop it and exit. (After Ctrl-C the server keeps running");
    println!("until the next `cargo xtask postgres` stops it.)");
    io::stdout().flush().context("could not write to stdout")?;

    // Block until EOF (Ctrl-D in a terminal); anything typed is ignored.
    io::copy(&mut io::stdin().lock(), &mut io::sink()).context("could not read stdin")?;
    cluster.stop()
}
