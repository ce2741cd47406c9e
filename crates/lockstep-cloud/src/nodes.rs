//! Several nodes on one database: at start each node checks that its keys are the ones the
//! database was initialised with, and a job that one node at a time should run (the hourly
//! prune) runs only on the node that takes its lease.

use std::time::Duration;

use anyhow::bail;

use crate::{
    db::{Db, nodes},
    error::ApiResult,
    keys::ServerKeys,
    state::AppState,
};

/// Refuses a node whose JWT secret or data keys differ from the ones recorded by the first node
/// on this database. Each key's one-way fingerprint is recorded the first time a node uses it
/// (so a data key added for rotation is simply recorded); a key of the same name with another
/// fingerprint is an error that says which key and what to do. Nothing secret is printed.
pub async fn check_keys(db: &Db, keys: &ServerKeys, now: i64) -> anyhow::Result<()> {
    let mut conn = db.pool.acquire().await?;
    for (name, ours) in keys.fingerprints()? {
        let recorded = nodes::settle_fingerprint(&mut conn, &name, &ours, now).await?;
        if recorded == ours {
            continue;
        }
        match name.strip_prefix("data:") {
            None => bail!(
                "this node's JWT secret is not the one this database was initialised with: every \
                 node on one database needs the same LOCKSTEP_JWT_SECRET (the others would refuse \
                 the tokens this node issues)"
            ),
            Some(id) => bail!(
                "this node's data key {id} is not the one this database was initialised with: \
                 every node on one database needs the same LOCKSTEP_DATA_KEYS (the others could \
                 not open what this node seals, nor this node what they sealed)"
            ),
        }
    }
    Ok(())
}

/// Runs `job` if this node takes the lease on `name` for `hold` (from the state's clock);
/// `None` when another node holds it. The lease is not given back early: with `hold` a little
/// under a job's period, each period runs the job once across all nodes.
pub async fn run_leased<T>(
    state: &AppState,
    name: &str,
    hold: Duration,
    job: impl Future<Output = ApiResult<T>>,
) -> ApiResult<Option<T>> {
    let now = state.now_ms();
    let until = now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
    let mut conn = state.db.pool.acquire().await?;
    if !nodes::take_lease(&mut conn, name, &state.node_id, now, until).await? {
        return Ok(None);
    }
    drop(conn);
    job.await.map(Some)
}
