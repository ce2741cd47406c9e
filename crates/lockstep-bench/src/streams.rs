//! Idle change streams by the thousand: opened all at once (a connect storm), then held open,
//! their bodies read and dropped, until the holder is dropped.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::figures::Quantiles;

/// Streams one source address opens (it has ~28k ports; well below that).
const STREAMS_PER_ADDRESS: usize = 4000;

/// What a connect storm measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Storm {
    pub streams: usize,
    /// From starting to connect until the answer's headers arrived, per opened stream.
    pub handshake: Quantiles,
    /// Streams that did not open, by answer (`closed`: no answer).
    pub refused: BTreeMap<String, usize>,
    /// The kernel's count of connections dropped because a listen queue was full, during the
    /// storm (whole machine; loopback only here).
    pub listen_overflows: u64,
    pub seconds: f64,
}

/// Open streams; dropping the holder closes them.
pub struct Holder {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ended: Arc<AtomicUsize>,
}

impl Holder {
    /// Streams that ended by themselves (the server closed them).
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::Relaxed)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Where to open streams and as whom.
pub struct Target<'a> {
    pub url: &'a str,
    pub anon_key: &'a str,
    /// Access tokens, used round robin.
    pub tokens: &'a [String],
}

/// Opens `count` change streams at once from source addresses `127.0.0.<first_address>` on,
/// and waits until each opened or failed.
pub async fn storm(
    target: &Target<'_>,
    count: usize,
    first_address: u8,
) -> Result<(Holder, Storm)> {
    if target.tokens.is_empty() {
        bail!("no tokens to open streams with");
    }
    let addresses = count.div_ceil(STREAMS_PER_ADDRESS).max(1);
    let clients = (0..addresses)
        .map(|i| {
            let last = u8::try_from(usize::from(first_address) + i)
                .map_err(|_| anyhow::anyhow!("too many source addresses"))?;
            crate::server::client_from(last)
        })
        .collect::<Result<Vec<_>>>()?;
    let url: Arc<str> = format!("{}/realtime/v1/sse", target.url).into();
    let anon_key: Arc<str> = target.anon_key.into();
    let tokens: Vec<Arc<str>> = target.tokens.iter().map(|t| t.as_str().into()).collect();
    let ended = Arc::new(AtomicUsize::new(0));
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let overflows_before = listen_overflows();
    let started = Instant::now();
    let tasks = (0..count)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let request = client
                .get(&*url)
                .header("apikey", &*anon_key)
                .bearer_auth(&*tokens[i % tokens.len()]);
            let report = report.clone();
            let ended = ended.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let reply = match request.send().await {
                    Ok(reply) if reply.status().is_success() => reply,
                    Ok(reply) => {
                        let _ = report.send(Err(reply.status().as_u16().to_string()));
                        return;
                    }
                    Err(_) => {
                        let _ = report.send(Err("closed".to_owned()));
                        return;
                    }
                };
                let _ = report.send(Ok(sent.elapsed()));
                let mut body = reply.bytes_stream();
                while let Some(Ok(_)) = body.next().await {}
                ended.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    drop(report);
    let mut handshakes = Vec::with_capacity(count);
    let mut refused = BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while handshakes.len() + refused.values().sum::<usize>() < count {
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Ok(took))) => handshakes.push(took),
            Ok(Some(Err(answer))) => *refused.entry(answer).or_default() += 1,
            Ok(None) => break,
            Err(_) => bail!("streams were still opening after 180 s"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let figures = Storm {
        streams: count,
        handshake: Quantiles::of(&mut handshakes),
        refused,
        listen_overflows: listen_overflows().saturating_sub(overflows_before),
        seconds,
    };
    Ok((Holder { tasks, ended }, figures))
}

/// `TcpExt: ListenOverflows` of `/proc/net/netstat` (0 where there is none).
fn listen_overflows() -> u64 {
    let Ok(netstat) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        return names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "ListenOverflows")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
    }
    0
}

/// `lockstep-bench hold`: opens streams on one node from this process and holds them until
/// standard input closes. A process may open at most 20,000 files here, so the three-node run
/// spreads its 50,000 streams over one holder process per node. Prints the storm's figures as
/// one JSON line once every stream opened or failed.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    anon_key: String,
    #[arg(long)]
    count: usize,
    /// The first source address's last byte (`127.0.0.<first_address>`).
    #[arg(long)]
    first_address: u8,
}

/// Runs `lockstep-bench hold`: tokens come on standard input, one per line, then an empty line.
pub async fn hold(args: &HoldArgs) -> Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tokens = Vec::new();
    while let Some(line) = stdin.next_line().await? {
        if line.is_empty() {
            break;
        }
        tokens.push(line);
    }
    let target = Target {
        url: &args.url,
        anon_key: &args.anon_key,
        tokens: &tokens,
    };
    let (holder, storm) = storm(&target, args.count, args.first_address).await?;
    println!("{}", serde_json::to_string(&storm)?);
    // Hold until the parent closes standard input.
    while stdin.next_line().await?.is_some() {}
    drop(holder);
    Ok(())
}
