//! The schema of synced settings: which keys exist, what values they take, which are secret.
//!
//! Keys are dotted lowercase names. The exact keys are:
//!
//! | key | value | default |
//! |---|---|---|
//! | `appearance.theme` | `"light"`, `"dark"` or `"system"` | `"system"` |
//! | `notifications.desktop` | bool | `true` |
//! | `notifications.remote_changes` | bool | `true` |
//! | `notifications.security_events` | bool | `true` |
//! | `security.lock_after_minutes` | whole number 0..=1440 (0 = never) | `15` |
//! | `security.require_code_on_unlock` | bool | `false` |
//! | `dashboard.layout` | list of `{"widget": W, "visible": bool}`, each widget at most once | all five widgets, visible |
//!
//! and two families:
//!
//! - `integrations.<name>` (name: 1..=40 of `[a-z0-9_-]`): an API key, a string of 1..=4096
//!   characters. **Sensitive**: stored encrypted, never logged. No default.
//! - `custom.<segment>[.<segment>…]` (segments: 1..=64 of `[a-z0-9_-]`): any JSON value. No
//!   default.
//!
//! Any other key is refused. Keys are at most [`MAX_KEY_LEN`] characters and a value's JSON at
//! most [`MAX_VALUE_BYTES`] bytes. `null` is never a valid value: deleting a setting is a
//! tombstone (see [`crate::sync`]).
//!
//! Errors ([`SettingError`]) name the key and the rule that was broken, never the value, which
//! may be a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use serde_json::{Value, json};

/// Largest serialized (compact JSON) value of one setting, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// How many keys one user may store (enforced by the server).
pub const MAX_KEYS_PER_USER: usize = 500;
/// Longest key, in characters.
pub const MAX_KEY_LEN: usize = 128;
/// Longest integration name (the part after `integrations.`).
pub const MAX_INTEGRATION_NAME_LEN: usize = 40;
/// Longest integration secret, in characters.
pub const MAX_SECRET_LEN: usize = 4096;
/// Longest segment of a `custom.` key.
pub const MAX_CUSTOM_SEGMENT_LEN: usize = 64;

/// Prefix of the sensitive integration keys.
pub const INTEGRATIONS_PREFIX: &str = "integrations.";
/// Prefix of the free-form keys.
pub const CUSTOM_PREFIX: &str = "custom.";

/// The values of `appearance.theme`.
pub const THEMES: &[&str] = &["light", "dark", "system"];
/// The widgets a `dashboard.layout` may list, in their default order.
pub const DASHBOARD_WIDGETS: &[&str] =
    &["sync_status", "devices", "security", "activity", "settings"];

const KNOWN_KEYS: &[&str] = &[
    "appearance.theme",
    "notifications.desktop",
    "notifications.remote_changes",
    "notifications.security_events",
    "security.lock_after_minutes",
    "security.require_code_on_unlock",
    "dashboard.layout",
    "desktop.close_to_tray",
];

/// What values a setting takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingKind {
    /// `true` or `false`.
    Bool,
    /// A whole JSON number from `min` to `max` inclusive (`1.5`, `15.0` and `"15"` are refused).
    Integer { min: i64, max: i64 },
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A string of 1 to `max_len` characters (an API key).
    Secret { max_len: usize },
    /// A list of `{"widget": W, "visible": bool}` objects, W from [`DASHBOARD_WIDGETS`], each at
    /// most once, no other fields.
    DashboardLayout,
    /// Any JSON value but `null`.
    AnyJson,
}

/// Everything both sides know about one key.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingSpec {
    /// What values it takes.
    pub kind: SettingKind,
    /// Whether values must be encrypted at rest and never logged.
    pub sensitive: bool,
    /// The value a client uses when the key was never set (`None` for the families).
    pub default: Option<Value>,
    /// The setting's name as people read it (`Theme`), for every front end: the CLI, the
    /// notifications and the window. A family's name is per key: see [`label`].
    pub label: &'static str,
    /// One line for humans.
    pub description: &'static str,
}

/// A key or value that breaks the schema: which key and which rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The offending key (cut to [`MAX_KEY_LEN`] characters plus `…` when longer), or `""` for a
    /// problem with a whole push rather than one key.
    pub key: String,
    /// The rule that was broken, phrased for the writer.
    pub rule: String,
}

impl SettingError {
    /// An error for `key` (shortened if it is absurdly long) breaking `rule`.
    pub fn new(key: &str, rule: impl Into<String>) -> SettingError {
        let key = if key.chars().count() > MAX_KEY_LEN {
            let mut short: String = key.chars().take(MAX_KEY_LEN).collect();
            short.push('…');
            short
        } else {
            key.to_owned()
        };
        SettingError {
            key,
            rule: rule.into(),
        }
    }
}

impl fmt::Display for SettingError {
    /// `"{key}: {rule}"`, or just the rule when the key is empty (a push-level problem).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.rule)
        } else {
            write!(f, "{}: {}", self.key, self.rule)
        }
    }
}

impl std::error::Error for SettingError {}

/// The spec for a key (the exact keys and the two families), or an error naming the key and the
/// rule it breaks.
pub fn spec(key: &str) -> Result<SettingSpec, SettingError> {
    if key.is_empty() {
        return Err(SettingError::new(key, "a setting key is required"));
    }
    if key.chars().count() > MAX_KEY_LEN {
        return Err(SettingError::new(
            key,
            format!("key is too long (at most {MAX_KEY_LEN} characters)"),
        ));
    }
    if !key.chars().all(|c| is_name_char(c) || c == '.') {
        return Err(SettingError::new(
            key,
            "keys are lowercase: letters a-z, digits, '_', '-' and '.' only",
        ));
    }
    if let Some(spec) = exact_spec(key) {
        return Ok(spec);
    }
    if let Some(name) = key.strip_prefix(INTEGRATIONS_PREFIX) {
        if !is_name(name, MAX_INTEGRATION_NAME_LEN) {
            return Err(SettingError::new(
                key,
                format!(
                    "the name after integrations. must be 1 to {MAX_INTEGRATION_NAME_LEN} \
                     characters of a-z, 0-9, '_' or '-'"
                ),
            ));
        }
        return Ok(SettingSpec {
            kind: SettingKind::Secret {
                max_len: MAX_SECRET_LEN,
            },
            sensitive: true,
            default: None,
            label: "API key",
            description: "API key of an integration (kept encrypted, never logged)",
        });
    }
    if let Some(rest) = key.strip_prefix(CUSTOM_PREFIX) {
        if !rest
            .split('.')
            .all(|segment| is_name(segment, MAX_CUSTOM_SEGMENT_LEN))
        {
            return Err(SettingError::new(
                key,
                format!(
                    "after custom. come one or more dot-separated parts of 1 to \
                     {MAX_CUSTOM_SEGMENT_LEN} characters of a-z, 0-9, '_' or '-'"
                ),
            ));
        }
        return Ok(SettingSpec {
            kind: SettingKind::AnyJson,
            sensitive: false,
            default: None,
            label: "Custom setting",
            description: "free-form client setting",
        });
    }
    Err(SettingError::new(
        key,
        "unknown setting; use a known key or one under custom.",
    ))
}

/// A key's name as people read it: the schema's [`SettingSpec::label`], with the integration's
/// name for an API key (`API key for github`) and the key itself for a custom or unknown key.
pub fn label(key: &str) -> String {
    if let Some(spec) = exact_spec(key) {
        return spec.label.to_owned();
    }
    match key.strip_prefix(INTEGRATIONS_PREFIX) {
        Some(name) => format!("API key for {name}"),
        None => key.to_owned(),
    }
}

/// A value of `key` as people read it, in a sentence of any front end (`Theme set to Dark`):
///
/// - a switch: `on` or `off`;
/// - the lock delay: `1 minute`, `15 minutes`, `never` for 0;
/// - a choice, capitalised: `Dark`;
/// - the dashboard layout, as lists of its widgets: `Devices, Security and Activity shown;
///   Settings hidden`;
/// - a custom number as it is, a custom text in quotes (`“hello”`, cut after 40 characters).
///
/// Never JSON: `None` for what a sentence cannot carry, where a front end says that the setting
/// "changed": a sensitive value (never spelled out), a custom list or object, a value that
/// breaks the schema.
pub fn spoken_value(key: &str, value: &Value) -> Option<String> {
    let kind = match spec(key) {
        Ok(spec) if spec.sensitive => return None,
        Ok(spec) => spec.kind,
        // A key of a newer schema: said as a custom value would be.
        Err(_) => SettingKind::AnyJson,
    };
    match (kind, value) {
        (SettingKind::Bool | SettingKind::AnyJson, Value::Bool(on)) => {
            Some(if *on { "on" } else { "off" }.to_owned())
        }
        (SettingKind::Integer { .. }, Value::Number(n)) if key == LOCK_AFTER_MINUTES => {
            match n.as_i64()? {
                0 => Some("never".to_owned()),
                1 => Some("1 minute".to_owned()),
                minutes => Some(format!("{minutes} minutes")),
            }
        }
        (SettingKind::Integer { .. } | SettingKind::AnyJson, Value::Number(n)) => {
            Some(n.to_string())
        }
        (SettingKind::Choice(_), Value::String(choice)) => Some(capitalised(choice)),
        (SettingKind::DashboardLayout, layout) => spoken_layout(layout),
        (SettingKind::AnyJson, Value::String(text)) => {
            const LONGEST: usize = 40;
            let mut shown: String = text.chars().take(LONGEST).collect();
            if text.chars().count() > LONGEST {
                shown.push('…');
            }
            Some(format!("“{shown}”"))
        }
        _ => None,
    }
}

/// Items as people list them: `A`, `A and B`, `A, B and C` (empty for none).
pub fn spoken_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => format!(
            "{} and {}",
            init.iter()
                .map(AsRef::as_ref)
                .collect::<Vec<_>>()
                .join(", "),
            last.as_ref()
        ),
    }
}

/// The key whose whole number is a delay in minutes (0 = never).
const LOCK_AFTER_MINUTES: &str = "security.lock_after_minutes";

/// `dark` → `Dark`.
fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A dashboard layout as lists of its widgets, in its order: `Devices and Security shown;
/// Settings hidden`, or `no widgets` for an empty list. `None` if it is not a layout.
fn spoken_layout(layout: &Value) -> Option<String> {
    let mut shown = Vec::new();
    let mut hidden = Vec::new();
    for entry in layout.as_array()? {
        let widget = entry.get("widget")?.as_str()?;
        // `sync_status` → `Sync status`.
        let name = capitalised(&widget.replace('_', " "));
        if entry.get("visible")?.as_bool()? {
            shown.push(name);
        } else {
            hidden.push(name);
        }
    }
    let mut parts = Vec::new();
    if !shown.is_empty() {
        parts.push(format!("{} shown", spoken_list(&shown)));
    }
    if !hidden.is_empty() {
        parts.push(format!("{} hidden", spoken_list(&hidden)));
    }
    if parts.is_empty() {
        return Some("no widgets".to_owned());
    }
    Some(parts.join("; "))
}

/// The spec of one of the exact keys.
fn exact_spec(key: &str) -> Option<SettingSpec> {
    let plain = |kind, default, label, description| SettingSpec {
        kind,
        sensitive: false,
        default: Some(default),
        label,
        description,
    };
    let spec = match key {
        "appearance.theme" => plain(
            SettingKind::Choice(THEMES),
            json!("system"),
            "Theme",
            "colour theme: light, dark, or follow the system",
        ),
        "notifications.desktop" => plain(
            SettingKind::Bool,
            json!(true),
            "Desktop notifications",
            "show desktop notifications",
        ),
        "notifications.remote_changes" => plain(
            SettingKind::Bool,
            json!(true),
            "Notify me of changes made elsewhere",
            "notify when another device changes a setting",
        ),
        "notifications.security_events" => plain(
            SettingKind::Bool,
            json!(true),
            "Notify me of security events",
            "notify about sign-ins, new devices and other security events",
        ),
        "security.lock_after_minutes" => plain(
            SettingKind::Integer { min: 0, max: 1440 },
            json!(15),
            "Lock after inactivity",
            "lock the app after this many idle minutes (0 = never)",
        ),
        "security.require_code_on_unlock" => plain(
            SettingKind::Bool,
            json!(false),
            "Ask for a code when unlocking",
            "ask for a second-factor code when unlocking",
        ),
        "dashboard.layout" => plain(
            SettingKind::DashboardLayout,
            default_layout(),
            "Dashboard layout",
            "which dashboard widgets to show, in order",
        ),
        "desktop.close_to_tray" => plain(
            SettingKind::Bool,
            json!(true),
            "Keep running in the tray",
            "closing the desktop window hides it and keeps syncing in the tray (where the \
             desktop has one)",
        ),
        _ => return None,
    };
    Some(spec)
}

fn default_layout() -> Value {
    Value::Array(
        DASHBOARD_WIDGETS
            .iter()
            .map(|widget| json!({ "widget": widget, "visible": true }))
            .collect(),
    )
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

/// 1 to `max_len` characters of `[a-z0-9_-]`.
fn is_name(s: &str, max_len: usize) -> bool {
    !s.is_empty() && s.len() <= max_len && s.chars().all(is_name_char)
}

/// Validates a value for a key (checks the key first, see [`spec`]).
///
/// `null` is not a valid value: a deletion is a tombstone, carried separately.
pub fn validate(key: &str, value: &Value) -> Result<(), SettingError> {
    let spec = spec(key)?;
    if value.is_null() {
        return Err(SettingError::new(
            key,
            "value must not be null (to delete a setting, send it with deleted: true)",
        ));
    }
    if !fits_in_value_limit(value) {
        return Err(SettingError::new(
            key,
            format!("value is too large (at most {MAX_VALUE_BYTES} bytes of JSON)"),
        ));
    }
    check_kind(&spec.kind, value).map_err(|rule| SettingError::new(key, rule))
}

/// Whether a key's values must be encrypted at rest and never logged (`integrations.*`).
/// False for invalid keys.
pub fn is_sensitive(key: &str) -> bool {
    spec(key).is_ok_and(|spec| spec.sensitive)
}

/// Every exact key with its default, as a sorted map (the families have no default).
pub fn defaults() -> BTreeMap<&'static str, Value> {
    KNOWN_KEYS
        .iter()
        .filter_map(|&key| Some((key, exact_spec(key)?.default?)))
        .collect()
}

/// The exact known keys (not the families), in display order.
pub fn known_keys() -> &'static [&'static str] {
    KNOWN_KEYS
}

/// Whether the compact JSON of `value` is at most [`MAX_VALUE_BYTES`] bytes. Stops serializing
/// as soon as the limit is passed.
fn fits_in_value_limit(value: &Value) -> bool {
    struct Counter(usize);

    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            if self.0 > MAX_VALUE_BYTES {
                Err(io::Error::other("too large"))
            } else {
                Ok(buf.len())
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    serde_json::to_writer(&mut Counter(0), value).is_ok()
}

/// Checks a non-null value against a kind; the error is the rule text.
fn check_kind(kind: &SettingKind, value: &Value) -> Result<(), String> {
    match kind {
        SettingKind::Bool => match value {
            Value::Bool(_) => Ok(()),
            _ => Err("must be true or false".into()),
        },
        SettingKind::Integer { min, max } => match value.as_i64() {
            Some(n) if (*min..=*max).contains(&n) => Ok(()),
            _ => Err(format!("must be a whole number from {min} to {max}")),
        },
        SettingKind::Choice(choices) => match value.as_str() {
            Some(s) if choices.contains(&s) => Ok(()),
            _ => Err(format!("must be one of {}", choices.join(", "))),
        },
        SettingKind::Secret { max_len } => match value.as_str() {
            Some(s) if (1..=*max_len).contains(&s.chars().count()) => Ok(()),
            _ => Err(format!("must be a string of 1 to {max_len} characters")),
        },
        SettingKind::DashboardLayout => check_layout(value),
        SettingKind::AnyJson => Ok(()),
    }
}

fn check_layout(value: &Value) -> Result<(), String> {
    let Some(entries) = value.as_array() else {
        return Err(
            "must be a list of {\"widget\": name, \"visible\": true or false} objects".into(),
        );
    };
    let mut seen: Vec<&str> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let Some(fields) = entry.as_object() else {
            return Err(format!(
                "entry {i} must be an object like {{\"widget\": \"devices\", \"visible\": true}}"
            ));
        };
        if fields.len() != 2 || !fields.contains_key("widget") || !fields.contains_key("visible") {
            return Err(format!(
                "entry {i} must have exactly the fields widget and visible"
            ));
        }
        let widget = fields
            .get("widget")
            .and_then(Value::as_str)
            .and_then(|w| DASHBOARD_WIDGETS.iter().copied().find(|known| *known == w));
        let Some(widget) = widget else {
            return Err(format!(
                "entry {i}: widget must be one of {}",
                DASHBOARD_WIDGETS.join(", ")
            ));
        };
        if !fields.get("visible").is_some_and(Value::is_boolean) {
            return Err(format!("entry {i}: visible must be true or false"));
        }
        if seen.contains(&widget) {
            return Err(format!("widget {widget} appears more than once"));
        }
        seen.push(widget);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(key: &str, value: Value) -> String {
        validate(key, &value).unwrap_err().to_string()
    }

    #[test]
    fn theme() {
        for ok in ["light", "dark", "system"] {
            assert_eq!(validate("appearance.theme", &json!(ok)), Ok(()));
        }
        assert_eq!(
            rule("appearance.theme", json!("blue")),
            "appearance.theme: must be one of light, dark, system"
        );
        assert!(validate("appearance.theme", &json!("Dark")).is_err());
        assert!(validate("appearance.theme", &json!(["dark"])).is_err());
    }

    #[test]
    fn booleans() {
        for key in [
            "notifications.desktop",
            "notifications.remote_changes",
            "notifications.security_events",
            "security.require_code_on_unlock",
        ] {
            assert_eq!(validate(key, &json!(true)), Ok(()));
            assert_eq!(validate(key, &json!(false)), Ok(()));
            for bad in [json!(1), json!("true"), json!([]), json!({})] {
                assert_eq!(rule(key, bad), format!("{key}: must be true or false"));
            }
        }
    }

    #[test]
    fn lock_minutes() {
        let key = "security.lock_after_minutes";
        for ok in [0, 1, 15, 1440] {
            assert_eq!(validate(key, &json!(ok)), Ok(()));
        }
        for bad in [
            json!(1441),
            json!(-1),
            json!(1.5),
            json!(15.0),
            json!("15"),
            json!(u64::MAX),
            json!(true),
        ] {
            assert_eq!(
                rule(key, bad),
                "security.lock_after_minutes: must be a whole number from 0 to 1440"
            );
        }
    }

    #[test]
    fn dashboard_layout() {
        let key = "dashboard.layout";
        assert_eq!(validate(key, &default_layout()), Ok(()));
        assert_eq!(validate(key, &json!([])), Ok(()));
        assert_eq!(
            validate(
                key,
                &json!([
                    {"widget": "settings", "visible": false},
                    {"visible": true, "widget": "devices"}
                ])
            ),
            Ok(())
        );
        let duplicate = json!([
            {"widget": "devices", "visible": true},
            {"widget": "devices", "visible": false}
        ]);
        assert!(rule(key, duplicate).contains("devices appears more than once"));
        let unknown = json!([{"widget": "weather", "visible": true}]);
        let message = rule(key, unknown);
        assert!(message.contains("widget must be one of"), "{message}");
        assert!(!message.contains("weather"), "never echoes the value");
        let extra = json!([{"widget": "devices", "visible": true, "size": 2}]);
        assert!(rule(key, extra).contains("exactly the fields widget and visible"));
        let missing_visible = json!([{"widget": "devices"}]);
        assert!(rule(key, missing_visible).contains("exactly the fields widget and visible"));
        let bad_visible = json!([{"widget": "devices", "visible": "yes"}]);
        assert!(rule(key, bad_visible).contains("visible must be true or false"));
        let bad_widget_type = json!([{"widget": 3, "visible": true}]);
        assert!(rule(key, bad_widget_type).contains("widget must be one of"));
        assert!(rule(key, json!(["devices"])).contains("entry 0 must be an object"));
        assert!(rule(key, json!({"widget": "devices"})).contains("must be a list"));
    }

    #[test]
    fn integrations() {
        assert_eq!(validate("integrations.github", &json!("ghp_abc")), Ok(()));
        assert_eq!(
            validate(&format!("integrations.{}", "a".repeat(40)), &json!("k")),
            Ok(())
        );
        assert_eq!(
            validate("integrations.my-tool_2", &json!("k".repeat(4096))),
            Ok(())
        );
        assert!(is_sensitive("integrations.github"));

        let upper = spec("integrations.GitHub").unwrap_err();
        assert_eq!(upper.key, "integrations.GitHub");
        assert!(upper.rule.contains("lowercase"));
        let long = spec(&format!("integrations.{}", "a".repeat(41))).unwrap_err();
        assert!(long.rule.contains("1 to 40"), "{long}");
        assert!(spec("integrations.").is_err());
        assert!(spec("integrations.a.b").is_err());
        assert!(!is_sensitive("integrations.GitHub"));

        let secret = "sk_live_do_not_leak";
        assert!(validate("integrations.github", &json!(secret)).is_ok());
        assert_eq!(
            rule("integrations.github", json!("")),
            "integrations.github: must be a string of 1 to 4096 characters"
        );
        assert!(validate("integrations.github", &json!("k".repeat(4097))).is_err());
        assert!(validate("integrations.github", &json!(12345)).is_err());
        // Multi-byte characters count as one each.
        assert_eq!(
            validate("integrations.github", &json!("é".repeat(4096))),
            Ok(())
        );
    }

    #[test]
    fn custom_keys() {
        for value in [json!(1), json!("x"), json!({"a": [1, 2, null]}), json!([])] {
            assert_eq!(validate("custom.a.b", &value), Ok(()));
        }
        assert_eq!(validate("custom.x", &json!(false)), Ok(()));
        assert_eq!(
            validate(&format!("custom.{}", "s".repeat(64)), &json!(1)),
            Ok(())
        );
        assert!(!is_sensitive("custom.a"));
        for bad in [
            "custom.",
            "custom",
            "custom..a",
            "custom.a.",
            "custom.a..b",
            "custom.A",
            "custom.a b",
        ] {
            assert!(spec(bad).is_err(), "{bad}");
        }
        assert!(spec(&format!("custom.{}", "s".repeat(65))).is_err());
    }

    #[test]
    fn oversized_values() {
        // `"` + n chars + `"`: exactly at the limit is fine, one more is not.
        let fits = json!("x".repeat(MAX_VALUE_BYTES - 2));
        assert_eq!(validate("custom.x", &fits), Ok(()));
        let too_big = json!("x".repeat(MAX_VALUE_BYTES - 1));
        assert_eq!(
            rule("custom.x", too_big),
            "custom.x: value is too large (at most 16384 bytes of JSON)"
        );
        let deep = json!(vec![json!({"k": "v"}); 2000]);
        assert!(validate("custom.x", &deep).is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(
            spec("foo.bar").unwrap_err().to_string(),
            "foo.bar: unknown setting; use a known key or one under custom."
        );
        assert!(spec("").is_err());
        assert!(
            spec("Appearance.theme")
                .unwrap_err()
                .rule
                .contains("lowercase")
        );
        assert!(spec("appearance.theme ").is_err());
        assert!(spec("appearance").is_err());
        let long_key = format!("custom.{}", "a.".repeat(100));
        let err = spec(&long_key).unwrap_err();
        assert!(err.rule.contains("too long"));
        assert_eq!(err.key.chars().count(), MAX_KEY_LEN + 1, "shortened");
        assert!(!is_sensitive("foo.bar"));
        assert!(!is_sensitive("appearance.theme"));
    }

    #[test]
    fn null_is_refused_everywhere() {
        for key in known_keys()
            .iter()
            .copied()
            .chain(["integrations.github", "custom.a"])
        {
            let err = validate(key, &Value::Null).unwrap_err();
            assert_eq!(err.key, key);
            assert!(err.rule.contains("null"), "{err}");
        }
    }

    #[test]
    fn errors_never_contain_the_value() {
        let secret = "sk_live_0123456789";
        for key in [
            "integrations.github",
            "appearance.theme",
            "dashboard.layout",
        ] {
            for value in [json!(secret), json!([secret]), json!({"widget": secret})] {
                if let Err(err) = validate(key, &value) {
                    assert!(!err.to_string().contains(secret), "{err}");
                }
            }
        }
    }

    #[test]
    fn defaults_are_valid_and_complete() {
        let defaults = defaults();
        assert_eq!(defaults.len(), known_keys().len());
        for (key, value) in &defaults {
            assert_eq!(validate(key, value), Ok(()), "{key}");
        }
        assert_eq!(defaults["appearance.theme"], json!("system"));
        assert_eq!(defaults["security.lock_after_minutes"], json!(15));
        assert_eq!(defaults["security.require_code_on_unlock"], json!(false));
        assert_eq!(defaults["desktop.close_to_tray"], json!(true));
        assert_eq!(defaults["dashboard.layout"].as_array().unwrap().len(), 5);
        for key in known_keys() {
            let spec = spec(key).unwrap();
            assert!(!spec.sensitive);
            assert!(spec.default.is_some());
            assert!(!spec.description.is_empty());
        }
    }

    #[test]
    fn every_key_has_one_label_for_every_front_end() {
        let labels: std::collections::BTreeSet<String> =
            known_keys().iter().map(|k| label(k)).collect();
        assert_eq!(labels.len(), known_keys().len(), "two keys share a label");
        for key in known_keys() {
            assert_eq!(label(key), spec(key).unwrap().label);
            assert!(label(key).chars().next().unwrap().is_uppercase(), "{key}");
        }
        assert_eq!(label("appearance.theme"), "Theme");
        assert_eq!(label("integrations.github"), "API key for github");
        assert_eq!(label("custom.x"), "custom.x");
    }

    #[test]
    fn values_read_as_people_say_them_never_as_json() {
        let said = |key: &str, value: Value| spoken_value(key, &value);
        assert_eq!(said("notifications.desktop", json!(true)).unwrap(), "on");
        assert_eq!(said("notifications.desktop", json!(false)).unwrap(), "off");
        assert_eq!(
            said("security.lock_after_minutes", json!(0)).unwrap(),
            "never"
        );
        assert_eq!(
            said("security.lock_after_minutes", json!(1)).unwrap(),
            "1 minute"
        );
        assert_eq!(
            said("security.lock_after_minutes", json!(15)).unwrap(),
            "15 minutes"
        );
        assert_eq!(said("appearance.theme", json!("dark")).unwrap(), "Dark");
        let layout = json!([
            {"widget": "devices", "visible": true},
            {"widget": "security", "visible": true},
            {"widget": "activity", "visible": true},
            {"widget": "settings", "visible": false},
        ]);
        assert_eq!(
            said("dashboard.layout", layout).unwrap(),
            "Devices, Security and Activity shown; Settings hidden"
        );
        assert_eq!(
            said("dashboard.layout", default_layout()).unwrap(),
            "Sync status, Devices, Security, Activity and Settings shown"
        );
        assert_eq!(
            said(
                "dashboard.layout",
                json!([{"widget": "devices", "visible": false}])
            )
            .unwrap(),
            "Devices hidden"
        );
        assert_eq!(said("dashboard.layout", json!([])).unwrap(), "no widgets");
        assert_eq!(said("custom.size", json!(3)).unwrap(), "3");
        assert_eq!(said("custom.greeting", json!("hello")).unwrap(), "“hello”");
        assert_eq!(
            said("custom.long", json!("x".repeat(50))).unwrap(),
            format!("“{}…”", "x".repeat(40))
        );
        // What a sentence cannot carry is not said at all.
        assert_eq!(said("integrations.github", json!("ghp_secret")), None);
        assert_eq!(said("custom.list", json!([1, 2])), None);
        assert_eq!(said("custom.object", json!({"a": 1})), None);
        assert_eq!(said("dashboard.layout", json!({"widget": "devices"})), None);
        assert_eq!(said("appearance.theme", json!(["dark"])), None);
    }

    #[test]
    fn lists_read_as_people_say_them() {
        assert_eq!(spoken_list::<&str>(&[]), "");
        assert_eq!(spoken_list(&["Desk"]), "Desk");
        assert_eq!(
            spoken_list(&["Work laptop", "Desk"]),
            "Work laptop and Desk"
        );
        assert_eq!(spoken_list(&["A", "B", "C"]), "A, B and C");
    }

    #[test]
    fn display_without_key() {
        assert_eq!(
            SettingError::new("", "push is empty").to_string(),
            "push is empty"
        );
    }
}
