//! TOTP multi-factor authentication in GoTrue's shapes, with what GoTrue lacks: replay
//! protection (an accepted time step is never accepted again), a per-factor lockout, enrolling
//! or removing a factor only right after proving an existing one, and unverified factors that do
//! not pile up. Secrets are sealed at rest, bound to their factor.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use lockstep_protocol::feed::{
    Change, FactorRecord, FactorStatus, FeedRecord, MfaEventRecord, SessionRecord,
};
use lockstep_protocol::{
    audit::AuditAction,
    auth::{
        Aal, AmrEntry, ChallengeResponse, EnrollRequest, EnrollResponse, ErrorCode, Factor,
        FactorSecret, MfaVerifyRequest, TotpEnrollment, totp,
    },
};
use serde_json::json;
use sqlx::AnyConnection;
use totp_rs::{Algorithm, Secret, Totp};
use uuid::Uuid;

use super::session::session_response;
use crate::{
    clock::from_millis,
    db::{
        audit,
        mfa::{self, ChallengeRow, FactorRow},
        sessions, users,
    },
    error::{ApiError, ApiResult},
    events::Actor,
    extract::{AuthSession, ClientMeta, JsonBody},
    feed::{self, Entry, EventType},
    ratelimit::Bucket,
    state::AppState,
};

/// How long a challenge may be answered.
const CHALLENGE_SECONDS: i64 = 300;
/// How recent a TOTP proof must be for enrolling, removing or handing over a factor.
pub const RECENT_PROOF_MS: i64 = 5 * 60 * 1000;
/// Wrong codes allowed per factor within [`LOCKOUT_WINDOW_MS`].
pub const LOCKOUT_FAILURES: i64 = 5;
pub const LOCKOUT_WINDOW_MS: i64 = 5 * 60 * 1000;
/// How long an enrollment may wait for its first verification.
const UNVERIFIED_LIFETIME_MS: i64 = 10 * 60 * 1000;
/// Most factors a user may have.
const MAX_FACTORS: usize = 10;
const DEFAULT_ISSUER: &str = "Lockstep";
const SECRET_AAD: &[u8] = b"mfa_factors.secret";

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::MfaFactorNotFound,
        "Factor not found",
    )
}

/// The user's factors as `GET /user` lists them (never the secret).
pub async fn wire_factors(
    state: &AppState,
    conn: &mut AnyConnection,
    user_id: &str,
) -> ApiResult<Vec<Factor>> {
    let now = state.now_ms();
    Ok(mfa::factors(conn, user_id)
        .await?
        .iter()
        .filter(|f| f.is_verified() || !is_expired_enrollment(f, now))
        .map(|f| Factor {
            id: Uuid::parse_str(&f.id).unwrap_or_default(),
            friendly_name: f.friendly_name.clone(),
            factor_type: f.factor_type.clone(),
            status: f.status.clone(),
            created_at: from_millis(f.created_at),
            updated_at: from_millis(f.updated_at),
            last_challenged_at: f.last_challenged_at.map(from_millis),
        })
        .collect())
}

/// An enrollment nobody verified within its lifetime: it no longer counts.
fn is_expired_enrollment(factor: &FactorRow, now: i64) -> bool {
    !factor.is_verified() && now - factor.created_at > UNVERIFIED_LIFETIME_MS
}

/// Loads the caller's factor; an expired enrollment is deleted and reported as not found.
async fn live_factor(
    state: &AppState,
    conn: &mut AnyConnection,
    user_id: &str,
    id: &str,
) -> ApiResult<FactorRow> {
    let factor = mfa::factor(&mut *conn, user_id, id)
        .await?
        .ok_or_else(not_found)?;
    if is_expired_enrollment(&factor, state.now_ms()) {
        mfa::delete_factor(conn, &factor.id).await?;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::MfaFactorNotFound,
            "This enrollment expired (it was not verified within 10 minutes): enroll again",
        ));
    }
    Ok(factor)
}

/// Refuses unless the session is aal2 and proved a factor within the last five minutes.
pub fn require_recent_proof(state: &AppState, caller: &AuthSession, what: &str) -> ApiResult<()> {
    if caller.aal != Aal::Aal2 {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::InsufficientAal,
            format!("{what} needs two-factor authentication: verify a code first"),
        ));
    }
    let recent = caller
        .mfa_verified_at
        .is_some_and(|at| state.now_ms() - at <= RECENT_PROOF_MS);
    if !recent {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::ReauthenticationNeeded,
            format!("{what} needs a fresh code: verify a code again (within the last 5 minutes)"),
        ));
    }
    Ok(())
}

fn totp(secret: Vec<u8>, issuer: &str, account: &str) -> ApiResult<Totp> {
    let algorithm: Algorithm = totp::ALGORITHM
        .parse()
        .map_err(|e| anyhow::anyhow!("TOTP algorithm: {e}"))?;
    totp_rs::Builder::new()
        .with_algorithm(algorithm)
        .with_digits(totp::DIGITS)
        .with_skew(totp::SKEW_STEPS)
        .with_step_duration(totp::STEP_SECONDS)
        .with_secret(Secret::from(secret))
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|e| ApiError::validation(format!("cannot build a TOTP factor: {e}")))
}

fn open_secret(state: &AppState, factor: &FactorRow) -> ApiResult<Vec<u8>> {
    Ok(state
        .sealing
        .open(factor.id.as_bytes(), SECRET_AAD, &factor.secret)
        .map_err(anyhow::Error::from)?)
}

async fn audit_mfa(
    state: &AppState,
    conn: &mut AnyConnection,
    caller: &AuthSession,
    meta: &ClientMeta,
    action: AuditAction,
    payload: serde_json::Value,
) -> ApiResult<()> {
    caller
        .audit(conn, meta, action, payload, state.now_ms())
        .await?;
    Ok(())
}

/// Records an MFA event on the user's feed, so every device learns of it at once.
pub async fn announce(
    state: &AppState,
    conn: &mut AnyConnection,
    caller: &AuthSession,
    record: FeedRecord,
) -> ApiResult<()> {
    let actor = Actor::device(&caller.device_id, caller.device_name.as_deref());
    feed::append(
        state,
        conn,
        &caller.user_id,
        Entry {
            record,
            device_id: actor.device_id,
            device_name: actor.device_name,
            sensitive: false,
        },
    )
    .await?;
    Ok(())
}

/// Audits an MFA event and announces it on the feed as an `mfa_events` row
/// `{action, …details}`, in `conn`'s transaction.
pub async fn record_event(
    state: &AppState,
    conn: &mut AnyConnection,
    caller: &AuthSession,
    meta: &ClientMeta,
    action: AuditAction,
    details: serde_json::Value,
) -> ApiResult<()> {
    audit_mfa(state, &mut *conn, caller, meta, action, details.clone()).await?;
    let details = match details {
        serde_json::Value::Object(details) => details,
        _ => serde_json::Map::new(),
    };
    let event = MfaEventRecord { action, details };
    announce(
        state,
        conn,
        caller,
        FeedRecord::MfaEvent(Change {
            event_type: EventType::Insert,
            new: Some(event),
            old: None,
        }),
    )
    .await
}

/// Audits `action` on a factor and announces the factor's change on the feed, in `conn`'s
/// transaction: an insert without `old`, a delete without `new`, else an update.
async fn factor_changed(
    state: &AppState,
    conn: &mut AnyConnection,
    caller: &AuthSession,
    meta: &ClientMeta,
    action: AuditAction,
    old: Option<&FactorRow>,
    new: Option<&FactorRow>,
) -> ApiResult<()> {
    let event_type = match (old, new) {
        (None, _) => EventType::Insert,
        (Some(_), None) => EventType::Delete,
        (Some(_), Some(_)) => EventType::Update,
    };
    let factor_id = new.or(old).map(|f| f.id.clone());
    audit_mfa(
        state,
        &mut *conn,
        caller,
        meta,
        action,
        json!({ "factor_id": factor_id }),
    )
    .await?;
    announce(
        state,
        conn,
        caller,
        FeedRecord::MfaFactor(Change {
            event_type,
            new: new.map(factor_record),
            old: old.map(factor_record),
        }),
    )
    .await
}

/// After a recovery by email proved the address of an account whose address was never
/// confirmed: its factors are removed (whoever signed up with another person's address must not
/// keep a second factor on the owner's account; since enrollment needs a confirmed address, such
/// factors predate that rule), and with them the recovery codes and every session's aal2.
/// `user` is the account as it was before this proof. Returns how many factors went.
///
/// Only a never-confirmed account qualifies: comparing factor times with `email_confirmed_at`
/// would also remove an owner's factors after an email change, which moves that time on.
pub async fn remove_factors_from_before_confirmation(
    state: &AppState,
    conn: &mut AnyConnection,
    user: &users::UserRow,
    ip: &str,
) -> ApiResult<usize> {
    if user.email_confirmed_at.is_some() {
        return Ok(0);
    }
    let before_confirmation: Vec<FactorRow> = mfa::factors(&mut *conn, &user.id).await?;
    for factor in &before_confirmation {
        sessions::drop_factor(&mut *conn, &factor.id).await?;
        mfa::delete_factor(&mut *conn, &factor.id).await?;
        audit::insert(
            &mut *conn,
            audit::NewEntry {
                user_id: Some(&user.id),
                action: AuditAction::MfaUnenrolled,
                device_id: None,
                device_name: None,
                ip_address: ip,
                payload: json!({
                    "factor_id": factor.id,
                    "reason": "enrolled_before_email_confirmation",
                }),
                now: state.now_ms(),
            },
        )
        .await?;
        feed::append(
            state,
            &mut *conn,
            &user.id,
            Entry {
                record: FeedRecord::MfaFactor(Change {
                    event_type: EventType::Delete,
                    new: None,
                    old: Some(factor_record(factor)),
                }),
                device_id: None,
                device_name: None,
                sensitive: false,
            },
        )
        .await?;
    }
    if !before_confirmation.is_empty() {
        mfa::delete_recovery_set(&mut *conn, &user.id).await?;
        sessions::drop_all_to_aal1(&mut *conn, &user.id).await?;
    }
    Ok(before_confirmation.len())
}

fn factor_record(f: &FactorRow) -> FactorRecord {
    FactorRecord {
        id: f.id.clone(),
        friendly_name: f.friendly_name.clone(),
        factor_type: f.factor_type.clone(),
        status: if f.is_verified() {
            FactorStatus::Verified
        } else {
            FactorStatus::Unverified
        },
    }
}

/// `POST /auth/v1/factors`: starts a TOTP enrollment. Once the user has a verified factor, only a
/// session that verified a code within the last 5 minutes may add another (a stolen aal2 session
/// cannot quietly add the thief's authenticator).
pub async fn enroll(
    State(state): State<AppState>,
    caller: AuthSession,
    meta: ClientMeta,
    JsonBody(body): JsonBody<EnrollRequest>,
) -> ApiResult<Json<EnrollResponse>> {
    if body.factor_type != "totp" {
        return Err(ApiError::validation(format!(
            "factor_type {:?} is not supported: use totp",
            body.factor_type
        )));
    }
    let friendly_name = body
        .friendly_name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if friendly_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 64 || n.chars().any(char::is_control))
    {
        return Err(ApiError::validation(
            "friendly_name must be at most 64 printable characters",
        ));
    }
    let issuer = body.issuer.unwrap_or_else(|| DEFAULT_ISSUER.to_owned());
    if issuer.is_empty() || issuer.len() > 64 || issuer.contains(':') {
        return Err(ApiError::validation(
            "issuer must be 1 to 64 characters without ':'",
        ));
    }
    let mut tx = state.db.pool.begin().await?;
    // Under the user's write lock: concurrent enrollments see each other, so "one pending
    // enrollment" holds on PostgreSQL too.
    crate::db::feed::lock_user(&mut tx, state.db.backend, &caller.user_id).await?;
    let existing = mfa::factors(&mut tx, &caller.user_id).await?;
    let verified: Vec<&FactorRow> = existing.iter().filter(|f| f.is_verified()).collect();
    if !verified.is_empty() {
        require_recent_proof(&state, &caller, "Adding another factor")?;
    }
    if verified.len() >= MAX_FACTORS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::TooManyEnrolledMfaFactors,
            format!("At most {MAX_FACTORS} factors: remove one first"),
        ));
    }
    if friendly_name.is_some() && verified.iter().any(|f| f.friendly_name == friendly_name) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::MfaFactorNameConflict,
            "A factor with this friendly name already exists",
        ));
    }
    let user = users::by_id(&mut tx, &caller.user_id)
        .await?
        .ok_or_else(not_found)?;
    if user.email_confirmed_at.is_none() {
        // Whoever signed up with someone else's address must not lock its owner out with a
        // factor of their own before the owner ever confirms it.
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::EmailNotConfirmed,
            "Confirm your email address before you turn on two-factor authentication",
        ));
    }
    let secret = Secret::generate();
    let bytes = secret.as_bytes().to_vec();
    let totp = totp(bytes.clone(), &issuer, &user.email)?;
    let uri = totp
        .to_url()
        .map_err(|e| anyhow::anyhow!("otpauth url: {e}"))?;
    let qr_code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| anyhow::anyhow!("qr code: {e}"))?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    let id = Uuid::new_v4();
    let now = state.now_ms();
    let row = FactorRow {
        id: id.to_string(),
        user_id: caller.user_id.clone(),
        friendly_name: friendly_name.clone(),
        factor_type: "totp".into(),
        status: "unverified".into(),
        secret: state
            .sealing
            .seal(id.to_string().as_bytes(), SECRET_AAD, &bytes),
        last_step: 0,
        created_at: now,
        updated_at: now,
        last_challenged_at: None,
    };
    // At most one unverified factor: a new enrollment replaces an abandoned one.
    mfa::delete_unverified(&mut tx, &caller.user_id).await?;
    mfa::insert_factor(&mut tx, &row).await?;
    factor_changed(
        &state,
        &mut tx,
        &caller,
        &meta,
        AuditAction::MfaEnrolled,
        None,
        Some(&row),
    )
    .await?;
    tx.commit().await?;
    state.publish(&caller.user_id);
    Ok(Json(EnrollResponse {
        id,
        kind: "totp".into(),
        friendly_name,
        totp: TotpEnrollment {
            qr_code,
            secret: secret.to_base32(),
            uri,
        },
    }))
}

/// `POST /auth/v1/factors/{id}/challenge`.
pub async fn challenge(
    State(state): State<AppState>,
    Path(factor_id): Path<String>,
    caller: AuthSession,
    meta: ClientMeta,
) -> ApiResult<Json<ChallengeResponse>> {
    state
        .limiter
        .hit(Bucket::MfaIp, &meta.ip)
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverRequestRateLimit, secs))?;
    let mut tx = state.db.pool.begin().await?;
    let factor = match live_factor(&state, &mut tx, &caller.user_id, &factor_id).await {
        Err(e) => {
            // Keep the clean-up of an expired enrollment.
            tx.commit().await?;
            return Err(e);
        }
        ok => ok?,
    };
    let now = state.now_ms();
    let id = Uuid::new_v4();
    let expires_at = now + CHALLENGE_SECONDS * 1000;
    mfa::insert_challenge(
        &mut tx,
        &ChallengeRow {
            id: id.to_string(),
            factor_id: factor.id.clone(),
            user_id: caller.user_id.clone(),
            created_at: now,
            expires_at,
            verified_at: None,
            ip_address: meta.ip.clone(),
        },
    )
    .await?;
    mfa::touch_challenged(&mut tx, &factor.id, now).await?;
    tx.commit().await?;
    Ok(Json(ChallengeResponse {
        id,
        kind: "totp".into(),
        expires_at: expires_at / 1000,
    }))
}

/// One counted code attempt against a lockout subject (a factor, or an account's recovery
/// codes). The count lives in the database, so it holds across nodes.
#[derive(Debug)]
#[must_use = "refund() or wrong() says whether the attempt counts"]
pub struct CodeAttempt {
    subject: String,
    id: String,
}

/// Counts an attempt for `subject` before its code is checked, or refuses while the subject
/// has too many recent failures (saying when to retry). Counting and checking happen under the
/// user's write lock in one transaction, so a burst of guesses, on one node or several, gets
/// at most [`LOCKOUT_FAILURES`] checks per window.
pub async fn reserve_code_attempt(
    state: &AppState,
    user_id: &str,
    subject: &str,
) -> ApiResult<CodeAttempt> {
    let now = state.now_ms();
    let mut tx = state.db.pool.begin().await?;
    crate::db::feed::lock_user(&mut tx, state.db.backend, user_id).await?;
    let (failures, oldest) = mfa::failures_since(&mut tx, subject, now - LOCKOUT_WINDOW_MS).await?;
    if failures >= LOCKOUT_FAILURES {
        let wait_ms = oldest.unwrap_or(now) + LOCKOUT_WINDOW_MS - now;
        let secs = ((wait_ms + 999) / 1000).max(1);
        return Err(ApiError::Auth {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: ErrorCode::OverRequestRateLimit,
            message: format!(
                "Too many wrong codes: this factor is locked for {secs} more seconds. Try again then, or use a recovery code."
            )
            .into(),
            retry_after: Some(secs as u64),
            reasons: None,
        });
    }
    let id = Uuid::new_v4().to_string();
    mfa::record_failure(&mut tx, subject, &id, now).await?;
    tx.commit().await?;
    Ok(CodeAttempt {
        subject: subject.to_owned(),
        id,
    })
}

impl CodeAttempt {
    /// The code was right: the attempt does not count.
    pub async fn refund(self, conn: &mut AnyConnection) -> ApiResult<()> {
        mfa::refund_failure(conn, &self.id).await?;
        Ok(())
    }

    /// The code was wrong: the attempt stays counted; it is audited and announced, and so is
    /// the lockout when this failure starts one.
    pub async fn wrong(
        self,
        state: &AppState,
        caller: &AuthSession,
        meta: &ClientMeta,
        factor_id: Option<&str>,
    ) -> ApiResult<()> {
        let now = state.now_ms();
        let mut tx = state.db.pool.begin().await?;
        let (failures, _) =
            mfa::failures_since(&mut tx, &self.subject, now - LOCKOUT_WINDOW_MS).await?;
        let details = json!({ "factor_id": factor_id, "failures": failures });
        record_event(
            state,
            &mut tx,
            caller,
            meta,
            AuditAction::MfaVerificationFailed,
            details.clone(),
        )
        .await?;
        if failures == LOCKOUT_FAILURES {
            record_event(
                state,
                &mut tx,
                caller,
                meta,
                AuditAction::MfaLockedOut,
                details,
            )
            .await?;
        }
        tx.commit().await?;
        state.publish(&caller.user_id);
        Ok(())
    }
}

fn wrong_code(message: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::MfaVerificationFailed,
        message,
    )
}

/// Raises the caller's session to aal2 (same session id, amr gains `method`, new refresh token)
/// inside `conn`'s transaction, and answers the new Session.
pub async fn raise_session(
    state: &AppState,
    conn: &mut AnyConnection,
    caller: &AuthSession,
    method: &str,
    factor_id: Option<&str>,
) -> ApiResult<lockstep_protocol::auth::Session> {
    let now = state.now_ms();
    let session = sessions::get(&mut *conn, &caller.session_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::SessionNotFound,
                "Session not found: sign in again",
            )
        })?;
    let mut amr: Vec<AmrEntry> = serde_json::from_str(&session.amr).unwrap_or_default();
    amr.retain(|entry| entry.method != method);
    amr.insert(
        0,
        AmrEntry {
            method: method.into(),
            timestamp: state.now_secs(),
        },
    );
    let amr_json = serde_json::to_string(&amr).map_err(anyhow::Error::from)?;
    sessions::raise_to_aal2(&mut *conn, &session.id, &amr_json, factor_id, now).await?;
    let stepped = |aal: &str| SessionRecord {
        id: session.id.clone(),
        device_id: Some(session.device_id.clone()),
        aal: aal.to_owned(),
        user_id: None,
        created_at: None,
        reason: None,
    };
    announce(
        state,
        &mut *conn,
        caller,
        FeedRecord::Session(Change {
            event_type: EventType::Update,
            new: Some(stepped("aal2")),
            old: Some(stepped(&session.aal)),
        }),
    )
    .await?;
    let session = sessions::get(&mut *conn, &caller.session_id)
        .await?
        .ok_or_else(not_found)?;
    let user = users::by_id(&mut *conn, &caller.user_id)
        .await?
        .ok_or_else(not_found)?;
    let factors = wire_factors(state, &mut *conn, &caller.user_id).await?;
    session_response(state, &user, &session, factors)
}

/// `POST /auth/v1/factors/{id}/verify` `{challenge_id, code}`.
pub async fn verify(
    State(state): State<AppState>,
    Path(factor_id): Path<String>,
    caller: AuthSession,
    meta: ClientMeta,
    JsonBody(body): JsonBody<MfaVerifyRequest>,
) -> ApiResult<Response> {
    state
        .limiter
        .hit(Bucket::MfaIp, &meta.ip)
        .map_err(|secs| ApiError::rate_limited(ErrorCode::OverRequestRateLimit, secs))?;
    let code = body.code.trim();
    if code.is_empty() {
        return Err(ApiError::validation("code is required"));
    }
    let mut conn = state.db.pool.acquire().await?;
    let factor = live_factor(&state, &mut conn, &caller.user_id, &factor_id).await?;
    let now = state.now_ms();
    let challenge = mfa::challenge(&mut conn, &body.challenge_id.to_string()).await?;
    let challenge = challenge
        .filter(|c| c.factor_id == factor.id && c.user_id == caller.user_id)
        .filter(|c| c.verified_at.is_none() && c.expires_at > now)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::MfaChallengeExpired,
                "Challenge has expired or was already used: request a new one",
            )
        })?;
    let user = users::by_id(&mut conn, &caller.user_id)
        .await?
        .ok_or_else(not_found)?;
    drop(conn);
    let subject = format!("factor:{}", factor.id);
    let attempt = reserve_code_attempt(&state, &caller.user_id, &subject).await?;

    let totp = totp(open_secret(&state, &factor)?, DEFAULT_ISSUER, &user.email)?;
    let now_secs = u64::try_from(state.now_secs()).unwrap_or(0);
    let Some(step) = totp.check(code, now_secs) else {
        attempt
            .wrong(&state, &caller, &meta, Some(&factor.id))
            .await?;
        return Err(wrong_code("Invalid TOTP code entered"));
    };
    let mut tx = state.db.pool.begin().await?;
    if !mfa::accept_step(&mut tx, &factor.id, step as i64).await? {
        drop(tx);
        attempt
            .wrong(&state, &caller, &meta, Some(&factor.id))
            .await?;
        return Err(wrong_code(
            "This code was already used: wait for the next one",
        ));
    }
    if !mfa::consume_challenge(&mut tx, &challenge.id, now).await? {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::MfaChallengeExpired,
            "Challenge was already used: request a new one",
        ));
    }
    attempt.refund(&mut tx).await?;
    if mfa::mark_verified(&mut tx, &factor.id, now).await? {
        // First verification: MFA is now on for the account. Abandoned enrollments go.
        mfa::delete_unverified(&mut tx, &caller.user_id).await?;
        let mut verified = factor.clone();
        verified.status = "verified".into();
        factor_changed(
            &state,
            &mut tx,
            &caller,
            &meta,
            AuditAction::MfaEnabled,
            Some(&factor),
            Some(&verified),
        )
        .await?;
    }
    audit_mfa(
        &state,
        &mut tx,
        &caller,
        &meta,
        AuditAction::MfaVerified,
        json!({ "factor_id": factor.id }),
    )
    .await?;
    let session = raise_session(&state, &mut tx, &caller, "totp", Some(&factor.id)).await?;
    tx.commit().await?;
    state.publish(&caller.user_id);
    Ok(Json(session).into_response())
}

/// `DELETE /auth/v1/factors/{id}`: removing a verified factor needs a fresh code. Sessions raised
/// by it drop to aal1; without any verified factor left, the recovery codes go too.
pub async fn unenroll(
    State(state): State<AppState>,
    Path(factor_id): Path<String>,
    caller: AuthSession,
    meta: ClientMeta,
) -> ApiResult<Json<serde_json::Value>> {
    let mut tx = state.db.pool.begin().await?;
    let factor = mfa::factor(&mut tx, &caller.user_id, &factor_id)
        .await?
        .ok_or_else(not_found)?;
    if factor.is_verified() {
        require_recent_proof(&state, &caller, "Removing a factor")?;
    }
    sessions::drop_factor(&mut tx, &factor.id).await?;
    mfa::delete_factor(&mut tx, &factor.id).await?;
    if !mfa::has_verified_factor(&mut tx, &caller.user_id).await? {
        // MFA is off: recovery codes go, and no session keeps an aal2 it no longer means
        // (sessions raised by a recovery code are tied to no factor).
        mfa::delete_recovery_set(&mut tx, &caller.user_id).await?;
        sessions::drop_all_to_aal1(&mut tx, &caller.user_id).await?;
    }
    factor_changed(
        &state,
        &mut tx,
        &caller,
        &meta,
        AuditAction::MfaUnenrolled,
        Some(&factor),
        None,
    )
    .await?;
    tx.commit().await?;
    state.publish(&caller.user_id);
    Ok(Json(json!({ "id": factor.id })))
}

/// `GET /auth/v1/factors/{id}/secret` (Lockstep extension): hands the secret of a verified factor
/// to this device's keychain, so the app can check codes offline. Needs a fresh code; audited and
/// announced to the user's other devices.
pub async fn secret(
    State(state): State<AppState>,
    Path(factor_id): Path<String>,
    caller: AuthSession,
    meta: ClientMeta,
) -> ApiResult<Json<FactorSecret>> {
    require_recent_proof(
        &state,
        &caller,
        "Copying the two-factor secret to this device",
    )?;
    let mut tx = state.db.pool.begin().await?;
    let factor = mfa::factor(&mut tx, &caller.user_id, &factor_id)
        .await?
        .ok_or_else(not_found)?;
    if !factor.is_verified() {
        return Err(not_found());
    }
    let user = users::by_id(&mut tx, &caller.user_id)
        .await?
        .ok_or_else(not_found)?;
    let bytes = open_secret(&state, &factor)?;
    let totp = totp(bytes, DEFAULT_ISSUER, &user.email)?;
    let uri = totp
        .to_url()
        .map_err(|e| anyhow::anyhow!("otpauth url: {e}"))?;
    let details = json!({ "factor_id": factor.id });
    record_event(
        &state,
        &mut tx,
        &caller,
        &meta,
        AuditAction::MfaSecretHandedOver,
        details,
    )
    .await?;
    tx.commit().await?;
    state.publish(&caller.user_id);
    Ok(Json(FactorSecret {
        id: Uuid::parse_str(&factor.id).unwrap_or_default(),
        secret: totp.secret().to_base32(),
        uri,
    }))
}
