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
    mail::{CODE_LEAD, OutgoingMail},
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
        "{intro} by opening this link:\n\n{link}\n\n{CODE_LEAD}{code}\n\n\
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

/// `redirect_to` if it points at the site URL or an allow-listed entry, else the site URL.
pub fn allowed_redirect(state: &AppState, redirect_to: Option<&str>) -> String {
    let site = state.config.site_url();
    match redirect_to {
        Some(url)
            if redirect_within(url, &site)
                || state
                    .config
                    .redirect_allow_list
                    .iter()
                    .any(|allowed| redirect_within(url, allowed)) =>
        {
            url.to_owned()
        }
        _ => site,
    }
}

/// Whether `candidate` lies within `allowed`: both parse as URLs, with the same scheme, host
/// and port, no user info, and a path equal to or below the allowed path on a segment boundary
/// (`/app` admits `/app` and `/app/x`, not `/apps`). An allowed entry without a host (an app's
/// own scheme, `lockstep://`) admits any link of that scheme. A string prefix is not enough:
/// `http://localhost:3000.evil.example/` and `http://localhost:3000@evil.example/` both start
/// with `http://localhost:3000`, and a recovery link carries tokens to wherever it points.
pub fn redirect_within(candidate: &str, allowed: &str) -> bool {
    let (Ok(candidate), Ok(allowed)) = (url::Url::parse(candidate), url::Url::parse(allowed))
    else {
        return false;
    };
    if candidate.scheme() != allowed.scheme()
        || !candidate.username().is_empty()
        || candidate.password().is_some()
    {
        return false;
    }
    let allowed_host = allowed.host_str().unwrap_or("");
    if allowed_host.is_empty() {
        return true;
    }
    if candidate.host_str() != Some(allowed_host)
        || candidate.port_or_known_default() != allowed.port_or_known_default()
    {
        return false;
    }
    let base = allowed.path().trim_end_matches('/');
    let path = candidate.path();
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::redirect_within;

    #[test]
    fn redirects_are_judged_by_scheme_host_port_and_path_segments() {
        let site = "http://localhost:3000";
        for ok in [
            "http://localhost:3000",
            "http://localhost:3000/",
            "http://localhost:3000/welcome?x=1#y",
            "http://LOCALHOST:3000/",
        ] {
            assert!(redirect_within(ok, site), "{ok}");
        }
        for bad in [
            "http://localhost:3000@evil.example/",
            "http://localhost:3000.evil.example/",
            "http://user@localhost:3000/",
            "https://localhost:3000/",
            "http://localhost:30001/",
            "http://localhost/",
            "//evil.example/",
            "javascript:alert(1)",
            "not a url",
        ] {
            assert!(!redirect_within(bad, site), "{bad}");
        }
        assert!(redirect_within(
            "http://app.example/app/x",
            "http://app.example/app"
        ));
        assert!(redirect_within(
            "http://app.example/app",
            "http://app.example/app/"
        ));
        assert!(!redirect_within(
            "http://app.example/apps",
            "http://app.example/app"
        ));
        assert!(!redirect_within(
            "http://app.example/",
            "http://app.example/app"
        ));
        assert!(redirect_within(
            "https://app.example:443/",
            "https://app.example/"
        ));
        assert!(redirect_within("lockstep://reset", "lockstep://"));
        assert!(!redirect_within("lockstepx://reset", "lockstep://"));
    }
}
