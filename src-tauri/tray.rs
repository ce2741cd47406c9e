//! The tray icon: its picture, tooltip and status line show the profile's sync state; its menu
//! opens the window, syncs, pauses or resumes, locks, signs out and quits. What a status looks
//! like is a pure function ([`look`]), tested on its own.
//!
//! Built in code, so a desktop without a tray (or without libayatana-appindicator) is logged
//! and skipped, never a panic. On Linux a tray can build and still show nowhere (no
//! StatusNotifierWatcher on the session bus: GNOME without the AppIndicator extension, a bare
//! X server): [`host_present`] checks, since closing the window must not hide it where nothing
//! could bring it back. On Linux only menu events arrive (no clicks on the icon itself).

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicBool, Ordering},
};

use tauri::{
    AppHandle, Emitter, Manager, Runtime,
    image::Image,
    menu::{Menu, MenuItem, PredefinedMenuItem},
    tray::{TrayIcon, TrayIconBuilder},
};

use lockstep_core::{
    engine::{Connection, SyncStatus},
    report::StatusReport,
};

use crate::{shell::Shell, window};

const TRAY_ID: &str = "lockstep";

/// The state the tray icon's badge shows (icons/tray/, made by icons/tray/make.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Badge {
    /// A green tick: changes elsewhere arrive at once.
    Live,
    /// An amber "…": syncing by polling, or connecting.
    Polling,
    /// A grey cross on a greyed icon: not syncing (offline or signed out).
    Offline,
    /// Two bars: paused by the user.
    Paused,
    /// A red "!": a two-factor code is needed.
    CodeNeeded,
}

impl Badge {
    /// Every badge.
    pub const ALL: [Badge; 5] = [
        Badge::Live,
        Badge::Polling,
        Badge::Offline,
        Badge::Paused,
        Badge::CodeNeeded,
    ];

    /// The badge for a connection state.
    pub fn for_connection(connection: &Connection) -> Badge {
        match connection {
            // Another process of this profile holds the live connection: as good as live.
            Connection::Live | Connection::Shared => Badge::Live,
            Connection::Polling | Connection::Connecting => Badge::Polling,
            Connection::Offline | Connection::SignedOut => Badge::Offline,
            Connection::Paused => Badge::Paused,
            Connection::StepUpRequired => Badge::CodeNeeded,
        }
    }

    /// The icon's PNG (64 × 64).
    pub fn png(self) -> &'static [u8] {
        match self {
            Badge::Live => include_bytes!("../icons/tray/live.png"),
            Badge::Polling => include_bytes!("../icons/tray/polling.png"),
            Badge::Offline => include_bytes!("../icons/tray/offline.png"),
            Badge::Paused => include_bytes!("../icons/tray/paused.png"),
            Badge::CodeNeeded => include_bytes!("../icons/tray/code-needed.png"),
        }
    }

    /// The icon, decoded.
    pub fn image(self) -> tauri::Result<Image<'static>> {
        Image::from_bytes(self.png())
    }
}

/// What the tray shows for a status: the badge, the tooltip (also the menu's status line),
/// and the pause item's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    pub badge: Badge,
    pub tooltip: String,
    pub pause_label: &'static str,
}

/// What the tray shows for `status` of profile `profile`.
pub fn look(profile: &str, status: &StatusReport) -> Look {
    Look {
        badge: Badge::for_connection(&status.connection),
        tooltip: tooltip(profile, status),
        pause_label: if status.connection == Connection::Paused {
            "Resume sync"
        } else {
            "Pause sync"
        },
    }
}

/// What the tray shows before the first status (the profile is not open yet).
pub fn starting_look(profile: &str) -> Look {
    let status = StatusReport::from(&SyncStatus {
        connection: Connection::Connecting,
        pending: 0,
        set_aside: 0,
        last_synced_ms: None,
    });
    Look {
        tooltip: format!("Lockstep ({profile}): starting"),
        ..look(profile, &status)
    }
}

/// The tooltip for a status: `Lockstep (work): Live`, `Lockstep (work): Offline, 3 pending`,
/// `Lockstep (work): Live, 1 not synced: refused`.
pub fn tooltip(profile: &str, status: &StatusReport) -> String {
    let mut text = format!("Lockstep ({profile}): {}", status.label);
    if status.pending > 0 {
        text.push_str(&format!(", {} pending", status.pending));
    }
    if status.set_aside > 0 {
        text.push_str(&format!(", {} not synced: refused", status.set_aside));
    }
    text
}

/// The menu items that change with the status, and what they show now.
struct Items<R: Runtime> {
    status: MenuItem<R>,
    pause: MenuItem<R>,
    shown: Mutex<Look>,
    /// The newest status not shown yet.
    latest: Mutex<Option<StatusReport>>,
    /// A tray host shows the icon (checked once at start): only then is it updated.
    host: AtomicBool,
    /// A blocking task is showing statuses.
    showing: AtomicBool,
}

/// This instance's profile name.
fn profile<R: Runtime>(app: &AppHandle<R>) -> String {
    app.try_state::<Shell>()
        .map_or_else(|| "default".to_owned(), |shell| shell.launch.name.clone())
}

/// Builds the tray; `None` where the desktop has none (logged once: closing the window then
/// quits).
pub fn build<R: Runtime>(app: &AppHandle<R>) -> Option<TrayIcon<R>> {
    match try_build(app) {
        Ok(tray) => Some(tray),
        Err(error) => {
            no_host(&format!("the tray icon could not be made: {error}"));
            None
        }
    }
}

fn try_build<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<TrayIcon<R>> {
    let look = starting_look(&profile(app));
    let status = MenuItem::with_id(app, "status", &look.tooltip, false, None::<&str>)?;
    let pause = MenuItem::with_id(app, "pause", look.pause_label, true, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[
            &MenuItem::with_id(app, "open", "Open Lockstep", true, None::<&str>)?,
            &status,
            &PredefinedMenuItem::separator(app)?,
            &MenuItem::with_id(app, "sync", "Sync now", true, None::<&str>)?,
            &pause,
            &MenuItem::with_id(app, "lock", "Lock now", true, None::<&str>)?,
            &MenuItem::with_id(app, "sign_out", "Sign out", true, None::<&str>)?,
            &PredefinedMenuItem::separator(app)?,
            &MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?,
        ],
    )?;
    let tray = TrayIconBuilder::with_id(TRAY_ID)
        .menu(&menu)
        .icon(look.badge.image()?)
        .tooltip(&look.tooltip)
        .on_menu_event(|app, event| on_menu(app, event.id().as_ref()))
        .build(app)?;
    app.manage(Items {
        status,
        pause,
        shown: Mutex::new(look),
        latest: Mutex::new(None),
        host: AtomicBool::new(false),
        showing: AtomicBool::new(false),
    });
    Ok(tray)
}

/// Whether the tray was built.
pub fn is_built<R: Runtime>(app: &AppHandle<R>) -> bool {
    app.tray_by_id(TRAY_ID).is_some()
}

/// Logs, once per run, that there is no tray host and what that means.
pub fn no_host(why: &str) {
    static TOLD: AtomicBool = AtomicBool::new(false);
    if !TOLD.swap(true, Ordering::SeqCst) {
        tracing::warn!(
            "no tray host ({why}): closing the window quits Lockstep, and sync and \
             notifications stop until it is opened again"
        );
    }
}

/// Whether a tray host shows the (built) tray icon. On Linux: whether a StatusNotifierWatcher
/// owns its name on the session bus (libayatana-appindicator's host); blocking (a D-Bus call),
/// logged once when missing. An XEmbed-only tray counts as none: closing then quits, the safe
/// side.
#[cfg(target_os = "linux")]
pub fn host_present() -> bool {
    const WATCHER: &str = "org.kde.StatusNotifierWatcher";
    let owned = || -> zbus::Result<bool> {
        let bus = zbus::blocking::Connection::session()?;
        let name = zbus::names::BusName::try_from(WATCHER)?;
        Ok(zbus::blocking::fdo::DBusProxy::new(&bus)?.name_has_owner(name)?)
    };
    match owned() {
        Ok(true) => true,
        Ok(false) => {
            no_host(&format!("nothing owns {WATCHER} on the session bus"));
            false
        }
        Err(error) => {
            no_host(&format!("the session bus could not be asked: {error}"));
            false
        }
    }
}

/// Whether a tray host shows the (built) tray icon: Windows and macOS always have one.
#[cfg(not(target_os = "linux"))]
pub fn host_present() -> bool {
    true
}

fn on_menu<R: Runtime>(app: &AppHandle<R>, id: &str) {
    let app = app.clone();
    let id = id.to_owned();
    tauri::async_runtime::spawn(async move {
        let shell = app.state::<Shell>();
        match id.as_str() {
            "open" => window::show_main(&app),
            "sync" => shell.with_live(|live| live.sync_now()).await,
            "pause" => {
                shell
                    .with_live(|live| {
                        if live.is_paused() {
                            live.resume()
                        } else {
                            live.pause()
                        }
                    })
                    .await;
            }
            "lock" => {
                if let Err(error) = shell.lock_now().await {
                    tracing::warn!(%error, "locking from the tray failed");
                }
            }
            // In the window, which confirms and warns about edits not synced yet.
            "sign_out" => {
                window::show_main(&app);
                if let Err(error) = app.emit(crate::SIGN_OUT_ASKED, ()) {
                    tracing::warn!(%error, "could not ask the window to sign out");
                }
            }
            "quit" => app.exit(0),
            _ => {}
        }
    });
}

/// Shows `status` in the tray: its icon, tooltip, status line and pause item. Called with every
/// status, in order, on the event path, so it never waits: the tray is changed on the blocking
/// pool (changing it waits for the main thread, and where no tray host listens the indicator
/// library can hold that thread for D-Bus's 25-second timeout, which would hold back every
/// event behind it), only the newest status is shown, and nothing is changed where no tray host
/// shows the icon.
pub fn show_status<R: Runtime>(app: &AppHandle<R>, status: &StatusReport) {
    let Some(items) = app.try_state::<Items<R>>() else {
        return;
    };
    *items.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(status.clone());
    if items.host.load(Ordering::SeqCst) {
        show_latest(app);
    }
}

/// Records whether a tray host shows the icon (the check at start), and shows the newest
/// status if it does.
pub fn set_host_present<R: Runtime>(app: &AppHandle<R>, present: bool) {
    if let Some(items) = app.try_state::<Items<R>>() {
        items.host.store(present, Ordering::SeqCst);
        if present {
            show_latest(app);
        }
    }
}

/// Shows the newest status on a blocking thread, unless one is at it already.
fn show_latest<R: Runtime>(app: &AppHandle<R>) {
    let Some(items) = app.try_state::<Items<R>>() else {
        return;
    };
    if items.showing.swap(true, Ordering::SeqCst) {
        return;
    }
    let app = app.clone();
    tauri::async_runtime::spawn_blocking(move || {
        let Some(items) = app.try_state::<Items<R>>() else {
            return;
        };
        loop {
            let next = items
                .latest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match next {
                Some(status) => apply(&app, &items, &status),
                None => {
                    items.showing.store(false, Ordering::SeqCst);
                    // A status that came between the take and the store: show it too.
                    let more = items
                        .latest
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_some();
                    if !more || items.showing.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }
    });
}

/// Changes the tray to show `status` (waits for the main thread).
fn apply<R: Runtime>(app: &AppHandle<R>, items: &Items<R>, status: &StatusReport) {
    let Some(tray) = app.tray_by_id(TRAY_ID) else {
        return;
    };
    let new = look(&profile(app), status);
    let mut shown = items.shown.lock().unwrap_or_else(PoisonError::into_inner);
    if new.badge != shown.badge {
        match new.badge.image() {
            Ok(icon) => {
                if let Err(error) = tray.set_icon(Some(icon)) {
                    tracing::warn!(%error, "could not change the tray icon");
                }
            }
            Err(error) => tracing::warn!(%error, "a tray icon does not decode"),
        }
    }
    if new.tooltip != shown.tooltip {
        let _ = tray.set_tooltip(Some(&new.tooltip));
        let _ = items.status.set_text(&new.tooltip);
    }
    if new.pause_label != shown.pause_label {
        let _ = items.pause.set_text(new.pause_label);
    }
    *shown = new;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(connection: Connection, pending: usize, set_aside: usize) -> StatusReport {
        StatusReport::from(&SyncStatus {
            connection,
            pending,
            set_aside,
            last_synced_ms: None,
        })
    }

    #[test]
    fn every_state_has_its_badge() {
        let badge = |connection| look("work", &status(connection, 0, 0)).badge;
        assert_eq!(badge(Connection::Live), Badge::Live);
        assert_eq!(badge(Connection::Shared), Badge::Live);
        assert_eq!(badge(Connection::Polling), Badge::Polling);
        assert_eq!(badge(Connection::Connecting), Badge::Polling);
        assert_eq!(badge(Connection::Offline), Badge::Offline);
        assert_eq!(badge(Connection::SignedOut), Badge::Offline);
        assert_eq!(badge(Connection::Paused), Badge::Paused);
        assert_eq!(badge(Connection::StepUpRequired), Badge::CodeNeeded);
        assert_eq!(starting_look("work").badge, Badge::Polling);
    }

    #[test]
    fn the_badges_are_distinct_icons_that_decode() {
        for (i, badge) in Badge::ALL.into_iter().enumerate() {
            let image = badge.image().unwrap_or_else(|e| panic!("{badge:?}: {e}"));
            assert_eq!((image.width(), image.height()), (64, 64), "{badge:?}");
            for other in &Badge::ALL[i + 1..] {
                assert_ne!(badge.png(), other.png(), "{badge:?} and {other:?}");
            }
        }
    }

    #[test]
    fn the_tooltip_names_the_profile_the_state_and_what_is_pending() {
        assert_eq!(
            tooltip("work", &status(Connection::Live, 0, 0)),
            "Lockstep (work): Live"
        );
        assert_eq!(
            tooltip("work", &status(Connection::Live, 3, 0)),
            "Lockstep (work): Live, 3 pending"
        );
        assert_eq!(
            tooltip("home", &status(Connection::StepUpRequired, 0, 0)),
            "Lockstep (home): Code needed"
        );
        assert_eq!(
            tooltip("work", &status(Connection::Offline, 3, 1)),
            "Lockstep (work): Offline, 3 pending, 1 not synced: refused"
        );
        let look = look("work", &status(Connection::Polling, 2, 0));
        assert_eq!(look.tooltip, "Lockstep (work): Polling, 2 pending");
        assert_eq!(starting_look("work").tooltip, "Lockstep (work): starting");
    }

    #[test]
    fn the_pause_item_says_what_it_will_do() {
        let label = |connection| look("work", &status(connection, 0, 0)).pause_label;
        assert_eq!(label(Connection::Paused), "Resume sync");
        for connection in [
            Connection::Live,
            Connection::Polling,
            Connection::Offline,
            Connection::Shared,
            Connection::Connecting,
            Connection::StepUpRequired,
            Connection::SignedOut,
        ] {
            assert_eq!(label(connection.clone()), "Pause sync", "{connection:?}");
        }
    }
}
