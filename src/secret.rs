//! Secret strings (passwords, tokens, keys): they cannot be printed by accident.
//!
//! `Secret` has no `Display`, and its `Debug` is redacted, so a secret cannot reach a log line,
//! an error message or a `{:?}` dump without an explicit `expose()`. When running on GitHub
//! Actions the binary installs a masking hook (`set_mask_hook`), and every secret is announced to
//! the runner (`::add-mask::`) the moment it is created, before it could be echoed by anything.

use std::fmt;
use std::sync::OnceLock;

static MASK_HOOK: OnceLock<fn(&str)> = OnceLock::new();

/// Installs the function that is called with every secret when it is created. Only the first
/// call takes effect.
pub fn set_mask_hook(hook: fn(&str)) {
    let _ = MASK_HOOK.set(hook);
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        if let Some(hook) = MASK_HOOK.get()
            && !value.is_empty()
        {
            hook(&value);
        }
        Self(value)
    }

    /// The secret's value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2-very-secret");
        let shown = format!("{secret:?} {:?}", Some(&secret));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(secret.expose(), "hunter2-very-secret");
    }
}
