//! `POST /auth/v1/signup`.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use lockstep_protocol::{
    audit::AuditAction,
    auth::{ErrorCode, SignupRequest},
    password::{check_password, describe_rule},
};
use uuid::Uuid;

use super::{
    emails::{self, TokenMail},
    session::{DeviceChoice, issue_session},
    valid_email,
};
use crate::{
    db::{
        audit,
        users::{self, UserRow},
    },
    error::{ApiError, ApiResult},
    extract::{ClientMeta, JsonBody, query_param},
    ratelimit::Bucket,
    state::AppState,
};

/// Largest `data` (user metadata) accepted, serialized.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

pub async fn signup(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    meta: ClientMeta,
    JsonBody(body): JsonBody<SignupRequest>,
) -> ApiResult<Response> {
    if state.config.disable_signup {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::SignupDisabled,
            "Signups not allowed for this instance",
        ));
    }
    let email = valid_email(&body.email)?;
    check_strength(&body.password)?;
    let metadata =
        serde_json::to_string(&body.data.unwrap_or_default()).map_err(anyhow::Error::from)?;
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(ApiError::validation(format!(
            "data is too large: at most {MAX_METADATA_BYTES} bytes of JSON"
        )));
    }
    let device = DeviceChoice::pick(body.device, &meta)?;
    let redirect_to = query_param(query.as_deref(), "redirect_to");
    state
        .limiter
        .hit(Bucket::SignupIp, &meta.ip)
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverRequestRateLimit, secs))?;

    let password_hash = state.passwords.hash(&meta.ip, body.password).await?;
    let now = state.now_ms();
    let autoconfirm = state.config.mailer_autoconfirm;
    let user = UserRow {
        id: Uuid::new_v4().to_string(),
        email: email.clone(),
        password_hash,
        email_confirmed_at: autoconfirm.then_some(now),
        confirmation_sent_at: None,
        new_email: None,
        email_change_sent_at: None,
        recovery_sent_at: None,
        last_sign_in_at: None,
        user_metadata: metadata,
        created_at: now,
        updated_at: now,
    };

    let mut tx = state.db.pool.begin().await?;
    if !users::insert(&mut tx, &user).await? {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UserAlreadyExists,
            "User already registered",
        ));
    }
    audit::insert(
        &mut tx,
        audit::NewEntry {
            user_id: Some(&user.id),
            action: AuditAction::UserSignedUp,
            device_id: Some(&device.0.id),
            device_name: Some(&device.0.name),
            ip_address: &meta.ip,
            payload: serde_json::json!({ "provider": "email" }),
            now,
        },
    )
    .await?;
    let mail = if autoconfirm {
        None
    } else {
        Some(
            emails::prepare(
                &state,
                &mut tx,
                &user,
                TokenMail::Confirmation,
                &email,
                redirect_to.as_deref(),
            )
            .await?,
        )
    };
    let user = users::by_id(&mut tx, &user.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("user vanished"))?;
    let answer = if autoconfirm || state.config.allow_unverified_sign_in {
        let session = issue_session(&state, &mut tx, &user, &device, &meta, "password").await?;
        Json(session).into_response()
    } else {
        Json(user.to_wire()).into_response()
    };
    tx.commit().await?;
    state.publish(&user.id);
    tracing::info!(user_id = %user.id, "user signed up");
    if let Some(mail) = mail {
        emails::deliver(&state, mail).await;
    }
    Ok(answer)
}

/// Refuses a weak password with GoTrue's `weak_password` answer.
pub(crate) fn check_strength(password: &str) -> ApiResult<()> {
    check_password(password).map_err(|reasons| ApiError::Auth {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: ErrorCode::WeakPassword,
        message: describe_rule().into(),
        retry_after: None,
        reasons: Some(reasons.iter().map(|r| r.as_str()).collect()),
    })
}
