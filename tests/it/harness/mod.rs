//! Shared helpers for the end-to-end tests: real servers started by the tests themselves
//! (`docker-registry`, `moto_server`), an independent client (`skopeo`), a fake GitHub OIDC
//! endpoint, a fault-injecting proxy, a proxy that mirrors pushed manifests into moto's ECR API,
//! and image generators for every input format.
//!
//! A tool that is missing makes the test fail with the command that installs it: a skipped
//! end-to-end test would look like a passing one.
//!
//! The harness is itself tested against the real tools in `harness_selftest`: skopeo reads every
//! generated format and agrees with every digest the generators report.

pub mod aws_recorder;
pub mod images;
pub mod mirror;
pub mod moto;
pub mod oidc;
pub mod proxy;
pub mod registry;
pub mod skopeo;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use images::{Facts, TestImage};
pub use registry::Registry;

/// Panics unless `tool` is on PATH, saying how to install it.
pub fn require_tool(tool: &str, install: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    assert!(
        found,
        "`{tool}` is needed by the end-to-end tests and is not installed; run \
         scripts/install-test-deps.sh ({install})"
    );
}

/// A loopback HTTP/1 server for the test doubles (the proxies, the AWS recorder), on a runtime
/// of its own that lives as long as the value. It is bound before it serves, so the caller knows
/// its port when it builds the state its handler answers from.
pub struct HttpServer {
    pub runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    pub port: u16,
}

impl HttpServer {
    pub fn bind(threads: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("a runtime for a test server");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a test server on 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        Self {
            runtime,
            listener,
            port,
        }
    }

    /// Answers every request with `handle`; an error ends the connection without an answer
    /// (the proxy's reset faults rely on that). Returns the runtime to keep alive.
    pub fn serve<F, Fut, B, E>(self, handle: F) -> tokio::runtime::Runtime
    where
        F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<hyper::Response<B>, E>> + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = self.listener;
        self.runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper::service::service_fn(handle),
                        )
                        .await;
                });
            }
        });
        self.runtime
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The result of one `ecr-push` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn success(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "ecr-push failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn failure(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The `--json` report.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// A string field of the JSON report.
    #[track_caller]
    pub fn field(&self, name: &str) -> String {
        self.json()[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string field {name} in {}", self.stdout))
            .to_owned()
    }
}

/// Runs the `ecr-push` binary with `args` and exactly the environment `env` (plus PATH, so the
/// tests do not depend on the developer's AWS or CI variables).
pub fn ecr_push<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    ecr_push_in(None, args, env)
}

/// Like [`ecr_push`], in `dir`.
pub fn ecr_push_in<I, S>(dir: Option<&Path>, args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_ecr-push"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // No instance metadata service here: do not wait for one.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run the ecr-push binary");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The committed fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Facts about the committed fixtures, computed by the tools that made them.
pub fn fixture_facts() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("fixtures.json"))
        .expect("read fixtures/fixtures.json");
    serde_json::from_str(&text).expect("fixtures.json is JSON")
}
