//! A `lockstep-cloud` process under measurement, and what `/proc` says about it.

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub const PASSWORD: &str = "Correct horse 42";
pub const SIGN_UP: &str = "/auth/v1/signup";
pub const SIGN_IN: &str = "/auth/v1/token?grant_type=password";

/// The limits every bench server runs with: room for the load (one address signs every user
/// up; streams by the ten thousand, a hundred per session), nothing else changed.
pub const ROOMY: &[&str] = &[
    "--signups-per-ip=100000/3600",
    "--max-connections=19000",
    "--max-connections-per-ip=100000",
    "--max-streams-per-session=1000",
    "--max-streams-per-user=1000",
];

/// How to start one server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// PostgreSQL; SQLite in the data dir when `None`.
    pub database_url: Option<String>,
    /// More command-line arguments.
    pub extra: Vec<String>,
    /// A directory whose `secrets.json` every server on one database shares (they must sign
    /// and check tokens with the same keys): the first server's secrets are saved there, and
    /// later servers start with them.
    pub shared_secrets: Option<PathBuf>,
}

/// A `lockstep-cloud` process with its own data dir, stopped on drop.
pub struct Server {
    child: Child,
    pub url: String,
    pub anon_key: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub async fn start(bin: &Path, options: &Options) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let shared = options
            .shared_secrets
            .as_ref()
            .map(|d| d.join("secrets.json"));
        if let Some(shared) = shared.as_ref().filter(|s| s.exists()) {
            std::fs::copy(shared, dir.path().join("secrets.json"))
                .context("copying the shared secrets")?;
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bind = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut command = Command::new(bin);
        command
            .args(["--bind", &bind, "--data-dir"])
            .arg(dir.path())
            .arg("--mailer-autoconfirm")
            .args(ROOMY)
            .args(&options.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(url) = &options.database_url {
            command.args(["--database-url", url]);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut server = Server {
            child,
            url: format!("http://{bind}"),
            anon_key: String::new(),
            dir,
        };
        let started = Instant::now();
        server.anon_key = loop {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{} did not answer within 60 s", bin.display());
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{} exited ({status}) at start: {}",
                    bin.display(),
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(secrets) = std::fs::read_to_string(server.dir.path().join("secrets.json"))
            else {
                continue;
            };
            if reqwest::get(format!("{}/auth/v1/health", server.url))
                .await
                .is_ok()
            {
                let secrets: Value = serde_json::from_str(&secrets)?;
                break secrets["anon_key"].as_str().unwrap_or_default().to_owned();
            }
        };
        if let Some(shared) = shared.filter(|s| !s.exists()) {
            std::fs::copy(server.dir.path().join("secrets.json"), shared)
                .context("saving the shared secrets")?;
        }
        Ok(server)
    }

    /// The first lines the server logged (why it stopped at start), for an error message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        log.lines().take(8).collect::<Vec<_>>().join("\n")
    }

    fn proc_file(&self, name: &str) -> Result<String> {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id()))
            .with_context(|| format!("reading the server's /proc/PID/{name} (Linux only)"))
    }

    /// Resident memory now and at its peak, in MiB, from `/proc/PID/status`.
    pub fn memory(&self) -> Result<Memory> {
        let status = self.proc_file("status")?;
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        Ok(Memory {
            rss_mib: field("VmRSS:"),
            peak_mib: field("VmHWM:"),
        })
    }

    /// CPU time the process used so far (user + system, every thread), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = self.proc_file("stat")?;
        // After "pid (comm) ", fields start at the state (field 3): utime is 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
            bail!("unexpected /proc/PID/stat: {stat}");
        };
        Ok((user + system) / clock_ticks_per_second())
    }

    /// Signs `email` up or in (`path`: [`SIGN_UP`] or [`SIGN_IN`]) and returns the session's
    /// access token. The server confirms addresses at signup (`--mailer-autoconfirm`).
    pub async fn session(&self, http: &reqwest::Client, path: &str, email: &str) -> Result<String> {
        let reply: Value = http
            .post(format!("{}{path}", self.url))
            .header("apikey", &self.anon_key)
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        reply["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no session in the answer")
    }

    /// One sign-in: the answer's status and how long it took.
    pub async fn sign_in(
        &self,
        http: &reqwest::Client,
        email: &str,
        password: &str,
    ) -> Result<(u16, Duration)> {
        let started = Instant::now();
        let reply = http
            .post(format!("{}{SIGN_IN}", self.url))
            .header("apikey", &self.anon_key)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await?;
        let status = reply.status().as_u16();
        let _ = reply.bytes().await;
        Ok((status, started.elapsed()))
    }

    /// Pushes one change; the answer's status (0: no answer).
    pub async fn push(&self, http: &reqwest::Client, token: &str, body: &Value) -> u16 {
        match http
            .post(format!("{}/rest/v1/rpc/push_settings", self.url))
            .header("apikey", &self.anon_key)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
        {
            Ok(reply) => {
                let status = reply.status().as_u16();
                let _ = reply.bytes().await;
                status
            }
            Err(_) => 0,
        }
    }
}

/// A process's resident memory.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_mib: f64,
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A client whose connections come from `127.0.0.<last>`: one source address has ~28k ports,
/// so big loads spread over several.
pub fn client_from(last: u8) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(60))
        .build()?)
}

/// Signs `count` new users up, a few at a time (the server queues at most 8 password checks
/// per client address), and returns their access tokens.
pub async fn sign_up_users(server: &Server, prefix: &str, count: usize) -> Result<Vec<String>> {
    use futures::{StreamExt as _, TryStreamExt as _};
    let http = reqwest::Client::new();
    futures::stream::iter((0..count).map(|i| {
        let http = &http;
        async move {
            let email = format!("{prefix}-{i}@example.com");
            server.session(http, SIGN_UP, &email).await
        }
    }))
    .buffered(4)
    .try_collect()
    .await
}

/// A name no earlier run used, so a PostgreSQL database can be reused across runs.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        "{prefix}-{millis}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
