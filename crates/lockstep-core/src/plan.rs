//! Push planning: which pushes carry the outbox to the server (pure, no I/O).
//!
//! The outbox keeps every acknowledged edit in the order it was made, so the same key may be
//! queued several times (edited twice while offline, or twice before a push went out). The
//! server takes one change per key per push ([`validate_push`]), and under the merge rule only
//! this device's newest write to a key can matter: an older write of the same key, applied
//! after it, would lose to it anyway. So [`plan_push`] sends, for each key, its newest entry
//! (by stamp) and lets that one push settle every older entry of the key with it.
//!
//! Edits the server refused for good are [set aside](crate::store::Refusal) and not sent. An
//! edit of the same key queued after them is sent instead and settles them too: the user's
//! newer edit replaces the refused one, whatever its stamp (a refused stamp reached nobody, and
//! a clock that was far ahead, which is one reason to be refused, must not block the edits made
//! once it was put right).
//!
//! A push's mutation id is a hash of the ids it settles, so the same outbox plans the same
//! pushes with the same ids: a push retried after a crash or a lost answer is recognised by the
//! server and answered as the first time.
//!
//! [`validate_push`]: lockstep_protocol::sync::validate_push

use std::collections::BTreeMap;

use lockstep_protocol::sync::{MAX_CHANGES_PER_PUSH, PushRequest};
use sha2::{Digest as _, Sha256};

use crate::store::OutboxEntry;

/// One push to send, and what its answer settles.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedPush {
    /// The request: one change per key, at most [`MAX_CHANGES_PER_PUSH`].
    pub request: PushRequest,
    /// The outbox entries sent, one per key, in the order of `request.changes`.
    pub sent: Vec<OutboxEntry>,
    /// Ids of every entry this push settles once the server answers it: the sent ones and the
    /// older entries of the same keys (set-aside ones included) that they replace.
    pub settles: Vec<String>,
}

/// Plans the pushes that carry `entries` (the outbox, oldest first) to the server. See the
/// [module docs](self).
///
/// For each key its newest entry that is not set aside is sent; keys with only set-aside
/// entries are left out. Keys come in the order of the entry sent, so what was edited first
/// goes first. Every planned push passes [`validate_push`] when each entry is a valid change.
///
/// [`validate_push`]: lockstep_protocol::sync::validate_push
pub fn plan_push(entries: &[OutboxEntry]) -> Vec<PlannedPush> {
    // For each key: the position of its newest entry that is not set aside (the later one on
    // equal stamps), and the ids of all its entries.
    let mut keys: BTreeMap<&str, (Option<usize>, Vec<&str>)> = BTreeMap::new();
    for (at, entry) in entries.iter().enumerate() {
        let slot = keys.entry(entry.key.as_str()).or_insert((None, Vec::new()));
        if entry.set_aside.is_none() && slot.0.is_none_or(|best| entry.hlc >= entries[best].hlc) {
            slot.0 = Some(at);
        }
        slot.1.push(entry.id.as_str());
    }
    let mut newest: Vec<(usize, Vec<&str>)> = keys
        .into_values()
        .filter_map(|(at, ids)| at.map(|at| (at, ids)))
        .collect();
    newest.sort_by_key(|(at, _)| *at);
    newest
        .chunks(MAX_CHANGES_PER_PUSH)
        .map(|chunk| {
            let sent: Vec<OutboxEntry> = chunk.iter().map(|(at, _)| entries[*at].clone()).collect();
            let settles: Vec<String> = chunk
                .iter()
                .flat_map(|(_, ids)| ids.iter().map(|id| (*id).to_owned()))
                .collect();
            PlannedPush {
                request: PushRequest {
                    mutation_id: mutation_id(&settles, &sent),
                    changes: sent.iter().map(OutboxEntry::to_change).collect(),
                },
                sent,
                settles,
            }
        })
        .collect()
}

/// Splits a refused push into pushes of one key each, to find which change the server
/// refuses. Each keeps the entries it settles; ids stay deterministic.
pub fn split(push: &PlannedPush, entries: &[OutboxEntry]) -> Vec<PlannedPush> {
    push.sent
        .iter()
        .map(|sent| {
            let settles: Vec<String> = entries
                .iter()
                .filter(|e| e.key == sent.key && push.settles.contains(&e.id))
                .map(|e| e.id.clone())
                .collect();
            PlannedPush {
                request: PushRequest {
                    mutation_id: mutation_id(&settles, std::slice::from_ref(sent)),
                    changes: vec![sent.to_change()],
                },
                sent: vec![sent.clone()],
                settles,
            }
        })
        .collect()
}

/// `p` and 40 hex digits of SHA-256 over the settled ids and the sent ones: the same push
/// always gets the same id, and different pushes practically never share one (the server
/// refuses a reused id for different changes). The sent ids count too because the same entries
/// can send a different change when a set-aside one is released.
fn mutation_id(settles: &[String], sent: &[OutboxEntry]) -> String {
    let mut hash = Sha256::new();
    for id in settles {
        hash.update(id.as_bytes());
        hash.update(b"\0");
    }
    hash.update(b"\x01");
    for entry in sent {
        hash.update(entry.id.as_bytes());
        hash.update(b"\0");
    }
    let digest = hash.finalize();
    let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
    format!("p{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Refusal;
    use lockstep_protocol::{hlc::Hlc, sync::validate_push};
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::collections::BTreeSet;

    fn entry(key: &str, value: Value, millis: u64, counter: u32) -> OutboxEntry {
        OutboxEntry::new(key, value, Hlc::new(millis, counter), false, 0)
    }

    #[test]
    fn the_same_key_twice_sends_the_newest_and_settles_both() {
        let dark = entry("appearance.theme", json!("dark"), 10, 0);
        let light = entry("appearance.theme", json!("light"), 11, 0);
        let plan = plan_push(&[dark.clone(), light.clone()]);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].sent, vec![light.clone()]);
        assert_eq!(plan[0].settles, vec![dark.id.clone(), light.id.clone()]);
        assert!(validate_push(&plan[0].request).is_ok());
    }

    #[test]
    fn an_older_stamp_queued_later_does_not_win() {
        // Stamps decide, not queue order (a clock that stepped back keeps its HLC ahead, but
        // an imported entry may carry an older stamp).
        let newer = entry("custom.a", json!(2), 20, 0);
        let older = entry("custom.a", json!(1), 10, 0);
        let plan = plan_push(&[newer.clone(), older.clone()]);
        assert_eq!(plan[0].sent, vec![newer]);
        assert_eq!(plan[0].settles.len(), 2);
    }

    #[test]
    fn set_aside_entries_are_not_sent_until_a_newer_edit_replaces_them() {
        let mut refused = entry("custom.a", json!("x"), 10, 0);
        refused.set_aside = Some(Refusal {
            reason: "no".into(),
            code: Some("22023".into()),
            at_ms: 1,
        });
        let other = entry("custom.b", json!(1), 11, 0);
        let plan = plan_push(&[refused.clone(), other.clone()]);
        assert_eq!(plan[0].sent, vec![other.clone()]);
        assert_eq!(plan[0].settles, vec![other.id.clone()]);

        // Queued later but stamped earlier (the clock was put right): it still replaces it.
        let newer = entry("custom.a", json!("y"), 5, 0);
        let plan = plan_push(&[refused.clone(), other, newer.clone()]);
        let sent: Vec<_> = plan[0].sent.iter().map(|e| e.id.clone()).collect();
        assert_eq!(sent.last(), Some(&newer.id));
        assert!(plan[0].settles.contains(&refused.id));
    }

    #[test]
    fn releasing_a_set_aside_entry_changes_the_mutation_id() {
        // Same entries settled, another change sent: the server must not take it for a retry.
        let mut far = entry("custom.a", json!(1), 1_000, 0);
        far.set_aside = Some(Refusal {
            reason: "too far ahead".into(),
            code: None,
            at_ms: 0,
        });
        let later = entry("custom.a", json!(2), 5, 0);
        let before = plan_push(&[far.clone(), later.clone()]);
        far.set_aside = None;
        let after = plan_push(&[far.clone(), later]);
        assert_eq!(before[0].settles, after[0].settles);
        assert_eq!(after[0].sent, vec![far]);
        assert_ne!(before[0].request.mutation_id, after[0].request.mutation_id);
    }

    #[test]
    fn more_keys_than_a_push_takes_are_split_with_stable_ids() {
        let entries: Vec<_> = (0..250)
            .map(|i| entry(&format!("custom.k{i}"), json!(i), i, 0))
            .collect();
        let plan = plan_push(&entries);
        assert_eq!(
            plan.iter().map(|p| p.sent.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert_eq!(plan, plan_push(&entries), "deterministic");
        let ids: BTreeSet<_> = plan.iter().map(|p| &p.request.mutation_id).collect();
        assert_eq!(ids.len(), 3);
        assert!(plan.iter().all(|p| validate_push(&p.request).is_ok()));
    }

    #[test]
    fn split_gives_one_push_per_key_settling_its_own_entries() {
        let a1 = entry("custom.a", json!(1), 1, 0);
        let b = entry("custom.b", json!(2), 2, 0);
        let a2 = entry("custom.a", json!(3), 3, 0);
        let entries = [a1.clone(), b.clone(), a2.clone()];
        let plan = plan_push(&entries);
        let parts = split(&plan[0], &entries);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].sent, vec![b.clone()]);
        assert_eq!(parts[0].settles, vec![b.id.clone()]);
        assert_eq!(parts[1].sent, vec![a2.clone()]);
        assert_eq!(parts[1].settles, vec![a1.id.clone(), a2.id.clone()]);
        assert_ne!(parts[0].request.mutation_id, plan[0].request.mutation_id);
    }

    /// An outbox: edits of few keys (so they collide), stamps that may repeat or go back,
    /// deletions, and some set aside.
    fn outbox() -> impl Strategy<Value = Vec<OutboxEntry>> {
        let one = (
            0..6usize,
            0..40u64,
            0..3u32,
            any::<bool>(),
            0..8u8,
            0..1000i64,
        );
        proptest::collection::vec(one, 0..300).prop_map(|raw| {
            raw.into_iter()
                .map(|(key, millis, counter, deleted, aside, value)| {
                    let key = format!("custom.k{key}");
                    let mut e =
                        OutboxEntry::new(key, json!(value), Hlc::new(millis, counter), deleted, 0);
                    if aside == 0 {
                        e.set_aside = Some(Refusal {
                            reason: "refused".into(),
                            code: None,
                            at_ms: 0,
                        });
                    }
                    e
                })
                .collect()
        })
    }

    /// What a server holding nothing stores after `changes` are applied one by one under the
    /// merge rule, per key: the winning (stamp, value, deleted).
    fn apply_one_by_one<'a>(
        changes: impl IntoIterator<Item = &'a OutboxEntry>,
    ) -> BTreeMap<String, (Hlc, Value, bool)> {
        let mut stored: BTreeMap<String, (Hlc, Value, bool)> = BTreeMap::new();
        for e in changes {
            let slot = stored.entry(e.key.clone());
            let incoming = (e.hlc, e.value.clone(), e.deleted);
            match slot {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(incoming);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    // Same device: larger stamp wins; an equal stamp is the same write.
                    if incoming.0 > o.get().0 {
                        o.insert(incoming);
                    }
                }
            }
        }
        stored
    }

    proptest! {
        #[test]
        fn every_planned_push_validates_and_settles_each_sendable_entry_once(entries in outbox()) {
            let plan = plan_push(&entries);
            let mut settled = Vec::new();
            for push in &plan {
                prop_assert!(validate_push(&push.request).is_ok(), "{:?}", validate_push(&push.request));
                prop_assert_eq!(push.sent.len(), push.request.changes.len());
                for sent in &push.sent {
                    prop_assert!(push.settles.contains(&sent.id));
                    prop_assert!(sent.set_aside.is_none());
                }
                settled.extend(push.settles.iter().cloned());
            }
            let unique: BTreeSet<_> = settled.iter().collect();
            prop_assert_eq!(unique.len(), settled.len(), "an entry settled twice");
            // Exactly the entries of keys with an entry that is not set aside are settled.
            for e in &entries {
                let blocked = entries.iter().filter(|o| o.key == e.key).all(|o| o.set_aside.is_some());
                prop_assert_eq!(unique.contains(&e.id), !blocked, "{:?}", e);
            }
            prop_assert_eq!(plan.clone(), plan_push(&entries), "planning is deterministic");
        }

        #[test]
        fn applying_the_plan_equals_applying_the_entries_one_by_one(entries in outbox()) {
            let plan = plan_push(&entries);
            let sendable: Vec<&OutboxEntry> = entries
                .iter()
                .filter(|e| e.set_aside.is_none())
                .collect();
            let expected = apply_one_by_one(sendable.iter().copied());
            let planned = apply_one_by_one(plan.iter().flat_map(|p| p.sent.iter()));
            // Equal stamps of one key carry the same write in a real outbox (one device never
            // stamps twice alike); here they may differ, so compare stamps and, where the
            // stamp is unique, values.
            prop_assert_eq!(
                expected.iter().map(|(k, v)| (k, v.0)).collect::<Vec<_>>(),
                planned.iter().map(|(k, v)| (k, v.0)).collect::<Vec<_>>()
            );
            for (key, (hlc, value, deleted)) in &planned {
                let same_stamp = sendable.iter().filter(|e| &e.key == key && e.hlc == *hlc).count();
                if same_stamp == 1 {
                    prop_assert_eq!(&expected[key], &(*hlc, value.clone(), *deleted));
                }
            }
        }
    }
}
