//! What the session check of every authenticated request reads, remembered on this node for a
//! short while, so that a request costs no statement in the common case.
//!
//! An entry holds the session's owner, device, AAL and last second-factor proof, the device's
//! name and whether the user has a verified factor, by session id. It lives at most [`TTL_MS`]
//! by the injected clock, and goes earlier when the user's account changes:
//!
//! - on this node, [`crate::state::AppState::publish`] (called after the commit of every
//!   transaction that changed a session, device, factor or user row) drops the user's entries;
//! - on the other nodes, the same commit's `NOTIFY` says it was an account change, and their
//!   listener drops them ([`crate::feed::listen`]).
//!
//! Entries go only after the commit, so a request cannot read the old state once the change is
//! answered. A request that read the old state before the commit and stores it after the
//! invalidation is refused by its [`Ticket`]: a store counts only if nothing was invalidated
//! since the ticket was taken, before the read.
//!
//! The cache also remembers when this node last refreshed each device's last-seen time, so
//! that write happens at most once a minute per device instead of being tried on every request.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use lockstep_protocol::auth::Aal;

use crate::clock::{Clock, to_millis};

/// How long an entry is used without reading the database again.
pub const TTL_MS: i64 = 30_000;
/// How often a device's last-seen time is written at most.
pub const TOUCH_EVERY_MS: i64 = 60_000;
/// Most sessions remembered, and most devices whose last touch is remembered.
pub const CAPACITY: usize = 10_000;

/// What the session check needs of a session, as read from the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    pub user_id: String,
    pub device_id: String,
    pub aal: Aal,
    /// When the session last proved a second factor (Unix milliseconds).
    pub mfa_verified_at: Option<i64>,
    /// The device's name, as registered.
    pub device_name: Option<String>,
    /// Whether the user has a verified factor (then data needs `aal2`).
    pub has_verified_factor: bool,
}

/// Taken before reading what will be stored (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Ticket(u64);

#[derive(Debug)]
struct Cached {
    facts: SessionFacts,
    stored_at: i64,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Cached>,
    /// Session ids by user, for invalidation.
    by_user: HashMap<String, HashSet<String>>,
    /// Counts invalidations; a ticket from before one is stale.
    epoch: u64,
    /// When this node last wrote each (user, device)'s last-seen time.
    touched: HashMap<(String, String), i64>,
}

impl Inner {
    fn remove(&mut self, session_id: &str) {
        if let Some(cached) = self.sessions.remove(session_id) {
            let user = &cached.facts.user_id;
            if let Some(ids) = self.by_user.get_mut(user) {
                ids.remove(session_id);
                if ids.is_empty() {
                    self.by_user.remove(user);
                }
            }
        }
    }

    /// Makes room for one more session: drops expired entries, then (when all are fresh) a
    /// tenth of the rest, so the sweep is paid once per many stores.
    fn make_room(&mut self, capacity: usize, now: i64) {
        if self.sessions.len() < capacity {
            return;
        }
        let mut going: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, c)| !is_fresh(c.stored_at, now))
            .map(|(id, _)| id.clone())
            .collect();
        if self.sessions.len() - going.len() >= capacity {
            let extra = capacity / 10 + 1;
            going.extend(
                self.sessions
                    .iter()
                    .filter(|(_, c)| is_fresh(c.stored_at, now))
                    .take(extra)
                    .map(|(id, _)| id.clone()),
            );
        }
        for id in going {
            self.remove(&id);
        }
    }
}

fn is_fresh(stored_at: i64, now: i64) -> bool {
    // A clock that went back makes an entry stale rather than young.
    (stored_at..stored_at + TTL_MS).contains(&now)
}

/// The per-node cache of session checks.
#[derive(Debug)]
pub struct SessionCache {
    clock: Arc<dyn Clock>,
    capacity: usize,
    inner: Mutex<Inner>,
}

impl SessionCache {
    pub fn new(clock: Arc<dyn Clock>) -> SessionCache {
        SessionCache::with_capacity(clock, CAPACITY)
    }

    pub fn with_capacity(clock: Arc<dyn Clock>, capacity: usize) -> SessionCache {
        SessionCache {
            clock,
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    fn now(&self) -> i64 {
        to_millis(self.clock.now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's facts, if remembered and fresh.
    pub fn get(&self, session_id: &str) -> Option<SessionFacts> {
        let now = self.now();
        let inner = self.lock();
        inner
            .sessions
            .get(session_id)
            .filter(|c| is_fresh(c.stored_at, now))
            .map(|c| c.facts.clone())
    }

    /// Take this before reading the facts to [`store`](Self::store).
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().epoch)
    }

    /// Remembers a session's facts read after `ticket` was taken; false (and nothing stored)
    /// when something was invalidated since, as the read may predate that change.
    pub fn store(&self, ticket: Ticket, session_id: &str, facts: SessionFacts) -> bool {
        let now = self.now();
        let mut inner = self.lock();
        if inner.epoch != ticket.0 {
            return false;
        }
        inner.remove(session_id);
        inner.make_room(self.capacity, now);
        inner
            .by_user
            .entry(facts.user_id.clone())
            .or_default()
            .insert(session_id.to_owned());
        inner.sessions.insert(
            session_id.to_owned(),
            Cached {
                facts,
                stored_at: now,
            },
        );
        true
    }

    /// Forgets every session of the user (their account changed).
    pub fn invalidate_user(&self, user_id: &str) {
        let mut inner = self.lock();
        inner.epoch = inner.epoch.wrapping_add(1);
        for id in inner.by_user.remove(user_id).unwrap_or_default() {
            inner.sessions.remove(&id);
        }
    }

    /// Forgets every session (account changes may have been missed).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.epoch = inner.epoch.wrapping_add(1);
        inner.sessions.clear();
        inner.by_user.clear();
    }

    /// Whether the device's last-seen time is due to be written (this node has not written it
    /// within [`TOUCH_EVERY_MS`]), noting that it is written now: true at most once a minute per
    /// device, also for a burst of requests at once.
    pub fn claim_touch(&self, user_id: &str, device_id: &str) -> bool {
        let now = self.now();
        let mut inner = self.lock();
        let key = (user_id.to_owned(), device_id.to_owned());
        if inner
            .touched
            .get(&key)
            .is_some_and(|&at| (at..at + TOUCH_EVERY_MS).contains(&now))
        {
            return false;
        }
        if inner.touched.len() >= self.capacity && !inner.touched.contains_key(&key) {
            inner
                .touched
                .retain(|_, at| (*at..*at + TOUCH_EVERY_MS).contains(&now));
            if inner.touched.len() >= self.capacity {
                inner.touched.clear();
            }
        }
        inner.touched.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    fn facts(user: &str, device: &str) -> SessionFacts {
        SessionFacts {
            user_id: user.into(),
            device_id: device.into(),
            aal: Aal::Aal1,
            mfa_verified_at: None,
            device_name: Some(format!("{device} name")),
            has_verified_factor: false,
        }
    }

    fn cache(capacity: usize) -> (ManualClock, SessionCache) {
        let clock = ManualClock::starting_now();
        let cache = SessionCache::with_capacity(Arc::new(clock.clone()), capacity);
        (clock, cache)
    }

    #[test]
    fn an_entry_lives_until_its_ttl_by_the_injected_clock() {
        let (clock, cache) = cache(10);
        assert!(cache.store(cache.ticket(), "s1", facts("ada", "laptop")));
        assert_eq!(cache.get("s1"), Some(facts("ada", "laptop")));
        clock.advance(Duration::milliseconds(TTL_MS - 1));
        assert!(cache.get("s1").is_some(), "fresh just before the TTL");
        clock.advance(Duration::milliseconds(1));
        assert_eq!(cache.get("s1"), None, "gone at the TTL");
        assert_eq!(cache.get("s2"), None);
    }

    #[test]
    fn a_clock_that_went_back_makes_an_entry_stale() {
        let (clock, cache) = cache(10);
        clock.advance(Duration::seconds(10));
        assert!(cache.store(cache.ticket(), "s1", facts("ada", "laptop")));
        clock.advance(Duration::seconds(-1));
        assert_eq!(cache.get("s1"), None);
    }

    #[test]
    fn invalidating_a_user_drops_their_sessions_only() {
        let (_, cache) = cache(10);
        for (session, user) in [("a1", "ada"), ("a2", "ada"), ("b1", "bob")] {
            assert!(cache.store(cache.ticket(), session, facts(user, "laptop")));
        }
        cache.invalidate_user("ada");
        assert_eq!(cache.get("a1"), None);
        assert_eq!(cache.get("a2"), None);
        assert!(cache.get("b1").is_some(), "another user's session stays");
        cache.clear();
        assert_eq!(cache.get("b1"), None);
    }

    #[test]
    fn a_store_after_an_invalidation_since_its_ticket_is_refused() {
        let (_, cache) = cache(10);
        let before = cache.ticket();
        // The read happened, then the account changed and was invalidated.
        cache.invalidate_user("ada");
        assert!(!cache.store(before, "a1", facts("ada", "laptop")));
        assert_eq!(cache.get("a1"), None);
        let after = cache.ticket();
        assert!(cache.store(after, "a1", facts("ada", "laptop")));
        assert!(cache.get("a1").is_some());
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let (clock, cache) = cache(20);
        for i in 0..100 {
            assert!(cache.store(cache.ticket(), &format!("s{i}"), facts("ada", "laptop")));
            clock.advance(Duration::milliseconds(1));
        }
        let inner = cache.lock();
        assert!(inner.sessions.len() <= 20, "{}", inner.sessions.len());
        let indexed: usize = inner.by_user.values().map(HashSet::len).sum();
        assert_eq!(
            indexed,
            inner.sessions.len(),
            "the index follows the entries"
        );
        drop(inner);
        assert!(cache.get("s99").is_some(), "the newest entry was kept");
    }

    #[test]
    fn expired_entries_make_room_first() {
        let (clock, cache) = cache(20);
        for i in 0..20 {
            assert!(cache.store(cache.ticket(), &format!("s{i}"), facts("ada", "laptop")));
        }
        assert_eq!(cache.lock().sessions.len(), 20);
        clock.advance(Duration::milliseconds(TTL_MS));
        assert!(cache.store(cache.ticket(), "new", facts("bob", "phone")));
        assert_eq!(cache.lock().sessions.len(), 1);
        assert!(!cache.lock().by_user.contains_key("ada"));
    }

    #[test]
    fn a_device_is_touched_at_most_once_a_minute() {
        let (clock, cache) = cache(2);
        assert!(cache.claim_touch("ada", "laptop"));
        assert!(!cache.claim_touch("ada", "laptop"), "claimed once");
        assert!(cache.claim_touch("ada", "phone"), "per device");
        clock.advance(Duration::milliseconds(TOUCH_EVERY_MS - 1));
        assert!(!cache.claim_touch("ada", "laptop"));
        clock.advance(Duration::milliseconds(1));
        assert!(cache.claim_touch("ada", "laptop"));
        // Bounded: past the capacity, old notes go.
        assert!(cache.claim_touch("bob", "laptop"));
        assert!(cache.lock().touched.len() <= 2);
    }
}
