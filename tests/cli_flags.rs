//! `lockstep-desktop --help` and `--version` (and `-h`, `-V`) print clap's text and exit with
//! status 0 before anything else: no log line, keychain or window. Runs the built binary with
//! no display and no session bus, where opening a window would fail.
#![allow(clippy::unwrap_used)]

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs the app with `args` and no display; its status, stdout and stderr (killed after 30 s).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep-desktop"))
        .args(args)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("LOCKSTEP_HOME", home.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), out, err)
}

#[test]
fn help_prints_the_usage_and_exits() {
    for flag in ["--help", "-h"] {
        for args in [
            vec![flag],
            vec!["--profile", "work", flag, "--webdriver-port=4444"],
        ] {
            let (code, out, err) = run(&args);
            assert_eq!(code, Some(0), "{args:?}: {out}{err}");
            assert!(
                out.starts_with("The Lockstep desktop app"),
                "{args:?}: only the help on stdout: {out}"
            );
            assert!(out.contains("Usage: lockstep-desktop"), "{args:?}: {out}");
            assert!(out.contains("--profile <NAME>"), "{args:?}: {out}");
            assert_eq!(err, "", "{args:?}: nothing else runs");
        }
    }
}

#[test]
fn version_prints_the_version_and_exits() {
    for flag in ["--version", "-V"] {
        let (code, out, err) = run(&[flag]);
        assert_eq!(code, Some(0), "{flag}: {out}{err}");
        assert_eq!(
            out,
            format!("lockstep-desktop {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
        assert_eq!(err, "", "{flag}: nothing else runs");
    }
}
