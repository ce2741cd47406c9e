//! What the change feed records about accounts, devices and sessions (settings changes are
//! recorded by [`crate::sync`]). Each function appends inside the caller's transaction; the
//! caller publishes after commit.

use serde_json::{Value, json};
use sqlx::AnyConnection;

use crate::{
    clock::from_millis,
    db::{devices::DeviceRow, sessions::SessionRow, users::UserRow},
    error::ApiResult,
    feed::{self, Entry, EventType},
    state::AppState,
};

/// The device that caused a change, when one did.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub device_id: Option<String>,
    pub device_name: Option<String>,
}

impl Actor {
    pub fn device(id: &str, name: Option<&str>) -> Actor {
        Actor {
            device_id: Some(id.to_owned()),
            device_name: name.map(str::to_owned),
        }
    }
}

fn entry(
    table: &'static str,
    event_type: EventType,
    new: Value,
    old: Value,
    actor: &Actor,
) -> Entry {
    Entry {
        table,
        event_type,
        new,
        old,
        device_id: actor.device_id.clone(),
        device_name: actor.device_name.clone(),
        sensitive: false,
    }
}

fn user_json(user: &UserRow) -> Value {
    serde_json::to_value(user.to_wire()).unwrap_or(Value::Null)
}

/// The user record changed (email confirmed or changed, metadata, password).
pub async fn user_updated(
    state: &AppState,
    conn: &mut AnyConnection,
    before: &UserRow,
    after: &UserRow,
    actor: &Actor,
) -> ApiResult<()> {
    let entry = entry(
        "users",
        EventType::Update,
        user_json(after),
        user_json(before),
        actor,
    );
    feed::append(state, conn, &after.id, entry).await?;
    Ok(())
}

fn device_json(device: &DeviceRow) -> Value {
    let mut value = serde_json::to_value(device.to_wire("")).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("current");
    }
    value
}

/// A device was registered, renamed or revoked.
pub async fn device_changed(
    state: &AppState,
    conn: &mut AnyConnection,
    event_type: EventType,
    before: Option<&DeviceRow>,
    after: Option<&DeviceRow>,
    actor: &Actor,
) -> ApiResult<()> {
    let Some(user_id) = after.or(before).map(|d| d.user_id.clone()) else {
        return Ok(());
    };
    let new = after.map(device_json).unwrap_or(Value::Null);
    let old = before.map(device_json).unwrap_or(Value::Null);
    feed::append(
        state,
        conn,
        &user_id,
        entry("devices", event_type, new, old, actor),
    )
    .await?;
    Ok(())
}

fn session_json(session: &SessionRow) -> Value {
    let at = |ms| {
        from_millis(ms)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    json!({
        "id": session.id,
        "user_id": session.user_id,
        "device_id": session.device_id,
        "aal": session.aal,
        "created_at": at(session.created_at),
    })
}

pub async fn session_started(
    state: &AppState,
    conn: &mut AnyConnection,
    session: &SessionRow,
    actor: &Actor,
) -> ApiResult<()> {
    let entry = entry(
        "sessions",
        EventType::Insert,
        session_json(session),
        Value::Null,
        actor,
    );
    feed::append(state, conn, &session.user_id, entry).await?;
    Ok(())
}

/// Sessions ended (sign-out, revocation, token reuse, password change). `reason` says why.
pub async fn sessions_ended(
    state: &AppState,
    conn: &mut AnyConnection,
    ended: &[SessionRow],
    reason: &str,
    actor: &Actor,
) -> ApiResult<()> {
    for session in ended {
        let mut old = session_json(session);
        old["reason"] = json!(reason);
        let entry = entry("sessions", EventType::Delete, Value::Null, old, actor);
        feed::append(state, &mut *conn, &session.user_id, entry).await?;
    }
    Ok(())
}
