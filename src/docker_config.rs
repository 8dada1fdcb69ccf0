//! Docker's `config.json`: where `ecr-push login` leaves ECR credentials for later docker,
//! buildx or helm steps (<https://docs.docker.com/reference/cli/docker/#configuration-files>).
//!
//! The file is merged, never replaced: other registries, `credHelpers` and settings stay. It is
//! written to a temporary file next to it (mode 0600) and renamed, so a reader never sees half a
//! file and other users never see the password.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::registry::BasicCredentials;

#[derive(Debug, thiserror::Error)]
#[error("cannot update the Docker config {path}: {reason}")]
pub struct DockerConfigError {
    pub path: String,
    pub reason: String,
}

/// Stores `credentials` for `host` in the config at `path`. Returns warnings (a credential
/// store or helper that docker would ask instead of this entry).
pub fn store(
    path: &Path,
    host: &str,
    credentials: &BasicCredentials,
) -> Result<Vec<String>, DockerConfigError> {
    let failed = |reason: String| DockerConfigError {
        path: path.display().to_string(),
        reason,
    };
    let mut config: Map<String, Value> = match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("it is not valid JSON ({e}); fix or remove it")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(failed(e.to_string())),
    };
    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        credentials.username,
        credentials.password.expose()
    ));
    let auths = config.entry("auths").or_insert_with(|| json!({}));
    let Some(auths) = auths.as_object_mut() else {
        return Err(failed("its \"auths\" is not an object".into()));
    };
    auths.insert(host.to_owned(), json!({ "auth": auth }));

    let mut warnings = Vec::new();
    if let Some(helper) = config
        .get("credHelpers")
        .and_then(|h| h.get(host))
        .and_then(Value::as_str)
    {
        warnings.push(format!(
            "{} has credHelpers[{host}] = {helper:?}: docker will ask that helper, not these credentials",
            path.display()
        ));
    } else if let Some(store) = config.get("credsStore").and_then(Value::as_str) {
        warnings.push(format!(
            "{} sets credsStore {store:?}: docker will look for {host} there, not in auths",
            path.display()
        ));
    }

    let bytes = serde_json::to_vec_pretty(&config).map_err(|e| failed(e.to_string()))?;
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory).map_err(|e| failed(e.to_string()))?;
    let mut temp = tempfile::NamedTempFile::new_in(directory).map_err(|e| failed(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed(e.to_string()))?;
    }
    temp.write_all(&bytes).map_err(|e| failed(e.to_string()))?;
    temp.persist(path)
        .map_err(|e| failed(e.error.to_string()))?;
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn credentials() -> BasicCredentials {
        BasicCredentials {
            username: "AWS".into(),
            password: Secret::new("pw"),
        }
    }

    #[test]
    fn merges_into_an_existing_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"ghcr.io":{"auth":"eA=="}},"psFormat":"x"}"#,
        )
        .unwrap();
        let warnings = store(&path, "1.dkr.ecr.eu-west-1.amazonaws.com", &credentials()).unwrap();
        assert!(warnings.is_empty());
        let config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            config["auths"]["ghcr.io"]["auth"], "eA==",
            "other registries stay"
        );
        assert_eq!(config["psFormat"], "x", "other settings stay");
        assert_eq!(
            config["auths"]["1.dkr.ecr.eu-west-1.amazonaws.com"]["auth"],
            "QVdTOnB3"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn creates_a_missing_config_and_warns_about_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/config.json");
        assert!(store(&path, "h", &credentials()).unwrap().is_empty());
        std::fs::write(&path, r#"{"credHelpers":{"h":"ecr-login"}}"#).unwrap();
        let warnings = store(&path, "h", &credentials()).unwrap();
        assert!(warnings[0].contains("ecr-login"), "{warnings:?}");
    }

    #[test]
    fn refuses_to_clobber_invalid_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(store(&path, "h", &credentials()).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{not json");
    }
}
