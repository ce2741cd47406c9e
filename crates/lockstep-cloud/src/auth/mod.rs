//! `/auth/v1`: GoTrue-compatible accounts, sessions and email verification.

mod emails;
pub mod mfa;
mod recovery;
mod session;
mod signin;
mod signup;
mod user;
mod verify;

use axum::{
    Json, Router,
    routing::{get, post},
};
use lockstep_protocol::auth::ServerSettings;

pub use session::{DeviceChoice, issue_session};
pub use verify::verify_link;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/signup", post(signup::signup))
        .route("/token", post(signin::token))
        .route("/logout", post(signin::logout))
        .route("/user", get(user::get_user).put(user::update_user))
        .route("/verify", post(verify::verify))
        .route("/resend", post(verify::resend))
        .route("/recover", post(verify::recover))
        .route("/settings", get(settings))
        .route("/factors", post(mfa::enroll))
        .route("/factors/{id}", axum::routing::delete(mfa::unenroll))
        .route("/factors/{id}/challenge", post(mfa::challenge))
        .route("/factors/{id}/verify", post(mfa::verify))
        .route("/factors/{id}/secret", get(mfa::secret))
        .route(
            "/factors/recovery-codes",
            get(recovery::status)
                .post(recovery::generate)
                .delete(recovery::remove),
        )
        .route(
            "/factors/recovery-codes/regenerate",
            post(recovery::regenerate),
        )
        .route("/factors/recovery-codes/verify", post(recovery::verify))
        .route("/health", get(crate::health))
}

async fn settings(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Json<ServerSettings> {
    let config = &state.config;
    let mut external = serde_json::Map::new();
    for provider in ["email", "phone", "anonymous_users", "saml"] {
        external.insert(
            provider.into(),
            serde_json::Value::Bool(provider == "email"),
        );
    }
    Json(ServerSettings {
        external,
        disable_signup: config.disable_signup,
        mailer_autoconfirm: config.mailer_autoconfirm,
        phone_autoconfirm: false,
        sms_provider: String::new(),
        saml_enabled: false,
        anonymous_users: false,
        allow_unverified_email_sign_ins: config.allow_unverified_sign_in,
    })
}

/// Checks and normalizes an email address, or says why it is refused.
pub(crate) fn valid_email(raw: &str) -> Result<String, crate::error::ApiError> {
    use axum::http::StatusCode;
    use lockstep_protocol::auth::{ErrorCode, normalize_email};
    let email = normalize_email(raw);
    let ok = email.len() <= 254
        && email_address::EmailAddress::parse_with_options(
            &email,
            email_address::Options::default()
                .without_display_text()
                .without_domain_literal(),
        )
        .is_ok()
        && email
            .rsplit_once('@')
            .is_some_and(|(_, domain)| domain.contains('.'));
    if ok {
        Ok(email)
    } else {
        Err(crate::error::ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::EmailAddressInvalid,
            "Email address is invalid: expected something like name@example.com",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_or_refused() {
        assert_eq!(
            valid_email(" Ada@Example.com ").ok().as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "a b@example.com",
            "Ada <ada@example.com>",
        ] {
            assert!(valid_email(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(valid_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }
}
