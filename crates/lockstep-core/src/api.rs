//! A typed HTTP client for `lockstep-cloud` (Supabase's wire format).
//!
//! Stateless: every call that needs a session takes the access token. Keeping the session
//! fresh (single-flight refresh) is [`crate::session`]'s job.

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use lockstep_protocol::{
    audit::AuditEntry,
    auth::{
        ChallengeResponse, EnrollRequest, EnrollResponse, FactorSecret, MfaVerifyRequest,
        PasswordGrant, RecoverRequest, RecoveryCodeVerify, RecoveryCodes, RecoveryCodesStatus,
        RefreshGrant, ResendRequest, Session, SignupRequest, UpdateUserRequest, User,
        VerificationType, VerifyRequest,
    },
    devices::{Device, DeviceInfo},
    errors::{Code, ErrorCode, RestCode, RestError},
    sync::{ChangesPage, PushRequest, PushResponse, SettingRow},
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// What went wrong talking to the server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No answer (offline, server down, timeout): worth retrying later.
    #[error("cannot reach the Lockstep server: {0}")]
    Unreachable(String),
    /// The server answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Server {
        status: u16,
        code: Code,
        /// For an ended session under `/rest/v1`: the server said it ended (signed out or
        /// revoked), not merely that the token expired ([`RestError::session_ended`]).
        session_ended: bool,
        message: String,
        /// The `Retry-After` header in seconds, when the server sent one.
        retry_after_secs: Option<u64>,
    },
    /// The server answered something this client cannot read.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

impl ApiError {
    /// The server's error code (`invalid_credentials`, `insufficient_aal`, `PGRST301`, …).
    pub fn code(&self) -> Option<&Code> {
        match self {
            ApiError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's message.
    pub fn message(&self) -> &str {
        match self {
            ApiError::Server { message, .. } => message,
            ApiError::Unreachable(m) | ApiError::Decode(m) => m,
        }
    }

    /// The session is gone (signed out, revoked, refresh token reused): sign in again.
    pub fn is_session_gone(&self) -> bool {
        match self {
            ApiError::Server {
                code: Code::Auth(code),
                ..
            } => matches!(
                code,
                ErrorCode::SessionNotFound
                    | ErrorCode::RefreshTokenNotFound
                    | ErrorCode::RefreshTokenAlreadyUsed
            ),
            ApiError::Server {
                code: Code::Rest(RestCode::InvalidJwt),
                session_ended,
                ..
            } => *session_ended,
            _ => false,
        }
    }

    /// The access token expired or is invalid: refresh and retry.
    pub fn is_token_expired(&self) -> bool {
        match self.code() {
            Some(Code::Auth(ErrorCode::BadJwt)) => true,
            Some(Code::Rest(RestCode::InvalidJwt)) => !self.is_session_gone(),
            _ => false,
        }
    }

    /// The account has two-factor authentication on and this session must step up.
    pub fn needs_second_factor(&self) -> bool {
        self.code() == Some(&Code::Auth(ErrorCode::InsufficientAal))
    }

    /// Worth retrying unchanged later: network trouble, a server fault (5xx), a timeout (408)
    /// or too many requests (429, see [`ApiError::retry_after`]).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Unreachable(_) => true,
            ApiError::Server { status, .. } => *status >= 500 || matches!(*status, 408 | 429),
            ApiError::Decode(_) => false,
        }
    }

    /// The server refused the request for good: a 4xx that sending it again unchanged cannot
    /// fix (schema, limits, a key it no longer accepts). Not a session, token or second-factor
    /// problem, and not a timeout or rate limit.
    pub fn is_refusal(&self) -> bool {
        match self {
            ApiError::Server { status, .. } => {
                (400..500).contains(status)
                    && !matches!(*status, 401 | 403)
                    && !self.is_transient()
                    && !self.is_session_gone()
                    && !self.is_token_expired()
                    && !self.needs_second_factor()
            }
            _ => false,
        }
    }

    /// How long the server asked us to wait before trying again (`Retry-After` on a 429 or
    /// 503), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Server {
                retry_after_secs: Some(secs),
                ..
            } => Some(Duration::from_secs(*secs)),
            _ => None,
        }
    }
}

/// The client of one server, for one device.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    anon_key: String,
    /// Shared by every clone, so a new name ([`Client::set_device_name`]) goes out in the
    /// headers of every later request, whichever clone makes it.
    device: Arc<RwLock<DeviceInfo>>,
}

impl Client {
    pub fn new(server: &str, anon_key: &str, device: DeviceInfo) -> Result<Client, ApiError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("lockstep-core/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        Ok(Client {
            http,
            base: server.trim_end_matches('/').to_owned(),
            anon_key: anon_key.to_owned(),
            device: Arc::new(RwLock::new(device)),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn anon_key(&self) -> &str {
        &self.anon_key
    }

    /// This device as the client describes it (a copy: the name may change).
    pub fn device(&self) -> DeviceInfo {
        self.device
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Renames this device in what every clone of the client sends from now on (the device
    /// headers, the device described at sign-in).
    pub fn set_device_name(&self, name: &str) {
        self.device
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .name = name.to_owned();
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let device = self.device();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("apikey", &self.anon_key)
            .header(lockstep_protocol::devices::DEVICE_ID_HEADER, &device.id)
            .header(
                lockstep_protocol::devices::DEVICE_NAME_HEADER,
                url_encode(&device.name),
            );
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req
    }

    async fn send<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ApiError> {
        let response = req
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(server_error(status, &bytes, retry_after));
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| ApiError::Decode(e.to_string()))
    }

    async fn send_empty(&self, req: RequestBuilder) -> Result<(), ApiError> {
        self.send::<Value>(req).await.map(drop)
    }

    pub async fn signup(&self, email: &str, password: &str) -> Result<Session, ApiError> {
        let body = SignupRequest {
            email: email.into(),
            password: password.into(),
            data: None,
            device: Some(self.device()),
        };
        self.send(
            self.request(Method::POST, "/auth/v1/signup", None)
                .json(&body),
        )
        .await
    }

    pub async fn sign_in(&self, email: &str, password: &str) -> Result<Session, ApiError> {
        let body = PasswordGrant {
            email: email.into(),
            password: password.into(),
            device: Some(self.device()),
        };
        self.send(
            self.request(Method::POST, "/auth/v1/token?grant_type=password", None)
                .json(&body),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, ApiError> {
        let body = RefreshGrant {
            refresh_token: refresh_token.into(),
        };
        self.send(
            self.request(
                Method::POST,
                "/auth/v1/token?grant_type=refresh_token",
                None,
            )
            .json(&body),
        )
        .await
    }

    pub async fn user(&self, token: &str) -> Result<User, ApiError> {
        self.send(self.request(Method::GET, "/auth/v1/user", Some(token)))
            .await
    }

    /// `scope`: `local`, `others` or `global`.
    pub async fn logout(&self, token: &str, scope: &str) -> Result<(), ApiError> {
        self.send_empty(self.request(
            Method::POST,
            &format!("/auth/v1/logout?scope={scope}"),
            Some(token),
        ))
        .await
    }

    pub async fn push(&self, token: &str, push: &PushRequest) -> Result<PushResponse, ApiError> {
        self.send(
            self.request(Method::POST, "/rest/v1/rpc/push_settings", Some(token))
                .json(push),
        )
        .await
    }

    /// Every synced row of the user, tombstones included (a full pull).
    pub async fn pull(&self, token: &str) -> Result<Vec<SettingRow>, ApiError> {
        self.send(self.request(Method::GET, "/rest/v1/user_settings?select=*", Some(token)))
            .await
    }

    pub async fn changes(
        &self,
        token: &str,
        since: i64,
        limit: u32,
    ) -> Result<ChangesPage, ApiError> {
        let path = format!("/rest/v1/rpc/changes?since={since}&limit={limit}");
        self.send(self.request(Method::GET, &path, Some(token)))
            .await
    }

    pub async fn devices(&self, token: &str) -> Result<Vec<Device>, ApiError> {
        self.send(self.request(
            Method::GET,
            "/rest/v1/devices?order=last_seen_at.desc",
            Some(token),
        ))
        .await
    }

    pub async fn rename_device(
        &self,
        token: &str,
        device_id: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let path = format!("/rest/v1/devices?id=eq.{}", url_encode(device_id));
        self.send_empty(
            self.request(Method::PATCH, &path, Some(token))
                .json(&json!({ "name": name })),
        )
        .await
    }

    pub async fn revoke_device(&self, token: &str, device_id: &str) -> Result<(), ApiError> {
        let path = format!("/rest/v1/devices?id=eq.{}", url_encode(device_id));
        self.send_empty(self.request(Method::DELETE, &path, Some(token)))
            .await
    }

    pub async fn activity(&self, token: &str, limit: u32) -> Result<Vec<AuditEntry>, ApiError> {
        let path = format!("/rest/v1/audit_log_entries?order=created_at.desc&limit={limit}");
        self.send(self.request(Method::GET, &path, Some(token)))
            .await
    }

    pub async fn enroll_totp(
        &self,
        token: &str,
        friendly_name: &str,
    ) -> Result<EnrollResponse, ApiError> {
        let body = EnrollRequest {
            factor_type: "totp".into(),
            friendly_name: Some(friendly_name.into()),
            issuer: None,
        };
        self.send(
            self.request(Method::POST, "/auth/v1/factors", Some(token))
                .json(&body),
        )
        .await
    }

    /// Challenge and verify in one go: the session raised to aal2.
    pub async fn verify_totp(
        &self,
        token: &str,
        factor_id: &str,
        code: &str,
    ) -> Result<Session, ApiError> {
        let path = format!("/auth/v1/factors/{factor_id}/challenge");
        let challenge: ChallengeResponse = self
            .send(
                self.request(Method::POST, &path, Some(token))
                    .json(&json!({})),
            )
            .await?;
        let body = MfaVerifyRequest {
            challenge_id: challenge.id,
            code: code.into(),
        };
        let path = format!("/auth/v1/factors/{factor_id}/verify");
        self.send(self.request(Method::POST, &path, Some(token)).json(&body))
            .await
    }

    pub async fn unenroll(&self, token: &str, factor_id: &str) -> Result<(), ApiError> {
        self.send_empty(self.request(
            Method::DELETE,
            &format!("/auth/v1/factors/{factor_id}"),
            Some(token),
        ))
        .await
    }

    pub async fn factor_secret(
        &self,
        token: &str,
        factor_id: &str,
    ) -> Result<FactorSecret, ApiError> {
        self.send(self.request(
            Method::GET,
            &format!("/auth/v1/factors/{factor_id}/secret"),
            Some(token),
        ))
        .await
    }

    pub async fn generate_recovery_codes(&self, token: &str) -> Result<RecoveryCodes, ApiError> {
        self.send(
            self.request(Method::POST, "/auth/v1/factors/recovery-codes", Some(token))
                .json(&json!({})),
        )
        .await
    }

    pub async fn verify_recovery_code(&self, token: &str, code: &str) -> Result<Session, ApiError> {
        let body = RecoveryCodeVerify { code: code.into() };
        self.send(
            self.request(
                Method::POST,
                "/auth/v1/factors/recovery-codes/verify",
                Some(token),
            )
            .json(&body),
        )
        .await
    }

    /// `POST /auth/v1/resend` `{type, email}`: mails the confirmation again. The server answers
    /// `{}` whether or not it sent anything (it sends at most one mail per interval per address).
    pub async fn resend(&self, kind: VerificationType, email: &str) -> Result<(), ApiError> {
        let body = ResendRequest {
            kind,
            email: email.into(),
        };
        self.send_empty(
            self.request(Method::POST, "/auth/v1/resend", None)
                .json(&body),
        )
        .await
    }

    /// `POST /auth/v1/recover` `{email}`: mails a password-reset code (and link). The same `{}`
    /// answers every address, known or not.
    pub async fn recover(&self, email: &str) -> Result<(), ApiError> {
        let body = RecoverRequest {
            email: email.into(),
        };
        self.send_empty(
            self.request(Method::POST, "/auth/v1/recover", None)
                .json(&body),
        )
        .await
    }

    /// `POST /auth/v1/verify` `{type, token, email}`: redeems an emailed code. Answers a new
    /// session for this device.
    pub async fn verify_email_code(
        &self,
        kind: VerificationType,
        email: &str,
        code: &str,
    ) -> Result<Session, ApiError> {
        let body = VerifyRequest {
            kind,
            token_hash: None,
            token: Some(code.into()),
            email: Some(email.into()),
            device: Some(self.device()),
        };
        self.send(
            self.request(Method::POST, "/auth/v1/verify", None)
                .json(&body),
        )
        .await
    }

    /// `PUT /auth/v1/user` `{password}`: the server signs every other session out.
    pub async fn update_password(&self, token: &str, password: &str) -> Result<User, ApiError> {
        let body = UpdateUserRequest {
            email: None,
            password: Some(password.into()),
            data: None,
        };
        self.send(
            self.request(Method::PUT, "/auth/v1/user", Some(token))
                .json(&body),
        )
        .await
    }

    /// `GET /auth/v1/factors/recovery-codes`: how many codes there are and how many are left
    /// (404 `mfa_factor_not_found` before any were generated).
    pub async fn recovery_codes_status(
        &self,
        token: &str,
    ) -> Result<RecoveryCodesStatus, ApiError> {
        self.send(self.request(Method::GET, "/auth/v1/factors/recovery-codes", Some(token)))
            .await
    }

    /// `POST /auth/v1/factors/recovery-codes/regenerate`: a new set (the old codes stop
    /// working). Needs a code verified within the last few minutes.
    pub async fn regenerate_recovery_codes(&self, token: &str) -> Result<RecoveryCodes, ApiError> {
        self.send(
            self.request(
                Method::POST,
                "/auth/v1/factors/recovery-codes/regenerate",
                Some(token),
            )
            .json(&json!({})),
        )
        .await
    }
}

/// Reads either error shape (GoTrue legacy or 2024, PostgREST) into one.
fn server_error(status: StatusCode, body: &[u8], retry_after_secs: Option<u64>) -> ApiError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    let code = text("error_code")
        .or_else(|| text("code"))
        .or_else(|| text("error"))
        .map_or_else(
            || Code::Other(format!("http_{}", status.as_u16())),
            |code| Code::parse(&code),
        );
    let session_ended =
        serde_json::from_value::<RestError>(value.clone()).is_ok_and(|rest| rest.session_ended());
    let message = text("msg")
        .or_else(|| text("message"))
        .or_else(|| text("error_description"))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    ApiError::Server {
        status: status.as_u16(),
        code,
        session_ended,
        message,
        retry_after_secs,
    }
}

/// Percent-encodes `s` for a header value or a query parameter (RFC 3986 unreserved kept).
fn url_encode(s: &str) -> String {
    urlencoding::encode(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_error_shapes_are_read() {
        let legacy = server_error(
            StatusCode::BAD_REQUEST,
            br#"{"code":400,"error_code":"invalid_credentials","msg":"Invalid login credentials"}"#,
            None,
        );
        assert_eq!(
            legacy.code(),
            Some(&Code::Auth(ErrorCode::InvalidCredentials))
        );
        assert_eq!(
            legacy.to_string(),
            "Invalid login credentials (invalid_credentials, HTTP 400)"
        );
        let rest = server_error(
            StatusCode::FORBIDDEN,
            br#"{"code":"insufficient_aal","message":"verify","details":null,"hint":null}"#,
            None,
        );
        assert!(rest.needs_second_factor());
        let empty = server_error(StatusCode::BAD_GATEWAY, b"", None);
        assert_eq!(empty.code(), Some(&Code::Other("http_502".into())));
        assert!(empty.is_transient());
    }

    #[test]
    fn only_a_4xx_that_retrying_cannot_fix_is_a_refusal() {
        let error = |status: u16, body: &[u8]| {
            server_error(StatusCode::from_u16(status).unwrap(), body, None)
        };
        let schema = error(400, br#"{"code":"22023","message":"appearance.theme: no"}"#);
        assert!(schema.is_refusal() && !schema.is_transient());
        assert!(error(409, br#"{"code":"23505","message":"reused"}"#).is_refusal());
        assert!(error(413, b"").is_refusal());
        for (status, body) in [
            (401, &br#"{"code":"PGRST301","message":"JWT expired"}"#[..]),
            (401, br#"{"code":"PGRST301","message":"the session ended"}"#),
            (403, br#"{"code":"insufficient_aal","message":"verify"}"#),
            (408, b""),
            (429, b""),
            (500, b""),
            (503, b""),
        ] {
            assert!(!error(status, body).is_refusal(), "{status} {body:?}");
        }
        let limited = server_error(StatusCode::TOO_MANY_REQUESTS, b"", Some(7));
        assert!(limited.is_transient());
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn an_ended_session_is_told_from_an_expired_token_by_its_details_not_its_wording() {
        let body = |message: &str, details: Option<&str>| {
            serde_json::to_vec(&RestError {
                code: RestCode::InvalidJwt.as_str().into(),
                message: message.into(),
                details: details.map(str::to_owned),
                hint: None,
            })
            .unwrap()
        };
        let ended = server_error(
            StatusCode::UNAUTHORIZED,
            &body("JWT expired", Some(RestError::SESSION_ENDED.as_str())),
            None,
        );
        assert!(ended.is_session_gone() && !ended.is_token_expired());
        let expired = server_error(
            StatusCode::UNAUTHORIZED,
            &body("the session of this JWT ended", None),
            None,
        );
        assert!(!expired.is_session_gone() && expired.is_token_expired());
    }

    #[test]
    fn device_names_are_percent_encoded() {
        assert_eq!(url_encode("Work laptop ✓"), "Work%20laptop%20%E2%9C%93");
    }
}

/// Why a server cannot be connected to, each naming the URL as given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServerCheckError {
    #[error("{url} is not a web address: it must start with http:// or https:// and name a host")]
    NotAnAddress { url: String },
    #[error("nothing answers at {url} ({reason}): check the address and that the server runs")]
    Unreachable { url: String, reason: String },
    #[error("{url} answers, but it is not a Lockstep server (no /auth/v1/settings there)")]
    NotLockstep { url: String },
    #[error("the server at {url} does not take that anon key: copy it again from the server")]
    WrongAnonKey { url: String },
    #[error("the server at {url} has a problem (HTTP {status}): try again later")]
    ServerTrouble { url: String, status: u16 },
}

/// Checks, before a profile is set up with them, that `server` is a Lockstep server (its
/// auth settings answer, as Supabase's do) and that it takes `anon_key`.
pub async fn check_server(server: &str, anon_key: &str) -> Result<(), ServerCheckError> {
    let url = server.trim().to_owned();
    let parsed = reqwest::Url::parse(&url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    let Some(parsed) = parsed else {
        return Err(ServerCheckError::NotAnAddress { url });
    };
    let settings = format!("{}/auth/v1/settings", parsed.as_str().trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("lockstep-core/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ServerCheckError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let response = http
        .get(settings)
        .header("apikey", anon_key.trim())
        .send()
        .await
        .map_err(|e| ServerCheckError::Unreachable {
            url: url.clone(),
            reason: e.without_url().to_string(),
        })?;
    let status = response.status();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Err(ServerCheckError::WrongAnonKey { url });
    }
    if status.is_server_error() {
        return Err(ServerCheckError::ServerTrouble {
            url,
            status: status.as_u16(),
        });
    }
    // Supabase's auth settings name the sign-in providers under `external`.
    let body: Option<Value> = response.json().await.ok();
    if !status.is_success() || body.as_ref().and_then(|b| b.get("external")).is_none() {
        return Err(ServerCheckError::NotLockstep { url });
    }
    Ok(())
}
