//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failure.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context as _, Result, anyhow};

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
            cluster = Cluster::start(postgres::TEST_CLUSTER, postgres::Durability::Throwaway)?;
            cluster.url()
        }
    };

    // The window's packages first: the end-to-end test injects axe-core from them.
    let ui = cmd::workspace_root().join("src-ui");
    ui_install(&ui).run()?;

    let driver = e2e::tauri_driver()?;
    let mut test = cmd::cargo();
    test.args(["test", "--workspace", "--locked"])
        .args(&args.cargo_test_args)
        .env(postgres::URL_VAR, url)
        .env(REQUIRE_POSTGRES_VAR, "1")
        .env(keyring::REQUIRE_VAR, "1")
        .env(e2e::DRIVER_VAR, driver)
        .env(e2e::REQUIRE_VAR, "1")
        .env(e2e::AXE_VAR, ui.join(e2e::AXE_SCRIPT));
    let test = e2e::on_virtual_display(&test);
    Stage::new("cargo test", keyring::wrap(&test)?).run()?;

    // `tsc` rewrites every file of the committed UI build, changed or not, and the desktop app
    // embeds them: put back the times of those it rewrote unchanged, so the next `cargo build`
    // (or `cargo xtask run`) does not compile the app again.
    let dist = cmd::workspace_root().join("src-ui").join("dist");
    let before = FileTimes::read(&dist)?;
    for stage in ui_stages() {
        stage.run()?;
    }
    before.restore_unchanged()?;

    println!("==> all checks passed");
    Ok(())
}

/// The files under a directory, with their contents and modification times.
struct FileTimes(Vec<(PathBuf, Vec<u8>, SystemTime)>);

impl FileTimes {
    fn read(dir: &Path) -> Result<FileTimes> {
        let mut files = Vec::new();
        let mut dirs = vec![dir.to_owned()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = entry?.path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let modified = fs::metadata(&path)?.modified()?;
                    files.push((path.clone(), fs::read(&path)?, modified));
                }
            }
        }
        Ok(FileTimes(files))
    }

    /// Gives each file whose content is what it was its old modification time back.
    fn restore_unchanged(&self) -> Result<()> {
        for (path, bytes, modified) in &self.0 {
            if fs::read(path).is_ok_and(|now| now == *bytes) {
                fs::File::options()
                    .write(true)
                    .open(path)
                    .and_then(|file| file.set_modified(*modified))
                    .with_context(|| format!("restoring the time of {}", path.display()))?;
            }
        }
        Ok(())
    }
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

/// `npm ci` in the window's folder: TypeScript, and axe-core for the end-to-end test.
fn ui_install(ui: &Path) -> Stage {
    let mut install = Command::new("npm");
    install
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(ui);
    Stage::new("npm ci (src-ui)", install)
}

/// The window's checks: its view-logic tests (`npm test`: `tsc`, then `node --test`), and that
/// the committed UI build and the TypeScript bindings (which `cargo test` regenerates from the
/// shell's DTOs) match their sources, so a fresh clone builds without a UI step.
fn ui_stages() -> Vec<Stage> {
    let ui = cmd::workspace_root().join("src-ui");
    let mut test = Command::new("npm");
    test.arg("test").current_dir(&ui);
    let mut fresh = Command::new("sh");
    fresh
        .args(["-c", FRESHNESS_CHECK])
        .current_dir(cmd::workspace_root());
    vec![
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_files_rewritten_unchanged_get_their_old_time_back() {
        let dir = env::temp_dir().join(format!("xtask-file-times-{}", std::process::id()));
        fs::create_dir_all(dir.join("js")).unwrap();
        let (same, changed) = (dir.join("js/same.js"), dir.join("changed.js"));
        fs::write(&same, "a").unwrap();
        fs::write(&changed, "b").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for path in [&same, &changed] {
            fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let before = FileTimes::read(&dir).unwrap();
        // What `tsc` does: it writes every file again.
        fs::write(&same, "a").unwrap();
        fs::write(&changed, "c").unwrap();
        before.restore_unchanged().unwrap();
        let modified = |path: &Path| fs::metadata(path).unwrap().modified().unwrap();
        assert_eq!(modified(&same), old);
        assert!(modified(&changed) > old);
        fs::remove_dir_all(&dir).unwrap();
    }
}
