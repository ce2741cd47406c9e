//! `GET /auth/v1/user` and `PUT /auth/v1/user` (password, email change, metadata).

use axum::{
    Json,
    extract::{RawQuery, State},
    http::StatusCode,
};
use lockstep_protocol::{
    audit::AuditAction,
    auth::{ErrorCode, UpdateUserRequest, User},
};

use super::{
    emails::{self, TokenMail},
    signup::{MAX_METADATA_BYTES, check_strength},
    valid_email,
};
use crate::{
    db::{
        sessions,
        users::{self, UserRow},
    },
    error::{ApiError, ApiResult},
    events::{self, Actor},
    extract::{AuthSession, ClientMeta, JsonBody, query_param},
    ratelimit::Bucket,
    state::AppState,
};

pub async fn get_user(State(state): State<AppState>, caller: AuthSession) -> ApiResult<Json<User>> {
    let mut conn = state.db.pool.acquire().await?;
    let mut user = load(&mut conn, &caller.user_id).await?.to_wire();
    user.factors = super::mfa::wire_factors(&state, &mut conn, &caller.user_id).await?;
    Ok(Json(user))
}

pub(crate) async fn load(conn: &mut sqlx::AnyConnection, user_id: &str) -> ApiResult<UserRow> {
    users::by_id(conn, user_id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UserNotFound,
            "User from sub claim in JWT does not exist",
        )
    })
}

/// Changing the password signs out every other session of the user; changing the email sends
/// a confirmation link to the new address and takes effect when it is opened.
pub async fn update_user(
    State(state): State<AppState>,
    caller: AuthSession,
    RawQuery(query): RawQuery,
    meta: ClientMeta,
    JsonBody(body): JsonBody<UpdateUserRequest>,
) -> ApiResult<Json<User>> {
    // Changing the password or email of an account with two-factor authentication on needs a
    // session that proved the second factor: a stolen password alone must not take it over.
    caller.require_data_access()?;
    if body.email.is_none() && body.password.is_none() && body.data.is_none() {
        return Err(ApiError::validation(
            "Nothing to update: send email, password or data",
        ));
    }
    let new_email = body.email.as_deref().map(valid_email).transpose()?;
    if let Some(password) = &body.password {
        check_strength(password)?;
    }
    let metadata = body.data.as_ref();
    let mut conn = state.db.pool.acquire().await?;
    let user = load(&mut conn, &caller.user_id).await?;
    drop(conn);

    let new_hash = match body.password {
        Some(password) => {
            if state
                .passwords
                .verify(&meta.ip, password.clone(), Some(user.password_hash.clone()))
                .await?
            {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::SamePassword,
                    "New password should be different from the old password.",
                ));
            }
            Some(state.passwords.hash(&meta.ip, password).await?)
        }
        None => None,
    };

    let now = state.now_ms();
    let actor = Actor::device(&caller.device_id, caller.device_name.as_deref());
    let mut tx = state.db.pool.begin().await?;
    if let Some(data) = metadata {
        let mut merged = user.metadata();
        for (key, value) in data {
            if value.is_null() {
                merged.remove(key);
            } else {
                merged.insert(key.clone(), value.clone());
            }
        }
        let json = serde_json::to_string(&merged).map_err(anyhow::Error::from)?;
        if json.len() > MAX_METADATA_BYTES {
            return Err(ApiError::validation(format!(
                "data is too large: at most {MAX_METADATA_BYTES} bytes of JSON"
            )));
        }
        users::set_metadata(&mut tx, &user.id, &json, now).await?;
    }
    if let Some(hash) = new_hash {
        users::set_password(&mut tx, &user.id, &hash, now).await?;
        let ended: Vec<_> = sessions::list(&mut tx, &user.id)
            .await?
            .into_iter()
            .filter(|s| s.id != caller.session_id)
            .collect();
        for session in &ended {
            sessions::delete(&mut tx, &session.id).await?;
        }
        events::sessions_ended(&state, &mut tx, &ended, "password_changed", &actor).await?;
        let ended = ended.len();
        let payload = serde_json::json!({ "other_sessions_ended": ended });
        caller
            .audit(&mut tx, &meta, AuditAction::PasswordChanged, payload, now)
            .await?;
    }
    let mut mail = None;
    if let Some(new_email) = new_email.filter(|e| *e != user.email) {
        if users::by_email(&mut tx, &new_email).await?.is_some() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::EmailExists,
                "A user with this email address has already been registered",
            ));
        }
        // The same limits as a resend: per client IP, and one mail per interval per account,
        // so nobody can make us mail a third party's address over and over.
        state
            .limiter
            .hit(Bucket::EmailIp, &meta.ip)
            .map_err(|secs| ApiError::rate_limited(ErrorCode::OverEmailSendRateLimit, secs))?;
        super::verify::check_interval(&state, user.email_change_sent_at)?;
        users::request_email_change(&mut tx, &user.id, &new_email, now).await?;
        mail = Some(
            emails::prepare(
                &state,
                &mut tx,
                &user,
                TokenMail::EmailChange,
                &new_email,
                query_param(query.as_deref(), "redirect_to").as_deref(),
            )
            .await?,
        );
        let payload = serde_json::json!({ "new_email": new_email });
        caller
            .audit(
                &mut tx,
                &meta,
                AuditAction::EmailChangeRequested,
                payload,
                now,
            )
            .await?;
    }
    let updated = load(&mut tx, &user.id).await?;
    events::user_updated(&state, &mut tx, &user, &updated, &actor).await?;
    tx.commit().await?;
    state.publish(&user.id);
    if let Some(mail) = mail {
        emails::deliver(&state, mail).await;
    }
    let mut conn = state.db.pool.acquire().await?;
    let mut user = updated.to_wire();
    user.factors = super::mfa::wire_factors(&state, &mut conn, &updated.id).await?;
    Ok(Json(user))
}
