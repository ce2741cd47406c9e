//! Devices: each session belongs to one, named by the client.
//!
//! A client describes itself either with a `device` object in the body of `POST /signup`,
//! `POST /token` and `POST /verify`, or with these headers (handy for supabase-js, which can add
//! headers to every request through `global.headers`):
//!
//! | header | meaning |
//! |---|---|
//! | `X-Lockstep-Device-Id` | stable id the client generates once per install/profile |
//! | `X-Lockstep-Device-Name` | user-visible name, percent-encoded UTF-8 |
//! | `X-Lockstep-Device-Platform` | `linux`, `macos`, `windows`, `web`, … |
//! | `X-Lockstep-App-Version` | the client's version |
//!
//! The body wins over the headers. Without either, the server makes up a device for the session.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const DEVICE_ID_HEADER: &str = "x-lockstep-device-id";
pub const DEVICE_NAME_HEADER: &str = "x-lockstep-device-name";
pub const DEVICE_PLATFORM_HEADER: &str = "x-lockstep-device-platform";
pub const APP_VERSION_HEADER: &str = "x-lockstep-app-version";

pub const MAX_DEVICE_ID_LEN: usize = 64;
pub const MAX_DEVICE_NAME_LEN: usize = 64;
pub const MAX_PLATFORM_LEN: usize = 32;
pub const MAX_APP_VERSION_LEN: usize = 32;

/// How a client describes the device it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub app_version: String,
}

impl DeviceInfo {
    /// Checks the description against the limits both sides agree on.
    /// The error says which field is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_DEVICE_ID_LEN
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return Err(format!(
                "device id must be 1 to {MAX_DEVICE_ID_LEN} characters of letters, digits, '-' or '_'"
            ));
        }
        check_text("device name", &self.name, 1, MAX_DEVICE_NAME_LEN)?;
        check_text("device platform", &self.platform, 0, MAX_PLATFORM_LEN)?;
        check_text("app version", &self.app_version, 0, MAX_APP_VERSION_LEN)?;
        Ok(())
    }
}

/// Checks a user-visible device name (also used when renaming).
pub fn validate_device_name(name: &str) -> Result<(), String> {
    check_text("device name", name, 1, MAX_DEVICE_NAME_LEN)
}

fn check_text(what: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(format!("{what} must be {min} to {max} characters long"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    if min > 0 && value.trim().is_empty() {
        return Err(format!("{what} must not be blank"));
    }
    Ok(())
}

/// A device of an account, as stored (a `devices` row): what the change feed carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    pub user_id: uuid::Uuid,
    pub name: String,
    pub platform: String,
    pub app_version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
}

/// A row of `GET /rest/v1/devices`: the device's record, and whether it is the device making
/// the request (which only means something to the one asking, so the feed does not carry it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    #[serde(flatten)]
    pub record: DeviceRecord,
    pub current: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, name: &str) -> DeviceInfo {
        DeviceInfo {
            id: id.into(),
            name: name.into(),
            platform: "linux".into(),
            app_version: "1".into(),
        }
    }

    #[test]
    fn accepts_a_plain_description() {
        assert_eq!(info("laptop-1", "Work laptop ✓").validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_ids_and_names_with_the_field_named() {
        assert!(info("", "x").validate().unwrap_err().contains("device id"));
        assert!(
            info("a/b", "x")
                .validate()
                .unwrap_err()
                .contains("device id")
        );
        assert!(
            info("a", "")
                .validate()
                .unwrap_err()
                .contains("device name")
        );
        assert!(info("a", "   ").validate().unwrap_err().contains("blank"));
        assert!(
            info("a", "bad\nname")
                .validate()
                .unwrap_err()
                .contains("control")
        );
        assert!(
            info("a", &"n".repeat(65))
                .validate()
                .unwrap_err()
                .contains("device name")
        );
    }
}
