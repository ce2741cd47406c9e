//! `GET /realtime/v1/sse`: the caller's change feed as Server-Sent Events.
//!
//! - Every change is an `event: change` whose `id:` is its sequence number and whose data is a
//!   `ChangeEvent` (Supabase's `postgres_changes` shape plus the writing device).
//! - `Last-Event-ID` (or `?since=`) resumes after that event: the missed entries are replayed
//!   from the durable log, then live ones follow, with no gap and no duplicate (see
//!   [`crate::feed`]). Without either, the stream starts at the current head.
//! - When the log no longer reaches back that far, `event: must-refetch` (id = head) tells the
//!   client to do a full pull, and the stream continues from the head.
//! - `event: ready` (id = last sent) marks the end of the replay.
//! - A heartbeat comment every 15 s; `retry:` asks clients to reconnect after 2 s.
//! - Once the user has a verified factor, an aal1 session is refused (403 `insufficient_aal`),
//!   and an open aal1 stream ends with `event: insufficient_aal` when MFA is turned on elsewhere.
//! - The stream ends with `event: session` when the session is signed out or revoked
//!   (`{"reason": "signed_out"}`) or the access token expires (`{"reason": "token_expired"}`:
//!   reconnect with a fresh token and `Last-Event-ID`; nothing is lost) or the node shuts down
//!   (`{"reason": "server_shutdown"}`: reconnect with `Last-Event-ID`, to another node or once
//!   this one is back) or newer streams took its place (`{"reason": "too_many_streams"}`: a
//!   session holds at most `--max-streams-per-session` streams on a node and a user at most
//!   `--max-streams-per-user`; past either the oldest is closed, see [`crate::streams`]).
//!   Reconnecting with a dead session answers 401.
//!
//! EventSource in browsers cannot send headers, so the access token may also come as
//! `?access_token=` and the anon key as `?apikey=`.

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::Stream;
use lockstep_protocol::{
    auth::ErrorCode,
    feed::FeedTable,
    sync::{ChangeEvent, StreamEnd, StreamEndReason, StreamEventKind},
};
use serde_json::json;

use crate::{
    db::{feed as log, sessions},
    error::{ApiError, ApiResult},
    extract::{AuthSession, query_param},
    feed,
    state::AppState,
};

/// How long clients wait before reconnecting.
const RETRY: Duration = Duration::from_secs(2);
/// Entries read from the log per query.
const BATCH: i64 = 500;

pub fn router() -> Router<AppState> {
    Router::new().route("/sse", get(stream))
}

fn unauthorized(code: ErrorCode, message: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

async fn stream(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let token = crate::extract::bearer_token(&headers)
        .map(str::to_owned)
        .or_else(|| query_param(raw.as_deref(), "access_token"))
        .ok_or_else(|| {
            unauthorized(
                ErrorCode::NoAuthorization,
                "This endpoint requires a Bearer token",
            )
        })?;
    // A dead session is 401 here (not 403): the client should sign in again, not retry.
    let caller = AuthSession::from_token(&state, &token)
        .await
        .map_err(|e| match e.code() {
            Some(ErrorCode::SessionNotFound) => unauthorized(
                ErrorCode::SessionNotFound,
                "The session has ended (signed out or device revoked): sign in again",
            ),
            _ => e,
        })?;
    caller.require_data_access(&state).await?;
    let since = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(id) => Some(id.to_owned()),
        None => query_param(raw.as_deref(), "since"),
    };
    let since = match since {
        None => None,
        Some(s) => Some(
            s.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::validation(format!(
                        "Last-Event-ID (or since) must be a change sequence number, not {s:?}"
                    ))
                })?,
        ),
    };
    let heartbeat = Duration::from_secs(state.config.sse_heartbeat_seconds);
    let body = events(state, caller, since);
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response())
}

fn change_event(change: &ChangeEvent) -> Event {
    let data = serde_json::to_string(change).unwrap_or_default();
    Event::default()
        .event(StreamEventKind::Change.as_str())
        .id(change.seq.to_string())
        .data(data)
}

/// The last event of a stream the server ends.
fn session_end(id: i64, reason: StreamEndReason) -> Event {
    control_event(
        StreamEventKind::Session,
        id,
        serde_json::to_value(StreamEnd { reason }).unwrap_or_default(),
    )
}

fn control_event(kind: StreamEventKind, id: i64, data: serde_json::Value) -> Event {
    Event::default()
        .event(kind.as_str())
        .id(id.to_string())
        .data(data.to_string())
}

fn events(
    state: AppState,
    caller: AuthSession,
    since: Option<i64>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        // Subscribe before the first read: a change committed after the read wakes us.
        let mut wakeups = state.hub.subscribe(&caller.user_id);
        // Held for the stream's life; a newer stream past the caps closes this one.
        let mut ticket = state.streams.open(&caller.user_id, &caller.session_id);
        yield Ok(Event::default().retry(RETRY).comment("lockstep change feed"));

        let user = caller.user_id.clone();
        let (head, pruned_through) = match head(&state, &user).await {
            Ok(head) => head,
            Err(_) => return,
        };
        let mut last = match since {
            Some(since) if since >= pruned_through && since <= head => since,
            Some(_) => {
                yield Ok(control_event(StreamEventKind::MustRefetch, head, json!({ "head": head })));
                head
            }
            None => head,
        };

        let expires_in = caller.expires_at - state.now_secs();
        let expiry = tokio::time::sleep(Duration::from_secs(u64::try_from(expires_in).unwrap_or(0)));
        tokio::pin!(expiry);
        let mut replaying = true;
        let shutdown = state.shutting_down();
        tokio::pin!(shutdown);

        loop {
            // Drain the log after `last`.
            let mut session_touched = false;
            let mut mfa_touched = false;
            loop {
                let batch = match read(&state, &user, last).await {
                    Ok(batch) => batch,
                    Err(_) => return,
                };
                for change in &batch {
                    last = change.seq;
                    let table = FeedTable::parse(&change.table);
                    session_touched |=
                        matches!(table, Some(FeedTable::Sessions | FeedTable::Devices));
                    mfa_touched |= table == Some(FeedTable::MfaFactors);
                    yield Ok(change_event(change));
                }
                if (batch.len() as i64) < BATCH {
                    break;
                }
            }
            if replaying {
                replaying = false;
                yield Ok(control_event(StreamEventKind::Ready, last, json!({ "head": last })));
            }
            if mfa_touched && caller.require_data_access(&state).await.is_err() {
                // MFA was turned on elsewhere: this aal1 session must step up with a code.
                yield Ok(control_event(StreamEventKind::InsufficientAal, last, json!({ "reason": "mfa_enabled" })));
                return;
            }
            if session_touched && !session_alive(&state, &caller.session_id).await {
                yield Ok(session_end(last, StreamEndReason::SignedOut));
                return;
            }
            tokio::select! {
                () = wakeups.changed() => {}
                () = &mut shutdown => {
                    yield Ok(session_end(last, StreamEndReason::ServerShutdown));
                    return;
                }
                _ = &mut ticket.closed => {
                    yield Ok(session_end(last, StreamEndReason::TooManyStreams));
                    return;
                }
                () = &mut expiry => {
                    yield Ok(session_end(last, StreamEndReason::TokenExpired));
                    return;
                }
            }
        }
    }
}

async fn head(state: &AppState, user_id: &str) -> ApiResult<(i64, i64)> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(log::head(&mut conn, user_id).await?)
}

async fn read(state: &AppState, user_id: &str, since: i64) -> ApiResult<Vec<ChangeEvent>> {
    let mut conn = state.db.pool.acquire().await?;
    let result = feed::read_after(state, &mut conn, user_id, since, BATCH).await;
    if let Err(error) = &result {
        tracing::error!(
            ?error,
            user_id,
            "reading the change feed failed; ending the stream"
        );
    }
    result
}

async fn session_alive(state: &AppState, session_id: &str) -> bool {
    let Ok(mut conn) = state.db.pool.acquire().await else {
        return true;
    };
    !matches!(sessions::get(&mut conn, session_id).await, Ok(None))
}
