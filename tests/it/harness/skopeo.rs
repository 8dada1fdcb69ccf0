//! skopeo, the independent client that checks both what the generators write and what
//! ecr-push pushes. Every call panics with skopeo's stderr when it fails.
//!
//! References name their transport: `docker://host/repo:tag`, `oci:<dir>[:<ref.name>]`,
//! `oci-archive:<tar>`, `docker-archive:<tar>[:<name>:<tag>]`. The registries started here
//! speak plain HTTP, so every docker:// access passes `--tls-verify=false` (or the
//! `--src-`/`--dest-` form for copy).

use std::path::Path;
use std::process::Command;

pub use super::sha256 as sha256_digest;
use super::{require_tool, sha256};

/// Runs skopeo; its stdout, or a panic with its stderr.
pub fn run(args: &[&str]) -> Vec<u8> {
    require_tool("skopeo", "apt-get install skopeo");
    let output = Command::new("skopeo")
        .args(args)
        .output()
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "skopeo {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn creds_arg(creds: Option<(&str, &str)>) -> Option<String> {
    creds.map(|(user, password)| format!("{user}:{password}"))
}

/// `skopeo inspect <flags> docker://<image_ref>` over plain HTTP.
fn inspect_docker(flags: &[&str], image_ref: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    let target = format!("docker://{image_ref}");
    let creds = creds_arg(creds);
    let mut args = vec!["inspect"];
    args.extend_from_slice(flags);
    args.push("--tls-verify=false");
    if let Some(creds) = &creds {
        args.extend(["--creds", creds]);
    }
    args.push(&target);
    run(&args)
}

/// The manifest bytes stored at `docker://<image_ref>` (`host/repo:tag` or `host/repo@digest`),
/// unconverted (`--raw`).
pub fn inspect_raw(image_ref: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    inspect_docker(&["--raw"], image_ref, creds)
}

/// The config bytes of `docker://<image_ref>` (`--config --raw`).
pub fn inspect_config(image_ref: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    inspect_docker(&["--config", "--raw"], image_ref, creds)
}

/// The manifest bytes of a local source with its transport (`oci:<dir>`, `oci-archive:<tar>`,
/// `docker-archive:<tar>`). For docker-archive skopeo *generates* a manifest.
pub fn inspect_raw_local(transport_ref: &str) -> Vec<u8> {
    run(&["inspect", "--raw", transport_ref])
}

/// The config bytes of a local source with its transport, as stored there.
pub fn inspect_config_local(transport_ref: &str) -> Vec<u8> {
    run(&["inspect", "--config", "--raw", transport_ref])
}

/// `skopeo copy --all` between two transport references; `creds` apply to whichever side is a
/// registry. skopeo checks the digest of every blob it moves (and, from a docker-archive,
/// every layer against its `diff_id`), so a successful copy proves the source is intact.
pub fn copy(source: &str, destination: &str, creds: Option<(&str, &str)>) {
    let creds = creds_arg(creds);
    let mut args = vec![
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ];
    if let Some(creds) = &creds {
        if source.starts_with("docker://") {
            args.extend(["--src-creds", creds]);
        }
        if destination.starts_with("docker://") {
            args.extend(["--dest-creds", creds]);
        }
    }
    args.extend([source, destination]);
    run(&args);
}

/// Copies any source (with its transport) into a new OCI layout `dir`, under ref.name `copy`.
pub fn copy_to_oci_dir(source: &str, dir: &Path, creds: Option<(&str, &str)>) {
    copy(source, &format!("oci:{}:copy", dir.display()), creds);
}

/// Copies `docker://<image_ref>` (every platform) into an OCI layout: skopeo downloads every
/// blob and checks its digest, so this proves the pushed image is complete and intact.
pub fn copy_to_oci(image_ref: &str, creds: Option<(&str, &str)>, dir: &Path) {
    copy_to_oci_dir(&format!("docker://{image_ref}"), dir, creds);
}

/// Digest of the manifest stored at `docker://<image_ref>`.
pub fn remote_digest(image_ref: &str, creds: Option<(&str, &str)>) -> String {
    sha256(&inspect_raw(image_ref, creds))
}

/// Digest of the config of `docker://<image_ref>`.
pub fn remote_config_digest(image_ref: &str, creds: Option<(&str, &str)>) -> String {
    sha256(&inspect_config(image_ref, creds))
}
