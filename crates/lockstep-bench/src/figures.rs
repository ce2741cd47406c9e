//! What a run measured: per database, one record of figures; printed as one table (a column per
//! database) and written as JSON.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{server::Memory, streams::Storm};

/// Latency quantiles of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Quantiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Quantiles {
    pub fn of(samples: &mut [Duration]) -> Quantiles {
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1));
            samples
                .get(i)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        Quantiles {
            samples: samples.len(),
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Pushes from `writers` concurrent writers for a few seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushes {
    pub writers: usize,
    pub per_second: f64,
    pub latency: Quantiles,
    /// Answers by status (`0`: no answer).
    pub answers: BTreeMap<u16, usize>,
}

/// Idle streams held open at one level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleStreams {
    pub streams: usize,
    pub storm: Storm,
    /// Resident memory the open streams added, per stream.
    pub kib_per_stream: f64,
    /// A push on one device until another device's stream delivers it, meanwhile.
    pub propagation: Quantiles,
    /// Streams the server ended while they were held (there should be none).
    pub ended_early: usize,
}

/// Successful sign-ins from several clients at once, for a few seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignIns {
    pub clients: usize,
    pub per_second: f64,
    pub latency: Quantiles,
    pub answers: BTreeMap<u16, usize>,
    pub memory_after: Memory,
}

/// The server's CPU while streams sit idle (heartbeats only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatCpu {
    pub streams: usize,
    pub seconds: f64,
    pub heartbeat_seconds: u64,
    /// Percent of one core.
    pub cpu_percent: f64,
}

/// Resident memory over a long run with idle streams and steady writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Soak {
    pub streams: usize,
    pub seconds: u64,
    pub writes_per_second_asked: u64,
    pub writes_acknowledged: usize,
    /// Resident MiB, sampled every few seconds from the start.
    pub rss_mib: Vec<f64>,
}

/// Everything measured on one database (absent: not run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Figures {
    pub database: String,
    pub propagation_no_load: Option<Quantiles>,
    pub idle: Vec<IdleStreams>,
    pub heartbeat: Option<HeartbeatCpu>,
    pub soak: Option<Soak>,
    pub pushes: Vec<Pushes>,
    pub sign_ins: Option<SignIns>,
}

/// Three nodes on one PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nodes {
    pub nodes: usize,
    /// Each node's storm (all nodes' at once).
    pub storms: Vec<Storm>,
    pub streams_per_node: usize,
    pub kib_per_stream: Vec<f64>,
    /// Pushes through nodes 1 and 2, received by a stream on the last node.
    pub propagation: Quantiles,
    /// Pushes through nodes 1 and 2 while the streams are held.
    pub pushes: Vec<Pushes>,
}

fn quantiles_text(q: &Quantiles) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2}",
        q.p50_ms, q.p90_ms, q.p99_ms, q.max_ms
    )
}

fn storm_text(s: &Storm) -> String {
    let refused = if s.refused.is_empty() {
        String::new()
    } else {
        let answers: Vec<String> = s.refused.iter().map(|(k, n)| format!("{n}×{k}")).collect();
        format!(", refused {}", answers.join(" "))
    };
    format!(
        "{:.1} / {:.1}, {} overflows{refused}",
        s.handshake.p50_ms, s.handshake.p99_ms, s.listen_overflows
    )
}

fn pushes_text(p: &Pushes) -> String {
    let others: usize = p
        .answers
        .iter()
        .filter(|(status, _)| **status != 200)
        .map(|(_, n)| n)
        .sum();
    let others = if others == 0 {
        String::new()
    } else {
        format!(", {others} not 200")
    };
    format!(
        "{:.0} ({:.1} / {:.1}{others})",
        p.per_second, p.latency.p50_ms, p.latency.p99_ms
    )
}

fn level(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// The distinct values `of` finds in any run (stream levels, writer counts), in order.
fn distinct(runs: &[Figures], of: impl Fn(&Figures) -> Vec<usize>) -> Vec<usize> {
    let mut all: Vec<usize> = runs.iter().flat_map(of).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// One table: a row per figure, a column per database.
pub fn table(runs: &[Figures]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |label: String, cell: &dyn Fn(&Figures) -> Option<String>| {
        let cells: Vec<String> = runs
            .iter()
            .map(|f| cell(f).unwrap_or_else(|| "–".into()))
            .collect();
        if cells.iter().any(|c| c != "–") {
            rows.push((label, cells));
        }
    };
    let levels = distinct(runs, |f| f.idle.iter().map(|i| i.streams).collect());
    for &n in &levels {
        row(format!("KiB per idle stream, {}", level(n)), &|f| {
            let idle = f.idle.iter().find(|i| i.streams == n)?;
            Some(format!("{:.1}", idle.kib_per_stream))
        });
    }
    row(
        "propagation p50 / p90 / p99 / max ms, 0 idle streams".into(),
        &|f| f.propagation_no_load.as_ref().map(quantiles_text),
    );
    for &n in &levels {
        row(
            format!(
                "propagation p50 / p90 / p99 / max ms, {} idle streams",
                level(n)
            ),
            &|f| {
                let idle = f.idle.iter().find(|i| i.streams == n)?;
                Some(quantiles_text(&idle.propagation))
            },
        );
    }
    for &n in &levels {
        row(
            format!(
                "connect storm of {}: handshake p50 / p99 ms, listen overflows",
                level(n)
            ),
            &|f| {
                let idle = f.idle.iter().find(|i| i.streams == n)?;
                let ended = if idle.ended_early > 0 {
                    format!(", {} ended early", idle.ended_early)
                } else {
                    String::new()
                };
                Some(format!("{}{ended}", storm_text(&idle.storm)))
            },
        );
    }
    let writer_counts = distinct(runs, |f| f.pushes.iter().map(|p| p.writers).collect());
    for &w in &writer_counts {
        row(format!("pushes/s, {w} writers (p50 / p99 ms)"), &|f| {
            f.pushes.iter().find(|p| p.writers == w).map(pushes_text)
        });
    }
    row(
        "sign-ins/s (p50 / p99 ms), RSS after / peak MiB".into(),
        &|f| {
            f.sign_ins.as_ref().map(|s| {
                format!(
                    "{:.1} ({:.0} / {:.0}), {:.0} / {:.0}",
                    s.per_second,
                    s.latency.p50_ms,
                    s.latency.p99_ms,
                    s.memory_after.rss_mib,
                    s.memory_after.peak_mib
                )
            })
        },
    );
    row("heartbeat CPU, % of a core".into(), &|f| {
        f.heartbeat.as_ref().map(|h| {
            format!(
                "{:.2} ({} streams, every {} s, over {:.0} s)",
                h.cpu_percent,
                level(h.streams),
                h.heartbeat_seconds,
                h.seconds
            )
        })
    });
    row("soak: RSS MiB first → last (max)".into(), &|f| {
        f.soak.as_ref().map(|s| {
            let first = s.rss_mib.first().copied().unwrap_or(f64::NAN);
            let last = s.rss_mib.last().copied().unwrap_or(f64::NAN);
            let max = s.rss_mib.iter().copied().fold(f64::NAN, f64::max);
            format!(
                "{first:.1} → {last:.1} ({max:.1}); {} s, {} streams, {} writes/s asked, {} acknowledged",
                s.seconds,
                level(s.streams),
                s.writes_per_second_asked,
                s.writes_acknowledged
            )
        })
    });

    let mut out = String::from("| figure |");
    for f in runs {
        out.push_str(&format!(" {} |", f.database));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(runs.len()));
    out.push('\n');
    for (label, cells) in rows {
        out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    out
}

/// The three-node run as a table.
pub fn nodes_table(n: &Nodes) -> String {
    let mut out = format!(
        "| figure (PostgreSQL, {} nodes, {} streams each) | value |\n|---|---|\n",
        n.nodes,
        level(n.streams_per_node)
    );
    for (i, (storm, kib)) in n.storms.iter().zip(&n.kib_per_stream).enumerate() {
        out.push_str(&format!(
            "| node {}: connect storm handshake p50 / p99 ms; KiB per stream | {:.1} / {:.1}; {kib:.1} |\n",
            i + 1,
            storm.handshake.p50_ms,
            storm.handshake.p99_ms,
        ));
    }
    // The kernel counts overflows for the whole machine, and the nodes' storms run at once.
    let overflows = n
        .storms
        .iter()
        .map(|s| s.listen_overflows)
        .max()
        .unwrap_or(0);
    let refused: usize = n.storms.iter().flat_map(|s| s.refused.values()).sum();
    out.push_str(&format!(
        "| listen overflows during the storms; streams refused | {overflows}; {refused} |\n"
    ));
    out.push_str(&format!(
        "| propagation p50 / p90 / p99 / max ms (writes via nodes 1–2, stream on node {}) | {} |\n",
        n.nodes,
        quantiles_text(&n.propagation)
    ));
    for p in &n.pushes {
        out.push_str(&format!(
            "| pushes/s via nodes 1–2, {} writers (p50 / p99 ms) | {} |\n",
            p.writers,
            pushes_text(p)
        ));
    }
    out
}
