//! The `user_settings` table: the current version of each synced key, tombstones included.
//! Values arrive here already sealed when sensitive (see `crate::settings`).

use sqlx::AnyConnection;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSetting {
    pub user_id: String,
    pub key: String,
    pub value: String,
    pub hlc: String,
    pub device_id: String,
    pub device_name: Option<String>,
    pub updated_at: i64,
    pub deleted: i64,
}

const COLUMNS: &str = "user_id, key, value, hlc, device_id, device_name, updated_at, deleted";

pub async fn get(
    conn: &mut AnyConnection,
    user_id: &str,
    key: &str,
) -> sqlx::Result<Option<StoredSetting>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM user_settings WHERE user_id = $1 AND key = $2"
    ))
    .bind(user_id)
    .bind(key)
    .fetch_optional(conn)
    .await
}

pub async fn list(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<Vec<StoredSetting>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM user_settings WHERE user_id = $1 ORDER BY key"
    ))
    .bind(user_id)
    .fetch_all(conn)
    .await
}

/// Live (not deleted) keys of the user.
pub async fn count_live(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM user_settings WHERE user_id = $1 AND deleted = 0")
        .bind(user_id)
        .fetch_one(conn)
        .await
}

pub async fn upsert(conn: &mut AnyConnection, s: &StoredSetting) -> sqlx::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO user_settings ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (user_id, key) DO UPDATE SET value = $3, hlc = $4, device_id = $5, \
         device_name = $6, updated_at = $7, deleted = $8"
    ))
    .bind(&s.user_id)
    .bind(&s.key)
    .bind(&s.value)
    .bind(&s.hlc)
    .bind(&s.device_id)
    .bind(&s.device_name)
    .bind(s.updated_at)
    .bind(s.deleted)
    .execute(conn)
    .await?;
    Ok(())
}
