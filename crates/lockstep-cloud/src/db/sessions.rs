//! The `sessions` table. Refresh tokens are not stored: each is an HMAC over (session, counter)
//! keyed by the server, so the table holds only the counter and a per-session salt.

use sqlx::AnyConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub device_id: String,
    pub aal: String,
    /// JSON array of `{method, timestamp}`, newest first.
    pub amr: String,
    pub refresh_salt: Vec<u8>,
    pub refresh_counter: i64,
    pub refreshed_at: i64,
    pub created_at: i64,
    pub ip_address: String,
    pub user_agent: String,
    /// The factor whose verification raised the session to aal2.
    pub factor_id: Option<String>,
    /// When this session last proved a second factor (for steps that need a recent proof).
    pub mfa_verified_at: Option<i64>,
}

const COLUMNS: &str = "id, user_id, device_id, aal, amr, refresh_salt, refresh_counter, \
    refreshed_at, created_at, ip_address, user_agent, factor_id, mfa_verified_at";

pub async fn insert(conn: &mut AnyConnection, s: &SessionRow) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO sessions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(&s.id)
    .bind(&s.user_id)
    .bind(&s.device_id)
    .bind(&s.aal)
    .bind(&s.amr)
    .bind(&s.refresh_salt)
    .bind(s.refresh_counter)
    .bind(s.refreshed_at)
    .bind(s.created_at)
    .bind(&s.ip_address)
    .bind(&s.user_agent)
    .bind(&s.factor_id)
    .bind(s.mfa_verified_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut AnyConnection, id: &str) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM sessions WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// What the session check of a request needs: the session, its device's name and whether the
/// user has a verified factor, in one statement.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionCheck {
    pub user_id: String,
    pub device_id: String,
    pub aal: String,
    pub mfa_verified_at: Option<i64>,
    pub device_name: Option<String>,
    pub verified_factors: i64,
}

pub async fn check(conn: &mut AnyConnection, id: &str) -> sqlx::Result<Option<SessionCheck>> {
    sqlx::query_as(
        "SELECT s.user_id, s.device_id, s.aal, s.mfa_verified_at, d.name AS device_name, \
         (SELECT COUNT(*) FROM mfa_factors f WHERE f.user_id = s.user_id \
         AND f.status = 'verified') AS verified_factors \
         FROM sessions s LEFT JOIN devices d ON d.user_id = s.user_id AND d.id = s.device_id \
         WHERE s.id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn list(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<Vec<SessionRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sessions WHERE user_id = $1 ORDER BY created_at DESC"
    ))
    .bind(user_id)
    .fetch_all(conn)
    .await
}

/// Moves the refresh counter from `expected` to `expected + 1`; false if another request
/// rotated it first.
pub async fn rotate(
    conn: &mut AnyConnection,
    id: &str,
    expected: i64,
    now: i64,
) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "UPDATE sessions SET refresh_counter = refresh_counter + 1, refreshed_at = $1 \
         WHERE id = $2 AND refresh_counter = $3",
    )
    .bind(now)
    .bind(id)
    .bind(expected)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn delete(conn: &mut AnyConnection, id: &str) -> sqlx::Result<bool> {
    let result = sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Deletes every session of the user, except `keep` if given; returns how many went.
pub async fn delete_all_for_user(
    conn: &mut AnyConnection,
    user_id: &str,
    keep: Option<&str>,
) -> sqlx::Result<u64> {
    let result = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
        .bind(user_id)
        .bind(keep.unwrap_or(""))
        .execute(conn)
        .await?;
    Ok(result.rows_affected())
}

/// Raises the session to aal2 after a second-factor proof, in place (same id), and rotates its
/// refresh token (the answer carries a new one).
pub async fn raise_to_aal2(
    conn: &mut AnyConnection,
    id: &str,
    amr: &str,
    factor_id: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sessions SET aal = 'aal2', amr = $1, factor_id = $2, mfa_verified_at = $3, \
         refresh_counter = refresh_counter + 1, refreshed_at = $3 WHERE id = $4",
    )
    .bind(amr)
    .bind(factor_id)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sessions raised by a factor that is going away drop back to aal1.
pub async fn drop_factor(conn: &mut AnyConnection, factor_id: &str) -> sqlx::Result<u64> {
    let result = sqlx::query(
        "UPDATE sessions SET aal = 'aal1', factor_id = NULL, mfa_verified_at = NULL \
         WHERE factor_id = $1",
    )
    .bind(factor_id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Every session of the user drops to aal1 (the user no longer has a second factor).
pub async fn drop_all_to_aal1(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<u64> {
    let result = sqlx::query(
        "UPDATE sessions SET aal = 'aal1', factor_id = NULL, mfa_verified_at = NULL \
         WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}
