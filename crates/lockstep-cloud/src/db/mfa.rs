//! MFA tables: `mfa_factors`, `mfa_challenges`, `mfa_failures`, `recovery_code_sets`,
//! `recovery_codes`. Secrets arrive sealed and codes hashed: nothing here is usable if dumped.

use sqlx::AnyConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FactorRow {
    pub id: String,
    pub user_id: String,
    pub friendly_name: Option<String>,
    pub factor_type: String,
    pub status: String,
    pub secret: String,
    pub last_step: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_challenged_at: Option<i64>,
}

impl FactorRow {
    pub fn is_verified(&self) -> bool {
        self.status == "verified"
    }
}

const FACTOR_COLUMNS: &str = "id, user_id, friendly_name, factor_type, status, secret, last_step, \
    created_at, updated_at, last_challenged_at";

pub async fn insert_factor(conn: &mut AnyConnection, f: &FactorRow) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO mfa_factors ({FACTOR_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(&f.id)
    .bind(&f.user_id)
    .bind(&f.friendly_name)
    .bind(&f.factor_type)
    .bind(&f.status)
    .bind(&f.secret)
    .bind(f.last_step)
    .bind(f.created_at)
    .bind(f.updated_at)
    .bind(f.last_challenged_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn factors(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<Vec<FactorRow>> {
    sqlx::query_as(&format!(
        "SELECT {FACTOR_COLUMNS} FROM mfa_factors WHERE user_id = $1 ORDER BY created_at, id"
    ))
    .bind(user_id)
    .fetch_all(conn)
    .await
}

pub async fn factor(
    conn: &mut AnyConnection,
    user_id: &str,
    id: &str,
) -> sqlx::Result<Option<FactorRow>> {
    sqlx::query_as(&format!(
        "SELECT {FACTOR_COLUMNS} FROM mfa_factors WHERE user_id = $1 AND id = $2"
    ))
    .bind(user_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn has_verified_factor(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM mfa_factors WHERE user_id = $1 AND status = 'verified'",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// Deletes the user's unverified factors (a new enrollment replaces them); returns their ids.
pub async fn delete_unverified(
    conn: &mut AnyConnection,
    user_id: &str,
) -> sqlx::Result<Vec<String>> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM mfa_factors WHERE user_id = $1 AND status = 'unverified'",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM mfa_factors WHERE user_id = $1 AND status = 'unverified'")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(ids)
}

pub async fn mark_verified(conn: &mut AnyConnection, id: &str, now: i64) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "UPDATE mfa_factors SET status = 'verified', updated_at = $1 WHERE id = $2 AND status <> 'verified'",
    )
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Records `step` as accepted if it is later than every step accepted before: one conditional
/// UPDATE, so two concurrent verifications of one code cannot both succeed.
pub async fn accept_step(conn: &mut AnyConnection, id: &str, step: i64) -> sqlx::Result<bool> {
    let result =
        sqlx::query("UPDATE mfa_factors SET last_step = $1 WHERE id = $2 AND last_step < $1")
            .bind(step)
            .bind(id)
            .execute(conn)
            .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn delete_factor(conn: &mut AnyConnection, id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM mfa_challenges WHERE factor_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM mfa_factors WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn touch_challenged(conn: &mut AnyConnection, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE mfa_factors SET last_challenged_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChallengeRow {
    pub id: String,
    pub factor_id: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub verified_at: Option<i64>,
    pub ip_address: String,
}

pub async fn insert_challenge(conn: &mut AnyConnection, c: &ChallengeRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO mfa_challenges (id, factor_id, user_id, created_at, expires_at, verified_at, \
         ip_address) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&c.id)
    .bind(&c.factor_id)
    .bind(&c.user_id)
    .bind(c.created_at)
    .bind(c.expires_at)
    .bind(c.verified_at)
    .bind(&c.ip_address)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn challenge(conn: &mut AnyConnection, id: &str) -> sqlx::Result<Option<ChallengeRow>> {
    sqlx::query_as(
        "SELECT id, factor_id, user_id, created_at, expires_at, verified_at, ip_address \
         FROM mfa_challenges WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Marks the challenge used; false if it already was.
pub async fn consume_challenge(conn: &mut AnyConnection, id: &str, now: i64) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "UPDATE mfa_challenges SET verified_at = $1 WHERE id = $2 AND verified_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Counts one attempt for `subject`; [`refund_failure`] takes it back by `attempt_id`.
pub async fn record_failure(
    conn: &mut AnyConnection,
    subject: &str,
    attempt_id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO mfa_failures (subject, failed_at, attempt_id) VALUES ($1, $2, $3)")
        .bind(subject)
        .bind(now)
        .bind(attempt_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn refund_failure(conn: &mut AnyConnection, attempt_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM mfa_failures WHERE attempt_id = $1")
        .bind(attempt_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Failures of `subject` since `since`: how many, and the oldest's time.
pub async fn failures_since(
    conn: &mut AnyConnection,
    subject: &str,
    since: i64,
) -> sqlx::Result<(i64, Option<i64>)> {
    sqlx::query_as(
        "SELECT COUNT(*), MIN(failed_at) FROM mfa_failures WHERE subject = $1 AND failed_at > $2",
    )
    .bind(subject)
    .bind(since)
    .fetch_one(conn)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecoverySetRow {
    pub id: String,
    pub user_id: String,
    pub friendly_name: Option<String>,
    pub created_at: i64,
}

pub async fn recovery_set(
    conn: &mut AnyConnection,
    user_id: &str,
) -> sqlx::Result<Option<RecoverySetRow>> {
    sqlx::query_as(
        "SELECT id, user_id, friendly_name, created_at FROM recovery_code_sets WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(conn)
    .await
}

/// Replaces the user's recovery codes with a new set of code hashes.
pub async fn replace_recovery_set(
    conn: &mut AnyConnection,
    set: &RecoverySetRow,
    code_hashes: &[String],
) -> sqlx::Result<()> {
    delete_recovery_set(&mut *conn, &set.user_id).await?;
    sqlx::query(
        "INSERT INTO recovery_code_sets (id, user_id, friendly_name, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&set.id)
    .bind(&set.user_id)
    .bind(&set.friendly_name)
    .bind(set.created_at)
    .execute(&mut *conn)
    .await?;
    for hash in code_hashes {
        sqlx::query(
            "INSERT INTO recovery_codes (id, set_id, user_id, code_hash, used_at) VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&set.id)
        .bind(&set.user_id)
        .bind(hash)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub async fn delete_recovery_set(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<bool> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let result = sqlx::query("DELETE FROM recovery_code_sets WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// `(total, remaining)` codes of the set.
pub async fn recovery_counts(conn: &mut AnyConnection, set_id: &str) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT COUNT(*), COUNT(*) - COUNT(used_at) FROM recovery_codes WHERE set_id = $1",
    )
    .bind(set_id)
    .fetch_one(conn)
    .await
}

/// Uses a code once; false if no unused code of the user has this hash.
pub async fn use_recovery_code(
    conn: &mut AnyConnection,
    user_id: &str,
    code_hash: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .bind(code_hash)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
