//! `/rest/v1/user_settings` (PostgREST-compatible) and the sync RPCs `push_settings` and
//! `changes`.

use axum::{
    Json,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use lockstep_protocol::errors::RestCode;
use lockstep_protocol::{
    hlc::Hlc,
    sync::{ChangesPage, PushRequest, PushResponse, SettingChange, validate_push},
};
use serde::Deserialize;
use serde_json::Value;
use sqlx::AnyConnection;

use super::{RestSession, RowQuery, answer_rows, prefers, rows_response, wants_representation};
use crate::{
    db::feed as log,
    error::{ApiError, ApiResult},
    extract::{query_pairs, query_param},
    feed,
    state::AppState,
    sync::{self, row_json},
};

const COLUMNS: &[&str] = &[
    "user_id",
    "key",
    "value",
    "hlc",
    "device_id",
    "device_name",
    "updated_at",
    "deleted",
];

fn bad_json(message: String) -> ApiError {
    ApiError::rest(StatusCode::BAD_REQUEST, RestCode::InvalidBody, message)
}

async fn all_rows(state: &AppState, user_id: &str) -> ApiResult<Vec<Value>> {
    let mut conn = state.db.readers.acquire().await?;
    Ok(sync::rows(state, &mut conn, user_id)
        .await?
        .iter()
        .map(|r| row_json(user_id, r))
        .collect())
}

/// `GET /rest/v1/user_settings`: the caller's rows, tombstones included (`deleted=is.false` to
/// leave them out).
pub async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    RestSession(caller): RestSession,
) -> ApiResult<Response> {
    let query = RowQuery::parse(&query_pairs(raw.as_deref()), "user_settings", COLUMNS)?;
    answer_rows(query, all_rows(&state, &caller.user_id).await?, &headers).await
}

/// A row as a plain Supabase client sends it. `hlc` is optional: without it the server stamps
/// the write, later than the version it replaces.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowWrite {
    key: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    hlc: Option<Hlc>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    user_id: Option<String>,
    // Read-only columns a client may echo back from a read; ignored.
    #[serde(default, rename = "device_id")]
    _device_id: Option<Value>,
    #[serde(default, rename = "device_name")]
    _device_name: Option<Value>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<Value>,
}

fn parse_rows(body: &[u8]) -> ApiResult<Vec<RowWrite>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_json(format!("Empty or invalid json: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Err(bad_json("send a row object or an array of rows".into())),
    };
    if items.is_empty() || items.len() > lockstep_protocol::sync::MAX_CHANGES_PER_PUSH {
        return Err(bad_json(format!(
            "send 1 to {} rows at a time",
            lockstep_protocol::sync::MAX_CHANGES_PER_PUSH
        )));
    }
    items
        .into_iter()
        .map(|item| {
            serde_json::from_value(item).map_err(|e| {
                ApiError::rest(
                    StatusCode::BAD_REQUEST,
                    RestCode::UnknownColumn,
                    format!("invalid row: {e}"),
                )
            })
        })
        .collect()
}

/// Stamps with this node's clock, after the version being replaced.
async fn server_stamp(state: &AppState, user_id: &str, key: &str) -> ApiResult<Hlc> {
    let mut conn = state.db.readers.acquire().await?;
    let current = crate::db::settings::get(&mut conn, user_id, key).await?;
    let observed = current.and_then(|c| c.hlc.parse().ok());
    Ok(state.stamp(user_id, observed))
}

/// Applies writes for the caller in one transaction and answers like PostgREST.
async fn write_rows(
    state: &AppState,
    caller: &crate::extract::AuthSession,
    headers: &HeaderMap,
    changes: Vec<SettingChange>,
    created: bool,
) -> ApiResult<Response> {
    let mut tx = state.db.pool.begin().await?;
    log::lock_user(&mut tx, state.db.backend, &caller.user_id).await?;
    let outcome = sync::apply(state, &mut tx, &caller.writer(), &changes).await?;
    tx.commit().await?;
    state.publish_settings(&caller.user_id);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let superseded: Vec<&str> = outcome.superseded.iter().map(|s| s.key.as_str()).collect();
    let mut response = if wants_representation(headers) {
        let mut rows: Vec<Value> = outcome
            .applied
            .iter()
            .map(|r| row_json(&caller.user_id, r))
            .collect();
        rows.extend(
            outcome
                .superseded
                .iter()
                .map(|s| row_json(&caller.user_id, &s.current)),
        );
        let mut response = rows_response(rows, headers);
        *response.status_mut() = status;
        response
    } else if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    };
    if !superseded.is_empty() {
        // A plain client is told which of its writes lost to a newer version.
        if let Ok(value) = superseded.join(",").parse() {
            response
                .headers_mut()
                .insert("x-lockstep-superseded", value);
        }
    }
    Ok(response)
}

/// `POST /rest/v1/user_settings`: insert, or upsert with `Prefer: resolution=merge-duplicates`
/// (then the merge rule decides). Without it, a key that already holds a value is a conflict.
pub async fn upsert(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    RestSession(caller): RestSession,
    body: Bytes,
) -> ApiResult<Response> {
    if let Some(on_conflict) = query_param(raw.as_deref(), "on_conflict")
        && !matches!(on_conflict.as_str(), "key" | "user_id,key" | "key,user_id")
    {
        return Err(ApiError::rest(
            StatusCode::BAD_REQUEST,
            RestCode::NoConflictTarget,
            format!(
                "on_conflict={on_conflict} does not match the table's key: use on_conflict=key"
            ),
        ));
    }
    let merge = prefers(&headers, "resolution=merge-duplicates");
    let rows = parse_rows(&body)?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        if row.user_id.as_deref().is_some_and(|u| u != caller.user_id) {
            return Err(ApiError::rest(
                StatusCode::FORBIDDEN,
                RestCode::InsufficientPrivilege,
                "new row violates row-level security policy for table \"user_settings\"",
            ));
        }
        if !merge {
            let mut conn = state.db.readers.acquire().await?;
            let existing = crate::db::settings::get(&mut conn, &caller.user_id, &row.key).await?;
            if existing.is_some_and(|e| e.deleted == 0) {
                return Err(ApiError::rest(
                    StatusCode::CONFLICT,
                    RestCode::UniqueViolation,
                    format!(
                        "duplicate key value violates unique constraint \"user_settings_pkey\": {} already has a value (send Prefer: resolution=merge-duplicates to update it)",
                        row.key
                    ),
                ));
            }
        }
        let hlc = match row.hlc {
            Some(hlc) => hlc,
            None => server_stamp(&state, &caller.user_id, &row.key).await?,
        };
        changes.push(SettingChange {
            key: row.key,
            value: row.value,
            hlc,
            deleted: row.deleted,
        });
    }
    write_rows(&state, &caller, &headers, changes, true).await
}

/// The keys of the caller's live rows that a PATCH/DELETE filter selects (a filter is required).
async fn targeted_keys(
    state: &AppState,
    user_id: &str,
    raw: Option<&str>,
) -> ApiResult<Vec<String>> {
    let query = RowQuery::parse(&query_pairs(raw), "user_settings", COLUMNS)?;
    if query.filters.is_empty() {
        return Err(ApiError::rest(
            StatusCode::BAD_REQUEST,
            RestCode::CardinalityViolation,
            "this request needs a filter naming the settings, e.g. ?key=eq.appearance.theme",
        ));
    }
    Ok(all_rows(state, user_id)
        .await?
        .into_iter()
        .filter(|r| r["deleted"] == Value::Bool(false) && query.matches(r))
        .filter_map(|r| r["key"].as_str().map(str::to_owned))
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    value: Value,
    #[serde(default)]
    hlc: Option<Hlc>,
}

/// `PATCH /rest/v1/user_settings?key=eq.<key>` `{"value": …, "hlc"?: …}`.
pub async fn patch(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    RestSession(caller): RestSession,
    body: Bytes,
) -> ApiResult<Response> {
    let patch: Patch = serde_json::from_slice(&body).map_err(|e| {
        bad_json(format!(
            "Empty or invalid json: {e} (send {{\"value\": …}})"
        ))
    })?;
    let mut changes = Vec::new();
    for key in targeted_keys(&state, &caller.user_id, raw.as_deref()).await? {
        let hlc = match patch.hlc {
            Some(hlc) => hlc,
            None => server_stamp(&state, &caller.user_id, &key).await?,
        };
        changes.push(SettingChange {
            key,
            value: patch.value.clone(),
            hlc,
            deleted: false,
        });
    }
    write_rows(&state, &caller, &headers, changes, false).await
}

/// `DELETE /rest/v1/user_settings?key=eq.<key>`: writes a tombstone (the delete syncs too).
pub async fn delete(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    RestSession(caller): RestSession,
) -> ApiResult<Response> {
    let mut changes = Vec::new();
    for key in targeted_keys(&state, &caller.user_id, raw.as_deref()).await? {
        let hlc = server_stamp(&state, &caller.user_id, &key).await?;
        changes.push(SettingChange {
            key,
            value: Value::Null,
            hlc,
            deleted: true,
        });
    }
    write_rows(&state, &caller, &headers, changes, false).await
}

/// `POST /rest/v1/rpc/push_settings`: the sync engine's batch write. Applied in one
/// transaction; a retry with the same `mutation_id` gets the first answer again.
pub async fn push(
    State(state): State<AppState>,
    RestSession(caller): RestSession,
    body: Bytes,
) -> ApiResult<Json<PushResponse>> {
    let push: PushRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_json(format!("Empty or invalid json: {e}")))?;
    validate_push(&push).map_err(|e| {
        ApiError::rest(
            StatusCode::BAD_REQUEST,
            RestCode::InvalidParameter,
            e.to_string(),
        )
    })?;
    // Committed together with other users' concurrent pushes (one flush for all on SQLite),
    // and answered only once committed.
    let writer = caller.writer();
    let work_state = state.clone();
    let response = state
        .writes
        .write(&caller.user_id, move |conn| {
            Box::pin(async move { record_push(&work_state, conn, &writer, &push).await })
        })
        .await?;
    state.publish_settings(&caller.user_id);
    Ok(Json(response))
}

/// A push's work inside its transaction: the receipt of an earlier try with the same
/// mutation id, else the merge, the feed entries and the receipt.
async fn record_push(
    state: &AppState,
    tx: &mut AnyConnection,
    writer: &sync::Writer,
    push: &PushRequest,
) -> ApiResult<PushResponse> {
    let user_id = &writer.user_id;
    // Under the user's lock, so a retry racing its original sees the original's receipt.
    let locked_head = log::lock_user(&mut *tx, state.db.backend, user_id).await?;
    // What was pushed, so a retry can be told apart from a reused mutation id.
    let canonical = serde_json::to_vec(&push.changes).map_err(anyhow::Error::from)?;
    let request_hash = crate::token::fingerprint(&canonical);
    if let Some((stored, stored_hash)) = log::receipt(&mut *tx, user_id, &push.mutation_id).await? {
        if stored_hash != request_hash {
            return Err(ApiError::rest(
                StatusCode::CONFLICT,
                RestCode::UniqueViolation,
                format!(
                    "mutation_id {} was already used for different changes: use a new id for each push",
                    push.mutation_id
                ),
            ));
        }
        let stored = if crate::sealing::DataKeys::is_sealed(&stored) {
            let bytes = state
                .sealing
                .open(user_id.as_bytes(), push.mutation_id.as_bytes(), &stored)
                .map_err(anyhow::Error::from)?;
            String::from_utf8(bytes).map_err(anyhow::Error::from)?
        } else {
            stored
        };
        return Ok(serde_json::from_str(&stored).map_err(anyhow::Error::from)?);
    }
    let outcome = sync::apply(state, &mut *tx, writer, &push.changes).await?;
    // The last entry this push appended, else the head read under the lock; only a push that
    // changed nothing on SQLite (which reads nothing to lock) asks for the head.
    let head = match outcome.last_seq.or(locked_head) {
        Some(head) => head,
        None => log::head(&mut *tx, user_id).await?.0,
    };
    let response = PushResponse {
        mutation_id: push.mutation_id.clone(),
        seq: head,
        applied: outcome.applied,
        superseded: outcome.superseded,
    };
    let stored = serde_json::to_string(&response).map_err(anyhow::Error::from)?;
    // The receipt holds values: seal it when any of them is a secret.
    let stored = if push
        .changes
        .iter()
        .any(|c| lockstep_protocol::settings::is_sensitive(&c.key))
    {
        state.sealing.seal(
            user_id.as_bytes(),
            push.mutation_id.as_bytes(),
            stored.as_bytes(),
        )
    } else {
        stored
    };
    log::store_receipt(
        &mut *tx,
        user_id,
        &push.mutation_id,
        &request_hash,
        &stored,
        state.now_ms(),
    )
    .await?;
    Ok(response)
}

/// `GET /rest/v1/rpc/changes?since=<seq>&limit=<n>`: the change log after `since`, for clients
/// that cannot hold a stream open and for catching up.
pub async fn changes(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    RestSession(caller): RestSession,
) -> ApiResult<Json<ChangesPage>> {
    let param = |name: &str| query_param(raw.as_deref(), name);
    let since: i64 = match param("since") {
        None => 0,
        Some(s) => s.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::rest(
                StatusCode::BAD_REQUEST,
                RestCode::QueryParse,
                format!("since must be a change sequence number (0 or more), not {s:?}"),
            )
        })?,
    };
    let limit: i64 = match param("limit") {
        None => 500,
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::rest(
                    StatusCode::BAD_REQUEST,
                    RestCode::QueryParse,
                    format!("limit must be from 1 to 1000, not {s:?}"),
                )
            })?,
    };
    let mut conn = state.db.readers.acquire().await?;
    let (head, pruned_through) = log::head(&mut conn, &caller.user_id).await?;
    if since < pruned_through || since > head {
        return Ok(Json(ChangesPage {
            changes: Vec::new(),
            head,
            must_refetch: true,
        }));
    }
    let changes = feed::read_after(&state, &mut conn, &caller.user_id, since, limit).await?;
    // Entries committed between the two reads may be on the page: the head is never behind it.
    let head = changes.last().map_or(head, |last| head.max(last.seq));
    Ok(Json(ChangesPage {
        changes,
        head,
        must_refetch: false,
    }))
}
