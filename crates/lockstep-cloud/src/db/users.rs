//! The `users` table.

use lockstep_protocol::auth::{AppMetadata, Identity, User};
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::clock::from_millis;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub email_confirmed_at: Option<i64>,
    pub confirmation_sent_at: Option<i64>,
    pub new_email: Option<String>,
    pub email_change_sent_at: Option<i64>,
    pub recovery_sent_at: Option<i64>,
    pub last_sign_in_at: Option<i64>,
    pub user_metadata: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl UserRow {
    pub fn uuid(&self) -> Uuid {
        Uuid::parse_str(&self.id).unwrap_or_default()
    }

    pub fn metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.user_metadata).unwrap_or_default()
    }

    /// The GoTrue-shaped user.
    pub fn to_wire(&self) -> User {
        let id = self.uuid();
        let created_at = from_millis(self.created_at);
        let updated_at = from_millis(self.updated_at);
        let confirmed = self.email_confirmed_at.map(from_millis);
        let last_sign_in_at = self.last_sign_in_at.map(from_millis);
        User {
            id,
            aud: "authenticated".into(),
            role: "authenticated".into(),
            email: self.email.clone(),
            phone: String::new(),
            email_confirmed_at: confirmed,
            confirmed_at: confirmed,
            confirmation_sent_at: self.confirmation_sent_at.map(from_millis),
            new_email: self.new_email.clone(),
            email_change_sent_at: self.email_change_sent_at.map(from_millis),
            recovery_sent_at: self.recovery_sent_at.map(from_millis),
            last_sign_in_at,
            app_metadata: AppMetadata::default(),
            user_metadata: self.metadata(),
            identities: vec![Identity {
                identity_id: id,
                id: self.id.clone(),
                user_id: id,
                identity_data: serde_json::json!({
                    "email": self.email,
                    "email_verified": confirmed.is_some(),
                    "sub": self.id,
                }),
                provider: "email".into(),
                email: self.email.clone(),
                last_sign_in_at,
                created_at,
                updated_at,
            }],
            factors: Vec::new(),
            created_at,
            updated_at,
            is_anonymous: false,
        }
    }
}

const COLUMNS: &str = "id, email, password_hash, email_confirmed_at, confirmation_sent_at, \
    new_email, email_change_sent_at, recovery_sent_at, last_sign_in_at, user_metadata, \
    created_at, updated_at";

/// Inserts a user; false when the email is taken.
pub async fn insert(conn: &mut AnyConnection, user: &UserRow) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "INSERT INTO users (id, email, password_hash, email_confirmed_at, confirmation_sent_at, \
         user_metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(&user.id)
    .bind(&user.email)
    .bind(&user.password_hash)
    .bind(user.email_confirmed_at)
    .bind(user.confirmation_sent_at)
    .bind(&user.user_metadata)
    .bind(user.created_at)
    .bind(user.updated_at)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn by_email(conn: &mut AnyConnection, email: &str) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM users WHERE email = $1"))
        .bind(email)
        .fetch_optional(conn)
        .await
}

pub async fn by_id(conn: &mut AnyConnection, id: &str) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Which "mail sent at" stamp to set.
#[derive(Debug, Clone, Copy)]
pub enum MailStamp {
    Confirmation,
    EmailChange,
    Recovery,
}

pub async fn stamp_mail_sent(
    conn: &mut AnyConnection,
    id: &str,
    stamp: MailStamp,
    now: i64,
) -> sqlx::Result<()> {
    let column = match stamp {
        MailStamp::Confirmation => "confirmation_sent_at",
        MailStamp::EmailChange => "email_change_sent_at",
        MailStamp::Recovery => "recovery_sent_at",
    };
    sqlx::query(&format!(
        "UPDATE users SET {column} = $1, updated_at = $1 WHERE id = $2"
    ))
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the email confirmed (keeps the first confirmation time).
pub async fn confirm_email(conn: &mut AnyConnection, id: &str, now: i64) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "UPDATE users SET email_confirmed_at = $1, updated_at = $1 \
         WHERE id = $2 AND email_confirmed_at IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn set_password(
    conn: &mut AnyConnection,
    id: &str,
    hash: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(hash)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn request_email_change(
    conn: &mut AnyConnection,
    id: &str,
    new_email: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE users SET new_email = $1, email_change_sent_at = $2, updated_at = $2 WHERE id = $3",
    )
    .bind(new_email)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves `new_email` into `email`, if it is still the pending address. A unique violation means
/// someone else took the address meanwhile.
pub async fn apply_email_change(
    conn: &mut AnyConnection,
    id: &str,
    expected_new_email: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "UPDATE users SET email = new_email, new_email = NULL, email_change_sent_at = NULL, \
         email_confirmed_at = $1, updated_at = $1 WHERE id = $2 AND new_email = $3",
    )
    .bind(now)
    .bind(id)
    .bind(expected_new_email)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn set_metadata(
    conn: &mut AnyConnection,
    id: &str,
    metadata: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET user_metadata = $1, updated_at = $2 WHERE id = $3")
        .bind(metadata)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_last_sign_in(conn: &mut AnyConnection, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET last_sign_in_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
