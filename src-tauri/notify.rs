//! Desktop notifications, kept calm:
//!
//! - A setting changed on another device is told once its burst is over: one note for one change
//!   (`Theme set to Dark on Work laptop`), one summary for changes that came together (a
//!   streamed batch: `5 settings changed on Work laptop and Desk`) or in a catch-up after a
//!   sign-in or a reconnect (`… while you were away`, see [`Arrival`]).
//! - What this device did itself is never told, the window shows it: a setting changed by
//!   another process on its profile (a `lockstep set`), its own edits replaced by its own newer
//!   ones or set aside, its own security changes ([`EngineEvent::OwnSecurity`]).
//! - Values are said as people read them ([`settings::spoken_value`]), never as JSON; sensitive
//!   ones never at all.
//! - While the app is locked nothing with a setting's value or an email address shows: changes
//!   are counted and told at unlock as one summary without values (`3 settings changed while
//!   Lockstep was locked`); security events still show, worded without them.
//!
//! The decisions are a pure state machine, [`Notifier`], fed the engine's events in order with
//! the time, and tested on its own. [`Notifications`] runs it in the app: the app's event sink
//! feeds it, a timer releases bursts, and a note shows (through `notify-rust`, on a blocking
//! thread) if the user's notification settings allow it; a failure (no notification server on
//! the bus) is logged, never fatal.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use lockstep_core::{
    engine::{Arrival, Engine, EngineEvent},
    feed::SecurityEvent,
    typed::{Key, keys},
};
use lockstep_protocol::{
    settings::{self, label},
    sync::SettingRow,
};
use serde_json::Value;

/// How far apart the changes of one burst may come, in milliseconds: changes closer together
/// than this (a streamed batch, the pages of a catch-up) make one note, released once none came
/// for this long.
pub const SETTLE_MS: i64 = 1_000;
/// The longest a burst is held: a steady trickle of changes is told at least this often.
pub const LONGEST_HOLD_MS: i64 = 10_000;

/// The user's notification settings (`notifications.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preferences {
    pub desktop: bool,
    pub remote_changes: bool,
    pub security_events: bool,
}

impl Preferences {
    /// Reads them through `value` (the engine's [`Engine::value`]: the schema's default, on,
    /// where never set).
    ///
    /// [`Engine::value`]: lockstep_core::engine::Engine::value
    pub fn read(value: impl Fn(Key<bool>) -> bool) -> Preferences {
        Preferences {
            desktop: value(keys::DESKTOP_NOTIFICATIONS),
            remote_changes: value(keys::NOTIFY_REMOTE_CHANGES),
            security_events: value(keys::NOTIFY_SECURITY_EVENTS),
        }
    }

    /// Whether `note` may show.
    pub fn allow(&self, note: &Note) -> bool {
        self.desktop
            && match note.topic {
                Topic::Settings => self.remote_changes,
                Topic::Security => self.security_events,
            }
    }
}

/// What a note is about, for the user's notification settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Settings changed elsewhere (`notifications.remote_changes`).
    Settings,
    /// The account's security (`notifications.security_events`).
    Security,
}

/// A notification: its summary and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub topic: Topic,
    pub summary: String,
    pub body: String,
}

/// What a waiting change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// Another device changed a setting.
    Changed(Arrival),
    /// An edit made here lost to a newer one made elsewhere.
    Replaced,
}

/// A change waiting for the end of its burst.
#[derive(Debug, Clone)]
struct Waiting {
    waited: Waited,
    key: String,
    device_name: Option<String>,
    /// Its own note, shown if it ends up alone.
    note: Note,
}

/// Which notes to show, and when: a pure state machine fed the engine's events in order, with
/// the time (Unix milliseconds) passed in.
///
/// - [`Notifier::take`] takes an event in: a security event is told at once, a setting change
///   waits for the end of its burst, and what this device did itself is dropped.
/// - [`Notifier::release`] tells a burst once no change came for [`SETTLE_MS`]
///   ([`Notifier::due_at`] says when).
/// - [`Notifier::set_locked`] holds changes while the app is locked, and sums them up at unlock.
#[derive(Debug, Default)]
pub struct Notifier {
    locked: bool,
    /// The burst being gathered, oldest first.
    burst: Vec<Waiting>,
    /// When the newest change of the burst came.
    last_at_ms: i64,
    /// When the waiting burst began.
    first_at_ms: i64,
    /// The settings changed while locked: their keys, nothing else.
    held: BTreeSet<String>,
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier::default()
    }

    /// Takes in `event`, an event of the device `this_device` (its id), at `now_ms`. Returns the
    /// notes to show now: a security event's, and a burst that was due before this event.
    pub fn take(&mut self, event: &EngineEvent, this_device: &str, now_ms: i64) -> Vec<Note> {
        let mut notes = self.release(now_ms);
        let waiting = match event {
            EngineEvent::RemoteChange {
                key,
                new,
                device_id,
                device_name,
                arrival,
                ..
            } => {
                if device_id.as_deref() == Some(this_device) {
                    return notes;
                }
                Waiting {
                    waited: Waited::Changed(*arrival),
                    key: key.clone(),
                    device_name: device_name.clone(),
                    note: change_note(key, new.as_ref(), device_name),
                }
            }
            EngineEvent::Superseded { key, lost, winner } => {
                if winner.device_id == this_device {
                    return notes;
                }
                Waiting {
                    waited: Waited::Replaced,
                    key: key.clone(),
                    device_name: winner.device_name.clone(),
                    note: replaced_note(key, lost, winner),
                }
            }
            EngineEvent::Security(security) => {
                notes.extend(security_note(security, self.locked));
                return notes;
            }
            // This device's own doing (the window shows it), or no news.
            EngineEvent::OwnSecurity(_)
            | EngineEvent::SetAside { .. }
            | EngineEvent::Status(_)
            | EngineEvent::Problem(_) => return notes,
        };
        if self.locked {
            self.held.insert(waiting.key);
        } else {
            if self.burst.is_empty() {
                self.first_at_ms = now_ms;
            }
            self.burst.push(waiting);
            self.last_at_ms = now_ms;
        }
        notes
    }

    /// When the waiting burst is due (Unix milliseconds): [`SETTLE_MS`] after its last change,
    /// and at most [`LONGEST_HOLD_MS`] after its first; `None` when nothing waits.
    pub fn due_at(&self) -> Option<i64> {
        (!self.burst.is_empty())
            .then(|| (self.last_at_ms + SETTLE_MS).min(self.first_at_ms + LONGEST_HOLD_MS))
    }

    /// The notes due at `now_ms`: the burst, once no change came for [`SETTLE_MS`]. A change
    /// alone keeps its own note (so does one setting changed several times: its newest); a
    /// catch-up, or several settings changed together, make one summary. Replaced edits are
    /// summed up apart.
    pub fn release(&mut self, now_ms: i64) -> Vec<Note> {
        match self.due_at() {
            Some(due) if now_ms >= due => {}
            _ => return Vec::new(),
        }
        let burst = std::mem::take(&mut self.burst);
        let (changed, replaced): (Vec<&Waiting>, Vec<&Waiting>) = burst
            .iter()
            .partition(|w| matches!(w.waited, Waited::Changed(_)));
        let mut notes = Vec::new();
        if let Some(newest) = changed.last() {
            let caught_up = changed
                .iter()
                .any(|w| w.waited == Waited::Changed(Arrival::CatchUp));
            notes.push(match (caught_up, distinct_keys(&changed)) {
                (false, 1) => newest.note.clone(),
                (caught_up, count) => Note {
                    topic: Topic::Settings,
                    summary: "Settings changed".into(),
                    body: format!(
                        "{} changed{}{}",
                        settings_count(count),
                        on_devices(&changed),
                        if caught_up {
                            " while you were away"
                        } else {
                            ""
                        }
                    ),
                },
            });
        }
        if let Some(newest) = replaced.last() {
            notes.push(match distinct_keys(&replaced) {
                1 => newest.note.clone(),
                count => Note {
                    topic: Topic::Settings,
                    summary: "Your changes were replaced".into(),
                    body: format!(
                        "{count} of your changes were replaced by newer ones{}",
                        on_devices(&replaced)
                    ),
                },
            });
        }
        notes
    }

    /// Locks or unlocks. While locked, setting changes (the burst waiting too) are only counted;
    /// unlocking returns their summary, without values or devices: `3 settings changed while
    /// Lockstep was locked`.
    pub fn set_locked(&mut self, locked: bool) -> Option<Note> {
        self.locked = locked;
        if locked {
            let burst = std::mem::take(&mut self.burst);
            self.held.extend(burst.into_iter().map(|w| w.key));
            return None;
        }
        let held = std::mem::take(&mut self.held);
        (!held.is_empty()).then(|| Note {
            topic: Topic::Settings,
            summary: "Settings changed".into(),
            body: format!(
                "{} changed while Lockstep was locked",
                settings_count(held.len())
            ),
        })
    }
}

/// How many settings the changes are about.
fn distinct_keys(waiting: &[&Waiting]) -> usize {
    waiting
        .iter()
        .map(|w| w.key.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

/// `1 setting`, `5 settings`.
fn settings_count(count: usize) -> String {
    if count == 1 {
        "1 setting".into()
    } else {
        format!("{count} settings")
    }
}

/// ` on Work laptop and Desk`: the devices that made the changes, as far as they are known.
fn on_devices(waiting: &[&Waiting]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for name in waiting.iter().filter_map(|w| w.device_name.as_deref()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        String::new()
    } else {
        format!(" on {}", settings::spoken_list(&names))
    }
}

fn on(device: &Option<String>) -> String {
    match device {
        Some(name) => format!(" on {name}"),
        None => String::new(),
    }
}

/// `Theme set to Dark on Work laptop`; `API key for github changed on Desk` (a value that
/// cannot be said, or must not be).
fn change_note(key: &str, new: Option<&Value>, device: &Option<String>) -> Note {
    let (label, on) = (label(key), on(device));
    let body = match new {
        // Only a key without a default has no value: a custom setting or an API key removed.
        None => format!("{label} removed{on}"),
        Some(value) => match settings::spoken_value(key, value) {
            Some(said) => format!("{label} set to {said}{on}"),
            None => format!("{label} changed{on}"),
        },
    };
    Note {
        topic: Topic::Settings,
        summary: "Settings changed".into(),
        body,
    }
}

/// `Your theme Dark was replaced by Light from Work laptop`.
fn replaced_note(key: &str, lost: &Value, winner: &SettingRow) -> Note {
    let setting = lowercase_first(&label(key));
    let yours = match settings::spoken_value(key, lost) {
        Some(said) => format!("Your {setting} {said}"),
        None => format!("Your change to {setting}"),
    };
    let theirs = match settings::spoken_value(key, &winner.value) {
        _ if winner.deleted => "a reset".to_owned(),
        Some(said) => said,
        None => "a newer change".to_owned(),
    };
    let from = match &winner.device_name {
        Some(name) => format!(" from {name}"),
        None => String::new(),
    };
    Note {
        topic: Topic::Settings,
        summary: "Your change was replaced".into(),
        body: format!("{yours} was replaced by {theirs}{from}"),
    }
}

/// `Theme` → `theme`, in the middle of a sentence; `API key for github` stays.
fn lowercase_first(label: &str) -> String {
    let mut chars = label.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if !second.is_uppercase() => {
            first.to_lowercase().chain(label.chars().skip(1)).collect()
        }
        _ => label.to_owned(),
    }
}

/// The note of a security event, if it deserves one. While `locked`, email addresses are left
/// out.
fn security_note(security: &SecurityEvent, locked: bool) -> Option<Note> {
    let (summary, body) = match security {
        SecurityEvent::EmailVerified { .. } if locked => (
            "Email verified",
            "The account's email address is confirmed".into(),
        ),
        SecurityEvent::EmailVerified { email } => {
            ("Email verified", format!("{email} is confirmed"))
        }
        SecurityEvent::EmailChanged { .. } if locked => (
            "Email changed",
            "The account's email address changed".into(),
        ),
        SecurityEvent::EmailChanged { email } => (
            "Email changed",
            format!("The account's email is now {email}"),
        ),
        SecurityEvent::MfaEnabled { device_name } => (
            "Two-factor authentication on",
            // "from Work laptop": "Turned on on Work laptop" read badly.
            match device_name {
                Some(name) => format!("Turned on from {name}"),
                None => "Turned on for your account".into(),
            },
        ),
        SecurityEvent::MfaDisabled { device_name } => (
            "Authenticator removed",
            match device_name {
                Some(name) => format!("An authenticator was removed from {name}"),
                None => "An authenticator was removed".into(),
            },
        ),
        SecurityEvent::DeviceSignedIn { name, .. } => ("New device", format!("{name} signed in")),
        SecurityEvent::DeviceRevoked { name, by, .. } => (
            "Device removed",
            format!("{name} was signed out{}", by_whom(by)),
        ),
        SecurityEvent::StepUpRequired => (
            "Code needed",
            "Two-factor authentication is on: enter a code to keep syncing".into(),
        ),
        SecurityEvent::SignedOut { by } => (
            "Signed out",
            format!("This device was signed out{}", by_whom(by)),
        ),
        SecurityEvent::Mfa { .. } | SecurityEvent::SessionEndedHere { .. } => return None,
    };
    Some(Note {
        topic: Topic::Security,
        summary: summary.into(),
        body,
    })
}

fn by_whom(by: &Option<String>) -> String {
    match by {
        Some(name) => format!(" by {name}"),
        None => String::new(),
    }
}

/// The app's [`Notifier`], and what shows its notes: the shell's observer (it sees every event
/// at once, locked or not, and is told when the lock changes); clones share it.
#[derive(Debug, Clone, Default)]
pub struct Notifications {
    running: Arc<Mutex<Running>>,
}

#[derive(Debug, Default)]
struct Running {
    notifier: Notifier,
    /// Whether a task waits to release the burst.
    timer: bool,
}

impl Notifications {
    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in an event of `engine` (called in the order the events come; never waits) and
    /// shows what is due.
    pub fn take(&self, engine: &Arc<Engine>, event: &EngineEvent) {
        let now = lockstep_core::clock_ms();
        let (notes, start_timer) = {
            let mut running = self.running();
            let notes = running
                .notifier
                .take(event, &engine.profile().device.id, now);
            let start_timer = !running.timer && running.notifier.due_at().is_some();
            running.timer |= start_timer;
            (notes, start_timer)
        };
        show_allowed(engine, notes);
        if start_timer {
            tauri::async_runtime::spawn(self.clone().release_when_due(engine.clone()));
        }
    }

    /// Locks or unlocks the notifications: call it whenever the app lock changes. While locked,
    /// setting changes are held (counted, not shown) and security events show without email
    /// addresses; unlocking shows one summary of the held changes, without values
    /// (`3 settings changed while Lockstep was locked`), if the notification settings of
    /// `engine` (the open profile's) allow it.
    ///
    /// The shell passes every event to [`Notifications::take`], locked or not: the notifier
    /// holds what it must itself.
    pub fn set_locked(&self, engine: Option<&Arc<Engine>>, locked: bool) {
        let note = self.running().notifier.set_locked(locked);
        if let (Some(engine), Some(note)) = (engine, note) {
            show_allowed(engine, vec![note]);
        }
    }

    /// Releases the burst when it is due, and the next one, until nothing waits.
    async fn release_when_due(self, engine: Arc<Engine>) {
        loop {
            let now = lockstep_core::clock_ms();
            let (notes, due_at) = {
                let mut running = self.running();
                let notes = running.notifier.release(now);
                let due_at = running.notifier.due_at();
                running.timer = due_at.is_some();
                (notes, due_at)
            };
            show_allowed(&engine, notes);
            let Some(due_at) = due_at else { return };
            // A clock set back waits no longer than a burst may last.
            let wait = (due_at - now).clamp(1, SETTLE_MS);
            tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
        }
    }
}

/// Shows the notes the notification settings of `engine` allow. Reading them waits for the
/// profile's store thread: done on a blocking thread.
fn show_allowed(engine: &Arc<Engine>, notes: Vec<Note>) {
    if notes.is_empty() {
        return;
    }
    let engine = engine.clone();
    tauri::async_runtime::spawn_blocking(move || {
        let prefs = Preferences::read(|key| engine.value(key));
        for note in notes.into_iter().filter(|note| prefs.allow(note)) {
            show(&note);
        }
    });
}

impl crate::shell::Observer for Notifications {
    fn event(&self, engine: &Arc<Engine>, event: &EngineEvent) {
        self.take(engine, event);
    }

    fn locked(&self, engine: Option<&Arc<Engine>>, locked: bool) {
        self.set_locked(engine, locked);
    }
}

/// Shows `note` on the desktop (blocks); a failure is logged.
fn show(note: &Note) {
    let shown = notify_rust::Notification::new()
        .appname("Lockstep")
        .summary(&note.summary)
        .body(&note.body)
        .show();
    if let Err(error) = shown {
        tracing::warn!(%error, "could not show a desktop notification");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::engine::{Connection, SyncStatus};
    use serde_json::json;

    const ALL_ON: Preferences = Preferences {
        desktop: true,
        remote_changes: true,
        security_events: true,
    };
    /// This device's id.
    const HERE: &str = "d-here";

    fn change(key: &str, new: Value, device: Option<&str>, arrival: Arrival) -> EngineEvent {
        EngineEvent::RemoteChange {
            key: key.into(),
            old: None,
            new: Some(new),
            device_id: device.map(|name| format!("id of {name}")),
            device_name: device.map(str::to_owned),
            arrival,
        }
    }

    fn theme_change() -> EngineEvent {
        change(
            "appearance.theme",
            json!("dark"),
            Some("Work laptop"),
            Arrival::Live,
        )
    }

    /// Feeds `events` in at `at` and returns the bodies of every note shown until all is
    /// released.
    fn told(notifier: &mut Notifier, events: &[EngineEvent], at: i64) -> Vec<String> {
        let mut notes = Vec::new();
        for event in events {
            notes.extend(notifier.take(event, HERE, at));
        }
        notes.extend(notifier.release(at + SETTLE_MS));
        notes.into_iter().map(|note| note.body).collect()
    }

    fn told_alone(event: EngineEvent) -> Vec<String> {
        told(&mut Notifier::new(), &[event], 0)
    }

    fn row(key: &str, value: Value, device_id: &str, device_name: Option<&str>) -> SettingRow {
        SettingRow {
            key: key.into(),
            value,
            hlc: lockstep_protocol::hlc::Hlc::new(1_765_000_000_000, 0),
            device_id: device_id.into(),
            device_name: device_name.map(str::to_owned),
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
            deleted: false,
        }
    }

    #[test]
    fn a_remote_change_names_the_setting_the_value_and_the_device() {
        assert_eq!(
            told_alone(theme_change()),
            ["Theme set to Dark on Work laptop"]
        );
        assert_eq!(
            told_alone(change(
                "security.lock_after_minutes",
                json!(0),
                None,
                Arrival::Live
            )),
            ["Lock after inactivity set to never"]
        );
        assert_eq!(
            told_alone(change(
                "notifications.desktop",
                json!(false),
                Some("Desk"),
                Arrival::Live
            )),
            ["Desktop notifications set to off on Desk"]
        );
    }

    #[test]
    fn a_dashboard_layout_reads_as_a_list_of_widgets_never_as_json() {
        let layout = json!([
            {"widget": "devices", "visible": true},
            {"widget": "security", "visible": true},
            {"widget": "activity", "visible": true},
            {"widget": "settings", "visible": false},
        ]);
        assert_eq!(
            told_alone(change(
                "dashboard.layout",
                layout,
                Some("Desk"),
                Arrival::Live
            )),
            [
                "Dashboard layout set to Devices, Security and Activity shown; Settings hidden on Desk"
            ]
        );
        // A custom list or object is not read out at all.
        let custom = told_alone(change(
            "custom.panels",
            json!([{"a": 1}]),
            Some("Desk"),
            Arrival::Live,
        ));
        assert_eq!(custom, ["custom.panels changed on Desk"]);
    }

    #[test]
    fn two_factor_changes_name_the_device_they_came_from() {
        let mut notifier = Notifier::new();
        let on = EngineEvent::Security(SecurityEvent::MfaEnabled {
            device_name: Some("Device 1".into()),
        });
        let notes = notifier.take(&on, HERE, 0);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].body, "Turned on from Device 1");
    }

    #[test]
    fn a_steady_trickle_of_changes_is_told_at_least_every_ten_seconds() {
        let mut notifier = Notifier::new();
        let mut told = Vec::new();
        // A change every half second for 25 s: the burst never settles.
        for i in 0..50 {
            let at = i * 500;
            told.extend(notifier.release(at).into_iter().map(|_| at));
            let change = change(
                &format!("custom.k{i}"),
                json!(i),
                Some("Work laptop"),
                Arrival::Live,
            );
            assert_eq!(notifier.take(&change, HERE, at), []);
        }
        assert_eq!(told, [LONGEST_HOLD_MS, 2 * LONGEST_HOLD_MS]);
    }

    #[test]
    fn api_keys_are_never_spelled_out() {
        let key = change(
            "integrations.github",
            json!("••••••"),
            Some("Desk"),
            Arrival::Live,
        );
        assert_eq!(told_alone(key), ["API key for github changed on Desk"]);
    }

    #[test]
    fn a_catch_up_from_one_device_is_one_summary() {
        let mut notifier = Notifier::new();
        let caught_up: Vec<EngineEvent> = (0..5)
            .map(|i| {
                change(
                    &format!("custom.k{i}"),
                    json!(i),
                    Some("Work laptop"),
                    Arrival::CatchUp,
                )
            })
            .collect();
        // Nothing shows while the catch-up comes in.
        for event in &caught_up {
            assert_eq!(notifier.take(event, HERE, 10), []);
        }
        assert_eq!(notifier.due_at(), Some(10 + SETTLE_MS));
        assert_eq!(notifier.release(10 + SETTLE_MS - 1), []);
        let notes = notifier.release(10 + SETTLE_MS);
        assert_eq!(
            notes,
            [Note {
                topic: Topic::Settings,
                summary: "Settings changed".into(),
                body: "5 settings changed on Work laptop while you were away".into(),
            }]
        );
        assert_eq!(notifier.due_at(), None, "told once");
        // A single change caught up is a catch-up too.
        let one = change("appearance.theme", json!("dark"), None, Arrival::CatchUp);
        assert_eq!(told_alone(one), ["1 setting changed while you were away"]);
    }

    #[test]
    fn a_catch_up_from_two_devices_names_both_and_counts_settings_once() {
        let events = [
            change("custom.a", json!(1), Some("Work laptop"), Arrival::CatchUp),
            change("custom.b", json!(1), Some("Desk"), Arrival::CatchUp),
            change("custom.a", json!(2), Some("Desk"), Arrival::CatchUp),
            change("custom.c", json!(1), None, Arrival::CatchUp),
        ];
        assert_eq!(
            told(&mut Notifier::new(), &events, 0),
            ["3 settings changed on Work laptop and Desk while you were away"]
        );
        let unknown = [
            change("custom.a", json!(1), None, Arrival::CatchUp),
            change("custom.b", json!(1), None, Arrival::CatchUp),
        ];
        assert_eq!(
            told(&mut Notifier::new(), &unknown, 0),
            ["2 settings changed while you were away"]
        );
    }

    #[test]
    fn live_changes_one_by_one_are_told_one_by_one_and_a_burst_as_one() {
        let mut notifier = Notifier::new();
        let first = notifier.take(&theme_change(), HERE, 0);
        assert_eq!(first, [], "waits for the burst to end");
        // The next change comes after the first was released: each has its own note.
        let second = change(
            "notifications.desktop",
            json!(true),
            Some("Desk"),
            Arrival::Live,
        );
        let notes = notifier.take(&second, HERE, 5 * SETTLE_MS);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].body, "Theme set to Dark on Work laptop");
        let notes = notifier.release(6 * SETTLE_MS);
        assert_eq!(notes[0].body, "Desktop notifications set to on on Desk");

        // A streamed batch arrives together: one summary.
        let batch: Vec<EngineEvent> = (0..500)
            .map(|i| {
                change(
                    &format!("custom.n{i}"),
                    json!(i),
                    Some("Desk"),
                    Arrival::Live,
                )
            })
            .collect();
        assert_eq!(
            told(&mut notifier, &batch, 10 * SETTLE_MS),
            ["500 settings changed on Desk"]
        );
        // One setting changed twice at once: its newest value.
        let twice = [
            theme_change(),
            change(
                "appearance.theme",
                json!("light"),
                Some("Work laptop"),
                Arrival::Live,
            ),
        ];
        assert_eq!(
            told(&mut notifier, &twice, 20 * SETTLE_MS),
            ["Theme set to Light on Work laptop"]
        );
    }

    #[test]
    fn what_this_device_did_itself_is_never_told() {
        let mut notifier = Notifier::new();
        let own_edit = EngineEvent::RemoteChange {
            key: "appearance.theme".into(),
            old: Some(json!("system")),
            new: Some(json!("drak")),
            device_id: Some(HERE.into()),
            device_name: Some("This laptop".into()),
            arrival: Arrival::Live,
        };
        let replaced_by_own = EngineEvent::Superseded {
            key: "appearance.theme".into(),
            lost: json!("dark"),
            winner: row(
                "appearance.theme",
                json!("light"),
                HERE,
                Some("This laptop"),
            ),
        };
        let set_aside = EngineEvent::SetAside {
            key: "custom.x".into(),
            reason: "too large".into(),
        };
        let own_security = [
            SecurityEvent::MfaEnabled {
                device_name: Some("This laptop".into()),
            },
            SecurityEvent::DeviceRevoked {
                device_id: "d-old".into(),
                name: "Old phone".into(),
                by: Some("This laptop".into()),
            },
        ]
        .map(EngineEvent::OwnSecurity);
        let mut events = vec![own_edit, replaced_by_own, set_aside];
        events.extend(own_security);
        assert_eq!(told(&mut notifier, &events, 0), Vec::<String>::new());
        assert_eq!(notifier.due_at(), None);
    }

    #[test]
    fn a_replaced_edit_names_the_value_that_lost() {
        let superseded = EngineEvent::Superseded {
            key: "appearance.theme".into(),
            lost: json!("dark"),
            winner: row(
                "appearance.theme",
                json!("light"),
                "d-2",
                Some("Work laptop"),
            ),
        };
        let notes = {
            let mut notifier = Notifier::new();
            notifier.take(&superseded, HERE, 0);
            notifier.release(SETTLE_MS)
        };
        assert_eq!(
            notes,
            [Note {
                topic: Topic::Settings,
                summary: "Your change was replaced".into(),
                body: "Your theme Dark was replaced by Light from Work laptop".into(),
            }]
        );
        let secret = EngineEvent::Superseded {
            key: "integrations.github".into(),
            lost: json!("••••••"),
            winner: row("integrations.github", json!("••••••"), "d-2", None),
        };
        assert_eq!(
            told_alone(secret),
            ["Your change to API key for github was replaced by a newer change"]
        );
        let several = [
            superseded,
            EngineEvent::Superseded {
                key: "security.lock_after_minutes".into(),
                lost: json!(5),
                winner: row(
                    "security.lock_after_minutes",
                    json!(15),
                    "d-3",
                    Some("Desk"),
                ),
            },
        ];
        assert_eq!(
            told(&mut Notifier::new(), &several, 0),
            ["2 of your changes were replaced by newer ones on Work laptop and Desk"]
        );
    }

    #[test]
    fn changes_while_locked_are_held_and_summed_up_without_values_at_unlock() {
        let mut notifier = Notifier::new();
        // A change waiting when the app locks is held too.
        notifier.take(&theme_change(), HERE, 0);
        assert_eq!(notifier.set_locked(true), None);
        let later = [
            change(
                "security.lock_after_minutes",
                json!(5),
                Some("Desk"),
                Arrival::Live,
            ),
            change(
                "dashboard.layout",
                json!([]),
                Some("Desk"),
                Arrival::CatchUp,
            ),
            change(
                "appearance.theme",
                json!("light"),
                Some("Desk"),
                Arrival::Live,
            ),
        ];
        assert_eq!(told(&mut notifier, &later, 10), Vec::<String>::new());
        assert_eq!(notifier.release(100 * SETTLE_MS), []);
        let note = notifier.set_locked(false).unwrap();
        assert_eq!(note.body, "3 settings changed while Lockstep was locked");
        assert_eq!(note.topic, Topic::Settings);
        assert_eq!(notifier.set_locked(false), None, "told once");
        // Unlocked, changes are told as they come again.
        assert_eq!(
            told(&mut notifier, &[theme_change()], 200 * SETTLE_MS),
            ["Theme set to Dark on Work laptop"]
        );
    }

    #[test]
    fn security_events_show_while_locked_without_email_addresses() {
        let mut notifier = Notifier::new();
        notifier.set_locked(true);
        let changed = EngineEvent::Security(SecurityEvent::EmailChanged {
            email: "ada@example.com".into(),
        });
        let signed_out = EngineEvent::Security(SecurityEvent::SignedOut {
            by: Some("Desk".into()),
        });
        let notes: Vec<Note> = [changed.clone(), signed_out]
            .iter()
            .flat_map(|event| notifier.take(event, HERE, 0))
            .collect();
        let bodies: Vec<&str> = notes.iter().map(|n| n.body.as_str()).collect();
        assert_eq!(
            bodies,
            [
                "The account's email address changed",
                "This device was signed out by Desk"
            ]
        );
        assert!(notes.iter().all(|n| n.topic == Topic::Security));
        notifier.set_locked(false);
        assert_eq!(
            notifier.take(&changed, HERE, 0)[0].body,
            "The account's email is now ada@example.com"
        );
    }

    #[test]
    fn status_and_problems_are_not_news() {
        let status = EngineEvent::Status(SyncStatus {
            connection: Connection::Shared,
            pending: 0,
            set_aside: 0,
            last_synced_ms: None,
        });
        let problem = EngineEvent::Problem("a repaired file".into());
        let mut notifier = Notifier::new();
        assert_eq!(
            told(&mut notifier, &[status, problem], 0),
            Vec::<String>::new()
        );
        assert_eq!(notifier.due_at(), None);
    }

    #[test]
    fn the_notification_settings_are_respected() {
        let setting = change_note("appearance.theme", Some(&json!("dark")), &None);
        let security = security_note(&SecurityEvent::SignedOut { by: None }, false).unwrap();
        assert!(ALL_ON.allow(&setting) && ALL_ON.allow(&security));
        let quiet = Preferences {
            remote_changes: false,
            ..ALL_ON
        };
        assert!(!quiet.allow(&setting) && quiet.allow(&security));
        let no_security = Preferences {
            security_events: false,
            ..ALL_ON
        };
        assert!(no_security.allow(&setting) && !no_security.allow(&security));
        let off = Preferences {
            desktop: false,
            ..ALL_ON
        };
        assert!(!off.allow(&setting) && !off.allow(&security));
    }

    #[test]
    fn preferences_are_read_from_their_keys() {
        let prefs = Preferences::read(|key| key.name != keys::DESKTOP_NOTIFICATIONS.name);
        assert_eq!(
            prefs,
            Preferences {
                desktop: false,
                ..ALL_ON
            }
        );
    }
}
