//! The `lockstep-desktop` binary: see the library.
// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    lockstep_desktop::run();
}
