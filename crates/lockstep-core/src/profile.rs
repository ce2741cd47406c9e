//! A profile: one device identity on this machine, with its own data directory and keychain
//! namespace, so several devices (two app instances, test profiles) can run side by side.
//!
//! `<base>/profiles/<name>/profile.json` holds what is not secret: the device's id, name and
//! platform, and the server it talks to (URL and anon key, which every client of the server
//! has), and optionally `history_versions`, how many versions of each key the local history
//! keeps (50 when absent). It is written atomically. Secrets live in the keychain under `lockstep:<name>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lockstep_protocol::devices::{DeviceInfo, validate_device_name};
use serde::{Deserialize, Serialize};

use crate::{
    api::Client,
    engine::{Engine, EngineError, Profile},
    keychain::Keychain,
    session::{SessionKeeper, system_clock},
    store::{DEFAULT_HISTORY_LIMIT, StoreError, write_atomic},
};

/// File name of the profile's description.
pub const PROFILE_FILE: &str = "profile.json";

/// What a profile remembers between runs (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileConfig {
    pub device_id: String,
    pub device_name: String,
    pub platform: String,
    pub server_url: String,
    pub anon_key: String,
    /// How many versions of each key the local history keeps (default
    /// [`DEFAULT_HISTORY_LIMIT`]; at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_versions: Option<usize>,
}

/// Why a profile could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile names are 1 to 64 letters, digits, '-' or '_'; {0:?} is not one")]
    BadName(String),
    #[error("invalid device name: {0}")]
    BadDeviceName(String),
    #[error(
        "the profile {0:?} is not set up yet: give --server and --anon-key (or LOCKSTEP_SERVER \
         and LOCKSTEP_ANON_KEY) once"
    )]
    NotConfigured(String),
    #[error("{path} is unreadable ({reason}); remove it to set the profile up again")]
    Unreadable { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Checks a profile name (it becomes a directory name and a keychain service).
pub fn validate_name(name: &str) -> Result<(), ProfileError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ProfileError::BadName(name.to_owned()))
    }
}

/// Where profiles live by default: `$LOCKSTEP_HOME`, else `lockstep` in the platform's data
/// directory (`directories`): `$XDG_DATA_HOME` or `~/.local/share` on Linux, `~/Library/Application
/// Support` on macOS, `%APPDATA%` on Windows. With no home directory at all, `./lockstep`.
pub fn default_base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKSTEP_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    directories::BaseDirs::new().map_or_else(
        || PathBuf::from("lockstep"),
        |dirs| dirs.data_dir().join("lockstep"),
    )
}

/// The directory of profile `name` under `base`.
pub fn profile_dir(base: &Path, name: &str) -> PathBuf {
    base.join("profiles").join(name)
}

impl ProfileConfig {
    /// Reads `<dir>/profile.json`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<ProfileConfig>, ProfileError> {
        let path = dir.join(PROFILE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ProfileError::Unreadable {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read", &path, e).into()),
        }
    }

    /// Writes `<dir>/profile.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ProfileError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create the directory", dir, e))?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| ProfileError::Unreadable {
            path: dir.join(PROFILE_FILE),
            reason: e.to_string(),
        })?;
        write_atomic(&dir.join(PROFILE_FILE), &text)?;
        Ok(())
    }

    /// The device as it describes itself to the server.
    pub fn device(&self) -> DeviceInfo {
        DeviceInfo {
            id: self.device_id.clone(),
            name: self.device_name.clone(),
            platform: self.platform.clone(),
            app_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// How to open a profile.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Override (and remember) the server URL.
    pub server_url: Option<String>,
    /// Override (and remember) the anon key.
    pub anon_key: Option<String>,
    /// Name this device (remembered; the default is `"<profile> on <platform>"`).
    pub device_name: Option<String>,
}

/// Which profile a front end opens, and how: the command-line arguments (and their environment
/// variables) that the CLI and the desktop app share: a `clap::Args` group that each front end
/// flattens into its own parser.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ProfileArgs {
    /// The profile (device identity) to use.
    #[arg(
        id = "profile",
        long = "profile",
        global = true,
        env = "LOCKSTEP_PROFILE",
        default_value = "default",
        value_name = "NAME"
    )]
    pub name: String,
    /// The server's URL (remembered by the profile).
    #[arg(long, global = true, env = "LOCKSTEP_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The server's anon key (remembered by the profile).
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_ANON_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub anon_key: Option<String>,
    /// Where profiles live [default: `lockstep` in the platform's data directory, e.g.
    /// ~/.local/share/lockstep].
    #[arg(long, global = true, env = "LOCKSTEP_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Name this device (remembered by the profile; other devices see it).
    #[arg(long, global = true, env = "LOCKSTEP_DEVICE_NAME", value_name = "NAME")]
    pub device_name: Option<String>,
}

impl ProfileArgs {
    /// The directory profiles live in: `--home`, else [`default_base_dir`].
    pub fn base_dir(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(default_base_dir)
    }

    /// What to open the profile with (an empty server or key counts as not given).
    pub fn open_options(&self) -> OpenOptions {
        let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        OpenOptions {
            server_url: given(&self.server),
            anon_key: given(&self.anon_key),
            device_name: given(&self.device_name),
        }
    }
}

/// An opened profile: its engine and what was found wrong on the way.
#[derive(Debug)]
pub struct Opened {
    pub engine: Arc<Engine>,
    pub config: ProfileConfig,
    /// Problems to show the user (a repaired cache or outbox).
    pub problems: Vec<String>,
}

/// Opens (creating on first use) profile `name` under `base`. The keychain's store must have
/// been chosen already ([`Keychain::use_platform_store`] or [`Keychain::use_mock_store`]).
pub fn open(base: &Path, name: &str, options: OpenOptions) -> Result<Opened, ProfileError> {
    validate_name(name)?;
    let dir = profile_dir(base, name);
    let existing = ProfileConfig::load(&dir)?;
    let mut config = match existing.clone() {
        Some(config) => config,
        None => {
            let (Some(server_url), Some(anon_key)) = (&options.server_url, &options.anon_key)
            else {
                return Err(ProfileError::NotConfigured(name.to_owned()));
            };
            ProfileConfig {
                device_id: uuid::Uuid::new_v4().to_string(),
                device_name: format!("{name} on {}", std::env::consts::OS),
                platform: std::env::consts::OS.to_owned(),
                server_url: server_url.clone(),
                anon_key: anon_key.clone(),
                history_versions: None,
            }
        }
    };
    if let Some(url) = options.server_url {
        config.server_url = url;
    }
    if let Some(key) = options.anon_key {
        config.anon_key = key;
    }
    if let Some(device_name) = options.device_name {
        validate_device_name(&device_name).map_err(ProfileError::BadDeviceName)?;
        config.device_name = device_name;
    }
    if existing.as_ref() != Some(&config) {
        config.save(&dir)?;
    }
    let device = config.device();
    let client = Client::new(&config.server_url, &config.anon_key, device.clone())
        .map_err(EngineError::from)?;
    let keychain = Keychain::for_profile(name);
    let session = SessionKeeper::new(client, keychain.clone(), system_clock());
    let (engine, problems) = Engine::open(
        Profile {
            name: name.to_owned(),
            dir,
            device,
            history_limit: config
                .history_versions
                .unwrap_or(DEFAULT_HISTORY_LIMIT)
                .max(1),
        },
        session,
        keychain,
    )?;
    Ok(Opened {
        engine: Arc::new(engine),
        config,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("laptop-1").is_ok());
        for bad in ["", "a/b", "..", "x".repeat(65).as_str(), "sp ace"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_profile_needs_a_server_once_and_remembers_it() {
        Keychain::use_mock_store();
        let base = tempfile::tempdir().unwrap();
        let err = open(base.path(), "p1", OpenOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--server"), "{err}");
        let options = OpenOptions {
            server_url: Some("http://127.0.0.1:9".into()),
            anon_key: Some("anon".into()),
            device_name: Some("Work laptop".into()),
        };
        let first = open(base.path(), "p1", options).unwrap();
        let id = first.config.device_id.clone();
        drop(first);
        let again = open(base.path(), "p1", OpenOptions::default()).unwrap();
        assert_eq!(again.config.device_id, id, "the device keeps its identity");
        assert_eq!(again.config.device_name, "Work laptop");
        assert_eq!(again.config.server_url, "http://127.0.0.1:9");
    }

    #[test]
    fn the_profile_sets_how_many_versions_the_history_keeps() {
        Keychain::use_mock_store();
        let base = tempfile::tempdir().unwrap();
        let options = OpenOptions {
            server_url: Some("http://127.0.0.1:9".into()),
            anon_key: Some("anon".into()),
            device_name: None,
        };
        let first = open(base.path(), "p2", options).unwrap();
        let dir = first.engine.profile().dir.clone();
        assert_eq!(first.engine.profile().history_limit, DEFAULT_HISTORY_LIMIT);
        drop(first);
        let mut config = ProfileConfig::load(&dir).unwrap().unwrap();
        config.history_versions = Some(2);
        config.save(&dir).unwrap();

        let opened = open(base.path(), "p2", OpenOptions::default()).unwrap();
        for n in 0..4 {
            opened
                .engine
                .set("custom.kept", serde_json::json!(n))
                .unwrap();
        }
        let history = opened.engine.history("custom.kept").unwrap();
        let values: Vec<_> = history.into_iter().map(|h| h.value).collect();
        assert_eq!(
            values,
            [Some(serde_json::json!(3)), Some(serde_json::json!(2))]
        );
    }
}
