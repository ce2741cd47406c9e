//! Settings sync on the server: field writes are checked against the shared schema, merged with
//! the shared rule (last writer wins per field by HLC, then device id), sealed when sensitive,
//! and recorded in the user's change feed, all in the caller's transaction.

use axum::http::StatusCode;
use lockstep_protocol::{
    errors::RestCode,
    feed::{Change, FeedRecord, SettingRecord},
    hlc::Hlc,
    settings,
    sync::{FieldVersion, MergeOutcome, SettingChange, SettingRow, Superseded, merge},
};
use serde_json::Value;
use sqlx::AnyConnection;

use crate::{
    clock::from_millis,
    db::settings::{self as store, StoredSetting},
    error::{ApiError, ApiResult},
    feed::{self, Entry, EventType},
    state::AppState,
};

/// Who writes: the user and the device, named in the feed and on the row.
#[derive(Debug, Clone)]
pub struct Writer {
    pub user_id: String,
    pub device_id: String,
    pub device_name: Option<String>,
}

/// The outcome of a batch of writes.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The rows as they stand for the keys whose writes took effect (or had already).
    pub applied: Vec<SettingRow>,
    /// Writes that lost to a newer version.
    pub superseded: Vec<Superseded>,
    /// The sequence number of the last feed entry appended, if any was.
    pub last_seq: Option<i64>,
}

fn invalid(message: String) -> ApiError {
    ApiError::rest(StatusCode::BAD_REQUEST, RestCode::InvalidParameter, message)
}

/// Checks one write against the schema and the clock, without touching storage.
pub fn check(state: &AppState, change: &SettingChange) -> ApiResult<()> {
    if change.deleted {
        if !change.value.is_null() {
            return Err(invalid(format!(
                "{}: a deletion carries no value (send null)",
                change.key
            )));
        }
        settings::spec(&change.key).map_err(|e| invalid(e.to_string()))?;
    } else {
        settings::validate(&change.key, &change.value).map_err(|e| invalid(e.to_string()))?;
    }
    let now = u64::try_from(state.now_ms()).unwrap_or(0);
    if change
        .hlc
        .is_too_far_ahead(now, state.config.max_clock_skew_seconds * 1000)
    {
        return Err(invalid(format!(
            "{}: hlc {} is too far ahead of the server's clock; check this device's clock",
            change.key, change.hlc
        )));
    }
    Ok(())
}

/// Applies writes in order (all are checked first; the first invalid one refuses the batch).
/// The caller's transaction holds the user's lock ([`crate::db::feed::lock_user`]), taken
/// before anything it decides on was read.
pub async fn apply(
    state: &AppState,
    conn: &mut AnyConnection,
    writer: &Writer,
    changes: &[SettingChange],
) -> ApiResult<Outcome> {
    for change in changes {
        check(state, change)?;
    }
    let mut outcome = Outcome::default();
    for change in changes {
        state.observe_stamp(&writer.user_id, change.hlc);
        let current = match store::get(&mut *conn, &writer.user_id, &change.key).await? {
            Some(stored) => Some(open(state, &stored)?),
            None => None,
        };
        let incoming = FieldVersion {
            value: if change.deleted {
                Value::Null
            } else {
                change.value.clone()
            },
            hlc: change.hlc,
            device_id: writer.device_id.clone(),
            deleted: change.deleted,
        };
        match merge(current.as_ref().map(|(_, v)| v), &incoming) {
            MergeOutcome::Applied => {
                let was_live = current.as_ref().is_some_and(|(row, _)| !row.deleted);
                if !was_live && !incoming.deleted {
                    let live = store::count_live(&mut *conn, &writer.user_id).await?;
                    if live >= settings::MAX_KEYS_PER_USER as i64 {
                        return Err(invalid(format!(
                            "{}: too many settings (at most {}); delete some first",
                            change.key,
                            settings::MAX_KEYS_PER_USER
                        )));
                    }
                }
                let row = write(state, &mut *conn, writer, &change.key, &incoming).await?;
                let event_type = match (was_live, incoming.deleted) {
                    (_, true) => EventType::Delete,
                    (false, false) => EventType::Insert,
                    (true, false) => EventType::Update,
                };
                let seq = feed::append(
                    state,
                    &mut *conn,
                    &writer.user_id,
                    Entry {
                        record: FeedRecord::Setting(Change {
                            event_type,
                            new: Some(setting_record(&writer.user_id, &row)),
                            old: current
                                .as_ref()
                                .map(|(row, _)| setting_record(&writer.user_id, row)),
                        }),
                        device_id: Some(writer.device_id.clone()),
                        device_name: writer.device_name.clone(),
                        sensitive: settings::is_sensitive(&change.key),
                    },
                )
                .await?;
                outcome.last_seq = Some(seq);
                outcome.applied.push(row);
            }
            MergeOutcome::Unchanged => {
                if let Some((row, _)) = current {
                    outcome.applied.push(row);
                }
            }
            MergeOutcome::Superseded => {
                if let Some((row, _)) = current {
                    outcome.superseded.push(Superseded {
                        key: change.key.clone(),
                        your_hlc: change.hlc,
                        current: row,
                    });
                }
            }
        }
    }
    Ok(outcome)
}

/// A row as the API shows it, plus the owner (the `postgres_changes` row shape).
pub fn row_json(user_id: &str, row: &SettingRow) -> Value {
    serde_json::to_value(setting_record(user_id, row)).unwrap_or(Value::Null)
}

/// A settings row with its owner, as the feed and `/rest/v1/user_settings` show it.
fn setting_record(user_id: &str, row: &SettingRow) -> SettingRecord {
    SettingRecord {
        row: row.clone(),
        user_id: user_id.to_owned(),
    }
}

fn aad(key: &str) -> Vec<u8> {
    format!("user_settings:{key}").into_bytes()
}

/// Opens a stored row: decrypts a sealed value and parses the stamp.
pub fn open(state: &AppState, stored: &StoredSetting) -> ApiResult<(SettingRow, FieldVersion)> {
    let text = if crate::sealing::DataKeys::is_sealed(&stored.value) {
        let bytes = state
            .sealing
            .open(stored.user_id.as_bytes(), &aad(&stored.key), &stored.value)
            .map_err(anyhow::Error::from)?;
        String::from_utf8(bytes).map_err(anyhow::Error::from)?
    } else {
        stored.value.clone()
    };
    let value: Value = serde_json::from_str(&text).map_err(anyhow::Error::from)?;
    let hlc: Hlc = stored
        .hlc
        .parse()
        .map_err(|e| anyhow::anyhow!("stored hlc: {e}"))?;
    let deleted = stored.deleted != 0;
    let row = SettingRow {
        key: stored.key.clone(),
        value: value.clone(),
        hlc,
        device_id: stored.device_id.clone(),
        device_name: stored.device_name.clone(),
        updated_at: from_millis(stored.updated_at),
        deleted,
    };
    let version = FieldVersion {
        value,
        hlc,
        device_id: stored.device_id.clone(),
        deleted,
    };
    Ok((row, version))
}

async fn write(
    state: &AppState,
    conn: &mut AnyConnection,
    writer: &Writer,
    key: &str,
    version: &FieldVersion,
) -> ApiResult<SettingRow> {
    let now = state.now_ms();
    let text = version.value.to_string();
    let value = if settings::is_sensitive(key) && !version.deleted {
        state
            .sealing
            .seal(writer.user_id.as_bytes(), &aad(key), text.as_bytes())
    } else {
        text
    };
    store::upsert(
        conn,
        &StoredSetting {
            user_id: writer.user_id.clone(),
            key: key.to_owned(),
            value,
            hlc: version.hlc.to_string(),
            device_id: writer.device_id.clone(),
            device_name: writer.device_name.clone(),
            updated_at: now,
            deleted: i64::from(version.deleted),
        },
    )
    .await?;
    Ok(SettingRow {
        key: key.to_owned(),
        value: version.value.clone(),
        hlc: version.hlc,
        device_id: writer.device_id.clone(),
        device_name: writer.device_name.clone(),
        updated_at: from_millis(now),
        deleted: version.deleted,
    })
}

/// Every row of the user (tombstones included), opened.
pub async fn rows(
    state: &AppState,
    conn: &mut AnyConnection,
    user_id: &str,
) -> ApiResult<Vec<SettingRow>> {
    store::list(conn, user_id)
        .await?
        .iter()
        .map(|s| open(state, s).map(|(row, _)| row))
        .collect()
}
