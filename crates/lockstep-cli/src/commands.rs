//! The commands: open the profile, call the engine, print.

use std::{future::Future, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use lockstep_core::{
    account::{SignIn, SignOutScope},
    engine::{Engine, EngineError, EngineEvent, SyncReport, describe_set_aside},
    feed::{self, SecurityEvent},
    keychain::Keychain,
    live::{self, LiveOptions},
    profile,
    session::SessionError,
};
use lockstep_protocol::{
    settings,
    timestamp::{rfc3339, rfc3339_millis},
};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{
    Cli, Command, MfaCommand, OnOff, SetAsideCommand,
    exit::{self, CliError},
    input,
    output::{self, Out},
};

/// Runs the command of `cli`.
pub async fn run(cli: Cli, out: Out) -> anyhow::Result<()> {
    Keychain::use_platform_store()?;
    let opened = profile::open(
        &cli.profile.base_dir(),
        &cli.profile.name,
        cli.profile.open_options(),
    )?;
    for problem in &opened.problems {
        out.warn(problem);
    }
    let engine = opened.engine;
    let result = dispatch(cli.command, &engine, out).await;
    if let Err(err) = &result
        && let Some(EngineError::Session(SessionError::Ended(_))) =
            err.downcast_ref::<EngineError>()
    {
        // The server ended this device's session (revoked, or signed out elsewhere): forget
        // everything, as the live loop does.
        forget_ended_session(&engine, out).await;
    }
    result
}

async fn forget_ended_session(engine: &Engine, out: Out) {
    match engine.wipe().await {
        Ok(dropped) => {
            out.warn(&format!(
                "this device was signed out by the server (revoked, or signed out elsewhere); \
                 its secrets and cached settings were removed{}",
                if dropped > 0 {
                    format!(", with {dropped} edit(s) not yet synced")
                } else {
                    String::new()
                }
            ));
        }
        Err(err) => out.warn(&format!(
            "signed out, but this device's data could not be fully removed: {err}"
        )),
    }
}

async fn dispatch(command: Command, engine: &Arc<Engine>, out: Out) -> anyhow::Result<()> {
    match command {
        Command::Signup { email } => signup(engine, out, &email).await,
        Command::Login { email, code } => login(engine, out, &email, code).await,
        Command::Logout {
            others,
            everywhere,
            discard_pending,
        } => logout(engine, out, others, everywhere, discard_pending).await,
        Command::Status => status(engine, out).await,
        Command::Get { key, reveal } => get(engine, out, key.as_deref(), reveal),
        Command::Set { key, value } => set(engine, out, &key, value).await,
        Command::Reset { key } => {
            engine.reset(&key)?;
            out.emit(
                format!("queued reset of {key}"),
                json!({ "queued": key, "reset": true }),
            )?;
            push_after_edit(engine, out).await
        }
        Command::DeviceOnly { key, state } => {
            let only_here = state == OnOff::On;
            engine.set_device_only(&key, only_here)?;
            let human = if only_here {
                format!("{key} is kept on this device only")
            } else {
                format!("{key} syncs with your other devices again")
            };
            out.emit(human, json!({ "key": key, "device_only": only_here }))?;
            Ok(())
        }
        Command::History { key } => history(engine, out, &key),
        Command::Restore { key, version } => {
            let restored = engine.restore(&key, version)?;
            out.emit(
                format!(
                    "restored {key} to version {} ({}); queued",
                    restored.version,
                    output::show(restored.value.as_ref())
                ),
                json!({ "restored": key, "version": restored.version, "value": restored.value, "queued": key }),
            )?;
            push_after_edit(engine, out).await
        }
        Command::Sync => sync(engine, out).await,
        Command::SetAside(command) => set_aside(engine, out, command).await,
        Command::Watch {
            poll_interval_ms,
            stream_url,
        } => watch(engine, out, poll_interval_ms, stream_url).await,
        Command::Devices => devices(engine, out).await,
        Command::RenameDevice { id, name } => {
            known_device(engine, &id).await?;
            engine.rename_device(&id, &name).await?;
            out.emit(
                format!("renamed {id} to {name:?}"),
                json!({ "renamed": id, "name": name }),
            )?;
            Ok(())
        }
        Command::Revoke { device_id } => {
            if device_id != engine.profile().device.id {
                known_device(engine, &device_id).await?;
            }
            engine.revoke_device(&device_id).await?;
            out.emit(
                format!("revoked {device_id}: it is signed out and wipes itself"),
                json!({ "revoked": device_id }),
            )?;
            Ok(())
        }
        Command::Mfa(command) => mfa(engine, out, command).await,
        Command::Export { file } => export(engine, out, file.as_deref()),
        Command::Import { file } => import(engine, out, &file).await,
        Command::Activity { limit } => activity(engine, out, limit).await,
    }
}

/// Refuses an id that is not one of the account's devices (the server would quietly change
/// nothing).
async fn known_device(engine: &Engine, id: &str) -> anyhow::Result<()> {
    if engine.devices().await?.iter().any(|d| d.record.id == id) {
        Ok(())
    } else {
        Err(CliError::Invalid(format!(
            "no device of this account has the id {id:?} (see `lockstep devices`)"
        ))
        .into())
    }
}

/// Runs `work` while printing the engine events it causes: superseded edits always, remote
/// changes and security events when `all`, problems as warnings.
async fn with_events<T>(
    engine: &Engine,
    out: Out,
    all: bool,
    work: impl Future<Output = Result<T, EngineError>>,
) -> anyhow::Result<Result<T, EngineError>> {
    let mut events = engine.subscribe();
    let show = |event: &EngineEvent| -> std::io::Result<()> {
        match event {
            EngineEvent::Superseded { .. } => out.event(event),
            EngineEvent::RemoteChange { .. } | EngineEvent::Security(_) if all => out.event(event),
            EngineEvent::Problem(message) => {
                out.warn(message);
                Ok(())
            }
            _ => Ok(()),
        }
    };
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            event = events.recv() => match event {
                Ok(event) => show(&event)?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    out.warn(&format!("{missed} event(s) were not shown"));
                }
                Err(broadcast::error::RecvError::Closed) => break work.await,
            },
        }
    };
    while let Ok(event) = events.try_recv() {
        show(&event)?;
    }
    Ok(result)
}

fn report_json(report: &SyncReport) -> Value {
    json!({
        "pushed": report.pushed,
        "superseded": report.superseded,
        "remote_changes": report.remote_changes,
        "full_pull": report.full_pull,
        "set_aside": report.set_aside,
    })
}

fn report_line(report: &SyncReport) -> String {
    format!(
        "synced: pushed {}, {} superseded, {} remote change(s){}",
        report.pushed,
        report.superseded,
        report.remote_changes,
        if report.full_pull { " (full pull)" } else { "" }
    ) + &if report.set_aside > 0 {
        format!(
            "; {} edit(s) refused by the server and kept aside (see `lockstep status`)",
            report.set_aside
        )
    } else {
        String::new()
    }
}

/// The first sync after signing in or stepping up.
async fn first_sync(engine: &Engine, out: Out) -> anyhow::Result<()> {
    let report = with_events(engine, out, false, engine.sync_once())
        .await?
        .context("signed in, but the first sync failed")?;
    out.emit(report_line(&report), report_json(&report))?;
    Ok(())
}

async fn signup(engine: &Engine, out: Out, email: &str) -> anyhow::Result<()> {
    let password = input::password(true)?;
    engine.sign_up(email, &password).await?;
    out.emit(
        format!("signed up as {email}; confirm the address with the link that was emailed"),
        json!({ "signed_up": email }),
    )?;
    first_sync(engine, out).await
}

async fn login(engine: &Engine, out: Out, email: &str, code: Option<String>) -> anyhow::Result<()> {
    let password = input::password(false)?;
    match engine.sign_in(email, &password).await? {
        SignIn::Done => {}
        SignIn::MfaRequired => {
            let code = input::code(
                code,
                "Two-factor code",
                "two-factor authentication is on for this account: give --code (or \
                 LOCKSTEP_CODE), or run `lockstep mfa verify` (this device is signed in but \
                 cannot sync until a code is verified)",
            )?;
            engine.verify_code(&code).await?;
        }
    }
    out.emit(
        format!("signed in as {email}"),
        json!({ "signed_in": email }),
    )?;
    first_sync(engine, out).await
}

async fn logout(
    engine: &Engine,
    out: Out,
    others: bool,
    everywhere: bool,
    discard_pending: bool,
) -> anyhow::Result<()> {
    let (scope, human, name) = if others {
        (
            SignOutScope::Others,
            "signed out every other device",
            "others",
        )
    } else if everywhere {
        (
            SignOutScope::Everywhere,
            "signed out everywhere",
            "everywhere",
        )
    } else {
        (SignOutScope::ThisDevice, "signed out", "this_device")
    };
    // Signing this device out wipes what it holds, unsynced edits included: say so first.
    let unsynced = engine.edits_lost_by_sign_out(scope).await?;
    if unsynced > 0 && !discard_pending {
        return Err(CliError::Unsynced(format!(
            "{unsynced} edit(s) made on this device have not reached the server and signing out \
             would lose them: run `lockstep sync` first (`lockstep set-aside list` shows refused \
             ones), or `lockstep logout --discard-pending` to sign out anyway"
        ))
        .into());
    }
    engine.sign_out(scope).await?;
    out.emit(human, json!({ "signed_out": name }))?;
    Ok(())
}

async fn status(engine: &Engine, out: Out) -> anyhow::Result<()> {
    let profile = engine.profile();
    let mut signed_in = engine.session().is_signed_in().await?;
    let offline_secret = engine.has_offline_secret().await?;
    let mut connection = if signed_in { "online" } else { "signed_out" };
    let mut problem = None;
    let (mut email, mut email_verified, mut mfa, mut devices) = (None, None, None, None);
    if signed_in {
        match engine.user().await {
            Ok(user) => {
                email = Some(user.email.clone());
                email_verified = Some(user.email_verified());
                mfa = Some(
                    user.factors
                        .iter()
                        .any(|f| f.factor_type == "totp" && f.status == "verified"),
                );
                // Reading data tells whether this session may sync (aal2 when MFA is on).
                match engine.devices().await {
                    Ok(list) => devices = Some(list.len()),
                    Err(e) if e.needs_second_factor() => connection = "code_needed",
                    Err(e) if e.is_offline() => connection = "offline",
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) if e.is_offline() => {
                connection = "offline";
                problem = Some(e.to_string());
            }
            Err(e) if e.is_signed_out() => {
                if matches!(e, EngineError::Session(SessionError::Ended(_))) {
                    forget_ended_session(engine, out).await;
                }
                signed_in = false;
                connection = "signed_out";
            }
            Err(e) => return Err(e.into()),
        }
    }
    let pending = engine.pending();
    let set_aside = engine.set_aside();
    let last_synced_ms = engine.status().borrow().last_synced_ms;
    let json = json!({
        "profile": profile.name,
        "device_id": profile.device.id,
        "device_name": profile.device.name,
        "server": engine.session().client().base_url(),
        "signed_in": signed_in,
        "connection": connection,
        "email": email,
        "email_verified": email_verified,
        "mfa": mfa,
        "offline_code_check": offline_secret,
        "devices": devices,
        "pending": pending,
        "set_aside": set_aside,
        "last_synced_ms": last_synced_ms,
    });
    let mut lines = vec![
        format!(
            "profile:     {} (this device: {:?}, id {})",
            profile.name, profile.device.name, profile.device.id
        ),
        format!("server:      {}", engine.session().client().base_url()),
    ];
    let yes_no = |b: bool, yes: &str, no: &str| if b { yes.to_owned() } else { no.to_owned() };
    match (signed_in, &email) {
        (false, _) => lines.push("account:     not signed in (run `lockstep login EMAIL`)".into()),
        (true, Some(email)) => lines.push(format!(
            "account:     {email} ({})",
            yes_no(
                email_verified == Some(true),
                "email verified",
                "email not verified yet"
            )
        )),
        (true, None) => lines.push("account:     signed in (offline: details unknown)".into()),
    }
    lines.push(format!(
        "connection:  {}",
        match connection {
            "online" => "online".to_owned(),
            "offline" => format!(
                "offline{}",
                problem.map_or_else(String::new, |p| format!(" ({p})"))
            ),
            "code_needed" => "a code is needed to sync (run `lockstep mfa verify`)".to_owned(),
            _ => "signed out".to_owned(),
        }
    ));
    if let Some(mfa) = mfa {
        lines.push(format!("two-factor:  {}", yes_no(mfa, "on", "off")));
    }
    lines.push(format!(
        "code check:  {}",
        yes_no(
            offline_secret,
            "this device holds the authenticator secret (codes check offline)",
            "this device holds no authenticator secret"
        )
    ));
    if let Some(devices) = devices {
        lines.push(format!("devices:     {devices} signed in"));
    }
    lines.push(format!("pending:     {pending} edit(s) not yet synced"));
    if let Some(summary) = describe_set_aside(&set_aside) {
        lines.push(format!(
            "refused:     {summary} (kept; `lockstep set-aside retry` or `lockstep set-aside drop`)"
        ));
    }
    lines.push(format!(
        "last synced: {}",
        last_synced_ms.map_or_else(
            || "not in this run (run `lockstep sync` or `lockstep watch`)".to_owned(),
            rfc3339_millis
        )
    ));
    out.emit(lines.join("\n"), json)?;
    if signed_in {
        Ok(())
    } else {
        Err(CliError::Silent(exit::SIGNED_OUT).into())
    }
}

fn get(engine: &Engine, out: Out, key: Option<&str>, reveal: bool) -> anyhow::Result<()> {
    let values = match key {
        Some(key) => {
            settings::spec(key).map_err(EngineError::from)?;
            vec![(key.to_owned(), engine.get(key))]
        }
        None => engine
            .all()
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect(),
    };
    let device = &engine.profile().device.id;
    for (key, value) in values {
        let value = value.map(|v| {
            if reveal {
                v
            } else {
                feed::shown_value(&key, &v)
            }
        });
        let device_only = engine.is_device_only(&key);
        let row = engine.row(&key).filter(|row| !row.deleted && !device_only);
        let (device_id, updated_at) = match (&row, device_only) {
            (Some(row), _) => (Some(row.device_id.clone()), Some(rfc3339(row.updated_at))),
            (None, true) => (Some(device.clone()), None),
            (None, false) => (None, None),
        };
        let origin = if device_only {
            " (this device only)".to_owned()
        } else if let Some(row) = &row {
            let on = if &row.device_id == device {
                "this device"
            } else {
                row.device_name.as_deref().unwrap_or(&row.device_id)
            };
            format!(" (set on {on}, {})", rfc3339(row.updated_at))
        } else {
            " (default)".to_owned()
        };
        let label = settings::label(&key);
        // The schema's name for the key, when it says more than the key itself.
        let named = if label == key {
            String::new()
        } else {
            format!("  # {label}")
        };
        let human = match &value {
            Some(value) => format!("{key} = {value}{origin}{named}"),
            None => format!("{key} is not set{named}"),
        };
        out.emit(
            human,
            json!({
                "key": key,
                "label": label,
                "value": value,
                "device_id": device_id,
                "updated_at": updated_at,
                "device_only": device_only,
            }),
        )?;
    }
    Ok(())
}

async fn set(engine: &Engine, out: Out, key: &str, raw: String) -> anyhow::Result<()> {
    let value = serde_json::from_str(&raw).unwrap_or(Value::String(raw));
    engine.set(key, value)?;
    if engine.is_device_only(key) {
        out.emit(
            format!("saved {key} on this device only"),
            json!({ "saved": key, "device_only": true }),
        )?;
        return Ok(());
    }
    // The edit is durable now: say so before trying the network.
    out.emit(format!("queued {key}"), json!({ "queued": key }))?;
    push_after_edit(engine, out).await
}

/// Pushes what an edit queued; offline is fine (the edit stays queued).
async fn push_after_edit(engine: &Engine, out: Out) -> anyhow::Result<()> {
    match with_events(engine, out, false, engine.push()).await? {
        Ok(report) => {
            out.emit(
                format!("synced (pushed {})", report.pushed),
                json!({ "synced": true, "pushed": report.pushed, "superseded": report.superseded }),
            )?;
            Ok(())
        }
        Err(e) if e.is_offline() => {
            out.emit(
                "saved locally; will sync when online",
                json!({ "synced": false, "saved_locally": true, "reason": e.to_string() }),
            )?;
            Ok(())
        }
        Err(e) => Err(anyhow::Error::from(e).context("saved locally, but not synced")),
    }
}

async fn set_aside(engine: &Engine, out: Out, command: SetAsideCommand) -> anyhow::Result<()> {
    match command {
        SetAsideCommand::List => {
            let edits = engine.set_aside();
            let human = match describe_set_aside(&edits) {
                None => "no refused edits".to_owned(),
                Some(_) => edits
                    .iter()
                    .map(|e| {
                        format!(
                            "{} = {} (edited {}, refused {}): {}",
                            e.key,
                            output::show(e.value.as_ref()),
                            rfc3339_millis(e.recorded_at_ms),
                            rfc3339_millis(e.refused_at_ms),
                            e.reason
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            out.emit(human, json!({ "set_aside": edits }))?;
            Ok(())
        }
        SetAsideCommand::Retry { key } => {
            let released = engine.retry_set_aside(key.as_deref())?;
            out.emit(
                format!("{released} refused edit(s) queued again"),
                json!({ "retried": released }),
            )?;
            if released > 0 {
                push_after_edit(engine, out).await?;
            }
            Ok(())
        }
        SetAsideCommand::Drop { key } => {
            let dropped = engine.drop_set_aside(key.as_deref())?;
            out.emit(
                format!("{dropped} refused edit(s) dropped"),
                json!({ "dropped": dropped }),
            )?;
            Ok(())
        }
    }
}

/// `lockstep history KEY`: one line per version, newest first.
fn history(engine: &Engine, out: Out, key: &str) -> anyhow::Result<()> {
    let versions = engine.history(key)?;
    let human = if versions.is_empty() {
        format!("no history of {key} on this device yet")
    } else {
        versions
            .iter()
            .map(|v| {
                let by = v
                    .device_name
                    .as_deref()
                    .map(|d| format!(" by {d}"))
                    .unwrap_or_default();
                format!(
                    "#{} {} {} ({}{by})",
                    v.version,
                    rfc3339_millis(v.at_ms),
                    v.value
                        .as_ref()
                        .map_or_else(|| "(reset to default)".to_owned(), Value::to_string),
                    v.origin.label()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    out.emit(human, json!({ "key": key, "history": versions }))?;
    Ok(())
}

async fn sync(engine: &Engine, out: Out) -> anyhow::Result<()> {
    let report = with_events(engine, out, true, engine.sync_once()).await??;
    out.emit(report_line(&report), report_json(&report))?;
    Ok(())
}

async fn watch(
    engine: &Arc<Engine>,
    out: Out,
    poll_interval_ms: Option<u64>,
    stream_url: Option<String>,
) -> anyhow::Result<()> {
    if !engine.session().is_signed_in().await? {
        return Err(CliError::NotSignedIn(
            "not signed in on this device: run `lockstep login EMAIL` first".into(),
        )
        .into());
    }
    let mut options = LiveOptions::default();
    if let Some(ms) = poll_interval_ms {
        options.poll_interval = Duration::from_millis(ms.max(1));
    }
    options.stream_url = stream_url;
    // Subscribed before the loop starts: no event is missed.
    let mut events = engine.subscribe();
    let handle = live::start(engine.clone(), options);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    // A `SignedOut` status is followed at once by the security event that explains it (after
    // the wipe); this is how long to wait for it.
    let mut signed_out_by: Option<tokio::time::Instant> = None;
    let signed_out = loop {
        let grace = async {
            match signed_out_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => break false,
            () = grace => break true,
            event = events.recv() => match event {
                Ok(event) => {
                    if out.event(&event).is_err() {
                        // Nobody reads the output any more.
                        break false;
                    }
                    match event {
                        EngineEvent::Security(SecurityEvent::SignedOut { .. }) => break true,
                        EngineEvent::Status(status)
                            if status.connection == lockstep_core::engine::Connection::SignedOut =>
                        {
                            signed_out_by.get_or_insert(
                                tokio::time::Instant::now() + Duration::from_secs(2),
                            );
                        }
                        _ => {}
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let _ = out.event(&EngineEvent::Problem(format!(
                        "{missed} event(s) were missed (the output was too slow)"
                    )));
                }
                Err(broadcast::error::RecvError::Closed) => break false,
            },
        }
    };
    handle.stop().await;
    if signed_out {
        Err(CliError::Silent(exit::SIGNED_OUT).into())
    } else {
        Ok(())
    }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn devices(engine: &Engine, out: Out) -> anyhow::Result<()> {
    let list = engine.devices().await?;
    let me = &engine.profile().device.id;
    for device in list {
        let current = device.current || &device.record.id == me;
        let record = &device.record;
        let human = format!(
            "{} {}  {:?}  {}  last seen {}{}",
            if current { "*" } else { " " },
            record.id,
            record.name,
            record.platform,
            rfc3339(record.last_seen_at),
            if current { "  (this device)" } else { "" }
        );
        let mut json = serde_json::to_value(&device)?;
        if let Some(object) = json.as_object_mut() {
            object.insert("current".into(), json!(current));
        }
        out.emit(human, json)?;
    }
    Ok(())
}

async fn mfa(engine: &Engine, out: Out, command: MfaCommand) -> anyhow::Result<()> {
    match command {
        MfaCommand::Enroll { name, qr, code } => {
            let enrollment = engine.enroll_totp(&name).await?;
            if let Some(path) = &qr {
                std::fs::write(path, &enrollment.qr_svg).map_err(|e| {
                    CliError::Storage(format!(
                        "cannot write the QR code to {}: {e}",
                        path.display()
                    ))
                })?;
            }
            out.emit(
                format!(
                    "Add this account to your authenticator app{}:\n  {}\nor type the secret: {}",
                    qr.as_ref()
                        .map_or_else(String::new, |p| format!(" (QR code in {})", p.display())),
                    enrollment.uri,
                    enrollment.secret
                ),
                json!({
                    "factor_id": enrollment.factor_id,
                    "secret": enrollment.secret,
                    "uri": enrollment.uri,
                }),
            )?;
            let code = input::code(
                code,
                "Code from the app",
                "a code from the authenticator app is needed to finish (give --code, \
                 LOCKSTEP_CODE or a line on standard input)",
            )?;
            let recovery = engine.confirm_enrollment(&enrollment, &code).await?;
            let human = if recovery.is_empty() {
                "two-factor authentication is on (the account's recovery codes are unchanged)"
                    .to_owned()
            } else {
                format!(
                    "two-factor authentication is on. Recovery codes (each works once; keep them \
                     safe, they are not shown again):\n  {}",
                    recovery.join("\n  ")
                )
            };
            out.emit(
                human,
                json!({ "mfa": "enabled", "recovery_codes": recovery }),
            )?;
            Ok(())
        }
        MfaCommand::Verify { recovery, code } => {
            let (prompt, hint) = if recovery {
                (
                    "Recovery code",
                    "a recovery code is needed (give --code or a line on standard input)",
                )
            } else {
                (
                    "Two-factor code",
                    "a code is needed (give --code, LOCKSTEP_CODE or a line on standard input)",
                )
            };
            let code = input::code(code, prompt, hint)?;
            if recovery {
                engine.verify_recovery_code(&code).await?;
            } else {
                engine.verify_code(&code).await?;
            }
            out.emit("verified", json!({ "verified": true }))?;
            first_sync(engine, out).await
        }
        MfaCommand::Disable { code } => {
            let code = input::code(
                code,
                "Two-factor code",
                "a code is needed to turn two-factor authentication off",
            )?;
            engine.disable_mfa(&code).await?;
            out.emit(
                "two-factor authentication is off",
                json!({ "mfa": "disabled" }),
            )?;
            Ok(())
        }
        MfaCommand::Code { code } => {
            if engine.check_code_offline(&code).await? {
                out.emit("the code is valid", json!({ "valid": true }))?;
                Ok(())
            } else {
                out.emit("the code is not valid", json!({ "valid": false }))?;
                Err(CliError::Silent(exit::CHECK_FAILED).into())
            }
        }
    }
}

fn export(engine: &Engine, out: Out, file: Option<&Path>) -> anyhow::Result<()> {
    let export = engine.export();
    let count = export.settings.len();
    match file {
        Some(path) => {
            let mut text = serde_json::to_string_pretty(&export)?;
            text.push('\n');
            std::fs::write(path, text)
                .map_err(|e| CliError::Storage(format!("cannot write {}: {e}", path.display())))?;
            out.emit(
                format!("exported {count} setting(s) to {}", path.display()),
                json!({ "exported": count, "file": path }),
            )?;
        }
        None => {
            // The document itself is the output (pretty for people, one line with --json).
            let text = if out.json {
                serde_json::to_string(&export)?
            } else {
                serde_json::to_string_pretty(&export)?
            };
            out.emit(&text, serde_json::to_value(&export)?)?;
        }
    }
    Ok(())
}

async fn import(engine: &Engine, out: Out, file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file)
        .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", file.display())))?;
    let count = engine.import(&bytes)?;
    // Durable now: acknowledge before pushing.
    out.emit(
        format!("queued {count} setting(s) from {}", file.display()),
        json!({ "queued": count, "file": file }),
    )?;
    push_after_edit(engine, out).await
}

async fn activity(engine: &Engine, out: Out, limit: u32) -> anyhow::Result<()> {
    for entry in engine.activity(limit).await? {
        let human = format!(
            "{}  {}  {}  {}",
            rfc3339(entry.created_at),
            entry.action,
            entry
                .device_name
                .as_deref()
                .or(entry.device_id.as_deref())
                .unwrap_or("-"),
            entry.ip_address
        );
        out.emit(human, serde_json::to_value(&entry)?)?;
    }
    Ok(())
}
