//! The error vocabularies of the wire: GoTrue's `error_code`s ([`ErrorCode`]) and the PostgREST
//! codes lockstep-cloud answers ([`RestCode`]), each defined once with its text, so the server
//! that writes a code and the client that acts on it cannot disagree; plus the error bodies.

use std::fmt;

use serde::{Deserialize, Serialize};

codes! {
    /// Machine-readable auth error codes (GoTrue's `error_code`).
    pub enum ErrorCode {
        ValidationFailed = "validation_failed",
        BadJson = "bad_json",
        EmailAddressInvalid = "email_address_invalid",
        EmailExists = "email_exists",
        UserAlreadyExists = "user_already_exists",
        WeakPassword = "weak_password",
        SamePassword = "same_password",
        InvalidCredentials = "invalid_credentials",
        EmailNotConfirmed = "email_not_confirmed",
        SignupDisabled = "signup_disabled",
        BadJwt = "bad_jwt",
        NoAuthorization = "no_authorization",
        NoApiKey = "no_api_key",
        InvalidApiKey = "invalid_api_key",
        OtpExpired = "otp_expired",
        SessionNotFound = "session_not_found",
        SessionExpired = "session_expired",
        RefreshTokenNotFound = "refresh_token_not_found",
        RefreshTokenAlreadyUsed = "refresh_token_already_used",
        UserNotFound = "user_not_found",
        InsufficientAal = "insufficient_aal",
        /// A step needs a TOTP verification in this session within the last few minutes.
        ReauthenticationNeeded = "reauthentication_needed",
        MfaVerificationFailed = "mfa_verification_failed",
        MfaChallengeExpired = "mfa_challenge_expired",
        MfaFactorNotFound = "mfa_factor_not_found",
        MfaFactorNameConflict = "mfa_factor_name_conflict",
        TooManyEnrolledMfaFactors = "too_many_enrolled_mfa_factors",
        MfaRecoveryCodesSoleFactor = "mfa_recovery_codes_sole_factor",
        MfaVerifiedFactorExists = "mfa_verified_factor_exists",
        OverRequestRateLimit = "over_request_rate_limit",
        OverEmailSendRateLimit = "over_email_send_rate_limit",
        RequestTooLarge = "request_too_large",
        NotFound = "not_found",
        MethodNotAllowed = "method_not_allowed",
        UnsupportedMediaType = "unsupported_media_type",
        /// The server is saturated (password hashing queue, database pool): retry after the
        /// `Retry-After` seconds.
        RequestTimeout = "request_timeout",
        UnexpectedFailure = "unexpected_failure",
    }
}

codes! {
    /// The PostgREST (and PostgreSQL SQLSTATE) codes lockstep-cloud answers under `/rest/v1`.
    pub enum RestCode {
        /// A query string that cannot be parsed (filter, order, select).
        QueryParse = "PGRST100",
        /// A request body that cannot be read (not JSON, wrong shape).
        InvalidBody = "PGRST102",
        /// `application/vnd.pgrst.object+json` asked for one row; there were more or none.
        NotSingular = "PGRST116",
        /// A column in the body that the table does not have.
        UnknownColumn = "PGRST204",
        /// A table that does not exist.
        UnknownTable = "PGRST205",
        /// The JWT is invalid, expired, or its session ended (see [`RestError::session_ended`]).
        InvalidJwt = "PGRST301",
        /// No JWT: anonymous access is not allowed.
        AnonymousAccess = "PGRST302",
        /// An upsert would touch the same row twice.
        CardinalityViolation = "21000",
        /// A value the schema refuses (a setting, a device name, a push).
        InvalidParameter = "22023",
        /// A row with that key exists already.
        UniqueViolation = "23505",
        /// The row belongs to someone else (row-level security).
        InsufficientPrivilege = "42501",
        /// A filter or order on a column that does not exist.
        UndefinedColumn = "42703",
        /// `on_conflict` names columns without a unique constraint.
        NoConflictTarget = "42P10",
    }
}

/// Any code an error body carries: one of ours, or one this build does not know (kept as text,
/// e.g. a newer server's, or `http_502` for an answer without a body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Auth(ErrorCode),
    Rest(RestCode),
    Other(String),
}

impl Code {
    /// Reads a code's wire text. The two vocabularies share no text (checked by a test).
    pub fn parse(text: &str) -> Code {
        ErrorCode::parse(text)
            .map(Code::Auth)
            .or_else(|| RestCode::parse(text).map(Code::Rest))
            .unwrap_or_else(|| Code::Other(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Code::Auth(code) => code.as_str(),
            Code::Rest(code) => code.as_str(),
            Code::Other(text) => text,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for Code {
    fn from(code: ErrorCode) -> Code {
        Code::Auth(code)
    }
}

impl From<RestCode> for Code {
    fn from(code: RestCode) -> Code {
        Code::Rest(code)
    }
}

/// The legacy auth error body (no `X-Supabase-Api-Version` header).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegacyAuthError {
    pub code: u16,
    pub error_code: String,
    pub msg: String,
}

/// The auth error body for `X-Supabase-Api-Version: 2024-01-01`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthError {
    pub code: String,
    pub message: String,
}

/// PostgREST's error body for `/rest/v1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestError {
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
}

impl RestError {
    /// The `details` of a [`RestCode::InvalidJwt`] answer whose session has ended (signed out,
    /// or the device revoked): the client must sign in again rather than refresh.
    pub const SESSION_ENDED: ErrorCode = ErrorCode::SessionNotFound;

    /// Whether this answer says the session ended (not merely that the token expired).
    pub fn session_ended(&self) -> bool {
        self.code == RestCode::InvalidJwt.as_str()
            && self.details.as_deref() == Some(Self::SESSION_ENDED.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_and_no_text_names_two() {
        let mut texts = BTreeSet::new();
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(Code::parse(code.as_str()), Code::Auth(code));
            assert!(texts.insert(code.as_str()), "{code} twice");
        }
        for &code in RestCode::ALL {
            assert_eq!(RestCode::parse(code.as_str()), Some(code));
            assert_eq!(Code::parse(code.as_str()), Code::Rest(code));
            assert!(texts.insert(code.as_str()), "{code} twice");
        }
        assert_eq!(Code::parse("http_502"), Code::Other("http_502".into()));
    }

    #[test]
    fn codes_serialise_as_their_wire_text() {
        assert_eq!(
            serde_json::to_string(&ErrorCode::InsufficientAal).unwrap(),
            r#""insufficient_aal""#
        );
        assert_eq!(
            serde_json::to_string(&RestCode::InvalidJwt).unwrap(),
            r#""PGRST301""#
        );
        let read: ErrorCode = serde_json::from_str(r#""session_not_found""#).unwrap();
        assert_eq!(read, ErrorCode::SessionNotFound);
        assert!(serde_json::from_str::<ErrorCode>(r#""no_such_code""#).is_err());
    }
}
