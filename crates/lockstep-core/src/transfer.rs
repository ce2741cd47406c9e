//! Export and import of settings as a JSON document:
//!
//! ```json
//! {"format": "lockstep-settings", "version": 1, "settings": {"appearance.theme": "dark", …}}
//! ```
//!
//! An export holds the values that were set (on any device), not defaults, and leaves out
//! sensitive values (integration API keys): an export file is a plain file. An import is
//! validated whole against the schema before anything is queued, then queued as one batch of
//! edits that syncs like any other.

use std::collections::BTreeMap;

use lockstep_protocol::settings;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{Engine, EngineError};

const FORMAT: &str = "lockstep-settings";
const VERSION: u64 = 1;

/// An export document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub format: String,
    pub version: u64,
    pub settings: BTreeMap<String, Value>,
}

/// Why an import was refused (nothing was queued).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a Lockstep settings export: {0}")]
    Format(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Engine {
    /// The settings that were set, for an export file (sensitive values left out).
    pub fn export(&self) -> Export {
        let (rows, device_only) = (self.rows(), self.device_only_keys());
        let settings = rows
            .values()
            .filter(|row| !row.deleted && !settings::is_sensitive(&row.key))
            .filter(|row| !device_only.contains(&row.key))
            .map(|row| (row.key.clone(), row.value.clone()))
            .collect();
        Export {
            format: FORMAT.into(),
            version: VERSION,
            settings,
        }
    }

    /// Imports an export document: every value is validated first; then all are queued as one
    /// batch. Returns how many settings were queued.
    pub fn import(&self, document: &[u8]) -> Result<usize, ImportError> {
        let export: Export =
            serde_json::from_slice(document).map_err(|e| ImportError::Format(e.to_string()))?;
        if export.format != FORMAT {
            return Err(ImportError::Format(format!(
                "format is {:?}",
                export.format
            )));
        }
        if export.version > VERSION {
            return Err(ImportError::Format(format!(
                "version {} is newer than this Lockstep reads ({VERSION})",
                export.version
            )));
        }
        for (key, value) in &export.settings {
            settings::validate(key, value).map_err(|e| ImportError::Invalid {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        }
        let count = export.settings.len();
        self.set_many(export.settings.into_iter().collect())?;
        Ok(count)
    }
}
