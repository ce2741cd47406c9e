//! Recovery codes in the shape of supabase-js's (experimental) `auth.mfa.recoveryCodes`: ten
//! single-use codes, shown once, stored as HMACs; one used with an aal1 session raises it to aal2.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use lockstep_protocol::{
    audit::AuditAction,
    auth::{
        ErrorCode, RecoveryCodeVerify, RecoveryCodes, RecoveryCodesStatus, canonical_recovery_code,
    },
};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::mfa::{raise_session, record_event, require_recent_proof, reserve_code_attempt};
use crate::{
    db::mfa::{self, RecoverySetRow},
    error::{ApiError, ApiResult},
    extract::{AuthSession, ClientMeta, JsonBody},
    ratelimit::Bucket,
    state::AppState,
    token::hash_code,
};

const CODES: usize = 10;
const CODE_LEN: usize = 12;
/// Lowercase letters and digits without the look-alikes 0/o, 1/l/i.
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::MfaFactorNotFound,
        "No recovery codes: generate them first",
    )
}

fn code_hash(state: &AppState, user_id: &str, code: &str) -> String {
    hash_code(
        &state.token_key,
        &format!("recovery:{user_id}"),
        &canonical_recovery_code(code),
    )
}

fn new_codes() -> Vec<String> {
    let mut rng = rand::rngs::OsRng;
    (0..CODES)
        .map(|_| {
            (0..CODE_LEN)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect()
        })
        .collect()
}

/// `GET /auth/v1/factors/recovery-codes`: how many codes are left.
pub async fn status(
    State(state): State<AppState>,
    caller: AuthSession,
) -> ApiResult<Json<RecoveryCodesStatus>> {
    let mut conn = state.db.pool.acquire().await?;
    let set = mfa::recovery_set(&mut conn, &caller.user_id)
        .await?
        .ok_or_else(not_found)?;
    let (total, remaining) = mfa::recovery_counts(&mut conn, &set.id).await?;
    Ok(Json(RecoveryCodesStatus {
        id: Uuid::parse_str(&set.id).unwrap_or_default(),
        kind: "recovery_code".into(),
        total,
        remaining,
    }))
}

#[derive(Debug, Default, Deserialize)]
pub struct GenerateRequest {
    #[serde(default)]
    friendly_name: Option<String>,
}

async fn issue(
    state: &AppState,
    caller: &AuthSession,
    meta: &ClientMeta,
    friendly_name: Option<String>,
    replace: bool,
) -> ApiResult<Json<RecoveryCodes>> {
    // A recent proof, like every step that widens access: otherwise a stolen aal2 session
    // could mint codes, use one on itself, and pass every recent-proof check after that.
    require_recent_proof(state, caller, "Creating recovery codes")?;
    let mut tx = state.db.pool.begin().await?;
    if !mfa::has_verified_factor(&mut tx, &caller.user_id).await? {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::MfaRecoveryCodesSoleFactor,
            "Recovery codes back up an authenticator: enroll and verify one first",
        ));
    }
    if !replace && mfa::recovery_set(&mut tx, &caller.user_id).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::MfaVerifiedFactorExists,
            "Recovery codes already exist: regenerate them to get new ones",
        ));
    }
    let codes = new_codes();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| code_hash(state, &caller.user_id, c))
        .collect();
    let set = RecoverySetRow {
        id: Uuid::new_v4().to_string(),
        user_id: caller.user_id.clone(),
        friendly_name: friendly_name.clone(),
        created_at: state.now_ms(),
    };
    mfa::replace_recovery_set(&mut tx, &set, &hashes).await?;
    let details = json!({ "total": CODES });
    record_event(
        state,
        &mut tx,
        caller,
        meta,
        AuditAction::RecoveryCodesGenerated,
        details,
    )
    .await?;
    tx.commit().await?;
    state.publish(&caller.user_id);
    Ok(Json(RecoveryCodes {
        id: Uuid::parse_str(&set.id).unwrap_or_default(),
        kind: "recovery_code".into(),
        friendly_name,
        total: CODES as i64,
        codes,
    }))
}

/// `POST /auth/v1/factors/recovery-codes`: the first set (aal2, with a verified factor).
pub async fn generate(
    State(state): State<AppState>,
    caller: AuthSession,
    meta: ClientMeta,
    body: axum::body::Bytes,
) -> ApiResult<Json<RecoveryCodes>> {
    // The body is optional: `{}`, `{"friendly_name": …}` or nothing.
    let request: GenerateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        GenerateRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let name = request.friendly_name;
    issue(&state, &caller, &meta, name, false).await
}

/// `POST /auth/v1/factors/recovery-codes/regenerate`: a new set; the old codes stop working.
pub async fn regenerate(
    State(state): State<AppState>,
    caller: AuthSession,
    meta: ClientMeta,
) -> ApiResult<Json<RecoveryCodes>> {
    issue(&state, &caller, &meta, None, true).await
}

/// `DELETE /auth/v1/factors/recovery-codes` (needs a fresh code).
pub async fn remove(
    State(state): State<AppState>,
    caller: AuthSession,
    meta: ClientMeta,
) -> ApiResult<StatusCode> {
    require_recent_proof(&state, &caller, "Deleting recovery codes")?;
    let mut tx = state.db.pool.begin().await?;
    if !mfa::delete_recovery_set(&mut tx, &caller.user_id).await? {
        return Err(not_found());
    }
    record_event(
        &state,
        &mut tx,
        &caller,
        &meta,
        AuditAction::RecoveryCodesDeleted,
        json!({}),
    )
    .await?;
    tx.commit().await?;
    state.publish(&caller.user_id);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /auth/v1/factors/recovery-codes/verify` `{code}`: uses one code (case, whitespace and
/// dashes ignored) and answers an aal2 session with amr `mfa/recovery_code`.
pub async fn verify(
    State(state): State<AppState>,
    caller: AuthSession,
    meta: ClientMeta,
    JsonBody(body): JsonBody<RecoveryCodeVerify>,
) -> ApiResult<Response> {
    state
        .limiter
        .hit(Bucket::MfaIp, &meta.ip)
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverRequestRateLimit, secs))?;
    if canonical_recovery_code(&body.code).is_empty() {
        return Err(ApiError::validation("code is required"));
    }
    let subject = format!("recovery:{}", caller.user_id);
    let attempt = reserve_code_attempt(&state, &caller.user_id, &subject).await?;
    let hash = code_hash(&state, &caller.user_id, &body.code);
    let mut tx = state.db.pool.begin().await?;
    if !mfa::use_recovery_code(&mut tx, &caller.user_id, &hash, state.now_ms()).await? {
        drop(tx);
        attempt.wrong(&state, &caller, &meta, None).await?;
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::MfaVerificationFailed,
            "Invalid or already used recovery code",
        ));
    }
    attempt.refund(&mut tx).await?;
    record_event(
        &state,
        &mut tx,
        &caller,
        &meta,
        AuditAction::RecoveryCodeUsed,
        json!({}),
    )
    .await?;
    let session = raise_session(&state, &mut tx, &caller, "mfa/recovery_code", None).await?;
    tx.commit().await?;
    state.publish(&caller.user_id);
    Ok(Json(session).into_response())
}
