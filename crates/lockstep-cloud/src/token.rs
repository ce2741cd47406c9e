//! Tokens: JWT access tokens (HS256, GoTrue's claims), refresh tokens derived from
//! (session, counter) by HMAC, and one-time email tokens stored only as HMACs.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lockstep_protocol::auth::{AmrEntry, AppMetadata};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// The claims of an access token, as GoTrue writes them (plus `device_id`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub role: String,
    pub aal: String,
    pub amr: Vec<AmrEntry>,
    pub session_id: String,
    pub email: String,
    pub phone: String,
    pub app_metadata: AppMetadata,
    pub user_metadata: serde_json::Map<String, serde_json::Value>,
    pub is_anonymous: bool,
    pub device_id: String,
}

/// Why an access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Invalid,
    Expired,
}

pub fn sign_access_token(secret: &str, claims: &AccessClaims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Verifies signature and audience; expiry is checked against `now` (the injected clock).
pub fn verify_access_token(secret: &str, token: &str, now: i64) -> Result<AccessClaims, JwtError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    validation.set_audience(&["authenticated"]);
    let data = jsonwebtoken::decode::<AccessClaims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|_| JwtError::Invalid)?;
    if data.claims.exp <= now {
        return Err(JwtError::Expired);
    }
    Ok(data.claims)
}

/// A refresh token names its session and counter and carries an HMAC over both (and the
/// session's salt), so nothing secret is stored and any node with the key can check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub session_id: Uuid,
    pub counter: i64,
    tag: [u8; 32],
}

const REFRESH_LEN: usize = 16 + 8 + 32;

impl RefreshToken {
    /// Mints the token for this session at this counter.
    pub fn mint(key: &[u8; 32], session_id: Uuid, salt: &[u8], counter: i64) -> String {
        let tag = refresh_tag(key, session_id, salt, counter);
        let mut bytes = Vec::with_capacity(REFRESH_LEN);
        bytes.extend_from_slice(session_id.as_bytes());
        bytes.extend_from_slice(&counter.to_be_bytes());
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads the token's parts; says nothing yet about whether it is genuine.
    pub fn parse(token: &str) -> Option<RefreshToken> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        if bytes.len() != REFRESH_LEN {
            return None;
        }
        let session_id = Uuid::from_slice(&bytes[..16]).ok()?;
        let counter = i64::from_be_bytes(bytes[16..24].try_into().ok()?);
        let tag = bytes[24..].try_into().ok()?;
        Some(RefreshToken {
            session_id,
            counter,
            tag,
        })
    }

    /// Whether the server minted this token for a session with this salt (constant time).
    pub fn is_genuine(&self, key: &[u8; 32], salt: &[u8]) -> bool {
        refresh_mac(key, self.session_id, salt, self.counter)
            .verify_slice(&self.tag)
            .is_ok()
    }
}

fn refresh_mac(key: &[u8; 32], session_id: Uuid, salt: &[u8], counter: i64) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"refresh-token\0");
    mac.update(session_id.as_bytes());
    mac.update(salt);
    mac.update(&counter.to_be_bytes());
    mac
}

fn refresh_tag(key: &[u8; 32], session_id: Uuid, salt: &[u8], counter: i64) -> [u8; 32] {
    refresh_mac(key, session_id, salt, counter)
        .finalize()
        .into_bytes()
        .into()
}

/// HMAC of an emailed link token, as stored.
pub fn hash_link_token(key: &[u8; 32], token: &str) -> String {
    keyed_hex(key, &[b"link-token\0", token.trim().as_bytes()])
}

/// HMAC of an emailed 6-digit code for a user, as stored.
pub fn hash_code(key: &[u8; 32], user_id: &str, code: &str) -> String {
    keyed_hex(
        key,
        &[
            b"email-code\0",
            user_id.as_bytes(),
            b"\0",
            code.trim().as_bytes(),
        ],
    )
}

/// A fresh 6-digit code.
pub fn new_code() -> String {
    format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000))
}

/// SHA-256 of `bytes`, hex: a fingerprint for telling requests apart (not a secret).
pub fn fingerprint(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn keyed_hex(key: &[u8; 32], parts: &[&[u8]]) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn refresh_tokens_round_trip_and_resist_tampering() {
        let session = Uuid::new_v4();
        let token = RefreshToken::mint(&KEY, session, b"salt", 3);
        let parsed = RefreshToken::parse(&token).expect("parses");
        assert_eq!((parsed.session_id, parsed.counter), (session, 3));
        assert!(parsed.is_genuine(&KEY, b"salt"));
        assert!(!parsed.is_genuine(&KEY, b"other salt"));
        assert!(!parsed.is_genuine(&[8; 32], b"salt"));
        let forged = RefreshToken {
            counter: 4,
            ..parsed
        };
        assert!(!forged.is_genuine(&KEY, b"salt"));
        assert_eq!(RefreshToken::parse("not a token"), None);
    }

    #[test]
    fn access_tokens_verify_and_expire_by_the_given_clock() {
        let claims = AccessClaims {
            iss: "x".into(),
            sub: "u".into(),
            aud: "authenticated".into(),
            exp: 1_000,
            iat: 0,
            role: "authenticated".into(),
            aal: "aal1".into(),
            amr: vec![],
            session_id: "s".into(),
            email: "e".into(),
            phone: String::new(),
            app_metadata: AppMetadata::default(),
            user_metadata: Default::default(),
            is_anonymous: false,
            device_id: "d".into(),
        };
        let jwt = sign_access_token("secret-secret-secret-secret-32by", &claims).expect("signs");
        let ok = verify_access_token("secret-secret-secret-secret-32by", &jwt, 999);
        assert_eq!(ok.map(|c| c.sub), Ok("u".to_owned()));
        assert_eq!(
            verify_access_token("secret-secret-secret-secret-32by", &jwt, 1_000).map(|_| ()),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify_access_token("another-secret-another-secret-xx", &jwt, 0).map(|_| ()),
            Err(JwtError::Invalid)
        );
    }

    #[test]
    fn codes_are_six_digits_and_hashes_depend_on_user() {
        let code = new_code();
        assert_eq!(code.len(), 6);
        assert!(code.chars().all(|c| c.is_ascii_digit()));
        assert_ne!(hash_code(&KEY, "a", &code), hash_code(&KEY, "b", &code));
    }
}
