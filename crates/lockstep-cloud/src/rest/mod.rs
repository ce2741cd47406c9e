//! `/rest/v1`: PostgREST-compatible tables, each scoped to the signed-in user (row level
//! security semantics: other users' rows are simply absent).

mod query;
mod settings;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequestParts, Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::get,
};
use lockstep_protocol::{audit::AuditAction, devices::validate_device_name, errors::RestCode};
use serde_json::Value;

pub use query::RowQuery;

use crate::{
    db::{audit, devices, sessions},
    error::{ApiError, ApiResult},
    events::{self, Actor},
    extract::{AuthSession, ClientMeta, query_pairs},
    feed::EventType,
    state::AppState,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/devices",
            get(list_devices)
                .patch(rename_devices)
                .delete(revoke_devices),
        )
        .route("/audit_log_entries", get(list_audit))
        .route("/sessions", get(list_sessions))
        .route(
            "/user_settings",
            get(settings::list)
                .post(settings::upsert)
                .patch(settings::patch)
                .delete(settings::delete),
        )
        .route("/rpc/push_settings", axum::routing::post(settings::push))
        .route("/rpc/changes", get(settings::changes))
        .route("/{table}", axum::routing::any(unknown_table))
}

/// The signed-in caller whose session may read and write data (`aal2` when the account has
/// two-factor authentication). Its errors are answered in PostgREST's shape like every error
/// under `/rest/v1` (see [`crate::error::render_errors`]).
#[derive(Debug, Clone)]
pub struct RestSession(pub AuthSession);

impl FromRequestParts<AppState> for RestSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = AuthSession::from_request_parts(parts, state).await?;
        caller.require_data_access()?;
        Ok(RestSession(caller))
    }
}

async fn unknown_table(Path(table): Path<String>) -> ApiError {
    ApiError::rest(
        StatusCode::NOT_FOUND,
        RestCode::UnknownTable,
        format!("Could not find the table 'public.{table}' in the schema cache"),
    )
}

/// Answers rows as PostgREST does: an array with `Content-Range`, or one object when the client
/// asked for `application/vnd.pgrst.object+json` (406 unless exactly one row matched).
/// Filters, orders, pages and serialises `rows` by `query` on the blocking pool: a filter over
/// large values or an answer of megabytes never holds an async worker, which serves everyone.
async fn answer_rows(
    query: RowQuery,
    rows: Vec<Value>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let headers = headers.clone();
    tokio::task::spawn_blocking(move || rows_response(query.apply(rows), &headers))
        .await
        .map_err(|e| anyhow::anyhow!("answering rows: {e}").into())
}

fn rows_response(rows: Vec<Value>, headers: &HeaderMap) -> Response {
    let wants_object = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/vnd.pgrst.object+json"));
    let range = if rows.is_empty() {
        "*/*".to_owned()
    } else {
        format!("0-{}/*", rows.len() - 1)
    };
    let mut response = if wants_object {
        if rows.len() != 1 {
            return ApiError::Rest {
                status: StatusCode::NOT_ACCEPTABLE,
                code: RestCode::NotSingular.into(),
                message: "JSON object requested, multiple (or no) rows returned".into(),
                details: Some(format!("The result contains {} rows", rows.len())),
            }
            .into_response();
        }
        Json(rows.into_iter().next().unwrap_or(Value::Null)).into_response()
    } else {
        Json(rows).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&range) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

/// Whether the request's `Prefer` headers (one or several, comma-separated) include `wanted`.
fn prefers(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == wanted))
}

fn wants_representation(headers: &HeaderMap) -> bool {
    prefers(headers, "return=representation")
}

const DEVICE_COLUMNS: &[&str] = &[
    "id",
    "user_id",
    "name",
    "platform",
    "app_version",
    "created_at",
    "last_seen_at",
    "current",
];

async fn device_rows(state: &AppState, caller: &AuthSession) -> ApiResult<Vec<Value>> {
    let mut conn = state.db.readers.acquire().await?;
    let rows = devices::list(&mut conn, &caller.user_id).await?;
    rows.iter()
        .map(|d| {
            serde_json::to_value(d.to_wire(&caller.device_id))
                .map_err(|e| anyhow::Error::from(e).into())
        })
        .collect()
}

/// `GET /rest/v1/devices`: the caller's devices; `current` marks the calling one.
async fn list_devices(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    RestSession(caller): RestSession,
) -> ApiResult<Response> {
    let query = RowQuery::parse(&query_pairs(raw.as_deref()), "devices", DEVICE_COLUMNS)?;
    answer_rows(query, device_rows(&state, &caller).await?, &headers).await
}

/// The ids of the caller's devices that a PATCH/DELETE filter selects. A filter is required.
async fn targeted_devices(
    state: &AppState,
    caller: &AuthSession,
    raw: Option<&str>,
) -> ApiResult<(RowQuery, Vec<Value>)> {
    let query = RowQuery::parse(&query_pairs(raw), "devices", DEVICE_COLUMNS)?;
    if query.filters.is_empty() {
        return Err(ApiError::rest(
            StatusCode::BAD_REQUEST,
            RestCode::CardinalityViolation,
            "this request needs a filter naming the devices, e.g. ?id=eq.<device id>",
        ));
    }
    let rows = device_rows(state, caller)
        .await?
        .into_iter()
        .filter(|r| query.matches(r))
        .collect();
    Ok((query, rows))
}

/// `PATCH /rest/v1/devices?id=eq.<id>` `{"name": "…"}`: rename.
async fn rename_devices(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    meta: ClientMeta,
    RestSession(caller): RestSession,
    body: Bytes,
) -> ApiResult<Response> {
    let patch: serde_json::Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::rest(
            StatusCode::BAD_REQUEST,
            RestCode::InvalidBody,
            format!("Empty or invalid json: {e}"),
        )
    })?;
    if let Some(other) = patch.keys().find(|k| *k != "name") {
        return Err(ApiError::rest(
            StatusCode::BAD_REQUEST,
            RestCode::UnknownColumn,
            format!("Column '{other}' of devices cannot be changed: only name can"),
        ));
    }
    let name = match patch.get("name") {
        Some(Value::String(name)) => name.trim().to_owned(),
        _ => {
            return Err(ApiError::rest(
                StatusCode::BAD_REQUEST,
                RestCode::InvalidParameter,
                "name must be a string",
            ));
        }
    };
    validate_device_name(&name)
        .map_err(|m| ApiError::rest(StatusCode::BAD_REQUEST, RestCode::InvalidParameter, m))?;
    let (_, targets) = targeted_devices(&state, &caller, raw.as_deref()).await?;
    let now = state.now_ms();
    let actor = Actor::device(&caller.device_id, caller.device_name.as_deref());
    let mut tx = state.db.pool.begin().await?;
    for row in &targets {
        let id = row["id"].as_str().unwrap_or_default();
        let before = devices::get(&mut tx, &caller.user_id, id).await?;
        devices::rename(&mut tx, &caller.user_id, id, &name).await?;
        let after = devices::get(&mut tx, &caller.user_id, id).await?;
        events::device_changed(
            &state,
            &mut tx,
            EventType::Update,
            before.as_ref(),
            after.as_ref(),
            &actor,
        )
        .await?;
        let payload =
            serde_json::json!({ "device_id": id, "old_name": row["name"], "new_name": name });
        caller
            .audit(&mut tx, &meta, AuditAction::DeviceRenamed, payload, now)
            .await?;
    }
    tx.commit().await?;
    state.publish(&caller.user_id);
    if wants_representation(&headers) {
        let ids: Vec<&str> = targets.iter().filter_map(|r| r["id"].as_str()).collect();
        let rows = device_rows(&state, &caller)
            .await?
            .into_iter()
            .filter(|r| r["id"].as_str().is_some_and(|id| ids.contains(&id)))
            .collect();
        return Ok(rows_response(rows, &headers));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /rest/v1/devices?id=eq.<id>`: revoke. The device's sessions end at once; its next
/// request is refused. The calling device cannot revoke itself (that is signing out).
async fn revoke_devices(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    meta: ClientMeta,
    RestSession(caller): RestSession,
) -> ApiResult<Response> {
    let (_, targets) = targeted_devices(&state, &caller, raw.as_deref()).await?;
    if targets
        .iter()
        .any(|r| r["id"].as_str() == Some(caller.device_id.as_str()))
    {
        return Err(ApiError::rest(
            StatusCode::BAD_REQUEST,
            RestCode::InvalidParameter,
            "a device cannot revoke itself: sign out with POST /auth/v1/logout instead",
        ));
    }
    let now = state.now_ms();
    let actor = Actor::device(&caller.device_id, caller.device_name.as_deref());
    let mut tx = state.db.pool.begin().await?;
    for row in &targets {
        let id = row["id"].as_str().unwrap_or_default();
        let before = devices::get(&mut tx, &caller.user_id, id).await?;
        let ended: Vec<_> = sessions::list(&mut tx, &caller.user_id)
            .await?
            .into_iter()
            .filter(|s| s.device_id == id)
            .collect();
        devices::delete(&mut tx, &caller.user_id, id).await?;
        events::sessions_ended(&state, &mut tx, &ended, "device_revoked", &actor).await?;
        events::device_changed(
            &state,
            &mut tx,
            EventType::Delete,
            before.as_ref(),
            None,
            &actor,
        )
        .await?;
        let payload = serde_json::json!({ "device_id": id, "device_name": row["name"] });
        caller
            .audit(&mut tx, &meta, AuditAction::DeviceRevoked, payload, now)
            .await?;
    }
    tx.commit().await?;
    state.publish(&caller.user_id);
    tracing::info!(user_id = %caller.user_id, count = targets.len(), "devices revoked");
    if wants_representation(&headers) {
        return Ok(rows_response(targets, &headers));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// How many of a user's newest audit entries the table serves.
const AUDIT_WINDOW: i64 = 1000;

const AUDIT_COLUMNS: &[&str] = &[
    "id",
    "user_id",
    "action",
    "device_id",
    "device_name",
    "ip_address",
    "payload",
    "created_at",
];

/// `GET /rest/v1/audit_log_entries`: the caller's newest 1000 security events.
async fn list_audit(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    RestSession(caller): RestSession,
) -> ApiResult<Response> {
    let query = RowQuery::parse(
        &query_pairs(raw.as_deref()),
        "audit_log_entries",
        AUDIT_COLUMNS,
    )?;
    let mut conn = state.db.pool.acquire().await?;
    let rows = audit::list(&mut conn, &caller.user_id, AUDIT_WINDOW).await?;
    let rows = rows
        .iter()
        .map(|r| serde_json::to_value(r.to_wire()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::from)?;
    answer_rows(query, rows, &headers).await
}

const SESSION_COLUMNS: &[&str] = &[
    "id",
    "device_id",
    "aal",
    "created_at",
    "refreshed_at",
    "ip_address",
    "user_agent",
    "current",
];

/// `GET /rest/v1/sessions`: the caller's live sessions (never their tokens).
async fn list_sessions(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    RestSession(caller): RestSession,
) -> ApiResult<Response> {
    let query = RowQuery::parse(&query_pairs(raw.as_deref()), "sessions", SESSION_COLUMNS)?;
    let mut conn = state.db.readers.acquire().await?;
    let rows = sessions::list(&mut conn, &caller.user_id).await?;
    let rows = rows
        .iter()
        .map(|s| {
            let fmt = lockstep_protocol::timestamp::rfc3339_millis;
            serde_json::json!({
                "id": s.id,
                "device_id": s.device_id,
                "aal": s.aal,
                "created_at": fmt(s.created_at),
                "refreshed_at": fmt(s.refreshed_at),
                "ip_address": s.ip_address,
                "user_agent": s.user_agent,
                "current": s.id == caller.session_id,
            })
        })
        .collect();
    answer_rows(query, rows, &headers).await
}
