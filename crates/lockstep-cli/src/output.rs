//! Printing: human-readable lines by default, one JSON object per line with `--json`.
//!
//! Results go to stdout (flushed after each line, so a reader sees an acknowledgement before the
//! command goes on); warnings and errors go to stderr.

use std::io::Write as _;

use lockstep_core::{engine::EngineEvent, feed::SecurityEvent, report::EventReport};
use lockstep_protocol::timestamp::rfc3339_millis;
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

    /// Prints an engine event, on one line; with `--json` in the form the desktop window
    /// receives too ([`EventReport`]).
    pub fn event(&self, event: &EngineEvent) -> std::io::Result<()> {
        let report = EventReport::from(event);
        let json = serde_json::to_value(&report)
            .unwrap_or_else(|e| json!({ "event": "problem", "message": e.to_string() }));
        self.emit(describe_event(&report), json)
    }
}

/// A value for a human: its JSON, or `(unset)`.
pub fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(unset)".to_owned(), Value::to_string)
}

fn by(device: Option<&String>) -> String {
    device.map_or_else(String::new, |d| format!(" by {d}"))
}

/// One line for a human.
pub fn describe_event(event: &EventReport) -> String {
    match event {
        EventReport::RemoteChange {
            key,
            old,
            new,
            device_name,
            ..
        } => format!(
            "{key} = {} (was {}){}",
            show(new.as_ref()),
            show(old.as_ref()),
            device_name
                .as_ref()
                .map_or_else(String::new, |d| format!(", changed on {d}"))
        ),
        EventReport::Superseded {
            key,
            lost,
            value,
            device_id,
            device_name,
            ..
        } => format!(
            "your edit of {key} ({lost}) was superseded by {}: it is {value} now",
            device_name.as_deref().unwrap_or(device_id),
        ),
        EventReport::Status(status) => format!(
            "status: {}, {} edit(s) pending{}{}",
            status.label,
            status.pending,
            if status.set_aside > 0 {
                format!(", {} refused (see `lockstep status`)", status.set_aside)
            } else {
                String::new()
            },
            status.last_synced_ms.map_or_else(String::new, |ms| format!(
                ", last synced {}",
                rfc3339_millis(ms)
            ))
        ),
        EventReport::SetAside { key, reason, .. } => format!(
            "the server refused your edit of {key}: {reason}; it is kept aside and the rest \
             syncs (`lockstep set-aside retry {key}` or `lockstep set-aside drop {key}`)"
        ),
        EventReport::Security(event) => describe_security(event),
        EventReport::Problem { message } => format!("problem: {message}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line_each() {
        let change = EngineEvent::RemoteChange {
            key: "appearance.theme".into(),
            old: Some(json!("system")),
            new: Some(json!("dark")),
            device_id: Some("d-2".into()),
            device_name: Some("Laptop".into()),
            arrival: lockstep_core::engine::Arrival::Live,
        };
        assert_eq!(
            describe_event(&(&change).into()),
            r#"appearance.theme = "dark" (was "system"), changed on Laptop"#
        );
        let refused = EngineEvent::SetAside {
            key: "appearance.theme".into(),
            reason: "no".into(),
        };
        assert!(describe_event(&(&refused).into()).contains("set-aside retry appearance.theme"));
        let mfa = EngineEvent::Security(SecurityEvent::MfaEnabled {
            device_name: Some("Phone".into()),
        });
        assert_eq!(
            describe_event(&(&mfa).into()),
            "security: two-factor authentication was turned on by Phone"
        );
    }
}
