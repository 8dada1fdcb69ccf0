//! The one place that reads the process environment (besides clap's `env =` flag fallbacks).
//!
//! Everything else receives an [`Env`] snapshot, so behaviour is testable and secrets cross a
//! single boundary: they become [`Secret`]s here.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::secret::Secret;

pub const PASSWORD: &str = "ECR_PUSH_PASSWORD";
pub const GITHUB_SHA: &str = "GITHUB_SHA";
pub const CI_COMMIT_SHA: &str = "CI_COMMIT_SHA";
pub const GITHUB_ACTIONS: &str = "GITHUB_ACTIONS";
pub const GITHUB_OUTPUT: &str = "GITHUB_OUTPUT";
pub const GITHUB_STEP_SUMMARY: &str = "GITHUB_STEP_SUMMARY";
pub const RUNNER_TEMP: &str = "RUNNER_TEMP";
pub const DOCKER_CONFIG: &str = "DOCKER_CONFIG";
pub const HOME: &str = "HOME";
pub const ACTIONS_ID_TOKEN_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
pub const ACTIONS_ID_TOKEN_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";
pub const AWS_WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";

/// A snapshot of the variables this tool reads.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values may be secrets.
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

impl Env {
    /// Reads the real process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment made of the given pairs (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// A non-empty variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A non-empty variable that holds a secret.
    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name).map(Secret::new)
    }

    pub fn is_github_actions(&self) -> bool {
        self.get(GITHUB_ACTIONS) == Some("true")
    }

    /// Where temporary data goes: the runner's temp directory on GitHub, else the system's.
    pub fn temp_dir(&self) -> PathBuf {
        self.get(RUNNER_TEMP)
            .or_else(|| self.get("TMPDIR"))
            .map_or_else(std::env::temp_dir, PathBuf::from)
    }
}
