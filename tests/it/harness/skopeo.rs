//! skopeo, the independent client that checks what ecr-push wrote.

use std::process::Command;

use super::{require_tool, sha256};

fn skopeo(args: &[&str]) -> Vec<u8> {
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

fn with_creds<'a>(mut args: Vec<&'a str>, creds: Option<&'a str>) -> Vec<&'a str> {
    if let Some(creds) = creds {
        args.push("--creds");
        args.push(creds);
    }
    args
}

/// The raw manifest bytes of `docker://<reference>` (no conversion: `--raw`).
pub fn inspect_raw(reference: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let target = format!("docker://{reference}");
    skopeo(&with_creds(
        vec!["inspect", "--raw", "--tls-verify=false", &target],
        creds.as_deref(),
    ))
}

/// The raw config bytes of `docker://<reference>`.
pub fn inspect_config(reference: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let target = format!("docker://{reference}");
    skopeo(&with_creds(
        vec![
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &target,
        ],
        creds.as_deref(),
    ))
}

/// Digest of the manifest skopeo reads at `docker://<reference>`.
pub fn remote_digest(reference: &str, creds: Option<(&str, &str)>) -> String {
    sha256(&inspect_raw(reference, creds))
}

/// Digest of the config skopeo reads at `docker://<reference>`.
pub fn remote_config_digest(reference: &str, creds: Option<(&str, &str)>) -> String {
    sha256(&inspect_config(reference, creds))
}

/// Copies `docker://<reference>` (all platforms) into an OCI layout: skopeo downloads every blob
/// and checks its digest, so this proves the pushed image is complete and intact.
pub fn copy_to_oci(reference: &str, creds: Option<(&str, &str)>, dir: &std::path::Path) {
    let creds = creds.map(|(u, p)| format!("{u}:{p}"));
    let source = format!("docker://{reference}");
    let destination = format!("oci:{}:copy", dir.display());
    let mut args = vec!["copy", "--quiet", "--all", "--src-tls-verify=false"];
    if let Some(creds) = &creds {
        args.extend(["--src-creds", creds]);
    }
    args.extend([source.as_str(), destination.as_str()]);
    skopeo(&args);
}
