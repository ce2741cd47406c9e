//! Wire types and rules shared by `lockstep-cloud` and its clients.
//!
//! Everything that crosses the network between a Lockstep client and the cloud is defined here
//! once: the Supabase-compatible auth shapes ([`auth`]), device rows ([`devices`]), audit entries
//! ([`audit`]), settings sync ([`sync`], stamped by [`hlc`]) and the rules both sides must agree
//! on (password strength, device descriptions, the settings schema in [`settings`] and the
//! last-writer-wins merge in [`sync`]).
//!
//! This crate knows nothing of HTTP frameworks, databases or Tauri: it is plain data and pure
//! functions, so the server and every client can depend on it cheaply.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod devices;
pub mod hlc;
pub mod password;
pub mod settings;
pub mod sync;
