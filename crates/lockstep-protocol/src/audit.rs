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
