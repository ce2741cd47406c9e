//! The IPC commands: one per lockstep-core operation, each a few lines that turn arguments
//! into a core call and its answer into a DTO. They take only `State<Shell>`, so they run
//! under any Tauri runtime (the mock one in tests).
//!
//! The engine's synchronous calls wait for the profile's store thread (a write commits to
//! SQLite with an fsync; a read queues behind it), so commands make them through
//! `blocking`, on tokio's blocking pool: no async worker waits on the disk.

use lockstep_core::{
    account::{SignIn, SignOutScope},
    api::{ServerCheckError, check_server},
    engine::{Engine, EngineError},
    profile::OpenOptions,
    report::StatusReport,
    store::{HistoryEntry, HistoryOrigin},
};
use lockstep_protocol::{
    settings,
    timestamp::{rfc3339, rfc3339_millis},
};
use serde_json::Value;
use tauri::State;

use crate::{
    dto::{
        AccountDto, ActivityDto, DeviceDto, EnrollmentDto, ErrorCode, ErrorDto, HistoryDto,
        LaunchDto, LockScreenDto, SetAsideDto, SettingDto, SignInDto, UnlockDto,
    },
    shell::Shell,
};

type Answer<T> = Result<T, ErrorDto>;

/// Runs `call` on the profile's engine on tokio's blocking pool: for the engine's synchronous
/// methods, which wait for the profile's store thread.
async fn blocking<T: Send + 'static>(
    shell: &Shell,
    call: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
) -> Answer<T> {
    let engine = shell.engine().await?;
    tauri::async_runtime::spawn_blocking(move || call(&engine))
        .await
        .map_err(|error| {
            ErrorDto::new(
                ErrorCode::Storage,
                format!("the profile could not be read or written: {error}"),
            )
        })?
        .map_err(ErrorDto::from)
}

/// Who wrote a value, as the UI shows it: `this device`, else the device's name (its id when
/// the server did not say).
fn written_by(engine: &Engine, device_id: &str, device_name: Option<&str>) -> String {
    if device_id == engine.profile().device.id {
        "this device".to_owned()
    } else {
        device_name.unwrap_or(device_id).to_owned()
    }
}

/// Who wrote a synced value, as the UI shows it.
fn changed_by(engine: &Engine, row: &lockstep_protocol::sync::SettingRow) -> String {
    written_by(engine, &row.device_id, row.device_name.as_deref())
}

/// A version from the local history, as the UI shows it.
fn history_dto(engine: &Engine, version: HistoryEntry) -> HistoryDto {
    let changed_by = match (version.origin, version.device_id.as_deref()) {
        // Set on this device (by this process or another on the profile).
        (HistoryOrigin::Here | HistoryOrigin::DeviceOnly, _) => "this device".to_owned(),
        (HistoryOrigin::Arrived, Some(id)) => {
            written_by(engine, id, version.device_name.as_deref())
        }
        (HistoryOrigin::Arrived, None) => version
            .device_name
            .unwrap_or_else(|| "another device".to_owned()),
    };
    HistoryDto {
        version: version.version,
        value: version.value,
        origin: version.origin.into(),
        origin_label: version.origin.label().to_owned(),
        changed_by,
        changed_at: rfc3339_millis(version.at_ms),
        key: version.key,
    }
}

/// How this instance started; opens the profile if it was set up before.
#[tauri::command]
pub async fn launch(shell: State<'_, Shell>) -> Answer<LaunchDto> {
    let connected = shell.open_existing().await?;
    let problems = std::mem::take(
        &mut *shell
            .problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let server = match shell.engine_while_locked().await {
        Ok(engine) => Some(engine.session().client().base_url().to_owned()),
        Err(_) => None,
    };
    let launch = &shell.launch;
    Ok(LaunchDto {
        server,
        password_rule: lockstep_protocol::password::describe_rule(),
        profile: launch.name.clone(),
        connected,
        locked: shell.is_locked(),
        server_url: launch.server.clone(),
        anon_key: launch.anon_key.clone(),
        device_name: launch.device_name.clone(),
        problems,
    })
}

/// Connects this profile to a server and names the device (first run), or moves a signed-out
/// profile to another server. The server is checked first (it answers as a Lockstep server and
/// takes the anon key): a wrong address is never saved, and the error names it.
#[tauri::command]
pub async fn connect(
    shell: State<'_, Shell>,
    server_url: String,
    anon_key: String,
    device_name: String,
) -> Answer<()> {
    shell.unlocked()?;
    if let Ok(engine) = shell.engine().await
        && engine.session().is_signed_in().await.unwrap_or(false)
    {
        return Err(ErrorDto::new(
            ErrorCode::Invalid,
            "sign out before moving this device to another server",
        ));
    }
    if let Err(problem) = check_server(&server_url, &anon_key).await {
        let code = match problem {
            ServerCheckError::Unreachable { .. } | ServerCheckError::ServerTrouble { .. } => {
                ErrorCode::Offline
            }
            _ => ErrorCode::Invalid,
        };
        return Err(ErrorDto::new(code, problem.to_string()));
    }
    shell
        .open(OpenOptions {
            server_url: Some(server_url.trim().to_owned()),
            anon_key: Some(anon_key.trim().to_owned()),
            device_name: Some(device_name),
        })
        .await
}

#[tauri::command]
pub async fn status(shell: State<'_, Shell>) -> Answer<StatusReport> {
    let engine = shell.engine().await?;
    Ok(StatusReport::from(&*engine.status().borrow()))
}

#[tauri::command]
pub async fn sign_up(shell: State<'_, Shell>, email: String, password: String) -> Answer<()> {
    Ok(shell.engine().await?.sign_up(&email, &password).await?)
}

#[tauri::command]
pub async fn sign_in(
    shell: State<'_, Shell>,
    email: String,
    password: String,
) -> Answer<SignInDto> {
    Ok(
        match shell.engine().await?.sign_in(&email, &password).await? {
            SignIn::Done => SignInDto::Done,
            SignIn::MfaRequired => SignInDto::CodeNeeded,
        },
    )
}

#[tauri::command]
pub async fn verify_code(shell: State<'_, Shell>, code: String) -> Answer<()> {
    Ok(shell.engine().await?.verify_code(&code).await?)
}

#[tauri::command]
pub async fn verify_recovery_code(shell: State<'_, Shell>, code: String) -> Answer<()> {
    Ok(shell.engine().await?.verify_recovery_code(&code).await?)
}

#[tauri::command]
pub async fn account(shell: State<'_, Shell>) -> Answer<AccountDto> {
    let engine = shell.engine().await?;
    let user = engine.user().await?;
    Ok(AccountDto {
        email: user.email.clone(),
        email_verified: user.email_confirmed_at.is_some(),
        mfa_enabled: user
            .factors
            .iter()
            .any(|f| f.factor_type == "totp" && f.status == "verified"),
        offline_codes: engine.has_offline_secret().await?,
        device_id: engine.profile().device.id.clone(),
        device_name: engine.profile().device.name.clone(),
        server_url: engine.session().client().base_url().to_owned(),
    })
}

/// Every known setting and every set one, with its effective value and provenance.
#[tauri::command]
pub async fn settings(shell: State<'_, Shell>) -> Answer<Vec<SettingDto>> {
    blocking(&shell, |engine| {
        let all = engine.all();
        Ok(all
            .into_iter()
            .map(|(key, value)| {
                let row = engine.row(&key);
                SettingDto {
                    label: settings::label(&key),
                    description: settings::spec(&key)
                        .map(|spec| spec.description.to_owned())
                        .unwrap_or_default(),
                    device_only: engine.is_device_only(&key),
                    sensitive: settings::is_sensitive(&key),
                    changed_by: row.as_ref().map(|r| changed_by(engine, r)),
                    changed_at: row.as_ref().map(|r| rfc3339(r.updated_at)),
                    pending: engine.is_pending(&key),
                    spoken: settings::spoken_value(&key, &value),
                    value: Some(value),
                    key,
                }
            })
            .collect())
    })
    .await
}

/// The edits the server refused for good.
#[tauri::command]
pub async fn set_aside(shell: State<'_, Shell>) -> Answer<Vec<SetAsideDto>> {
    blocking(&shell, |engine| {
        Ok(engine.set_aside().iter().map(SetAsideDto::from).collect())
    })
    .await
}

/// Sends the refused edit of `key` (all when `None`) again; answers how many.
#[tauri::command]
pub async fn retry_set_aside(shell: State<'_, Shell>, key: Option<String>) -> Answer<u32> {
    let released = blocking(&shell, move |engine| engine.retry_set_aside(key.as_deref())).await?;
    Ok(u32::try_from(released).unwrap_or(u32::MAX))
}

/// Gives up on the refused edit of `key` (all when `None`); answers how many.
#[tauri::command]
pub async fn drop_set_aside(shell: State<'_, Shell>, key: Option<String>) -> Answer<u32> {
    let dropped = blocking(&shell, move |engine| engine.drop_set_aside(key.as_deref())).await?;
    Ok(u32::try_from(dropped).unwrap_or(u32::MAX))
}

#[tauri::command]
pub async fn set_setting(shell: State<'_, Shell>, key: String, value: Value) -> Answer<()> {
    blocking(&shell, move |engine| engine.set(&key, value)).await
}

#[tauri::command]
pub async fn reset_setting(shell: State<'_, Shell>, key: String) -> Answer<()> {
    blocking(&shell, move |engine| engine.reset(&key)).await
}

#[tauri::command]
pub async fn set_device_only(
    shell: State<'_, Shell>,
    key: String,
    device_only: bool,
) -> Answer<()> {
    blocking(&shell, move |engine| {
        engine.set_device_only(&key, device_only)
    })
    .await
}

/// The values `key` had on this device, newest first: the first is its current value.
#[tauri::command]
pub async fn setting_history(shell: State<'_, Shell>, key: String) -> Answer<Vec<HistoryDto>> {
    blocking(&shell, move |engine| {
        let versions = engine.history(&key)?;
        Ok(versions
            .into_iter()
            .map(|version| history_dto(engine, version))
            .collect())
    })
    .await
}

/// Sets `key` back to its value at history `version` (when `None`, the one before the
/// current), as a new edit that syncs; answers the version restored.
#[tauri::command]
pub async fn restore_setting(
    shell: State<'_, Shell>,
    key: String,
    version: Option<i64>,
) -> Answer<HistoryDto> {
    blocking(&shell, move |engine| {
        let restored = engine.restore(&key, version)?;
        Ok(history_dto(engine, restored))
    })
    .await
}

/// Starts adding an authenticator app, or answers the one already started: asking again (the
/// window reopened, a second click) never makes a new secret, so the entry just scanned keeps
/// working. Signing out forgets it.
#[tauri::command]
pub async fn enroll_totp(shell: State<'_, Shell>, friendly_name: String) -> Answer<EnrollmentDto> {
    let engine = shell.engine().await?;
    let mut pending = shell.enrollment().await;
    if pending.is_none() {
        *pending = Some(engine.enroll_totp(&friendly_name).await?);
    }
    let enrollment = pending.as_ref().unwrap_or_else(|| unreachable!());
    Ok(EnrollmentDto {
        factor_id: enrollment.factor_id.clone(),
        secret: enrollment.secret.clone(),
        uri: enrollment.uri.clone(),
        qr_svg: enrollment.qr_svg.clone(),
    })
}

/// Confirms the pending enrollment; answers the recovery codes (shown once). A wrong code
/// keeps the enrollment for the next one.
#[tauri::command]
pub async fn confirm_enrollment(shell: State<'_, Shell>, code: String) -> Answer<Vec<String>> {
    let engine = shell.engine().await?;
    let mut pending = shell.enrollment().await;
    let enrollment = pending
        .as_ref()
        .ok_or_else(|| ErrorDto::new(ErrorCode::Invalid, "start adding an authenticator first"))?;
    let codes = engine.confirm_enrollment(enrollment, &code).await?;
    *pending = None;
    Ok(codes)
}

#[tauri::command]
pub async fn disable_mfa(shell: State<'_, Shell>, code: String) -> Answer<()> {
    Ok(shell.engine().await?.disable_mfa(&code).await?)
}

/// The app lock: unlocks with a code from the authenticator app, checked offline against this
/// device's keychain (`recovery`: with one of the account's recovery codes, checked by the
/// server). Wrong codes back off.
#[tauri::command]
pub async fn unlock(
    shell: State<'_, Shell>,
    code: String,
    recovery: Option<bool>,
) -> Answer<UnlockDto> {
    let outcome = shell.unlock(&code, recovery.unwrap_or(false)).await?;
    Ok(UnlockDto::from(outcome))
}

/// Locks the app now.
#[tauri::command]
pub async fn lock_now(shell: State<'_, Shell>) -> Answer<()> {
    shell.lock_now().await
}

/// What the lock screen shows: whose account this is, and the wait before the next try.
#[tauri::command]
pub async fn lock_screen(shell: State<'_, Shell>) -> Answer<LockScreenDto> {
    let engine = shell.engine_while_locked().await?;
    let retry_in_ms = engine.lock_retry_in_ms().await?;
    let email = engine.session().current().await.map(|tokens| tokens.email);
    Ok(LockScreenDto {
        locked: shell.is_locked(),
        profile: shell.launch.name.clone(),
        email,
        device_name: engine.profile().device.name.clone(),
        retry_in_ms,
    })
}

#[tauri::command]
pub async fn devices(shell: State<'_, Shell>) -> Answer<Vec<DeviceDto>> {
    let devices = shell.engine().await?.devices().await?;
    Ok(devices
        .into_iter()
        .map(|d| DeviceDto {
            id: d.record.id,
            name: d.record.name,
            platform: d.record.platform,
            last_seen_at: rfc3339(d.record.last_seen_at),
            current: d.current,
        })
        .collect())
}

#[tauri::command]
pub async fn rename_device(shell: State<'_, Shell>, device_id: String, name: String) -> Answer<()> {
    Ok(shell
        .engine()
        .await?
        .rename_device(&device_id, &name)
        .await?)
}

#[tauri::command]
pub async fn revoke_device(shell: State<'_, Shell>, device_id: String) -> Answer<()> {
    Ok(shell.engine().await?.revoke_device(&device_id).await?)
}

/// `scope`: `this_device`, `others` or `everywhere`. Signing this device out wipes what it
/// holds: with edits that have not reached the server it refuses (`Unsynced`, saying how many)
/// unless `discard_pending`. Works while locked.
#[tauri::command]
pub async fn sign_out(
    shell: State<'_, Shell>,
    scope: String,
    discard_pending: Option<bool>,
) -> Answer<()> {
    let scope = match scope.as_str() {
        "this_device" => SignOutScope::ThisDevice,
        "others" => SignOutScope::Others,
        "everywhere" => SignOutScope::Everywhere,
        other => {
            return Err(ErrorDto::new(
                ErrorCode::Invalid,
                format!("unknown sign-out scope {other:?}"),
            ));
        }
    };
    // Signing the others out reads and changes the account: not while locked.
    let engine = if scope == SignOutScope::Others {
        shell.engine().await?
    } else {
        shell.engine_while_locked().await?
    };
    let unsynced = engine.edits_lost_by_sign_out(scope).await?;
    if unsynced > 0 && !discard_pending.unwrap_or(false) {
        let edits = if unsynced == 1 {
            "1 change made on this device has".to_owned()
        } else {
            format!("{unsynced} changes made on this device have")
        };
        return Err(ErrorDto::new(
            ErrorCode::Unsynced,
            format!("{edits} not reached the server yet: signing out now would lose them"),
        ));
    }
    engine.sign_out(scope).await?;
    if scope != SignOutScope::Others {
        shell.signed_out().await;
    }
    Ok(())
}

#[tauri::command]
pub async fn activity(shell: State<'_, Shell>) -> Answer<Vec<ActivityDto>> {
    let entries = shell.engine().await?.activity(100).await?;
    Ok(entries
        .into_iter()
        .map(|e| ActivityDto {
            label: lockstep_protocol::audit::action_label(&e.action),
            action: e.action,
            device_name: e.device_name,
            ip_address: e.ip_address,
            created_at: rfc3339(e.created_at),
            details: e.payload,
        })
        .collect())
}

#[tauri::command]
pub async fn sync_now(shell: State<'_, Shell>) -> Answer<()> {
    shell.engine().await?;
    shell.with_live(|live| live.sync_now()).await;
    Ok(())
}

#[tauri::command]
pub async fn pause_sync(shell: State<'_, Shell>, paused: bool) -> Answer<()> {
    shell.engine().await?;
    shell
        .with_live(|live| if paused { live.pause() } else { live.resume() })
        .await;
    Ok(())
}

// Account basics (issue 15): the emailed codes, a forgotten password, the recovery codes.
// Every command goes through `shell.engine()`: refused with `locked` while the app lock is on.
// `resend_confirmation`, `request_password_reset` and `reset_password` also work signed out
// (a profile must be connected); the others need the account signed in (`signed_out`).

/// Mails the address confirmation again (a new code and link; the older codes stop working):
/// to `email` when given (signed out), else to the signed-in account's address. Answers
/// `null` whether or not a mail goes: the server sends nothing for an unknown or confirmed
/// address, and at most one a minute (by default) to any address. Signed in with a confirmed
/// address: `invalid`.
#[tauri::command]
pub async fn resend_confirmation(shell: State<'_, Shell>, email: Option<String>) -> Answer<()> {
    Ok(shell
        .engine()
        .await?
        .resend_confirmation(email.as_deref())
        .await?)
}

/// Confirms the signed-in account's address with the 6-digit code from the newest
/// confirmation mail; `account` then reads `email_verified: true`. A wrong, used or expired
/// code: `refused` (the message says so; wrong codes are limited per address). Already
/// confirmed: `null`.
#[tauri::command]
pub async fn confirm_email_code(shell: State<'_, Shell>, code: String) -> Answer<()> {
    Ok(shell.engine().await?.confirm_email_code(&code).await?)
}

/// "Forgot password": mails a reset code (and link) to `email`. Answers `null` whether or not
/// the address has an account (only a malformed address is refused); at most one mail a
/// minute (by default) to an address.
#[tauri::command]
pub async fn request_password_reset(shell: State<'_, Shell>, email: String) -> Answer<()> {
    Ok(shell.engine().await?.request_password_reset(&email).await?)
}

/// Resets a forgotten password with the code from the reset mail and signs this device in.
/// The new password is checked first (`invalid`, with the rule, before the code is used). Every
/// other session of the account ends. Answers `done` (the new password is set), or
/// `code_needed` for an account with two-factor authentication: this device is signed in and
/// the password is NOT changed yet; call `verify_code` (or `verify_recovery_code`), then
/// `change_password`. A wrong code: `refused`. Signed in to another account: `invalid`.
#[tauri::command]
pub async fn reset_password(
    shell: State<'_, Shell>,
    email: String,
    code: String,
    new_password: String,
) -> Answer<SignInDto> {
    let engine = shell.engine().await?;
    Ok(
        match engine.reset_password(&email, &code, &new_password).await? {
            SignIn::Done => SignInDto::Done,
            SignIn::MfaRequired => SignInDto::CodeNeeded,
        },
    )
}

/// Sets a new password for the signed-in account; every other session of it ends. With
/// two-factor authentication on, after a code was verified in this session (else
/// `code_needed`). A weak password: `invalid`, with the rule.
#[tauri::command]
pub async fn change_password(shell: State<'_, Shell>, new_password: String) -> Answer<()> {
    Ok(shell.engine().await?.change_password(&new_password).await?)
}

/// How many recovery codes are left, of how many (both 0 when the account has none).
#[tauri::command]
pub async fn recovery_codes_status(
    shell: State<'_, Shell>,
) -> Answer<crate::dto::RecoveryCodesDto> {
    Ok(shell.engine().await?.recovery_codes_status().await?.into())
}

/// A new set of recovery codes (shown once; the old ones stop working). `code` proves the
/// second factor afresh: a code from the authenticator app, or one of the current recovery
/// codes (used up by this). A wrong code: `refused`.
#[tauri::command]
pub async fn regenerate_recovery_codes(
    shell: State<'_, Shell>,
    code: String,
) -> Answer<Vec<String>> {
    Ok(shell
        .engine()
        .await?
        .regenerate_recovery_codes(&code)
        .await?)
}

/// Saves the recovery codes just shown to a file the user picks in the system's save dialog
/// (opened from here: the page has no file access), readable by the user alone (mode 0600 on
/// Unix). Answers where, or `null` when the dialog was cancelled.
#[tauri::command]
pub async fn save_recovery_codes<R: tauri::Runtime>(
    app: tauri::AppHandle<R>,
    shell: State<'_, Shell>,
    codes: Vec<String>,
) -> Answer<Option<String>> {
    use tauri_plugin_dialog::DialogExt as _;
    shell.engine().await?;
    if codes.is_empty() || codes.iter().any(|c| c.trim().is_empty() || c.len() > 64) {
        return Err(ErrorDto::new(
            ErrorCode::Invalid,
            "there are no recovery codes to save",
        ));
    }
    let chosen = tauri::async_runtime::spawn_blocking(move || {
        app.dialog()
            .file()
            .set_title("Save your Lockstep recovery codes")
            .set_file_name("lockstep-recovery-codes.txt")
            .add_filter("Text", &["txt"])
            .blocking_save_file()
    })
    .await
    .map_err(|error| {
        ErrorDto::new(
            ErrorCode::Storage,
            format!("the save dialog failed: {error}"),
        )
    })?;
    let Some(chosen) = chosen else {
        return Ok(None);
    };
    let path = chosen.into_path().map_err(|error| {
        ErrorDto::new(
            ErrorCode::Invalid,
            format!("that is not a file on this computer: {error}"),
        )
    })?;
    let text = recovery_codes_text(&codes);
    let target = path.clone();
    tauri::async_runtime::spawn_blocking(move || write_private(&target, &text))
        .await
        .map_err(|error| ErrorDto::new(ErrorCode::Storage, error.to_string()))?
        .map_err(|error| {
            ErrorDto::new(
                ErrorCode::Storage,
                format!(
                    "the codes could not be saved to {}: {error}",
                    path.display()
                ),
            )
        })?;
    Ok(Some(path.display().to_string()))
}

/// The recovery codes file: what they are, then one code per line.
pub fn recovery_codes_text(codes: &[String]) -> String {
    let mut text = String::from(
        "Lockstep recovery codes. Each works once, if you lose your authenticator app.\n\
         Keep this file somewhere safe and private.\n\n",
    );
    for code in codes {
        text.push_str(code.trim());
        text.push('\n');
    }
    text
}

/// Writes `text` to `path` (replacing it), readable and writable by its owner alone on Unix:
/// the file is created with mode 0600, and an existing one is set to it before it is written.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_saved_for_their_owner_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.txt");
        // An existing file that others could read is closed to them before the codes go in.
        std::fs::write(&path, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let codes = vec!["abcd-efgh".to_owned(), " ijkl-mnop ".to_owned()];
        write_private(&path, &recovery_codes_text(&codes)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("abcd-efgh\nijkl-mnop\n"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let fresh = dir.path().join("fresh.txt");
            write_private(&fresh, "x").unwrap();
            let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
