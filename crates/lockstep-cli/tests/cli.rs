//! The `lockstep` binary as a user runs it: real processes against a real `lockstep-cloud`
//! (embedded SQLite, in this test process) and the real OS keychain.
//!
//! `cargo xtask test` runs these under a private D-Bus session with an unlocked gnome-keyring
//! and sets `LOCKSTEP_REQUIRE_SECRET_SERVICE=1`, which makes a missing Secret Service a failure.
//! Under a plain `cargo test` without one, each test says it was skipped and passes.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use lockstep_cloud::embedded::EmbeddedCloud;
use lockstep_core::keychain::{Keychain, SecretKind};
use serde_json::{Value, json};

const PASSWORD: &str = "Correct horse 42";

/// How long one command may take before the test gives up on it.
const COMMAND_SECS: u64 = 60;

/// The cloud and a CLI home for one test; `None` (the test should return) as
/// `Keychain::use_platform_store_or_skip` says.
fn start_or_skip() -> Option<(Cloud, Cli)> {
    if !Keychain::use_platform_store_or_skip() {
        return None;
    }
    // One test at a time talks to the Secret Service: one full run in nine lost its
    // gnome-keyring daemon mid-run while these tests ran side by side (each test still runs
    // several processes at once). The turn is held until the test's `Cli` is dropped.
    let turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cloud = Cloud::start();
    let cli = Cli::new(&cloud, turn);
    Some((cloud, cli))
}

/// Whose turn it is to use the Secret Service (see [`start_or_skip`]).
static TURN: Mutex<()> = Mutex::new(());

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A profile name no other test or run uses (the keychain is shared by all of them).
fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn now_secs() -> u64 {
    u64::try_from(lockstep_core::clock_ms() / 1000).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The server, on a runtime of its own (`lockstep_cloud::embedded`), so that it can be killed.

struct Cloud {
    url: String,
    anon_key: String,
    server: EmbeddedCloud,
    dir: tempfile::TempDir,
}

impl Cloud {
    fn start() -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let server = EmbeddedCloud::start(
            dir.path(),
            Arc::new(|config| {
                config.dev = true;
                config.sse_heartbeat_seconds = 2;
            }),
        )
        .unwrap();
        Cloud {
            url: server.url.clone(),
            anon_key: server.anon_key.clone(),
            server,
            dir,
        }
    }

    /// Stops the server at once, as if its process died.
    fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts the server again on the same port and data.
    fn restart(&mut self) {
        self.server.restart().unwrap();
    }

    /// Polls `sql` (one integer) until `done` holds or `secs` pass; returns the last value.
    fn poll_scalar(&self, sql: &str, secs: u64, done: impl Fn(i64) -> bool) -> i64 {
        let url = format!(
            "sqlite://{}",
            self.dir.path().join("lockstep.sqlite3").display()
        );
        block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(secs);
            let value = loop {
                let value: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                if done(value) || Instant::now() >= deadline {
                    break value;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            pool.close().await;
            value
        })
    }

    /// Opens the newest link mailed to `email`, as its owner's browser would.
    fn confirm_email(&self, email: &str) {
        let link = self.server.newest_link(email).unwrap();
        let landed = block_on(reqwest::get(link)).unwrap();
        assert!(landed.status().is_success(), "{}", landed.status());
    }

    /// One integer cell from the server's database, read beside the server (WAL mode).
    fn scalar(&self, sql: &str) -> i64 {
        let url = format!(
            "sqlite://{}",
            self.dir.path().join("lockstep.sqlite3").display()
        );
        block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let value = sqlx::query_scalar(sql)
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            pool.close().await;
            value
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Running the CLI.

/// The CLI's environment: the server, a home directory of its own and the password.
struct Cli {
    server: String,
    anon_key: String,
    home: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Cli {
    fn new(cloud: &Cloud, turn: std::sync::MutexGuard<'static, ()>) -> Cli {
        Cli {
            server: cloud.url.clone(),
            anon_key: cloud.anon_key.clone(),
            home: tempfile::tempdir().unwrap(),
            _turn: turn,
        }
    }

    fn profile_dir(&self, profile: &str) -> PathBuf {
        self.home.path().join("profiles").join(profile)
    }

    fn command(&self, profile: &str, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lockstep"));
        command
            .arg("--profile")
            .arg(profile)
            .args(args)
            .env("LOCKSTEP_HOME", self.home.path())
            .env("LOCKSTEP_SERVER", &self.server)
            .env("LOCKSTEP_ANON_KEY", &self.anon_key)
            .env("LOCKSTEP_PASSWORD", PASSWORD)
            .env_remove("LOCKSTEP_CODE")
            .env_remove("LOCKSTEP_PROFILE")
            .stdin(Stdio::null());
        command
    }

    /// Starts `lockstep --profile <profile> <args>`, its stdout read line by line.
    fn spawn(&self, profile: &str, args: &[&str]) -> Proc {
        Proc::spawn(self.command(profile, args), profile, args)
    }

    /// Like [`Cli::spawn`], with a pipe to its standard input.
    fn spawn_with_stdin(&self, profile: &str, args: &[&str]) -> Proc {
        let mut command = self.command(profile, args);
        command.stdin(Stdio::piped());
        Proc::spawn(command, profile, args)
    }

    /// Runs a command to its end.
    fn run(&self, profile: &str, args: &[&str]) -> Finished {
        self.spawn(profile, args).finish(COMMAND_SECS)
    }

    /// Runs a command that must succeed.
    fn ok(&self, profile: &str, args: &[&str]) -> Finished {
        let done = self.run(profile, args);
        done.expect_code(0);
        done
    }
}

/// A running `lockstep` process.
struct Proc {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(mut command: Command, profile: &str, args: &[&str]) -> Proc {
        let what = format!("lockstep --profile {profile} {}", args.join(" "));
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            what,
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    fn context(&self) -> String {
        format!(
            "{}\n--- stdout so far:\n{}\n--- stderr:\n{}",
            self.what,
            self.seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits up to `secs` for a stdout line that is JSON and matches `pred`.
    fn wait_json(&mut self, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let line = self.wait_line(secs, what, |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|v| pred(&v))
        });
        serde_json::from_str(&line).unwrap()
    }

    /// Waits up to `secs` for a stdout line matching `pred`.
    fn wait_line(&mut self, secs: u64, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no {what} within {secs} s from {}", self.context())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    self.join_stderr();
                    panic!(
                        "no {what}: the process ended ({status:?}): {}",
                        self.context()
                    )
                }
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned with a stdin pipe");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: the process should stop cleanly.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGKILL at once (`Child::kill` on Unix).
    fn kill9(&mut self) {
        let _ = self.child.kill();
    }

    fn join_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }

    /// Waits up to `secs` for the process to end, and collects what it printed.
    fn finish(mut self, secs: u64) -> Finished {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status: ExitStatus = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.join_stderr();
                panic!("not finished within {secs} s: {}", self.context());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.join_stderr();
        // The reader thread ends at EOF: everything it read is in the channel.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        Finished {
            what: self.what.clone(),
            status,
            stdout: self.seen.join("\n"),
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }
}

/// A process that ended.
struct Finished {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ended with {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl Finished {
    fn expect_code(&self, code: i32) {
        assert_eq!(self.status.code(), Some(code), "{self}");
    }

    /// The stdout lines that are JSON objects.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The last stdout line, as JSON.
    fn last_json(&self) -> Value {
        self.json_lines()
            .pop()
            .unwrap_or_else(|| panic!("no JSON line in the output of {self}"))
    }

    fn killed_by_signal(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt as _;
            self.status.signal().is_some()
        }
        #[cfg(not(unix))]
        {
            false
        }
    }
}

/// Signs `profile` up (or in) as `email`, named `Device <profile>`.
fn signup(cli: &Cli, profile: &str, email: &str) {
    cli.ok(
        profile,
        &["--device-name", &device_name(profile), "signup", email],
    );
}

fn login(cli: &Cli, profile: &str, email: &str) {
    cli.ok(
        profile,
        &["--device-name", &device_name(profile), "login", email],
    );
}

/// Two fresh profiles on one account, named after `names`: the first signs up as `email`, the
/// second signs in.
fn two_profiles(cli: &Cli, names: [&str; 2], email: &str) -> (String, String) {
    let (a, b) = (unique(names[0]), unique(names[1]));
    signup(cli, &a, email);
    login(cli, &b, email);
    (a, b)
}

/// `lockstep watch --json` on `profile`, once it reports the connection live.
fn watch_live(cli: &Cli, profile: &str) -> Proc {
    let mut watch = cli.spawn(profile, &["watch", "--json"]);
    watch.wait_json(30, "Live status", |v| {
        v["event"] == "status" && v["connection"] == "live"
    });
    watch
}

fn device_name(profile: &str) -> String {
    format!("Device {profile}")
}

fn device_id(cli: &Cli, profile: &str) -> String {
    let text = std::fs::read_to_string(cli.profile_dir(profile).join("profile.json")).unwrap();
    let config: Value = serde_json::from_str(&text).unwrap();
    config["device_id"].as_str().unwrap().to_owned()
}

/// How many rows `table` of `profile`'s database holds (read beside whoever has it open).
fn profile_rows(cli: &Cli, profile: &str, table: &str) -> i64 {
    let path = cli.profile_dir(profile).join("profile.sqlite3");
    block_on(async {
        let url = format!("sqlite://{}?mode=ro", path.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let count = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        count
    })
}

fn refresh_token_of(profile: &str) -> Option<String> {
    block_on(Keychain::for_profile(profile).get(SecretKind::RefreshToken)).unwrap()
}

/// `user_id = (the id of email)`, for queries of the server's database.
fn user_of(email: &str) -> String {
    format!("user_id = (SELECT id FROM users WHERE email = '{email}')")
}

// ---------------------------------------------------------------------------------------------

#[test]
fn signup_set_on_one_profile_watch_on_another() {
    let Some((_cloud, cli)) = start_or_skip() else {
        return;
    };
    let (a, b) = two_profiles(&cli, ["a", "b"], "ada@example.com");

    let started = Instant::now();
    let mut watch = watch_live(&cli, &b);
    println!("watch went live in {:?}", started.elapsed());

    let edited = Instant::now();
    let set = cli.ok(&a, &["set", "appearance.theme", "dark"]);
    let set_took = edited.elapsed();
    assert!(
        set.stdout.lines().any(|l| l == "queued appearance.theme"),
        "{set}"
    );
    let change = watch.wait_json(30, "remote change of appearance.theme", |v| {
        v["event"] == "remote_change" && v["key"] == "appearance.theme"
    });
    println!(
        "`set` process: {set_took:?}; from its start to the watcher's line: {:?}",
        edited.elapsed()
    );
    assert_eq!(change["new"], json!("dark"), "{change}");
    assert_eq!(change["old"], json!("system"), "{change}");
    assert_eq!(change["device_name"], json!(device_name(&a)), "{change}");

    // SIGTERM stops the watcher cleanly (and releases the profile for the next command).
    watch.terminate();
    let stopped = watch.finish(30);
    stopped.expect_code(0);

    let got = cli.ok(&b, &["get", "appearance.theme", "--json"]);
    let line = got.last_json();
    assert_eq!(line["key"], json!("appearance.theme"), "{got}");
    // The schema's label, the one the window and the notifications use.
    assert_eq!(
        line["label"],
        json!(lockstep_protocol::settings::label("appearance.theme")),
        "{got}"
    );
    assert_eq!(line["value"], json!("dark"), "{got}");
    assert_eq!(line["device_id"], json!(device_id(&cli, &a)), "{got}");
    assert!(line["updated_at"].is_string(), "{got}");

    // The schema refuses a value, naming the key, before anything is queued.
    let refused = cli.run(&a, &["set", "appearance.theme", "blue"]);
    refused.expect_code(3);
    assert!(refused.stderr.contains("appearance.theme"), "{refused}");
    assert!(!refused.stdout.contains("queued"), "{refused}");
}

/// Regression (issue 10): the same setting edited twice while the server was down used to make
/// every later `sync` fail with "this key appears more than once in the push", for good.
#[test]
fn the_same_setting_edited_twice_offline_syncs_and_later_edits_keep_syncing() {
    let Some((mut cloud, cli)) = start_or_skip() else {
        return;
    };
    let (laptop, desktop) = two_profiles(&cli, ["laptop", "desktop"], "twice@example.com");

    cloud.kill();
    for theme in ["dark", "light"] {
        let set = cli.ok(&laptop, &["set", "appearance.theme", theme]);
        assert!(set.stdout.contains("saved locally"), "{set}");
    }
    cloud.restart();

    let synced = cli.ok(&laptop, &["sync", "--json"]);
    // The second edit replaced the first in the outbox: one push, one edit.
    assert_eq!(synced.last_json()["pushed"], json!(1), "{synced}");
    cli.ok(&desktop, &["sync"]);
    for profile in [&laptop, &desktop] {
        let got = cli.ok(profile, &["get", "appearance.theme", "--json"]);
        assert_eq!(got.last_json()["value"], json!("light"), "{profile}: {got}");
    }

    // Later edits of any key keep leaving the device.
    cli.ok(&laptop, &["set", "notifications.desktop", "false"]);
    cli.ok(&desktop, &["sync"]);
    let got = cli.ok(&desktop, &["get", "notifications.desktop", "--json"]);
    assert_eq!(got.last_json()["value"], json!(false), "{got}");
    let status = cli.ok(&laptop, &["status", "--json"]);
    assert_eq!(status.last_json()["pending"], json!(0), "{status}");
    assert_eq!(status.last_json()["set_aside"], json!([]), "{status}");
}

#[test]
fn kill_9_in_the_middle_of_a_push_loses_no_acknowledged_edit() {
    let Some((cloud, cli)) = start_or_skip() else {
        return;
    };
    const N: usize = 300;

    // Each attempt has an account of its own, so every attempt's counts can be checked exactly.
    // The first kill comes right after the acknowledgement; later ones wait until the first
    // batch is on the server, to land between batches.
    let mut between_batches = false;
    for attempt in 1..=3 {
        let profile = unique(&format!("kill{attempt}"));
        let email = format!("kill{attempt}@example.com");
        let count_sql = format!(
            "SELECT COUNT(*) FROM user_settings WHERE {} AND key LIKE 'custom.k%'",
            user_of(&email)
        );
        signup(&cli, &profile, &email);
        let settings: serde_json::Map<String, Value> = (0..N)
            .map(|i| {
                (
                    format!("custom.k{i}"),
                    json!(format!("value {i} of attempt {attempt}")),
                )
            })
            .collect();
        let file = cli.home.path().join(format!("big-{attempt}.json"));
        let document = json!({"format": "lockstep-settings", "version": 1, "settings": settings});
        std::fs::write(&file, document.to_string()).unwrap();

        let mut import = cli.spawn(&profile, &["import", file.to_str().unwrap(), "--json"]);
        import.wait_json(COMMAND_SECS, "the queued acknowledgement", |v| {
            v["queued"] == json!(N)
        });
        if attempt > 1 {
            cloud.poll_scalar(&count_sql, 30, |count| count > 0);
        }
        import.kill9();
        let killed = import.finish(COMMAND_SECS);
        let at_kill = cloud.scalar(&count_sql);
        let when = match at_kill {
            0 => "before the first batch reached the server".to_owned(),
            n if n == N as i64 => "after the whole push".to_owned(),
            n => format!("between batches ({n} of {N} edits on the server)"),
        };
        println!(
            "attempt {attempt}: killed by the signal: {}; the kill landed {when}",
            killed.killed_by_signal()
        );

        let synced = cli.ok(&profile, &["sync", "--json"]);
        let report = synced.last_json();
        println!(
            "attempt {attempt}: the next sync pushed {}",
            report["pushed"]
        );
        assert!(
            report["pushed"].as_i64().unwrap() + at_kill >= N as i64,
            "the sync pushes at least what had not arrived: {synced}"
        );
        let rows = cloud.scalar(&count_sql);
        assert_eq!(
            rows, N as i64,
            "every acknowledged edit reached the server ({synced})"
        );
        let feed = cloud.scalar(&format!(
            "SELECT COUNT(*) FROM change_feed WHERE {} \
             AND json_extract(payload, '$.table') = 'user_settings' \
             AND json_extract(payload, '$.new.key') LIKE 'custom.k%'",
            user_of(&email)
        ));
        assert_eq!(
            feed, N as i64,
            "each edit is in the change feed exactly once"
        );

        let got = cli.ok(&profile, &["get", "custom.k299", "--json"]);
        let line = got.last_json();
        assert_eq!(
            line["value"],
            json!(format!("value 299 of attempt {attempt}")),
            "{got}"
        );

        if killed.killed_by_signal() && at_kill > 0 && at_kill < N as i64 {
            between_batches = true;
            break;
        }
    }
    println!("a kill landed between two batches: {between_batches}");

    // A single `set`, killed right after its acknowledgement.
    let profile = unique("killset");
    let email = "killset@example.com";
    signup(&cli, &profile, email);
    let mut set = cli.spawn(&profile, &["set", "custom.single", "42", "--json"]);
    set.wait_json(COMMAND_SECS, "the queued acknowledgement", |v| {
        v["queued"] == json!("custom.single")
    });
    set.kill9();
    let killed = set.finish(COMMAND_SECS);
    let query = |table_filter: &str| {
        cloud.scalar(&format!(
            "SELECT COUNT(*) FROM {table_filter} AND {}",
            user_of(email)
        ))
    };
    let rows_at_kill = query("user_settings WHERE key = 'custom.single'");
    println!(
        "set: killed by the signal: {}; on the server right after the kill: {rows_at_kill}",
        killed.killed_by_signal()
    );
    let synced = cli.ok(&profile, &["sync"]);
    assert_eq!(
        query("user_settings WHERE key = 'custom.single'"),
        1,
        "the acknowledged edit reached the server: {killed}\n{synced}"
    );
    assert_eq!(
        query(
            "change_feed WHERE json_extract(payload, '$.table') = 'user_settings' \
             AND json_extract(payload, '$.new.key') = 'custom.single'"
        ),
        1,
        "exactly once in the feed: {killed}\n{synced}"
    );
    let got = cli.ok(&profile, &["get", "custom.single", "--json"]);
    assert_eq!(got.last_json()["value"], json!(42), "{got}");
}

#[test]
fn revoke_from_one_profile_signs_the_other_out_and_wipes_it() {
    let Some((_cloud, cli)) = start_or_skip() else {
        return;
    };
    let (a, b) = two_profiles(&cli, ["a", "b"], "ada@example.com");
    assert!(
        refresh_token_of(&b).is_some(),
        "B's refresh token is in the keychain"
    );
    cli.ok(&a, &["set", "appearance.theme", "dark"]);
    cli.ok(&b, &["sync"]);
    assert!(
        profile_rows(&cli, &b, "settings") > 0 && profile_rows(&cli, &b, "history") > 0,
        "B holds A's edit"
    );

    let mut watch = watch_live(&cli, &b);

    let listed = cli.ok(&a, &["devices", "--json"]);
    let devices = listed.json_lines();
    assert_eq!(devices.len(), 2, "{listed}");
    let b_id = devices
        .iter()
        .find(|d| d["name"] == json!(device_name(&b)))
        .unwrap_or_else(|| panic!("B is not listed: {listed}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b_id, device_id(&cli, &b), "{listed}");
    assert!(
        devices
            .iter()
            .any(|d| d["current"] == json!(true) && d["name"] == json!(device_name(&a))),
        "A is marked as the current device: {listed}"
    );

    let revoked_at = Instant::now();
    cli.ok(&a, &["revoke", &b_id]);
    let event = watch.wait_json(30, "the signed-out event", |v| {
        v["event"] == "security" && v["kind"] == "signed_out"
    });
    println!("revoke → B's signed_out line: {:?}", revoked_at.elapsed());
    assert_eq!(event["by"], json!(device_name(&a)), "{event}");
    let ended = watch.finish(30);
    ended.expect_code(4);

    let status = cli.run(&b, &["status"]);
    status.expect_code(4);
    assert!(status.stdout.contains("not signed in"), "{status}");
    let status = cli.run(&b, &["status", "--json"]);
    status.expect_code(4);
    assert_eq!(status.last_json()["signed_in"], json!(false), "{status}");
    assert_eq!(profile_rows(&cli, &b, "settings"), 0, "B's cache is gone");
    assert_eq!(profile_rows(&cli, &b, "history"), 0, "B's history is gone");
    assert_eq!(
        refresh_token_of(&b),
        None,
        "B's refresh token left the keychain"
    );

    // A goes on, and no longer lists B.
    let listed = cli.ok(&a, &["devices", "--json"]);
    assert_eq!(listed.json_lines().len(), 1, "{listed}");
    // B's network commands say it is signed out.
    cli.run(&b, &["sync"]).expect_code(4);
}

#[test]
fn mfa_enroll_then_login_needs_a_code_and_offline_code_check() {
    let Some((mut cloud, cli)) = start_or_skip() else {
        return;
    };
    let (a, b) = (unique("a"), unique("b"));
    let email = "ada@example.com";
    signup(&cli, &a, email);
    // Two-factor authentication needs a confirmed address.
    cloud.confirm_email(email);

    let qr = cli.home.path().join("qr.svg");
    let mut enroll = cli.spawn_with_stdin(
        &a,
        &[
            "mfa",
            "enroll",
            "--name",
            "Phone",
            "--qr",
            qr.to_str().unwrap(),
            "--json",
        ],
    );
    let shown = enroll.wait_json(COMMAND_SECS, "the secret", |v| v["secret"].is_string());
    let secret = shown["secret"].as_str().unwrap().to_owned();
    assert!(
        shown["uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/"),
        "{shown}"
    );
    let code = lockstep_core::totp::code_at(&secret, now_secs()).unwrap();
    enroll.write_line(&code);
    let enrolled = enroll.wait_json(COMMAND_SECS, "the recovery codes", |v| {
        v["recovery_codes"].is_array()
    });
    assert_eq!(
        enrolled["recovery_codes"].as_array().unwrap().len(),
        10,
        "{enrolled}"
    );
    enroll.finish(COMMAND_SECS).expect_code(0);
    assert!(
        std::fs::read_to_string(&qr).unwrap().contains("<svg"),
        "the QR code was written"
    );

    let status = cli.ok(&a, &["status", "--json"]);
    let status = status.last_json();
    assert_eq!(status["mfa"], json!(true), "{status}");
    assert_eq!(status["offline_code_check"], json!(true), "{status}");

    // B: the password alone is not enough.
    let refused = cli.run(&b, &["--device-name", &device_name(&b), "login", email]);
    refused.expect_code(8);
    assert!(refused.stderr.contains("--code"), "{refused}");
    // With a code (of the next step: the enrollment's code is spent) it is.
    let next = lockstep_core::totp::code_at(&secret, now_secs() + 30).unwrap();
    let done = cli.ok(&b, &["login", email, "--code", &next]);
    assert!(done.stdout.contains("signed in as"), "{done}");
    cli.ok(&b, &["set", "appearance.theme", "light"]);

    // Offline, A checks codes against its keychain's copy of the secret.
    cloud.kill();
    let current = lockstep_core::totp::code_at(&secret, now_secs()).unwrap();
    let valid = cli.run(&a, &["mfa", "code", &current]);
    valid.expect_code(0);
    let wrong = if current == "000000" {
        "111111"
    } else {
        "000000"
    };
    let invalid = cli.run(&a, &["mfa", "code", wrong]);
    invalid.expect_code(1);
    // Reads work offline; the network commands say the server is unreachable.
    cli.ok(&a, &["get", "appearance.theme"]);
    cli.run(&a, &["devices"]).expect_code(5);
    let status = cli.ok(&a, &["status", "--json"]);
    assert_eq!(
        status.last_json()["connection"],
        json!("offline"),
        "{status}"
    );
    let offline_set = cli.ok(&a, &["set", "appearance.theme", "dark"]);
    assert!(
        offline_set
            .stdout
            .contains("saved locally; will sync when online"),
        "{offline_set}"
    );
}

/// One profile, several processes at once, as a power user has them: the app's engine (opened
/// here, in the test process, as the desktop app opens it) runs the live loop; `lockstep watch`
/// on the same profile follows it (status `shared`) and prints what changes; `lockstep set` and
/// `lockstep get` on the same profile work meanwhile, and the app pushes what `set` queued. When
/// the app closes, the watcher takes the live loop over; when that watcher dies (kill -9), a
/// second one takes it over once the lease expires.
#[test]
fn the_app_a_watch_and_a_set_share_one_profile() {
    use lockstep_core::{
        engine::{Connection, EngineEvent},
        live::{self, LiveOptions},
        profile::{self, OpenOptions},
    };

    let Some((_cloud, cli)) = start_or_skip() else {
        return;
    };
    let (app, other) = two_profiles(&cli, ["app", "other"], "share@example.com");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let engine = profile::open(cli.home.path(), &app, OpenOptions::default())
        .unwrap()
        .engine;
    let mut events = engine.subscribe();
    let app_live = live::start(engine.clone(), LiveOptions::default());
    let mut status = engine.status();
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| s.connection == Connection::Live),
        )
        .await
        .expect("the app goes live")
        .unwrap();
    });
    let app_event = |events: &mut tokio::sync::broadcast::Receiver<EngineEvent>, key: &str| {
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match events.recv().await {
                        Ok(EngineEvent::RemoteChange {
                            key: k,
                            new,
                            device_name,
                            ..
                        }) if k == key => return (new, device_name),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(error) => panic!("the app's events ended: {error}"),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the app never heard of {key}"))
        })
    };

    let mut watch = cli.spawn(&app, &["watch", "--json"]);
    watch.wait_json(30, "the shared status", |v| {
        v["event"] == "status" && v["connection"] == "shared"
    });

    // `set` on the profile the app and the watcher have open.
    let set = cli.ok(&app, &["set", "appearance.theme", "dark"]);
    assert!(
        set.stdout.lines().any(|l| l == "queued appearance.theme"),
        "{set}"
    );
    let change = watch.wait_json(30, "the set, in the watcher", |v| {
        v["event"] == "remote_change" && v["key"] == "appearance.theme"
    });
    assert_eq!(change["new"], json!("dark"), "{change}");
    let (new, _) = app_event(&mut events, "appearance.theme");
    assert_eq!(new, Some(json!("dark")), "the app shows it at once");

    // Another device's edit reaches the app over its stream, and the watcher through the
    // profile.
    cli.ok(&other, &["set", "notifications.desktop", "false"]);
    let (new, by) = app_event(&mut events, "notifications.desktop");
    assert_eq!(new, Some(json!(false)));
    assert_eq!(by, Some(device_name(&other)));
    let change = watch.wait_json(30, "the other device's edit, in the watcher", |v| {
        v["event"] == "remote_change" && v["key"] == "notifications.desktop"
    });
    assert_eq!(
        change["device_name"],
        json!(device_name(&other)),
        "{change}"
    );
    let got = cli.ok(&app, &["get", "notifications.desktop", "--json"]);
    assert_eq!(got.last_json()["value"], json!(false), "{got}");

    // What `set` queued on the shared profile reached the server.
    cli.ok(&other, &["sync"]);
    let seen = cli.ok(&other, &["get", "appearance.theme", "--json"]);
    assert_eq!(seen.last_json()["value"], json!("dark"), "{seen}");

    // The app closes: the watcher takes the live loop over.
    runtime.block_on(app_live.stop());
    drop(engine);
    watch.wait_json(30, "the watcher going live", |v| {
        v["event"] == "status" && v["connection"] == "live"
    });

    // A second watcher follows the first; the first dies; the second takes over.
    let mut second = cli.spawn(&app, &["watch", "--json"]);
    second.wait_json(30, "the second watcher's shared status", |v| {
        v["event"] == "status" && v["connection"] == "shared"
    });
    watch.kill9();
    second.wait_json(30, "the second watcher going live", |v| {
        v["event"] == "status" && v["connection"] == "live"
    });
    cli.ok(&other, &["set", "appearance.theme", "light"]);
    let change = second.wait_json(30, "a change, live in the second watcher", |v| {
        v["event"] == "remote_change" && v["key"] == "appearance.theme"
    });
    assert_eq!(change["new"], json!("light"), "{change}");
    second.terminate();
    second.finish(30).expect_code(0);
}

/// `lockstep history KEY` lists every value the key had on this device, set here or arrived,
/// newest first, secrets masked; `lockstep restore KEY` sets the one before the current again
/// as a new edit, which syncs to the other device; a version that is not there is refused.
#[test]
fn history_lists_every_value_and_restore_syncs_an_old_one() {
    let Some((_cloud, cli)) = start_or_skip() else {
        return;
    };
    let (a, b) = two_profiles(&cli, ["hist-a", "hist-b"], "history@example.com");
    cli.ok(&a, &["set", "appearance.theme", "dark"]);
    cli.ok(&b, &["sync"]);
    cli.ok(&b, &["set", "appearance.theme", "light"]);
    cli.ok(&a, &["sync"]);

    let listed = cli.ok(&a, &["history", "appearance.theme", "--json"]);
    let history = listed.last_json()["history"].clone();
    let shown: Vec<(Value, Value, Value)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["value"].clone(),
                v["origin"].clone(),
                v["device_name"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (json!("light"), json!("arrived"), json!(device_name(&b))),
            (json!("dark"), json!("here"), json!(device_name(&a))),
        ],
        "{listed}"
    );
    let human = cli.ok(&a, &["history", "appearance.theme"]);
    assert!(human.stdout.contains("\"light\""), "{human}");
    assert!(
        human
            .stdout
            .contains(&format!("arrived by {}", device_name(&b))),
        "{human}"
    );

    let restored = cli.ok(&a, &["restore", "appearance.theme", "--json"]);
    assert!(
        restored
            .json_lines()
            .iter()
            .any(|l| l["restored"] == "appearance.theme" && l["value"] == "dark"),
        "{restored}"
    );
    cli.ok(&b, &["sync"]);
    let got = cli.ok(&b, &["get", "appearance.theme", "--json"]);
    assert_eq!(got.last_json()["value"], json!("dark"), "{got}");

    let missing = cli.run(&a, &["restore", "appearance.theme", "--version", "999999"]);
    missing.expect_code(3);
    assert!(missing.stderr.contains("no version 999999"), "{missing}");

    // A secret's history never shows it; a restore still brings it back.
    cli.ok(&a, &["set", "integrations.github", "ghp_first_secret"]);
    cli.ok(&a, &["set", "integrations.github", "ghp_second_secret"]);
    let listed = cli.ok(&a, &["history", "integrations.github"]);
    assert!(!listed.stdout.contains("ghp_"), "{listed}");
    cli.ok(&a, &["restore", "integrations.github"]);
    let got = cli.ok(&a, &["get", "integrations.github", "--reveal", "--json"]);
    assert_eq!(got.last_json()["value"], json!("ghp_first_secret"), "{got}");
}

/// `logout` with edits that have not reached the server refuses (exit code 9) and says how
/// many and what to do; the edit survives the refusal and syncs; `--discard-pending` signs out
/// anyway.
#[test]
fn logout_with_unsynced_edits_refuses_unless_told_to_discard_them() {
    let Some((mut cloud, cli)) = start_or_skip() else {
        return;
    };
    let (a, b) = two_profiles(&cli, ["out-a", "out-b"], "logout@example.com");
    cloud.kill();
    let set = cli.ok(&a, &["set", "appearance.theme", "dark"]);
    assert!(set.stdout.contains("saved locally"), "{set}");

    let refused = cli.run(&a, &["logout"]);
    refused.expect_code(9);
    assert!(
        refused.stderr.contains("1 edit(s)") && refused.stderr.contains("--discard-pending"),
        "{refused}"
    );
    assert!(refresh_token_of(&a).is_some(), "still signed in");

    cloud.restart();
    cli.ok(&a, &["sync"]);
    cli.ok(&b, &["sync"]);
    let got = cli.ok(&b, &["get", "appearance.theme", "--json"]);
    assert_eq!(
        got.last_json()["value"],
        json!("dark"),
        "the edit was kept: {got}"
    );
    cli.ok(&a, &["logout"]);

    // With an unsynced edit and the flag, the sign-out goes ahead.
    cloud.kill();
    cli.ok(&b, &["set", "appearance.theme", "light"]);
    cli.ok(&b, &["logout", "--discard-pending"]);
    assert_eq!(refresh_token_of(&b), None, "signed out");
}
