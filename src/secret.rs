//! Secret strings (passwords, tokens, keys): they cannot be printed by accident.
//!
//! `Secret` has no `Display`, and its `Debug` is redacted, so a secret cannot reach a log line,
//! an error message or a `{:?}` dump without an explicit `expose()`. When running on GitHub
//! Actions the binary installs a masking hook (`set_mask_hook`), and every secret is announced to
//! the runner (`::add-mask::`) the moment it is created, before it could be echoed by anything.
//! Each value is announced once per process: the runner masks it for the rest of the job, and
//! the same value made again (a token read again, the same password after a re-mint) would only
//! add log lines.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};

static MASK_HOOK: OnceLock<fn(&str)> = OnceLock::new();

/// Keyed hashes (random keys per process) of the values announced so far: enough to recognise
/// a value again, without keeping a second copy of every secret.
static ANNOUNCED: LazyLock<(RandomState, Mutex<HashSet<u64>>)> =
    LazyLock::new(|| (RandomState::new(), Mutex::new(HashSet::new())));

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
        announce(&value);
        Self(value)
    }

    /// A secret made only of secrets already announced (`Bearer <token>` around a token): not
    /// announced again, since the runner already hides every part of it that matters.
    pub fn derived(value: String) -> Self {
        Self(value)
    }

    /// The secret's value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Hands `value` to the masking hook, unless it was announced before.
fn announce(value: &str) {
    let Some(hook) = MASK_HOOK.get() else {
        return;
    };
    if value.is_empty() {
        return;
    }
    let (keys, announced) = &*ANNOUNCED;
    let first_time = announced
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(keys.hash_one(value));
    if first_time {
        hook(value);
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

    static ANNOUNCED_IN_TESTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    #[test]
    fn each_value_is_announced_once() {
        set_mask_hook(|value| ANNOUNCED_IN_TESTS.lock().unwrap().push(value.to_owned()));
        let count = |value: &str| {
            ANNOUNCED_IN_TESTS
                .lock()
                .unwrap()
                .iter()
                .filter(|v| *v == value)
                .count()
        };
        let first = Secret::new("announce-me-once-7f3a");
        let _again = Secret::new("announce-me-once-7f3a");
        let _copy = first.clone();
        let _header = Secret::derived(format!("Bearer {}", first.expose()));
        assert_eq!(count("announce-me-once-7f3a"), 1);
        assert_eq!(count("Bearer announce-me-once-7f3a"), 0);
        let _other = Secret::new("announce-me-too-7f3a");
        assert_eq!(count("announce-me-too-7f3a"), 1);
    }

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2-very-secret");
        let shown = format!("{secret:?} {:?}", Some(&secret));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(secret.expose(), "hunter2-very-secret");
    }
}
