//! A real registry: Debian's `docker-registry` (CNCF distribution 2.8) on 127.0.0.1, plain HTTP,
//! storage in a temporary directory, anonymous or with htpasswd (bcrypt) Basic auth — the
//! data-plane stand-in for ECR. Its log goes to a file in that directory, not to the test
//! output; a registry that fails to start panics with the log.
//!
//! The small HTTP helpers read what is stored without going through ecr-push or skopeo.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, require_tool, sha256};

/// Every manifest type, so the registry serves what is stored and never converts it.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How long a fresh registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The registry's log file, in its temporary directory.
const LOG: &str = "registry.log";

pub struct Registry {
    child: Child,
    port: u16,
    credentials: Option<(String, String)>,
    dir: TempDir,
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A registry that wants `user`/`password` (Basic auth, bcrypt htpasswd) on every request.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_owned(), password.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> Self {
        require_tool("docker-registry", "apt-get install docker-registry");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut auth = String::new();
        if let Some((user, password)) = &credentials {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, htpasswd_line(user, password)).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                htpasswd.display()
            );
        }
        // The free port is only free until someone else binds it: start again on another.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut child = spawn(dir.path(), port, &auth);
            if wait_ready(&mut child, port) {
                return Self {
                    child,
                    port,
                    credentials,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(dir.path().join(LOG)).unwrap_or_default();
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's own log (level warn), for a failing test to print.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG)
    }

    /// The credentials it wants, in the shape the skopeo helpers take.
    pub fn skopeo_creds(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// `method path` with explicit credentials (or none): for tests about auth itself.
    pub fn status_of(&self, method: &str, path: &str, credentials: Option<(&str, &str)>) -> u16 {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut request =
            reqwest::blocking::Client::new().request(method, format!("{}{path}", self.url()));
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(password));
        }
        request
            .send()
            .expect("request to the registry")
            .status()
            .as_u16()
    }

    /// `method path` with the registry's own credentials.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        accept: Option<&str>,
    ) -> reqwest::blocking::Response {
        let mut request =
            reqwest::blocking::Client::new().request(method, format!("{}{path}", self.url()));
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        request.send().expect("request to the registry")
    }

    /// A JSON body, or `None` on 404 with the registry error code `not_found_code`.
    fn get_json(&self, path: &str, not_found_code: &str) -> Option<serde_json::Value> {
        let response = self.send(reqwest::Method::GET, path, None);
        let status = response.status();
        let body = response.bytes().expect("response body");
        if status.as_u16() == 404 && String::from_utf8_lossy(&body).contains(not_found_code) {
            return None;
        }
        assert!(
            status.is_success(),
            "GET {path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Some(serde_json::from_slice(&body).expect("registry answers JSON"))
    }

    /// Tags of a repository; empty if the repository does not exist (404 `NAME_UNKNOWN`).
    pub fn tags(&self, repository: &str) -> Vec<String> {
        self.get_json(&format!("/v2/{repository}/tags/list"), "NAME_UNKNOWN")
            .map(|body| strings(&body["tags"]))
            .unwrap_or_default()
    }

    /// Repositories in the registry.
    pub fn catalog(&self) -> Vec<String> {
        let body = self
            .get_json("/v2/_catalog", "never")
            .expect("the catalog exists");
        strings(&body["repositories"])
    }

    /// The digest of the bytes served for `repository:reference` (tag or digest), if any.
    pub fn manifest_digest(&self, repository: &str, reference: &str) -> Option<String> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let response = self.send(reqwest::Method::GET, &path, Some(MANIFEST_TYPES));
        let status = response.status();
        if status.as_u16() == 404 {
            return None;
        }
        assert!(status.is_success(), "GET {path}: {status}");
        Some(sha256(&response.bytes().expect("manifest body")))
    }

    /// The manifest served for `repository:reference`, parsed.
    pub fn manifest(&self, repository: &str, reference: &str) -> serde_json::Value {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let response = self.send(reqwest::Method::GET, &path, Some(MANIFEST_TYPES));
        let status = response.status();
        assert!(status.is_success(), "GET {path}: {status}");
        serde_json::from_slice(&response.bytes().expect("manifest body")).expect("a JSON manifest")
    }

    /// The layer digests of the manifest served for `repository:reference`.
    pub fn manifest_layers(&self, repository: &str, reference: &str) -> Vec<String> {
        self.manifest(repository, reference)["layers"]
            .as_array()
            .expect("an image manifest")
            .iter()
            .map(|layer| layer["digest"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn manifest_exists(&self, repository: &str, reference: &str) -> bool {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let status = self
            .send(reqwest::Method::HEAD, &path, Some(MANIFEST_TYPES))
            .status();
        assert!(
            status.is_success() || status.as_u16() == 404,
            "HEAD {path}: {status}"
        );
        status.is_success()
    }

    pub fn blob_exists(&self, repository: &str, digest: &str) -> bool {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let status = self.send(reqwest::Method::HEAD, &path, None).status();
        assert!(
            status.is_success() || status.as_u16() == 404,
            "HEAD {path}: {status}"
        );
        status.is_success()
    }
}

/// Starts `docker-registry serve` with its storage, config and log in `dir`.
fn spawn(dir: &Path, port: u16, auth: &str) -> Child {
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: test-only-secret\n{auth}",
        data = dir.join("data").display()
    );
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).expect("write registry config");
    let log = std::fs::File::create(dir.join(LOG)).expect("registry log file");
    Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("registry log file"))
        .stderr(log)
        .spawn()
        .expect("start docker-registry")
}

/// Waits until `GET /v2/` answers (200, or 401 with auth); false if the process exited or the
/// time ran out.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        if let Ok(response) = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/"))
            && matches!(response.status().as_u16(), 200 | 401)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// One bcrypt htpasswd line: distribution accepts bcrypt only.
fn htpasswd_line(user: &str, password: &str) -> Vec<u8> {
    require_tool("htpasswd", "apt-get install apache2-utils");
    let output = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("run htpasswd");
    assert!(
        output.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
