//! This device's own name, when it changes while the engine runs: renamed here
//! ([`Engine::rename_device`] of this device) or by another device (the feed's device update,
//! [`FeedEffect::RenamedHere`](crate::feed::FeedEffect::RenamedHere)).
//!
//! The new name is taken everywhere at once: [`Engine::profile`] answers it, the client sends it
//! in its device headers and in the device it describes at sign-in (so signing in again does not
//! rename the device back on the server), and `profile.json` keeps it across restarts. A name
//! given on the command line (`--device-name`, `LOCKSTEP_DEVICE_NAME`) still wins at the next
//! start, as it always did.
//!
//! Only the engine that applies the feed (the one running the profile's live loop) hears of a
//! rename; another process on the profile takes the name at its next start.

use std::sync::OnceLock;

use lockstep_protocol::devices::validate_device_name;

use crate::{
    engine::{Engine, Profile},
    profile::ProfileConfig,
};

/// The profile as renamed while the engine runs, oldest first: an append-only chain, so
/// [`Engine::profile`] can go on handing out plain references (each rename keeps one small
/// `Profile`, and renames are rare).
#[derive(Debug, Default)]
pub(crate) struct Renames(OnceLock<Box<(Profile, Renames)>>);

impl Renames {
    /// The newest version of `first`.
    pub(crate) fn latest<'a>(&'a self, first: &'a Profile) -> &'a Profile {
        let (mut current, mut next) = (first, self);
        while let Some(node) = next.0.get() {
            current = &node.0;
            next = &node.1;
        }
        current
    }

    /// Makes `profile` the newest version.
    fn push(&self, profile: Profile) {
        let mut next = self;
        let mut node = Box::new((profile, Renames::default()));
        loop {
            match next.0.get() {
                Some(later) => next = &later.1,
                // Another rename was appended first: go on past it.
                None => match next.0.set(node) {
                    Ok(()) => return,
                    Err(back) => node = back,
                },
            }
        }
    }
}

impl Engine {
    /// Takes `name` as this device's name (see the module's doc). A name the rules refuse, or
    /// the one it has, changes nothing. A `profile.json` that cannot be written is logged:
    /// the name still holds for this run.
    pub(crate) async fn take_device_name(&self, name: &str) {
        let name = name.trim();
        if name == self.profile().device.name || validate_device_name(name).is_err() {
            return;
        }
        let mut renamed = self.profile().clone();
        renamed.device.name = name.to_owned();
        self.session().client().set_device_name(name);
        let dir = renamed.dir.clone();
        self.renames.push(renamed);
        let saved = {
            let name = name.to_owned();
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let mut config = ProfileConfig::load(&dir)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no profile.json in {}", dir.display()))?;
                config.device_name = name;
                config.save(&dir).map_err(|e| e.to_string())
            })
            .await
        };
        match saved {
            Ok(Ok(())) => tracing::info!("this device was renamed"),
            Ok(Err(error)) => tracing::warn!(%error, "could not keep this device's new name"),
            Err(error) => tracing::warn!(%error, "could not keep this device's new name"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> Profile {
        Profile {
            name: "p".into(),
            dir: "/nowhere".into(),
            device: lockstep_protocol::devices::DeviceInfo {
                id: "d".into(),
                name: name.into(),
                platform: "linux".into(),
                app_version: "1".into(),
            },
            history_limit: 1,
        }
    }

    #[test]
    fn the_newest_rename_is_the_profile() {
        let first = profile("A");
        let renames = Renames::default();
        assert_eq!(renames.latest(&first).device.name, "A");
        renames.push(profile("B"));
        renames.push(profile("C"));
        assert_eq!(renames.latest(&first).device.name, "C");
    }
}
