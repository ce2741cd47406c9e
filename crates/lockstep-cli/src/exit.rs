//! Exit codes, and the one place that maps an error to its code.

use lockstep_core::{
    api::ApiError, engine::EngineError, keychain::KeychainError, profile::ProfileError,
    session::SessionError, store::StoreError, transfer::ImportError,
};

/// Everything went well.
pub const OK: u8 = 0;
/// A check failed (a wrong code for `mfa code`), or an error of no other kind.
pub const CHECK_FAILED: u8 = 1;
/// The command line was wrong (clap's own code for usage errors).
pub const USAGE: u8 = 2;
/// A value, key or file was refused (the settings schema, a bad import, a bad device name).
pub const INVALID: u8 = 3;
/// Not signed in, or signed out (by this device or another one).
pub const SIGNED_OUT: u8 = 4;
/// The server cannot be reached (only for commands that need it).
pub const OFFLINE: u8 = 5;
/// The server refused the request.
pub const REFUSED: u8 = 6;
/// The OS keychain is not available.
pub const KEYCHAIN: u8 = 7;
/// Two-factor authentication is on: a code is needed.
pub const CODE_NEEDED: u8 = 8;
/// Edits made here have not reached the server and the command would lose them (sign-out).
pub const UNSYNCED: u8 = 9;
/// The profile's local files could not be read or written (or another process holds them).
pub const STORAGE: u8 = 10;

/// Errors of the command line itself (the others come from `lockstep-core`).
#[derive(Debug)]
pub enum CliError {
    /// A usage problem clap cannot see (no password available, say).
    Usage(String),
    /// Refused input (an unreadable import file).
    Invalid(String),
    NotSignedIn(String),
    CodeNeeded(String),
    /// A local file could not be written (an export, a QR code).
    Storage(String),
    /// The command would lose edits that have not reached the server.
    Unsynced(String),
    /// Everything was already said: exit with this code without another message.
    Silent(u8),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m)
            | CliError::Invalid(m)
            | CliError::NotSignedIn(m)
            | CliError::CodeNeeded(m)
            | CliError::Storage(m)
            | CliError::Unsynced(m) => f.write_str(m),
            CliError::Silent(code) => write!(f, "exit code {code}"),
        }
    }
}

impl std::error::Error for CliError {}

/// The message of `err` and its causes, each said once (a wrapper's message often repeats its
/// source's).
pub fn message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The exit code for `err`: the first error in its chain of a known kind decides.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    fn api(e: &ApiError) -> u8 {
        if e.needs_second_factor() {
            CODE_NEEDED
        } else if e.is_session_gone() {
            SIGNED_OUT
        } else if e.is_transient() {
            OFFLINE
        } else {
            REFUSED
        }
    }
    fn session(e: &SessionError) -> u8 {
        match e {
            SessionError::SignedOut | SessionError::Ended(_) => SIGNED_OUT,
            SessionError::Api(e) => api(e),
            SessionError::Keychain(_) => KEYCHAIN,
        }
    }
    fn engine(e: &EngineError) -> u8 {
        if e.needs_second_factor() {
            return CODE_NEEDED;
        }
        if e.is_signed_out() {
            return SIGNED_OUT;
        }
        if e.is_offline() {
            return OFFLINE;
        }
        match e {
            EngineError::Invalid(_) | EngineError::State(_) => INVALID,
            EngineError::Store(_) => STORAGE,
            EngineError::Keychain(_) => KEYCHAIN,
            EngineError::Session(e) => session(e),
            EngineError::Api(e) => api(e),
        }
    }
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return match e {
                CliError::Usage(_) => USAGE,
                CliError::Invalid(_) => INVALID,
                CliError::NotSignedIn(_) => SIGNED_OUT,
                CliError::CodeNeeded(_) => CODE_NEEDED,
                CliError::Storage(_) => STORAGE,
                CliError::Unsynced(_) => UNSYNCED,
                CliError::Silent(code) => *code,
            };
        }
        if let Some(e) = cause.downcast_ref::<EngineError>() {
            return engine(e);
        }
        if let Some(e) = cause.downcast_ref::<ProfileError>() {
            return match e {
                ProfileError::NotConfigured(_) => USAGE,
                ProfileError::BadName(_) | ProfileError::BadDeviceName(_) => INVALID,
                ProfileError::Unreadable { .. } | ProfileError::Store(_) => STORAGE,
                ProfileError::Engine(e) => engine(e),
            };
        }
        if let Some(e) = cause.downcast_ref::<ImportError>() {
            return match e {
                ImportError::Format(_) | ImportError::Invalid { .. } => INVALID,
                ImportError::Engine(e) => engine(e),
            };
        }
        if cause.downcast_ref::<KeychainError>().is_some() {
            return KEYCHAIN;
        }
        if cause.downcast_ref::<StoreError>().is_some() {
            return STORAGE;
        }
        if let Some(e) = cause.downcast_ref::<SessionError>() {
            return session(e);
        }
        if let Some(e) = cause.downcast_ref::<ApiError>() {
            return api(e);
        }
    }
    CHECK_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_protocol::settings::SettingError;

    fn server(status: u16, code: &str) -> ApiError {
        ApiError::Server {
            status,
            code: lockstep_protocol::errors::Code::parse(code),
            session_ended: false,
            message: "session ended".into(),
            retry_after_secs: None,
        }
    }

    #[test]
    fn engine_errors_map_to_their_codes() {
        let code = |e: EngineError| exit_code(&anyhow::Error::from(e));
        assert_eq!(
            code(SettingError::new("appearance.theme", "no").into()),
            INVALID
        );
        assert_eq!(code(EngineError::State("nope".into())), INVALID);
        assert_eq!(code(SessionError::SignedOut.into()), SIGNED_OUT);
        assert_eq!(
            code(SessionError::Ended(server(400, "session_not_found")).into()),
            SIGNED_OUT
        );
        assert_eq!(code(ApiError::Unreachable("down".into()).into()), OFFLINE);
        assert_eq!(
            code(SessionError::Api(server(503, "http_503")).into()),
            OFFLINE
        );
        assert_eq!(code(server(403, "insufficient_aal").into()), CODE_NEEDED);
        let mut ended = server(401, "PGRST301");
        if let ApiError::Server { session_ended, .. } = &mut ended {
            *session_ended = true;
        }
        assert_eq!(code(ended.into()), SIGNED_OUT);
        assert_eq!(
            code(server(401, "PGRST301").into()),
            REFUSED,
            "an expired token"
        );
        assert_eq!(code(server(400, "invalid_credentials").into()), REFUSED);
        assert_eq!(
            code(KeychainError::Unavailable("no bus".into()).into()),
            KEYCHAIN
        );
        assert_eq!(
            code(SessionError::Keychain(KeychainError::Failed("x".into())).into()),
            KEYCHAIN
        );
    }

    #[test]
    fn context_and_wrappers_keep_the_code() {
        let err = anyhow::Error::from(EngineError::from(ApiError::Unreachable("down".into())))
            .context("saved locally, but not synced");
        assert_eq!(exit_code(&err), OFFLINE);
        let err = anyhow::Error::from(ProfileError::NotConfigured("p".into()));
        assert_eq!(exit_code(&err), USAGE);
        let err = anyhow::Error::from(ImportError::Format("not json".into()));
        assert_eq!(exit_code(&err), INVALID);
        assert_eq!(exit_code(&anyhow::Error::from(CliError::Silent(4))), 4);
        assert_eq!(
            exit_code(&anyhow::Error::from(CliError::Unsynced("2 edits".into()))),
            UNSYNCED
        );
        assert_eq!(exit_code(&anyhow::anyhow!("something else")), CHECK_FAILED);
    }

    #[test]
    fn messages_say_each_cause_once() {
        let invalid = anyhow::Error::from(EngineError::from(SettingError::new(
            "appearance.theme",
            "must be one of light, dark, system",
        )));
        assert_eq!(
            message(&invalid),
            "appearance.theme: must be one of light, dark, system"
        );
        let wrapped = anyhow::Error::from(EngineError::from(ApiError::Unreachable("down".into())))
            .context("saved locally, but not synced");
        assert_eq!(
            message(&wrapped),
            "saved locally, but not synced: cannot reach the Lockstep server: down"
        );
    }
}
