//! Sealing of sensitive values (integration API keys, `integrations.*`) in the profile's files.
//!
//! A sensitive value is written as the JSON string `lockstep-sealed:v1:<base64url(nonce ‖
//! ciphertext)>`: AES-256-GCM of the value's JSON text under this device's local key, which
//! lives in the OS keychain ([`crate::keychain::SecretKind::LocalKey`]), with the setting's key
//! as associated data (a sealed value moved to another key does not open). Everything else in
//! the files stays readable, so a damaged file can still be looked at.
//!
//! A value that does not open (the local key was lost or changed) makes its line or file
//! unreadable, which the store reports as damage; a plain value of a sensitive key (written
//! before sealing existed) is read as is and sealed on the next write.

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use lockstep_protocol::settings;
use rand::RngCore as _;
use serde_json::Value;

const PREFIX: &str = "lockstep-sealed:v1:";

/// The device's local sealing key. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct LocalSeal {
    cipher: Aes256Gcm,
    /// Names the key without revealing it (see [`LocalSeal::fingerprint`]).
    fingerprint: i64,
}

impl std::fmt::Debug for LocalSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalSeal { .. }")
    }
}

impl LocalSeal {
    pub fn new(key: &[u8; 32]) -> LocalSeal {
        use sha2::{Digest as _, Sha256};
        let digest = Sha256::new()
            .chain_update(b"lockstep local seal fingerprint")
            .chain_update(key)
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        LocalSeal {
            cipher: Aes256Gcm::new(key.into()),
            fingerprint: i64::from_le_bytes(first),
        }
    }

    /// A number that names this key (a one-way hash of it): the profile's database records the
    /// key its values are sealed with, so that a process still holding an older key (the
    /// profile was wiped and given a new one by another process) notices.
    pub fn fingerprint(&self) -> i64 {
        self.fingerprint
    }

    /// A fresh random key, base64url (how it is kept in the keychain).
    pub fn generate_key() -> String {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        URL_SAFE_NO_PAD.encode(key)
    }

    /// The key kept in the keychain, or `None` if it is not a valid key.
    pub fn from_keychain_text(text: &str) -> Option<LocalSeal> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let key: [u8; 32] = bytes.try_into().ok()?;
        Some(LocalSeal::new(&key))
    }

    fn seal(&self, key: &str, value: &Value) -> Value {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let plain = value.to_string();
        let Ok(sealed) = self.cipher.encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plain.as_bytes(),
                aad: key.as_bytes(),
            },
        ) else {
            // AES-GCM fails only on absurd lengths; never write the plain value.
            return Value::Null;
        };
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Value::String(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    fn open(&self, key: &str, text: &str) -> Option<Value> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let (nonce, sealed) = bytes.split_at_checked(12)?;
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: key.as_bytes(),
                },
            )
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }
}

/// The value of `key` as written to a file: sealed if the key is sensitive (and not null).
pub(crate) fn seal_value(seal: Option<&LocalSeal>, key: &str, value: &Value) -> Value {
    match seal {
        Some(seal) if settings::is_sensitive(key) && !value.is_null() => seal.seal(key, value),
        _ => value.clone(),
    }
}

/// The value of `key` as read from a file: opened if sealed. `None` when it is sealed and does
/// not open (or there is no key to open it with).
pub(crate) fn open_value(seal: Option<&LocalSeal>, key: &str, value: Value) -> Option<Value> {
    match value.as_str().and_then(|s| s.strip_prefix(PREFIX)) {
        Some(text) => seal?.open(key, text),
        None => Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sensitive_values_are_sealed_and_open_only_under_their_key() {
        let seal = LocalSeal::from_keychain_text(&LocalSeal::generate_key()).unwrap();
        let sealed = seal_value(Some(&seal), "integrations.github", &json!("ghp_secret"));
        let text = sealed.as_str().unwrap();
        assert!(
            text.starts_with(PREFIX) && !text.contains("ghp_secret"),
            "{text}"
        );
        assert_eq!(
            open_value(Some(&seal), "integrations.github", sealed.clone()),
            Some(json!("ghp_secret"))
        );
        assert_eq!(
            open_value(Some(&seal), "integrations.other", sealed.clone()),
            None
        );
        let other = LocalSeal::from_keychain_text(&LocalSeal::generate_key()).unwrap();
        assert_eq!(
            open_value(Some(&other), "integrations.github", sealed.clone()),
            None
        );
        assert_eq!(open_value(None, "integrations.github", sealed), None);
    }

    #[test]
    fn other_values_are_left_alone() {
        let seal = LocalSeal::from_keychain_text(&LocalSeal::generate_key()).unwrap();
        assert_eq!(
            seal_value(Some(&seal), "appearance.theme", &json!("dark")),
            json!("dark")
        );
        assert_eq!(
            seal_value(Some(&seal), "integrations.github", &Value::Null),
            Value::Null
        );
        assert_eq!(
            open_value(Some(&seal), "integrations.github", json!("plain")),
            Some(json!("plain"))
        );
        assert!(LocalSeal::from_keychain_text("short").is_none());
    }
}
