//! Small helpers around [`std::process::Command`]: finding programs, running
//! them with a visible header, and capturing their output.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// The repository root: the directory holding the workspace `Cargo.toml`.
///
/// `cargo run` sets `CARGO_MANIFEST_DIR` for the program it runs; the value
/// baked in at compile time is only a fallback.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), Path::to_path_buf)
}

/// A `cargo` command that runs in the repository root.
///
/// Uses the same cargo that runs xtask (`$CARGO`), so the toolchain matches. Without the
/// variables `cargo run` set for xtask itself ([`RUN_ONLY_VARS`]): a build script that watches
/// one (ring's watches `CARGO_MANIFEST_DIR`) would otherwise run again, and rebuild everything
/// above it, each time a plain `cargo` follows an xtask command or the reverse.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    for (name, _) in env::vars_os() {
        if is_run_only_var(&name.to_string_lossy()) {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// The variables `cargo run` sets for the program it runs (xtask here), by name or prefix.
const RUN_ONLY_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_PKG_",
];

fn is_run_only_var(name: &str) -> bool {
    RUN_ONLY_VARS
        .iter()
        .any(|var| name == *var || (var.ends_with('_') && name.starts_with(var)))
}

/// Looks `name` up in `PATH`, like `command -v` does.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Looks `name` up in `PATH`, then in the sbin directories that are often
/// missing from a non-root `PATH` (`runuser`, `useradd`, ...).
pub fn find_system_program(name: &str) -> Option<PathBuf> {
    find_program(name).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| is_executable(candidate))
    })
}

/// Whether `path` is a file this process could execute.
pub fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        path.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// Prints `==> <command>` and runs it with inherited stdio; fails unless it
/// exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("==> {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; on failure, the error shows
/// everything the command printed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bail!("`{shown}` failed ({}):\n{}", out.status, printed.trim_end());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `cmd` runs and exits successfully, with all output discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A shell-like rendering of `cmd`, including the environment variables it sets.
pub fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), quote(value)))
    });
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program());
    let words = std::iter::once(quote(program)).chain(cmd.get_args().map(quote));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Quotes `word` for display if a shell would need it.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_runs_without_the_variables_cargo_run_set_for_xtask() {
        for var in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_BIN_NAME",
        ] {
            assert!(is_run_only_var(var), "{var}");
        }
        for var in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PKGX",
            "RUSTFLAGS",
        ] {
            assert!(!is_run_only_var(var), "{var}");
        }
        // `cargo test` runs this test with CARGO_MANIFEST_DIR set, as `cargo run` runs xtask.
        let removed: Vec<_> = cargo()
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.contains(&"CARGO_MANIFEST_DIR".to_owned()),
            "{removed:?}"
        );
    }

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("/usr/bin/cargo");
        cmd.args(["doc", "--workspace", "it's here", ""])
            .env("RUSTDOCFLAGS", "-D warnings");
        assert_eq!(
            display(&cmd),
            r"RUSTDOCFLAGS='-D warnings' cargo doc --workspace 'it'\''s here' ''"
        );
    }
}
