//! What the engine reports, in the one serialisable form every front end uses: the CLI prints
//! it with `--json`, one object per line, and the desktop shell sends it to its window, whose
//! TypeScript types are generated from these (ts-rs, into `TS_RS_EXPORT_DIR`). A field renamed
//! here is renamed for both, and the window's type check fails where it read the old one.
//!
//! Settings are named by their schema label (`settings::label`) next to their key.

use lockstep_protocol::settings;
use serde::Serialize;
use serde_json::Value;
use ts_rs::TS;

use crate::engine::{Connection, EngineEvent, SyncStatus};
use crate::feed::SecurityEvent;

/// The status line: connection, pending edits, last sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct StatusReport {
    pub connection: Connection,
    /// The connection as people read it: `Live`, `Offline`, `Code needed`, … (the engine's
    /// [`Connection::label`]).
    pub label: String,
    pub live: bool,
    /// Keys with an edit the server has not acknowledged yet.
    pub pending: u32,
    /// Edits the server refused for good, kept aside.
    pub set_aside: u32,
    /// When a push and pull last succeeded (Unix milliseconds).
    #[ts(type = "number | null")]
    pub last_synced_ms: Option<i64>,
}

impl From<&SyncStatus> for StatusReport {
    fn from(status: &SyncStatus) -> StatusReport {
        StatusReport {
            connection: status.connection.clone(),
            label: status.connection.label().to_owned(),
            live: status.connection == Connection::Live,
            pending: u32::try_from(status.pending).unwrap_or(u32::MAX),
            set_aside: u32::try_from(status.set_aside).unwrap_or(u32::MAX),
            last_synced_ms: status.last_synced_ms,
        }
    }
}

/// An engine event: `{"event": "<name>", …}`; a security event adds its `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[serde(tag = "event", rename_all = "snake_case")]
#[ts(export)]
pub enum EventReport {
    /// Another device changed a setting (values of sensitive keys are left out).
    RemoteChange {
        key: String,
        label: String,
        old: Option<Value>,
        new: Option<Value>,
        device_name: Option<String>,
    },
    /// A local edit lost to a newer one made elsewhere: what was lost, and what stands now and
    /// which device wrote it.
    Superseded {
        key: String,
        label: String,
        lost: Value,
        value: Value,
        device_id: String,
        device_name: Option<String>,
    },
    /// The server refused an edit for good; it is kept aside and the rest syncs.
    SetAside {
        key: String,
        label: String,
        reason: String,
    },
    /// Something about the account's security changed.
    Security(SecurityEvent),
    Status(StatusReport),
    /// Something the user should know about local state (a repaired or rebuilt file).
    Problem {
        message: String,
    },
}

impl From<&EngineEvent> for EventReport {
    fn from(event: &EngineEvent) -> EventReport {
        match event {
            EngineEvent::RemoteChange {
                key,
                old,
                new,
                device_name,
                ..
            } => EventReport::RemoteChange {
                key: key.clone(),
                label: settings::label(key),
                old: old.clone(),
                new: new.clone(),
                device_name: device_name.clone(),
            },
            EngineEvent::Superseded { key, lost, winner } => EventReport::Superseded {
                key: key.clone(),
                label: settings::label(key),
                lost: lost.clone(),
                value: winner.value.clone(),
                device_id: winner.device_id.clone(),
                device_name: winner.device_name.clone(),
            },
            EngineEvent::SetAside { key, reason } => EventReport::SetAside {
                key: key.clone(),
                label: settings::label(key),
                reason: reason.clone(),
            },
            // The window shows what this device did too.
            EngineEvent::Security(security) | EngineEvent::OwnSecurity(security) => {
                EventReport::Security(security.clone())
            }
            EngineEvent::Status(status) => EventReport::Status(status.into()),
            EngineEvent::Problem(message) => EventReport::Problem {
                message: message.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use lockstep_protocol::sync::SettingRow;
    use serde_json::json;

    use super::*;

    fn report(event: &EngineEvent) -> Value {
        serde_json::to_value(EventReport::from(event)).expect("serialisable")
    }

    #[test]
    fn every_event_is_one_object_named_by_its_event_field() {
        let row = SettingRow {
            key: "appearance.theme".into(),
            value: json!("dark"),
            hlc: lockstep_protocol::hlc::Hlc::new(1_765_000_000_000, 0),
            device_id: "d-2".into(),
            device_name: Some("Laptop".into()),
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
            deleted: false,
        };
        let status = SyncStatus {
            connection: Connection::StepUpRequired,
            pending: 2,
            set_aside: 0,
            last_synced_ms: Some(1_765_000_000_000),
        };
        let cases = [
            (
                EngineEvent::RemoteChange {
                    key: "appearance.theme".into(),
                    old: Some(json!("system")),
                    new: Some(json!("dark")),
                    device_id: Some("d-2".into()),
                    device_name: Some("Laptop".into()),
                    arrival: crate::engine::Arrival::Live,
                },
                json!({"event": "remote_change", "key": "appearance.theme", "label": "Theme",
                       "old": "system", "new": "dark", "device_name": "Laptop"}),
            ),
            (
                EngineEvent::Superseded {
                    key: "appearance.theme".into(),
                    lost: json!("light"),
                    winner: row,
                },
                json!({"event": "superseded", "key": "appearance.theme", "label": "Theme",
                       "lost": "light", "value": "dark", "device_id": "d-2",
                       "device_name": "Laptop"}),
            ),
            (
                EngineEvent::SetAside {
                    key: "custom.x".into(),
                    reason: "too large".into(),
                },
                json!({"event": "set_aside", "key": "custom.x", "label": "custom.x",
                       "reason": "too large"}),
            ),
            (
                EngineEvent::Security(SecurityEvent::SessionEndedHere {
                    by: Some("Phone".into()),
                }),
                json!({"event": "security", "kind": "session_ended_here", "by": "Phone"}),
            ),
            (
                EngineEvent::Security(SecurityEvent::StepUpRequired),
                json!({"event": "security", "kind": "step_up_required"}),
            ),
            (
                EngineEvent::Status(status),
                json!({"event": "status", "connection": "step_up_required", "label": "Code needed",
                       "live": false, "pending": 2, "set_aside": 0,
                       "last_synced_ms": 1_765_000_000_000_i64}),
            ),
            (
                EngineEvent::Problem("the cache was rebuilt".into()),
                json!({"event": "problem", "message": "the cache was rebuilt"}),
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(report(&event), expected, "{event:?}");
        }
    }

    #[test]
    fn every_connection_state_has_a_snake_case_name_and_a_label() {
        let all = [
            Connection::Connecting,
            Connection::Live,
            Connection::Polling,
            Connection::Offline,
            Connection::Paused,
            Connection::StepUpRequired,
            Connection::SignedOut,
        ];
        let mut names = std::collections::BTreeSet::new();
        for connection in &all {
            let name = serde_json::to_value(connection).expect("serialisable");
            let name = name.as_str().expect("a string").to_owned();
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            assert!(!connection.label().is_empty());
            names.insert(name);
        }
        assert_eq!(names.len(), all.len(), "no two states share a name");
    }
}
