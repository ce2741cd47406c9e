//! The system packages the build and the tests need, installed with apt on
//! Debian-like systems.
//!
//! Each [`Package`] pairs a Debian package with a cheap probe that tells
//! whether it (or an equivalent) is already there. [`ensure`] installs the
//! missing ones in one go: as root directly, otherwise through `sudo -n`;
//! when neither works it fails with the exact command to run by hand.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Result, bail};

use crate::cmd;

/// What every build of the workspace needs.
/// What the test suite needs besides the build: QR codes are checked by rasterising the SVG
/// (`rsvg-convert`) and decoding it with a real barcode reader (`zbarimg`); the keychain is
/// tested against a real Secret Service, gnome-keyring on a private D-Bus session bus (see
/// [`crate::keyring`]).
pub const TEST_TOOLS: &[Package] = &[
    Package::binary("rsvg-convert", "librsvg2-bin"),
    Package::binary("zbarimg", "zbar-tools"),
    // `dbus-daemon` on Debian 12+, which `dbus` depends on; `dbus` itself on older releases.
    Package::binary("dbus-run-session", "dbus"),
    Package::binary("gnome-keyring-daemon", "gnome-keyring"),
    Package::binary("gdbus", "libglib2.0-bin"),
    // The desktop app's end-to-end test: a virtual display, WebKitGTK's WebDriver, a screenshot
    // tool, and a mock notification daemon on the session bus.
    Package::binary("xvfb-run", "xvfb"),
    Package::binary("WebKitWebDriver", "webkit2gtk-driver"),
    Package::binary("import", "imagemagick"),
    Package::check(has_dbusmock, "python3-dbusmock"),
    // The window's view logic is unit-tested with Node's test runner after `tsc`.
    Package::binary("node", "nodejs"),
    Package::binary("npm", "npm"),
];

pub const BUILD: &[Package] = &[
    // A C compiler and linker: rustc links through `cc`, and some crates
    // (e.g. the bundled SQLite) compile C code.
    Package::binary("cc", "build-essential"),
    // Finds the system libraries the desktop app links against.
    Package::binary("pkg-config", "pkg-config"),
    // The desktop app (Tauri 2 on WebKitGTK): the webview, GTK, the tray, icons, HTTP.
    Package::deb("libwebkit2gtk-4.1-dev"),
    Package::deb("libgtk-3-dev"),
    Package::deb("libayatana-appindicator3-dev"),
    Package::deb("librsvg2-dev"),
    Package::deb("libsoup-3.0-dev"),
];

/// Whether Debian's Python has `dbusmock` (the end-to-end test runs `/usr/bin/python3`).
fn has_dbusmock() -> bool {
    cmd::output(Command::new("/usr/bin/python3").args(["-c", "import dbusmock"])).is_ok()
}

/// How to tell whether a package is already installed.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// An executable of this name is on `PATH`.
    Binary(&'static str),
    /// `dpkg-query` reports the Debian package as installed. The right probe
    /// for `-dev` libraries. Without `dpkg-query` (a non-Debian system) there
    /// is no way to tell, and the package is assumed present.
    Deb,
    /// A custom check returns `true`.
    Check(fn() -> bool),
}

/// A Debian package and how to tell whether it is installed.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    /// The Debian package that provides it.
    pub deb: &'static str,
    /// How to tell whether it is already installed.
    pub probe: Probe,
    /// Whether a missing package must stop the task when xtask cannot install
    /// it (no apt, or no root rights); otherwise a warning is printed.
    pub essential: bool,
}

impl Package {
    /// An essential package that provides the executable `binary`.
    pub const fn binary(binary: &'static str, deb: &'static str) -> Self {
        Self {
            deb,
            probe: Probe::Binary(binary),
            essential: true,
        }
    }

    /// An essential package probed with `dpkg-query`, like a `-dev` library.
    pub const fn deb(deb: &'static str) -> Self {
        Self {
            deb,
            probe: Probe::Deb,
            essential: true,
        }
    }

    /// An essential package probed by `check`.
    pub const fn check(check: fn() -> bool, deb: &'static str) -> Self {
        Self {
            deb,
            probe: Probe::Check(check),
            essential: true,
        }
    }

    /// Whether the package (or something equivalent) is already there.
    pub fn is_installed(&self) -> bool {
        match self.probe {
            Probe::Binary(binary) => cmd::find_program(binary).is_some(),
            Probe::Deb => deb_installed(self.deb).unwrap_or(true),
            Probe::Check(check) => check(),
        }
    }
}

/// Asks `dpkg-query` whether `deb` is installed; `None` without dpkg.
fn deb_installed(deb: &str) -> Option<bool> {
    let dpkg_query = cmd::find_program("dpkg-query")?;
    let status = cmd::output(Command::new(dpkg_query).args(["-W", "-f=${Status}", deb]))
        // dpkg-query fails for packages it has never heard of.
        .unwrap_or_default();
    Some(status.trim() == "install ok installed")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    static IS_ROOT: OnceLock<bool> = OnceLock::new();
    *IS_ROOT.get_or_init(|| {
        cmd::output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
    })
}

/// Installs whichever of `packages` are missing.
///
/// Does nothing (and runs nothing slow) when all are present. When xtask
/// cannot install them (no apt, or no root rights), it says how to, and
/// fails only if an essential package is missing.
pub fn ensure(packages: &[Package]) -> Result<()> {
    let missing: Vec<&Package> = packages.iter().filter(|p| !p.is_installed()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.deb).collect();
    let names_line = names.join(" ");

    let apt = cmd::find_program("apt-get").is_some();
    let Some(elevation) = apt.then(Elevation::detect).flatten() else {
        let how = if apt {
            format!(
                "xtask cannot install them: it is not root, and `sudo` would ask for a password.\n\
                 Install them with\n\n    \
                 sudo apt-get install -y --no-install-recommends {names_line}\n"
            )
        } else {
            "This is not a Debian-like system: install the equivalents with your package manager."
                .to_owned()
        };
        if missing.iter().any(|p| p.essential) {
            bail!("missing system packages: {names_line}\n{how}");
        }
        eprintln!("warning: missing optional system packages: {names_line}\n{how}");
        return Ok(());
    };

    println!("==> installing missing system packages: {names_line}");
    cmd::run(&mut apt_get(elevation, &["update"]))?;
    let mut install = apt_get(elevation, &["install", "-y", "--no-install-recommends"]);
    install.args(&names);
    cmd::run(&mut install)?;

    let still_missing: Vec<&str> = missing
        .iter()
        .filter(|p| !p.is_installed())
        .map(|p| p.deb)
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "apt-get succeeded, but these still seem to be missing: {}; check its output above",
            still_missing.join(" ")
        );
    }
    Ok(())
}

/// How xtask gets the root rights apt needs.
#[derive(Debug, Clone, Copy)]
enum Elevation {
    /// xtask already runs as root.
    Root,
    /// Through `sudo -n`, which works without a password here.
    Sudo,
}

impl Elevation {
    /// `None` when xtask is not root and `sudo` would ask for a password.
    fn detect() -> Option<Self> {
        if is_root() {
            return Some(Self::Root);
        }
        cmd::find_program("sudo")
            .is_some_and(|sudo| cmd::succeeds(Command::new(sudo).args(["-n", "true"])))
            .then_some(Self::Sudo)
    }
}

/// An `apt-get` command that never asks questions, as root or through `sudo -n`.
fn apt_get(elevation: Elevation, args: &[&str]) -> Command {
    let mut cmd = match elevation {
        Elevation::Root => {
            let mut cmd = Command::new("apt-get");
            cmd.env("DEBIAN_FRONTEND", "noninteractive");
            cmd
        }
        Elevation::Sudo => {
            // sudo resets the environment, so pass DEBIAN_FRONTEND through `env`.
            let mut cmd = Command::new("sudo");
            cmd.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            cmd
        }
    };
    cmd.args(args).stdin(Stdio::null());
    cmd
}
