//! Work a request hands off so that its answer neither waits for it nor reveals how long it
//! took. `recover` and `resend` answer `{}` at once for any address; whether the address has an
//! account, and the token, the security-log entry and the mail that follow if it does, are
//! settled here afterwards, so a known address is not measurably slower than an unknown one.
//!
//! Bounded: past [`MAX_PENDING`] tasks new work is dropped with a warning (the caller's answer
//! promised nothing, and the per-IP mail limit keeps honest use far below it). A graceful
//! shutdown waits for pending work within its grace period.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::Notify;

use crate::error::ApiResult;

/// At most this many handed-off tasks at once on a node.
pub const MAX_PENDING: usize = 1024;

/// The tasks handed off on this node.
#[derive(Debug, Default)]
pub struct Deferred {
    pending: AtomicUsize,
    idle: Notify,
}

impl Deferred {
    /// Runs `work` after the answer; failures are logged under `what`.
    pub fn spawn(
        self: &Arc<Self>,
        what: &'static str,
        work: impl Future<Output = ApiResult<()>> + Send + 'static,
    ) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            self.finish_one();
            tracing::warn!(what, "too much deferred work on this node; dropped");
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = work.await {
                tracing::error!(what, ?error, "deferred work failed");
            }
            this.finish_one();
        });
    }

    fn finish_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Completes when no handed-off work is pending (at once if none is).
    pub async fn settled(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn settled_waits_for_every_pending_task() {
        let deferred = Arc::new(Deferred::default());
        deferred.settled().await; // nothing pending
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&done);
        deferred.spawn("test", async move {
            let _ = released.await;
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let waiting = tokio::spawn({
            let deferred = Arc::clone(&deferred);
            async move { deferred.settled().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a task is still pending");
        release.send(()).unwrap();
        waiting.await.unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn work_past_the_bound_is_dropped_not_queued() {
        let deferred = Arc::new(Deferred::default());
        let (release, released) = tokio::sync::watch::channel(false);
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..MAX_PENDING + 10 {
            let mut released = released.clone();
            let ran = Arc::clone(&ran);
            deferred.spawn("test", async move {
                let _ = released.wait_for(|r| *r).await;
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
        }
        release.send_replace(true);
        deferred.settled().await;
        assert_eq!(ran.load(Ordering::SeqCst), MAX_PENDING);
    }
}
