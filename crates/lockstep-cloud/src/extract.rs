//! Request extractors and the API-key gate: everything a handler needs from a request, with
//! every rejection turned into an [`ApiError`] that names the problem.

use std::net::SocketAddr;

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State},
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use lockstep_protocol::{
    auth::{Aal, ErrorCode},
    devices::{
        APP_VERSION_HEADER, DEVICE_ID_HEADER, DEVICE_NAME_HEADER, DEVICE_PLATFORM_HEADER,
        DeviceInfo,
    },
};
use serde::de::DeserializeOwned;

use crate::{
    db::{audit, devices, sessions},
    error::ApiError,
    session_cache::SessionFacts,
    state::AppState,
    token::{JwtError, verify_access_token},
};

/// Routes reachable without an `apikey`: the email link (opened in a browser), health, landing.
fn is_open_route(method: &Method, path: &str) -> bool {
    *method == Method::GET && matches!(path, "/" | "/health" | "/auth/v1/verify")
}

/// Middleware: reads the whole request body before any handler runs, within the configured
/// size and time (`--max-body-bytes`, `--body-timeout-seconds`): a body that is too large is
/// 413, one that does not arrive in time 408, for every route alike. Handlers then only see
/// complete bodies, so a slow client never holds a handler, a lock or a connection.
pub async fn read_whole_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let refuse = |status: StatusCode, code: ErrorCode, message: String| {
        ApiError::new(status, code, message).into_response()
    };
    if has_nul(request.uri().path()) || request.uri().query().is_some_and(has_nul) {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationFailed,
            "The address contains a NUL character (%00), which no key, id or filter may hold"
                .to_owned(),
        );
    }
    let (parts, body) = request.into_parts();
    let limit = state.config.max_body_bytes;
    let wait = std::time::Duration::from_secs(state.config.body_timeout_seconds);
    let bytes = match tokio::time::timeout(wait, axum::body::to_bytes(body, limit)).await {
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                format!(
                    "The request body did not arrive within {} seconds",
                    wait.as_secs()
                ),
            );
        }
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            return if too_large {
                refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::RequestTooLarge,
                    format!("Request body is too large: at most {limit} bytes"),
                )
            } else {
                refuse(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadJson,
                    "Could not read the request body".to_owned(),
                )
            };
        }
        Ok(Ok(bytes)) => bytes,
    };
    if json_depth(&bytes) > MAX_JSON_DEPTH {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationFailed,
            format!("The body nests arrays and objects more than {MAX_JSON_DEPTH} deep"),
        );
    }
    if json_holds_nul(&bytes) {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationFailed,
            "The body contains a NUL character (\\u0000), which no text may hold".to_owned(),
        );
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// How deep a request body may nest. Far below the JSON parser's own limit (128), so that what
/// was accepted still parses when it is read back inside the envelopes of the change feed, the
/// stream and the push receipts.
pub const MAX_JSON_DEPTH: usize = 32;

/// The deepest nesting of arrays and objects in a JSON text (strings skipped), in one pass.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Whether a path or query holds a NUL, raw or percent-encoded.
fn has_nul(text: &str) -> bool {
    text.contains('\0') || percent_encoding_nul(text)
}

fn percent_encoding_nul(text: &str) -> bool {
    text.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Whether a JSON body holds a NUL in any string or key. Neither backend stores one alike
/// (PostgreSQL refuses it in text), so one rule refuses it up front for every route. The walk
/// runs only when the escape appears at all.
fn json_holds_nul(bytes: &[u8]) -> bool {
    fn walk(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(walk),
            serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || walk(v)),
            _ => false,
        }
    }
    if bytes.contains(&0) {
        return true;
    }
    if !bytes.windows(6).any(|w| w == b"\\u0000") {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| walk(&v))
}

/// Middleware: every other route needs the anon or service key, in the `apikey` header or the
/// `apikey` query parameter (as Supabase's gateway accepts).
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if is_open_route(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(request.uri().query(), "apikey"));
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::NoApiKey,
            "No API key found in request: send the anon key in the `apikey` header",
        )
        .into_response();
    };
    match state.keys.role_of(&presented) {
        Some(_) => next.run(request).await,
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidApiKey,
            "Invalid API key",
        )
        .into_response(),
    }
}

/// The decoded `key=value` pairs of a query string, in order.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// One query parameter's value (the first, if repeated).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A JSON body. Unlike axum's `Json`, every rejection is a GoTrue-style 4xx that says what is
/// wrong, and the `Content-Type` is not insisted on (see [`decode_body`]).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::RequestTooLarge,
                    "Request body is too large",
                )
            } else {
                ApiError::bad_json(format!("Could not read the request body: {rejection}"))
            }
        })?;
        decode_body(content_type.as_ref().and_then(|v| v.to_str().ok()), &bytes).map(JsonBody)
    }
}

/// Decodes a request body that should be a JSON object. A JSON `Content-Type` (or none) is
/// parsed as JSON; any other type is accepted only if the body is JSON anyway (`curl -d` sends
/// `application/x-www-form-urlencoded`), and otherwise refused with 415.
pub fn decode_body<T: DeserializeOwned>(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<T, ApiError> {
    let essence = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let declared_json =
        essence.is_empty() || essence == "application/json" || essence.ends_with("+json");
    if !declared_json && serde_json::from_slice::<serde_json::Value>(bytes).is_err() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Type {essence} is not supported: send a JSON object as application/json"
            ),
        ));
    }
    parse_json(bytes)
}

/// Parses a JSON object body into `T`, with an error that names the problem (never the value).
/// Every body this API takes is an object; serde alone would also accept an array for a struct.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_json(
            "Request body is empty: send a JSON object",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_json(format!(
            "Could not parse request body as JSON: {}",
            scrub_serde_message(&e.to_string())
        ))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_json("Request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::bad_json(format!(
            "Request body has the wrong shape: {}",
            scrub_serde_message(&e.to_string())
        ))
    })
}

/// serde quotes offending values (`invalid type: string "hunter2"`); a password must never be
/// echoed back, so quoted values are replaced.
fn scrub_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_quotes = false;
    for c in message.chars() {
        match c {
            '"' if !in_quotes => {
                in_quotes = true;
                out.push_str("\"…");
            }
            '"' => {
                in_quotes = false;
                out.push('"');
            }
            _ if in_quotes => {}
            _ => out.push(c),
        }
    }
    out
}

/// Who is calling from where: client IP, user agent and the device named in headers.
#[derive(Debug, Clone)]
pub struct ClientMeta {
    pub ip: String,
    pub user_agent: String,
    pub device: Option<DeviceInfo>,
}

/// The client's address behind `trusted_proxies` proxies: the entry that many from the right
/// of `X-Forwarded-For` (the right-most is what the nearest proxy saw). Entries further left
/// came from the client and prove nothing. `None` without trusted proxies, without the header,
/// or when the chosen entry is not an IP address.
pub fn client_ip(forwarded_for: Option<&str>, trusted_proxies: u8) -> Option<String> {
    if trusted_proxies == 0 {
        return None;
    }
    let hops: Vec<&str> = forwarded_for?.split(',').map(str::trim).collect();
    // Fewer entries than proxies: the request skipped one, so the left-most is the best known.
    let index = hops.len().saturating_sub(usize::from(trusted_proxies));
    let ip: std::net::IpAddr = hops.get(index)?.parse().ok()?;
    Some(ip.to_string())
}

impl FromRequestParts<AppState> for ClientMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        let forwarded = client_ip(
            header_str(&parts.headers, "x-forwarded-for"),
            state.config.trusted_proxies,
        );
        let user_agent = header_str(&parts.headers, header::USER_AGENT.as_str())
            .map(|ua| ua.chars().take(256).collect())
            .unwrap_or_default();
        Ok(ClientMeta {
            ip: forwarded.unwrap_or(peer),
            user_agent,
            device: device_from_headers(&parts.headers)?,
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, RFC 7235),
/// trimmed; `None` when there is none or it is empty.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, header::AUTHORIZATION.as_str())?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The device described by the `X-Lockstep-Device-*` headers, if any.
fn device_from_headers(headers: &HeaderMap) -> Result<Option<DeviceInfo>, ApiError> {
    let Some(id) = header_str(headers, DEVICE_ID_HEADER) else {
        return Ok(None);
    };
    let name = match header_str(headers, DEVICE_NAME_HEADER) {
        Some(raw) => urlencoding::decode(raw)
            .map_err(|_| {
                ApiError::validation("X-Lockstep-Device-Name must be percent-encoded UTF-8")
            })?
            .into_owned(),
        None => "Unnamed device".to_owned(),
    };
    let info = DeviceInfo {
        id: id.to_owned(),
        name,
        platform: header_str(headers, DEVICE_PLATFORM_HEADER)
            .unwrap_or("")
            .to_owned(),
        app_version: header_str(headers, APP_VERSION_HEADER)
            .unwrap_or("")
            .to_owned(),
    };
    info.validate().map_err(ApiError::validation)?;
    Ok(Some(info))
}

/// The session's facts from this node's cache, else from the database (then remembered).
/// `None` when the session does not exist.
async fn session_facts(
    state: &AppState,
    session_id: &str,
) -> Result<Option<SessionFacts>, ApiError> {
    if let Some(facts) = state.sessions.get(session_id) {
        return Ok(Some(facts));
    }
    // Before the read: if the account changes while we read, what we read is not stored.
    let ticket = state.sessions.ticket();
    let mut conn = state.db.readers.acquire().await?;
    let Some(row) = sessions::check(&mut conn, session_id).await? else {
        return Ok(None);
    };
    drop(conn);
    let facts = SessionFacts {
        user_id: row.user_id,
        device_id: row.device_id,
        aal: Aal::parse(&row.aal).unwrap_or(Aal::Aal1),
        mfa_verified_at: row.mfa_verified_at,
        device_name: row.device_name,
        has_verified_factor: row.verified_factors > 0,
    };
    state.sessions.store(ticket, session_id, facts.clone());
    Ok(Some(facts))
}

/// A signed-in caller: a valid access token whose session still exists.
#[derive(Debug, Clone)]
pub struct AuthSession {
    pub user_id: String,
    pub session_id: String,
    pub device_id: String,
    pub aal: Aal,
    pub email: String,
    /// The calling device's name, as registered.
    pub device_name: Option<String>,
    /// When the access token expires (Unix seconds).
    pub expires_at: i64,
    /// When this session last proved a second factor (Unix milliseconds).
    pub mfa_verified_at: Option<i64>,
    /// Whether the user has a verified factor (then their data needs `aal2`), read with the
    /// session.
    pub has_verified_factor: bool,
}

impl FromRequestParts<AppState> for AuthSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::NoAuthorization,
                "This endpoint requires a Bearer token",
            )
        })?;
        AuthSession::from_token(state, token).await
    }
}

impl AuthSession {
    /// Records `action`, done by this caller's device from `meta`'s address, in the user's audit
    /// log, in `conn`'s transaction.
    pub async fn audit(
        &self,
        conn: &mut sqlx::AnyConnection,
        meta: &ClientMeta,
        action: lockstep_protocol::audit::AuditAction,
        payload: serde_json::Value,
        now: i64,
    ) -> sqlx::Result<()> {
        audit::insert(
            conn,
            audit::NewEntry {
                user_id: Some(&self.user_id),
                action,
                device_id: Some(&self.device_id),
                device_name: self.device_name.as_deref(),
                ip_address: &meta.ip,
                payload,
                now,
            },
        )
        .await
    }

    /// Checks an access token: signature, expiry (by the injected clock) and that its session
    /// still exists. Also refreshes the device's last-seen time (at most once a minute).
    ///
    /// The session's row is read through this node's [`SessionCache`]: a change to the user's
    /// sessions, devices, factors or user row forgets it, so sign-out, revocation, a password
    /// change or a reused refresh token still take effect on the next request.
    ///
    /// [`SessionCache`]: crate::session_cache::SessionCache
    pub async fn from_token(state: &AppState, token: &str) -> Result<AuthSession, ApiError> {
        let claims =
            verify_access_token(&state.keys.jwt_secret, token, state.now_secs()).map_err(|e| {
                let message = match e {
                    JwtError::Expired => "invalid JWT: token is expired",
                    JwtError::Invalid => "invalid JWT: unable to parse or verify signature",
                };
                ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::BadJwt, message)
            })?;
        let facts = session_facts(state, &claims.session_id).await?;
        let Some(facts) = facts.filter(|f| f.user_id == claims.sub) else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::SessionNotFound,
                "Session from session_id claim in JWT does not exist: sign in again",
            ));
        };
        if state.sessions.claim_touch(&facts.user_id, &facts.device_id) {
            let mut conn = state.db.pool.acquire().await?;
            devices::touch(&mut conn, &facts.user_id, &facts.device_id, state.now_ms()).await?;
        }
        Ok(AuthSession {
            aal: facts.aal,
            user_id: facts.user_id,
            session_id: claims.session_id,
            device_id: facts.device_id,
            device_name: facts.device_name,
            email: claims.email,
            expires_at: claims.exp,
            mfa_verified_at: facts.mfa_verified_at,
            has_verified_factor: facts.has_verified_factor,
        })
    }

    /// Refuses an aal1 session of a user who has a verified factor: their data needs aal2. The
    /// fact was read with the session ([`AuthSession::from_token`]).
    pub fn require_data_access(&self) -> Result<(), ApiError> {
        if self.aal != Aal::Aal2 && self.has_verified_factor {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::InsufficientAal,
                "Two-factor authentication is on for this account: verify a code to continue",
            ));
        }
        Ok(())
    }

    /// The writer of changes made through this session.
    pub fn writer(&self) -> crate::sync::Writer {
        crate::sync::Writer {
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            device_name: self.device_name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_an_empty_token_is_none() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&headers).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc"), Some("abc".into()));
        assert_eq!(with("bearer  abc "), Some("abc".into()));
        assert_eq!(with("BEARER abc"), Some("abc".into()));
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearerabc"), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[{{"}]}"#), 3);
        assert_eq!(json_depth(br#""\"[[""#), 0);
        assert_eq!(json_depth(b"1"), 0);
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert_eq!(json_depth(deep.as_bytes()), 40);
    }

    #[test]
    fn nul_characters_are_found_in_strings_keys_and_percent_escapes() {
        assert!(json_holds_nul(br#"{"key":"a\u0000b"}"#));
        assert!(json_holds_nul(br#"{"a\u0000":1}"#));
        assert!(
            !json_holds_nul(br#"{"key":"a\\u0000b"}"#),
            "an escaped backslash is text"
        );
        assert!(!json_holds_nul(br#"{"key":"ab"}"#));
        assert!(has_nul("/rest/v1/user_settings?key=eq.a%00"));
        assert!(!has_nul("/rest/v1/user_settings?key=eq.a%2500"));
    }

    #[test]
    fn the_client_ip_is_counted_from_the_right_of_x_forwarded_for() {
        let spoofed = Some("6.6.6.6, 203.0.113.7");
        assert_eq!(
            client_ip(spoofed, 0),
            None,
            "no proxies: the header is ignored"
        );
        assert_eq!(client_ip(spoofed, 1).as_deref(), Some("203.0.113.7"));
        assert_eq!(
            client_ip(Some("6.6.6.6, 203.0.113.7, 10.0.0.2"), 2).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            client_ip(Some("203.0.113.7"), 2).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(client_ip(Some("6.6.6.6, not-an-ip"), 1), None);
        assert_eq!(client_ip(None, 1), None);
    }

    #[test]
    fn serde_messages_lose_quoted_values() {
        let scrubbed = scrub_serde_message("invalid type: string \"hunter2\", expected a map");
        assert!(!scrubbed.contains("hunter2"));
        assert!(scrubbed.contains("expected a map"));
    }

    #[test]
    fn device_headers_are_decoded_and_validated() {
        let mut headers = HeaderMap::new();
        assert!(
            device_from_headers(&headers)
                .expect("no headers is fine")
                .is_none()
        );
        headers.insert(DEVICE_ID_HEADER, "laptop-1".parse().expect("header"));
        headers.insert(
            DEVICE_NAME_HEADER,
            "Work%20laptop%20%E2%9C%93".parse().expect("header"),
        );
        let info = device_from_headers(&headers)
            .expect("valid")
            .expect("present");
        assert_eq!(info.name, "Work laptop ✓");
        headers.insert(DEVICE_ID_HEADER, "bad id!".parse().expect("header"));
        assert!(device_from_headers(&headers).is_err());
    }
}
