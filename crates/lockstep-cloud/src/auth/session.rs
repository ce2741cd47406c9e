//! Issuing sessions: the device registration, the session row, the tokens and the audit entry.

use lockstep_protocol::{
    audit::AuditAction,
    auth::{Aal, AmrEntry, Session},
    devices::DeviceInfo,
};
use rand::RngCore;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::{
    db::{
        audit, devices,
        sessions::{self, SessionRow},
        users::{self, UserRow},
    },
    error::ApiResult,
    events::{self, Actor},
    extract::ClientMeta,
    feed::EventType,
    state::AppState,
    token::{AccessClaims, RefreshToken, sign_access_token},
};

/// The device a new session belongs to: from the body, else the headers, else a made-up one.
#[derive(Debug, Clone)]
pub struct DeviceChoice(pub DeviceInfo);

impl DeviceChoice {
    pub fn pick(body: Option<DeviceInfo>, meta: &ClientMeta) -> ApiResult<DeviceChoice> {
        if let Some(device) = &body {
            device
                .validate()
                .map_err(crate::error::ApiError::validation)?;
        }
        let device = body
            .or_else(|| meta.device.clone())
            .unwrap_or_else(|| DeviceInfo {
                id: Uuid::new_v4().simple().to_string(),
                name: if meta.user_agent.is_empty() {
                    "Unnamed device".into()
                } else {
                    meta.user_agent.chars().take(64).collect()
                },
                platform: "unknown".into(),
                app_version: String::new(),
            });
        Ok(DeviceChoice(device))
    }
}

/// Creates a session for `user` on `device`, inside the caller's transaction, and records the
/// sign-in (and the device, when new) in the audit log and the change feed. The caller publishes
/// the feed after commit.
pub async fn issue_session(
    state: &AppState,
    conn: &mut AnyConnection,
    user: &UserRow,
    device: &DeviceChoice,
    meta: &ClientMeta,
    method: &str,
) -> ApiResult<Session> {
    let now = state.now_ms();
    let device = &device.0;
    let before = devices::get(&mut *conn, &user.id, &device.id).await?;
    let is_new = devices::upsert(&mut *conn, &user.id, device, now).await?;
    let actor = Actor::device(&device.id, Some(&device.name));
    if let Some(before) = before.filter(|b| {
        (&b.name, &b.platform, &b.app_version)
            != (&device.name, &device.platform, &device.app_version)
    }) {
        // A known device that describes itself differently now (renamed, upgraded).
        let after = devices::get(&mut *conn, &user.id, &device.id).await?;
        events::device_changed(
            state,
            &mut *conn,
            EventType::Update,
            Some(&before),
            after.as_ref(),
            &actor,
        )
        .await?;
    }
    if is_new {
        let row = devices::get(&mut *conn, &user.id, &device.id).await?;
        events::device_changed(
            state,
            &mut *conn,
            EventType::Insert,
            None,
            row.as_ref(),
            &actor,
        )
        .await?;
        audit::insert(
            &mut *conn,
            audit::NewEntry {
                user_id: Some(&user.id),
                action: AuditAction::DeviceRegistered,
                device_id: Some(&device.id),
                device_name: Some(&device.name),
                ip_address: &meta.ip,
                payload: serde_json::json!({ "platform": device.platform, "app_version": device.app_version }),
                now,
            },
        )
        .await?;
    }
    let mut salt = vec![0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let amr = vec![AmrEntry {
        method: method.into(),
        timestamp: state.now_secs(),
    }];
    let row = SessionRow {
        id: Uuid::new_v4().to_string(),
        user_id: user.id.clone(),
        device_id: device.id.clone(),
        aal: Aal::Aal1.as_str().into(),
        amr: serde_json::to_string(&amr).map_err(anyhow::Error::from)?,
        refresh_salt: salt,
        refresh_counter: 0,
        refreshed_at: now,
        created_at: now,
        ip_address: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
        factor_id: None,
        mfa_verified_at: None,
    };
    sessions::insert(&mut *conn, &row).await?;
    events::session_started(state, &mut *conn, &row, &actor).await?;
    users::set_last_sign_in(&mut *conn, &user.id, now).await?;
    audit::insert(
        &mut *conn,
        audit::NewEntry {
            user_id: Some(&user.id),
            action: AuditAction::Login,
            device_id: Some(&device.id),
            device_name: Some(&device.name),
            ip_address: &meta.ip,
            payload: serde_json::json!({ "method": method, "session_id": row.id }),
            now,
        },
    )
    .await?;
    let mut user = user.clone();
    user.last_sign_in_at = Some(now);
    let factors = super::mfa::wire_factors(state, &mut *conn, &user.id).await?;
    session_response(state, &user, &row, factors)
}

/// The Session answer for a session at its current refresh counter.
pub fn session_response(
    state: &AppState,
    user: &UserRow,
    session: &SessionRow,
    factors: Vec<lockstep_protocol::auth::Factor>,
) -> ApiResult<Session> {
    let now = state.now_secs();
    let expires_in = state.config.jwt_expiry_seconds;
    let amr: Vec<AmrEntry> = serde_json::from_str(&session.amr).unwrap_or_default();
    let mut wire_user = user.to_wire();
    wire_user.factors = factors;
    let claims = AccessClaims {
        iss: state.issuer(),
        sub: user.id.clone(),
        aud: "authenticated".into(),
        exp: now + expires_in,
        iat: now,
        role: "authenticated".into(),
        aal: session.aal.clone(),
        amr,
        session_id: session.id.clone(),
        email: user.email.clone(),
        phone: String::new(),
        app_metadata: wire_user.app_metadata.clone(),
        user_metadata: wire_user.user_metadata.clone(),
        is_anonymous: false,
        device_id: session.device_id.clone(),
    };
    let access_token = sign_access_token(&state.keys.jwt_secret, &claims)?;
    let session_uuid = Uuid::parse_str(&session.id).map_err(anyhow::Error::from)?;
    let refresh_token = RefreshToken::mint(
        &state.token_key,
        session_uuid,
        &session.refresh_salt,
        session.refresh_counter,
    );
    Ok(Session {
        access_token,
        token_type: "bearer".into(),
        expires_in,
        expires_at: now + expires_in,
        refresh_token,
        user: wire_user,
    })
}
