//! Group commit: concurrent writes share one transaction, so one disk flush acknowledges many.
//!
//! A commit waits for the disk (SQLite `synchronous = FULL`, PostgreSQL's default), and on
//! SQLite one connection writes at a time, so writes one transaction each top out at one flush
//! apiece (~4,000 a second on this kind of disk, fewer with the statements around them). Here
//! a single task takes the writes waiting in a queue, runs each inside a savepoint of one
//! transaction (a write that fails rolls back to its savepoint and leaves the others alone),
//! commits once, and only then answers each of them. No write is acknowledged before the
//! commit that holds it returned, so every acknowledged write survives a crash or power loss,
//! as before; a failed commit fails every write of the batch, and none of them took effect.
//!
//! A write that arrives while a batch commits waits for the next batch; under no load a batch
//! is one write, so the latency is that of a plain transaction.
//!
//! There are one or more lanes, each a task with its own transaction, and a write names a key
//! (the user) that always goes to the same lane, so one user's writes never wait on each
//! other's row locks across lanes. SQLite gets one lane (it has one writer anyway).
//! PostgreSQL gets none ([`GroupCommit::direct`]): each write is its own transaction on its own
//! pooled connection, as PostgreSQL already flushes concurrent commits together, and batches
//! of several users' row locks could deadlock against another node's batches.

use futures::future::BoxFuture;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiResult};

/// Writes one batch holds at most (a bound on how long the first of them waits).
pub const MAX_BATCH: usize = 64;

/// Writes waiting for a batch; past this, callers wait to enqueue (backpressure).
const QUEUE: usize = 1024;

/// What a queued write did: whether it failed (then its savepoint is rolled back), and how to
/// answer it once the batch's commit returned.
struct Done {
    failed: bool,
    answer: Answer,
}

type Job = Box<dyn for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Done> + Send>;

/// The queues of writes to commit in groups, one per lane; cloning shares them.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    Lanes(Vec<mpsc::Sender<Job>>),
    /// A transaction per write.
    Direct(AnyPool),
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Done")
            .field("failed", &self.failed)
            .finish()
    }
}

impl GroupCommit {
    /// Starts `lanes` committing tasks on `pool` (each takes one connection per batch). They
    /// end when every clone of the returned handle is dropped.
    pub fn start(pool: &AnyPool, lanes: usize) -> GroupCommit {
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (jobs, queue) = mpsc::channel(QUEUE);
                tokio::spawn(commit_batches(pool.clone(), queue));
                jobs
            })
            .collect();
        GroupCommit {
            mode: Mode::Lanes(lanes),
        }
    }

    /// No batching: each write runs in a transaction of its own.
    pub fn direct(pool: &AnyPool) -> GroupCommit {
        GroupCommit {
            mode: Mode::Direct(pool.clone()),
        }
    }

    /// Runs `work` in the next batch's transaction of `key`'s lane and returns its result once
    /// that transaction committed. `work` sees a connection inside a savepoint: if it returns
    /// an error, its statements are rolled back and the rest of the batch goes on.
    pub async fn write<T, F>(&self, key: &str, work: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, ApiResult<T>> + Send + 'static,
    {
        let lanes = match &self.mode {
            Mode::Lanes(lanes) => lanes,
            Mode::Direct(pool) => {
                let mut tx = pool.begin().await?;
                let result = work(&mut tx).await?;
                tx.commit().await?;
                return Ok(result);
            }
        };
        let (reply, answer) = oneshot::channel::<ApiResult<T>>();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = work(conn).await;
                Done {
                    failed: result.is_err(),
                    answer: Box::new(move |committed: Result<(), String>| {
                        let result = match committed {
                            Ok(()) => result,
                            // A write that failed says why, whatever became of the batch.
                            Err(_) if result.is_err() => result,
                            // The write did not take effect: the client may retry it.
                            Err(error) => Err(ApiError::from(anyhow::anyhow!(
                                "the transaction holding this write failed to commit: {error}"
                            ))),
                        };
                        let _ = reply.send(result);
                    }),
                }
            })
        });
        let lane = {
            use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
            let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
            usize::try_from(hash % lanes.len() as u64).unwrap_or(0)
        };
        lanes[lane]
            .send(job)
            .await
            .map_err(|_| ApiError::from(anyhow::anyhow!("the writer has stopped")))?;
        // Dropped unanswered: no transaction could start (e.g. the pool timed out).
        answer
            .await
            .map_err(|_| ApiError::busy("no database transaction could start", 1))?
    }
}

async fn commit_batches(pool: AnyPool, mut queue: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (answers, committed) = commit_batch(&pool, std::mem::take(&mut batch)).await;
        for answer in answers {
            answer(committed.clone());
        }
    }
}

/// What each write of a batch is told once the batch ended: `Ok` when it committed.
type Answer = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Runs one batch in one transaction; returns each write's answer and the commit's outcome.
/// A write whose job never ran (no transaction could start) is dropped: its caller hears that
/// the server is busy.
async fn commit_batch(pool: &AnyPool, batch: Vec<Job>) -> (Vec<Answer>, Result<(), String>) {
    let mut answers = Vec::with_capacity(batch.len());
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(error) => {
            tracing::warn!(%error, "cannot start a write transaction");
            return (answers, Err(error.to_string()));
        }
    };
    // One savepoint at a time, named `write`: ending one write's and opening the next's is one
    // round trip to the database (a statement costs a hop to sqlx's SQLite thread and back).
    if let Err(error) = statements(&mut tx, "SAVEPOINT write").await {
        tracing::warn!(%error, "cannot open a savepoint");
        let _ = tx.rollback().await;
        return (answers, Err(error.to_string()));
    }
    for job in batch {
        let done = job(&mut tx).await;
        answers.push(done.answer);
        let next = if done.failed {
            "ROLLBACK TO SAVEPOINT write; RELEASE SAVEPOINT write; SAVEPOINT write"
        } else {
            "RELEASE SAVEPOINT write; SAVEPOINT write"
        };
        if let Err(error) = statements(&mut tx, next).await {
            // The transaction is in an unknown state: none of the batch takes effect, and the
            // writes not run yet are dropped (their callers hear that the server is busy).
            tracing::warn!(%error, "cannot end a savepoint; rolling the batch back");
            let _ = tx.rollback().await;
            return (answers, Err(error.to_string()));
        }
    }
    // COMMIT releases the last, empty savepoint.
    let committed = tx.commit().await.map_err(|e| e.to_string());
    if let Err(error) = &committed {
        tracing::warn!(%error, "a batch of writes failed to commit");
    }
    (answers, committed)
}

/// Runs `sql` (one or more statements, no parameters) in one round trip. SQLite runs every
/// statement of the text; the lanes are for SQLite (PostgreSQL writes directly).
fn statements<'c>(
    conn: &'c mut AnyConnection,
    sql: &'static str,
) -> BoxFuture<'c, sqlx::Result<()>> {
    Box::pin(async move { sqlx::Executor::execute(conn, sql).await.map(|_| ()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pool(dir: &tempfile::TempDir) -> AnyPool {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (id BIGINT PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        pool
    }

    fn insert(
        id: i64,
    ) -> impl for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, ApiResult<i64>> {
        move |conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (id) VALUES ($1)")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                Ok(id)
            })
        }
    }

    async fn ids(pool: &AnyPool) -> Vec<i64> {
        sqlx::query_scalar("SELECT id FROM t ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    /// A burst of concurrent writes, some of which fail (a duplicate key, or an error after
    /// their statement ran): every write that was answered Ok is in the table, every one
    /// that failed left nothing behind, and each caller got its own answer.
    #[tokio::test]
    async fn a_burst_keeps_exactly_the_writes_that_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        let writes = GroupCommit::start(&pool, 1);
        let results = futures::future::join_all((0..300_i64).map(|i| {
            let writes = writes.clone();
            async move {
                let id = i % 250; // 50 duplicates: the second of each fails
                let outcome = if i % 7 == 0 {
                    // Runs its insert, then fails: the insert must be rolled back.
                    writes
                        .write("k", move |conn| {
                            Box::pin(async move {
                                insert(1000 + i)(conn).await?;
                                Err::<i64, _>(ApiError::validation("refused after writing"))
                            })
                        })
                        .await
                } else {
                    writes.write(&format!("k{i}"), insert(id)).await
                };
                (i, outcome)
            }
        }))
        .await;
        let mut expected = Vec::new();
        for (i, outcome) in &results {
            if let Ok(id) = outcome {
                assert_eq!(*id, i % 250, "write {i} got another write's answer");
                expected.push(*id);
            }
        }
        expected.sort_unstable();
        assert_eq!(ids(&pool).await, expected);
        // And nothing failed that should not have: each id was taken by exactly one of its
        // writes that did not fail on purpose.
        let mut takeable: Vec<i64> = (0..300_i64)
            .filter(|i| i % 7 != 0)
            .map(|i| i % 250)
            .collect();
        takeable.sort_unstable();
        takeable.dedup();
        assert_eq!(expected, takeable, "a write failed because of another one");
        assert!(
            results.iter().filter(|(_, o)| o.is_err()).count() >= 300 / 7,
            "the failing writes failed"
        );
    }

    /// Writes are answered only once their batch's commit returned: when the commit fails
    /// (here a deferred foreign key, checked at COMMIT), every write of that batch fails,
    /// including those whose statements went through, and none of them is in the table.
    #[tokio::test]
    async fn a_failed_commit_fails_every_write_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(&dir).await;
        for statement in [
            "PRAGMA foreign_keys = ON",
            "CREATE TABLE p (id BIGINT PRIMARY KEY)",
            "CREATE TABLE c (id BIGINT PRIMARY KEY, p BIGINT REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED)",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        let writes = GroupCommit::start(&pool, 1);
        let wait = || tokio::time::sleep(std::time::Duration::from_millis(20));
        // Hold the only connection so the writes queue up behind the first one.
        let held = pool.acquire().await.unwrap();
        let first = tokio::spawn({
            let writes = writes.clone();
            async move { writes.write("k", insert(1)).await }
        });
        wait().await;
        let rest: Vec<_> = (2..10)
            .map(|id| {
                let writes = writes.clone();
                tokio::spawn(async move { writes.write("k", insert(id)).await })
            })
            .collect();
        wait().await;
        let dangling = tokio::spawn({
            let writes = writes.clone();
            async move {
                writes
                    .write("k", |conn| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO c (id, p) VALUES (1, 999)")
                                .execute(&mut *conn)
                                .await?;
                            Ok(0_i64)
                        })
                    })
                    .await
            }
        });
        wait().await;
        drop(held);
        assert_eq!(first.await.unwrap().unwrap(), 1, "the first batch commits");
        for write in rest {
            assert!(
                write.await.unwrap().is_err(),
                "a write of the batch whose commit failed was answered Ok"
            );
        }
        assert!(dangling.await.unwrap().is_err());
        assert_eq!(ids(&pool).await, [1]);
    }
}
