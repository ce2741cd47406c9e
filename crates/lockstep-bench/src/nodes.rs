//! `--nodes 3`: three `lockstep-cloud` nodes on one PostgreSQL, 50,000 streams spread over
//! them (one holder process per node: a process opens at most 20,000 files here), writes
//! through nodes 1 and 2 and a stream on the last node.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::{
    figures::Nodes,
    load,
    server::{self, Options, Server},
    streams::Storm,
};

/// Source addresses per holder (`127.0.0.<first>` on), 4,000 streams each.
const ADDRESSES_PER_NODE: usize = 8;

pub struct Plan {
    pub nodes: usize,
    pub streams: usize,
    pub samples: usize,
    pub seconds: u64,
}

pub async fn run(bin: &Path, database_url: &str, plan: &Plan) -> Result<Nodes> {
    if plan.nodes < 2 {
        bail!("--nodes needs at least 2 nodes");
    }
    let secrets = tempfile::tempdir()?;
    let options = Options {
        database_url: Some(database_url.to_owned()),
        shared_secrets: Some(secrets.path().to_owned()),
        ..Options::default()
    };
    let mut nodes = Vec::new();
    for _ in 0..plan.nodes {
        nodes.push(Server::start(bin, &options).await?);
    }
    let tokens = server::sign_up_users(&nodes[0], &server::unique("nodes"), 100).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<f64> = nodes
        .iter()
        .map(|n| n.memory().map(|m| m.rss_mib))
        .collect::<Result<_>>()?;
    let per_node = plan.streams.div_ceil(plan.nodes);
    let exe = std::env::current_exe()?;
    let mut holders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let first_address = 10 + i * ADDRESSES_PER_NODE;
        let mut child = tokio::process::Command::new(&exe)
            .args(["hold", "--url", &node.url, "--anon-key", &node.anon_key])
            .args(["--count", &per_node.to_string()])
            .args(["--first-address", &first_address.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a stream holder")?;
        let mut stdin = child.stdin.take().context("holder stdin")?;
        let mut lines = String::new();
        for token in &tokens {
            lines.push_str(token);
            lines.push('\n');
        }
        lines.push('\n');
        stdin.write_all(lines.as_bytes()).await?;
        let stdout = tokio::io::BufReader::new(child.stdout.take().context("holder stdout")?);
        holders.push((child, stdin, stdout.lines()));
    }
    let mut storms: Vec<Storm> = Vec::new();
    for (_, _, out) in &mut holders {
        let line = tokio::time::timeout(Duration::from_secs(300), out.next_line())
            .await
            .context("a holder did not open its streams within 300 s")??
            .context("a holder ended without figures")?;
        storms.push(serde_json::from_str(&line)?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kib_per_stream = nodes
        .iter()
        .zip(&before)
        .zip(&storms)
        .map(|((node, before), storm)| {
            let after = node.memory()?.rss_mib;
            Ok((after - before) * 1024.0 / storm.handshake.samples.max(1) as f64)
        })
        .collect::<Result<Vec<f64>>>()?;
    let last = &nodes[plan.nodes - 1];
    let writers: Vec<&Server> = nodes[..2].iter().collect();
    let propagation = load::propagation(&writers, last, plan.samples).await?;
    let pushes = load::pushes(&writers, &[32], plan.seconds).await?;
    for (mut child, stdin, _) in holders {
        drop(stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
    Ok(Nodes {
        nodes: plan.nodes,
        storms,
        streams_per_node: per_node,
        kib_per_stream,
        propagation,
        pushes,
    })
}
