//! The `devices` table: one row per (user, device id). Deleting a row revokes the device: its
//! sessions go with it (foreign key cascade).

use lockstep_protocol::devices::{Device, DeviceInfo, DeviceRecord};
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::clock::from_millis;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceRow {
    pub user_id: String,
    pub id: String,
    pub name: String,
    pub platform: String,
    pub app_version: String,
    pub created_at: i64,
    pub last_seen_at: i64,
}

impl DeviceRow {
    /// The row as the feed carries it.
    pub fn record(&self) -> DeviceRecord {
        DeviceRecord {
            id: self.id.clone(),
            user_id: Uuid::parse_str(&self.user_id).unwrap_or_default(),
            name: self.name.clone(),
            platform: self.platform.clone(),
            app_version: self.app_version.clone(),
            created_at: from_millis(self.created_at),
            last_seen_at: from_millis(self.last_seen_at),
        }
    }

    /// The row as `GET /rest/v1/devices` answers it to the device `current_device`.
    pub fn to_wire(&self, current_device: &str) -> Device {
        Device {
            record: self.record(),
            current: self.id == current_device,
        }
    }
}

const COLUMNS: &str = "user_id, id, name, platform, app_version, created_at, last_seen_at";

pub async fn get(
    conn: &mut AnyConnection,
    user_id: &str,
    id: &str,
) -> sqlx::Result<Option<DeviceRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM devices WHERE user_id = $1 AND id = $2"
    ))
    .bind(user_id)
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn list(conn: &mut AnyConnection, user_id: &str) -> sqlx::Result<Vec<DeviceRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM devices WHERE user_id = $1 ORDER BY last_seen_at DESC, id"
    ))
    .bind(user_id)
    .fetch_all(conn)
    .await
}

/// Registers the device or refreshes its description; true when it is new to the account.
pub async fn upsert(
    conn: &mut AnyConnection,
    user_id: &str,
    info: &DeviceInfo,
    now: i64,
) -> sqlx::Result<bool> {
    let existed = get(&mut *conn, user_id, &info.id).await?.is_some();
    sqlx::query(
        "INSERT INTO devices (user_id, id, name, platform, app_version, created_at, last_seen_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) \
         ON CONFLICT (user_id, id) DO UPDATE SET name = $3, platform = $4, app_version = $5, \
         last_seen_at = $6",
    )
    .bind(user_id)
    .bind(&info.id)
    .bind(&info.name)
    .bind(&info.platform)
    .bind(&info.app_version)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(!existed)
}

pub async fn rename(
    conn: &mut AnyConnection,
    user_id: &str,
    id: &str,
    name: &str,
) -> sqlx::Result<bool> {
    let result = sqlx::query("UPDATE devices SET name = $1 WHERE user_id = $2 AND id = $3")
        .bind(name)
        .bind(user_id)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Deletes the device and, through the cascade, its sessions.
pub async fn delete(conn: &mut AnyConnection, user_id: &str, id: &str) -> sqlx::Result<bool> {
    // Sessions are deleted explicitly too, so revocation never depends on the SQLite connection
    // having foreign keys switched on.
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let result = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND id = $2")
        .bind(user_id)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Updates last-seen, at most once a minute per device (a write per request would be waste).
pub async fn touch(
    conn: &mut AnyConnection,
    user_id: &str,
    id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE devices SET last_seen_at = $1 WHERE user_id = $2 AND id = $3 AND last_seen_at < $4",
    )
    .bind(now)
    .bind(user_id)
    .bind(id)
    .bind(now - 60_000)
    .execute(conn)
    .await?;
    Ok(())
}
