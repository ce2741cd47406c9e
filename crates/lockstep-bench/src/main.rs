//! `lockstep-bench`: starts real `lockstep-cloud` processes on loopback, puts a bounded load on
//! them from this process (and, for three nodes, from one helper process per node), and prints
//! one table of what it measured; the same figures go to a JSON file. It asserts nothing:
//! figures on a noisy machine are for people to read and compare (`--server` points at another
//! build, for a before/after table).
//!
//! Figures, per database (SQLite; PostgreSQL with `--postgres-url`):
//! - resident memory per idle change stream, with 1k and 10k streams open;
//! - propagation (a push on device A until device B's stream delivers it) with 0, 1k and 10k
//!   idle streams open;
//! - the connect storm that opened them: each stream's handshake (connect until the answer's
//!   headers) and the kernel's listen-queue overflows meanwhile;
//! - pushes per second and their latency with 8, 32 and 128 concurrent writers;
//! - successful sign-ins per second from 8 clients, and the memory after them;
//! - the server's CPU while 10k streams sit idle (heartbeats only);
//! - without `--quick`: a 60 s soak with 10k idle streams and 100 writes a second.
//!
//! Idle streams belong to 100 users (a hundred sessions' worth each at 10k) and come from
//! 127.0.0.10 on, 4,000 per source address. Run it through `cargo xtask bench`, which builds
//! both in release mode and starts a PostgreSQL whose commits are durable.

mod figures;
mod load;
mod nodes;
mod server;
mod streams;

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    figures::Figures,
    load::IdlePlan,
    server::{Options, Server},
};

#[derive(Debug, Parser)]
#[command(about = "Load figures for lockstep-cloud")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Holds streams for a three-node run (started by the bench itself).
    #[command(hide = true)]
    Hold(streams::HoldArgs),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// The lockstep-cloud binary to measure.
    #[arg(long)]
    server: Option<PathBuf>,
    /// A PostgreSQL database to measure too (its commits should be durable, as in production).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Measure PostgreSQL only.
    #[arg(long, requires = "postgres_url")]
    skip_sqlite: bool,
    /// Shorter runs (a few seconds per figure, no soak): under five minutes.
    #[arg(long)]
    quick: bool,
    /// Several nodes on the PostgreSQL of `--postgres-url`, `--streams-total` streams over
    /// them, instead of the one-node table.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Streams over all nodes of a `--nodes` run.
    #[arg(long, default_value_t = 50_000)]
    streams_total: usize,
    /// Which figures to measure.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Idle stream counts, one level each.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10_000])]
    streams: Vec<usize>,
    /// Concurrent writers, one push run each.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 32, 128])]
    writers: Vec<usize>,
    /// How long each push run (and the sign-ins) lasts; 3 with `--quick`.
    #[arg(long)]
    seconds: Option<u64>,
    /// Pushes timed per propagation figure, one after another.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Concurrent failed sign-ins per burst (`--scenario sign-in-burst`).
    #[arg(long, default_value_t = 300)]
    burst: usize,
    /// Bursts, one after another.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Where the figures are written as JSON (a file per run, and `latest.json`).
    #[arg(long, default_value = "target/bench")]
    json_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Every figure of the table.
    All,
    Streams,
    Pushes,
    Propagation,
    SignIns,
    /// Failed sign-in bursts and their memory (a table of its own, not part of `all`).
    SignInBurst,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Hold(args)) = &cli.command {
        return streams::hold(args).await;
    }
    let args = cli.run;
    let Some(bin) = args.server.clone() else {
        bail!("--server is required");
    };
    let seconds = args.seconds.unwrap_or(if args.quick { 3 } else { 10 });
    if args.nodes > 1 {
        let Some(url) = &args.postgres_url else {
            bail!("--nodes needs --postgres-url");
        };
        let plan = nodes::Plan {
            nodes: args.nodes,
            streams: args.streams_total,
            samples: args.samples,
            seconds,
        };
        let result = nodes::run(&bin, url, &plan).await?;
        println!("{}", figures::nodes_table(&result));
        write_json(&args, &format!("nodes-{}", args.nodes), &result)?;
        return Ok(());
    }
    let mut databases: Vec<(String, Options)> = Vec::new();
    if !args.skip_sqlite {
        databases.push(("SQLite".into(), Options::default()));
    }
    // Every server on the PostgreSQL database shares the first one's keys.
    let secrets = tempfile::tempdir()?;
    if let Some(url) = &args.postgres_url {
        databases.push((
            "PostgreSQL".into(),
            Options {
                database_url: Some(url.clone()),
                shared_secrets: Some(secrets.path().to_owned()),
                ..Options::default()
            },
        ));
    }
    if args.scenario == Scenario::SignInBurst {
        for (name, options) in &databases {
            println!("# {name}");
            println!(
                "{}",
                load::sign_in_bursts(&bin, options, args.burst, args.rounds).await?
            );
        }
        return Ok(());
    }
    let mut runs = Vec::new();
    for (name, options) in &databases {
        eprintln!("==> {name}");
        runs.push(measure(&bin, name, options, &args, seconds).await?);
    }
    println!("{}", figures::table(&runs));
    write_json(&args, "one-node", &runs)?;
    Ok(())
}

/// Every planned figure on one database, each load on a fresh server.
async fn measure(
    bin: &std::path::Path,
    name: &str,
    options: &Options,
    args: &Args,
    seconds: u64,
) -> Result<Figures> {
    let wants = |s: Scenario| args.scenario == Scenario::All || args.scenario == s;
    let mut figures = Figures {
        database: name.to_owned(),
        ..Figures::default()
    };
    if wants(Scenario::Propagation) || wants(Scenario::Streams) {
        eprintln!("    propagation, no other load");
        let server = Server::start(bin, options).await?;
        figures.propagation_no_load =
            Some(load::propagation(&[&server], &server, args.samples).await?);
    }
    if wants(Scenario::Streams) {
        let most = args.streams.iter().copied().max().unwrap_or(0);
        for &streams in &args.streams {
            eprintln!("    {streams} idle streams");
            let plan = IdlePlan {
                streams,
                samples: args.samples,
                heartbeat_window: (streams == most)
                    .then(|| Duration::from_secs(if args.quick { 15 } else { 30 })),
                soak: (streams == most && !args.quick).then(|| Duration::from_secs(60)),
            };
            let (idle, heartbeat, soak) = load::idle(bin, options, &plan).await?;
            figures.idle.push(idle);
            figures.heartbeat = figures.heartbeat.or(heartbeat);
            figures.soak = figures.soak.or(soak);
        }
    }
    if wants(Scenario::Pushes) {
        eprintln!("    pushes");
        let server = Server::start(bin, options).await?;
        figures.pushes = load::pushes(&[&server], &args.writers, seconds).await?;
    }
    if wants(Scenario::SignIns) {
        eprintln!("    sign-ins");
        let server = Server::start(bin, options).await?;
        figures.sign_ins = Some(load::sign_ins(&server, 8, seconds).await?);
    }
    Ok(figures)
}

/// Writes the figures to `<json_dir>/<kind>-<unix seconds>.json` and `<json_dir>/latest-<kind>.json`.
fn write_json<T: serde::Serialize>(args: &Args, kind: &str, figures: &T) -> Result<()> {
    std::fs::create_dir_all(&args.json_dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let text = serde_json::to_string_pretty(figures)?;
    let file = args.json_dir.join(format!("{kind}-{stamp}.json"));
    std::fs::write(&file, &text)?;
    std::fs::write(args.json_dir.join(format!("latest-{kind}.json")), &text)?;
    eprintln!("figures written to {}", file.display());
    Ok(())
}
