//! The `key_fingerprints` and `job_leases` tables: what several nodes on one database agree on.

use sqlx::{AnyConnection, Row};

/// Records `fingerprint` under `name` unless one is already there, and returns the one that is
/// (the first node's, when several start at once).
pub async fn settle_fingerprint(
    conn: &mut AnyConnection,
    name: &str,
    fingerprint: &str,
    now: i64,
) -> sqlx::Result<String> {
    sqlx::query(
        "INSERT INTO key_fingerprints (name, fingerprint, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(fingerprint)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT fingerprint FROM key_fingerprints WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)
}

/// Takes the lease on job `name` for `holder` until `expires_at`, if it is free (never taken, or
/// expired by `now`). True when this holder has it now. A single statement, so of several nodes
/// trying at once exactly one succeeds.
pub async fn take_lease(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
    now: i64,
    expires_at: i64,
) -> sqlx::Result<bool> {
    let taken = sqlx::query(
        "INSERT INTO job_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE job_leases.expires_at <= $4",
    )
    .bind(name)
    .bind(holder)
    .bind(expires_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(taken.rows_affected() == 1)
}
