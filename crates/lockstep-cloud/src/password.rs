//! Password hashing with argon2id on a fixed set of worker threads.
//!
//! Each argon2 hash needs ~19 MiB. Hashing on an unbounded blocking pool let a burst of
//! sign-ins run hundreds at once (gigabytes, and other users waiting seconds) and left the
//! memory with the allocator afterwards. Here a few threads (one per core by default) each own
//! one argon2 memory block, reused for every hash, so memory is fixed at start and never
//! churns; at most `queue` checks wait for a thread, each at most `wait`; past either, the
//! caller gets [`Busy`] at once (answered 503 with `Retry-After`) instead of piling up.

use std::{
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, SaltString, rand_core::OsRng},
};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// How many checks may run and wait, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    pub threads: usize,
    pub queue: usize,
    pub wait: Duration,
}

/// The hashing pool is saturated: retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Why a check did not give an answer.
#[derive(Debug)]
pub enum HashError {
    Busy(Busy),
    Failed(anyhow::Error),
}

impl From<HashError> for crate::error::ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy(Busy) => {
                crate::error::ApiError::busy("too many password checks at once", 2)
            }
            HashError::Failed(e) => crate::error::ApiError::Internal(e),
        }
    }
}

enum Work {
    Hash(String),
    Verify {
        password: String,
        stored: Option<String>,
    },
}

enum Done {
    Hashed(String),
    Verified(bool),
}

struct Job {
    work: Work,
    /// The caller stops waiting then; a job still queued past it is skipped.
    deadline: Instant,
    reply: oneshot::Sender<anyhow::Result<Done>>,
}

/// The node's password hashers. Dropping it stops the threads once their queue is empty.
pub struct Passwords {
    jobs: mpsc::SyncSender<Job>,
    wait: Duration,
    threads: usize,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("threads", &self.threads)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl Passwords {
    pub fn start(size: PoolSize) -> anyhow::Result<Passwords> {
        let threads = size.threads.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(size.queue);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("lockstep-password-{n}"))
                .spawn(move || work(&queue))
                .context("cannot start a password hashing thread")?;
        }
        Ok(Passwords {
            jobs,
            wait: size.wait,
            threads,
        })
    }

    /// Hashes a password into a PHC string (argon2id, the crate's recommended parameters).
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        match self.run(Work::Hash(password)).await? {
            Done::Hashed(phc) => Ok(phc),
            Done::Verified(_) => Err(HashError::Failed(anyhow::anyhow!(
                "hasher answered a check"
            ))),
        }
    }

    /// Checks a password against a stored hash. With `None` (unknown account) it still spends
    /// the same work on a dummy hash, so response time does not reveal which emails exist.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        match self.run(Work::Verify { password, stored }).await? {
            Done::Verified(ok) => Ok(ok),
            Done::Hashed(_) => Err(HashError::Failed(anyhow::anyhow!("hasher answered a hash"))),
        }
    }

    async fn run(&self, work: Work) -> Result<Done, HashError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work,
            deadline: Instant::now() + self.wait,
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => return Err(HashError::Busy(Busy)),
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(HashError::Failed(anyhow::anyhow!(
                    "password hashers stopped"
                )));
            }
        }
        match tokio::time::timeout(self.wait, answer).await {
            Err(_) => Err(HashError::Busy(Busy)),
            Ok(Err(_)) => Err(HashError::Busy(Busy)), // skipped: its deadline passed
            Ok(Ok(done)) => done.map_err(HashError::Failed),
        }
    }
}

/// One hashing thread: takes jobs until the pool is dropped, with one reused memory block.
fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    let mut memory = vec![Block::default(); Params::default().block_count()];
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.recv()
        };
        let Ok(job) = job else { return };
        if job.reply.is_closed() || Instant::now() > job.deadline {
            continue; // nobody waits for it any more
        }
        let done = match job.work {
            Work::Hash(password) => hash_with(&mut memory, &password).map(Done::Hashed),
            Work::Verify { password, stored } => {
                verify_with(&mut memory, &password, stored.as_deref()).map(Done::Verified)
            }
        };
        let _ = job.reply.send(done);
    }
}

fn hash_with(memory: &mut Vec<Block>, password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::default();
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    compute(
        memory,
        Algorithm::Argon2id,
        Version::V0x13,
        params.clone(),
        password,
        salt_raw,
        &mut out,
    )?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params)
            .try_into()
            .map_err(|e| anyhow::anyhow!("params: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("output: {e}"))?),
    };
    Ok(phc.to_string())
}

fn verify_with(
    memory: &mut Vec<Block>,
    password: &str,
    stored: Option<&str>,
) -> anyhow::Result<bool> {
    let known = stored.is_some();
    let stored = match stored {
        Some(stored) => stored.to_owned(),
        None => dummy_hash(memory)?.to_owned(),
    };
    let parsed = PasswordHash::new(&stored).map_err(|e| anyhow::anyhow!("bad hash: {e}"))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| anyhow::anyhow!("{e}"))?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        anyhow::bail!("stored hash has no salt or output");
    };
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let mut out = vec![0u8; expected.len()];
    compute(
        memory, algorithm, version, params, password, salt_raw, &mut out,
    )?;
    let ok: bool = out.as_slice().ct_eq(expected.as_bytes()).into();
    Ok(ok && known)
}

fn compute(
    memory: &mut Vec<Block>,
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &str,
    salt: &[u8],
    out: &mut [u8],
) -> anyhow::Result<()> {
    let blocks = params.block_count();
    if memory.len() < blocks {
        // Only hashes stored with larger parameters than ours get here.
        memory.resize(blocks, Block::default());
    }
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .map_err(|e| anyhow::anyhow!("argon2 failed: {e}"))
}

fn dummy_hash(memory: &mut Vec<Block>) -> anyhow::Result<&'static str> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(dummy) = DUMMY.get() {
        return Ok(dummy);
    }
    let dummy = hash_with(memory, "lockstep dummy password")?;
    Ok(DUMMY.get_or_init(|| dummy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize, queue: usize) -> Passwords {
        Passwords::start(PoolSize {
            threads,
            queue,
            wait: Duration::from_secs(30),
        })
        .expect("start")
    }

    #[tokio::test]
    async fn hashes_verify_only_the_right_password() {
        let passwords = pool(1, 4);
        let stored = passwords.hash("Secret pass 1".into()).await.expect("hash");
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(
            passwords
                .verify("Secret pass 1".into(), Some(stored.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("secret pass 1".into(), Some(stored))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("lockstep dummy password".into(), None)
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crate_itself_verify_and_ours_verify_there() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let passwords = pool(1, 4);
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::default()
            .hash_password(b"Secret pass 1", &salt)
            .expect("hash")
            .to_string();
        assert!(
            passwords
                .verify("Secret pass 1".into(), Some(theirs))
                .await
                .expect("verify")
        );
        let ours = passwords.hash("Secret pass 2".into()).await.expect("hash");
        let parsed = PasswordHash::new(&ours).expect("parse");
        assert!(
            Argon2::default()
                .verify_password(b"Secret pass 2", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"Secret pass 3", &parsed)
                .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_answers_busy_at_once_and_the_rest_still_get_answers() {
        let passwords = Arc::new(pool(1, 2));
        let checks: Vec<_> = (0..12)
            .map(|_| {
                let passwords = Arc::clone(&passwords);
                tokio::spawn(async move { passwords.verify("x".into(), None).await })
            })
            .collect();
        let mut busy = 0;
        let mut answered = 0;
        for check in checks {
            match check.await.expect("join") {
                Ok(false) => answered += 1,
                Err(HashError::Busy(Busy)) => busy += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            busy > 0,
            "12 checks into 1 thread and 2 places must overflow"
        );
        assert!(answered >= 1, "the queued ones are answered");
        assert_eq!(busy + answered, 12);
    }
}
