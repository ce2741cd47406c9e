//! The change feed's records, typed per table: what `/realtime/v1/sse` and `rpc/changes` carry
//! in a [`ChangeEvent`]'s `table`, `eventType`, `new` and `old` (Supabase Realtime's
//! `postgres_changes` shape). The server builds a [`FeedRecord`] and writes it with
//! [`FeedRecord::to_wire`]; a client reads one back with [`FeedRecord::from_event`], so a table,
//! an event type or a field renamed on one side is renamed on the other.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use crate::devices::DeviceRecord;
use crate::{
    audit::AuditAction,
    auth::User,
    sync::{ChangeEvent, SettingRow},
};

codes! {
    /// The tables the feed reports changes of.
    pub enum FeedTable {
        UserSettings = "user_settings",
        Users = "users",
        Devices = "devices",
        Sessions = "sessions",
        MfaFactors = "mfa_factors",
        MfaEvents = "mfa_events",
    }
}

codes! {
    /// The kind of change, as in `postgres_changes`.
    pub enum EventType {
        Insert = "INSERT",
        Update = "UPDATE",
        Delete = "DELETE",
    }
}

/// One change of a row of type `T`: the row after (`None` when it went away) and before (`None`
/// for an insert, or when not known).
#[derive(Debug, Clone, PartialEq)]
pub struct Change<T> {
    pub event_type: EventType,
    pub new: Option<T>,
    pub old: Option<T>,
}

/// A `user_settings` row on the feed: the synced row and its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingRecord {
    #[serde(flatten)]
    pub row: SettingRow,
    pub user_id: String,
}

/// A `sessions` row on the feed: a session started, stepped up (`aal`) or ended (`reason`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    /// The device the session belongs to.
    pub device_id: Option<String>,
    /// `aal1` or `aal2`.
    pub aal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Why it ended (`logout`, `device_revoked`, …), on the `old` row of a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The state of a TOTP factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactorStatus {
    Unverified,
    Verified,
}

/// An `mfa_factors` row on the feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorRecord {
    pub id: String,
    pub friendly_name: Option<String>,
    pub factor_type: String,
    pub status: FactorStatus,
}

/// An `mfa_events` row on the feed: what happened, with the audit entry's details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MfaEventRecord {
    pub action: AuditAction,
    #[serde(flatten)]
    pub details: serde_json::Map<String, Value>,
}

/// A feed entry's change, typed by its table.
#[derive(Debug, Clone)]
pub enum FeedRecord {
    Setting(Change<SettingRecord>),
    /// Boxed: a user record is large beside the others.
    User(Change<Box<User>>),
    Device(Change<DeviceRecord>),
    Session(Change<SessionRecord>),
    MfaFactor(Change<FactorRecord>),
    MfaEvent(Change<MfaEventRecord>),
}

/// The wire form of a record: table, event type, `new`, `old` (`null` for a missing row).
#[derive(Debug, Clone, PartialEq)]
pub struct WireRecord {
    pub table: FeedTable,
    pub event_type: EventType,
    pub new: Value,
    pub old: Value,
}

/// Why a feed entry could not be read as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    /// A table or event type this build does not know (a newer server's): skip it.
    Unknown { what: &'static str, name: String },
    /// A known table whose row does not read as its type.
    Unreadable { table: FeedTable, reason: String },
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedError::Unknown { what, name } => write!(f, "unknown {what} `{name}`"),
            FeedError::Unreadable { table, reason } => {
                write!(f, "unreadable {table} row: {reason}")
            }
        }
    }
}

impl std::error::Error for FeedError {}

fn to_value<T: Serialize>(row: &Option<T>) -> Value {
    row.as_ref()
        .and_then(|row| serde_json::to_value(row).ok())
        .unwrap_or(Value::Null)
}

fn read<T: DeserializeOwned>(table: FeedTable, value: &Value) -> Result<Option<T>, FeedError> {
    if value.is_null() {
        return Ok(None);
    }
    serde_json::from_value(value.clone())
        .map(Some)
        .map_err(|e| FeedError::Unreadable {
            table,
            reason: e.to_string(),
        })
}

impl<T: Serialize> Change<T> {
    fn wire(&self, table: FeedTable) -> WireRecord {
        WireRecord {
            table,
            event_type: self.event_type,
            new: to_value(&self.new),
            old: to_value(&self.old),
        }
    }
}

impl<T: DeserializeOwned> Change<T> {
    fn read(
        table: FeedTable,
        event_type: EventType,
        new: &Value,
        old: &Value,
    ) -> Result<Self, FeedError> {
        Ok(Change {
            event_type,
            new: read(table, new)?,
            old: read(table, old)?,
        })
    }
}

impl FeedRecord {
    /// The table this record belongs to.
    pub fn table(&self) -> FeedTable {
        match self {
            FeedRecord::Setting(_) => FeedTable::UserSettings,
            FeedRecord::User(_) => FeedTable::Users,
            FeedRecord::Device(_) => FeedTable::Devices,
            FeedRecord::Session(_) => FeedTable::Sessions,
            FeedRecord::MfaFactor(_) => FeedTable::MfaFactors,
            FeedRecord::MfaEvent(_) => FeedTable::MfaEvents,
        }
    }

    /// The record as the feed carries it.
    pub fn to_wire(&self) -> WireRecord {
        let table = self.table();
        match self {
            FeedRecord::Setting(c) => c.wire(table),
            FeedRecord::User(c) => c.wire(table),
            FeedRecord::Device(c) => c.wire(table),
            FeedRecord::Session(c) => c.wire(table),
            FeedRecord::MfaFactor(c) => c.wire(table),
            FeedRecord::MfaEvent(c) => c.wire(table),
        }
    }

    /// Reads a feed entry's record.
    pub fn from_event(event: &ChangeEvent) -> Result<FeedRecord, FeedError> {
        let table = FeedTable::parse(&event.table).ok_or_else(|| FeedError::Unknown {
            what: "table",
            name: event.table.clone(),
        })?;
        let event_type = EventType::parse(&event.event_type).ok_or_else(|| FeedError::Unknown {
            what: "event type",
            name: event.event_type.clone(),
        })?;
        let (new, old) = (&event.new, &event.old);
        Ok(match table {
            FeedTable::UserSettings => {
                FeedRecord::Setting(Change::read(table, event_type, new, old)?)
            }
            FeedTable::Users => FeedRecord::User(Change::read(table, event_type, new, old)?),
            FeedTable::Devices => FeedRecord::Device(Change::read(table, event_type, new, old)?),
            FeedTable::Sessions => FeedRecord::Session(Change::read(table, event_type, new, old)?),
            FeedTable::MfaFactors => {
                FeedRecord::MfaFactor(Change::read(table, event_type, new, old)?)
            }
            FeedTable::MfaEvents => {
                FeedRecord::MfaEvent(Change::read(table, event_type, new, old)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;
    use crate::hlc::Hlc;

    fn event(wire: WireRecord) -> ChangeEvent {
        ChangeEvent {
            seq: 1,
            schema: "public".into(),
            table: wire.table.as_str().into(),
            event_type: wire.event_type.as_str().into(),
            commit_timestamp: "2026-12-04T00:00:00Z".into(),
            new: wire.new,
            old: wire.old,
            device_id: None,
            device_name: None,
        }
    }

    fn round_trip(record: FeedRecord) {
        let wire = record.to_wire();
        let read = FeedRecord::from_event(&event(wire.clone())).unwrap();
        assert_eq!(read.table(), record.table());
        assert_eq!(read.to_wire(), wire, "{record:?}");
    }

    #[test]
    fn every_kind_of_record_reads_back_as_written() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        round_trip(FeedRecord::Setting(Change {
            event_type: EventType::Insert,
            new: Some(SettingRecord {
                row: SettingRow {
                    key: "appearance.theme".into(),
                    value: json!("dark"),
                    hlc: Hlc {
                        millis: 1,
                        counter: 0,
                    },
                    device_id: "d1".into(),
                    device_name: Some("Desk".into()),
                    updated_at: at,
                    deleted: false,
                },
                user_id: "u1".into(),
            }),
            old: None,
        }));
        round_trip(FeedRecord::Device(Change {
            event_type: EventType::Delete,
            new: None,
            old: Some(DeviceRecord {
                id: "d1".into(),
                user_id: Uuid::nil(),
                name: "Desk".into(),
                platform: "linux".into(),
                app_version: "1".into(),
                created_at: at,
                last_seen_at: at,
            }),
        }));
        round_trip(FeedRecord::Session(Change {
            event_type: EventType::Update,
            new: Some(SessionRecord {
                id: "s1".into(),
                device_id: Some("d1".into()),
                aal: "aal2".into(),
                user_id: None,
                created_at: None,
                reason: None,
            }),
            old: None,
        }));
        round_trip(FeedRecord::MfaFactor(Change {
            event_type: EventType::Update,
            new: Some(FactorRecord {
                id: "f1".into(),
                friendly_name: None,
                factor_type: "totp".into(),
                status: FactorStatus::Verified,
            }),
            old: None,
        }));
        let mut details = serde_json::Map::new();
        details.insert("factor_id".into(), json!("f1"));
        round_trip(FeedRecord::MfaEvent(Change {
            event_type: EventType::Insert,
            new: Some(MfaEventRecord {
                action: AuditAction::MfaLockedOut,
                details,
            }),
            old: None,
        }));
    }

    #[test]
    fn an_unknown_table_or_a_bad_row_is_an_error_not_a_panic() {
        let mut unknown = event(WireRecord {
            table: FeedTable::Users,
            event_type: EventType::Update,
            new: Value::Null,
            old: Value::Null,
        });
        unknown.table = "identities".into();
        assert!(matches!(
            FeedRecord::from_event(&unknown),
            Err(FeedError::Unknown { .. })
        ));
        let bad = event(WireRecord {
            table: FeedTable::MfaFactors,
            event_type: EventType::Insert,
            new: json!({ "id": 3 }),
            old: Value::Null,
        });
        assert!(matches!(
            FeedRecord::from_event(&bad),
            Err(FeedError::Unreadable { .. })
        ));
    }
}
