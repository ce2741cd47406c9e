//! `cargo xtask bench`: load figures for `lockstep-cloud`, printed, never asserted. Builds the
//! server and `crates/lockstep-bench` in release mode, starts a throwaway PostgreSQL whose
//! commits are durable (as in production), and runs the bench against real server processes on
//! loopback: SQLite and PostgreSQL side by side, or `--nodes 3` on PostgreSQL. Bounded: every
//! load runs a fixed number of seconds or requests. The figures also go to `target/bench/`.

use std::path::PathBuf;

use anyhow::Result;

use crate::{
    cmd,
    postgres::{self, Cluster, Durability},
    system,
};

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measure another `lockstep-cloud` binary (an older build, for a before/after table).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Shorter runs: under five minutes once built.
    #[arg(long)]
    quick: bool,
    /// Several nodes on one PostgreSQL, 50,000 streams over them, instead of the one-node table.
    #[arg(long)]
    nodes: Option<usize>,
    /// Extra arguments for `lockstep-bench` (see `lockstep-bench --help`), after `--`.
    #[arg(last = true, value_name = "BENCH_ARGS")]
    bench_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let mut packages = system::BUILD.to_vec();
    packages.push(postgres::PACKAGE);
    system::ensure(&packages)?;
    let mut build = cmd::cargo();
    build.args(["build", "--release", "--locked", "-p", "lockstep-bench"]);
    // Another server binary needs no build of this one.
    if args.server.is_none() {
        build.args(["-p", "lockstep-cloud"]);
    }
    cmd::run(&mut build)?;
    let root = cmd::workspace_root();
    let target = crate::server::target_dir(&root);
    let release = target.join("release");
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| release.join("lockstep-cloud"));
    // Stopped when dropped, whatever happens.
    let cluster = Cluster::start(postgres::BENCH_CLUSTER, Durability::Durable)?;
    let mut bench = std::process::Command::new(release.join("lockstep-bench"));
    bench
        .arg("--server")
        .arg(server)
        .args(["--postgres-url", &cluster.url()])
        .arg("--json-dir")
        .arg(target.join("bench"));
    if args.quick {
        bench.arg("--quick");
    }
    if let Some(nodes) = args.nodes {
        bench.args(["--nodes", &nodes.to_string()]);
    }
    bench.args(&args.bench_args);
    let result = cmd::run(&mut bench);
    cluster.stop()?;
    result
}
