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
//! - A heartbeat comment (`: heartbeat`) every `--sse-heartbeat-seconds` (15 by default), from
//!   one timer for the whole node; `retry:` asks clients to reconnect after 2 s.
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
//! What a stream costs: a change of its user is read from the log once per node and rendered
//! once, whatever the number of the user's streams ([`crate::feed`]); each stream copies the
//! shared bytes to its connection. A stream reads the log itself only for its replay and when it
//! fell behind the shared batches. Whether a change ends the stream is decided from the batch:
//! a `sessions` `DELETE` of its session ends it, and a batch with an `mfa_factors` entry carries
//! whether the user now has a verified factor (read once per batch), which ends an aal1 stream.
//!
//! EventSource in browsers cannot send headers, so the access token may also come as
//! `?access_token=` and the anon key as `?apikey=`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::Stream;
use lockstep_protocol::{
    auth::{Aal, ErrorCode},
    sync::{ChangeEvent, StreamEnd, StreamEndReason, StreamEventKind},
};
use serde_json::json;

use crate::{
    db::feed as log,
    error::{ApiError, ApiResult},
    extract::{AuthSession, query_param},
    feed::{Batch, Hub, Next},
    state::AppState,
};

/// The first bytes of every stream: clients reconnect after 2 s.
const HELLO: &[u8] = b"retry: 2000\n: lockstep change feed\n\n";
/// The comment sent on every tick of the node's heartbeat.
const HEARTBEAT: &[u8] = b": heartbeat\n\n";

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
    caller.require_data_access()?;
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
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(events(state, caller, since)),
    )
        .into_response())
}

/// What a stream keeps of its caller.
#[derive(Debug)]
struct Caller {
    session_id: Arc<str>,
    /// An aal1 session: it ends when the user turns two-factor authentication on.
    check_mfa: bool,
    /// How long until its access token expires (then the stream ends, `token_expired`).
    expires_in: Duration,
}

/// One SSE event. `data` is one line: compact JSON has none of `\n` and `\r` outside strings,
/// and escapes them inside.
fn frame(kind: StreamEventKind, id: i64, data: &str) -> Bytes {
    debug_assert!(!data.contains(['\n', '\r']));
    Bytes::from(format!(
        "event: {}\nid: {id}\ndata: {data}\n\n",
        kind.as_str()
    ))
}

/// A change as every stream sends it (rendered once per change, see [`crate::feed::Batch`]).
pub(crate) fn change_frame(change: &ChangeEvent) -> Bytes {
    let data = serde_json::to_string(change).unwrap_or_default();
    frame(StreamEventKind::Change, change.seq, &data)
}

fn control_frame(kind: StreamEventKind, id: i64, data: serde_json::Value) -> Bytes {
    frame(kind, id, &data.to_string())
}

/// The last event of a stream the server ends.
fn session_end(id: i64, reason: StreamEndReason) -> Bytes {
    control_frame(
        StreamEventKind::Session,
        id,
        serde_json::to_value(StreamEnd { reason }).unwrap_or_default(),
    )
}

/// Why a batch ends a stream.
#[derive(Debug, Clone, Copy)]
enum End {
    /// MFA was turned on elsewhere: this aal1 session must step up with a code.
    MfaEnabled,
    /// The session was signed out or its device revoked.
    SignedOut,
}

impl End {
    /// Whether `batch` ends the stream of `caller`.
    fn of(batch: &Batch, caller: &Caller) -> Option<End> {
        if caller.check_mfa && batch.verified_factor() == Some(true) {
            Some(End::MfaEnabled)
        } else if batch.ends_session(&caller.session_id) {
            Some(End::SignedOut)
        } else {
            None
        }
    }

    fn frame(self, id: i64) -> Bytes {
        match self {
            End::MfaEnabled => control_frame(
                StreamEventKind::InsufficientAal,
                id,
                json!({ "reason": "mfa_enabled" }),
            ),
            End::SignedOut => session_end(id, StreamEndReason::SignedOut),
        }
    }
}

fn events(
    state: AppState,
    caller: AuthSession,
    since: Option<i64>,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let expires_in = caller.expires_at - state.now_secs();
    let check_mfa = caller.aal != Aal::Aal2;
    let stream_caller = Caller {
        session_id: Arc::from(caller.session_id),
        check_mfa,
        expires_in: Duration::from_secs(u64::try_from(expires_in).unwrap_or(0)),
    };
    follow(state, &caller.user_id, stream_caller, since)
}

/// The stream of `user_id`'s changes after `since` (else from the head), for `caller`.
fn follow(
    state: AppState,
    user_id: &str,
    caller: Caller,
    since: Option<i64>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + use<> {
    // Subscribe before the first read: an entry committed after the read comes in a batch.
    let mut feed = Hub::subscribe(&state, user_id);
    let user = feed.user_id().clone();
    // Held for the stream's life; a newer stream past the caps closes this one.
    let mut ticket = state.streams.open(user.clone(), caller.session_id.clone());
    let heartbeat = Duration::from_secs(state.config.sse_heartbeat_seconds);
    let mut heartbeat = state.hub.heartbeat(heartbeat);
    async_stream::stream! {
        yield Ok(Bytes::from_static(HELLO));
        let (head, pruned_through) = match Box::pin(head(&state, &user)).await {
            Ok(head) => head,
            Err(_) => return,
        };
        let mut last = match since {
            Some(since) if since >= pruned_through && since <= head => since,
            Some(_) => {
                yield Ok(control_frame(StreamEventKind::MustRefetch, head, json!({ "head": head })));
                head
            }
            None => head,
        };

        let expiry = tokio::time::sleep(caller.expires_in);
        tokio::pin!(expiry);
        let shutdown = state.shutting_down();
        tokio::pin!(shutdown);
        // First the replay after `last` (none from the head: what follows it comes in the
        // batches), read from the log by this stream; later, the same whenever the shared
        // batches do not continue from `last`.
        let mut behind = last < head;
        let mut replaying = true;

        loop {
            let mut ended = None;
            while behind {
                // Boxed: the read's future is large, and an idle stream should not carry it.
                let read = Box::pin(Batch::read(&state, &user, last, caller.check_mfa));
                let batch = match read.await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::error!(?error, user_id = &*user, "reading the change feed failed; ending the stream");
                        return;
                    }
                };
                for change in batch.after(last) {
                    yield Ok(change.frame.clone());
                }
                last = batch.last_seq();
                ended = ended.or_else(|| End::of(&batch, &caller));
                behind = batch.is_full();
            }
            behind = false;
            if replaying {
                replaying = false;
                yield Ok(control_frame(StreamEventKind::Ready, last, json!({ "head": last })));
            }
            if let Some(end) = ended {
                yield Ok(end.frame(last));
                return;
            }
            tokio::select! {
                next = feed.next(last) => match next {
                    Next::Changes(batch) => {
                        for change in batch.after(last) {
                            yield Ok(change.frame.clone());
                        }
                        last = batch.last_seq();
                        if let Some(end) = End::of(&batch, &caller) {
                            yield Ok(end.frame(last));
                            return;
                        }
                    }
                    Next::Behind => behind = true,
                    Next::Failed => return,
                },
                Ok(()) = heartbeat.changed() => yield Ok(Bytes::from_static(HEARTBEAT)),
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
    let mut conn = state.db.readers.acquire().await?;
    Ok(log::head(&mut conn, user_id).await?)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::feed::{
        BATCHES_BUFFERED, EventType,
        tests::{node, write, write_batches},
    };

    /// The event name and id of a frame; `None` for a comment.
    fn event(frame: &[u8]) -> Option<(String, i64)> {
        let text = std::str::from_utf8(frame).unwrap();
        let kind = text.lines().find_map(|l| l.strip_prefix("event: "))?;
        let id = text.lines().find_map(|l| l.strip_prefix("id: "))?;
        Some((kind.to_owned(), id.parse().unwrap()))
    }

    async fn next_event(
        stream: &mut (impl Stream<Item = Result<Bytes, Infallible>> + Unpin),
    ) -> (String, i64) {
        let event = async {
            loop {
                let frame = stream.next().await.expect("the stream goes on").unwrap();
                if let Some(event) = event(&frame) {
                    return event;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(15), event)
            .await
            .expect("an event in time")
    }

    fn caller(session: &str) -> Caller {
        Caller {
            session_id: Arc::from(session),
            check_mfa: false,
            expires_in: Duration::from_secs(3600),
        }
    }

    /// A stream nobody reads while more batches than the channel holds go by: when it is read
    /// again it sends every entry once, in order, from the log, then goes on live.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_that_fell_behind_the_shared_batches_sends_everything_once() {
        let (_dir, state) = node().await;
        let mut stream = Box::pin(follow(state.clone(), "ada", caller("s1"), None));
        assert_eq!(next_event(&mut stream).await, ("ready".to_owned(), 0));
        let mut watcher = Hub::subscribe(&state, "ada");
        let written = write_batches(&state, &mut watcher, "ada", BATCHES_BUFFERED + 6).await;
        let mut sent = Vec::new();
        for _ in 0..written {
            let (kind, id) = next_event(&mut stream).await;
            assert_eq!(kind, "change");
            sent.push(id);
        }
        assert_eq!(sent, (1..=written).collect::<Vec<_>>());
        let seq = write(&state, "ada", "s1", EventType::Insert).await;
        assert_eq!(next_event(&mut stream).await, ("change".to_owned(), seq));
    }

    /// A batch that deletes the stream's session ends it after sending the batch, with no query;
    /// another session's stream goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_session_ends_its_streams_only() {
        let (_dir, state) = node().await;
        let mut ended = Box::pin(follow(state.clone(), "ada", caller("s1"), None));
        let mut other = Box::pin(follow(state.clone(), "ada", caller("s2"), None));
        next_event(&mut ended).await;
        next_event(&mut other).await;
        let seq = write(&state, "ada", "s1", EventType::Delete).await;
        assert_eq!(next_event(&mut ended).await, ("change".to_owned(), seq));
        assert_eq!(next_event(&mut ended).await, ("session".to_owned(), seq));
        assert!(ended.next().await.is_none(), "the stream ends");
        assert_eq!(next_event(&mut other).await, ("change".to_owned(), seq));
        let seq = write(&state, "ada", "s2", EventType::Insert).await;
        assert_eq!(next_event(&mut other).await, ("change".to_owned(), seq));
    }
}
