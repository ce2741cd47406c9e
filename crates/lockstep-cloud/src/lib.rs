//! `lockstep-cloud`: the Lockstep backend. It speaks Supabase's wire format (GoTrue's `/auth/v1`,
//! PostgREST's `/rest/v1`) so the official supabase-js client works against it, stores data in
//! SQLite (embedded default) or PostgreSQL, and keeps every device of a user in step.
//!
//! Layout: [`auth`] and [`rest`] own their routes; [`db`] holds one module per aggregate;
//! [`extract`] turns requests into typed callers; [`error`] turns failures into answers.
//! This crate knows nothing of the desktop app; the wire types it shares with clients live in
//! `lockstep-protocol`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod config;
pub mod db;
pub mod deferred;
pub mod dev;
pub mod embedded;
pub mod error;
pub mod events;
pub mod extract;
pub mod feed;
pub mod group_commit;
pub mod keys;
pub mod mail;
pub mod nodes;
pub mod password;
pub mod per_user;
pub mod ratelimit;
pub mod realtime;
pub mod rest;
pub mod sealing;
pub mod serve;
pub mod session_cache;
pub mod state;
pub mod streams;
pub mod sync;
pub mod token;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware,
    response::{Html, IntoResponse},
    routing::get,
};
use lockstep_protocol::auth::ErrorCode;
use tower_http::trace::TraceLayer;

pub use config::Config;
pub use state::AppState;

use crate::error::ApiError;

/// The whole HTTP surface of one node.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/", get(landing))
        .route("/health", get(health))
        .route("/auth/v1/verify", get(auth::verify_link))
        .nest("/auth/v1", auth::router())
        .nest("/rest/v1", rest::router())
        .nest("/realtime/v1", realtime::router());
    if state.config.dev {
        app = app.nest("/dev", dev::router());
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), per_user::take_a_slot))
        .layer(middleware::from_fn_with_state(state.clone(), extract::require_api_key))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), extract::read_whole_body))
        // Outside every layer that can refuse a request, so all errors get their prefix's shape.
        .layer(middleware::from_fn(error::render_errors))
        .layer(
            // Spans carry the path only: query strings can hold one-time tokens.
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
            }),
        )
        .with_state(state)
}

pub use serve::{serve, serve_until};

/// `GET /health`: whether this node and its database answer.
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let database_ok = state.db.ping().await;
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "name": "lockstep-cloud",
            "version": env!("CARGO_PKG_VERSION"),
            "database": state.db.backend.name(),
            "status": if database_ok { "ok" } else { "database unavailable" },
        })),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "No such endpoint",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "Method not allowed on this endpoint",
    )
}

/// Where confirmation links land by default: says what happened, from the URL fragment.
async fn landing() -> Html<&'static str> {
    Html(include_str!("landing.html"))
}
