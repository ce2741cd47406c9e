//! The change streams open on this node, and their caps.
//!
//! A stream costs memory, a connection, and the bytes of every change of its user (the log is
//! read once per change for all of a user's streams on the node, [`crate::feed`], but each
//! stream sends it), so one account holding thousands would slow every other user. A session
//! may hold at most `per_session` streams and a user at most `per_user` on this node; opening
//! one more closes the oldest (of that session first, else of the user), which ends with
//! `event: session`, `{"reason": "too_many_streams"}`. The newest wins because it is the one a
//! person is looking at: an older stream of a restarted app is usually a dead connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

/// The node's open streams, by user.
#[derive(Debug)]
pub struct Streams {
    per_session: usize,
    per_user: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    /// Each user's streams, oldest first.
    by_user: HashMap<Arc<str>, Vec<OpenStream>>,
}

#[derive(Debug)]
struct OpenStream {
    id: u64,
    session_id: Arc<str>,
    close: oneshot::Sender<()>,
}

/// One open stream's place; dropping it (the stream ended) frees the place.
#[derive(Debug)]
pub struct StreamTicket {
    id: u64,
    user_id: Arc<str>,
    streams: Arc<Streams>,
    /// Resolves when a newer stream took this one's place.
    pub closed: oneshot::Receiver<()>,
}

impl Streams {
    pub fn new(per_session: usize, per_user: usize) -> Streams {
        Streams {
            per_session: per_session.max(1),
            per_user: per_user.max(1),
            open: Mutex::default(),
        }
    }

    /// Registers a new stream of `session_id` (of `user_id`), closing the oldest ones past the
    /// caps. The ids are shared, not copied, by the streams that hold them.
    pub fn open(
        self: &Arc<Self>,
        user_id: impl Into<Arc<str>>,
        session_id: impl Into<Arc<str>>,
    ) -> StreamTicket {
        let (user_id, session_id) = (user_id.into(), session_id.into());
        let (close, closed) = oneshot::channel();
        let mut open = self.lock();
        open.next_id += 1;
        let id = open.next_id;
        let streams = open.by_user.entry(user_id.clone()).or_default();
        streams.push(OpenStream {
            id,
            session_id: session_id.clone(),
            close,
        });
        let mut evicted = Vec::new();
        while streams
            .iter()
            .filter(|s| s.session_id == session_id)
            .count()
            > self.per_session
        {
            if let Some(at) = streams.iter().position(|s| s.session_id == session_id) {
                evicted.push(streams.remove(at));
            }
        }
        while streams.len() > self.per_user {
            evicted.push(streams.remove(0));
        }
        drop(open);
        for stream in evicted {
            // The stream may have ended meanwhile; then nobody listens, which is fine.
            let _ = stream.close.send(());
        }
        StreamTicket {
            id,
            user_id,
            streams: self.clone(),
            closed,
        }
    }

    /// How many streams `user_id` holds on this node.
    pub fn count(&self, user_id: &str) -> usize {
        self.lock().by_user.get(user_id).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remove(&self, user_id: &str, id: u64) {
        let mut open = self.lock();
        if let Some(streams) = open.by_user.get_mut(user_id) {
            streams.retain(|s| s.id != id);
            if streams.is_empty() {
                open.by_user.remove(user_id);
            }
        }
    }
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        self.streams.remove(&self.user_id, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_closed(ticket: &mut StreamTicket) -> bool {
        ticket.closed.try_recv().is_ok()
    }

    #[test]
    fn a_session_past_its_cap_loses_its_oldest_stream() {
        let streams = Arc::new(Streams::new(2, 10));
        let mut first = streams.open("ada", "laptop");
        let mut second = streams.open("ada", "laptop");
        let mut other = streams.open("ada", "desktop");
        let mut third = streams.open("ada", "laptop");
        assert!(is_closed(&mut first));
        assert!(!is_closed(&mut second));
        assert!(!is_closed(&mut third));
        assert!(!is_closed(&mut other), "another session keeps its stream");
        drop(first);
        assert_eq!(streams.count("ada"), 3);
    }

    #[test]
    fn a_user_past_the_cap_loses_the_oldest_of_any_session() {
        let streams = Arc::new(Streams::new(5, 3));
        let mut tickets: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|&session| streams.open("ada", session))
            .collect();
        let mut bob = streams.open("bob", "x");
        let closed: Vec<bool> = tickets.iter_mut().map(is_closed).collect();
        assert_eq!(closed, [true, false, false, false]);
        assert!(!is_closed(&mut bob), "other users are not counted");
        assert_eq!(streams.count("ada"), 3);
    }

    #[test]
    fn an_ended_stream_frees_its_place() {
        let streams = Arc::new(Streams::new(1, 1));
        let first = streams.open("ada", "laptop");
        drop(first);
        assert_eq!(streams.count("ada"), 0);
        let mut second = streams.open("ada", "laptop");
        assert!(!is_closed(&mut second));
        drop(second);
        assert!(streams.lock().by_user.is_empty(), "no entry left behind");
    }
}
