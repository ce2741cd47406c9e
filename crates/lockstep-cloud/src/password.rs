//! Password hashing with argon2id on a fixed set of worker threads, shared fairly.
//!
//! Each argon2 hash needs ~19 MiB. Hashing on an unbounded blocking pool let a burst of
//! sign-ins run hundreds at once (gigabytes, and other users waiting seconds) and left the
//! memory with the allocator afterwards. Here a few threads (one per core by default) each own
//! one argon2 memory block, reused for every hash, so memory is fixed at start and never
//! churns.
//!
//! Waiting checks queue per client (the caller's IP): the threads take the clients in turn, one
//! check each, so a client who sends hundreds of checks waits behind its own, and anyone else
//! waits for at most one check per other waiting client. A client holds at most `per_client`
//! places ([`HashError::ClientBusy`], answered 429), the node at most `queue` ([`Busy`], 503),
//! and a check waits at most `wait` (503); each answer carries `Retry-After`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Condvar, Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, SaltString, rand_core::OsRng},
};
use lockstep_protocol::auth::ErrorCode;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// How many checks may run and wait, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    pub threads: usize,
    /// Checks waiting on the whole node.
    pub queue: usize,
    /// Checks waiting for one client.
    pub per_client: usize,
    pub wait: Duration,
}

/// The hashing pool is saturated: retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Why a check did not give an answer.
#[derive(Debug)]
pub enum HashError {
    /// The node's queue is full, or the check waited too long.
    Busy(Busy),
    /// This client already has its share of the queue.
    ClientBusy,
    Failed(anyhow::Error),
}

impl From<HashError> for crate::error::ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy(Busy) => {
                crate::error::ApiError::busy("too many password checks at once", 2)
            }
            HashError::ClientBusy => crate::error::ApiError::Auth {
                status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                code: ErrorCode::OverRequestRateLimit,
                message: "Too many password checks from your address at once: wait for their \
                          answers, then try again."
                    .into(),
                retry_after: Some(2),
                reasons: None,
            },
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

/// Waiting items, one line per client, served one item per client in turn.
#[derive(Debug)]
struct FairQueue<T> {
    lines: HashMap<String, VecDeque<T>>,
    /// Clients with something waiting, in the order they are served next.
    turns: VecDeque<String>,
    len: usize,
    capacity: usize,
    per_client: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Full,
    ClientFull,
}

impl<T> FairQueue<T> {
    fn new(capacity: usize, per_client: usize) -> Self {
        FairQueue {
            lines: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
            capacity: capacity.max(1),
            per_client: per_client.max(1),
        }
    }

    fn push(&mut self, client: &str, item: T) -> Result<(), Refused> {
        let waiting = self.lines.get(client).map_or(0, VecDeque::len);
        if waiting >= self.per_client {
            return Err(Refused::ClientFull);
        }
        if self.len >= self.capacity {
            return Err(Refused::Full);
        }
        if waiting == 0 {
            self.turns.push_back(client.to_owned());
        }
        self.lines
            .entry(client.to_owned())
            .or_default()
            .push_back(item);
        self.len += 1;
        Ok(())
    }

    /// The next client's oldest item; that client goes to the back of the turns.
    fn pop(&mut self) -> Option<T> {
        let client = self.turns.pop_front()?;
        let line = self.lines.get_mut(&client)?;
        let item = line.pop_front();
        if line.is_empty() {
            self.lines.remove(&client);
        } else {
            self.turns.push_back(client);
        }
        self.len -= usize::from(item.is_some());
        item
    }
}

/// The queue the threads share, and whether the pool was dropped.
struct Shared {
    queue: Mutex<(FairQueue<Job>, bool)>,
    ready: Condvar,
}

/// The node's password hashers. Dropping it stops the threads once their queue is empty.
pub struct Passwords {
    shared: Arc<Shared>,
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

impl Drop for Passwords {
    fn drop(&mut self) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.1 = true;
        self.shared.ready.notify_all();
    }
}

impl Passwords {
    pub fn start(size: PoolSize) -> anyhow::Result<Passwords> {
        let threads = size.threads.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::new((FairQueue::new(size.queue, size.per_client), false)),
            ready: Condvar::new(),
        });
        for n in 0..threads {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("lockstep-password-{n}"))
                .spawn(move || work(&shared))
                .context("cannot start a password hashing thread")?;
        }
        Ok(Passwords {
            shared,
            wait: size.wait,
            threads,
        })
    }

    /// Hashes a password into a PHC string (argon2id, the crate's recommended parameters), in
    /// `client`'s line.
    pub async fn hash(&self, client: &str, password: String) -> Result<String, HashError> {
        match self.run(client, Work::Hash(password)).await? {
            Done::Hashed(phc) => Ok(phc),
            Done::Verified(_) => Err(HashError::Failed(anyhow::anyhow!(
                "hasher answered a check"
            ))),
        }
    }

    /// Checks a password against a stored hash, in `client`'s line. With `None` (unknown
    /// account) it still spends the same work on a dummy hash, so response time does not
    /// reveal which emails exist.
    pub async fn verify(
        &self,
        client: &str,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        match self.run(client, Work::Verify { password, stored }).await? {
            Done::Verified(ok) => Ok(ok),
            Done::Hashed(_) => Err(HashError::Failed(anyhow::anyhow!("hasher answered a hash"))),
        }
    }

    async fn run(&self, client: &str, work: Work) -> Result<Done, HashError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work,
            deadline: Instant::now() + self.wait,
            reply,
        };
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            match queue.0.push(client, job) {
                Ok(()) => self.shared.ready.notify_one(),
                Err(Refused::Full) => return Err(HashError::Busy(Busy)),
                Err(Refused::ClientFull) => return Err(HashError::ClientBusy),
            }
        }
        match tokio::time::timeout(self.wait, answer).await {
            Err(_) => Err(HashError::Busy(Busy)),
            Ok(Err(_)) => Err(HashError::Busy(Busy)), // skipped: its deadline passed
            Ok(Ok(done)) => done.map_err(HashError::Failed),
        }
    }
}

/// One hashing thread: takes jobs in turn until the pool is dropped, with one reused memory
/// block.
fn work(shared: &Shared) {
    let mut memory = vec![Block::default(); Params::default().block_count()];
    loop {
        let job = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(job) = queue.0.pop() {
                    break job;
                }
                if queue.1 {
                    return;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
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
            per_client: queue,
            wait: Duration::from_secs(30),
        })
        .expect("start")
    }

    #[test]
    fn the_queue_serves_clients_in_turn_and_bounds_each() {
        let mut queue = FairQueue::new(10, 3);
        for n in 0..3 {
            queue.push("attacker", format!("a{n}")).unwrap();
        }
        assert_eq!(
            queue.push("attacker", "a3".into()),
            Err(Refused::ClientFull)
        );
        queue.push("bob", "b0".into()).unwrap();
        queue.push("carol", "c0".into()).unwrap();
        queue.push("bob", "b1".into()).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, ["a0", "b0", "c0", "a1", "b1", "a2"]);
        assert_eq!(queue.len, 0);
        // The node's bound holds whatever the clients.
        let mut small = FairQueue::new(2, 2);
        small.push("x", 1).unwrap();
        small.push("y", 2).unwrap();
        assert_eq!(small.push("z", 3), Err(Refused::Full));
    }

    proptest::proptest! {
        /// Whatever the arrivals, every item comes out once, each client's in its own order,
        /// and between two items of one client every other waiting client gets a turn.
        #[test]
        fn every_item_comes_out_once_in_turn(arrivals in proptest::collection::vec(0u8..4, 0..60)) {
            let mut queue = FairQueue::new(usize::MAX, usize::MAX);
            for (n, client) in arrivals.iter().enumerate() {
                queue.push(&client.to_string(), (*client, n)).unwrap();
            }
            let out: Vec<(u8, usize)> = std::iter::from_fn(|| queue.pop()).collect();
            proptest::prop_assert_eq!(out.len(), arrivals.len());
            for client in 0u8..4 {
                let mine: Vec<usize> = out.iter().filter(|(c, _)| *c == client).map(|(_, n)| *n).collect();
                proptest::prop_assert!(mine.windows(2).all(|w| w[0] < w[1]));
            }
            // Round-robin: in any window of as many pops as there are clients, no client twice
            // while another still had items waiting.
            let clients: std::collections::BTreeSet<u8> = arrivals.iter().copied().collect();
            let total = |c: u8| arrivals.iter().filter(|&&a| a == c).count();
            for (i, (c, _)) in out.iter().enumerate() {
                if let Some((j, _)) = out[i + 1..].iter().enumerate().find(|(_, (d, _))| d == c) {
                    let between: std::collections::BTreeSet<u8> = out[i + 1..i + 1 + j].iter().map(|(d, _)| *d).collect();
                    for other in &clients {
                        let served_before = out[..=i].iter().filter(|(d, _)| d == other).count();
                        if other != c && served_before < total(*other) {
                            proptest::prop_assert!(between.contains(other), "{other} skipped between two of {c}: {out:?}");
                        }
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn hashes_verify_only_the_right_password() {
        let passwords = pool(1, 4);
        let stored = passwords
            .hash("ip", "Secret pass 1".into())
            .await
            .expect("hash");
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(
            passwords
                .verify("ip", "Secret pass 1".into(), Some(stored.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("ip", "secret pass 1".into(), Some(stored))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("ip", "lockstep dummy password".into(), None)
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
                .verify("ip", "Secret pass 1".into(), Some(theirs))
                .await
                .expect("verify")
        );
        let ours = passwords
            .hash("ip", "Secret pass 2".into())
            .await
            .expect("hash");
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
            .map(|n| {
                let passwords = Arc::clone(&passwords);
                let client = format!("ip{n}");
                tokio::spawn(async move { passwords.verify(&client, "x".into(), None).await })
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_client_past_its_share_is_told_at_once_and_others_still_queue() {
        let passwords = Arc::new(
            Passwords::start(PoolSize {
                threads: 1,
                queue: 100,
                per_client: 2,
                wait: Duration::from_secs(30),
            })
            .expect("start"),
        );
        let checks: Vec<_> = (0..10)
            .map(|_| {
                let passwords = Arc::clone(&passwords);
                tokio::spawn(async move { passwords.verify("flood", "x".into(), None).await })
            })
            .collect();
        let other = passwords.verify("other", "x".into(), None).await;
        assert!(matches!(other, Ok(false)), "{other:?}");
        let mut told = 0;
        for check in checks {
            match check.await.expect("join") {
                Err(HashError::ClientBusy) => told += 1,
                Ok(false) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(told > 0, "ten at once past a share of two: none refused");
    }
}
