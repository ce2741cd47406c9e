//! A private Secret Service for the tests.
//!
//! `cargo test` runs under a D-Bus session bus of its own (`dbus-run-session`) with a
//! gnome-keyring unlocked by a known password, so the keychain tests use a real OS keychain in
//! headless CI. Its `HOME` and `XDG_RUNTIME_DIR` are under `target/xtask/keyring` (re-created
//! on every run; `/tmp` if that path is too long for a Unix socket), so the developer's own
//! keyring is never touched; `CARGO_HOME` and `RUSTUP_HOME` keep pointing at the real ones.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, anyhow};

use crate::cmd;

/// Set by xtask for the tests: a missing Secret Service is a failure, not a skip.
pub const REQUIRE_VAR: &str = "LOCKSTEP_REQUIRE_SECRET_SERVICE";

/// Starts gnome-keyring on the session bus, waits (at most about 10 s each) until it owns
/// `org.freedesktop.secrets` and has a default collection, then runs its arguments.
///
/// `gdbus wait` does not activate the service, so no second daemon is started by D-Bus
/// activation while the first one is still coming up. Items go to the default collection
/// (`login`, created unlocked by `--unlock`): a new collection would need a prompt.
const SESSION_SCRIPT: &str = r#"# Written by `cargo xtask test`: runs "$@" with an unlocked gnome-keyring.
printf %s "ci-pass" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
if ! gdbus wait --session --timeout 10 org.freedesktop.secrets; then
  echo "error: gnome-keyring did not appear on the session bus within 10 s" >&2
  exit 1
fi
deadline=$((SECONDS + 10))
until gdbus call --session --dest org.freedesktop.secrets --object-path /org/freedesktop/secrets \
      --method org.freedesktop.Secret.Service.ReadAlias default 2>/dev/null | grep -q /collection/; do
  if ((SECONDS >= deadline)); then
    echo "error: gnome-keyring has no default collection after 10 s" >&2
    exit 1
  fi
  sleep 0.1
done
exec "$@"
"#;

/// Environment variables that would lead gnome-keyring (or its clients) to the developer's
/// own files or daemon; without them everything derives from the private `HOME`.
const LEAKY_VARS: &[&str] = &[
    "XDG_DATA_HOME",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "GNOME_KEYRING_CONTROL",
    "DBUS_SESSION_BUS_ADDRESS",
];

/// Unix socket paths longer than this do not fit in `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 100;

/// `inner` (program, arguments, environment and directory) wrapped so that it runs in a
/// private D-Bus session with an unlocked gnome-keyring; see the module docs.
///
/// Re-creates the session directory: call it once per run, not while a session is live.
pub fn wrap(inner: &Command) -> Result<Command> {
    // Before HOME changes: cargo and rustup find their homes through it.
    let cargo_home = tool_home("CARGO_HOME", ".cargo")?;
    let rustup_home = tool_home("RUSTUP_HOME", ".rustup")?;

    let dir = session_dir()?;
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("could not remove {}", dir.display()))?;
    }
    let paths = SessionPaths::in_dir(&dir);
    fs::create_dir_all(&paths.home)
        .with_context(|| format!("could not create {}", paths.home.display()))?;
    create_private_dir(&paths.runtime_dir)?;
    fs::write(&paths.script, SESSION_SCRIPT)
        .with_context(|| format!("could not write {}", paths.script.display()))?;

    let mut wrapped = session_command(inner, &paths);
    wrapped
        .env("CARGO_HOME", cargo_home)
        .env("RUSTUP_HOME", rustup_home);
    // The inner command's own settings win.
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    Ok(wrapped)
}

/// Where a session keeps its files.
#[derive(Debug)]
struct SessionPaths {
    /// The private `HOME`; gnome-keyring keeps its keyrings in `.local/share/keyrings`.
    home: PathBuf,
    /// The private, 0700 `XDG_RUNTIME_DIR`, with gnome-keyring's control socket.
    runtime_dir: PathBuf,
    /// [`SESSION_SCRIPT`].
    script: PathBuf,
}

impl SessionPaths {
    fn in_dir(dir: &Path) -> Self {
        Self {
            home: dir.join("home"),
            runtime_dir: dir.join("runtime"),
            script: dir.join("session.sh"),
        }
    }
}

/// `dbus-run-session -- bash -eu <script> <inner program and arguments>`, in the inner
/// command's directory, with the private `HOME` and `XDG_RUNTIME_DIR`. Touches no file.
fn session_command(inner: &Command, paths: &SessionPaths) -> Command {
    let mut wrapped = Command::new("dbus-run-session");
    wrapped
        .args(["--", "bash", "-eu"])
        .arg(&paths.script)
        .arg(inner.get_program())
        .args(inner.get_args());
    if let Some(dir) = inner.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for var in LEAKY_VARS {
        wrapped.env_remove(var);
    }
    wrapped
        .env("HOME", &paths.home)
        .env("XDG_RUNTIME_DIR", &paths.runtime_dir);
    wrapped
}

/// `$<var>`, or `$HOME/<default>` as cargo and rustup assume.
fn tool_home(var: &str, default: &str) -> Result<OsString> {
    env::var_os(var)
        .filter(|value| !value.is_empty())
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(default).into_os_string()))
        .ok_or_else(|| anyhow!("neither ${var} nor $HOME is set"))
}

/// `target/xtask/keyring` in the repository, or a directory under `/tmp` if gnome-keyring's
/// control socket would not fit there.
fn session_dir() -> Result<PathBuf> {
    let parent = cmd::workspace_root().join("target").join("xtask");
    fs::create_dir_all(&parent)
        .with_context(|| format!("could not create {}", parent.display()))?;
    let preferred = parent.join("keyring");
    let socket_len = preferred.join("runtime/keyring/control").as_os_str().len();
    if socket_len <= MAX_SOCKET_PATH {
        return Ok(preferred);
    }
    // Named after the preferred path, so that each checkout has its own.
    let mut hasher = DefaultHasher::new();
    preferred.hash(&mut hasher);
    Ok(Path::new("/tmp").join(format!("lockstep-xtask-keyring-{:016x}", hasher.finish())))
}

/// Creates `dir` readable by its owner only, as `XDG_RUNTIME_DIR` must be.
fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("could not make {} private", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_command_keeps_the_inner_one() {
        let mut inner = Command::new("/usr/bin/cargo");
        inner.args(["test", "--workspace"]).current_dir("/repo");
        let paths = SessionPaths::in_dir(Path::new("/repo/target/xtask/keyring"));
        let wrapped = session_command(&inner, &paths);

        assert_eq!(
            cmd::display(&wrapped),
            "HOME=/repo/target/xtask/keyring/home \
             XDG_RUNTIME_DIR=/repo/target/xtask/keyring/runtime \
             dbus-run-session -- bash -eu /repo/target/xtask/keyring/session.sh \
             /usr/bin/cargo test --workspace"
        );
        assert_eq!(wrapped.get_current_dir(), Some(Path::new("/repo")));
        let removed: Vec<_> = wrapped
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.to_string_lossy().into_owned())
            .collect();
        for var in LEAKY_VARS {
            assert!(removed.iter().any(|key| key == var), "{var}");
        }
    }
}
