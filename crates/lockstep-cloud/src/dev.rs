//! Development-only routes (mounted only with `--dev`): the mailbox of mail written to the data
//! dir, so a person or a test can follow confirmation links without an SMTP server.

use axum::{
    Json, Router,
    extract::{RawQuery, State},
    routing::get,
};

use crate::{error::ApiResult, extract::query_param, mail::OutgoingMail, state::AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/mailbox", get(mailbox))
}

/// `GET /dev/mailbox[?to=address]`: messages, newest first.
async fn mailbox(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Vec<OutgoingMail>>> {
    let to = query_param(query.as_deref(), "to");
    // Mail that recover and resend hand off is in the mailbox before it is read, so a person or
    // a test following a link never races it (within a bound: a hung SMTP server must not hang
    // the mailbox too).
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(10), state.deferred.settled()).await;
    Ok(Json(state.mailer.mailbox(to.as_deref()).await?))
}
