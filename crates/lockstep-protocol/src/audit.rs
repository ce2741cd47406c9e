//! The per-user security log, modelled on GoTrue's `auth.audit_log_entries`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What happened. Stored and sent as the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    UserSignedUp,
    Login,
    LoginFailed,
    Logout,
    RefreshTokenReused,
    DeviceRegistered,
    DeviceRenamed,
    DeviceRevoked,
    EmailVerified,
    EmailChangeRequested,
    EmailChanged,
    PasswordChanged,
    PasswordRecoveryRequested,
    MfaEnrolled,
    MfaVerified,
    MfaEnabled,
    MfaVerificationFailed,
    MfaLockedOut,
    MfaUnenrolled,
    MfaSecretHandedOver,
    RecoveryCodesGenerated,
    RecoveryCodeUsed,
    RecoveryCodesDeleted,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::UserSignedUp => "user_signed_up",
            AuditAction::Login => "login",
            AuditAction::LoginFailed => "login_failed",
            AuditAction::Logout => "logout",
            AuditAction::RefreshTokenReused => "refresh_token_reused",
            AuditAction::DeviceRegistered => "device_registered",
            AuditAction::DeviceRenamed => "device_renamed",
            AuditAction::DeviceRevoked => "device_revoked",
            AuditAction::EmailVerified => "email_verified",
            AuditAction::EmailChangeRequested => "email_change_requested",
            AuditAction::EmailChanged => "email_changed",
            AuditAction::PasswordChanged => "password_changed",
            AuditAction::PasswordRecoveryRequested => "password_recovery_requested",
            AuditAction::MfaEnrolled => "mfa_enrolled",
            AuditAction::MfaVerified => "mfa_verified",
            AuditAction::MfaEnabled => "mfa_enabled",
            AuditAction::MfaVerificationFailed => "mfa_verification_failed",
            AuditAction::MfaLockedOut => "mfa_locked_out",
            AuditAction::MfaUnenrolled => "mfa_unenrolled",
            AuditAction::MfaSecretHandedOver => "mfa_secret_handed_over",
            AuditAction::RecoveryCodesGenerated => "recovery_codes_generated",
            AuditAction::RecoveryCodeUsed => "recovery_code_used",
            AuditAction::RecoveryCodesDeleted => "recovery_codes_deleted",
        }
    }

    /// Every action, for reading one back from its name.
    pub const ALL: [AuditAction; 23] = [
        AuditAction::UserSignedUp,
        AuditAction::Login,
        AuditAction::LoginFailed,
        AuditAction::Logout,
        AuditAction::RefreshTokenReused,
        AuditAction::DeviceRegistered,
        AuditAction::DeviceRenamed,
        AuditAction::DeviceRevoked,
        AuditAction::EmailVerified,
        AuditAction::EmailChangeRequested,
        AuditAction::EmailChanged,
        AuditAction::PasswordChanged,
        AuditAction::PasswordRecoveryRequested,
        AuditAction::MfaEnrolled,
        AuditAction::MfaVerified,
        AuditAction::MfaEnabled,
        AuditAction::MfaVerificationFailed,
        AuditAction::MfaLockedOut,
        AuditAction::MfaUnenrolled,
        AuditAction::MfaSecretHandedOver,
        AuditAction::RecoveryCodesGenerated,
        AuditAction::RecoveryCodeUsed,
        AuditAction::RecoveryCodesDeleted,
    ];

    /// The action named `name` (as stored), if this build knows it.
    pub fn from_name(name: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The action as people read it in the activity list.
    pub fn label(self) -> &'static str {
        match self {
            AuditAction::UserSignedUp => "Account created",
            AuditAction::Login => "Signed in",
            AuditAction::LoginFailed => "Failed sign-in",
            AuditAction::Logout => "Signed out",
            AuditAction::RefreshTokenReused => "Stolen session blocked",
            AuditAction::DeviceRegistered => "New device",
            AuditAction::DeviceRenamed => "Device renamed",
            AuditAction::DeviceRevoked => "Device removed",
            AuditAction::EmailVerified => "Email verified",
            AuditAction::EmailChangeRequested => "Email change requested",
            AuditAction::EmailChanged => "Email changed",
            AuditAction::PasswordChanged => "Password changed",
            AuditAction::PasswordRecoveryRequested => "Password reset requested",
            AuditAction::MfaEnrolled => "Authenticator added",
            AuditAction::MfaVerified => "Two-factor code accepted",
            AuditAction::MfaEnabled => "Two-factor authentication turned on",
            AuditAction::MfaVerificationFailed => "Wrong two-factor code",
            AuditAction::MfaLockedOut => "Two-factor locked after wrong codes",
            AuditAction::MfaUnenrolled => "Authenticator removed",
            AuditAction::MfaSecretHandedOver => "Authenticator copied to a device",
            AuditAction::RecoveryCodesGenerated => "New recovery codes",
            AuditAction::RecoveryCodeUsed => "Recovery code used",
            AuditAction::RecoveryCodesDeleted => "Recovery codes deleted",
        }
    }
}

/// How the activity list names an entry's action: its label, or the name in words for one this
/// build does not know (a newer server's).
pub fn action_label(name: &str) -> String {
    match AuditAction::from_name(name) {
        Some(action) => action.label().to_owned(),
        None => {
            let words = name.replace('_', " ");
            let mut chars = words.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => String::new(),
            }
        }
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn every_action_reads_back_from_its_name_and_has_a_label() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::from_name(action.as_str()), Some(action));
            assert!(!action.label().contains('_'), "{}", action.label());
        }
        assert_eq!(
            action_label("mfa_enabled"),
            "Two-factor authentication turned on"
        );
        assert_eq!(action_label("quantum_login"), "Quantum login");
    }
}

/// A row of `GET /rest/v1/audit_log_entries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: uuid::Uuid,
    pub user_id: uuid::Uuid,
    pub action: String,
    /// The device that acted, when known.
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub ip_address: String,
    /// Details of the event (never secrets).
    pub payload: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}
