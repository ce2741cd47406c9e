//! Desktop notifications for what changed elsewhere. The wording is a pure function
//! ([`notification_for`]), tested on its own; showing one goes through `notify-rust` on a
//! blocking thread, and a failure (no notification server on the bus) is logged, never fatal.

use lockstep_core::{
    engine::EngineEvent,
    feed::SecurityEvent,
    typed::{Key, keys},
};
use lockstep_protocol::settings::label;
use serde_json::Value;

/// The user's notification settings (`notifications.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preferences {
    pub desktop: bool,
    pub remote_changes: bool,
    pub security_events: bool,
}

impl Preferences {
    /// Reads them through `value` (the engine's [`Engine::value`]: the schema's default, on,
    /// where never set).
    ///
    /// [`Engine::value`]: lockstep_core::engine::Engine::value
    pub fn read(value: impl Fn(Key<bool>) -> bool) -> Preferences {
        Preferences {
            desktop: value(keys::DESKTOP_NOTIFICATIONS),
            remote_changes: value(keys::NOTIFY_REMOTE_CHANGES),
            security_events: value(keys::NOTIFY_SECURITY_EVENTS),
        }
    }
}

/// A notification: its summary and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub summary: String,
    pub body: String,
}

/// A value as people say it: `Dark`, `on`, `15 minutes`.
pub fn spoken(key: &str, value: Option<&Value>) -> String {
    match (key, value) {
        (_, None | Some(Value::Null)) => "the default".into(),
        ("security.lock_after_minutes", Some(Value::Number(n))) => match n.as_u64() {
            Some(0) => "never".into(),
            Some(1) => "1 minute".into(),
            _ => format!("{n} minutes"),
        },
        (_, Some(Value::Bool(true))) => "on".into(),
        (_, Some(Value::Bool(false))) => "off".into(),
        (_, Some(Value::String(s))) => {
            let mut chars = s.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        }
        (_, Some(other)) => other.to_string(),
    }
}

/// Whether `event` deserves a notification under some preferences (a status change never
/// does): only then are the preferences read.
pub fn may_notify(event: &EngineEvent) -> bool {
    let all_on = Preferences {
        desktop: true,
        remote_changes: true,
        security_events: true,
    };
    notification_for(event, all_on).is_some()
}

/// The notification an event deserves under `prefs`, if any.
pub fn notification_for(event: &EngineEvent, prefs: Preferences) -> Option<Note> {
    if !prefs.desktop {
        return None;
    }
    let on = |device: &Option<String>| match device {
        Some(name) => format!(" on {name}"),
        None => String::new(),
    };
    match event {
        EngineEvent::RemoteChange {
            key,
            new,
            device_name,
            ..
        } if prefs.remote_changes => {
            let body = if lockstep_protocol::settings::is_sensitive(key) {
                format!("{} changed{}", label(key), on(device_name))
            } else {
                format!(
                    "{} set to {}{}",
                    label(key),
                    spoken(key, new.as_ref()),
                    on(device_name)
                )
            };
            Some(Note {
                summary: "Settings changed".into(),
                body,
            })
        }
        EngineEvent::Superseded { key, winner, .. } if prefs.remote_changes => Some(Note {
            summary: "Your change was replaced".into(),
            body: format!(
                "{}: a newer change{} won",
                label(key),
                on(&winner.device_name)
            ),
        }),
        EngineEvent::Security(security) if prefs.security_events => {
            let (summary, body) = match security {
                SecurityEvent::EmailVerified { email } => {
                    ("Email verified", format!("{email} is confirmed"))
                }
                SecurityEvent::EmailChanged { email } => (
                    "Email changed",
                    format!("The account's email is now {email}"),
                ),
                SecurityEvent::MfaEnabled { device_name } => (
                    "Two-factor authentication on",
                    format!("Turned on{}", on(device_name)),
                ),
                SecurityEvent::MfaDisabled { device_name } => (
                    "Authenticator removed",
                    format!("An authenticator was removed{}", on(device_name)),
                ),
                SecurityEvent::DeviceSignedIn { name, .. } => {
                    ("New device", format!("{name} signed in"))
                }
                SecurityEvent::DeviceRevoked { name, by, .. } => (
                    "Device removed",
                    format!("{name} was signed out{}", by_whom(by)),
                ),
                SecurityEvent::StepUpRequired => (
                    "Code needed",
                    "Two-factor authentication is on: enter a code to keep syncing".into(),
                ),
                SecurityEvent::SignedOut { by } => (
                    "Signed out",
                    format!("This device was signed out{}", by_whom(by)),
                ),
                SecurityEvent::Mfa { .. } | SecurityEvent::SessionEndedHere { .. } => return None,
            };
            Some(Note {
                summary: summary.into(),
                body,
            })
        }
        _ => None,
    }
}

fn by_whom(by: &Option<String>) -> String {
    match by {
        Some(name) => format!(" by {name}"),
        None => String::new(),
    }
}

/// Shows `note` on the desktop; failures are logged.
pub fn show(note: Note) {
    tauri::async_runtime::spawn_blocking(move || {
        let shown = notify_rust::Notification::new()
            .appname("Lockstep")
            .summary(&note.summary)
            .body(&note.body)
            .show();
        if let Err(error) = shown {
            tracing::warn!(%error, "could not show a desktop notification");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALL_ON: Preferences = Preferences {
        desktop: true,
        remote_changes: true,
        security_events: true,
    };

    fn theme_change() -> EngineEvent {
        EngineEvent::RemoteChange {
            key: "appearance.theme".into(),
            old: Some(json!("system")),
            new: Some(json!("dark")),
            device_name: Some("Work laptop".into()),
        }
    }

    #[test]
    fn a_remote_change_names_the_setting_the_value_and_the_device() {
        let note = notification_for(&theme_change(), ALL_ON).unwrap();
        assert_eq!(note.body, "Theme set to Dark on Work laptop");
        let lock = EngineEvent::RemoteChange {
            key: "security.lock_after_minutes".into(),
            old: None,
            new: Some(json!(0)),
            device_name: None,
        };
        assert_eq!(
            notification_for(&lock, ALL_ON).unwrap().body,
            "Lock after inactivity set to never"
        );
    }

    #[test]
    fn api_keys_are_never_spelled_out() {
        let change = EngineEvent::RemoteChange {
            key: "integrations.github".into(),
            old: None,
            new: Some(json!("••••••")),
            device_name: Some("Desk".into()),
        };
        assert_eq!(
            notification_for(&change, ALL_ON).unwrap().body,
            "API key for github changed on Desk"
        );
    }

    #[test]
    fn only_events_that_can_notify_have_the_preferences_read() {
        use lockstep_core::engine::{Connection, SyncStatus};
        assert!(may_notify(&theme_change()));
        assert!(may_notify(&EngineEvent::Security(
            SecurityEvent::SignedOut { by: None }
        )));
        let status = EngineEvent::Status(SyncStatus {
            connection: Connection::Shared,
            pending: 0,
            set_aside: 0,
            last_synced_ms: None,
        });
        assert!(!may_notify(&status));
        assert!(!may_notify(&EngineEvent::Problem("a repaired file".into())));
    }

    #[test]
    fn the_notification_settings_are_respected() {
        let quiet = Preferences {
            remote_changes: false,
            ..ALL_ON
        };
        assert_eq!(notification_for(&theme_change(), quiet), None);
        let revoked = EngineEvent::Security(SecurityEvent::SignedOut {
            by: Some("Desk".into()),
        });
        assert_eq!(
            notification_for(&revoked, quiet).unwrap().body,
            "This device was signed out by Desk"
        );
        let off = Preferences {
            desktop: false,
            ..ALL_ON
        };
        assert_eq!(notification_for(&revoked, off), None);
        let no_security = Preferences {
            security_events: false,
            ..ALL_ON
        };
        assert_eq!(notification_for(&revoked, no_security), None);
    }

    #[test]
    fn preferences_are_read_from_their_keys() {
        let prefs = Preferences::read(|key| key.name != keys::DESKTOP_NOTIFICATIONS.name);
        assert_eq!(
            prefs,
            Preferences {
                desktop: false,
                ..ALL_ON
            }
        );
    }
}
