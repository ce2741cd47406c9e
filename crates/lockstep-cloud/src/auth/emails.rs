//! Emails that carry a one-time token: signup confirmation, email change, password recovery.

use lockstep_protocol::auth::VerificationType;
use sqlx::AnyConnection;
use time::Duration;
use uuid::Uuid;

use crate::{
    clock::to_millis,
    db::{
        tokens::{self, OneTimeTokenRow},
        users::{self, MailStamp, UserRow},
    },
    error::ApiResult,
    keys::random_token,
    mail::OutgoingMail,
    state::AppState,
    token::{hash_code, hash_link_token, new_code},
};

/// What the mail is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMail {
    Confirmation,
    EmailChange,
    Recovery,
}

impl TokenMail {
    /// The `type` used in links and in `POST /verify`; also the stored kind.
    pub fn kind(self) -> VerificationType {
        match self {
            TokenMail::Confirmation => VerificationType::Signup,
            TokenMail::EmailChange => VerificationType::EmailChange,
            TokenMail::Recovery => VerificationType::Recovery,
        }
    }

    fn lifetime(self) -> Duration {
        match self {
            TokenMail::Confirmation | TokenMail::EmailChange => Duration::hours(24),
            TokenMail::Recovery => Duration::hours(1),
        }
    }

    fn stamp(self) -> MailStamp {
        match self {
            TokenMail::Confirmation => MailStamp::Confirmation,
            TokenMail::EmailChange => MailStamp::EmailChange,
            TokenMail::Recovery => MailStamp::Recovery,
        }
    }
}

/// Stores a fresh token (retiring older ones of the kind) and composes the mail. Send it with
/// [`deliver`] after the transaction commits, so a slow mail server never holds the database.
pub async fn prepare(
    state: &AppState,
    conn: &mut AnyConnection,
    user: &UserRow,
    what: TokenMail,
    to: &str,
    redirect_to: Option<&str>,
) -> ApiResult<OutgoingMail> {
    let now = state.clock.now();
    let now_ms = to_millis(now);
    let kind = what.kind().as_str();
    let token = random_token(32);
    let code = new_code();
    tokens::retire(&mut *conn, &user.id, kind, now_ms).await?;
    tokens::insert(
        &mut *conn,
        &OneTimeTokenRow {
            id: Uuid::new_v4().to_string(),
            user_id: user.id.clone(),
            kind: kind.into(),
            token_hash: hash_link_token(&state.token_key, &token),
            code_hash: hash_code(&state.token_key, &user.id, &code),
            email: to.into(),
            created_at: now_ms,
            expires_at: to_millis(now + what.lifetime()),
            used_at: None,
        },
    )
    .await?;
    users::stamp_mail_sent(&mut *conn, &user.id, what.stamp(), now_ms).await?;

    let redirect = allowed_redirect(state, redirect_to);
    let link = format!(
        "{}/auth/v1/verify?token={}&type={}&redirect_to={}",
        state.config.public_url(),
        token,
        kind,
        urlencoding::encode(&redirect)
    );
    let (subject, intro) = match what {
        TokenMail::Confirmation => (
            "Confirm your Lockstep email address",
            "Confirm your email address for Lockstep",
        ),
        TokenMail::EmailChange => (
            "Confirm your new Lockstep email address",
            "Confirm this new email address for Lockstep",
        ),
        TokenMail::Recovery => (
            "Reset your Lockstep password",
            "Someone (hopefully you) asked to reset your Lockstep password",
        ),
    };
    let hours = what.lifetime().whole_hours();
    let text = format!(
        "{intro} by opening this link:\n\n{link}\n\nOr enter this code in the app: {code}\n\n\
         The link and code expire in {hours} hour(s). If you did not ask for this, ignore this email.\n"
    );
    Ok(OutgoingMail {
        // Time-ordered, so the mailbox lists mail sent within one clock tick in order.
        id: Uuid::now_v7().to_string(),
        to: to.into(),
        subject: subject.into(),
        text,
        links: vec![link],
        sent_at: now,
    })
}

/// Sends a prepared mail. A delivery failure is logged (without the message's content) and not
/// fatal: the user can ask for the mail again.
pub async fn deliver(state: &AppState, mail: OutgoingMail) {
    if let Err(error) = state.mailer.send(&mail).await {
        tracing::error!(mail_id = %mail.id, error = %error, "could not deliver email");
    }
}

/// `redirect_to` if it points at the site URL or an allow-listed prefix, else the site URL.
pub fn allowed_redirect(state: &AppState, redirect_to: Option<&str>) -> String {
    let site = state.config.site_url();
    match redirect_to {
        Some(url)
            if url.starts_with(&site)
                || state
                    .config
                    .redirect_allow_list
                    .iter()
                    .any(|prefix| !prefix.is_empty() && url.starts_with(prefix.as_str())) =>
        {
            url.to_owned()
        }
        _ => site,
    }
}
