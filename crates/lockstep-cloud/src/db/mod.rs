//! Storage: one SQL dialect subset that SQLite and PostgreSQL both run, through `sqlx::Any`.
//!
//! Queries are written once with `$N` placeholders (both drivers accept them) and use only
//! portable types: TEXT for ids and JSON, BIGINT milliseconds for times, BLOB/BYTEA for bytes.
//! Each backend has its own append-only migrations directory, applied at start.
//!
//! Functions take `&mut AnyConnection`, so they run the same on a pooled connection or inside a
//! transaction. One module per aggregate.

pub mod audit;
pub mod devices;
pub mod feed;
pub mod mfa;
pub mod nodes;
pub mod sessions;
pub mod settings;
pub mod tokens;
pub mod users;

use std::time::Duration;

use anyhow::Context;
use sqlx::{AnyPool, any::AnyPoolOptions, migrate::Migrator};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> anyhow::Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!("database URL must start with sqlite:// or postgres://")
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// How many read-only connections SQLite gets besides its one writer.
const SQLITE_READERS: u32 = 4;

/// The connection pools and what they talk to.
#[derive(Debug, Clone)]
pub struct Db {
    /// Every write, and every read that needs a transaction with a write. On SQLite this is one
    /// connection, which serialises every transaction.
    pub pool: AnyPool,
    /// Reads that need no transaction with a write: a few read-only connections on SQLite (in
    /// write-ahead-log mode they read beside the writer and see every commit made before their
    /// read began); on PostgreSQL, and for an in-memory SQLite database (which no second
    /// connection could open), the same pool as [`Db::pool`].
    pub readers: AnyPool,
    pub backend: Backend,
}

impl Db {
    /// Connects and applies the backend's migrations. A request that waits longer than `wait`
    /// for a connection fails with `PoolTimedOut` (answered 503 with `Retry-After`).
    pub async fn connect(url: &str, wait: Duration) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let options = AnyPoolOptions::new().acquire_timeout(wait);
        // SQLite allows one writer at a time, and a transaction that upgrades from reading to
        // writing fails at once (SQLITE_BUSY) instead of waiting. One connection serialises
        // every write transaction; reads that need none go to `readers`, and concurrent pushes
        // share transactions (`crate::group_commit`).
        let options = match backend {
            // Write-ahead logging: readers never block the writer, and a commit is one append.
            // `synchronous` stays FULL (the default), so a commit that was acknowledged
            // survives power loss.
            Backend::Sqlite => options.max_connections(1).after_connect(|conn, _| {
                Box::pin(pragmas(conn, &["journal_mode = WAL", "foreign_keys = ON"]))
            }),
            Backend::Postgres => options.max_connections(16),
        };
        let pool = options.connect(url).await.with_context(|| {
            format!(
                "cannot open the {} database (check DATABASE_URL)",
                backend.name()
            )
        })?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .context("cannot apply database migrations")?;
        let readers = match backend {
            Backend::Sqlite if !is_in_memory(url) => {
                // Opened after the migrations, so the file exists and is in WAL mode.
                AnyPoolOptions::new()
                    .acquire_timeout(wait)
                    .max_connections(SQLITE_READERS)
                    .after_connect(|conn, _| Box::pin(pragmas(conn, &["query_only = ON"])))
                    .connect(url)
                    .await
                    .context("cannot open the sqlite database for reading")?
            }
            _ => pool.clone(),
        };
        Ok(Db {
            pool,
            readers,
            backend,
        })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// Sets SQLite pragmas on a new connection, and a wait of up to 5 s for a lock (another
/// process, or a reader checkpointing) instead of failing at once.
async fn pragmas(conn: &mut sqlx::AnyConnection, pragmas: &[&str]) -> sqlx::Result<()> {
    for pragma in pragmas.iter().chain(&["busy_timeout = 5000"]) {
        sqlx::query(&format!("PRAGMA {pragma}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Whether a SQLite URL names an in-memory database, which each connection would open afresh.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Whether an error is a violated unique constraint.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}
