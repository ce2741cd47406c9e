//! The loads: pushes from many writers, propagation from one device to another's stream,
//! sign-ins, idle streams (with heartbeat CPU and a soak), and the failed sign-in burst.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::{
    figures::{HeartbeatCpu, IdleStreams, Pushes, Quantiles, SignIns, Soak},
    server::{self, Options, PASSWORD, SIGN_IN, SIGN_UP, Server},
    streams::{self, Target},
};

/// Users whose sessions hold the idle streams (a hundred streams each at 10k).
const IDLE_USERS: usize = 100;

/// A push of one setting, stamped now with `counter` (a new stamp each time, so it writes).
pub fn push_body(mutation_id: String, key: &str, value: u64, counter: u64) -> Value {
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

/// Pushes per second and their latency with each of `writer_counts` concurrent writers, each
/// its own user pushing one setting per request (a new stamp each time, so every push
/// writes), for `seconds` per run. Writer `w` goes through `servers[w % len]`.
pub async fn pushes(
    servers: &[&Server],
    writer_counts: &[usize],
    seconds: u64,
) -> Result<Vec<Pushes>> {
    let most = writer_counts.iter().copied().max().unwrap_or(0);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(most)
        .build()?;
    let run = server::unique("writer");
    let tokens = server::sign_up_users(servers[0], &run, most).await?;
    let mut figures = Vec::new();
    for &writers in writer_counts {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let results =
            futures::future::join_all(tokens[..writers].iter().enumerate().map(|(w, token)| {
                let http = &http;
                let server = servers[w % servers.len()];
                let run = &run;
                async move {
                    let mut samples = Vec::new();
                    let mut answers = BTreeMap::<u16, usize>::new();
                    let mut n: u64 = 0;
                    while Instant::now() < deadline {
                        n += 1;
                        let body =
                            push_body(format!("{run}-{writers}-{w}-{n}"), "custom.bench", n, n);
                        let sent = Instant::now();
                        let status = server.push(http, token, &body).await;
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
        figures.push(Pushes {
            writers,
            per_second: samples.len() as f64 / elapsed,
            latency: Quantiles::of(&mut samples),
            answers,
        });
    }
    Ok(figures)
}

/// The time from sending a push on device A (through `writers`, in turn) until device B's
/// change stream on `reader` delivers it, for `samples` pushes one after another.
pub async fn propagation(
    writers: &[&Server],
    reader: &Server,
    samples: usize,
) -> Result<Quantiles> {
    use eventsource_stream::Eventsource as _;

    let http = reqwest::Client::new();
    let email = format!("{}@example.com", server::unique("propagation"));
    let writer = writers[0].session(&http, SIGN_UP, &email).await?;
    let token = reader.session(&http, SIGN_IN, &email).await?;
    let mut stream = http
        .get(format!("{}/realtime/v1/sse", reader.url))
        .header("apikey", &reader.anon_key)
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .bytes_stream()
        .eventsource();
    loop {
        match stream.next().await {
            Some(Ok(event)) if event.event == "ready" => break,
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("the stream failed before it was ready: {e}"),
            None => bail!("the stream ended before it was ready"),
        }
    }
    let run = server::unique("propagation");
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let body = push_body(
            format!("{run}-{i}"),
            "custom.propagation",
            i as u64,
            i as u64,
        );
        let via = writers[i % writers.len()];
        let sent = Instant::now();
        let status = via.push(&http, &writer, &body).await;
        if status != 200 {
            bail!("a push answered {status}");
        }
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
    Ok(Quantiles::of(&mut took))
}

/// Successful sign-ins from `clients` clients at once (each its own user and source address),
/// for `seconds`; then the server's memory.
pub async fn sign_ins(server: &Server, clients: usize, seconds: u64) -> Result<SignIns> {
    let run = server::unique("sign-in");
    server::sign_up_users(server, &run, clients).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let results = futures::future::join_all((0..clients).map(|i| {
        let run = &run;
        async move {
            let http = server::client_from(u8::try_from(2 + i)?)?;
            let email = format!("{run}-{i}@example.com");
            let mut samples = Vec::new();
            let mut answers = BTreeMap::<u16, usize>::new();
            while Instant::now() < deadline {
                let status = match server.sign_in(&http, &email, PASSWORD).await {
                    Ok((200, took)) => {
                        samples.push(took);
                        200
                    }
                    Ok((status, _)) => status,
                    Err(_) => 0,
                };
                *answers.entry(status).or_default() += 1;
            }
            anyhow::Ok((samples, answers))
        }
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    let mut answers = BTreeMap::<u16, usize>::new();
    for result in results {
        let (s, a) = result?;
        samples.extend(s);
        for (status, n) in a {
            *answers.entry(status).or_default() += n;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(SignIns {
        clients,
        per_second: samples.len() as f64 / elapsed,
        latency: Quantiles::of(&mut samples),
        answers,
        memory_after: server.memory()?,
    })
}

/// What to measure while one level of idle streams is held.
pub struct IdlePlan {
    pub streams: usize,
    pub samples: usize,
    /// Measure the server's CPU over this long with the streams idle.
    pub heartbeat_window: Option<Duration>,
    /// Hold the streams this long with 100 writes a second, sampling memory.
    pub soak: Option<Duration>,
}

/// Starts a server, opens `plan.streams` idle streams at once, and measures memory,
/// propagation, and, as planned, heartbeat CPU and a soak.
pub async fn idle(
    bin: &Path,
    options: &Options,
    plan: &IdlePlan,
) -> Result<(IdleStreams, Option<HeartbeatCpu>, Option<Soak>)> {
    let server = Server::start(bin, options).await?;
    let tokens = server::sign_up_users(&server, &server::unique("idle"), IDLE_USERS).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.memory()?;
    let target = Target {
        url: &server.url,
        anon_key: &server.anon_key,
        tokens: &tokens,
    };
    let (holder, storm) = streams::storm(&target, plan.streams, 10).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.memory()?;
    let opened = storm.handshake.samples.max(1) as f64;
    let kib_per_stream = (after.rss_mib - before.rss_mib) * 1024.0 / opened;
    let propagation = propagation(&[&server], &server, plan.samples).await?;
    let heartbeat = match plan.heartbeat_window {
        Some(window) => {
            let cpu = server.cpu_seconds()?;
            tokio::time::sleep(window).await;
            let used = server.cpu_seconds()? - cpu;
            Some(HeartbeatCpu {
                streams: plan.streams,
                seconds: window.as_secs_f64(),
                heartbeat_seconds: heartbeat_seconds(options),
                cpu_percent: used / window.as_secs_f64() * 100.0,
            })
        }
        None => None,
    };
    let soak = match plan.soak {
        Some(length) => Some(soak(&server, plan.streams, length).await?),
        None => None,
    };
    let idle = IdleStreams {
        streams: plan.streams,
        storm,
        kib_per_stream,
        propagation,
        ended_early: holder.ended(),
    };
    drop(holder);
    Ok((idle, heartbeat, soak))
}

/// The server's heartbeat interval: its default unless the options set one.
fn heartbeat_seconds(options: &Options) -> u64 {
    options
        .extra
        .iter()
        .find_map(|a| a.strip_prefix("--sse-heartbeat-seconds="))
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

/// 100 writes a second for `length` while the streams are held, sampling resident memory
/// every 5 s.
async fn soak(server: &Server, streams: usize, length: Duration) -> Result<Soak> {
    const PER_SECOND: u64 = 100;
    let http = reqwest::Client::new();
    let run = server::unique("soak");
    let token = server
        .session(&http, SIGN_UP, &format!("{run}@example.com"))
        .await?;
    let mut rss_mib = vec![server.memory()?.rss_mib];
    let started = Instant::now();
    let mut next_sample = started + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
    let mut acknowledged = 0;
    let mut n: u64 = 0;
    while started.elapsed() < length {
        tick.tick().await;
        n += 1;
        let body = push_body(format!("{run}-{n}"), "custom.soak", n, n);
        if server.push(&http, &token, &body).await == 200 {
            acknowledged += 1;
        }
        if Instant::now() >= next_sample {
            rss_mib.push(server.memory()?.rss_mib);
            next_sample += Duration::from_secs(5);
        }
    }
    rss_mib.push(server.memory()?.rss_mib);
    Ok(Soak {
        streams,
        seconds: length.as_secs(),
        writes_per_second_asked: PER_SECOND,
        writes_acknowledged: acknowledged,
        rss_mib,
    })
}

/// Bursts of failed sign-ins from one address while another user signs in from another
/// (the memory and fairness figures of the abuse hardening), as its own table.
pub async fn sign_in_bursts(
    bin: &Path,
    options: &Options,
    burst: usize,
    rounds: usize,
) -> Result<String> {
    let mut out = format!(
        "sign-in burst: {burst} concurrent failed sign-ins from 127.0.0.1, {rounds} rounds; a second user signs in from 127.0.0.2 and /health is polled meanwhile\n"
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
        let mut options = options.clone();
        options.extra.extend(extra.iter().map(|s| (*s).to_owned()));
        let server = Server::start(bin, &options).await?;
        let result = sign_in_burst(&server, burst, rounds).await;
        drop(server);
        out.push_str(&format!("\n## {case}\n{}", result?));
    }
    Ok(out)
}

async fn sign_in_burst(server: &Server, burst: usize, rounds: usize) -> Result<String> {
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
    let start_rss = server.memory()?.rss_mib;
    let mut out = String::from(
        "| round | answers | peak RSS MiB | RSS after MiB | bob sign-in p50 / max ms (not signed in) | /health p50 / max ms |\n|---|---|---|---|---|---|\n",
    );
    for round in 1..=rounds {
        let burst = futures::future::join_all((0..burst).map(|i| {
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
        let server::Memory {
            rss_mib: rss,
            peak_mib: peak,
        } = server.memory()?;
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
