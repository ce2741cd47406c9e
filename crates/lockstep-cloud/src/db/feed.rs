//! The change feed tables: `feed_heads` (per-user sequence), `change_feed` (the log) and
//! `push_receipts` (answers to pushes, for idempotent retries).

use sqlx::AnyConnection;

use super::Backend;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedRow {
    pub seq: i64,
    pub payload: String,
    pub created_at: i64,
}

/// Creates the user's feed head if there is none yet.
async fn ensure_head(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO feed_heads (user_id, last_seq, pruned_through) VALUES ($1, 0, 0) \
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Hands out the user's next sequence number, creating the user's feed head on their first
/// entry, in one statement. In PostgreSQL the row lock taken here is held to commit, so one
/// user's entries commit in sequence order (a reader never sees n+1 before n).
pub async fn next_seq(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO feed_heads (user_id, last_seq, pruned_through) VALUES ($1, 1, 0) \
         ON CONFLICT (user_id) DO UPDATE SET last_seq = feed_heads.last_seq + 1 \
         RETURNING last_seq",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await
}

/// Serialises writers of one user's data until the transaction ends: PostgreSQL locks the
/// user's feed head row (SQLite runs one transaction at a time anyway). Merges read, decide and
/// write under this lock, so two concurrent pushes can never both win against a stale read.
/// Take it once per transaction.
///
/// Returns the user's last sequence number as read under the lock (PostgreSQL), `None` where
/// nothing was read (SQLite).
pub async fn lock_user(
    conn: &mut AnyConnection,
    backend: Backend,
    user_id: &str,
) -> sqlx::Result<Option<i64>> {
    if backend != Backend::Postgres {
        return Ok(None);
    }
    let lock = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT last_seq FROM feed_heads WHERE user_id = $1 FOR UPDATE",
        )
        .bind(user_id)
    };
    if let Some(last_seq) = lock().fetch_optional(&mut *conn).await? {
        return Ok(Some(last_seq));
    }
    // The user's first write: make the row to lock (a concurrent first write makes the same).
    ensure_head(&mut *conn, user_id).await?;
    lock().fetch_one(conn).await.map(Some)
}

/// PostgreSQL only: `NOTIFY channel, payload`, sent when the transaction commits.
pub async fn notify(conn: &mut AnyConnection, channel: &str, payload: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT COUNT(*) FROM (SELECT pg_notify($1, $2)) AS sent")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert(
    conn: &mut AnyConnection,
    user_id: &str,
    seq: i64,
    payload: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO change_feed (user_id, seq, payload, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(user_id)
    .bind(seq)
    .bind(payload)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// `(last_seq, pruned_through)`; `(0, 0)` for a user without entries yet.
pub async fn head(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<(i64, i64)> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT last_seq, pruned_through FROM feed_heads WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.unwrap_or((0, 0)))
}

/// Entries after `since`, oldest first, at most `limit`.
pub async fn after(
    conn: &mut AnyConnection,
    user_id: &str,
    since: i64,
    limit: i64,
) -> sqlx::Result<Vec<FeedRow>> {
    sqlx::query_as(
        "SELECT seq, payload, created_at FROM change_feed WHERE user_id = $1 AND seq > $2 \
         ORDER BY seq LIMIT $3",
    )
    .bind(user_id)
    .bind(since)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Drops entries and push receipts written before `cutoff`, remembering per user how far the
/// log was pruned.
pub async fn prune(conn: &mut AnyConnection, cutoff: i64) -> sqlx::Result<u64> {
    sqlx::query(
        "UPDATE feed_heads SET pruned_through = COALESCE((SELECT MAX(c.seq) FROM change_feed c \
         WHERE c.user_id = feed_heads.user_id AND c.created_at < $1), pruned_through)",
    )
    .bind(cutoff)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM push_receipts WHERE created_at < $1")
        .bind(cutoff)
        .execute(&mut *conn)
        .await?;
    let result = sqlx::query("DELETE FROM change_feed WHERE created_at < $1")
        .bind(cutoff)
        .execute(conn)
        .await?;
    Ok(result.rows_affected())
}

/// The stored answer and request fingerprint of an earlier push with this mutation id.
pub async fn receipt(
    conn: &mut AnyConnection,
    user_id: &str,
    mutation_id: &str,
) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as(
        "SELECT response, request_hash FROM push_receipts WHERE user_id = $1 AND mutation_id = $2",
    )
    .bind(user_id)
    .bind(mutation_id)
    .fetch_optional(conn)
    .await
}

pub async fn store_receipt(
    conn: &mut AnyConnection,
    user_id: &str,
    mutation_id: &str,
    request_hash: &str,
    response: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO push_receipts (user_id, mutation_id, response, created_at, request_hash) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(user_id)
    .bind(mutation_id)
    .bind(response)
    .bind(now)
    .bind(request_hash)
    .execute(conn)
    .await?;
    Ok(())
}
