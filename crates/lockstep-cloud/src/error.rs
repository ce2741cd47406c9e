//! One error type for every handler. Auth routes answer GoTrue's shapes (legacy or
//! `X-Supabase-Api-Version: 2024-01-01`, chosen by [`negotiate_error_shape`]), REST routes answer
//! PostgREST's. Server faults are logged in full and answered generically.

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
    errors::{Code, ErrorCode},
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

/// Carried in the response so [`negotiate_error_shape`] can re-shape an auth error.
#[derive(Debug, Clone)]
struct AuthErrorParts {
    code: ErrorCode,
    message: String,
}

impl IntoResponse for ApiError {
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
                response.extensions_mut().insert(AuthErrorParts {
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
            } => (
                status,
                Json(json!({ "code": code.as_str(), "message": message, "details": details, "hint": null })),
            )
                .into_response(),
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

/// Middleware for `/auth/v1`: with `X-Supabase-Api-Version: 2024-01-01` an auth error is answered
/// as `{"code": "<error_code>", "message": "…"}` and the header is echoed back.
pub async fn negotiate_error_shape(request: Request, next: Next) -> Response {
    let wants_2024 = request
        .headers()
        .get(API_VERSION_HEADER)
        .is_some_and(|v| v.as_bytes() == API_VERSION_2024.as_bytes());
    let mut response = next.run(request).await;
    if !wants_2024 {
        return response;
    }
    response.headers_mut().insert(
        API_VERSION_HEADER,
        HeaderValue::from_static(API_VERSION_2024),
    );
    let Some(parts) = response.extensions_mut().remove::<AuthErrorParts>() else {
        return response;
    };
    let (mut head, _) = response.into_parts();
    head.headers.remove(header::CONTENT_LENGTH);
    let body = Json(json!({ "code": parts.code.as_str(), "message": parts.message }));
    let mut response = body.into_response();
    *response.status_mut() = head.status;
    for (name, value) in head.headers.iter() {
        if name != header::CONTENT_TYPE {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    response
}
