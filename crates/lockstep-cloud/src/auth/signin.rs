//! `POST /auth/v1/token` (password and refresh-token grants) and `POST /auth/v1/logout`.

use axum::{
    Json,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use lockstep_protocol::{
    audit::AuditAction,
    auth::{ErrorCode, PasswordGrant, RefreshGrant},
};

use super::{
    session::{DeviceChoice, issue_session, session_response},
    valid_email,
};
use crate::{
    db::{audit, devices, sessions, users},
    error::{ApiError, ApiResult},
    events::{self, Actor},
    extract::{AuthSession, ClientMeta, decode_body, query_param},
    ratelimit::Bucket,
    state::AppState,
    token::RefreshToken,
};

/// A refresh within this many milliseconds of the last rotation gets the current token instead
/// of revoking the session (two processes of one device refreshing at once).
const REUSE_INTERVAL_MS: i64 = 10_000;

pub async fn token(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    meta: ClientMeta,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match query_param(query.as_deref(), "grant_type").as_deref() {
        Some("password") => password_grant(state, meta, decode_body(content_type, &body)?).await,
        Some("refresh_token") => refresh_grant(state, decode_body(content_type, &body)?).await,
        Some(other) => Err(ApiError::OAuth {
            error: "unsupported_grant_type",
            description: format!(
                "grant_type {other:?} is not supported: use password or refresh_token"
            )
            .into(),
        }),
        None => Err(ApiError::OAuth {
            error: "invalid_request",
            description:
                "grant_type is required: ?grant_type=password or ?grant_type=refresh_token".into(),
        }),
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidCredentials,
        "Invalid login credentials",
    )
}

async fn password_grant(
    state: AppState,
    meta: ClientMeta,
    body: PasswordGrant,
) -> ApiResult<Response> {
    let email = valid_email(&body.email).map_err(|_| invalid_credentials())?;
    let device = DeviceChoice::pick(body.device, &meta)?;
    // Counted before the work, refunded on success: a burst of wrong passwords cannot all be
    // checked before the first is counted.
    let attempt = state
        .limiter
        .reserve(&[
            (Bucket::SignInFailuresIp, &meta.ip),
            (Bucket::SignInFailuresAccount, &email),
        ])
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverRequestRateLimit, secs))?;

    let mut conn = state.db.pool.acquire().await?;
    let user = users::by_email(&mut conn, &email).await?;
    drop(conn);
    let checked = state
        .passwords
        .verify(
            &meta.ip,
            body.password,
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await;
    let ok = match checked {
        Ok(ok) => ok,
        Err(e) => {
            attempt.refund(); // not checked, so not a failure
            return Err(e.into());
        }
    };
    let now = state.now_ms();
    let user = match user {
        Some(user) if ok => {
            attempt.refund();
            user
        }
        user => {
            attempt.keep();
            let mut conn = state.db.pool.acquire().await?;
            audit::insert(
                &mut conn,
                audit::NewEntry {
                    user_id: user.as_ref().map(|u| u.id.as_str()),
                    action: AuditAction::LoginFailed,
                    // Whoever failed chose the device fields: they stay out of the owner's
                    // security log, which shows only what the server saw (address, time).
                    device_id: None,
                    device_name: None,
                    ip_address: &meta.ip,
                    payload: serde_json::json!({ "reason": "invalid_credentials" }),
                    now,
                },
            )
            .await?;
            tracing::info!(user_id = ?user.as_ref().map(|u| &u.id), ip = %meta.ip, "sign-in failed");
            return Err(invalid_credentials());
        }
    };
    if user.email_confirmed_at.is_none() && !state.config.allow_unverified_sign_in {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::EmailNotConfirmed,
            "Email not confirmed",
        ));
    }
    let mut tx = state.db.pool.begin().await?;
    let session = issue_session(&state, &mut tx, &user, &device, &meta, "password").await?;
    tx.commit().await?;
    state.publish(&user.id);
    tracing::info!(user_id = %user.id, device_id = %device.0.id, "signed in");
    Ok(Json(session).into_response())
}

fn refresh_not_found() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::RefreshTokenNotFound,
        "Invalid Refresh Token: Refresh Token Not Found",
    )
}

/// Rotation with GoTrue's counter rule: the current token rotates; the previous one (the client
/// did not save our last answer), or any recent one during a concurrent refresh, gets the
/// current token again; any other reuse means the token leaked, and the session is deleted.
async fn refresh_grant(state: AppState, body: RefreshGrant) -> ApiResult<Response> {
    let token = RefreshToken::parse(&body.refresh_token).ok_or_else(refresh_not_found)?;
    let session_id = token.session_id.to_string();
    let mut conn = state.db.pool.acquire().await?;
    loop {
        let session = sessions::get(&mut conn, &session_id)
            .await?
            .ok_or_else(refresh_not_found)?;
        if !token.is_genuine(&state.token_key, &session.refresh_salt) {
            return Err(refresh_not_found());
        }
        let now = state.now_ms();
        let behind = session.refresh_counter - token.counter;
        let recent = now - session.refreshed_at < REUSE_INTERVAL_MS;
        let session = match behind {
            0 => {
                if !sessions::rotate(&mut conn, &session.id, session.refresh_counter, now).await? {
                    continue; // someone rotated first: judge again against the new counter
                }
                sessions::get(&mut conn, &session_id)
                    .await?
                    .ok_or_else(refresh_not_found)?
            }
            1 => session,
            n if n > 1 && recent => session,
            n if n > 0 => {
                drop(conn);
                revoke_reused(&state, &session, n).await?;
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::RefreshTokenAlreadyUsed,
                    "Invalid Refresh Token: Already Used. The session was signed out for safety; sign in again.",
                ));
            }
            _ => return Err(refresh_not_found()),
        };
        let user = users::by_id(&mut conn, &session.user_id)
            .await?
            .ok_or_else(refresh_not_found)?;
        devices::touch(&mut conn, &session.user_id, &session.device_id, now).await?;
        let factors = super::mfa::wire_factors(&state, &mut conn, &user.id).await?;
        return Ok(Json(session_response(&state, &user, &session, factors)?).into_response());
    }
}

/// A refresh token was used again long after it was replaced: it may have leaked, so the whole
/// session ends (recorded in the audit log and the change feed).
async fn revoke_reused(
    state: &AppState,
    session: &sessions::SessionRow,
    behind: i64,
) -> ApiResult<()> {
    let mut tx = state.db.pool.begin().await?;
    sessions::delete(&mut tx, &session.id).await?;
    events::sessions_ended(
        state,
        &mut tx,
        std::slice::from_ref(session),
        "refresh_token_reused",
        &Actor::default(),
    )
    .await?;
    audit::insert(
        &mut tx,
        audit::NewEntry {
            user_id: Some(&session.user_id),
            action: AuditAction::RefreshTokenReused,
            device_id: Some(&session.device_id),
            device_name: None,
            ip_address: &session.ip_address,
            payload: serde_json::json!({ "session_id": session.id, "behind": behind }),
            now: state.now_ms(),
        },
    )
    .await?;
    tx.commit().await?;
    state.publish(&session.user_id);
    tracing::warn!(user_id = %session.user_id, session_id = %session.id, "refresh token reused; session revoked");
    Ok(())
}

/// `POST /logout?scope=local|others|global`: this session, every other one, or all.
pub async fn logout(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    meta: ClientMeta,
    caller: AuthSession,
) -> ApiResult<StatusCode> {
    let scope = query_param(query.as_deref(), "scope").unwrap_or_else(|| "local".into());
    if !matches!(scope.as_str(), "local" | "others" | "global") {
        return Err(ApiError::validation(format!(
            "scope {scope:?} is not valid: use local, others or global"
        )));
    }
    if scope != "local" {
        // Ending other sessions is an account action: with MFA on, an aal1 session (a stolen
        // password) must not sign the owner's verified devices out.
        caller.require_data_access()?;
    }
    let ends = |s: &sessions::SessionRow| match scope.as_str() {
        "local" => s.id == caller.session_id,
        "others" => s.id != caller.session_id,
        _ => true,
    };
    let mut tx = state.db.pool.begin().await?;
    let ended: Vec<_> = sessions::list(&mut tx, &caller.user_id)
        .await?
        .into_iter()
        .filter(|s| ends(s))
        .collect();
    for session in &ended {
        sessions::delete(&mut tx, &session.id).await?;
    }
    let removed = ended.len();
    let actor = Actor::device(&caller.device_id, caller.device_name.as_deref());
    events::sessions_ended(&state, &mut tx, &ended, "signed_out", &actor).await?;
    let payload = serde_json::json!({ "scope": scope, "sessions_ended": removed });
    caller
        .audit(&mut tx, &meta, AuditAction::Logout, payload, state.now_ms())
        .await?;
    tx.commit().await?;
    state.publish(&caller.user_id);
    Ok(StatusCode::NO_CONTENT)
}
