//! Settings sync: the merge rule and the wire types of push, pull and the change feed.
//!
//! Every setting key is merged on its own, last writer wins. A write is identified by its stamp
//! ([`Hlc`]) and the device that made it; of two writes to the same key the one with the larger
//! `(hlc, device_id)` pair wins, the device id (compared byte-wise) breaking ties between equal
//! stamps. Because this is a total order on writes, every replica that sees the same writes ends
//! up with the same value, in whatever order they arrive, and applying a write twice changes
//! nothing.
//!
//! Deleting a setting is a write too (a tombstone: `deleted: true`, value `null`), so a deletion
//! and a concurrent update are merged by the same rule.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::hlc::Hlc;
use crate::settings::{self, SettingError};

/// Most changes one push may carry.
pub const MAX_CHANGES_PER_PUSH: usize = 100;
/// Longest mutation id.
pub const MAX_MUTATION_ID_LEN: usize = 64;

/// One version of one field: what a write carries and what is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldVersion {
    /// The value; `Null` when deleted.
    pub value: serde_json::Value,
    /// When it was written.
    pub hlc: Hlc,
    /// Which device wrote it.
    pub device_id: String,
    /// Whether this version is a tombstone.
    pub deleted: bool,
}

impl FieldVersion {
    /// The pair that orders writes: larger wins.
    pub fn stamp(&self) -> (Hlc, &str) {
        (self.hlc, self.device_id.as_str())
    }
}

/// Orders two writes to the same field by `(hlc, device_id)`; the greater one wins.
pub fn compare_versions(a: &FieldVersion, b: &FieldVersion) -> Ordering {
    a.stamp().cmp(&b.stamp())
}

/// What [`merge`] decided about an incoming write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The incoming write wins and replaces the current one.
    Applied,
    /// The current version is newer; the incoming write is dropped. Not an error: report it to
    /// the writer so it can adopt the current value.
    Superseded,
    /// The very same write (same hlc and device) was already applied: an idempotent retry.
    Unchanged,
}

/// Last-writer-wins per field by `(hlc, device_id)`: the larger pair wins; the device id
/// (byte-wise string order) breaks ties between equal stamps.
///
/// A write is identified by its pair alone (a device never stamps two writes with the same hlc),
/// so an incoming write with the current pair is [`MergeOutcome::Unchanged`] whatever its value.
pub fn merge(current: Option<&FieldVersion>, incoming: &FieldVersion) -> MergeOutcome {
    let Some(current) = current else {
        return MergeOutcome::Applied;
    };
    match compare_versions(incoming, current) {
        Ordering::Greater => MergeOutcome::Applied,
        Ordering::Less => MergeOutcome::Superseded,
        Ordering::Equal => MergeOutcome::Unchanged,
    }
}

/// Folds a set of writes to one field, in any order, to the winner: the maximum by
/// `(hlc, device_id)`. `None` when there are no writes.
pub fn winner<'a>(writes: impl IntoIterator<Item = &'a FieldVersion>) -> Option<&'a FieldVersion> {
    writes.into_iter().max_by(|a, b| compare_versions(a, b))
}

/// A row of `/rest/v1/user_settings` (the synced value of one key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingRow {
    pub key: String,
    /// `Null` when deleted.
    pub value: serde_json::Value,
    pub hlc: Hlc,
    /// The device that wrote this version.
    pub device_id: String,
    /// That device's name, when it is still known.
    #[serde(default)]
    pub device_name: Option<String>,
    /// When the server stored this version.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub deleted: bool,
}

impl SettingRow {
    /// The stored version, for [`merge`].
    pub fn version(&self) -> FieldVersion {
        FieldVersion {
            value: self.value.clone(),
            hlc: self.hlc,
            device_id: self.device_id.clone(),
            deleted: self.deleted,
        }
    }
}

/// One field write in a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingChange {
    pub key: String,
    /// The new value; must be `null` (or absent) when `deleted`.
    #[serde(default)]
    pub value: serde_json::Value,
    pub hlc: Hlc,
    /// Whether this change deletes the setting.
    #[serde(default)]
    pub deleted: bool,
}

impl SettingChange {
    /// The version this change writes when `device_id` pushes it, for [`merge`].
    pub fn version(&self, device_id: &str) -> FieldVersion {
        FieldVersion {
            value: self.value.clone(),
            hlc: self.hlc,
            device_id: device_id.to_owned(),
            deleted: self.deleted,
        }
    }
}

/// `POST /rest/v1/rpc/push_settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Chosen by the client, unique per push: a retried push with the same id is answered the
    /// same way and applied once.
    pub mutation_id: String,
    pub changes: Vec<SettingChange>,
}

/// A write that lost the merge: what the writer sent and what stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Superseded {
    pub key: String,
    /// The stamp of the losing write.
    pub your_hlc: Hlc,
    /// The version that stands.
    pub current: SettingRow,
}

/// Answer to a [`PushRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    pub mutation_id: String,
    /// The user's change-feed head after this push.
    pub seq: i64,
    /// The changes that won, as now stored.
    pub applied: Vec<SettingRow>,
    /// The changes that lost to a newer version.
    pub superseded: Vec<Superseded>,
}

/// One entry of the change feed (SSE event data and `/rest/v1/rpc/changes` item), in Supabase's
/// `postgres_changes` shape plus who wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Position in the user's feed.
    pub seq: i64,
    /// Always `"public"`.
    pub schema: String,
    /// E.g. `"user_settings"`.
    pub table: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    #[serde(rename = "eventType")]
    pub event_type: String,
    /// RFC 3339.
    pub commit_timestamp: String,
    /// The row after the change: `null` when a row went away (a deleted setting keeps its
    /// tombstone row here, with `deleted: true`).
    pub new: serde_json::Value,
    /// The row before the change, as far as known: `null` for an insert.
    pub old: serde_json::Value,
    /// The device that made the change, if any.
    #[serde(default)]
    pub device_id: Option<String>,
    /// That device's name, if known.
    #[serde(default)]
    pub device_name: Option<String>,
}

codes! {
    /// The `event:` names of the change stream (`GET /realtime/v1/sse`).
    pub enum StreamEventKind {
        /// One change-feed record ([`ChangeEvent`]); its `id:` is the record's `seq`.
        Change = "change",
        /// The backlog since `Last-Event-ID` is sent: from here on changes arrive live.
        Ready = "ready",
        /// The backlog since `Last-Event-ID` was pruned: pull everything, then reconnect.
        MustRefetch = "must-refetch",
        /// The account turned two-factor authentication on and this session is aal1: verify a
        /// code, then reconnect.
        InsufficientAal = "insufficient_aal",
        /// The last event of a stream the server ends ([`StreamEnd`]).
        Session = "session",
    }
}

/// Why the server ended a change stream: the data of its last event, `event: session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    pub reason: StreamEndReason,
}

/// The reasons a change stream ends (`{"reason": "signed_out"}` etc.).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEndReason {
    /// The session was signed out or its device revoked: sign in again.
    SignedOut,
    /// The access token expired: reconnect with a fresh one and `Last-Event-ID`.
    TokenExpired,
    /// The node is shutting down: reconnect with `Last-Event-ID`, to another node or later.
    ServerShutdown,
    /// Newer streams of the same session or account took its place (the node caps streams per
    /// session and per user): reconnect only after a pause, or the streams take turns.
    TooManyStreams,
}

/// `GET /rest/v1/rpc/changes` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangesPage {
    pub changes: Vec<ChangeEvent>,
    /// The feed head when read.
    pub head: i64,
    /// True when `since` is older than the retained log: do a full pull, then continue from
    /// `head`.
    pub must_refetch: bool,
}

/// Checks a push before it is applied.
///
/// The push must carry 1 to [`MAX_CHANGES_PER_PUSH`] changes and a mutation id of 1 to
/// [`MAX_MUTATION_ID_LEN`] characters of `[A-Za-z0-9_-]`; no key may appear twice; a deletion
/// must name a valid key (see [`settings::spec`]) and carry a `null` value; any other change must
/// pass [`settings::validate`]. Returns the first problem; push-level problems have the key `""`.
pub fn validate_push(push: &PushRequest) -> Result<(), SettingError> {
    if !is_mutation_id(&push.mutation_id) {
        return Err(SettingError::new(
            "",
            format!(
                "mutation_id must be 1 to {MAX_MUTATION_ID_LEN} characters of letters, digits, \
                 '-' or '_'"
            ),
        ));
    }
    if push.changes.is_empty() || push.changes.len() > MAX_CHANGES_PER_PUSH {
        return Err(SettingError::new(
            "",
            format!("a push must carry 1 to {MAX_CHANGES_PER_PUSH} changes"),
        ));
    }
    let mut seen = HashSet::with_capacity(push.changes.len());
    for change in &push.changes {
        if change.deleted {
            settings::spec(&change.key)?;
            if !change.value.is_null() {
                return Err(SettingError::new(
                    &change.key,
                    "a deletion must carry a null value",
                ));
            }
        } else {
            settings::validate(&change.key, &change.value)?;
        }
        if !seen.insert(change.key.as_str()) {
            return Err(SettingError::new(
                &change.key,
                "this key appears more than once in the push; send one change per key",
            ));
        }
    }
    Ok(())
}

fn is_mutation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MUTATION_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn version(millis: u64, counter: u32, device: &str, value: Value) -> FieldVersion {
        FieldVersion {
            value,
            hlc: Hlc::new(millis, counter),
            device_id: device.into(),
            deleted: false,
        }
    }

    #[test]
    fn merge_into_nothing_applies() {
        assert_eq!(
            merge(None, &version(1, 0, "a", json!(1))),
            MergeOutcome::Applied
        );
    }

    #[test]
    fn newer_applies_and_older_is_superseded() {
        let current = version(100, 2, "b", json!("dark"));
        let newer_millis = version(101, 0, "a", json!("light"));
        let newer_counter = version(100, 3, "a", json!("light"));
        let older = version(99, 9, "z", json!("light"));
        assert_eq!(merge(Some(&current), &newer_millis), MergeOutcome::Applied);
        assert_eq!(merge(Some(&current), &newer_counter), MergeOutcome::Applied);
        assert_eq!(merge(Some(&current), &older), MergeOutcome::Superseded);
    }

    #[test]
    fn same_write_again_is_unchanged() {
        let current = version(100, 2, "b", json!("dark"));
        assert_eq!(
            merge(Some(&current), &current.clone()),
            MergeOutcome::Unchanged
        );
        let mut tombstone = current.clone();
        tombstone.deleted = true;
        tombstone.value = Value::Null;
        assert_eq!(merge(Some(&current), &tombstone), MergeOutcome::Unchanged);
    }

    #[test]
    fn device_id_breaks_hlc_ties_both_ways() {
        let a = version(100, 2, "device-a", json!(1));
        let b = version(100, 2, "device-b", json!(2));
        assert_eq!(merge(Some(&a), &b), MergeOutcome::Applied);
        assert_eq!(merge(Some(&b), &a), MergeOutcome::Superseded);
        // Byte-wise: uppercase sorts before lowercase.
        let upper = version(100, 2, "Z", json!(3));
        assert_eq!(merge(Some(&upper), &a), MergeOutcome::Applied);
        assert_eq!(winner([&a, &b, &upper]), Some(&b));
    }

    #[test]
    fn deletions_merge_like_writes() {
        let write = version(100, 0, "a", json!(true));
        let delete = FieldVersion {
            value: Value::Null,
            hlc: Hlc::new(101, 0),
            device_id: "b".into(),
            deleted: true,
        };
        assert_eq!(merge(Some(&write), &delete), MergeOutcome::Applied);
        assert_eq!(merge(Some(&delete), &write), MergeOutcome::Superseded);
    }

    #[test]
    fn winner_of_nothing_is_none() {
        assert_eq!(winner(std::iter::empty()), None);
    }

    /// Writes with distinct `(hlc, device)` pairs, crowded into few stamps to force ties.
    fn distinct_writes() -> impl Strategy<Value = Vec<FieldVersion>> {
        const DEVICES: [&str; 3] = ["a", "b", "laptop"];
        prop::collection::hash_set((0u64..3, 0u32..2, 0usize..DEVICES.len()), 1..12).prop_flat_map(
            |stamps| {
                let stamps: Vec<_> = stamps.into_iter().collect();
                let n = stamps.len();
                (
                    Just(stamps),
                    prop::collection::vec(any::<i32>(), n),
                    prop::collection::vec(any::<bool>(), n),
                )
                    .prop_map(|(stamps, values, deleted)| {
                        stamps
                            .into_iter()
                            .zip(values)
                            .zip(deleted)
                            .map(
                                |(((millis, counter, device), value), deleted)| FieldVersion {
                                    value: if deleted { Value::Null } else { json!(value) },
                                    hlc: Hlc::new(millis, counter),
                                    device_id: DEVICES[device].into(),
                                    deleted,
                                },
                            )
                            .collect()
                    })
            },
        )
    }

    proptest! {
        #[test]
        fn any_order_converges_to_the_winner(
            (writes, shuffled) in distinct_writes()
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
        ) {
            let mut current: Option<FieldVersion> = None;
            for write in &shuffled {
                match merge(current.as_ref(), write) {
                    MergeOutcome::Applied => current = Some(write.clone()),
                    MergeOutcome::Superseded => {
                        let cur = current.as_ref().unwrap();
                        prop_assert_eq!(compare_versions(write, cur), Ordering::Less);
                    }
                    MergeOutcome::Unchanged => prop_assert!(false, "pairs are distinct"),
                }
            }
            let expected = winner(&writes).cloned();
            prop_assert_eq!(&current, &expected);
            prop_assert_eq!(winner(&shuffled), expected.as_ref());

            // Replaying any write afterwards never changes anything.
            let current = current.unwrap();
            for write in &writes {
                prop_assert_ne!(merge(Some(&current), write), MergeOutcome::Applied);
            }
            prop_assert_eq!(merge(Some(&current), &current), MergeOutcome::Unchanged);
        }
    }

    fn change(key: &str, value: Value) -> SettingChange {
        SettingChange {
            key: key.into(),
            value,
            hlc: Hlc::new(1_763_920_000_000, 0),
            deleted: false,
        }
    }

    fn push(changes: Vec<SettingChange>) -> PushRequest {
        PushRequest {
            mutation_id: "m-1_A".into(),
            changes,
        }
    }

    #[test]
    fn validate_push_accepts_a_good_push() {
        let mut delete = change("custom.old", Value::Null);
        delete.deleted = true;
        let ok = push(vec![
            change("appearance.theme", json!("dark")),
            change("integrations.github", json!("ghp_x")),
            delete,
        ]);
        assert_eq!(validate_push(&ok), Ok(()));
        let full = push(
            (0..MAX_CHANGES_PER_PUSH)
                .map(|i| change(&format!("custom.k{i}"), json!(i)))
                .collect(),
        );
        assert_eq!(validate_push(&full), Ok(()));
    }

    #[test]
    fn validate_push_checks_the_mutation_id() {
        for bad in [String::new(), "a b".into(), "é".into(), "x".repeat(65)] {
            let mut p = push(vec![change("custom.a", json!(1))]);
            p.mutation_id = bad;
            let err = validate_push(&p).unwrap_err();
            assert_eq!(err.key, "");
            assert!(err.to_string().starts_with("mutation_id must be"), "{err}");
        }
        let mut p = push(vec![change("custom.a", json!(1))]);
        p.mutation_id = "x".repeat(64);
        assert_eq!(validate_push(&p), Ok(()));
    }

    #[test]
    fn validate_push_checks_the_number_of_changes() {
        let err = validate_push(&push(vec![])).unwrap_err();
        assert_eq!(err.key, "");
        assert_eq!(err.rule, "a push must carry 1 to 100 changes");
        let too_many = push(
            (0..=MAX_CHANGES_PER_PUSH)
                .map(|i| change(&format!("custom.k{i}"), json!(i)))
                .collect(),
        );
        assert_eq!(validate_push(&too_many).unwrap_err().key, "");
    }

    #[test]
    fn validate_push_refuses_a_key_twice() {
        let p = push(vec![
            change("appearance.theme", json!("dark")),
            change("custom.a", json!(1)),
            change("appearance.theme", json!("light")),
        ]);
        let err = validate_push(&p).unwrap_err();
        assert_eq!(err.key, "appearance.theme");
        assert!(err.rule.contains("more than once"));
    }

    #[test]
    fn validate_push_checks_each_change() {
        let err = validate_push(&push(vec![
            change("custom.a", json!(1)),
            change("appearance.theme", json!("blue")),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "appearance.theme: must be one of light, dark, system"
        );

        let err = validate_push(&push(vec![change("foo.bar", json!(1))])).unwrap_err();
        assert_eq!(err.key, "foo.bar");

        let err = validate_push(&push(vec![change("custom.a", Value::Null)])).unwrap_err();
        assert!(err.rule.contains("null"));

        let mut delete_with_value = change("custom.a", json!(1));
        delete_with_value.deleted = true;
        let err = validate_push(&push(vec![delete_with_value])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "custom.a: a deletion must carry a null value"
        );

        let mut delete_unknown = change("foo.bar", Value::Null);
        delete_unknown.deleted = true;
        assert_eq!(
            validate_push(&push(vec![delete_unknown])).unwrap_err().key,
            "foo.bar"
        );
    }

    #[test]
    fn push_request_serde() {
        let json = json!({
            "mutation_id": "m1",
            "changes": [
                {"key": "appearance.theme", "value": "dark", "hlc": "001763920000000-0000000001"},
                {"key": "custom.a", "hlc": "001763920000000-0000000002", "deleted": true}
            ]
        });
        let parsed: PushRequest = serde_json::from_value(json).unwrap();
        assert_eq!(parsed.changes[0].value, json!("dark"));
        assert!(!parsed.changes[0].deleted);
        assert_eq!(parsed.changes[1].value, Value::Null);
        assert!(parsed.changes[1].deleted);
        assert_eq!(parsed.changes[1].hlc, Hlc::new(1_763_920_000_000, 2));
        assert_eq!(validate_push(&parsed), Ok(()));

        let round: PushRequest =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(round, parsed);

        let bad_hlc =
            json!({"mutation_id": "m", "changes": [{"key": "custom.a", "value": 1, "hlc": "1-2"}]});
        let err = serde_json::from_value::<PushRequest>(bad_hlc).unwrap_err();
        assert!(err.to_string().contains("hlc must look like"), "{err}");
    }

    #[test]
    fn change_event_serde_uses_event_type() {
        let event = ChangeEvent {
            seq: 7,
            schema: "public".into(),
            table: "user_settings".into(),
            event_type: "UPDATE".into(),
            commit_timestamp: "2025-11-23T18:00:00Z".into(),
            new: json!({"key": "appearance.theme", "value": "dark"}),
            old: json!({"key": "appearance.theme"}),
            device_id: Some("laptop-1".into()),
            device_name: Some("Work laptop".into()),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["eventType"], "UPDATE");
        assert!(json.get("event_type").is_none());
        let back: ChangeEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn rows_and_pages_round_trip() {
        let row = SettingRow {
            key: "appearance.theme".into(),
            value: json!("dark"),
            hlc: Hlc::new(1_763_920_000_000, 1),
            device_id: "laptop-1".into(),
            device_name: None,
            updated_at: OffsetDateTime::from_unix_timestamp(1_763_920_000).unwrap(),
            deleted: false,
        };
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["updated_at"], "2025-11-23T17:46:40Z");
        assert_eq!(json["hlc"], "001763920000000-0000000001");
        assert_eq!(serde_json::from_value::<SettingRow>(json).unwrap(), row);

        let response = PushResponse {
            mutation_id: "m1".into(),
            seq: 3,
            applied: vec![row.clone()],
            superseded: vec![Superseded {
                key: row.key.clone(),
                your_hlc: Hlc::new(1, 0),
                current: row.clone(),
            }],
        };
        let text = serde_json::to_string(&response).unwrap();
        assert_eq!(
            serde_json::from_str::<PushResponse>(&text).unwrap(),
            response
        );

        let page = ChangesPage {
            changes: vec![],
            head: 3,
            must_refetch: true,
        };
        let text = serde_json::to_string(&page).unwrap();
        assert_eq!(serde_json::from_str::<ChangesPage>(&text).unwrap(), page);

        assert_eq!(row.version().stamp(), (row.hlc, "laptop-1"));
        let change = change("custom.a", json!(1));
        assert_eq!(change.version("phone").device_id, "phone");
    }
}
