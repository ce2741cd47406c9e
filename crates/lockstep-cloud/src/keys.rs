//! Server secrets: the JWT signing secret and the API keys, generated on first run.
//!
//! Stored in `<data dir>/secrets.json`, created with mode 0600. Each can be overridden by the
//! environment (`LOCKSTEP_JWT_SECRET`, `LOCKSTEP_ANON_KEY`, `LOCKSTEP_SERVICE_KEY`), which is how
//! several nodes sharing one database are given the same keys. `LOCKSTEP_DATA_KEYS` gives the
//! master keys for encryption at rest (`id:base64url,…`, the first seals new values).

use std::{fmt, fs, io::Write, path::Path};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::sealing::DataKeys;

/// Which key a request presented in `apikey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyRole {
    Anon,
    Service,
}

/// The server's secrets. `Debug` never prints them.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServerKeys {
    pub jwt_secret: String,
    pub anon_key: String,
    pub service_key: String,
    /// Master keys for [`crate::sealing`], as `id:base64url,…` (first = active).
    #[serde(default)]
    pub data_keys: String,
}

impl fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKeys { .. }")
    }
}

impl ServerKeys {
    /// Fresh random keys.
    pub fn generate() -> Self {
        ServerKeys {
            jwt_secret: random_token(32),
            anon_key: format!("lsk_anon_{}", random_token(24)),
            service_key: format!("lsk_service_{}", random_token(32)),
            data_keys: DataKeys::generate_spec("k1"),
        }
    }

    /// Loads the keys from `<data_dir>/secrets.json`, creating the file (0600) on first run, then
    /// applies environment overrides.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("secrets.json");
        let mut keys = match fs::read(&path) {
            Ok(bytes) => {
                let mut keys: ServerKeys = serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is not valid; fix or remove it", path.display())
                })?;
                if keys.data_keys.is_empty() {
                    // Written by a version without encryption at rest: add a master key.
                    keys.data_keys = DataKeys::generate_spec("k1");
                    write_private(&path, &serde_json::to_vec_pretty(&keys)?)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                keys
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = ServerKeys::generate();
                write_private(&path, &serde_json::to_vec_pretty(&keys)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                keys
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if let Ok(v) = std::env::var("LOCKSTEP_JWT_SECRET") {
            anyhow::ensure!(
                v.len() >= 32,
                "LOCKSTEP_JWT_SECRET must be at least 32 characters"
            );
            keys.jwt_secret = v;
        }
        if let Ok(v) = std::env::var("LOCKSTEP_ANON_KEY") {
            keys.anon_key = v;
        }
        if let Ok(v) = std::env::var("LOCKSTEP_SERVICE_KEY") {
            keys.service_key = v;
        }
        if let Ok(v) = std::env::var("LOCKSTEP_DATA_KEYS") {
            keys.data_keys = v;
        }
        keys.sealing()
            .context("LOCKSTEP_DATA_KEYS (or data_keys in secrets.json) is invalid")?;
        Ok(keys)
    }

    /// The master keys for encryption at rest.
    pub fn sealing(&self) -> anyhow::Result<DataKeys> {
        DataKeys::parse(&self.data_keys).map_err(anyhow::Error::msg)
    }

    /// One-way fingerprints of the keys every node on one database must share: `jwt`, and
    /// `data:<id>` for each data key (see [`fingerprint`]).
    pub fn fingerprints(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut all = vec![(
            "jwt".to_owned(),
            fingerprint(self.jwt_secret.as_bytes(), "jwt"),
        )];
        all.extend(self.sealing()?.fingerprints());
        Ok(all)
    }

    /// Which role an `apikey` value grants, compared in constant time.
    pub fn role_of(&self, presented: &str) -> Option<ApiKeyRole> {
        let eq = |a: &str| bool::from(a.as_bytes().ct_eq(presented.as_bytes()));
        if eq(&self.anon_key) {
            Some(ApiKeyRole::Anon)
        } else if eq(&self.service_key) {
            Some(ApiKeyRole::Service)
        } else {
            None
        }
    }

    /// A key for HMAC-ing refresh and one-time tokens, derived from the JWT secret so that every
    /// node given the same secret agrees on it.
    pub fn token_key(&self) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"lockstep-cloud"), self.jwt_secret.as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
        let _ = hk.expand(b"token hmac v1", &mut key);
        key
    }
}

/// A one-way fingerprint of a secret: 128 bits of HKDF-SHA256 under a label of its own, so two
/// secrets can be told apart by it and neither can be read from it.
pub fn fingerprint(secret: &[u8], name: &str) -> String {
    let hk = Hkdf::<Sha256>::new(Some(b"lockstep-cloud key fingerprint v1"), secret);
    let mut out = [0u8; 16];
    // 16 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = hk.expand(name.as_bytes(), &mut out);
    URL_SAFE_NO_PAD.encode(out)
}

/// `n` random bytes, base64url without padding.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Writes a file only its owner can read, atomically: a temporary file beside it (created
/// exclusively, mode `0600` on Unix, by `tempfile`), `fsync`, rename. For every file of the
/// server that holds a secret (the keys, mailed links).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ServerKeys::load_or_create(dir.path()).expect("create");
        let again = ServerKeys::load_or_create(dir.path()).expect("reload");
        assert_eq!(first.anon_key, again.anon_key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("secrets.json"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn api_keys_map_to_roles_and_debug_hides_them() {
        let keys = ServerKeys::generate();
        assert_eq!(keys.role_of(&keys.anon_key), Some(ApiKeyRole::Anon));
        assert_eq!(keys.role_of(&keys.service_key), Some(ApiKeyRole::Service));
        assert_eq!(keys.role_of("nope"), None);
        assert!(!format!("{keys:?}").contains(&keys.anon_key));
    }
}
