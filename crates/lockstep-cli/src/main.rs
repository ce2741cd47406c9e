//! `lockstep`: the command-line client of Lockstep. It signs a profile (one device identity on
//! this machine) in to a Lockstep server, reads and edits settings from the local cache, syncs,
//! watches changes live, manages devices and two-factor authentication, and exports and imports
//! settings. It is a thin front end: every rule lives in `lockstep-core`; this crate parses the
//! command line, calls the engine and prints (human-readable lines, or one JSON object per line
//! with `--json`). Secrets live only in the OS keychain; a password is never taken from the
//! command line.

mod commands;
mod exit;
mod input;
mod output;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use lockstep_core::profile::ProfileArgs;

const LONG_ABOUT: &str = "\
The Lockstep command-line client: settings that sync across your devices.

Each profile (--profile) is one device identity on this machine, with its own directory under
--home and its own entries in the OS keychain. The first use of a profile needs --server and
--anon-key (or LOCKSTEP_SERVER and LOCKSTEP_ANON_KEY); they are remembered. Passwords come from
LOCKSTEP_PASSWORD or a prompt, never from the command line. Reads (get, export) use the local
cache and work offline; edits (set, reset, import) are saved locally first and synced at once
when the server can be reached. With --json every result is one JSON object per line.

Exit codes:
  0   ok
  1   a check failed (e.g. a wrong code for `mfa code`), or an error of no other kind
  2   usage error
  3   invalid input (the settings schema refused a value, a bad import file or device name)
  4   not signed in, or signed out (here or by another device)
  5   the server cannot be reached (only for commands that need it)
  6   the server refused the request (other API errors)
  7   the OS keychain is not available
  8   two-factor authentication is on: a code is needed
  10  local storage error (or another lockstep process is using the profile)";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "lockstep", version, about = "The Lockstep command-line client", long_about = LONG_ABOUT)]
pub struct Cli {
    /// Which profile, where it lives and which server it uses.
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Machine output: one JSON object per line.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account and sign this device in (password from LOCKSTEP_PASSWORD or a prompt).
    Signup { email: String },
    /// Sign this device in (password from LOCKSTEP_PASSWORD or a prompt).
    Login {
        email: String,
        /// The authenticator code, when the account has two-factor authentication.
        #[arg(long, env = "LOCKSTEP_CODE", hide_env_values = true)]
        code: Option<String>,
    },
    /// Sign out this device (or every other device, or everywhere).
    Logout {
        /// End every other session of the account; this device stays signed in.
        #[arg(long, conflicts_with = "everywhere")]
        others: bool,
        /// End every session of the account, this one included.
        #[arg(long)]
        everywhere: bool,
        /// Sign out even though edits made here have not reached the server (they are lost).
        /// Without it, a sign-out that would lose edits is refused (exit code 9).
        #[arg(long)]
        discard_pending: bool,
    },
    /// Show the account, the connection, pending edits and this device.
    Status,
    /// Show effective settings from the local cache (no network).
    Get {
        /// One key; all settings when omitted.
        key: Option<String>,
        /// Show sensitive values (integrations.*) instead of masking them.
        #[arg(long)]
        reveal: bool,
    },
    /// Set a key (VALUE is JSON, or else taken as a string), then sync it.
    Set {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Reset a key to its default everywhere, then sync it.
    Reset { key: String },
    /// Keep a key on this device only (`on`), or share it again (`off`).
    DeviceOnly { key: String, state: OnOff },
    /// Every value a key had on this device, newest first (set here or arrived from another
    /// device; the last 50 are kept).
    History { key: String },
    /// Set a key back to a value from its history (by default the one before the current), as
    /// a new edit that syncs like any other.
    Restore {
        key: String,
        /// The version to restore (the `#` in `lockstep history KEY`).
        #[arg(long, value_name = "N")]
        version: Option<i64>,
    },
    /// Push local edits and pull changes made elsewhere.
    Sync,
    /// Edits the server refused for good: list them, send them again, or give them up.
    #[command(subcommand, name = "set-aside")]
    SetAside(SetAsideCommand),
    /// Stay in sync and print every event until Ctrl-C (or until signed out: exit code 4).
    Watch {
        /// How often to poll when the live stream cannot be used.
        #[arg(long, value_name = "MS")]
        poll_interval_ms: Option<u64>,
        /// The change stream's URL (tests).
        #[arg(long, hide = true)]
        stream_url: Option<String>,
    },
    /// List the account's devices.
    Devices,
    /// Rename a device.
    RenameDevice { id: String, name: String },
    /// Revoke another device: it is signed out and wipes itself.
    Revoke { device_id: String },
    /// Two-factor authentication.
    #[command(subcommand)]
    Mfa(MfaCommand),
    /// Write the settings that were set as a JSON document (to stdout without FILE).
    Export { file: Option<PathBuf> },
    /// Queue the settings of an export document, then sync them.
    Import { file: PathBuf },
    /// Show the account's security log.
    Activity {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum SetAsideCommand {
    /// List the refused edits with the server's reasons.
    List,
    /// Send the refused edits of KEY (all without KEY) again, then sync.
    Retry { key: Option<String> },
    /// Give up on the refused edits of KEY (all without KEY): they are removed for good.
    Drop { key: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Add an authenticator app: prints its URI and secret, then reads a code from it.
    Enroll {
        /// The authenticator's name.
        #[arg(long, default_value = "Authenticator")]
        name: String,
        /// Also write the QR code (SVG) to this file.
        #[arg(long, value_name = "FILE")]
        qr: Option<PathBuf>,
        /// The first code (else read from standard input).
        #[arg(long, env = "LOCKSTEP_CODE", hide_env_values = true)]
        code: Option<String>,
    },
    /// Verify a code for this session (step-up), or a recovery code with --recovery.
    Verify {
        #[arg(long)]
        recovery: bool,
        #[arg(long, env = "LOCKSTEP_CODE", hide_env_values = true)]
        code: Option<String>,
    },
    /// Turn two-factor authentication off (needs a code).
    Disable {
        #[arg(long, env = "LOCKSTEP_CODE", hide_env_values = true)]
        code: Option<String>,
    },
    /// Check a code offline against this device's copy of the secret: exit 0 if valid, 1 if not.
    Code { code: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = output::Out { json: cli.json };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            out.error(&format!("cannot start: {err}"), exit::CHECK_FAILED);
            return ExitCode::from(exit::CHECK_FAILED);
        }
    };
    let result = runtime.block_on(commands::run(cli, out));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            let code = exit::exit_code(&err);
            if !matches!(err.downcast_ref(), Some(exit::CliError::Silent(_))) {
                out.error(&exit::message(&err), code);
            }
            ExitCode::from(code)
        }
    }
}
