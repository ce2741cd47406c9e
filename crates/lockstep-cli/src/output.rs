//! Printing: human-readable lines by default, one JSON object per line with `--json`.
//!
//! Results go to stdout (flushed after each line, so a reader sees an acknowledgement before the
//! command goes on); warnings and errors go to stderr.

use std::io::Write as _;

use lockstep_core::{
    engine::{Connection, EngineEvent, SyncStatus},
    feed::SecurityEvent,
};
use serde_json::{Value, json};

/// Where and how to print.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints one result: `human` as it is, or `json` on one line. Flushed at once.
    pub fn emit(&self, human: impl std::fmt::Display, json: Value) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            writeln!(stdout, "{json}")?;
        } else {
            writeln!(stdout, "{human}")?;
        }
        stdout.flush()
    }

    /// A warning on stderr (`{"warning": …}` with `--json`).
    pub fn warn(&self, message: &str) {
        if self.json {
            eprintln!("{}", json!({ "warning": message }));
        } else {
            eprintln!("warning: {message}");
        }
    }

    /// An error on stderr (`{"error": …, "exit_code": …}` with `--json`).
    pub fn error(&self, message: &str, code: u8) {
        if self.json {
            eprintln!("{}", json!({ "error": message, "exit_code": code }));
        } else {
            eprintln!("error: {message}");
        }
    }

    /// Prints an engine event, on one line.
    pub fn event(&self, event: &EngineEvent) -> std::io::Result<()> {
        self.emit(describe_event(event), event_json(event))
    }
}

/// The name of a connection state in JSON: `Live`, `Polling`, `Offline`, ….
pub fn connection_name(connection: &Connection) -> &'static str {
    match connection {
        Connection::Connecting => "Connecting",
        Connection::Live => "Live",
        Connection::Polling => "Polling",
        Connection::Offline => "Offline",
        Connection::Paused => "Paused",
        Connection::StepUpRequired => "StepUpRequired",
        Connection::SignedOut => "SignedOut",
    }
}

/// A value for a human: its JSON, or `(unset)`.
pub fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(unset)".to_owned(), Value::to_string)
}

/// Unix milliseconds as an RFC 3339 time (UTC).
pub fn time_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A time as RFC 3339 (UTC).
pub fn time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn by(device: Option<&String>) -> String {
    device.map_or_else(String::new, |d| format!(" by {d}"))
}

/// One line for a human.
pub fn describe_event(event: &EngineEvent) -> String {
    match event {
        EngineEvent::RemoteChange {
            key,
            old,
            new,
            device_name,
        } => format!(
            "{key} = {} (was {}){}",
            show(new.as_ref()),
            show(old.as_ref()),
            device_name
                .as_ref()
                .map_or_else(String::new, |d| format!(", changed on {d}"))
        ),
        EngineEvent::Superseded { key, lost, winner } => format!(
            "your edit of {key} ({lost}) was superseded by {}: it is {} now",
            winner.device_name.as_deref().unwrap_or(&winner.device_id),
            winner.value
        ),
        EngineEvent::Status(SyncStatus {
            connection,
            pending,
            set_aside,
            last_synced_ms,
        }) => format!(
            "status: {}, {pending} edit(s) pending{}{}",
            connection.label(),
            if *set_aside > 0 {
                format!(", {set_aside} refused (see `lockstep status`)")
            } else {
                String::new()
            },
            last_synced_ms.map_or_else(String::new, |ms| format!(", last synced {}", time_ms(ms)))
        ),
        EngineEvent::SetAside { key, reason } => format!(
            "the server refused your edit of {key}: {reason}; it is kept aside and the rest \
             syncs (`lockstep set-aside retry {key}` or `lockstep set-aside drop {key}`)"
        ),
        EngineEvent::Security(event) => describe_security(event),
        EngineEvent::Problem(message) => format!("problem: {message}"),
    }
}

fn describe_security(event: &SecurityEvent) -> String {
    match event {
        SecurityEvent::EmailVerified { email } => format!("security: {email} was confirmed"),
        SecurityEvent::EmailChanged { email } => {
            format!("security: the account's email changed to {email}")
        }
        SecurityEvent::MfaEnabled { device_name } => format!(
            "security: two-factor authentication was turned on{}",
            by(device_name.as_ref())
        ),
        SecurityEvent::MfaDisabled { device_name } => format!(
            "security: an authenticator was removed{}",
            by(device_name.as_ref())
        ),
        SecurityEvent::Mfa {
            action,
            device_name,
        } => format!(
            "security: two-factor event {action}{}",
            by(device_name.as_ref())
        ),
        SecurityEvent::DeviceSignedIn { device_id, name } => {
            format!("security: {name} ({device_id}) signed in")
        }
        SecurityEvent::DeviceRevoked {
            device_id,
            name,
            by: who,
        } => format!(
            "security: {name} ({device_id}) was revoked{}",
            by(who.as_ref())
        ),
        SecurityEvent::SessionEndedHere { by: who } => format!(
            "security: this device's session was ended{}",
            by(who.as_ref())
        ),
        SecurityEvent::StepUpRequired => "security: two-factor authentication is on: stop \
                                          `watch` and run `lockstep mfa verify`"
            .to_owned(),
        SecurityEvent::SignedOut { by: who } => format!(
            "security: this device was signed out{}; its secrets and cached settings were removed",
            by(who.as_ref())
        ),
    }
}

/// The event as one JSON object.
pub fn event_json(event: &EngineEvent) -> Value {
    match event {
        EngineEvent::RemoteChange {
            key,
            old,
            new,
            device_name,
        } => json!({
            "event": "remote_change",
            "key": key,
            "old": old,
            "new": new,
            "device": device_name,
        }),
        EngineEvent::Superseded { key, lost, winner } => json!({
            "event": "superseded",
            "key": key,
            "lost": lost,
            "value": winner.value,
            "device": winner.device_name,
            "device_id": winner.device_id,
        }),
        EngineEvent::Status(status) => json!({
            "event": "status",
            "connection": connection_name(&status.connection),
            "pending": status.pending,
            "set_aside": status.set_aside,
            "last_synced_ms": status.last_synced_ms,
        }),
        EngineEvent::SetAside { key, reason } => json!({
            "event": "set_aside",
            "key": key,
            "reason": reason,
        }),
        EngineEvent::Security(event) => security_json(event),
        EngineEvent::Problem(message) => json!({ "event": "problem", "message": message }),
    }
}

fn security_json(event: &SecurityEvent) -> Value {
    let mut value = match event {
        SecurityEvent::EmailVerified { email } => {
            json!({ "kind": "email_verified", "email": email })
        }
        SecurityEvent::EmailChanged { email } => json!({ "kind": "email_changed", "email": email }),
        SecurityEvent::MfaEnabled { device_name } => {
            json!({ "kind": "mfa_enabled", "device": device_name })
        }
        SecurityEvent::MfaDisabled { device_name } => {
            json!({ "kind": "mfa_disabled", "device": device_name })
        }
        SecurityEvent::Mfa {
            action,
            device_name,
        } => json!({ "kind": "mfa", "action": action, "device": device_name }),
        SecurityEvent::DeviceSignedIn { device_id, name } => {
            json!({ "kind": "device_signed_in", "device_id": device_id, "device": name })
        }
        SecurityEvent::DeviceRevoked {
            device_id,
            name,
            by,
        } => json!({ "kind": "device_revoked", "device_id": device_id, "device": name, "by": by }),
        SecurityEvent::SessionEndedHere { by } => json!({ "kind": "session_ended_here", "by": by }),
        SecurityEvent::StepUpRequired => json!({ "kind": "step_up_required" }),
        SecurityEvent::SignedOut { by } => json!({ "kind": "signed_out", "by": by }),
    };
    if let Some(object) = value.as_object_mut() {
        object.insert("event".into(), json!("security"));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_each() {
        let change = EngineEvent::RemoteChange {
            key: "appearance.theme".into(),
            old: Some(json!("system")),
            new: Some(json!("dark")),
            device_name: Some("Laptop".into()),
        };
        assert_eq!(
            event_json(&change),
            json!({"event": "remote_change", "key": "appearance.theme", "old": "system",
                   "new": "dark", "device": "Laptop"})
        );
        assert_eq!(
            describe_event(&change),
            r#"appearance.theme = "dark" (was "system"), changed on Laptop"#
        );
        let status = EngineEvent::Status(SyncStatus {
            connection: Connection::Live,
            pending: 0,
            set_aside: 1,
            last_synced_ms: Some(5),
        });
        assert_eq!(
            event_json(&status),
            json!({"event": "status", "connection": "Live", "pending": 0, "set_aside": 1, "last_synced_ms": 5})
        );
        let refused = EngineEvent::SetAside {
            key: "appearance.theme".into(),
            reason: "no".into(),
        };
        assert_eq!(
            event_json(&refused),
            json!({"event": "set_aside", "key": "appearance.theme", "reason": "no"})
        );
        assert!(describe_event(&refused).contains("set-aside retry appearance.theme"));
        let mfa = EngineEvent::Security(SecurityEvent::MfaEnabled {
            device_name: Some("Phone".into()),
        });
        assert_eq!(
            event_json(&mfa),
            json!({"event": "security", "kind": "mfa_enabled", "device": "Phone"})
        );
        let out = EngineEvent::Security(SecurityEvent::SignedOut { by: None });
        assert_eq!(
            event_json(&out),
            json!({"event": "security", "kind": "signed_out", "by": null})
        );
    }
}
