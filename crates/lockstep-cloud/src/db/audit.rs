//! The `audit_log` table: the per-user security log.

use lockstep_protocol::audit::{AuditAction, AuditEntry};
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::clock::from_millis;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: String,
    pub user_id: Option<String>,
    pub action: String,
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub ip_address: String,
    pub payload: String,
    pub created_at: i64,
}

impl AuditRow {
    pub fn to_wire(&self) -> AuditEntry {
        AuditEntry {
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            user_id: self
                .user_id
                .as_deref()
                .and_then(|u| Uuid::parse_str(u).ok())
                .unwrap_or_default(),
            action: self.action.clone(),
            device_id: self.device_id.clone(),
            device_name: self.device_name.clone(),
            ip_address: self.ip_address.clone(),
            payload: serde_json::from_str(&self.payload).unwrap_or(serde_json::Value::Null),
            created_at: from_millis(self.created_at),
        }
    }
}

/// What to record; the payload must never hold a secret.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub user_id: Option<&'a str>,
    pub action: AuditAction,
    pub device_id: Option<&'a str>,
    pub device_name: Option<&'a str>,
    pub ip_address: &'a str,
    pub payload: serde_json::Value,
    pub now: i64,
}

pub async fn insert(conn: &mut AnyConnection, e: NewEntry<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, user_id, action, device_id, device_name, ip_address, payload, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    // Time-ordered ids keep entries written in the same millisecond in order.
    .bind(Uuid::now_v7().to_string())
    .bind(e.user_id)
    .bind(e.action.as_str())
    .bind(e.device_id)
    .bind(e.device_name)
    .bind(e.ip_address)
    .bind(e.payload.to_string())
    .bind(e.now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The user's newest entries, newest first.
pub async fn list(
    conn: &mut AnyConnection,
    user_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as(
        "SELECT id, user_id, action, device_id, device_name, ip_address, payload, created_at \
         FROM audit_log WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT $2",
    )
    .bind(user_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}
