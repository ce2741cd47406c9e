//! Email tokens in: `GET /verify` (the link), `POST /verify` (link token or code), and out:
//! `POST /resend`, `POST /recover`.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use lockstep_protocol::{
    audit::AuditAction,
    auth::{ErrorCode, RecoverRequest, ResendRequest, VerificationType, VerifyRequest},
};
use sqlx::AnyConnection;

use super::{
    emails::{self, TokenMail, allowed_redirect},
    session::{DeviceChoice, issue_session},
    user::load,
    valid_email,
};
use crate::{
    db::{
        audit, is_unique_violation, sessions,
        tokens::{self, OneTimeTokenRow},
        users::{self, UserRow},
    },
    error::{ApiError, ApiResult},
    events::{self, Actor},
    extract::{ClientMeta, JsonBody, query_pairs, query_param},
    ratelimit::Bucket,
    state::AppState,
    token::{hash_code, hash_link_token},
};

fn expired() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::OtpExpired,
        "Email link is invalid or has expired",
    )
}

fn parse_type(raw: &str) -> ApiResult<VerificationType> {
    serde_json::from_value(serde_json::Value::String(raw.into())).map_err(|_| {
        ApiError::validation(format!(
            "type {raw:?} is not valid: use signup, email_change, recovery or email"
        ))
    })
}

/// The stored kind a verification type redeems.
fn stored_kind(kind: VerificationType) -> &'static str {
    match kind {
        VerificationType::Signup | VerificationType::Email => "signup",
        VerificationType::EmailChange => "email_change",
        VerificationType::Recovery => "recovery",
    }
}

/// Uses a token once and applies what it proves. Returns the updated user.
async fn redeem(
    state: &AppState,
    conn: &mut AnyConnection,
    token: Option<OneTimeTokenRow>,
    kind: VerificationType,
    meta: &ClientMeta,
) -> ApiResult<UserRow> {
    let now = state.now_ms();
    let token = token
        .filter(|t| t.kind == stored_kind(kind) && t.used_at.is_none() && t.expires_at > now)
        .ok_or_else(expired)?;
    if !tokens::consume(&mut *conn, &token.id, now).await? {
        return Err(expired());
    }
    let user = load(&mut *conn, &token.user_id).await?;
    let (action, payload) = match kind {
        VerificationType::EmailChange => {
            match users::apply_email_change(&mut *conn, &user.id, &token.email, now).await {
                Ok(true) => {}
                Ok(false) => return Err(expired()),
                Err(e) if is_unique_violation(&e) => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        ErrorCode::EmailExists,
                        "A user with this email address has already been registered",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            (
                AuditAction::EmailChanged,
                serde_json::json!({ "old_email": user.email, "new_email": token.email }),
            )
        }
        // A recovery link or code proves the address too, and is how its owner takes the
        // account back: every session so far ends (the recovery session is issued after), and
        // on an account whose address was never confirmed its factors go.
        VerificationType::Recovery => {
            users::confirm_email(&mut *conn, &user.id, now).await?;
            let removed =
                super::mfa::remove_factors_from_before_confirmation(state, conn, &user, &meta.ip)
                    .await?;
            let ended = sessions::list(&mut *conn, &user.id).await?;
            for session in &ended {
                sessions::delete(&mut *conn, &session.id).await?;
            }
            events::sessions_ended(state, conn, &ended, "password_recovery", &Actor::default())
                .await?;
            (
                AuditAction::EmailVerified,
                serde_json::json!({
                    "email": token.email,
                    "via": kind.as_str(),
                    "sessions_ended": ended.len(),
                    "factors_removed": removed,
                }),
            )
        }
        _ => {
            users::confirm_email(&mut *conn, &user.id, now).await?;
            (
                AuditAction::EmailVerified,
                serde_json::json!({ "email": token.email, "via": kind.as_str() }),
            )
        }
    };
    audit::insert(
        &mut *conn,
        audit::NewEntry {
            user_id: Some(&user.id),
            action,
            device_id: None,
            device_name: None,
            ip_address: &meta.ip,
            payload,
            now,
        },
    )
    .await?;
    let updated = load(&mut *conn, &user.id).await?;
    events::user_updated(state, &mut *conn, &user, &updated, &Actor::default()).await?;
    Ok(updated)
}

/// `GET /auth/v1/verify?token=…&type=…&redirect_to=…`: the link in the email, opened in a
/// browser (no `apikey`). Redirects to `redirect_to` (if allowed) with the outcome in the
/// fragment. Only a recovery link signs the browser in (it must set a new password); opening a
/// confirmation link on some other device confirms the address without creating a session there.
pub async fn verify_link(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    meta: ClientMeta,
) -> Response {
    let params = query_pairs(query.as_deref());
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let target = allowed_redirect(&state, param("redirect_to"));
    let outcome = verify_link_inner(&state, param("token"), param("type"), &meta).await;
    let fragment = match outcome {
        Ok(fragment) => fragment,
        Err(error) => {
            let (code, description) = match &error {
                ApiError::Auth { code, message, .. } => (code.as_str(), message.to_string()),
                ApiError::Internal(e) => {
                    tracing::error!(error = ?e, "verification failed");
                    (
                        "unexpected_failure",
                        "Unexpected failure, please try again".to_owned(),
                    )
                }
                _ => ("unexpected_failure", "Verification failed".to_owned()),
            };
            format!(
                "error=access_denied&error_code={code}&error_description={}",
                urlencoding::encode(&description)
            )
        }
    };
    let location = format!("{}#{fragment}", target.split('#').next().unwrap_or(&target));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

async fn verify_link_inner(
    state: &AppState,
    token: Option<&str>,
    kind: Option<&str>,
    meta: &ClientMeta,
) -> ApiResult<String> {
    state
        .limiter
        .hit(Bucket::VerifyIp, &meta.ip)
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverRequestRateLimit, secs))?;
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::validation("token is required"))?;
    let kind = parse_type(kind.ok_or_else(|| ApiError::validation("type is required"))?)?;
    let mut tx = state.db.pool.begin().await?;
    let row = tokens::by_token_hash(&mut tx, &hash_link_token(&state.token_key, token)).await?;
    let user = redeem(state, &mut tx, row, kind, meta).await?;
    let fragment = if kind == VerificationType::Recovery {
        let device = DeviceChoice::pick(None, meta)?;
        let s = issue_session(state, &mut tx, &user, &device, meta, "recovery").await?;
        format!(
            "access_token={}&expires_at={}&expires_in={}&refresh_token={}&token_type=bearer&type=recovery",
            s.access_token, s.expires_at, s.expires_in, s.refresh_token
        )
    } else {
        format!(
            "type={}&message={}",
            kind.as_str(),
            urlencoding::encode("Email address confirmed. You can close this page.")
        )
    };
    tx.commit().await?;
    state.publish(&user.id);
    Ok(fragment)
}

/// `POST /auth/v1/verify`: `{type, token_hash}` (the link's token) or `{type, token, email}` (the
/// 6-digit code). Answers a Session for the calling device.
pub async fn verify(
    State(state): State<AppState>,
    meta: ClientMeta,
    JsonBody(body): JsonBody<VerifyRequest>,
) -> ApiResult<Response> {
    state
        .limiter
        .hit(Bucket::VerifyIp, &meta.ip)
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverRequestRateLimit, secs))?;
    let device = DeviceChoice::pick(body.device, &meta)?;
    let mut tx = state.db.pool.begin().await?;
    let user = match (&body.token_hash, &body.token, &body.email) {
        (Some(hash), _, _) => {
            let row =
                tokens::by_token_hash(&mut tx, &hash_link_token(&state.token_key, hash)).await?;
            redeem(&state, &mut tx, row, body.kind, &meta).await?
        }
        (None, Some(code), Some(email)) => {
            // A code is only 6 digits: besides the per-IP limit, wrong codes are counted per
            // address, so that many addresses cannot share the guessing of one code.
            let email = valid_email(email)?;
            // Counted before the lookup and refunded on success, so concurrent guesses cannot
            // all be checked before the first wrong one is counted.
            let attempt = state
                .limiter
                .reserve(&[(Bucket::CodeFailuresAccount, &email)])
                .map_err(|secs| ApiError::rate_limited(ErrorCode::OverRequestRateLimit, secs))?;
            let row = match users::by_email(&mut tx, &email).await? {
                Some(user) => {
                    let hash = hash_code(&state.token_key, &user.id, code);
                    tokens::by_code(&mut tx, &user.id, stored_kind(body.kind), &hash).await?
                }
                None => None,
            };
            let user = redeem(&state, &mut tx, row, body.kind, &meta).await?;
            attempt.refund();
            user
        }
        _ => {
            return Err(ApiError::validation(
                "send either token_hash, or token (the emailed code) together with email",
            ));
        }
    };
    let session = issue_session(&state, &mut tx, &user, &device, &meta, "otp").await?;
    tx.commit().await?;
    state.publish(&user.id);
    Ok(Json(session).into_response())
}

/// Refuses a second mail to one address within the configured interval.
/// Whether the configured interval has passed since the last mail of that kind.
fn interval_passed(state: &AppState, last_sent: Option<i64>) -> bool {
    check_interval(state, last_sent).is_ok()
}

pub(super) fn check_interval(state: &AppState, last_sent: Option<i64>) -> ApiResult<()> {
    let interval_ms = state
        .config
        .rate_limits
        .email_interval_seconds
        .saturating_mul(1000);
    if let Some(last) = last_sent {
        let wait_ms = last + interval_ms - state.now_ms();
        if wait_ms > 0 {
            let secs = (wait_ms + 999) / 1000;
            return Err(ApiError::Auth {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: ErrorCode::OverEmailSendRateLimit,
                message: format!(
                    "For security purposes, you can only request this after {secs} seconds."
                )
                .into(),
                retry_after: Some(secs as u64),
                reasons: None,
            });
        }
    }
    Ok(())
}

/// `POST /auth/v1/resend` `{type: signup|email_change, email}`. Answers `{}` whether or not the
/// address is known.
pub async fn resend(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    meta: ClientMeta,
    JsonBody(body): JsonBody<ResendRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let email = valid_email(&body.email)?;
    let what = match body.kind {
        VerificationType::Signup | VerificationType::Email => TokenMail::Confirmation,
        VerificationType::EmailChange => TokenMail::EmailChange,
        VerificationType::Recovery => {
            return Err(ApiError::validation(
                "type recovery cannot be resent: use /recover",
            ));
        }
    };
    state
        .limiter
        .hit(Bucket::EmailIp, &meta.ip)
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverEmailSendRateLimit, secs))?;
    let redirect_to = query_param(query.as_deref(), "redirect_to");
    // As for recover: the same `{}` at once, the rest after the answer.
    state.deferred.spawn(
        "resent mail",
        send_again(state.clone(), email, what, redirect_to),
    );
    Ok(Json(serde_json::json!({})))
}

/// What `resend` does for an address, after answering: a new mail when there is something to
/// confirm and the resend interval has passed; otherwise nothing (a 429 would tell who has an
/// account).
async fn send_again(
    state: AppState,
    email: String,
    what: TokenMail,
    redirect_to: Option<String>,
) -> ApiResult<()> {
    let mut tx = state.db.pool.begin().await?;
    let mut mail = None;
    if let Some(user) = users::by_email(&mut tx, &email).await? {
        match what {
            TokenMail::Confirmation
                if user.email_confirmed_at.is_none()
                    && interval_passed(&state, user.confirmation_sent_at) =>
            {
                mail = Some(
                    emails::prepare(
                        &state,
                        &mut tx,
                        &user,
                        what,
                        &user.email,
                        redirect_to.as_deref(),
                    )
                    .await?,
                );
            }
            TokenMail::EmailChange
                if user.new_email.is_some()
                    && interval_passed(&state, user.email_change_sent_at) =>
            {
                let to = user.new_email.clone().unwrap_or_default();
                mail = Some(
                    emails::prepare(&state, &mut tx, &user, what, &to, redirect_to.as_deref())
                        .await?,
                );
            }
            _ => {}
        }
    }
    tx.commit().await?;
    if let Some(mail) = mail {
        emails::deliver(&state, mail).await;
    }
    Ok(())
}

/// `POST /auth/v1/recover` `{email}`: mails a password-reset link. Answers `{}` whether or not
/// the address is known.
pub async fn recover(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    meta: ClientMeta,
    JsonBody(body): JsonBody<RecoverRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    let email = valid_email(&body.email)?;
    state
        .limiter
        .hit(Bucket::EmailIp, &meta.ip)
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverEmailSendRateLimit, secs))?;
    let redirect_to = query_param(query.as_deref(), "redirect_to");
    // The same `{}` at once for any address: the lookup and what follows happen after the
    // answer, so neither the answer nor its timing tells who has an account.
    state.deferred.spawn(
        "recovery mail",
        send_recovery(state.clone(), email, redirect_to, meta.ip),
    );
    Ok(Json(serde_json::json!({})))
}

/// What `recover` does for an address, after answering: for an account outside the resend
/// interval, a recovery token, a security-log entry and the mail; otherwise nothing.
async fn send_recovery(
    state: AppState,
    email: String,
    redirect_to: Option<String>,
    ip: String,
) -> ApiResult<()> {
    let mut tx = state.db.pool.begin().await?;
    let mut mail = None;
    let known = users::by_email(&mut tx, &email).await?;
    if let Some(user) = known.filter(|u| interval_passed(&state, u.recovery_sent_at)) {
        mail = Some(
            emails::prepare(
                &state,
                &mut tx,
                &user,
                TokenMail::Recovery,
                &user.email,
                redirect_to.as_deref(),
            )
            .await?,
        );
        audit::insert(
            &mut tx,
            audit::NewEntry {
                user_id: Some(&user.id),
                action: AuditAction::PasswordRecoveryRequested,
                device_id: None,
                device_name: None,
                ip_address: &ip,
                payload: serde_json::json!({}),
                now: state.now_ms(),
            },
        )
        .await?;
    }
    tx.commit().await?;
    if let Some(mail) = mail {
        emails::deliver(&state, mail).await;
    }
    Ok(())
}
