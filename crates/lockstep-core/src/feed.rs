//! What a change-feed entry means to this device: a pure function from a [`ChangeEvent`] to
//! a [`FeedEffect`], apart from all I/O, so the rules are unit-tested on their own.

use lockstep_protocol::{
    audit::AuditAction,
    auth::User,
    feed::{Change, EventType, FactorRecord, FactorStatus, FeedError, FeedRecord},
    settings,
    sync::{ChangeEvent, SettingRow},
};
use serde_json::Value;

/// A security-relevant change to the account, for notifications and the UI. Serialised as
/// `{"kind": "<snake_case name>", …fields}` (see [`crate::report`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[ts(export)]
pub enum SecurityEvent {
    /// The account's email address was confirmed (on any device or in a browser).
    EmailVerified { email: String },
    /// The account's email address changed.
    EmailChanged { email: String },
    /// Two-factor authentication was turned on (a first factor verified).
    MfaEnabled { device_name: Option<String> },
    /// An authenticator was removed.
    MfaDisabled { device_name: Option<String> },
    /// Another two-factor event: a lockout, a recovery code used, a secret handed over, ….
    Mfa {
        action: String,
        device_name: Option<String>,
    },
    /// Another device signed in for the first time (or described itself anew).
    DeviceSignedIn { device_id: String, name: String },
    /// Another device was revoked.
    DeviceRevoked {
        device_id: String,
        name: String,
        by: Option<String>,
    },
    /// This device was revoked, or its session ended: it must check whether it is still
    /// signed in. `by` names the device that did it.
    SessionEndedHere { by: Option<String> },
    /// This session must verify a code (two-factor authentication was turned on elsewhere).
    StepUpRequired,
    /// This device was signed out (by `by`, or here) and its secrets and cache were wiped.
    SignedOut { by: Option<String> },
}

/// What applying a feed entry does.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEffect {
    /// A settings row to merge into the cache.
    Setting(SettingRow),
    /// A security event to tell the user about.
    Security(SecurityEvent),
    /// This device was given a new name (by another device, or by itself): it takes the name
    /// locally (see [`crate::rename`]).
    RenamedHere { name: String },
    /// Nothing this device shows (e.g. its own sign-in, a session that stepped up).
    Nothing,
}

/// Interprets one feed entry for the device `my_device`.
pub fn interpret(change: &ChangeEvent, my_device: &str) -> FeedEffect {
    let by = change.device_name.clone();
    let by_me = change.device_id.as_deref() == Some(my_device);
    let security = FeedEffect::Security;
    let record = match FeedRecord::from_event(change) {
        Ok(record) => record,
        Err(error @ FeedError::Unknown { .. }) => {
            tracing::debug!(seq = change.seq, %error, "feed entry of a newer server skipped");
            return FeedEffect::Nothing;
        }
        Err(error) => {
            tracing::warn!(seq = change.seq, %error, "unreadable feed entry skipped");
            return FeedEffect::Nothing;
        }
    };
    match record {
        FeedRecord::Setting(change) => match change.new {
            Some(record) => FeedEffect::Setting(record.row),
            None => FeedEffect::Nothing,
        },
        FeedRecord::User(Change {
            new: Some(new),
            old,
            ..
        }) => {
            let confirmed = |user: &User| user.email_confirmed_at.is_some();
            if confirmed(&new) && !old.as_deref().is_some_and(confirmed) {
                security(SecurityEvent::EmailVerified { email: new.email })
            } else if old.is_some_and(|old| old.email != new.email) {
                security(SecurityEvent::EmailChanged { email: new.email })
            } else {
                FeedEffect::Nothing
            }
        }
        FeedRecord::Device(Change {
            event_type: EventType::Delete,
            old: Some(old),
            ..
        }) => {
            if old.id == my_device {
                security(SecurityEvent::SessionEndedHere { by })
            } else {
                security(SecurityEvent::DeviceRevoked {
                    device_id: old.id,
                    name: old.name,
                    by,
                })
            }
        }
        FeedRecord::Device(Change {
            event_type: EventType::Insert,
            new: Some(new),
            ..
        }) => {
            if new.id == my_device {
                FeedEffect::Nothing
            } else {
                security(SecurityEvent::DeviceSignedIn {
                    name: new.name,
                    device_id: new.id,
                })
            }
        }
        FeedRecord::Device(Change {
            event_type: EventType::Update,
            new: Some(new),
            old,
        }) if new.id == my_device => {
            // An update that leaves the name alone (a new app version) is nothing to take.
            if old.is_some_and(|old| old.name == new.name) {
                FeedEffect::Nothing
            } else {
                FeedEffect::RenamedHere { name: new.name }
            }
        }
        FeedRecord::Session(Change {
            event_type: EventType::Delete,
            old: Some(old),
            ..
        }) => {
            if old.device_id.as_deref() == Some(my_device) && !by_me {
                security(SecurityEvent::SessionEndedHere { by })
            } else {
                FeedEffect::Nothing
            }
        }
        FeedRecord::MfaFactor(change) => {
            let verified = |f: &Option<FactorRecord>| {
                f.as_ref()
                    .is_some_and(|f| f.status == FactorStatus::Verified)
            };
            if verified(&change.new) && !verified(&change.old) {
                security(SecurityEvent::MfaEnabled { device_name: by })
            } else if change.new.is_none() && verified(&change.old) {
                security(SecurityEvent::MfaDisabled { device_name: by })
            } else {
                // An enrollment started, replaced or abandoned: not worth a notification.
                FeedEffect::Nothing
            }
        }
        FeedRecord::MfaEvent(change) => match change.new.map(|event| event.action) {
            // Routine steps (enrolling, verifying a code) are not worth a notification.
            Some(AuditAction::MfaEnrolled | AuditAction::MfaVerified) | None => FeedEffect::Nothing,
            Some(action) => security(SecurityEvent::Mfa {
                action: action.as_str().to_owned(),
                device_name: by,
            }),
        },
        _ => FeedEffect::Nothing,
    }
}

/// A value as it may be shown in an event or a log: sensitive values (API keys) are masked.
pub fn shown_value(key: &str, value: &Value) -> Value {
    if settings::is_sensitive(key) && !value.is_null() {
        Value::String("••••••".into())
    } else {
        value.clone()
    }
}

/// A row as it may be shown in an event: see [`shown_value`].
pub fn shown_row(mut row: SettingRow) -> SettingRow {
    row.value = shown_value(&row.key, &row.value);
    row
}

#[cfg(test)]
mod tests {
    use lockstep_protocol::feed::{DeviceRecord, MfaEventRecord, SessionRecord};
    use serde_json::json;

    use super::*;

    /// The feed entry the server writes for `record`, made by device `by`.
    fn change(record: FeedRecord, by: Option<&str>) -> ChangeEvent {
        let wire = record.to_wire();
        ChangeEvent {
            seq: 1,
            schema: "public".into(),
            table: wire.table.as_str().into(),
            event_type: wire.event_type.as_str().into(),
            commit_timestamp: "2026-12-01T00:00:00Z".into(),
            new: wire.new,
            old: wire.old,
            device_id: by.map(str::to_owned),
            device_name: by.map(|d| format!("{d} name")),
        }
    }

    fn user(email: &str, confirmed: bool) -> User {
        serde_json::from_value(json!({
            "id": "00000000-0000-0000-0000-000000000001",
            "aud": "authenticated",
            "role": "authenticated",
            "email": email,
            "email_confirmed_at": confirmed.then_some("2026-12-01T00:00:00Z"),
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {},
            "created_at": "2026-12-01T00:00:00Z",
            "updated_at": "2026-12-01T00:00:00Z",
        }))
        .unwrap()
    }

    fn users(new: User, old: User) -> FeedRecord {
        FeedRecord::User(Change {
            event_type: EventType::Update,
            new: Some(Box::new(new)),
            old: Some(Box::new(old)),
        })
    }

    #[test]
    fn email_confirmation_is_a_security_event() {
        let c = change(
            users(user("a@example.com", true), user("a@example.com", false)),
            None,
        );
        assert_eq!(
            interpret(&c, "me"),
            FeedEffect::Security(SecurityEvent::EmailVerified {
                email: "a@example.com".into()
            })
        );
        let unchanged = change(
            users(user("a@example.com", true), user("a@example.com", true)),
            None,
        );
        assert_eq!(interpret(&unchanged, "me"), FeedEffect::Nothing);
        let moved = change(
            users(user("b@example.com", true), user("a@example.com", true)),
            None,
        );
        assert_eq!(
            interpret(&moved, "me"),
            FeedEffect::Security(SecurityEvent::EmailChanged {
                email: "b@example.com".into()
            })
        );
    }

    #[test]
    fn revocation_of_this_device_ends_the_session_here() {
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let c = change(
            FeedRecord::Device(Change {
                event_type: EventType::Delete,
                new: None,
                old: Some(DeviceRecord {
                    id: "me".into(),
                    user_id: uuid::Uuid::nil(),
                    name: "Laptop".into(),
                    platform: "linux".into(),
                    app_version: "1".into(),
                    created_at: at,
                    last_seen_at: at,
                }),
            }),
            Some("desk"),
        );
        assert_eq!(
            interpret(&c, "me"),
            FeedEffect::Security(SecurityEvent::SessionEndedHere {
                by: Some("desk name".into())
            })
        );
        assert_eq!(
            interpret(&c, "other"),
            FeedEffect::Security(SecurityEvent::DeviceRevoked {
                device_id: "me".into(),
                name: "Laptop".into(),
                by: Some("desk name".into())
            })
        );
    }

    #[test]
    fn a_rename_of_this_device_is_taken_here_and_others_are_not() {
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let device = |id: &str, name: &str| DeviceRecord {
            id: id.into(),
            user_id: uuid::Uuid::nil(),
            name: name.into(),
            platform: "linux".into(),
            app_version: "1".into(),
            created_at: at,
            last_seen_at: at,
        };
        let update = |id: &str, old: &str, new: &str| {
            change(
                FeedRecord::Device(Change {
                    event_type: EventType::Update,
                    new: Some(device(id, new)),
                    old: Some(device(id, old)),
                }),
                Some("desk"),
            )
        };
        assert_eq!(
            interpret(&update("me", "Laptop", "Den laptop"), "me"),
            FeedEffect::RenamedHere {
                name: "Den laptop".into()
            }
        );
        assert_eq!(
            interpret(&update("other", "Laptop", "Den laptop"), "me"),
            FeedEffect::Nothing
        );
        assert_eq!(
            interpret(&update("me", "Laptop", "Laptop"), "me"),
            FeedEffect::Nothing,
            "a new app version is not a rename"
        );
    }

    #[test]
    fn a_session_of_this_device_ended_by_this_device_is_not_alarming() {
        let ended = FeedRecord::Session(Change {
            event_type: EventType::Delete,
            new: None,
            old: Some(SessionRecord {
                id: "s1".into(),
                device_id: Some("me".into()),
                aal: "aal1".into(),
                user_id: None,
                created_at: None,
                reason: Some("logout".into()),
            }),
        });
        assert_eq!(
            interpret(&change(ended.clone(), Some("me")), "me"),
            FeedEffect::Nothing
        );
        assert_eq!(
            interpret(&change(ended, Some("desk")), "me"),
            FeedEffect::Security(SecurityEvent::SessionEndedHere {
                by: Some("desk name".into())
            })
        );
    }

    #[test]
    fn mfa_events_map_to_security_events() {
        let factor = |status| FactorRecord {
            id: "f1".into(),
            friendly_name: None,
            factor_type: "totp".into(),
            status,
        };
        let factors = |event_type, new, old| {
            change(
                FeedRecord::MfaFactor(Change {
                    event_type,
                    new,
                    old,
                }),
                Some("desk"),
            )
        };
        let enabled = factors(
            EventType::Update,
            Some(factor(FactorStatus::Verified)),
            Some(factor(FactorStatus::Unverified)),
        );
        assert_eq!(
            interpret(&enabled, "me"),
            FeedEffect::Security(SecurityEvent::MfaEnabled {
                device_name: Some("desk name".into())
            })
        );
        let enrolled = factors(
            EventType::Insert,
            Some(factor(FactorStatus::Unverified)),
            None,
        );
        assert_eq!(interpret(&enrolled, "me"), FeedEffect::Nothing);
        let removed = factors(
            EventType::Delete,
            None,
            Some(factor(FactorStatus::Verified)),
        );
        assert_eq!(
            interpret(&removed, "me"),
            FeedEffect::Security(SecurityEvent::MfaDisabled {
                device_name: Some("desk name".into())
            })
        );
        let event = |action| {
            change(
                FeedRecord::MfaEvent(Change {
                    event_type: EventType::Insert,
                    new: Some(MfaEventRecord {
                        action,
                        details: serde_json::Map::new(),
                    }),
                    old: None,
                }),
                Some("desk"),
            )
        };
        assert_eq!(
            interpret(&event(AuditAction::MfaVerified), "me"),
            FeedEffect::Nothing
        );
        assert_eq!(
            interpret(&event(AuditAction::MfaLockedOut), "me"),
            FeedEffect::Security(SecurityEvent::Mfa {
                action: "mfa_locked_out".into(),
                device_name: Some("desk name".into())
            })
        );
    }

    #[test]
    fn an_entry_this_version_cannot_read_changes_nothing() {
        let mut newer = change(
            users(user("a@example.com", true), user("a@example.com", false)),
            None,
        );
        newer.table = "identities".into();
        assert_eq!(interpret(&newer, "me"), FeedEffect::Nothing);
        let mut broken = change(
            users(user("a@example.com", true), user("a@example.com", false)),
            None,
        );
        broken.new = json!({"email": 42});
        assert_eq!(interpret(&broken, "me"), FeedEffect::Nothing);
    }

    #[test]
    fn sensitive_values_are_masked_for_display() {
        assert_eq!(
            shown_value("integrations.github", &json!("ghp_secret")),
            json!("••••••")
        );
        assert_eq!(
            shown_value("appearance.theme", &json!("dark")),
            json!("dark")
        );
    }
}
