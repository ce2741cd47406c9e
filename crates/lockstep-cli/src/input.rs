//! Reading a password or a code. A password never comes from the command line: it comes from
//! `$LOCKSTEP_PASSWORD` or a prompt on the terminal without echo. A code comes from `--code`
//! (or `$LOCKSTEP_CODE`), else a line of standard input (prompted when it is a terminal), so a
//! script can pipe it in.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use crate::exit::CliError;

/// Where a password may be given instead of a prompt.
pub const PASSWORD_VAR: &str = "LOCKSTEP_PASSWORD";

/// The account password: `$LOCKSTEP_PASSWORD`, else asked on the terminal (twice when
/// `confirm`).
pub fn password(confirm: bool) -> anyhow::Result<String> {
    if let Some(password) = std::env::var(PASSWORD_VAR).ok().filter(|p| !p.is_empty()) {
        return Ok(password);
    }
    let no_terminal = |e: std::io::Error| {
        CliError::Usage(format!(
            "a password is needed: set {PASSWORD_VAR} or run in a terminal ({e})"
        ))
    };
    let password = rpassword::prompt_password("Password: ").map_err(no_terminal)?;
    if confirm {
        let again = rpassword::prompt_password("Repeat the password: ").map_err(no_terminal)?;
        if again != password {
            return Err(CliError::Usage("the two passwords differ".into()).into());
        }
    }
    Ok(password)
}

/// A code: `given` (from `--code` or `$LOCKSTEP_CODE`), else one line of standard input,
/// prompted with `prompt` when standard input is a terminal. Nothing there is
/// [`CliError::CodeNeeded`] with `hint`.
pub fn code(given: Option<String>, prompt: &str, hint: &str) -> anyhow::Result<String> {
    if let Some(code) = given.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()) {
        return Ok(code);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::CodeNeeded(format!("{hint} (standard input: {e})")))?;
    let code = line.trim();
    if code.is_empty() {
        return Err(CliError::CodeNeeded(hint.to_owned()).into());
    }
    Ok(code.to_owned())
}
