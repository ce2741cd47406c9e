//! Supabase (GoTrue) compatible auth shapes: sessions, users, requests and error codes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::devices::DeviceInfo;
pub use crate::errors::{AuthError, ErrorCode, LegacyAuthError, RestError};

/// The parameters of every TOTP factor (RFC 6238 as authenticator apps use it), defined once
/// for the server that verifies codes and the device that checks them offline (app lock).
pub mod totp {
    /// Seconds per step: a code changes every 30 s.
    pub const STEP_SECONDS: u64 = 30;
    /// Digits of a code.
    pub const DIGITS: u8 = 6;
    /// Steps accepted either side of now (clock drift of the phone).
    pub const SKEW_STEPS: u16 = 1;
    /// The HMAC, as named in `otpauth://` URIs.
    pub const ALGORITHM: &str = "SHA1";
}

/// Lifetime of an access token unless the server is configured otherwise.
pub const DEFAULT_ACCESS_TOKEN_SECONDS: i64 = 3600;

/// The header that selects the newer error shape (`{"code": "...", "message": "..."}`).
pub const API_VERSION_HEADER: &str = "x-supabase-api-version";
/// The only API version this server knows besides the legacy (absent) one.
pub const API_VERSION_2024: &str = "2024-01-01";

/// Authenticator assurance level of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aal {
    /// Signed in with one factor (the password).
    Aal1,
    /// Also proved a second factor (TOTP or a recovery code).
    Aal2,
}

impl Aal {
    pub fn as_str(self) -> &'static str {
        match self {
            Aal::Aal1 => "aal1",
            Aal::Aal2 => "aal2",
        }
    }

    pub fn parse(s: &str) -> Option<Aal> {
        match s {
            "aal1" => Some(Aal::Aal1),
            "aal2" => Some(Aal::Aal2),
            _ => None,
        }
    }
}

/// One authentication method reference, newest first in a session's `amr` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmrEntry {
    pub method: String,
    /// Unix seconds.
    pub timestamp: i64,
}

/// `POST /auth/v1/token` answer, also `POST /signup` when a session is issued at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub expires_at: i64,
    pub refresh_token: String,
    pub user: User,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppMetadata {
    pub provider: String,
    pub providers: Vec<String>,
}

impl Default for AppMetadata {
    fn default() -> Self {
        AppMetadata {
            provider: "email".into(),
            providers: vec!["email".into()],
        }
    }
}

/// The user record as GoTrue serializes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub aud: String,
    pub role: String,
    pub email: String,
    #[serde(default)]
    pub phone: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub email_confirmed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub confirmed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub confirmation_sent_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_email: Option<String>,
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub email_change_sent_at: Option<OffsetDateTime>,
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_sent_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_sign_in_at: Option<OffsetDateTime>,
    pub app_metadata: AppMetadata,
    pub user_metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub identities: Vec<Identity>,
    /// Always present (possibly empty): supabase-js computes the next assurance level from it.
    #[serde(default)]
    pub factors: Vec<Factor>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(default)]
    pub is_anonymous: bool,
}

impl User {
    /// Whether the user has proved they own their email address.
    pub fn email_verified(&self) -> bool {
        self.email_confirmed_at.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub identity_id: Uuid,
    pub id: String,
    pub user_id: Uuid,
    pub identity_data: serde_json::Value,
    pub provider: String,
    pub email: String,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_sign_in_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// An MFA factor as listed on the user (never carries the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Factor {
    pub id: Uuid,
    pub friendly_name: Option<String>,
    pub factor_type: String,
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_challenged_at: Option<OffsetDateTime>,
}

/// `POST /auth/v1/signup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupRequest {
    pub email: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
    /// Lockstep extension: the device this session belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceInfo>,
}

/// `POST /auth/v1/token?grant_type=password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordGrant {
    pub email: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceInfo>,
}

/// `POST /auth/v1/token?grant_type=refresh_token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshGrant {
    pub refresh_token: String,
}

/// `PUT /auth/v1/user`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateUserRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The kinds of one-time email token, as GoTrue names them in `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationType {
    Signup,
    EmailChange,
    Recovery,
    /// GoTrue's generic name for an emailed code; accepted for signup confirmation.
    Email,
}

impl VerificationType {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationType::Signup => "signup",
            VerificationType::EmailChange => "email_change",
            VerificationType::Recovery => "recovery",
            VerificationType::Email => "email",
        }
    }
}

/// `POST /auth/v1/verify`: either the link's `token_hash`, or the emailed code with the address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRequest {
    #[serde(rename = "type")]
    pub kind: VerificationType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceInfo>,
}

/// `POST /auth/v1/resend`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResendRequest {
    #[serde(rename = "type")]
    pub kind: VerificationType,
    pub email: String,
}

/// `POST /auth/v1/recover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoverRequest {
    pub email: String,
}

/// `GET /auth/v1/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerSettings {
    pub external: serde_json::Map<String, serde_json::Value>,
    pub disable_signup: bool,
    pub mailer_autoconfirm: bool,
    pub phone_autoconfirm: bool,
    pub sms_provider: String,
    pub saml_enabled: bool,
    pub anonymous_users: bool,
    /// Lockstep extension: whether a user may sign in before confirming their email.
    pub allow_unverified_email_sign_ins: bool,
}

/// `POST /auth/v1/factors`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub factor_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friendly_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// The TOTP part of an enrollment answer: shown once, to be scanned or typed.
#[derive(Clone, Serialize, Deserialize)]
pub struct TotpEnrollment {
    /// Raw SVG markup of the QR code of `uri`.
    pub qr_code: String,
    /// Base32 secret, for typing into an authenticator by hand.
    pub secret: String,
    /// `otpauth://totp/Issuer:email?secret=…&issuer=…`
    pub uri: String,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrollment { .. }")
    }
}

/// `POST /auth/v1/factors` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub friendly_name: Option<String>,
    pub totp: TotpEnrollment,
}

/// `POST /auth/v1/factors/{id}/challenge` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `POST /auth/v1/factors/{id}/verify`.
#[derive(Clone, Serialize, Deserialize)]
pub struct MfaVerifyRequest {
    pub challenge_id: Uuid,
    pub code: String,
}

impl std::fmt::Debug for MfaVerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MfaVerifyRequest {{ challenge_id: {}, .. }}",
            self.challenge_id
        )
    }
}

/// `GET /auth/v1/factors/{id}/secret` (Lockstep extension): the factor's secret for this
/// device's keychain, so the app can check codes offline.
#[derive(Clone, Serialize, Deserialize)]
pub struct FactorSecret {
    pub id: Uuid,
    pub secret: String,
    pub uri: String,
}

impl std::fmt::Debug for FactorSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FactorSecret {{ id: {}, .. }}", self.id)
    }
}

/// `GET /auth/v1/factors/recovery-codes` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryCodesStatus {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub total: i64,
    pub remaining: i64,
}

/// `POST /auth/v1/factors/recovery-codes` (and `/regenerate`) answer: the codes, shown once.
#[derive(Clone, Serialize, Deserialize)]
pub struct RecoveryCodes {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub friendly_name: Option<String>,
    pub total: i64,
    pub codes: Vec<String>,
}

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RecoveryCodes {{ id: {}, total: {}, .. }}",
            self.id, self.total
        )
    }
}

/// `POST /auth/v1/factors/recovery-codes/verify`.
#[derive(Clone, Serialize, Deserialize)]
pub struct RecoveryCodeVerify {
    pub code: String,
}

impl std::fmt::Debug for RecoveryCodeVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCodeVerify { .. }")
    }
}

/// A recovery code in canonical form: lowercase, without whitespace or dashes.
pub fn canonical_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Normalizes an email address for lookup and storage: trimmed and lowercased.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_ignore_case_spaces_and_dashes() {
        assert_eq!(canonical_recovery_code(" AbCd-EF12 34 "), "abcdef1234");
    }

    #[test]
    fn error_codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::RefreshTokenAlreadyUsed,
            ErrorCode::OverEmailSendRateLimit,
        ] {
            let json = serde_json::to_value(code).expect("serializes");
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
    }

    #[test]
    fn emails_normalize_to_trimmed_lowercase() {
        assert_eq!(normalize_email("  Ada@Example.COM "), "ada@example.com");
    }
}
