//! A private, throwaway PostgreSQL cluster for the tests and the bench.
//!
//! The cluster lives in `target/xtask/<name>`, is wiped and re-created on
//! every start, listens only on 127.0.0.1 (port 54329 unless that is taken),
//! trusts every local connection and, for the tests, trades durability for
//! speed (the bench's commits are durable: see [`Durability`]). Its
//! superuser is `postgres`, so the URL is
//! `postgres://postgres@127.0.0.1:<port>/postgres`.
//!
//! PostgreSQL refuses to run as root. As root, the cluster belongs to the
//! `postgres` system user (or `lockstep-pg`, created on demand) and its tools
//! run through `runuser`.

use std::fs;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, anyhow};

use crate::cmd;
use crate::system::{self, Package};

/// The environment variable through which tests find their database.
pub const URL_VAR: &str = "LOCKSTEP_TEST_POSTGRES";

/// The cluster of `cargo xtask test`.
pub const TEST_CLUSTER: &str = "postgres-test";

/// The cluster of `cargo xtask postgres`; separate from the test one so that
/// both can run at the same time.
pub const DEV_CLUSTER: &str = "postgres";

/// The cluster of `cargo xtask bench`.
pub const BENCH_CLUSTER: &str = "postgres-bench";

/// Whether a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Tests and development: `fsync`, `synchronous_commit` and `full_page_writes` off.
    Throwaway,
    /// Benchmarks: PostgreSQL's defaults, so an acknowledged commit is on disk, as in
    /// production.
    Durable,
}

/// The system package with `initdb` and `pg_ctl`.
pub const PACKAGE: Package = Package::check(|| find_bin_dir().is_some(), "postgresql");

/// The port tried first.
const PREFERRED_PORT: u16 = 54329;

/// The system user that owns the cluster when xtask runs as root and there
/// is no `postgres` user.
const FALLBACK_USER: &str = "lockstep-pg";

/// Unix socket paths longer than this do not fit in `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 100;

/// A running throwaway cluster; dropping it stops the server.
#[derive(Debug)]
pub struct Cluster {
    /// Where `initdb` and `pg_ctl` live.
    bin_dir: PathBuf,
    /// Holds `data/`, `run/` (the Unix socket) and `postgres.log`.
    dir: PathBuf,
    /// Who runs the PostgreSQL tools: `None` for this process's user.
    owner: Option<String>,
    port: u16,
    /// Whether `drop` still has to stop the server.
    armed: bool,
    durability: Durability,
}

impl Cluster {
    /// Creates and starts the cluster `name` (see the module docs).
    ///
    /// Stops a cluster left running in the same place by an earlier,
    /// interrupted run first.
    pub fn start(name: &str, durability: Durability) -> Result<Self> {
        let bin_dir = find_bin_dir().context(
            "cannot find PostgreSQL's `initdb` and `pg_ctl` (in PATH or /usr/lib/postgresql/*/bin); \
             install PostgreSQL (Debian: `apt-get install postgresql`), or point \
             LOCKSTEP_TEST_POSTGRES at an existing database",
        )?;
        let owner = if system::is_root() {
            Some(service_user()?)
        } else {
            None
        };
        let dir = cluster_dir(name, owner.is_some())?;
        let mut cluster = Self {
            bin_dir,
            dir,
            owner,
            port: PREFERRED_PORT,
            armed: true,
            durability,
        };
        // Before picking the port: a leftover cluster may hold the preferred one.
        cluster.stop_leftover();
        cluster.port = free_port()?;
        println!(
            "==> starting a throwaway PostgreSQL in {} on port {}",
            cluster.dir.display(),
            cluster.port
        );
        cluster.create()?;
        cluster.launch()?;
        Ok(cluster)
    }

    /// The URL of the cluster's `postgres` database, as superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server, reporting a failure (dropping only prints it).
    pub fn stop(mut self) -> Result<()> {
        self.armed = false;
        self.shut_down()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn is_running(&self) -> bool {
        self.data_dir().join("postmaster.pid").exists()
    }

    /// A command for the PostgreSQL tool `tool`, run as the cluster's owner.
    fn tool(&self, tool: &str) -> Command {
        let program = self.bin_dir.join(tool);
        let mut command = match &self.owner {
            Some(owner) => {
                let runuser =
                    cmd::find_system_program("runuser").unwrap_or_else(|| "runuser".into());
                let mut command = Command::new(runuser);
                command.args(["-u", owner, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        // The owner may not be allowed into our working directory.
        command.current_dir(&self.dir);
        command
    }

    /// Stops a server that an interrupted earlier run left behind.
    fn stop_leftover(&self) {
        if self.is_running() {
            println!("==> stopping the PostgreSQL left running by an earlier run");
            // Fails when the server is long gone (e.g. after a reboot); its
            // files are wiped next either way.
            if let Err(err) = cmd::output(&mut self.pg_ctl_stop()) {
                println!("note: assuming it is no longer running: {err:#}");
            }
        }
    }

    /// Wipes the directory and runs `initdb` and the configuration.
    fn create(&self) -> Result<()> {
        if fs::symlink_metadata(&self.dir).is_ok() {
            fs::remove_dir_all(&self.dir).with_context(|| {
                format!(
                    "could not remove the old cluster in {}; delete it by hand",
                    self.dir.display()
                )
            })?;
        }
        fs::create_dir_all(self.socket_dir())
            .with_context(|| format!("could not create {}", self.socket_dir().display()))?;
        if let Some(owner) = &self.owner {
            cmd::output(Command::new("chown").args(["-R", owner]).arg(&self.dir))?;
        }

        let mut initdb = self.tool("initdb");
        initdb
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(["--username=postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--no-locale", "--no-sync"]);
        cmd::output(&mut initdb).context("could not create the PostgreSQL cluster")?;

        let durability = match self.durability {
            Durability::Throwaway => {
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            }
            Durability::Durable => "",
        };
        let config = format!(
            "\n# Added by cargo xtask: a private, throwaway cluster.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sockets}'\n\
             max_connections = 200\n\
             {durability}",
            port = self.port,
            sockets = escape_config(&self.socket_dir().to_string_lossy()),
        );
        let config_file = self.data_dir().join("postgresql.conf");
        let mut contents = fs::read_to_string(&config_file)
            .with_context(|| format!("could not read {}", config_file.display()))?;
        contents.push_str(&config);
        fs::write(&config_file, contents)
            .with_context(|| format!("could not write {}", config_file.display()))
    }

    /// Starts the server and waits until it accepts connections.
    fn launch(&self) -> Result<()> {
        let mut start = self.tool("pg_ctl");
        start
            .arg("--pgdata")
            .arg(self.data_dir())
            .arg("--log")
            .arg(self.log_file())
            .args(["--wait", "--timeout=60", "start"]);
        cmd::output(&mut start).map(drop).map_err(|err| {
            anyhow!(
                "PostgreSQL did not start: {err:#}\n\nThe end of its log, {}:\n{}",
                self.log_file().display(),
                log_tail(&self.log_file(), 30)
            )
        })
    }

    /// Stops the server, if it runs.
    fn shut_down(&self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let mut stop = self.pg_ctl_stop();
        cmd::output(&mut stop).map(drop).with_context(|| {
            format!(
                "could not stop the PostgreSQL in {}; stop it with `{}`",
                self.dir.display(),
                cmd::display(&stop)
            )
        })
    }

    /// `pg_ctl stop -m immediate`: no clean shutdown, there is nothing worth keeping.
    fn pg_ctl_stop(&self) -> Command {
        let mut stop = self.tool("pg_ctl");
        stop.arg("--pgdata")
            .arg(self.data_dir())
            .args(["--mode=immediate", "--wait", "stop"]);
        stop
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(err) = self.shut_down() {
            eprintln!("warning: {err:#}");
        }
    }
}

/// The directory with PostgreSQL's server tools: the first in `PATH` that
/// has both `initdb` and `pg_ctl`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian keeps them out of `PATH`).
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| {
        cmd::is_executable(&dir.join("initdb")) && cmd::is_executable(&dir.join("pg_ctl"))
    };

    let in_path = cmd::find_program("pg_ctl")
        .and_then(|pg_ctl| pg_ctl.parent().map(Path::to_path_buf))
        .filter(|dir| has_tools(dir));
    if in_path.is_some() {
        return in_path;
    }

    let mut versioned: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, dir)| dir)
}

/// The system user that runs PostgreSQL when xtask runs as root: `postgres`
/// (Debian's package creates it), else `lockstep-pg`, created if needed.
fn service_user() -> Result<String> {
    let exists = |user: &str| cmd::succeeds(Command::new("id").args(["-u", user]));
    if exists("postgres") {
        return Ok("postgres".into());
    }
    if !exists(FALLBACK_USER) {
        let useradd = cmd::find_system_program("useradd").unwrap_or_else(|| "useradd".into());
        cmd::output(Command::new(useradd).args(["--system", "--no-create-home", FALLBACK_USER]))
            .context("PostgreSQL cannot run as root, and creating a system user for it failed")?;
    }
    Ok(FALLBACK_USER.into())
}

/// Where cluster `name` lives: `target/xtask/<name>` in the repository, or a
/// directory under `/tmp` if PostgreSQL could not work there (the owner
/// cannot reach it, or the socket path would be too long).
fn cluster_dir(name: &str, separate_owner: bool) -> Result<PathBuf> {
    let parent = cmd::workspace_root().join("target").join("xtask");
    fs::create_dir_all(&parent)
        .with_context(|| format!("could not create {}", parent.display()))?;
    let preferred = parent.join(name);

    let socket_len = preferred.join("run/.s.PGSQL.65535").as_os_str().len();
    if socket_len <= MAX_SOCKET_PATH && (!separate_owner || world_traversable(&parent)) {
        return Ok(preferred);
    }
    // Named after the preferred path, so that each checkout has its own.
    let mut hasher = DefaultHasher::new();
    preferred.hash(&mut hasher);
    Ok(Path::new("/tmp").join(format!("lockstep-xtask-{name}-{:016x}", hasher.finish())))
}

/// Whether every user may enter `dir` (every ancestor is world-executable).
fn world_traversable(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        dir.ancestors().all(|ancestor| {
            fs::metadata(ancestor).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0)
        })
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        true
    }
}

/// The preferred port if it is free, else any free port.
fn free_port() -> Result<u16> {
    if TcpListener::bind((Ipv4Addr::LOCALHOST, PREFERRED_PORT)).is_ok() {
        return Ok(PREFERRED_PORT);
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("could not find a free TCP port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Escapes `value` for a single-quoted string in `postgresql.conf`.
fn escape_config(value: &str) -> String {
    value.replace('\\', r"\\").replace('\'', "''")
}

/// The last `lines` lines of the file at `path`, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(could not read it: {err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_strings_are_escaped() {
        assert_eq!(escape_config(r"/tmp/it's\here"), r"/tmp/it''s\\here");
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("xtask-log-tail-{}", std::process::id()));
        fs::write(&path, "one\ntwo\nthree\n").expect("write the test log");
        assert_eq!(log_tail(&path, 2), "two\nthree");
        assert_eq!(log_tail(&path, 10), "one\ntwo\nthree");
        fs::remove_file(&path).expect("remove the test log");
    }
}
