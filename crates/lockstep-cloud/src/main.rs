//! The `lockstep-cloud` binary: reads the configuration, opens the database and serves.

use std::sync::Arc;

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use lockstep_cloud::{AppState, Config, clock::SystemClock};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let config = Config::parse();
    let state = AppState::new(config, Arc::new(SystemClock)).await?;
    let listener = lockstep_cloud::serve::listen(state.config.bind)
        .with_context(|| format!("cannot listen on {}", state.config.bind))?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(prune_feed_hourly(state.clone()));
    // The banner is for a person at a terminal: a closed stdout must not stop the server.
    let mut banner = format!(
        "\n  Lockstep cloud is running\n  URL:       {url}\n  Anon key:  {}\n  Database:  {}\n  Data dir:  {}\n",
        state.keys.anon_key,
        state.db.backend.name(),
        state.config.data_dir.display()
    );
    if state.config.dev {
        banner.push_str(&format!(
            "  Mailbox:   {url}/dev/mailbox?apikey={}\n",
            state.keys.anon_key
        ));
    }
    let _ = writeln!(std::io::stdout(), "{banner}");
    lockstep_cloud::serve_until(listener, state, shutdown_signal())
        .await
        .context("server failed")
}

/// Ctrl-C, or SIGTERM (what service managers send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// Keeps the change feed within its retention: once an hour across all nodes on the database
/// (the node that takes the lease prunes; the others skip that hour).
async fn prune_feed_hourly(state: AppState) {
    let mut every_hour = tokio::time::interval(lockstep_cloud::feed::PRUNE_EVERY);
    loop {
        every_hour.tick().await;
        match lockstep_cloud::feed::prune_if_due(&state).await {
            Ok(Some(pruned)) => tracing::info!(pruned, "pruned the change feed"),
            Ok(None) => tracing::debug!("another node pruned the change feed this hour"),
            Err(error) => tracing::warn!(?error, "pruning the change feed failed"),
        }
    }
}
