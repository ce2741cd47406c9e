//! `lockstep-core`: the client side of Lockstep, shared by the desktop app and the `lockstep`
//! command-line client.
//!
//! - [`keychain`]: secrets (refresh token, TOTP secret, the local sealing key) in the OS
//!   keychain, never in a file.
//! - [`store`]: the settings cache, sync cursor and offline outbox, durable on disk.
//! - [`api`]: a typed client of `lockstep-cloud`.
//! - [`session`]: a session kept fresh with single-flight refreshes.
//! - [`engine`]: reads from the cache, durable writes to the outbox, push and pull.
//! - [`feed`]: what a change-feed entry means to this device (pure).
//! - [`plan`]: which pushes carry the outbox (newest change per key; pure).
//! - [`live`]: the live loop: change stream, reconnects, polling fallback, revocation.
//! - [`account`]: sign-up, sign-in, two-factor authentication, devices, activity;
//!   [`credentials`]: the emailed codes (confirming the address, resetting a forgotten
//!   password) and the recovery codes' count and renewal; [`rename`]: this device's own name
//!   when it changes.
//! - [`totp`]: checking a code offline against the keychain's secret (app lock).
//! - [`profile`]: a device identity, its directory and the front ends' shared arguments;
//!   [`transfer`]: export and import; [`typed`]: the known settings as typed keys.
//! - [`report`]: the engine's events and status in the one serialisable form the CLI's `--json`
//!   and the desktop window share.
//!
//! It knows nothing of Tauri or of any UI: front ends consume its API and its event channel.
#![forbid(unsafe_code)]

pub mod account;
pub mod api;
pub mod app_lock;
pub mod credentials;
pub mod engine;
pub mod feed;
pub mod keychain;
pub mod live;
pub mod plan;
pub mod profile;
pub mod rename;
pub mod report;
pub mod session;
pub mod store;
pub mod totp;
pub mod transfer;
pub mod typed;

/// Now, in Unix milliseconds.
pub fn clock_ms() -> i64 {
    lockstep_protocol::timestamp::to_millis(time::OffsetDateTime::now_utc())
}
