//! A device's secrets in the OS keychain: the refresh token, the TOTP secret and the key that
//! seals local state.
//!
//! Each secret is one keychain entry whose service is `lockstep:<profile>` and whose user is the
//! [`SecretKind`], so several profiles (devices signed in to different accounts, or test
//! profiles) can live side by side on one machine.
//!
//! The store behind the entries is chosen once per process: [`Keychain::use_platform_store`] in
//! the apps (Secret Service on Linux, the login keychain on macOS, the Credential Manager on
//! Windows), [`Keychain::use_mock_store`] in unit tests. Keychain calls block (Secret Service
//! calls are D-Bus round trips and may wait for an unlock prompt), so the async methods run them
//! on tokio's blocking pool; calling the platform store from inside a runtime's worker thread
//! has panicked.
//!
//! No error message ever contains a secret.

use std::sync::{Arc, Mutex, PoisonError};

use keyring_core::{CredentialStore, Entry, Error};

use crate::store::LocalSeal;

/// When `1` (`cargo xtask test` sets it), a test that needs the OS keychain fails without one
/// instead of skipping (see [`Keychain::use_platform_store_or_skip`]).
pub const REQUIRE_PLATFORM_STORE_VAR: &str = "LOCKSTEP_REQUIRE_SECRET_SERVICE";
/// Which secret of a profile an entry holds (the entry's "user" part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// The long-lived token that gets new access tokens from `lockstep-cloud`.
    RefreshToken,
    /// The TOTP secret of the second factor, while this device holds it.
    TotpSecret,
    /// The key that seals this device's local state at rest.
    LocalKey,
    /// The refresh token of a session this device signed out of while the server could not
    /// be reached, kept (with the scope) until the server has ended it too.
    PendingSignOut,
}

impl SecretKind {
    /// Every kind, in the order [`Keychain::wipe`] deletes them.
    pub const ALL: [SecretKind; 4] = [
        SecretKind::RefreshToken,
        SecretKind::TotpSecret,
        SecretKind::LocalKey,
        SecretKind::PendingSignOut,
    ];

    /// The entry's user name: `refresh-token`, `totp-secret`, `local-key` or
    /// `pending-sign-out`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::RefreshToken => "refresh-token",
            SecretKind::TotpSecret => "totp-secret",
            SecretKind::LocalKey => "local-key",
            SecretKind::PendingSignOut => "pending-sign-out",
        }
    }
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a keychain operation failed. The messages never contain the secret.
#[derive(Debug, thiserror::Error)]
pub enum KeychainError {
    /// There is no usable keychain: no Secret Service on the session bus, a locked keychain
    /// that refused access, or no store installed yet.
    #[error(
        "the OS keychain is not available: {0}; on Linux start gnome-keyring or another Secret Service"
    )]
    Unavailable(String),
    /// The keychain is there but the operation failed.
    #[error("keychain operation failed: {0}")]
    Failed(String),
}

/// The secrets of one profile in the OS keychain.
#[derive(Debug, Clone)]
pub struct Keychain {
    /// `lockstep:<profile>`.
    service: String,
}

/// Which store this module has installed as keyring-core's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Installed {
    Platform,
    Mock,
}

/// Guards installing the default store, so each is installed at most once per process.
static INSTALLED: Mutex<Option<Installed>> = Mutex::new(None);

impl Keychain {
    /// The keychain entries of `profile`, under the service `lockstep:<profile>`.
    pub fn for_profile(profile: &str) -> Keychain {
        Keychain {
            service: format!("lockstep:{profile}"),
        }
    }

    /// The service name of this profile's entries.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Makes the platform's keychain the store for every [`Keychain`] of this process: the
    /// default collection of the Secret Service on Linux (no new collection, which would need
    /// an unlock prompt), the login keychain on macOS, the Credential Manager on Windows. Other
    /// platforms get [`KeychainError::Unavailable`].
    ///
    /// Idempotent: once it has succeeded, later calls do nothing. On Linux it connects to the
    /// Secret Service right away, so a missing one is reported here. It blocks briefly, on a
    /// thread of its own, so it may be called from async code.
    pub fn use_platform_store() -> Result<(), KeychainError> {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if *installed == Some(Installed::Platform) {
            return Ok(());
        }
        // A thread of its own: the Secret Service connection must not be made on a tokio
        // worker thread.
        let store = std::thread::scope(|scope| scope.spawn(platform_store).join())
            .map_err(|_| unavailable("connecting to it panicked".to_owned()))??;
        keyring_core::set_default_store(store);
        *installed = Some(Installed::Platform);
        Ok(())
    }

    /// For tests that need the OS keychain: [`Keychain::use_platform_store`], and `true`; or
    /// `false` (the test should return) when there is none and none is required. `cargo xtask
    /// test` sets [`REQUIRE_PLATFORM_STORE_VAR`]`=1`, which makes a missing one a failure.
    pub fn use_platform_store_or_skip() -> bool {
        match Keychain::use_platform_store() {
            Ok(()) => true,
            Err(KeychainError::Unavailable(why))
                if std::env::var(REQUIRE_PLATFORM_STORE_VAR).map_or(true, |value| value != "1") =>
            {
                println!("skipped: no OS keychain (run via cargo xtask test): {why}");
                false
            }
            Err(err) => {
                panic!("{err} (${REQUIRE_PLATFORM_STORE_VAR} requires a working OS keychain)")
            }
        }
    }

    /// Makes an in-memory store the store for every [`Keychain`] of this process, for tests.
    ///
    /// Idempotent: every call after the first keeps the same store (and its entries), so tests
    /// running in parallel share it; give each test its own profile.
    pub fn use_mock_store() {
        let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
        if *installed == Some(Installed::Mock) {
            return;
        }
        match keyring_core::mock::Store::new() {
            Ok(store) => {
                keyring_core::set_default_store(store);
                *installed = Some(Installed::Mock);
            }
            // `mock::Store::new` cannot fail today; without a store every call reports
            // `Unavailable`, which a test will show.
            Err(err) => tracing::error!("could not create the mock keychain store: {err}"),
        }
    }

    /// Stores `secret` as this profile's `kind`, replacing any previous one.
    pub async fn set(&self, kind: SecretKind, secret: &str) -> Result<(), KeychainError> {
        let secret = secret.to_owned();
        self.blocking(kind, move |entry| {
            entry
                .set_password(&secret)
                .map_err(|err| describe(&err, "store", kind).redacting(&secret))
        })
        .await
    }

    /// This profile's `kind`, or `None` when there is none.
    pub async fn get(&self, kind: SecretKind) -> Result<Option<String>, KeychainError> {
        self.blocking(kind, move |entry| match entry.get_password() {
            Ok(secret) => Ok(Some(secret)),
            Err(Error::NoEntry) => Ok(None),
            Err(err) => Err(describe(&err, "read", kind)),
        })
        .await
    }

    /// Deletes this profile's `kind`; succeeds when there is none.
    pub async fn delete(&self, kind: SecretKind) -> Result<(), KeychainError> {
        self.blocking(kind, move |entry| match entry.delete_credential() {
            Ok(()) | Err(Error::NoEntry) => Ok(()),
            Err(err) => Err(describe(&err, "delete", kind)),
        })
        .await
    }

    /// Deletes every secret of this profile (a revoked device, or signing out). Tries every
    /// kind even when one fails, and reports the first failure.
    pub async fn wipe(&self) -> Result<(), KeychainError> {
        let mut first_error = None;
        for kind in SecretKind::ALL {
            if let Err(err) = self.delete(kind).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// This profile's local sealing key (see [`crate::store::seal`]), created on first use.
    ///
    /// Blocks (on a thread of its own, so it may be called from async code): it is needed
    /// before the profile's files can be opened.
    pub fn local_seal_blocking(&self) -> Result<LocalSeal, KeychainError> {
        let service = self.service.clone();
        std::thread::scope(|scope| scope.spawn(move || local_seal(&service)).join()).map_err(
            |_| KeychainError::Failed("the keychain call for the local key panicked".into()),
        )?
    }

    /// Runs `op` on the entry for `kind` on tokio's blocking pool.
    async fn blocking<T, F>(&self, kind: SecretKind, op: F) -> Result<T, KeychainError>
    where
        T: Send + 'static,
        F: FnOnce(&Entry) -> Result<T, KeychainError> + Send + 'static,
    {
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || {
            let entry = Entry::new(&service, kind.as_str())
                .map_err(|err| describe(&err, "open the entry for", kind))?;
            op(&entry)
        })
        .await
        .map_err(|err| {
            let why = if err.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            };
            KeychainError::Failed(format!("the keychain call for the {kind} {why}"))
        })?
    }
}

/// Reads, or creates and stores, the local key of `service`.
fn local_seal(service: &str) -> Result<LocalSeal, KeychainError> {
    let kind = SecretKind::LocalKey;
    let entry = Entry::new(service, kind.as_str())
        .map_err(|err| describe(&err, "open the entry for", kind))?;
    match entry.get_password() {
        Ok(text) => {
            if let Some(seal) = LocalSeal::from_keychain_text(&text) {
                return Ok(seal);
            }
            tracing::warn!("the local key in the keychain is unusable; creating a new one");
        }
        Err(Error::NoEntry) => {}
        Err(err) => return Err(describe(&err, "read", kind)),
    }
    let text = LocalSeal::generate_key();
    entry
        .set_password(&text)
        .map_err(|err| describe(&err, "store", kind).redacting(&text))?;
    LocalSeal::from_keychain_text(&text)
        .ok_or_else(|| KeychainError::Failed("could not create a local key".into()))
}

/// The platform's credential store (Linux: the Secret Service, default collection).
#[cfg(target_os = "linux")]
fn platform_store() -> Result<Arc<CredentialStore>, KeychainError> {
    // Items go to the default collection unless an entry names a `target`; we never do.
    let store = zbus_secret_service_keyring_store::Store::new()
        .map_err(|err| unavailable(format!("cannot reach the Secret Service ({err})")))?;
    Ok(store)
}

/// The platform's credential store (macOS: the user's login keychain).
#[cfg(target_os = "macos")]
fn platform_store() -> Result<Arc<CredentialStore>, KeychainError> {
    let store = apple_native_keyring_store::keychain::Store::new()
        .map_err(|err| unavailable(format!("cannot open the login keychain ({err})")))?;
    Ok(store)
}

/// The platform's credential store (Windows: the Credential Manager).
#[cfg(target_os = "windows")]
fn platform_store() -> Result<Arc<CredentialStore>, KeychainError> {
    let store = windows_native_keyring_store::Store::new()
        .map_err(|err| unavailable(format!("cannot open the Credential Manager ({err})")))?;
    Ok(store)
}

/// No keychain support on other platforms.
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
fn platform_store() -> Result<Arc<CredentialStore>, KeychainError> {
    Err(unavailable(format!(
        "Lockstep has no keychain support on {}",
        std::env::consts::OS
    )))
}

fn unavailable(why: String) -> KeychainError {
    KeychainError::Unavailable(why)
}

/// Describes a keyring error without the secret: the variants that carry secret bytes (or
/// entries whose debug output might) are described by hand, never displayed.
fn describe(err: &Error, action: &str, kind: SecretKind) -> KeychainError {
    let what = format!("could not {action} the {kind}");
    match err {
        Error::NoDefaultStore => unavailable(format!(
            "{what}: no keychain store is installed (call Keychain::use_platform_store first)"
        )),
        Error::NoStorageAccess(platform) => unavailable(format!(
            "{what}: the keychain is locked or refused access ({platform})"
        )),
        Error::NoEntry => KeychainError::Failed(format!("{what}: there is no such entry")),
        Error::BadEncoding(_) => {
            KeychainError::Failed(format!("{what}: the stored value is not UTF-8"))
        }
        Error::BadDataFormat(..) => {
            KeychainError::Failed(format!("{what}: the stored value is malformed"))
        }
        Error::Ambiguous(entries) => KeychainError::Failed(format!(
            "{what}: {} keychain entries match it",
            entries.len()
        )),
        Error::PlatformFailure(platform) => KeychainError::Failed(format!("{what}: {platform}")),
        other => KeychainError::Failed(format!("{what}: {other}")),
    }
}

impl KeychainError {
    /// Blanks out `secret` should a platform message ever quote it.
    fn redacting(self, secret: &str) -> Self {
        if secret.is_empty() {
            return self;
        }
        let redact = |message: String| message.replace(secret, "[redacted]");
        match self {
            KeychainError::Unavailable(message) => KeychainError::Unavailable(redact(message)),
            KeychainError::Failed(message) => KeychainError::Failed(redact(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use keyring_core::mock;

    use super::*;

    /// A keychain on the mock store with a profile no other test uses.
    fn mock_keychain(test: &str) -> Keychain {
        Keychain::use_mock_store();
        Keychain::for_profile(&format!("unit-{test}"))
    }

    /// Makes the next call on `kind`'s entry of `keychain` fail with `err`.
    fn inject(keychain: &Keychain, kind: SecretKind, err: Error) {
        let entry = Entry::new(keychain.service(), kind.as_str()).expect("mock entry");
        let cred: &mock::Cred = entry.as_any().downcast_ref().expect("a mock credential");
        cred.set_error(err);
    }

    #[test]
    fn kinds_and_services_are_named_as_documented() {
        let names: Vec<&str> = SecretKind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(
            names,
            [
                "refresh-token",
                "totp-secret",
                "local-key",
                "pending-sign-out"
            ]
        );
        let keychain = Keychain::for_profile("work");
        assert_eq!(keychain.service(), "lockstep:work");
        assert_eq!(
            format!("{keychain:?}"),
            r#"Keychain { service: "lockstep:work" }"#
        );
    }

    #[tokio::test]
    async fn set_get_overwrite_delete() {
        let keychain = mock_keychain("round-trip");
        let kind = SecretKind::RefreshToken;
        assert_eq!(keychain.get(kind).await.expect("get"), None);

        keychain.set(kind, "first").await.expect("set");
        assert_eq!(
            keychain.get(kind).await.expect("get").as_deref(),
            Some("first")
        );

        keychain.set(kind, "second").await.expect("overwrite");
        assert_eq!(
            keychain.get(kind).await.expect("get").as_deref(),
            Some("second")
        );

        keychain.delete(kind).await.expect("delete");
        assert_eq!(keychain.get(kind).await.expect("get"), None);
        keychain
            .delete(kind)
            .await
            .expect("deleting an absent secret");
    }

    #[tokio::test]
    async fn kinds_are_separate_entries() {
        let keychain = mock_keychain("kinds");
        keychain
            .set(SecretKind::RefreshToken, "token")
            .await
            .expect("set");
        keychain
            .set(SecretKind::LocalKey, "key")
            .await
            .expect("set");
        assert_eq!(
            keychain.get(SecretKind::TotpSecret).await.expect("get"),
            None
        );
        keychain
            .delete(SecretKind::RefreshToken)
            .await
            .expect("delete");
        assert_eq!(
            keychain
                .get(SecretKind::LocalKey)
                .await
                .expect("get")
                .as_deref(),
            Some("key")
        );
    }

    #[tokio::test]
    async fn wipe_deletes_every_kind_of_one_profile_only() {
        let keychain = mock_keychain("wipe");
        let other = mock_keychain("wipe-other");
        for kind in SecretKind::ALL {
            keychain.set(kind, kind.as_str()).await.expect("set");
            other.set(kind, "other's").await.expect("set");
        }

        keychain.wipe().await.expect("wipe");
        for kind in SecretKind::ALL {
            assert_eq!(keychain.get(kind).await.expect("get"), None, "{kind}");
            assert_eq!(
                other.get(kind).await.expect("get").as_deref(),
                Some("other's"),
                "{kind}"
            );
        }
        keychain.wipe().await.expect("wiping an empty profile");
    }

    #[tokio::test]
    async fn profiles_are_isolated() {
        let home = mock_keychain("home");
        let work = mock_keychain("work");
        let totp = SecretKind::TotpSecret;
        home.set(totp, "home-totp").await.expect("set");
        work.set(totp, "work-totp").await.expect("set");
        let homes = || async { home.get(totp).await.expect("get") };
        assert_eq!(homes().await.as_deref(), Some("home-totp"));
        work.delete(totp).await.expect("delete");
        assert_eq!(
            homes().await.as_deref(),
            Some("home-totp"),
            "untouched by work's delete"
        );
        assert_eq!(work.get(totp).await.expect("get"), None);
    }

    #[tokio::test]
    async fn wipe_tries_every_kind_and_reports_the_first_failure() {
        let keychain = mock_keychain("wipe-failure");
        for kind in SecretKind::ALL {
            keychain.set(kind, "secret").await.expect("set");
        }
        inject(
            &keychain,
            SecretKind::RefreshToken,
            Error::PlatformFailure("the bus went away".into()),
        );

        let err = keychain.wipe().await.expect_err("the injected failure");
        assert!(
            matches!(&err, KeychainError::Failed(message) if message.contains("refresh-token")),
            "{err}"
        );
        assert_eq!(
            keychain.get(SecretKind::TotpSecret).await.expect("get"),
            None
        );
        assert_eq!(keychain.get(SecretKind::LocalKey).await.expect("get"), None);
    }

    #[tokio::test]
    async fn errors_never_contain_the_secret() {
        let secret = "hunter2-very-secret";
        let keychain = mock_keychain("no-leak");
        let kind = SecretKind::LocalKey;
        keychain.set(kind, secret).await.expect("set");

        // Errors that carry the secret's bytes, or entries holding it.
        let holder = Entry::new(keychain.service(), kind.as_str()).expect("entry");
        let carriers = [
            Error::BadEncoding(secret.as_bytes().to_vec()),
            Error::BadDataFormat(secret.as_bytes().to_vec(), "bad padding".into()),
            Error::Ambiguous(vec![holder]),
        ];
        for injected in carriers {
            let shown = format!("{injected:?}");
            inject(&keychain, kind, injected);
            let err = keychain.get(kind).await.expect_err("the injected failure");
            let message = err.to_string();
            assert!(!message.contains(secret), "{message} (from {shown})");
            assert!(!format!("{err:?}").contains(secret), "{err:?}");
        }

        // A platform message quoting the secret being stored.
        inject(
            &keychain,
            kind,
            Error::PlatformFailure(format!("rejected value {secret}").into()),
        );
        let err = keychain.set(kind, secret).await.expect_err("injected");
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(err.to_string().contains("[redacted]"), "{err}");

        // The secret is still there, unchanged.
        assert_eq!(
            keychain.get(kind).await.expect("get").as_deref(),
            Some(secret)
        );
    }

    #[tokio::test]
    async fn a_locked_keychain_is_unavailable() {
        let keychain = mock_keychain("locked");
        inject(
            &keychain,
            SecretKind::RefreshToken,
            Error::NoStorageAccess("the collection is locked".into()),
        );
        let err = keychain
            .get(SecretKind::RefreshToken)
            .await
            .expect_err("injected");
        assert!(matches!(err, KeychainError::Unavailable(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("the OS keychain is not available: ")
        );
        assert!(err.to_string().contains("gnome-keyring"), "{err}");
    }
}
