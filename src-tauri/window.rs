//! The main window's life: one per profile, its size and position kept across launches, and
//! what closing it does (hide to the tray, or quit).
//!
//! **One instance per profile.** A second launch of a profile shows and focuses the first
//! instance's window and exits with status 0; another profile starts its own instance. On Linux
//! this is `tauri-plugin-single-instance`, which takes a well-known name on the D-Bus session
//! bus: by default the app's identifier, but its `dbus_id` can be set, so we give it one per
//! profile ([`instance_id`]: the identifier and a hash of the profile's directory). On Windows
//! (a named mutex) and macOS (a socket under /tmp) the plugin always keys on the identifier alone,
//! which would let only one profile run at a time, so it is not used there: a second launch of
//! a profile there opens a second window, which follows the first's connection (the `Shared`
//! state), as `lockstep watch` alongside the app does. Without a session bus the plugin logs it
//! and the app starts normally (same fallback).
//!
//! **Size and position** (and whether maximised) are restored by `tauri-plugin-window-state`,
//! from `window-state.json` in the profile's directory ([`state_file`]), so each profile keeps
//! its own and a test's throwaway `LOCKSTEP_HOME` never sees another's. The plugin restores
//! when the window is created and saves when the app exits (a profile that was never connected
//! has no directory yet, so nothing is saved for it).
//!
//! **Closing the window** hides it while a tray host shows the icon and
//! `desktop.close_to_tray` is on (its default), so sync and notifications go on; otherwise it
//! quits ([`close_action`]).

use std::path::{Path, PathBuf};

use lockstep_core::{profile, typed::keys};
use tauri::{AppHandle, Manager, Runtime, WebviewWindow};

use crate::{shell::Launch, tray};

/// The main window's label (tauri.conf.json).
pub const MAIN: &str = "main";

/// The name of the window-state file in a profile's directory.
pub const STATE_FILE: &str = "window-state.json";

/// What closing the main window does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Hide it: the app goes on in the tray (sync, notifications), and the tray's "Open"
    /// or another launch of the profile shows it again.
    Hide,
    /// Quit the app.
    Quit,
}

/// What closing the window does: hide it only where a tray host shows our icon (or the window
/// could never be found again) and the user wants it (`desktop.close_to_tray`).
pub fn close_action(tray_host: bool, close_to_tray: bool) -> CloseAction {
    if tray_host && close_to_tray {
        CloseAction::Hide
    } else {
        CloseAction::Quit
    }
}

/// `desktop.close_to_tray` before the profile is connected: the schema's default.
pub fn default_close_to_tray() -> bool {
    lockstep_protocol::settings::defaults()
        .get(keys::CLOSE_TO_TRAY.name)
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true)
}

/// The D-Bus id of the profile's instance (the single-instance plugin adds `.SingleInstance`):
/// `<identifier>.profile_<16 hex digits>`, the digits an FNV-1a hash of the profile directory's
/// absolute path (stable across builds and Rust versions, unlike `std`'s hasher; valid in a bus
/// name and an object path, whatever the path holds).
pub fn instance_id(identifier: &str, profile_dir: &Path) -> String {
    let path = std::path::absolute(profile_dir).unwrap_or_else(|_| profile_dir.to_owned());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{identifier}.profile_{hash:016x}")
}

/// The profile's directory, if its name is valid.
fn profile_dir(launch: &Launch) -> Option<PathBuf> {
    profile::validate_name(&launch.name).ok()?;
    let dir = profile::profile_dir(&launch.base_dir(), &launch.name);
    Some(std::path::absolute(&dir).unwrap_or(dir))
}

/// Where the window's size and position are kept for this launch's profile (an absolute path:
/// the plugin joins it to the app's config directory, which an absolute path replaces). `None`
/// for an invalid profile name (the app cannot open it either) or a path that is not UTF-8
/// (the plugin takes a `String`).
pub fn state_file(launch: &Launch) -> Option<String> {
    Some(profile_dir(launch)?.join(STATE_FILE).to_str()?.to_owned())
}

/// What of the window is kept: size, position and maximised (not visibility, which closing to
/// the tray changes, nor decorations or full screen).
fn geometry() -> tauri_plugin_window_state::StateFlags {
    use tauri_plugin_window_state::StateFlags;
    StateFlags::SIZE | StateFlags::POSITION | StateFlags::MAXIMIZED
}

/// The window-state plugin for this launch's profile: size, position and maximised (not
/// visibility, which closing to the tray changes, nor decorations or full screen).
pub fn state_plugin<R: Runtime>(launch: &Launch) -> Option<tauri::plugin::TauriPlugin<R>> {
    use tauri_plugin_window_state::Builder;
    let file = state_file(launch)?;
    Some(
        Builder::new()
            .with_filename(file)
            .with_state_flags(geometry())
            .build(),
    )
}

/// The single-instance plugin, keyed on this launch's profile (see the module's docs). Register
/// it before the other plugins: a second instance exits in its setup.
#[cfg(target_os = "linux")]
pub fn single_instance_plugin<R: Runtime>(
    launch: &Launch,
    identifier: &str,
) -> Option<tauri::plugin::TauriPlugin<R>> {
    let dir = profile_dir(launch)?;
    let profile = launch.name.clone();
    Some(
        tauri_plugin_single_instance::Builder::new()
            .dbus_id(instance_id(identifier, &dir))
            .callback(move |app, _args, _cwd| {
                tracing::info!(%profile, "another launch of this profile: showing its window");
                show_main(app);
            })
            .build(),
    )
}

/// Shows, unminimises and focuses the main window.
pub fn show_main<R: Runtime>(app: &AppHandle<R>) {
    if let Some(window) = app.get_webview_window(MAIN) {
        let _ = window.show();
        let _ = window.unminimize();
        let _ = window.set_focus();
    }
}

/// For `Builder::on_window_event`: closing the main window hides it or quits (see
/// [`close_action`]). Without a tray (logged once at start) the close goes ahead; with one the
/// close is held while the setting and the tray host are read, off the event loop.
pub fn on_event<R: Runtime>(window: &tauri::Window<R>, event: &tauri::WindowEvent) {
    if matches!(
        event,
        tauri::WindowEvent::Moved(_) | tauri::WindowEvent::Resized(_)
    ) && window.label() == MAIN
    {
        save_geometry_soon(window.app_handle());
        return;
    }
    let tauri::WindowEvent::CloseRequested { api, .. } = event else {
        return;
    };
    if window.label() != MAIN || !tray::is_built(window.app_handle()) {
        return;
    }
    api.prevent_close();
    let Some(window) = window.app_handle().get_webview_window(MAIN) else {
        return;
    };
    tauri::async_runtime::spawn(close_or_hide(window));
}

/// Writes the window's size and position half a second after it last moved or changed size.
/// The window-state plugin writes them only when the app exits normally; a crash, a kill or a
/// session ending would otherwise lose where the user put the window.
fn save_geometry_soon<R: Runtime>(app: &tauri::AppHandle<R>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MOVES: AtomicU64 = AtomicU64::new(0);
    let this = MOVES.fetch_add(1, Ordering::SeqCst) + 1;
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if MOVES.load(Ordering::SeqCst) != this {
            return;
        }
        tauri::async_runtime::spawn_blocking(move || {
            use tauri_plugin_window_state::AppHandleExt as _;
            if let Err(error) = app.save_window_state(geometry()) {
                tracing::debug!(%error, "could not save where the window is");
            }
        });
    });
}

async fn close_or_hide<R: Runtime>(window: WebviewWindow<R>) {
    let app = window.app_handle().clone();
    // A locked app still honours the setting: it is no secret.
    let engine = match app.try_state::<crate::shell::Shell>() {
        Some(shell) => shell.engine_while_locked().await.ok(),
        None => None,
    };
    // The engine waits on the profile's store thread, and the tray host check on D-Bus.
    let decided = tauri::async_runtime::spawn_blocking(move || {
        let close_to_tray = engine.map_or_else(default_close_to_tray, |engine| {
            engine.value(keys::CLOSE_TO_TRAY)
        });
        close_action(tray::host_present(), close_to_tray)
    })
    .await;
    match decided.unwrap_or(CloseAction::Quit) {
        CloseAction::Hide => {
            if let Err(error) = window.hide() {
                tracing::warn!(%error, "could not hide the window; quitting");
                app.exit(0);
            }
        }
        CloseAction::Quit => app.exit(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_hides_only_with_a_tray_host_and_the_setting_on() {
        assert_eq!(close_action(true, true), CloseAction::Hide);
        assert_eq!(close_action(true, false), CloseAction::Quit);
        assert_eq!(close_action(false, true), CloseAction::Quit);
        assert_eq!(close_action(false, false), CloseAction::Quit);
        assert!(default_close_to_tray(), "on by default");
    }

    #[test]
    fn each_profile_has_its_own_instance_name_and_window_state() {
        let launch = |home: &str, name: &str| Launch {
            name: name.into(),
            home: Some(home.into()),
            ..Launch::default()
        };
        let id = |l: &Launch| instance_id("app.lockstep.desktop", &profile_dir(l).unwrap());
        let work = launch("/home/ada/lockstep", "work");
        assert_eq!(id(&work), id(&launch("/home/ada/lockstep", "work")));
        assert_ne!(id(&work), id(&launch("/home/ada/lockstep", "home")));
        assert_ne!(id(&work), id(&launch("/tmp/other-home", "work")));
        // A valid D-Bus name and object path once the plugin adds `.SingleInstance`.
        let name = format!("{}.SingleInstance", id(&work));
        assert!(name.len() <= 255);
        for element in name.split('.') {
            assert!(!element.is_empty() && !element.starts_with(|c: char| c.is_ascii_digit()));
            assert!(
                element
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
        }

        #[cfg(unix)]
        assert_eq!(
            state_file(&work).as_deref(),
            Some("/home/ada/lockstep/profiles/work/window-state.json")
        );
        assert_eq!(state_file(&launch("/x", "../escape")), None);
    }
}
