//! The known settings as typed keys: `engine.value(keys::THEME)` is a [`Theme`], and
//! `engine.set_value(keys::LOCK_AFTER_MINUTES, 5)` cannot be given a string.
//!
//! The names, rules and defaults stay in the protocol crate's schema; this module gives each
//! known key its Rust type, and its tests check the two agree (every schema key has a typed key
//! here, and every schema default reads as its type), so a key added to the schema without a
//! type fails the build's tests.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::engine::{Engine, EngineError};

/// A known setting whose values are `T`.
#[derive(Debug)]
pub struct Key<T> {
    pub name: &'static str,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Key<T> {}

impl<T> Key<T> {
    const fn new(name: &'static str) -> Key<T> {
        Key {
            name,
            _type: PhantomData,
        }
    }
}

/// `appearance.theme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Theme {
    Light,
    Dark,
    System,
}

/// One entry of `dashboard.layout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Widget {
    pub widget: String,
    pub visible: bool,
}

/// The typed keys, one per known key of the schema.
pub mod keys {
    use super::{Key, Theme, Widget};

    pub const THEME: Key<Theme> = Key::new("appearance.theme");
    pub const DESKTOP_NOTIFICATIONS: Key<bool> = Key::new("notifications.desktop");
    pub const NOTIFY_REMOTE_CHANGES: Key<bool> = Key::new("notifications.remote_changes");
    pub const NOTIFY_SECURITY_EVENTS: Key<bool> = Key::new("notifications.security_events");
    pub const LOCK_AFTER_MINUTES: Key<u32> = Key::new("security.lock_after_minutes");
    pub const REQUIRE_CODE_ON_UNLOCK: Key<bool> = Key::new("security.require_code_on_unlock");
    pub const DASHBOARD_LAYOUT: Key<Vec<Widget>> = Key::new("dashboard.layout");
    pub const CLOSE_TO_TRAY: Key<bool> = Key::new("desktop.close_to_tray");
}

impl Engine {
    /// The effective value of a known key (the schema's default when never set). A value that
    /// does not read as the key's type (which the schema's validation prevents) reads as the
    /// default too.
    pub fn value<T: DeserializeOwned>(&self, key: Key<T>) -> T {
        let read = |v: Option<serde_json::Value>| v.and_then(|v| serde_json::from_value(v).ok());
        read(self.get(key.name))
            .or_else(|| read(lockstep_protocol::settings::defaults().remove(key.name)))
            .unwrap_or_else(|| unreachable_default(key.name))
    }

    /// Sets a known key (validated by the schema like [`Engine::set`]).
    pub fn set_value<T: Serialize>(&self, key: Key<T>, value: T) -> Result<(), EngineError> {
        let value = serde_json::to_value(value)
            .map_err(|e| EngineError::State(format!("{} cannot hold that value: {e}", key.name)))?;
        self.set(key.name, value)
    }
}

/// Every known key has a default of its type (checked by the tests below).
fn unreachable_default<T>(name: &str) -> T {
    panic!("the schema has no default of the right type for {name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_protocol::settings;
    use serde_json::Value;

    fn reads_default<T: DeserializeOwned>(key: Key<T>) -> bool {
        settings::defaults()
            .remove(key.name)
            .and_then(|v| serde_json::from_value::<T>(v).ok())
            .is_some()
    }

    #[test]
    fn every_schema_key_has_a_typed_key_whose_type_reads_its_default() {
        let typed = [
            (keys::THEME.name, reads_default(keys::THEME)),
            (
                keys::DESKTOP_NOTIFICATIONS.name,
                reads_default(keys::DESKTOP_NOTIFICATIONS),
            ),
            (
                keys::NOTIFY_REMOTE_CHANGES.name,
                reads_default(keys::NOTIFY_REMOTE_CHANGES),
            ),
            (
                keys::NOTIFY_SECURITY_EVENTS.name,
                reads_default(keys::NOTIFY_SECURITY_EVENTS),
            ),
            (
                keys::LOCK_AFTER_MINUTES.name,
                reads_default(keys::LOCK_AFTER_MINUTES),
            ),
            (
                keys::REQUIRE_CODE_ON_UNLOCK.name,
                reads_default(keys::REQUIRE_CODE_ON_UNLOCK),
            ),
            (
                keys::DASHBOARD_LAYOUT.name,
                reads_default(keys::DASHBOARD_LAYOUT),
            ),
            (keys::CLOSE_TO_TRAY.name, reads_default(keys::CLOSE_TO_TRAY)),
        ];
        let names: Vec<&str> = typed.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            settings::known_keys(),
            "one typed key per schema key, in order"
        );
        for (name, ok) in typed {
            assert!(
                ok,
                "{name}: the schema default does not read as the typed key's type"
            );
        }
    }

    #[test]
    fn every_theme_the_schema_allows_is_a_variant() {
        for theme in settings::THEMES {
            let parsed: Theme = serde_json::from_value(Value::String((*theme).into())).unwrap();
            assert_eq!(
                serde_json::to_value(parsed).unwrap(),
                Value::String((*theme).into())
            );
        }
    }
}
