//! What a change-feed entry means to this device: a pure function from a [`ChangeEvent`] to
//! a [`FeedEffect`], apart from all I/O, so the rules are unit-tested on their own.

use lockstep_protocol::{settings, sync::ChangeEvent, sync::SettingRow};
use serde_json::Value;

/// A security-relevant change to the account, for notifications and the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Nothing this device shows (e.g. its own sign-in, a session that stepped up).
    Nothing,
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Interprets one feed entry for the device `my_device`.
pub fn interpret(change: &ChangeEvent, my_device: &str) -> FeedEffect {
    let by = change.device_name.clone();
    let by_me = change.device_id.as_deref() == Some(my_device);
    let security = FeedEffect::Security;
    match (change.table.as_str(), change.event_type.as_str()) {
        ("user_settings", _) => match serde_json::from_value::<SettingRow>(change.new.clone()) {
            Ok(row) => FeedEffect::Setting(row),
            Err(error) => {
                tracing::warn!(seq = change.seq, %error, "unreadable settings entry skipped");
                FeedEffect::Nothing
            }
        },
        ("users", _) => {
            let confirmed = |v: &Value| v.get("email_confirmed_at").is_some_and(|t| !t.is_null());
            let email = text(&change.new, "email").unwrap_or_default();
            if confirmed(&change.new) && !confirmed(&change.old) {
                security(SecurityEvent::EmailVerified { email })
            } else if text(&change.old, "email").is_some_and(|old| old != email) {
                security(SecurityEvent::EmailChanged { email })
            } else {
                FeedEffect::Nothing
            }
        }
        ("devices", "DELETE") => {
            let id = text(&change.old, "id").unwrap_or_default();
            let name = text(&change.old, "name").unwrap_or_default();
            if id == my_device {
                security(SecurityEvent::SessionEndedHere { by })
            } else {
                security(SecurityEvent::DeviceRevoked {
                    device_id: id,
                    name,
                    by,
                })
            }
        }
        ("devices", "INSERT") => {
            let id = text(&change.new, "id").unwrap_or_default();
            if id == my_device {
                FeedEffect::Nothing
            } else {
                security(SecurityEvent::DeviceSignedIn {
                    name: text(&change.new, "name").unwrap_or_default(),
                    device_id: id,
                })
            }
        }
        ("sessions", "DELETE") => {
            if text(&change.old, "device_id").as_deref() == Some(my_device) && !by_me {
                security(SecurityEvent::SessionEndedHere { by })
            } else {
                FeedEffect::Nothing
            }
        }
        ("mfa_factors", _) => {
            let verified = |v: &Value| text(v, "status").as_deref() == Some("verified");
            if verified(&change.new) && !verified(&change.old) {
                security(SecurityEvent::MfaEnabled { device_name: by })
            } else if change.new.is_null() && verified(&change.old) {
                security(SecurityEvent::MfaDisabled { device_name: by })
            } else {
                // An enrollment started, replaced or abandoned: not worth a notification.
                FeedEffect::Nothing
            }
        }
        ("mfa_events", _) => match text(&change.new, "action").as_deref() {
            // Routine steps (enrolling, verifying a code) are not worth a notification.
            Some("mfa_enrolled" | "mfa_verified") | None => FeedEffect::Nothing,
            Some(action) => security(SecurityEvent::Mfa {
                action: action.to_owned(),
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
    use super::*;
    use serde_json::json;

    fn change(
        table: &str,
        event_type: &str,
        new: Value,
        old: Value,
        by: Option<&str>,
    ) -> ChangeEvent {
        ChangeEvent {
            seq: 1,
            schema: "public".into(),
            table: table.into(),
            event_type: event_type.into(),
            commit_timestamp: "2026-12-01T00:00:00Z".into(),
            new,
            old,
            device_id: by.map(str::to_owned),
            device_name: by.map(|d| format!("{d} name")),
        }
    }

    #[test]
    fn email_confirmation_is_a_security_event() {
        let c = change(
            "users",
            "UPDATE",
            json!({"email": "a@example.com", "email_confirmed_at": "2026-12-01T00:00:00Z"}),
            json!({"email": "a@example.com", "email_confirmed_at": null}),
            None,
        );
        assert_eq!(
            interpret(&c, "me"),
            FeedEffect::Security(SecurityEvent::EmailVerified {
                email: "a@example.com".into()
            })
        );
        let unchanged = change("users", "UPDATE", c.new.clone(), c.new.clone(), None);
        assert_eq!(interpret(&unchanged, "me"), FeedEffect::Nothing);
    }

    #[test]
    fn revocation_of_this_device_ends_the_session_here() {
        let c = change(
            "devices",
            "DELETE",
            Value::Null,
            json!({"id": "me", "name": "Laptop"}),
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
    fn a_session_of_this_device_ended_by_this_device_is_not_alarming() {
        let old = json!({"id": "s1", "device_id": "me"});
        assert_eq!(
            interpret(
                &change("sessions", "DELETE", Value::Null, old.clone(), Some("me")),
                "me"
            ),
            FeedEffect::Nothing
        );
        assert_eq!(
            interpret(
                &change("sessions", "DELETE", Value::Null, old, Some("desk")),
                "me"
            ),
            FeedEffect::Security(SecurityEvent::SessionEndedHere {
                by: Some("desk name".into())
            })
        );
    }

    #[test]
    fn mfa_events_map_to_security_events() {
        let factor = |status: &str| json!({"id": "f1", "factor_type": "totp", "status": status});
        let enabled = change(
            "mfa_factors",
            "UPDATE",
            factor("verified"),
            factor("unverified"),
            Some("desk"),
        );
        assert_eq!(
            interpret(&enabled, "me"),
            FeedEffect::Security(SecurityEvent::MfaEnabled {
                device_name: Some("desk name".into())
            })
        );
        let enrolled = change(
            "mfa_factors",
            "INSERT",
            factor("unverified"),
            Value::Null,
            Some("desk"),
        );
        assert_eq!(interpret(&enrolled, "me"), FeedEffect::Nothing);
        let removed = change(
            "mfa_factors",
            "DELETE",
            Value::Null,
            factor("verified"),
            Some("desk"),
        );
        assert_eq!(
            interpret(&removed, "me"),
            FeedEffect::Security(SecurityEvent::MfaDisabled {
                device_name: Some("desk name".into())
            })
        );
        let routine = change(
            "mfa_events",
            "INSERT",
            json!({"action": "mfa_verified"}),
            Value::Null,
            Some("desk"),
        );
        assert_eq!(interpret(&routine, "me"), FeedEffect::Nothing);
        let locked = change(
            "mfa_events",
            "INSERT",
            json!({"action": "mfa_locked_out"}),
            Value::Null,
            None,
        );
        assert!(matches!(
            interpret(&locked, "me"),
            FeedEffect::Security(SecurityEvent::Mfa { .. })
        ));
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
