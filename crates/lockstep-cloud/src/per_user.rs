//! Each user's share of the node: at most `--max-requests-per-user` authenticated requests of
//! one user run at once.
//!
//! A user's answers can be large (500 settings of up to 16 KiB: ~8 MB) and every request holds
//! the database for a while, so one account sending hundreds of requests at once would hold
//! the node's memory and its database connections while others wait. Here a request takes one
//! of its user's slots before its handler runs and gives it back when its answer has been sent
//! (or dropped); a request that finds no free slot within [`SLOT_WAIT`] is answered 429 with
//! `Retry-After` at once. Other users are never counted against it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;
use lockstep_protocol::auth::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{error::ApiError, state::AppState, token::verify_access_token};

/// How long a request waits for one of its user's slots before it is answered 429.
pub const SLOT_WAIT: Duration = Duration::from_secs(2);

/// The users with requests running on this node, and their free slots.
#[derive(Debug)]
pub struct UserSlots {
    per_user: usize,
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One running request's slot; dropping it frees the slot (and forgets an idle user).
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    semaphore: Arc<Semaphore>,
    user_id: String,
    slots: Arc<UserSlots>,
}

impl UserSlots {
    pub fn new(per_user: usize) -> UserSlots {
        UserSlots {
            per_user: per_user.max(1),
            users: Mutex::default(),
        }
    }

    /// Waits at most `wait` for a slot of `user_id`; `None` when none came free.
    pub async fn take(self: &Arc<Self>, user_id: &str, wait: Duration) -> Option<Slot> {
        let semaphore = self
            .lock()
            .entry(user_id.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_user)))
            .clone();
        let permit = tokio::time::timeout(wait, semaphore.clone().acquire_owned()).await;
        let slot = Slot {
            permit: permit.ok().and_then(Result::ok),
            semaphore,
            user_id: user_id.to_owned(),
            slots: self.clone(),
        };
        // Without a permit, dropping the slot still forgets the user if nobody else is there.
        slot.permit.is_some().then_some(slot)
    }

    /// How many users have requests running or waiting.
    pub fn users(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut users = self.slots.lock();
        drop(self.permit.take());
        // The map's and this slot's are the only references: nobody runs or waits for this
        // user (a newcomer clones the semaphore under the same lock).
        if Arc::strong_count(&self.semaphore) == 2 {
            users.remove(&self.user_id);
        }
    }
}

/// Middleware: a request with a valid access token runs in one of its user's slots, held until
/// its answer has been sent. Requests without one (sign-in, signup) pass: their costly part is
/// bounded by the password pool, and the handler answers a bad token.
pub async fn take_a_slot(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let user_id = crate::extract::bearer_token(request.headers())
        .and_then(|token| verify_access_token(&state.keys.jwt_secret, token, state.now_secs()).ok())
        .map(|claims| claims.sub);
    // Streams are long-lived and capped on their own (`crate::streams`).
    let streaming = request.uri().path().starts_with("/realtime/");
    let Some(user_id) = user_id.filter(|_| !streaming) else {
        return next.run(request).await;
    };
    let Some(slot) = state.user_slots.take(&user_id, SLOT_WAIT).await else {
        return too_many_at_once();
    };
    let response = next.run(request).await;
    // The slot goes with the body, so it is held until the last byte is written.
    response.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            let _held = &slot;
            frame
        }))
    })
}

fn too_many_at_once() -> Response {
    ApiError::Auth {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: ErrorCode::OverRequestRateLimit,
        message: format!(
            "Too many requests of this account at once: try again in {} seconds.",
            SLOT_WAIT.as_secs()
        )
        .into(),
        retry_after: Some(SLOT_WAIT.as_secs()),
        reasons: None,
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_WAIT: Duration = Duration::from_millis(10);

    #[tokio::test]
    async fn a_user_gets_at_most_their_share_and_others_are_not_counted() {
        let slots = Arc::new(UserSlots::new(2));
        let first = slots.take("ada", NO_WAIT).await;
        let second = slots.take("ada", NO_WAIT).await;
        assert!(first.is_some() && second.is_some());
        assert!(
            slots.take("ada", NO_WAIT).await.is_none(),
            "a third waits, then is refused"
        );
        assert!(
            slots.take("bob", NO_WAIT).await.is_some(),
            "Bob has his own share"
        );
        drop(first);
        assert!(
            slots.take("ada", NO_WAIT).await.is_some(),
            "a freed slot is taken again"
        );
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_next_free_slot() {
        let slots = Arc::new(UserSlots::new(1));
        let held = slots.take("ada", NO_WAIT).await;
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take("ada", Duration::from_secs(30)).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiting.await.unwrap_or(false));
    }

    #[tokio::test]
    async fn idle_users_are_forgotten() {
        let slots = Arc::new(UserSlots::new(1));
        let held = slots.take("ada", NO_WAIT).await;
        assert!(slots.take("ada", NO_WAIT).await.is_none());
        assert_eq!(slots.users(), 1);
        drop(held);
        assert_eq!(slots.users(), 0, "no entry left behind");
    }
}
