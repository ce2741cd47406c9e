//! The `one_time_tokens` table: emailed confirmation, email-change and recovery tokens. Only
//! HMACs of the link token and of the 6-digit code are stored.

use sqlx::AnyConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OneTimeTokenRow {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    pub token_hash: String,
    pub code_hash: String,
    /// The address the token was sent to (the new address for an email change).
    pub email: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

const COLUMNS: &str =
    "id, user_id, kind, token_hash, code_hash, email, created_at, expires_at, used_at";

pub async fn insert(conn: &mut AnyConnection, t: &OneTimeTokenRow) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO one_time_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(&t.id)
    .bind(&t.user_id)
    .bind(&t.kind)
    .bind(&t.token_hash)
    .bind(&t.code_hash)
    .bind(&t.email)
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(t.used_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn by_token_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> sqlx::Result<Option<OneTimeTokenRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM one_time_tokens WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

pub async fn by_code(
    conn: &mut AnyConnection,
    user_id: &str,
    kind: &str,
    code_hash: &str,
) -> sqlx::Result<Option<OneTimeTokenRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM one_time_tokens WHERE user_id = $1 AND kind = $2 AND code_hash = $3 \
         ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(user_id)
    .bind(kind)
    .bind(code_hash)
    .fetch_optional(conn)
    .await
}

/// Marks the token used; false if it already was (single use, safe under concurrency).
pub async fn consume(conn: &mut AnyConnection, id: &str, now: i64) -> sqlx::Result<bool> {
    let result =
        sqlx::query("UPDATE one_time_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(conn)
            .await?;
    Ok(result.rows_affected() == 1)
}

/// Retires every unused token of this kind for the user (a new one replaces them).
pub async fn retire(
    conn: &mut AnyConnection,
    user_id: &str,
    kind: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE one_time_tokens SET used_at = $1 WHERE user_id = $2 AND kind = $3 AND used_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .bind(kind)
    .execute(conn)
    .await?;
    Ok(())
}
