//! Outgoing mail: SMTP when configured (lettre), otherwise one JSON file per message in
//! `<data dir>/mail/`, which dev mode serves at `/dev/mailbox`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What comes just before the code in a mail that carries one (see `auth::emails`).
pub const CODE_LEAD: &str = "Or enter this code in the app: ";

/// The code in a mail's text, if it carries one: the digits after [`CODE_LEAD`].
pub fn code_in(text: &str) -> Option<String> {
    let (_, rest) = text.split_once(CODE_LEAD)?;
    let code: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!code.is_empty()).then_some(code)
}

/// One message as composed by the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutgoingMail {
    pub id: String,
    pub to: String,
    pub subject: String,
    pub text: String,
    /// The actionable links in the message, so a person or test can follow them.
    pub links: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
}

#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
    },
    Directory {
        dir: PathBuf,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The SMTP URL may hold a password: never print it.
            Mailer::Smtp { from, .. } => write!(f, "Mailer::Smtp {{ from: {from} }}"),
            Mailer::Directory { dir } => {
                write!(f, "Mailer::Directory {{ dir: {} }}", dir.display())
            }
        }
    }
}

impl Mailer {
    pub fn from_config(
        smtp_url: Option<&str>,
        from: &str,
        data_dir: &Path,
    ) -> anyhow::Result<Mailer> {
        match smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .context("LOCKSTEP_SMTP_URL is not a valid smtp:// or smtps:// URL")?
                    .build()
                    .into();
                let from = from
                    .parse()
                    .context("LOCKSTEP_SMTP_FROM is not a valid mailbox")?;
                Ok(Mailer::Smtp { transport, from })
            }
            None => {
                let dir = data_dir.join("mail");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Ok(Mailer::Directory { dir })
            }
        }
    }

    pub async fn send(&self, mail: &OutgoingMail) -> anyhow::Result<()> {
        match self {
            Mailer::Smtp { transport, from } => {
                let message = lettre::Message::builder()
                    .from(from.clone())
                    .to(mail
                        .to
                        .parse()
                        .context("recipient is not a valid address")?)
                    .subject(&mail.subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(mail.text.clone())?;
                transport
                    .send(message)
                    .await
                    .context("SMTP delivery failed")?;
                Ok(())
            }
            Mailer::Directory { dir } => {
                // Whole or not at all, and readable by the owner only: links carry tokens.
                let name = format!("{}-{}.json", mail.sent_at.unix_timestamp_nanos(), mail.id);
                let (path, text) = (dir.join(name), serde_json::to_vec_pretty(mail)?);
                tokio::task::spawn_blocking(move || crate::keys::write_private(&path, &text))
                    .await??;
                Ok(())
            }
        }
    }

    /// Messages written to the mail directory, newest first, optionally only those to `to`.
    pub async fn mailbox(&self, to: Option<&str>) -> anyhow::Result<Vec<OutgoingMail>> {
        let Mailer::Directory { dir } = self else {
            return Ok(Vec::new());
        };
        let (dir, to) = (dir.clone(), to.map(str::to_owned));
        tokio::task::spawn_blocking(move || read_mail_dir(&dir, to.as_deref())).await?
    }
}

/// The messages in a mail directory, newest first, optionally only those to `to` (files that do
/// not read as a message are passed over).
pub fn read_mail_dir(dir: &Path, to: Option<&str>) -> anyhow::Result<Vec<OutgoingMail>> {
    let mut messages = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(mail) = serde_json::from_slice::<OutgoingMail>(&std::fs::read(&path)?) else {
            continue;
        };
        if to.is_none_or(|to| mail.to.eq_ignore_ascii_case(to)) {
            messages.push(mail);
        }
    }
    messages.sort_by(|a, b| b.sent_at.cmp(&a.sent_at).then_with(|| b.id.cmp(&a.id)));
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_read_after_its_lead() {
        let text = format!("Open this link:\n\nhttp://x\n\n{CODE_LEAD}012345\n\nBye\n");
        assert_eq!(code_in(&text).as_deref(), Some("012345"));
        assert_eq!(code_in("Open this link: http://x"), None);
    }
}
