//! Encryption at rest for sensitive values (integration API keys, later TOTP secrets).
//!
//! AES-256-GCM with a key derived per context by HKDF-SHA256 from a master key: the context
//! (e.g. the user id, or a factor id) is HKDF's `info`, so a ciphertext copied to another row
//! does not open. The associated data binds it further (e.g. to the setting's key). The sealed
//! text names the master key's id, so master keys can be rotated: new values use the active
//! key, old ones stay readable as long as their key is configured.
//!
//! Format: `enc:v1:<key id>:<base64url(nonce ‖ ciphertext)>`.

use std::{collections::BTreeMap, fmt};

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "enc:v1:";

/// The master keys by id, and which one seals new values.
#[derive(Clone)]
pub struct DataKeys {
    active: String,
    keys: BTreeMap<String, [u8; 32]>,
}

impl fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DataKeys {{ active: {}, ids: {:?} }}",
            self.active,
            self.keys.keys()
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("no master key with id {0} is configured")]
    UnknownKey(String),
    #[error("sealed value does not open with its key (wrong key, row or tampering)")]
    Corrupt,
}

impl DataKeys {
    /// Keys from `id:base64url` entries; the first is the active one.
    pub fn parse(spec: &str) -> Result<DataKeys, String> {
        let mut keys = BTreeMap::new();
        let mut active = None;
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, b64) = entry
                .split_once(':')
                .ok_or("data keys are written id:base64url,id:base64url")?;
            let bytes = URL_SAFE_NO_PAD
                .decode(b64)
                .map_err(|_| format!("data key {id} is not base64url"))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| format!("data key {id} must be 32 bytes"))?;
            if id.is_empty() || id.contains(':') {
                return Err("a data key id must be non-empty and without ':'".into());
            }
            active.get_or_insert_with(|| id.to_owned());
            keys.insert(id.to_owned(), key);
        }
        let active = active.ok_or("at least one data key is needed")?;
        Ok(DataKeys { active, keys })
    }

    /// A new random key with the given id, in the `id:base64url` form [`DataKeys::parse`] reads.
    pub fn generate_spec(id: &str) -> String {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        format!("{id}:{}", URL_SAFE_NO_PAD.encode(key))
    }

    /// `("data:<id>", fingerprint)` for each master key (see [`crate::keys::fingerprint`]).
    pub fn fingerprints(&self) -> Vec<(String, String)> {
        self.keys
            .iter()
            .map(|(id, key)| {
                let name = format!("data:{id}");
                let fingerprint = crate::keys::fingerprint(key, &name);
                (name, fingerprint)
            })
            .collect()
    }

    fn cipher(&self, key_id: &str, context: &[u8]) -> Result<Aes256Gcm, SealError> {
        let master = self
            .keys
            .get(key_id)
            .ok_or_else(|| SealError::UnknownKey(key_id.into()))?;
        let hk = Hkdf::<Sha256>::new(Some(b"lockstep-cloud sealing v1"), master);
        let mut derived = [0u8; 32];
        hk.expand(context, &mut derived)
            .map_err(|_| SealError::Malformed)?;
        Aes256Gcm::new_from_slice(&derived).map_err(|_| SealError::Malformed)
    }

    /// Encrypts `plaintext` for `context`, bound to `aad`.
    pub fn seal(&self, context: &[u8], aad: &[u8], plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = self
            .cipher(&self.active, context)
            .expect("the active key is configured");
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        format!("{PREFIX}{}:{}", self.active, URL_SAFE_NO_PAD.encode(blob))
    }

    /// Decrypts what [`DataKeys::seal`] produced for the same context and aad.
    pub fn open(&self, context: &[u8], aad: &[u8], sealed: &str) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(PREFIX).ok_or(SealError::Malformed)?;
        let (key_id, b64) = rest.split_once(':').ok_or(SealError::Malformed)?;
        let blob = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| SealError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SealError::Malformed)?;
        self.cipher(key_id, context)?
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::Corrupt)
    }

    /// Whether stored text is sealed.
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_context() {
        let keys = DataKeys::parse(&DataKeys::generate_spec("k1")).unwrap();
        let sealed = keys.seal(b"user-1", b"integrations.github", b"ghp_secret");
        assert!(DataKeys::is_sealed(&sealed));
        assert!(!sealed.contains("ghp_secret"));
        assert_eq!(
            keys.open(b"user-1", b"integrations.github", &sealed)
                .unwrap(),
            b"ghp_secret"
        );
        assert_eq!(
            keys.open(b"user-2", b"integrations.github", &sealed),
            Err(SealError::Corrupt)
        );
        assert_eq!(
            keys.open(b"user-1", b"integrations.other", &sealed),
            Err(SealError::Corrupt)
        );
        assert_eq!(
            keys.open(b"user-1", b"", "enc:v1:k1:AAAA"),
            Err(SealError::Malformed)
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old_spec = DataKeys::generate_spec("k1");
        let old = DataKeys::parse(&old_spec).unwrap();
        let sealed_before = old.seal(b"u", b"", b"v1");
        let rotated =
            DataKeys::parse(&format!("{},{old_spec}", DataKeys::generate_spec("k2"))).unwrap();
        assert_eq!(rotated.open(b"u", b"", &sealed_before).unwrap(), b"v1");
        let sealed_after = rotated.seal(b"u", b"", b"v2");
        assert!(sealed_after.starts_with("enc:v1:k2:"));
        assert_eq!(
            old.open(b"u", b"", &sealed_after),
            Err(SealError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn bad_key_specs_are_refused() {
        assert!(DataKeys::parse("").is_err());
        assert!(DataKeys::parse("k1").is_err());
        assert!(DataKeys::parse("k1:short").is_err());
    }
}
