//! The `lockstep-desktop` binary: see the library.
// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    // `--help`/`-h` and `--version`/`-V` print clap's text and exit (status 0) before anything
    // else: no log line, keychain, D-Bus or window. The launch's own parser prints them (its
    // clap command knows the options) and exits.
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| "lockstep-desktop".into());
    if let Some(flag) = info_flag(args) {
        lockstep_desktop::shell::parse_launch([program, flag.into()]);
        // Not reached: clap exits once it has printed.
        return;
    }
    lockstep_desktop::run();
}

/// `--help` or `--version` when an argument (after the program) asks for either, in its long or
/// short form, wherever it stands (as the launch's parser finds its options among foreign ones).
fn info_flag(args: impl Iterator<Item = std::ffi::OsString>) -> Option<&'static str> {
    args.into_iter().find_map(|arg| match arg.to_str() {
        Some("--help" | "-h") => Some("--help"),
        Some("--version" | "-V") => Some("--version"),
        _ => None,
    })
}
