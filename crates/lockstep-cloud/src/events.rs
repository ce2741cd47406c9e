//! What the change feed records about accounts, devices and sessions (settings changes are
//! recorded by [`crate::sync`]). Each function appends inside the caller's transaction; the
//! caller publishes after commit.

use lockstep_protocol::{
    feed::{Change, FeedRecord, SessionRecord},
    timestamp::rfc3339_millis,
};
use sqlx::AnyConnection;

use crate::{
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

fn entry(record: FeedRecord, actor: &Actor) -> Entry {
    Entry {
        record,
        device_id: actor.device_id.clone(),
        device_name: actor.device_name.clone(),
        sensitive: false,
    }
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
        FeedRecord::User(Change {
            event_type: EventType::Update,
            new: Some(Box::new(after.to_wire())),
            old: Some(Box::new(before.to_wire())),
        }),
        actor,
    );
    feed::append(state, conn, &after.id, entry).await?;
    Ok(())
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
    let record = FeedRecord::Device(Change {
        event_type,
        new: after.map(DeviceRow::record),
        old: before.map(DeviceRow::record),
    });
    feed::append(state, conn, &user_id, entry(record, actor)).await?;
    Ok(())
}

fn session_record(session: &SessionRow) -> SessionRecord {
    SessionRecord {
        id: session.id.clone(),
        device_id: Some(session.device_id.clone()),
        aal: session.aal.clone(),
        user_id: Some(session.user_id.clone()),
        created_at: Some(rfc3339_millis(session.created_at)),
        reason: None,
    }
}

pub async fn session_started(
    state: &AppState,
    conn: &mut AnyConnection,
    session: &SessionRow,
    actor: &Actor,
) -> ApiResult<()> {
    let entry = entry(
        FeedRecord::Session(Change {
            event_type: EventType::Insert,
            new: Some(session_record(session)),
            old: None,
        }),
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
        let old = SessionRecord {
            reason: Some(reason.to_owned()),
            ..session_record(session)
        };
        let entry = entry(
            FeedRecord::Session(Change {
                event_type: EventType::Delete,
                new: None,
                old: Some(old),
            }),
            actor,
        );
        feed::append(state, &mut *conn, &session.user_id, entry).await?;
    }
    Ok(())
}
