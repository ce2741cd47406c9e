//! What crosses IPC between the shell and the UI: plain data, generated into TypeScript by
//! `ts-rs` (`src-ui/src/bindings/`, written by `cargo test`), so the two sides cannot drift.
//! Engine events and the status line are not defined here: the window receives
//! `lockstep_core::report`'s `EventReport` and `StatusReport`, the form the CLI prints too.
//! Errors cross as `{code, message}` with `code` from [`ErrorCode`]: the UI never matches
//! message strings.

use lockstep_core::{
    app_lock::Unlock, engine::EngineError, profile::ProfileError, store::HistoryOrigin,
};
use lockstep_protocol::settings;
use serde::Serialize;
use serde_json::Value;
use ts_rs::TS;

/// A DTO: serialised to the UI, with its TypeScript type exported by `ts-rs` into
/// `TS_RS_EXPORT_DIR` (`src-ui/src/bindings/`, set in `.cargo/config.toml`).
macro_rules! dto {
    ($item:item) => {
        #[derive(Debug, Clone, Serialize, TS)]
        #[ts(export)]
        $item
    };
}

dto! {
    /// What went wrong, for the UI to act on by `code`.
    pub struct ErrorDto {
        pub code: ErrorCode,
        /// In plain words, for people.
        pub message: String,
        /// The technical detail (the server's error code and HTTP status), shown on request.
        pub detail: Option<String>,
    }
}

dto! {
    /// The kinds of failure the UI tells apart.
    #[serde(rename_all = "snake_case")]
    pub enum ErrorCode {
        /// No profile is open yet: connect to a server first.
        NotConnected,
        /// A value or argument was refused (the message names the key and the rule).
        Invalid,
        /// The server cannot be reached; edits stay queued.
        Offline,
        /// Not signed in, or signed out by the server.
        SignedOut,
        /// Two-factor authentication: verify a code first.
        CodeNeeded,
        /// The server refused (wrong password, wrong code, rate limit, …).
        Refused,
        /// The OS keychain is not available.
        Keychain,
        /// Local storage failed (disk full, permissions, another instance).
        Storage,
        /// The app lock is on: unlock with a code first (only unlocking and signing out work).
        Locked,
        /// Signing out would lose edits that have not reached the server (the message says how
        /// many): sync first, or sign out with `discard_pending`.
        Unsynced,
    }
}

impl std::fmt::Display for ErrorDto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ErrorDto {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorDto {
        ErrorDto {
            code,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<EngineError> for ErrorDto {
    fn from(error: EngineError) -> ErrorDto {
        let code = if error.needs_second_factor() {
            ErrorCode::CodeNeeded
        } else if error.is_signed_out() {
            ErrorCode::SignedOut
        } else if error.is_offline() {
            ErrorCode::Offline
        } else {
            match &error {
                EngineError::Invalid(_) | EngineError::State(_) => ErrorCode::Invalid,
                EngineError::Store(_) => ErrorCode::Storage,
                EngineError::Keychain(_) => ErrorCode::Keychain,
                EngineError::Api(_) | EngineError::Session(_) => ErrorCode::Refused,
            }
        };
        // The server's own words, with its code and status apart.
        let server = match &error {
            EngineError::Api(api)
            | EngineError::Session(
                lockstep_core::session::SessionError::Api(api)
                | lockstep_core::session::SessionError::Ended(api),
            ) => Some(api),
            _ => None,
        };
        match server {
            Some(lockstep_core::api::ApiError::Server {
                status,
                code: server_code,
                message,
                ..
            }) => ErrorDto {
                code,
                message: sentence(message),
                detail: Some(format!("{server_code}, HTTP {status}")),
            },
            _ => match &error {
                // A refused value names the setting as people read it; the key goes in the
                // detail.
                EngineError::Invalid(refused) if !refused.key.is_empty() => ErrorDto {
                    code,
                    message: format!("{}: {}", settings::label(&refused.key), refused.rule),
                    detail: Some(refused.key.clone()),
                },
                _ => ErrorDto::new(code, error.to_string()),
            },
        }
    }
}

/// `text` as a sentence: its first letter capitalised.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

impl From<ProfileError> for ErrorDto {
    fn from(error: ProfileError) -> ErrorDto {
        match error {
            ProfileError::Engine(e) => e.into(),
            ProfileError::Store(e) => ErrorDto::new(ErrorCode::Storage, e.to_string()),
            ProfileError::NotConfigured(_) => {
                ErrorDto::new(ErrorCode::NotConnected, error.to_string())
            }
            other => ErrorDto::new(ErrorCode::Invalid, other.to_string()),
        }
    }
}

dto! {
    /// The launch: which profile, and whether it is connected to a server yet.
    pub struct LaunchDto {
        pub profile: String,
        pub connected: bool,
        /// The app lock is on: show the lock screen and nothing else.
        pub locked: bool,
        /// The server this profile syncs with, once connected.
        pub server: Option<String>,
        /// The rule a new password must follow (shown before the first try).
        pub password_rule: String,
        /// Prefilled on the connect screen.
        pub server_url: Option<String>,
        pub anon_key: Option<String>,
        pub device_name: Option<String>,
        /// Problems found opening local state, to show once.
        pub problems: Vec<String>,
    }
}

dto! {
    /// The account as the UI shows it.
    pub struct AccountDto {
        pub email: String,
        pub email_verified: bool,
        pub mfa_enabled: bool,
        /// This device holds the authenticator secret (the app lock works offline).
        pub offline_codes: bool,
        pub device_id: String,
        pub device_name: String,
        /// The server this profile syncs with.
        pub server_url: String,
    }
}

dto! {
    /// One setting with where its value comes from.
    pub struct SettingDto {
        pub key: String,
        /// Its name as people read it, and one line about it (from the settings schema).
        pub label: String,
        pub description: String,
        pub value: Option<Value>,
        /// The value as people read it ("on", "15 minutes", "Dark"); `null` for a secret or a
        /// value that has no words (the window then says "set").
        pub spoken: Option<String>,
        /// Kept on this device only.
        pub device_only: bool,
        /// A secret (API key): shown masked until revealed.
        pub sensitive: bool,
        /// Who last changed the synced value, and when (RFC 3339).
        pub changed_by: Option<String>,
        pub changed_at: Option<String>,
        /// The edit is queued (not yet on the server).
        pub pending: bool,
    }
}

dto! {
    /// A TOTP enrollment waiting for its first code.
    pub struct EnrollmentDto {
        pub factor_id: String,
        pub secret: String,
        pub uri: String,
        pub qr_svg: String,
    }
}

dto! {
    /// How a sign-in ended.
    #[serde(rename_all = "snake_case")]
    pub enum SignInDto {
        Done,
        CodeNeeded,
    }
}

dto! {
    pub struct DeviceDto {
        pub id: String,
        pub name: String,
        pub platform: String,
        /// RFC 3339.
        pub last_seen_at: String,
        pub current: bool,
    }
}

dto! {
    /// An edit the server refused for good.
    pub struct SetAsideDto {
        pub key: String,
        pub label: String,
        /// As shown (sensitive values redacted); `null` for a reset.
        pub value: Option<Value>,
        pub reason: String,
        /// Unix milliseconds.
        #[ts(type = "number")]
        pub refused_at_ms: i64,
    }
}

impl From<&lockstep_core::engine::SetAsideEdit> for SetAsideDto {
    fn from(edit: &lockstep_core::engine::SetAsideEdit) -> SetAsideDto {
        SetAsideDto {
            key: edit.key.clone(),
            label: settings::label(&edit.key),
            value: edit.value.clone(),
            reason: edit.reason.clone(),
            refused_at_ms: edit.refused_at_ms,
        }
    }
}

dto! {
    pub struct ActivityDto {
        pub action: String,
        /// The action as people read it.
        pub label: String,
        pub device_name: Option<String>,
        pub ip_address: String,
        /// RFC 3339.
        pub created_at: String,
        pub details: Value,
    }
}

dto! {
    /// Where a version in a setting's local history came from.
    #[serde(rename_all = "snake_case")]
    pub enum HistoryOriginDto {
        /// Set on this device (in this window, or by another Lockstep process on the profile).
        Here,
        /// Arrived from another device.
        Arrived,
        /// A device-only value, set here and never synced.
        DeviceOnly,
    }
}

impl From<HistoryOrigin> for HistoryOriginDto {
    fn from(origin: HistoryOrigin) -> HistoryOriginDto {
        match origin {
            HistoryOrigin::Here => HistoryOriginDto::Here,
            HistoryOrigin::Arrived => HistoryOriginDto::Arrived,
            HistoryOrigin::DeviceOnly => HistoryOriginDto::DeviceOnly,
        }
    }
}

dto! {
    /// One value a setting had on this device, from its local history.
    pub struct HistoryDto {
        /// The version's number: stable, what `restore_setting` takes.
        #[ts(type = "number")]
        pub version: i64,
        pub key: String,
        /// As shown (sensitive values redacted); `null` for a reset to the default.
        pub value: Option<Value>,
        pub origin: HistoryOriginDto,
        /// The origin as people read it: `set here`, `arrived`, `this device only`.
        pub origin_label: String,
        /// Who wrote it: `this device`, or the other device's name.
        pub changed_by: String,
        /// When this device took it in (RFC 3339).
        pub changed_at: String,
    }
}

dto! {
    /// What the lock screen shows.
    pub struct LockScreenDto {
        pub locked: bool,
        pub profile: String,
        /// The account's email, when this run has heard it from the server.
        pub email: Option<String>,
        pub device_name: String,
        /// The wait before the next code may be tried, after too many wrong ones.
        #[ts(type = "number | null")]
        pub retry_in_ms: Option<i64>,
    }
}

dto! {
    /// How an unlock attempt ended.
    pub struct UnlockDto {
        pub unlocked: bool,
        /// Wrong codes in a row so far.
        pub failures: u32,
        /// The wait before the next try, if any.
        #[ts(type = "number | null")]
        pub retry_in_ms: Option<i64>,
    }
}

impl From<Unlock> for UnlockDto {
    fn from(outcome: Unlock) -> UnlockDto {
        match outcome {
            Unlock::Unlocked => UnlockDto {
                unlocked: true,
                failures: 0,
                retry_in_ms: None,
            },
            Unlock::Wrong {
                failures,
                retry_in_ms,
            } => UnlockDto {
                unlocked: false,
                failures,
                retry_in_ms,
            },
            Unlock::Wait {
                failures,
                retry_in_ms,
            } => UnlockDto {
                unlocked: false,
                failures,
                retry_in_ms: Some(retry_in_ms),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::api::ApiError;

    #[test]
    fn a_server_error_reads_in_plain_words_with_its_code_and_status_apart() {
        let refused = EngineError::Api(ApiError::Server {
            status: 422,
            code: lockstep_protocol::errors::Code::Auth(
                lockstep_protocol::errors::ErrorCode::MfaVerificationFailed,
            ),
            session_ended: false,
            message: "invalid TOTP code entered".into(),
            retry_after_secs: None,
        });
        let dto = ErrorDto::from(refused);
        assert_eq!(dto.message, "Invalid TOTP code entered");
        assert!(!dto.message.contains("HTTP"), "{}", dto.message);
        assert_eq!(
            dto.detail.as_deref(),
            Some("mfa_verification_failed, HTTP 422")
        );
    }
}

dto! {
    /// How many recovery codes the account has left: both 0 when it has none (two-factor
    /// authentication off, or no codes made yet).
    pub struct RecoveryCodesDto {
        pub total: u32,
        pub remaining: u32,
    }
}

impl From<lockstep_core::credentials::RecoveryCodesLeft> for RecoveryCodesDto {
    fn from(left: lockstep_core::credentials::RecoveryCodesLeft) -> RecoveryCodesDto {
        RecoveryCodesDto {
            total: left.total,
            remaining: left.remaining,
        }
    }
}
