//! A real registry: Debian's `docker-registry` (CNCF distribution 2.8) on 127.0.0.1, with its
//! storage in a temporary directory, anonymous or with htpasswd Basic auth.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, require_tool, sha256};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Registry {
    child: Child,
    port: u16,
    credentials: Option<(String, String)>,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::launch(None)
    }

    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::launch(Some((user.to_owned(), password.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> Self {
        require_tool("docker-registry", "apt-get install docker-registry");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = &credentials {
            require_tool("htpasswd", "apt-get install apache2-utils");
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd");
            assert!(output.status.success(), "htpasswd failed");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, output.stdout).expect("write htpasswd");
            let auth = format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                htpasswd.display()
            );
            config.push_str(&auth);
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            port,
            credentials,
            _dir: dir,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(response) = reqwest::blocking::get(format!("{}/v2/", self.url()))
                && (response.status().is_success() || response.status().as_u16() == 401)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not start on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Credentials for skopeo, when the registry has auth.
    pub fn skopeo_creds(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    fn get(&self, path: &str, accept: Option<&str>) -> reqwest::blocking::Response {
        let mut request = reqwest::blocking::Client::new().get(format!("{}{path}", self.url()));
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        request.send().expect("request to the registry")
    }

    /// Tags of a repository (empty if the repository does not exist).
    pub fn tags(&self, repository: &str) -> Vec<String> {
        let response = self.get(&format!("/v2/{repository}/tags/list"), None);
        if response.status().as_u16() == 404 {
            return Vec::new();
        }
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().expect("tags/list")).expect("tags/list JSON");
        body["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Repositories in the registry.
    pub fn catalog(&self) -> Vec<String> {
        let body: serde_json::Value =
            serde_json::from_slice(&self.get("/v2/_catalog", None).bytes().expect("catalog"))
                .expect("catalog JSON");
        body["repositories"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The digest of the bytes served for `repository:reference`, if it exists.
    pub fn manifest_digest(&self, repository: &str, reference: &str) -> Option<String> {
        let response = self.get(
            &format!("/v2/{repository}/manifests/{reference}"),
            Some(MANIFEST_TYPES),
        );
        if response.status().as_u16() == 404 {
            return None;
        }
        assert!(
            response.status().is_success(),
            "GET manifest: {}",
            response.status()
        );
        Some(sha256(&response.bytes().expect("manifest body")))
    }

    pub fn blob_exists(&self, repository: &str, digest: &str) -> bool {
        let mut request = reqwest::blocking::Client::new()
            .head(format!("{}/v2/{repository}/blobs/{digest}", self.url()));
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        request.send().expect("HEAD blob").status().is_success()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
