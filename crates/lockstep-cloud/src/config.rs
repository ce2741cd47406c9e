//! Server configuration: one typed struct, read from flags and `LOCKSTEP_*` environment variables.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::Parser;

/// Configuration of one `lockstep-cloud` node. Every flag can also be set by the environment
/// variable named in its help.
#[derive(Debug, Clone, Parser)]
#[command(name = "lockstep-cloud", version, about = "The Lockstep cloud server")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LOCKSTEP_BIND", default_value = "127.0.0.1:54321")]
    pub bind: SocketAddr,

    /// Directory for the embedded database, generated keys and (without SMTP) outgoing mail.
    #[arg(long, env = "LOCKSTEP_DATA_DIR", default_value = "lockstep-data")]
    pub data_dir: PathBuf,

    /// Database URL: `sqlite://…` or `postgres://…`. Default: SQLite in the data dir.
    #[arg(long, env = "LOCKSTEP_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<CredentialUrl>,

    /// Public base URL of this server, used in links sent by email. Default: `http://<bind>`.
    #[arg(long, env = "LOCKSTEP_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Where confirmation links land after verification. Default: the public URL.
    #[arg(long, env = "LOCKSTEP_SITE_URL")]
    pub site_url: Option<String>,

    /// Extra allowed `redirect_to` prefixes, comma separated (the site URL is always allowed).
    #[arg(long, env = "LOCKSTEP_REDIRECT_ALLOW_LIST", value_delimiter = ',')]
    pub redirect_allow_list: Vec<String>,

    /// Development mode: serves the dev mailbox at `/dev/mailbox`. Never in production.
    #[arg(
        long,
        env = "LOCKSTEP_DEV_MODE",
        default_value_t = false,
        value_parser = boolish(), num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set
    )]
    pub dev: bool,

    /// SMTP server URL for outgoing mail, e.g. `smtps://user:pass@smtp.example.com:465`.
    /// Without it, mail is written to `<data dir>/mail/`.
    #[arg(long, env = "LOCKSTEP_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<CredentialUrl>,

    /// Sender address of outgoing mail.
    #[arg(
        long,
        env = "LOCKSTEP_SMTP_FROM",
        default_value = "Lockstep <no-reply@lockstep.invalid>"
    )]
    pub smtp_from: String,

    /// Lifetime of access tokens, in seconds.
    #[arg(
        long,
        env = "LOCKSTEP_JWT_EXPIRY",
        default_value_t = 3600,
        value_parser = clap::value_parser!(i64).range(5..=7 * 24 * 3600)
    )]
    pub jwt_expiry_seconds: i64,

    /// Confirm emails at signup without a link (for closed deployments).
    #[arg(
        long,
        env = "LOCKSTEP_MAILER_AUTOCONFIRM",
        default_value_t = false,
        value_parser = boolish(), num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set
    )]
    pub mailer_autoconfirm: bool,

    /// Let users sign in before they confirm their email (the app shows a banner meanwhile).
    #[arg(
        long,
        env = "LOCKSTEP_ALLOW_UNVERIFIED_SIGN_IN",
        default_value_t = true,
        value_parser = boolish(),
        action = clap::ArgAction::Set
    )]
    pub allow_unverified_sign_in: bool,

    /// Refuse new signups.
    #[arg(
        long,
        env = "LOCKSTEP_DISABLE_SIGNUP",
        default_value_t = false,
        value_parser = boolish(), num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set
    )]
    pub disable_signup: bool,

    /// Reverse proxies you run in front of this node. With N > 0 the client IP is the N-th
    /// address from the right of `X-Forwarded-For` (each proxy appends the address it saw, so
    /// the entries left of that are the client's own claims). 0: the socket's peer address.
    #[arg(long, env = "LOCKSTEP_TRUSTED_PROXIES", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=16))]
    pub trusted_proxies: u8,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "LOCKSTEP_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Days the change feed keeps entries; a client further behind does a full pull.
    #[arg(long, env = "LOCKSTEP_FEED_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub feed_retention_days: i64,

    /// How far ahead of this server's clock a client's HLC stamp may be, in seconds.
    #[arg(long, env = "LOCKSTEP_MAX_CLOCK_SKEW", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub max_clock_skew_seconds: u64,

    /// Seconds between SSE heartbeats (comment lines that keep proxies from closing the stream).
    #[arg(long, env = "LOCKSTEP_SSE_HEARTBEAT", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub sse_heartbeat_seconds: u64,

    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open between requests.
    #[arg(long, env = "LOCKSTEP_HEADER_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_timeout_seconds: u64,

    /// Seconds a client has to send a request's body (408 after).
    #[arg(long, env = "LOCKSTEP_BODY_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub body_timeout_seconds: u64,

    /// Open connections (change streams included) one client IP may hold; more are closed at once.
    #[arg(long, env = "LOCKSTEP_MAX_CONNECTIONS_PER_IP", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_ip: u64,

    /// Open connections this node holds in all; keep it below the process's descriptor limit.
    #[arg(long, env = "LOCKSTEP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Authenticated requests of one user that run at once on this node (change streams are
    /// capped apart); more wait up to 2 s for a free slot, then get 429 with `Retry-After`.
    #[arg(long, env = "LOCKSTEP_MAX_REQUESTS_PER_USER", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_requests_per_user: u64,

    /// Seconds a request waits for a database connection before it is answered 503 with
    /// `Retry-After` (the embedded SQLite has one connection, PostgreSQL up to 16 per node).
    #[arg(long, env = "LOCKSTEP_DATABASE_WAIT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub database_wait_seconds: u64,

    /// Change streams one session (one signed-in device) may hold open on this node; opening
    /// one more closes its oldest (`event: session`, reason `too_many_streams`).
    #[arg(long, env = "LOCKSTEP_MAX_STREAMS_PER_SESSION", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_streams_per_session: u64,

    /// Change streams one user may hold open on this node, over all sessions; opening one
    /// more closes the user's oldest. Each sends every change of that user (the feed is read
    /// once per change for all of them).
    #[arg(long, env = "LOCKSTEP_MAX_STREAMS_PER_USER", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_streams_per_user: u64,

    /// Seconds a shutdown waits for requests in flight (streams are ended at once) before the
    /// process exits anyway.
    #[arg(long, env = "LOCKSTEP_SHUTDOWN_GRACE", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub shutdown_grace_seconds: u64,

    /// Password hashes computed at once; each holds ~19 MiB while it runs. Default: one per core.
    #[arg(long, env = "LOCKSTEP_PASSWORD_HASH_THREADS", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub password_hash_threads: Option<u64>,

    /// Password checks (sign-in, signup, password change) that may wait for a free hasher; past
    /// it, requests get 503 with `Retry-After` at once.
    #[arg(long, env = "LOCKSTEP_PASSWORD_QUEUE", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub password_queue: u64,

    /// Of those, how many one client IP may hold; past it, that client gets 429 with
    /// `Retry-After` at once. The hashers serve waiting clients in turn, so anyone else waits
    /// for at most one check per other waiting client.
    #[arg(long, env = "LOCKSTEP_PASSWORD_QUEUE_PER_IP", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub password_queue_per_ip: u64,

    /// Seconds a password check may wait for a hasher before it is answered 503.
    #[arg(long, env = "LOCKSTEP_PASSWORD_WAIT", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub password_wait_seconds: u64,

    #[command(flatten)]
    pub rate_limits: RateLimits,
}

/// Rate limits, each written `COUNT/SECONDS` (e.g. `30/300`: 30 in five minutes).
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimits {
    /// Failed sign-ins per client IP.
    #[arg(long, env = "LOCKSTEP_RATE_SIGN_IN_IP", default_value = "30/300")]
    pub sign_in_failures_per_ip: Limit,
    /// Failed sign-ins per account.
    #[arg(long, env = "LOCKSTEP_RATE_SIGN_IN_ACCOUNT", default_value = "10/900")]
    pub sign_in_failures_per_account: Limit,
    /// Signups per client IP.
    #[arg(long, env = "LOCKSTEP_RATE_SIGNUP_IP", default_value = "30/3600")]
    pub signups_per_ip: Limit,
    /// Verification attempts (links and codes) per client IP.
    #[arg(long, env = "LOCKSTEP_RATE_VERIFY_IP", default_value = "30/300")]
    pub verify_per_ip: Limit,
    /// Wrong emailed codes (`POST /verify` with `token`) per address.
    #[arg(long, env = "LOCKSTEP_RATE_CODE_ACCOUNT", default_value = "5/900")]
    pub code_failures_per_account: Limit,
    /// MFA challenge, verify and recovery-code attempts per client IP.
    #[arg(long, env = "LOCKSTEP_RATE_MFA_IP", default_value = "30/60")]
    pub mfa_per_ip: Limit,
    /// Resend and recovery emails per client IP.
    #[arg(long, env = "LOCKSTEP_RATE_EMAIL_IP", default_value = "10/3600")]
    pub emails_per_ip: Limit,
    /// Minimum seconds between two emails to one address.
    #[arg(long, env = "LOCKSTEP_EMAIL_INTERVAL", default_value_t = 60)]
    pub email_interval_seconds: i64,
}

/// Booleans from flags or the environment: true/false, yes/no, on/off, 1/0.
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// At most `count` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub window: Duration,
}

impl Limit {
    pub const fn new(count: u32, window_seconds: u64) -> Self {
        Limit {
            count,
            window: Duration::from_secs(window_seconds),
        }
    }
}

impl FromStr for Limit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, secs) = s.split_once('/').ok_or_else(|| {
            format!("rate limit '{s}' must be written COUNT/SECONDS, e.g. 30/300")
        })?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("'{count}' is not a count"))?;
        let secs: u64 = secs
            .trim()
            .parse()
            .map_err(|_| format!("'{secs}' is not a number of seconds"))?;
        if count == 0 || secs == 0 {
            return Err("a rate limit needs a count and a window above zero".into());
        }
        Ok(Limit::new(count, secs))
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            sign_in_failures_per_ip: Limit::new(30, 300),
            sign_in_failures_per_account: Limit::new(10, 900),
            signups_per_ip: Limit::new(30, 3600),
            verify_per_ip: Limit::new(30, 300),
            code_failures_per_account: Limit::new(5, 900),
            mfa_per_ip: Limit::new(30, 60),
            emails_per_ip: Limit::new(10, 3600),
            email_interval_seconds: 60,
        }
    }
}

impl Config {
    /// A configuration for tests and embedding: everything at its default, the given data dir.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Config::parse_from(["lockstep-cloud"]);
        // Ignore what the environment says about where things live: the caller decides.
        config.data_dir = data_dir.into();
        config.database_url = None;
        config.public_url = None;
        config.site_url = None;
        config.smtp_url = None;
        config
    }

    /// The password hashing pool in effect.
    pub fn password_pool(&self) -> crate::password::PoolSize {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        crate::password::PoolSize {
            threads: self
                .password_hash_threads
                .map_or(cores, |n| usize::try_from(n).unwrap_or(cores)),
            queue: usize::try_from(self.password_queue).unwrap_or(64),
            per_client: usize::try_from(self.password_queue_per_ip).unwrap_or(8),
            wait: Duration::from_secs(self.password_wait_seconds),
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        self.database_url.as_ref().map_or_else(
            || {
                format!(
                    "sqlite://{}?mode=rwc",
                    self.data_dir.join("lockstep.sqlite3").display()
                )
            },
            |url| url.expose().to_owned(),
        )
    }

    /// The public base URL, without a trailing slash.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.bind))
            .trim_end_matches('/')
            .to_owned()
    }

    /// Where verification redirects land by default.
    pub fn site_url(&self) -> String {
        self.site_url
            .clone()
            .unwrap_or_else(|| format!("{}/", self.public_url()))
    }
}

/// A URL that may carry credentials (`postgres://user:password@host/db`,
/// `smtps://user:password@host`): its `Debug` form shows the password as `***`, so printing a
/// [`Config`] never prints one. [`CredentialUrl::expose`] gives the URL itself.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialUrl(String);

impl CredentialUrl {
    /// The URL, credentials included: for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for CredentialUrl {
    fn from(url: String) -> CredentialUrl {
        CredentialUrl(url)
    }
}

impl FromStr for CredentialUrl {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<CredentialUrl, Self::Err> {
        Ok(CredentialUrl(url.to_owned()))
    }
}

impl std::fmt::Debug for CredentialUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    // Only fails for URLs that cannot have credentials, which this one has.
                    let _ = url.set_password(Some("***"));
                }
                write!(f, "{:?}", url.as_str())
            }
            Err(_) => f.write_str("\"<not a URL: hidden>\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_count_per_seconds() {
        assert_eq!("30/300".parse::<Limit>(), Ok(Limit::new(30, 300)));
        assert!("30".parse::<Limit>().unwrap_err().contains("COUNT/SECONDS"));
        assert!("0/10".parse::<Limit>().is_err());
        assert!("x/10".parse::<Limit>().is_err());
    }

    #[test]
    fn boolean_flags_take_words_and_digits() {
        let parse = |args: &[&str]| Config::try_parse_from(args).map(|c| c.dev);
        assert_eq!(parse(&["x"]).ok(), Some(false));
        assert_eq!(parse(&["x", "--dev"]).ok(), Some(true));
        assert_eq!(parse(&["x", "--dev=1"]).ok(), Some(true));
        assert_eq!(parse(&["x", "--dev=no"]).ok(), Some(false));
        assert!(Config::try_parse_from(["x", "--jwt-expiry-seconds=0"]).is_err());
        assert!(Config::try_parse_from(["x", "--jwt-expiry-seconds=-60"]).is_err());
    }

    #[test]
    fn debug_output_hides_the_passwords_in_urls() {
        let config = Config::try_parse_from([
            "x",
            "--database-url",
            "postgres://app:hunter2@db.internal:5432/lockstep",
            "--smtp-url",
            "smtps://mailer:s3cret@smtp.example.com:465",
        ])
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://app:***@db.internal:5432/lockstep"),
            "{shown}"
        );
        assert_eq!(
            config.database_url(),
            "postgres://app:hunter2@db.internal:5432/lockstep"
        );
        assert_eq!(
            format!("{:?}", CredentialUrl::from("not a url".to_owned())),
            "\"<not a URL: hidden>\""
        );
    }

    #[test]
    fn defaults_point_into_the_data_dir() {
        let config = Config::for_data_dir("/tmp/x");
        assert_eq!(
            config.database_url(),
            "sqlite:///tmp/x/lockstep.sqlite3?mode=rwc"
        );
        assert_eq!(config.public_url(), "http://127.0.0.1:54321");
        assert_eq!(config.site_url(), "http://127.0.0.1:54321/");
    }
}
