//! The tray icon: its tooltip shows the sync state; its menu opens the window, syncs, pauses,
//! signs out and quits. Built in code, so a desktop without a tray host (or without
//! libayatana-appindicator) is logged and skipped, never a panic. On Linux only menu events
//! arrive (no clicks on the icon itself).

use tauri::{
    AppHandle, Manager, Runtime,
    menu::{Menu, MenuItem, PredefinedMenuItem},
    tray::{TrayIcon, TrayIconBuilder},
};

use lockstep_core::report::StatusReport;

use crate::shell::Shell;

const TRAY_ID: &str = "lockstep";

/// The tooltip for a status: `Lockstep: Live`, `Lockstep: Offline (3 pending)`,
/// `Lockstep: Live (1 not synced: refused)`.
pub fn tooltip(status: &StatusReport) -> String {
    let mut notes = Vec::new();
    if status.pending > 0 {
        notes.push(format!("{} pending", status.pending));
    }
    if status.set_aside > 0 {
        notes.push(format!("{} not synced: refused", status.set_aside));
    }
    if notes.is_empty() {
        format!("Lockstep: {}", status.label)
    } else {
        format!("Lockstep: {} ({})", status.label, notes.join(", "))
    }
}

/// Builds the tray; `None` (logged) where the desktop has no tray.
pub fn build<R: Runtime>(app: &AppHandle<R>) -> Option<TrayIcon<R>> {
    match try_build(app) {
        Ok(tray) => Some(tray),
        Err(error) => {
            tracing::warn!(%error, "no tray icon (the desktop may have no tray host)");
            None
        }
    }
}

fn try_build<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<TrayIcon<R>> {
    let status = MenuItem::with_id(app, "status", "Lockstep: starting", false, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[
            &MenuItem::with_id(app, "open", "Open Lockstep", true, None::<&str>)?,
            &status,
            &PredefinedMenuItem::separator(app)?,
            &MenuItem::with_id(app, "sync", "Sync now", true, None::<&str>)?,
            &MenuItem::with_id(app, "pause", "Pause or resume sync", true, None::<&str>)?,
            &MenuItem::with_id(app, "sign_out", "Sign out", true, None::<&str>)?,
            &PredefinedMenuItem::separator(app)?,
            &MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?,
        ],
    )?;
    let mut builder = TrayIconBuilder::with_id(TRAY_ID)
        .menu(&menu)
        .tooltip("Lockstep")
        .on_menu_event(|app, event| on_menu(app, event.id().as_ref()));
    if let Some(icon) = app.default_window_icon() {
        builder = builder.icon(icon.clone());
    }
    let tray = builder.build(app)?;
    app.manage(StatusItem(status));
    Ok(tray)
}

/// The disabled menu item that shows the status line.
struct StatusItem<R: Runtime>(MenuItem<R>);

fn on_menu<R: Runtime>(app: &AppHandle<R>, id: &str) {
    let app = app.clone();
    let id = id.to_owned();
    tauri::async_runtime::spawn(async move {
        let shell = app.state::<Shell>();
        match id.as_str() {
            "open" => {
                if let Some(window) = app.get_webview_window("main") {
                    let _ = window.show();
                    let _ = window.unminimize();
                    let _ = window.set_focus();
                }
            }
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
            "sign_out" => {
                if let Ok(engine) = shell.engine().await
                    && let Err(error) = engine
                        .sign_out(lockstep_core::account::SignOutScope::ThisDevice)
                        .await
                {
                    tracing::warn!(%error, "sign-out from the tray failed");
                }
            }
            "quit" => app.exit(0),
            _ => {}
        }
    });
}

/// Shows `status` in the tray's tooltip and status line.
pub fn show_status<R: Runtime>(app: &AppHandle<R>, status: &StatusReport) {
    let text = tooltip(status);
    if let Some(tray) = app.tray_by_id(TRAY_ID) {
        let _ = tray.set_tooltip(Some(&text));
    }
    if let Some(item) = app.try_state::<StatusItem<R>>() {
        let _ = item.0.set_text(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tooltip_says_the_state_and_what_is_pending() {
        use lockstep_core::engine::{Connection, SyncStatus};
        let status = |connection, pending, set_aside| {
            StatusReport::from(&SyncStatus {
                connection,
                pending,
                set_aside,
                last_synced_ms: None,
            })
        };
        assert_eq!(tooltip(&status(Connection::Live, 0, 0)), "Lockstep: Live");
        assert_eq!(
            tooltip(&status(Connection::Shared, 0, 0)),
            "Lockstep: Shared"
        );
        assert_eq!(
            tooltip(&status(Connection::StepUpRequired, 0, 0)),
            "Lockstep: Code needed"
        );
        let mut status = status(Connection::Offline, 0, 0);
        status.pending = 3;
        assert_eq!(tooltip(&status), "Lockstep: Offline (3 pending)");
        status.set_aside = 1;
        assert_eq!(
            tooltip(&status),
            "Lockstep: Offline (3 pending, 1 not synced: refused)"
        );
    }
}
