//! One error type for every handler, extractor and middleware. An error says what went wrong
//! (a GoTrue `error_code`, or a PostgREST-only code); the shape of its answer is chosen once,
//! by the route prefix, in [`render_errors`]: PostgREST's under `/rest/v1`, GoTrue's elsewhere
//! (its 2024 shape under `/auth/v1` when asked for). Server faults are logged in full and
//! answered generically.

use std::borrow::Cow;

use axum::{
    Json,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use lockstep_protocol::{
    auth::{API_VERSION_2024, API_VERSION_HEADER},
    errors::{Code, ErrorCode, RestCode, RestError},
};
use serde_json::json;

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug)]
pub enum ApiError {
    /// A GoTrue-style error: status, `error_code`, human message.
    Auth {
        status: StatusCode,
        code: ErrorCode,
        message: Cow<'static, str>,
        /// Seconds, for 429 answers.
        retry_after: Option<u64>,
        /// `weak_password.reasons`, for `weak_password`.
        reasons: Option<Vec<&'static str>>,
    },
    /// OAuth-style error of the token endpoint's grant handling.
    OAuth {
        error: &'static str,
        description: Cow<'static, str>,
    },
    /// A PostgREST-style error.
    Rest {
        status: StatusCode,
        code: Code,
        message: Cow<'static, str>,
        details: Option<String>,
    },
    /// A fault of ours: logged, never shown.
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::Auth {
            status,
            code,
            message: message.into(),
            retry_after: None,
            reasons: None,
        }
    }

    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationFailed,
            message,
        )
    }

    pub fn bad_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadJson, message)
    }

    pub fn rate_limited(code: ErrorCode, retry_after_secs: u64) -> Self {
        ApiError::Auth {
            status: StatusCode::TOO_MANY_REQUESTS,
            code,
            message: Cow::Owned(format!(
                "Too many requests. For security purposes, try again in {retry_after_secs} seconds."
            )),
            retry_after: Some(retry_after_secs),
            reasons: None,
        }
    }

    /// The server is saturated: 503 with `Retry-After`, answered at once rather than after a
    /// long wait, so clients back off and other users keep being served.
    pub fn busy(what: &str, retry_after_secs: u64) -> Self {
        ApiError::Auth {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::RequestTimeout,
            message: Cow::Owned(format!(
                "The server is busy ({what}): try again in {retry_after_secs} seconds."
            )),
            retry_after: Some(retry_after_secs),
            reasons: None,
        }
    }

    pub fn rest(
        status: StatusCode,
        code: impl Into<Code>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError::Rest {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth { status, .. } | ApiError::Rest { status, .. } => *status,
            ApiError::OAuth { .. } => StatusCode::BAD_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The auth error code, if this is an auth error (for tests and logs).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Auth { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolTimedOut) {
            return ApiError::busy("all database connections are in use", 1);
        }
        ApiError::Internal(e.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // A saturated pool is busy wherever the error passed through, never a 500.
        if e.chain()
            .any(|cause| matches!(cause.downcast_ref(), Some(sqlx::Error::PoolTimedOut)))
        {
            return ApiError::busy("all database connections are in use", 1);
        }
        ApiError::Internal(e)
    }
}

/// What an auth-kind error says, carried on its response so that [`render_errors`] can answer
/// it in the shape of the route prefix it was raised under, wherever it was raised (a handler,
/// an extractor, or a middleware in front of every route).
#[derive(Debug, Clone)]
struct ErrorParts {
    code: ErrorCode,
    message: String,
}

impl IntoResponse for ApiError {
    /// Renders GoTrue's legacy shape for an auth-kind error (re-rendered by [`render_errors`]
    /// under `/rest/v1`, or with `X-Supabase-Api-Version: 2024-01-01` under `/auth/v1`), and
    /// PostgREST's for a PostgREST-only one.
    fn into_response(self) -> Response {
        match self {
            ApiError::Auth {
                status,
                code,
                message,
                retry_after,
                reasons,
            } => {
                let mut body = json!({
                    "code": status.as_u16(),
                    "error_code": code.as_str(),
                    "msg": message,
                });
                if let Some(reasons) = &reasons {
                    body["weak_password"] = json!({ "reasons": reasons });
                }
                let mut response = (status, Json(body)).into_response();
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                response.extensions_mut().insert(ErrorParts {
                    code,
                    message: message.into_owned(),
                });
                response
            }
            ApiError::OAuth { error, description } => (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": error, "error_description": description })),
            )
                .into_response(),
            ApiError::Rest {
                status,
                code,
                message,
                details,
            } => postgrest_response(status, &code, &message, details.as_deref()),
            ApiError::Internal(err) => {
                tracing::error!(error = ?err, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::UnexpectedFailure,
                    "Unexpected failure, please try again",
                )
                .into_response()
            }
        }
    }
}

fn postgrest_response(
    status: StatusCode,
    code: &Code,
    message: &str,
    details: Option<&str>,
) -> Response {
    let body =
        json!({ "code": code.as_str(), "message": message, "details": details, "hint": null });
    (status, Json(body)).into_response()
}

/// The shape errors take under a route prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorShape {
    /// GoTrue's legacy `{code: <status>, error_code, msg}`: `/auth/v1` by default, the stream
    /// (`/realtime/v1`), and everything else.
    GoTrue,
    /// GoTrue's `{code: <error_code>, message}`, under `/auth/v1` with
    /// `X-Supabase-Api-Version: 2024-01-01` (echoed back).
    GoTrue2024,
    /// PostgREST's `{code, message, details, hint}`, under `/rest/v1`.
    PostgRest,
}

impl ErrorShape {
    fn of(request: &Request) -> ErrorShape {
        let path = request.uri().path();
        if path.starts_with("/rest/") {
            ErrorShape::PostgRest
        } else if path.starts_with("/auth/")
            && request
                .headers()
                .get(API_VERSION_HEADER)
                .is_some_and(|v| v.as_bytes() == API_VERSION_2024.as_bytes())
        {
            ErrorShape::GoTrue2024
        } else {
            ErrorShape::GoTrue
        }
    }
}

/// How an auth-kind error is answered under `/rest/v1`: PostgREST's status, code and
/// `details` where PostgREST has its own (no JWT, a bad or expired one, an ended session, an
/// unreadable body), else the same status and the GoTrue code itself (`insufficient_aal`,
/// `over_request_rate_limit`, `no_api_key`, `request_timeout` when busy, …).
fn postgrest_error(
    status: StatusCode,
    code: ErrorCode,
) -> (StatusCode, Code, Option<&'static str>) {
    match code {
        ErrorCode::NoAuthorization => (
            StatusCode::UNAUTHORIZED,
            RestCode::AnonymousAccess.into(),
            None,
        ),
        ErrorCode::BadJwt | ErrorCode::SessionExpired => {
            (StatusCode::UNAUTHORIZED, RestCode::InvalidJwt.into(), None)
        }
        // 401, not GoTrue's 403: the client must sign in again, which `details` tells apart
        // from an expired token (refresh).
        ErrorCode::SessionNotFound => (
            StatusCode::UNAUTHORIZED,
            RestCode::InvalidJwt.into(),
            Some(RestError::SESSION_ENDED.as_str()),
        ),
        ErrorCode::BadJson | ErrorCode::RequestTooLarge | ErrorCode::ValidationFailed => {
            (status, RestCode::InvalidBody.into(), None)
        }
        ErrorCode::RequestTimeout if status == StatusCode::REQUEST_TIMEOUT => {
            (status, RestCode::InvalidBody.into(), None)
        }
        other => (status, other.into(), None),
    }
}

/// The outermost middleware: answers every auth-kind error in the shape of its route prefix
/// (`ErrorShape`), so handlers, extractors and the middlewares in front of all routes raise
/// one [`ApiError`] and never choose a shape.
pub async fn render_errors(request: Request, next: Next) -> Response {
    let shape = ErrorShape::of(&request);
    let mut response = next.run(request).await;
    if shape == ErrorShape::GoTrue2024 {
        response.headers_mut().insert(
            API_VERSION_HEADER,
            HeaderValue::from_static(API_VERSION_2024),
        );
    }
    let Some(parts) = response.extensions_mut().remove::<ErrorParts>() else {
        return response;
    };
    let status = response.status();
    let mut rendered = match shape {
        // Rendered so already.
        ErrorShape::GoTrue => return response,
        ErrorShape::GoTrue2024 => (
            status,
            Json(json!({ "code": parts.code.as_str(), "message": parts.message })),
        )
            .into_response(),
        ErrorShape::PostgRest => {
            let (status, code, details) = postgrest_error(status, parts.code);
            postgrest_response(status, &code, &parts.message, details)
        }
    };
    // The first rendering's headers (`Retry-After`, the version echo), not its body's.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rendered.headers_mut().append(name.clone(), value.clone());
        }
    }
    rendered
}
