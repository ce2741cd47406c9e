//! `lockstep-bench`: starts a real `lockstep-cloud` process on loopback, puts a bounded load on
//! it from this process, and prints what it measured (the server's resident memory from
//! `/proc`, other users' latencies, the answers by status, pushes per second). It asserts
//! nothing: figures on a noisy machine are for people to read and compare (`--server` points at
//! another build).
//!
//! Scenarios (`--scenario`): `sign-in`, a burst of failed sign-ins while another user signs in;
//! `pushes`, settings writes (`rpc/push_settings`) from 8, 32 and 128 concurrent writers, each
//! its own user, for a few seconds each; `propagation`, how long a push made on one device takes
//! to reach another device's change stream (`/realtime/v1/sse`).
//!
//! Run it through `cargo xtask bench`, which builds both in release mode.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Load figures for lockstep-cloud")]
struct Args {
    /// The lockstep-cloud binary to measure.
    #[arg(long)]
    server: PathBuf,
    /// Concurrent failed sign-ins per burst.
    #[arg(long, default_value_t = 300)]
    burst: usize,
    /// Bursts, one after another (memory that is not returned grows with them).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Which scenarios to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Concurrent writers of the `pushes` scenario, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 32, 128])]
    writers: Vec<usize>,
    /// How long each `pushes` run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Pushes timed by the `propagation` scenario, one after another.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// The server's database (e.g. the PostgreSQL of `cargo xtask postgres`); SQLite in a
    /// throwaway data dir by default.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    All,
    SignIn,
    Pushes,
    Propagation,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let database: Vec<String> = args
        .database_url
        .iter()
        .flat_map(|url| ["--database-url".to_owned(), url.clone()])
        .collect();
    let database: Vec<&str> = database.iter().map(String::as_str).collect();
    if matches!(args.scenario, Scenario::All | Scenario::Propagation) {
        let server = Server::start(&args.server, &database).await?;
        let result = propagation(&server, args.samples).await;
        drop(server);
        println!("{}", result?);
    }
    if matches!(args.scenario, Scenario::All | Scenario::Pushes) {
        // One address signs every writer up.
        let extra: Vec<&str> = ["--signups-per-ip=100000/3600"]
            .iter()
            .chain(&database)
            .copied()
            .collect();
        let server = Server::start(&args.server, &extra).await?;
        let result = push_throughput(&server, &args).await;
        drop(server);
        println!("{}", result?);
    }
    if !matches!(args.scenario, Scenario::All | Scenario::SignIn) {
        return Ok(());
    }
    println!(
        "sign-in burst: {} concurrent failed sign-ins from 127.0.0.1, {} rounds; a second user signs in from 127.0.0.2 and /health is polled meanwhile",
        args.burst, args.rounds
    );
    for (case, extra) in [
        ("default limits", &[][..]),
        (
            "limits raised (every attempt is hashed)",
            &[
                "--sign-in-failures-per-ip=1000000/300",
                "--sign-in-failures-per-account=1000000/300",
            ][..],
        ),
    ] {
        let extra: Vec<&str> = extra.iter().chain(&database).copied().collect();
        let server = Server::start(&args.server, &extra).await?;
        let result = sign_in_burst(&server, &args).await;
        drop(server);
        println!("\n## {case}\n{}", result?);
    }
    Ok(())
}

/// A `lockstep-cloud` process with its own data dir, stopped on drop.
struct Server {
    child: Child,
    url: String,
    anon_key: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(bin: &Path, extra: &[&str]) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bind = format!("127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["--bind", &bind, "--data-dir"])
            .arg(dir.path())
            .arg("--mailer-autoconfirm")
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let url = format!("http://{bind}");
        let started = Instant::now();
        let anon_key = loop {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{} did not answer within 60 s", bin.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(secrets) = std::fs::read_to_string(dir.path().join("secrets.json")) else {
                continue;
            };
            if reqwest::get(format!("{url}/auth/v1/health")).await.is_ok() {
                let secrets: Value = serde_json::from_str(&secrets)?;
                break secrets["anon_key"].as_str().unwrap_or_default().to_owned();
            }
        };
        Ok(Server {
            child,
            url,
            anon_key,
            _dir: dir,
        })
    }

    /// (resident now, peak resident) in MiB, from `/proc/PID/status`.
    fn memory(&self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the server's /proc status (Linux only)")?;
        let field = |name: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// Signs `email` up or in (`path`: [`SIGN_UP`] or [`SIGN_IN`]) and returns the session's
    /// access token. The server confirms addresses at signup (`--mailer-autoconfirm`).
    async fn session(&self, http: &reqwest::Client, path: &str, email: &str) -> Result<String> {
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

    async fn sign_in(
        &self,
        http: &reqwest::Client,
        email: &str,
        password: &str,
    ) -> Result<(u16, Duration)> {
        let started = Instant::now();
        let reply = http
            .post(format!("{}/auth/v1/token?grant_type=password", self.url))
            .header("apikey", &self.anon_key)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await?;
        let status = reply.status().as_u16();
        let _ = reply.bytes().await;
        Ok((status, started.elapsed()))
    }
}

const PASSWORD: &str = "Correct horse 42";
const SIGN_UP: &str = "/auth/v1/signup";
const SIGN_IN: &str = "/auth/v1/token?grant_type=password";

/// A push of one setting, stamped now with `counter` (a new stamp each time, so it writes).
fn push_body(mutation_id: String, key: &str, value: u64, counter: u64) -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json!({
        "mutation_id": mutation_id,
        "changes": [{
            "key": key,
            "value": value,
            "hlc": format!("{now_ms:015}-{counter:010}"),
            "deleted": false,
        }],
    })
}

async fn sign_in_burst(server: &Server, args: &Args) -> Result<String> {
    let attacker = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)))
        .pool_max_idle_per_host(0)
        .build()?;
    let user = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .pool_max_idle_per_host(0)
        .build()?;
    let signup = user
        .post(format!("{}/auth/v1/signup", server.url))
        .header("apikey", &server.anon_key)
        .json(&json!({ "email": "bob@example.com", "password": PASSWORD }))
        .send()
        .await?;
    if !signup.status().is_success() {
        bail!("signup answered {}", signup.status());
    }
    let (start_rss, _) = server.memory()?;
    let mut out = String::from(
        "| round | answers | peak RSS MiB | RSS after MiB | bob sign-in p50 / max ms (not signed in) | /health p50 / max ms |\n|---|---|---|---|---|---|\n",
    );
    for round in 1..=args.rounds {
        let burst = futures::future::join_all((0..args.burst).map(|i| {
            let attacker = &attacker;
            async move {
                server
                    .sign_in(
                        attacker,
                        &format!("guess{round}-{i}@example.com"),
                        "Wrong password 1",
                    )
                    .await
                    .map(|(status, _)| status)
                    .unwrap_or(0)
            }
        }));
        let bob = std::cell::RefCell::new(Vec::new());
        let bob_refused = std::cell::RefCell::new(BTreeMap::<u16, usize>::new());
        let health = std::cell::RefCell::new(Vec::new());
        let done = std::cell::Cell::new(false);
        // Probes while the burst runs, each on fresh connections, independently: the second
        // user's sign-ins and `/health`. Each probe's first request starts with the burst, and
        // a probe finishes the request it is in when the burst ends, so every round has at
        // least one sample of each, taken during the burst.
        let probe = async {
            let sign_ins = async {
                while !done.get() {
                    match server.sign_in(&user, "bob@example.com", PASSWORD).await {
                        Ok((200, took)) => bob.borrow_mut().push(took),
                        Ok((status, _)) => {
                            *bob_refused.borrow_mut().entry(status).or_default() += 1
                        }
                        Err(_) => *bob_refused.borrow_mut().entry(0).or_default() += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let polls = async {
                while !done.get() {
                    let started = Instant::now();
                    if let Ok(reply) = user.get(format!("{}/health", server.url)).send().await
                        && reply.status().is_success()
                    {
                        health.borrow_mut().push(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            futures::future::join(sign_ins, polls).await;
        };
        let burst = async {
            let statuses = burst.await;
            done.set(true);
            statuses
        };
        let (statuses, ()) = futures::future::join(burst, probe).await;
        let mut bob = std::mem::take(&mut *bob.borrow_mut());
        let bob_refused = std::mem::take(&mut *bob_refused.borrow_mut());
        let mut health = std::mem::take(&mut *health.borrow_mut());
        let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
        for status in statuses {
            *answers.entry(status).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss, peak) = server.memory()?;
        out.push_str(&format!(
            "| {round} | {} | {peak:.0} | {rss:.0} | {} | {} |\n",
            answers_text(&answers),
            with_refusals(p50_max(&mut bob), &bob_refused),
            p50_max(&mut health),
        ));
    }
    out.push_str(&format!(
        "\nRSS at start (after one signup): {start_rss:.0} MiB\n"
    ));
    Ok(out)
}

/// The second user's figures, and how many of their sign-ins were refused, by status.
fn with_refusals(figures: String, refused: &BTreeMap<u16, usize>) -> String {
    if refused.is_empty() {
        return figures;
    }
    format!("{figures} ({})", answers_text(refused))
}

/// Answers by status, `120×200 3×503`; `closed` counts requests that got no answer.
fn answers_text(answers: &BTreeMap<u16, usize>) -> String {
    answers
        .iter()
        .map(|(status, n)| {
            if *status == 0 {
                format!("{n}×closed")
            } else {
                format!("{n}×{status}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn p50_max(samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return "none answered".into();
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.0} / {:.0} (n={})",
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

/// Pushes per second and their latency with `writers` concurrent writers, each its own user
/// pushing one setting per request (a new stamp each time, so every push writes), for
/// `args.seconds` per run.
async fn push_throughput(server: &Server, args: &Args) -> Result<String> {
    let most = args.writers.iter().copied().max().unwrap_or(0);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(most)
        .build()?;
    // Every run's users are new, so a PostgreSQL database can be reused.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    // A few at a time: the server queues at most 8 password checks per client address.
    let tokens: Vec<String> = futures::stream::iter((0..most).map(|i| {
        let http = &http;
        async move {
            let email = format!("writer{i}-{run}@example.com");
            server.session(http, SIGN_UP, &email).await
        }
    }))
    .buffer_unordered(4)
    .try_collect()
    .await?;
    let mut out = format!(
        "## pushes: each writer its own user, one setting per push, {} s per run\n\n\
         | writers | pushes/s | p50 ms | p99 ms | max ms | answers |\n|---|---|---|---|---|---|\n",
        args.seconds
    );
    for &writers in &args.writers {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let results =
            futures::future::join_all(tokens[..writers].iter().enumerate().map(|(w, token)| {
                let http = &http;
                async move {
                    let mut samples = Vec::new();
                    let mut answers = BTreeMap::<u16, usize>::new();
                    let mut n: u64 = 0;
                    while Instant::now() < deadline {
                        n += 1;
                        let id = format!("bench-{run}-{writers}-{w}-{n}");
                        let body = push_body(id, "custom.bench", n, n);
                        let sent = Instant::now();
                        let status = match http
                            .post(format!("{}/rest/v1/rpc/push_settings", server.url))
                            .header("apikey", &server.anon_key)
                            .bearer_auth(token)
                            .json(&body)
                            .send()
                            .await
                        {
                            Ok(reply) => {
                                let status = reply.status().as_u16();
                                let _ = reply.bytes().await;
                                status
                            }
                            Err(_) => 0,
                        };
                        if status == 200 {
                            samples.push(sent.elapsed());
                        }
                        *answers.entry(status).or_default() += 1;
                    }
                    (samples, answers)
                }
            }))
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let mut samples = Vec::new();
        let mut answers = BTreeMap::<u16, usize>::new();
        for (s, a) in results {
            samples.extend(s);
            for (status, n) in a {
                *answers.entry(status).or_default() += n;
            }
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| ms(*d))
        };
        out.push_str(&format!(
            "| {writers} | {:.0} | {:.1} | {:.1} | {:.1} | {} |\n",
            samples.len() as f64 / elapsed,
            at(0.5),
            at(0.99),
            samples.last().map_or(f64::NAN, |d| ms(*d)),
            answers_text(&answers),
        ));
    }
    Ok(out)
}

/// The time from sending a push on device A until device B's change stream delivers it, for
/// `samples` pushes one after another (no other load: the floor of propagation).
async fn propagation(server: &Server, samples: usize) -> Result<String> {
    use eventsource_stream::Eventsource as _;

    let http = reqwest::Client::new();
    let email = format!("propagation-{}@example.com", std::process::id());
    let writer = server.session(&http, SIGN_UP, &email).await?;
    let reader = server.session(&http, SIGN_IN, &email).await?;
    let mut stream = http
        .get(format!("{}/realtime/v1/sse", server.url))
        .header("apikey", &server.anon_key)
        .bearer_auth(&reader)
        .send()
        .await?
        .error_for_status()?
        .bytes_stream()
        .eventsource();
    loop {
        let event: Option<Result<eventsource_stream::Event, _>> = stream.next().await;
        match event {
            Some(Ok(event)) if event.event == "ready" => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("the stream failed before it was ready: {e}"),
            None => bail!("the stream ended before it was ready"),
        }
    }
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = format!("propagation-{}-{i}", std::process::id());
        let body = push_body(id, "custom.propagation", i as u64, i as u64);
        let sent = Instant::now();
        http.post(format!("{}/rest/v1/rpc/push_settings", server.url))
            .header("apikey", &server.anon_key)
            .bearer_auth(&writer)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .context("no change reached the stream within 10 s")?;
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => bail!("the stream failed: {e}"),
                None => bail!("the stream ended"),
            };
            if event.event != "change" {
                continue;
            }
            let change: Value = serde_json::from_str(&event.data)?;
            if change["new"]["key"] == "custom.propagation" && change["new"]["value"] == json!(i) {
                took.push(sent.elapsed());
                break;
            }
        }
    }
    took.sort();
    let ms = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(format!(
        "## propagation: A pushes, B's stream receives (no other load), {samples} pushes\n\n\
         | idle streams | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|\n\
         | 0 | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(1.0),
    ))
}
