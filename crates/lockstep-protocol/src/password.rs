//! The password strength rule, shared so clients can check before they send.

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (in characters); longer input is a mistake or an attack.
pub const MAX_PASSWORD_LEN: usize = 256;

/// Why a password was refused, as GoTrue lists in `weak_password.reasons`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeakPasswordReason {
    /// Too short (or too long).
    Length,
    /// Too few kinds of characters.
    Characters,
}

impl WeakPasswordReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WeakPasswordReason::Length => "length",
            WeakPasswordReason::Characters => "characters",
        }
    }
}

/// Checks the rule: 8 to 256 characters, using at least two of lowercase letters, uppercase
/// letters, digits and other characters. Returns every reason that applies.
pub fn check_password(password: &str) -> Result<(), Vec<WeakPasswordReason>> {
    let mut reasons = Vec::new();
    let len = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&len) {
        reasons.push(WeakPasswordReason::Length);
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ];
    if classes.iter().filter(|present| **present).count() < 2 {
        reasons.push(WeakPasswordReason::Characters);
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// A sentence telling the user what the rule wants.
pub fn describe_rule() -> String {
    format!(
        "Password should be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters and mix at least two of: lowercase, uppercase, digits, symbols."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strong_passwords_pass() {
        assert_eq!(check_password("correct horse 9"), Ok(()));
        assert_eq!(check_password("Abcdefgh"), Ok(()));
    }

    #[test]
    fn short_and_single_class_passwords_fail_with_reasons() {
        assert_eq!(check_password("Ab1"), Err(vec![WeakPasswordReason::Length]));
        assert_eq!(
            check_password("abcdefghij"),
            Err(vec![WeakPasswordReason::Characters])
        );
        assert_eq!(
            check_password("aaaa"),
            Err(vec![
                WeakPasswordReason::Length,
                WeakPasswordReason::Characters
            ])
        );
        assert!(check_password(&"aB".repeat(200)).is_err());
    }
}
