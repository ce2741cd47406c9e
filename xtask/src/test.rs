//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failure.

use std::env;
use std::process::Command;

use anyhow::{Result, anyhow};

use crate::postgres::{self, Cluster};
use crate::{cmd, e2e, keyring, system};

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the fmt, clippy and doc checks; only run the tests.
    #[arg(long)]
    no_lint: bool,

    /// Extra arguments for `cargo test`, after `--` (e.g. `-- refresh` to run only tests whose
    /// name contains "refresh", or `-- -- --nocapture`).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<String>,
}

/// Set by xtask for the tests: a missing PostgreSQL is a failure, not a skip.
const REQUIRE_POSTGRES_VAR: &str = "LOCKSTEP_REQUIRE_POSTGRES";

/// A named step whose failure ends the run.
struct Stage {
    name: &'static str,
    command: Command,
}

impl Stage {
    fn new(name: &'static str, command: Command) -> Self {
        Self { name, command }
    }

    /// Runs the stage; the error is the one-line summary of the whole run.
    fn run(mut self) -> Result<()> {
        cmd::run(&mut self.command).map_err(|err| anyhow!("stage `{}` failed: {err:#}", self.name))
    }
}

/// Runs the lint stages (unless `--no-lint`) and then the whole test suite
/// against PostgreSQL (`$LOCKSTEP_TEST_POSTGRES` if set, else a throwaway
/// cluster that is stopped afterwards, whatever happens) and a private
/// Secret Service (see [`keyring`]).
pub fn run(args: &Args) -> Result<()> {
    let external_postgres = env::var(postgres::URL_VAR)
        .ok()
        .filter(|url| !url.is_empty());

    let mut packages = system::BUILD.to_vec();
    packages.extend_from_slice(system::TEST_TOOLS);
    if external_postgres.is_none() {
        packages.push(postgres::PACKAGE);
    }
    system::ensure(&packages)?;

    if !args.no_lint {
        for stage in lint_stages() {
            stage.run()?;
        }
    }

    // Lives until this function returns: dropping it stops the cluster,
    // whether the tests pass or not.
    let cluster;
    let url = match external_postgres {
        Some(url) => {
            println!("==> using the PostgreSQL in ${}", postgres::URL_VAR);
            url
        }
        None => {
            cluster = Cluster::start(postgres::TEST_CLUSTER)?;
            cluster.url()
        }
    };

    let driver = e2e::tauri_driver()?;
    let mut test = cmd::cargo();
    test.args(["test", "--workspace", "--locked"])
        .args(&args.cargo_test_args)
        .env(postgres::URL_VAR, url)
        .env(REQUIRE_POSTGRES_VAR, "1")
        .env(keyring::REQUIRE_VAR, "1")
        .env(e2e::DRIVER_VAR, driver)
        .env(e2e::REQUIRE_VAR, "1");
    let test = e2e::on_virtual_display(&test);
    Stage::new("cargo test", keyring::wrap(&test)?).run()?;

    for stage in ui_stages() {
        stage.run()?;
    }

    println!("==> all checks passed");
    Ok(())
}

/// Fails when the UI build or the bindings differ from what is committed (outside a git
/// checkout there is nothing to compare with).
const FRESHNESS_CHECK: &str = r#"git rev-parse --git-dir >/dev/null 2>&1 || exit 0
changed=$(git status --porcelain -- src-ui/dist src-ui/src/bindings)
if [ -n "$changed" ]; then
  echo "$changed"
  echo "error: the committed UI build or bindings are stale: run 'npm run build' in src-ui and 'cargo test', then commit them" >&2
  exit 1
fi"#;

/// The window's checks: its view-logic tests (`npm test`: `tsc`, then `node --test`), and that
/// the committed UI build and the TypeScript bindings (which `cargo test` regenerates from the
/// shell's DTOs) match their sources, so a fresh clone builds without a UI step.
fn ui_stages() -> Vec<Stage> {
    let ui = cmd::workspace_root().join("src-ui");
    let mut install = Command::new("npm");
    install
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&ui);
    let mut test = Command::new("npm");
    test.arg("test").current_dir(&ui);
    let mut fresh = Command::new("sh");
    fresh
        .args(["-c", FRESHNESS_CHECK])
        .current_dir(cmd::workspace_root());
    vec![
        Stage::new("npm ci (src-ui)", install),
        Stage::new("npm test (src-ui)", test),
        Stage::new("committed UI build and bindings are current", fresh),
    ]
}

/// `cargo fmt`, `cargo clippy` and `cargo doc`, all warnings denied.
fn lint_stages() -> Vec<Stage> {
    let mut fmt = cmd::cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);

    let mut clippy = cmd::cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);

    let mut doc = cmd::cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--locked"])
        .env("RUSTDOCFLAGS", "-D warnings");

    vec![
        Stage::new("cargo fmt", fmt),
        Stage::new("cargo clippy", clippy),
        Stage::new("cargo doc", doc),
    ]
}
