//! `--single-platform`: one image manifest of a multi-platform source is pushed, without the
//! index and without `BuildKit`'s attestation manifests (what Lambda and some scanners need),
//! against a real registry and read back with skopeo.

use std::path::Path;

use crate::harness::images::{self, OCI_MANIFEST, TestImage};
use crate::harness::{Facts, Registry, Run, ecr_push, skopeo};

/// `ecr-push push <source> --registry <registry> --repository team/lambda --tag v1 <extra>`.
fn push(registry: &Registry, source: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let url = registry.url();
    let mut args = vec![
        "push",
        source.to_str().unwrap(),
        "--registry",
        &url,
        "--repository",
        "team/lambda",
        "--tag",
        "v1",
        "--json",
    ];
    args.extend_from_slice(extra);
    ecr_push(args, env)
}

/// The platform's (manifest digest, config digest) in `facts`.
fn platform<'a>(facts: &'a Facts, name: &str) -> (&'a str, &'a str) {
    let (_, manifest, config) = facts
        .platforms
        .iter()
        .find(|(p, _, _)| p == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", facts.platforms));
    (manifest, config)
}

/// Asserts that `team/lambda:v1` is exactly the `name` manifest of `facts`, and that neither
/// the index nor any attestation manifest reached the registry.
#[track_caller]
fn assert_single(registry: &Registry, run: &Run, facts: &Facts, name: &str) {
    run.success();
    let (manifest, config) = platform(facts, name);
    let report = run.json();
    assert_eq!(report["digest"], manifest);
    assert_eq!(report["media_type"], OCI_MANIFEST);
    assert_eq!(report["config_digest"], config);
    assert!(report.get("platforms").is_none(), "{report}");
    let reference = format!("{}/team/lambda:v1", registry.host());
    assert_eq!(skopeo::remote_digest(&reference, None), manifest);
    assert_eq!(skopeo::remote_config_digest(&reference, None), config);
    for absent in facts
        .attestations
        .iter()
        .chain(&facts.nested_indexes)
        .chain([&facts.digest])
    {
        assert!(
            !registry.manifest_exists("team/lambda", absent),
            "{absent} was pushed"
        );
    }
    assert!(
        run.stderr.contains(&format!("platform {name}")),
        "{}",
        run.stderr
    );
}

/// The platform `--single-platform` picks on this machine.
fn runner_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("the tests have no image for a {other} runner"),
    }
}

#[test]
fn the_only_image_of_a_buildx_index_is_pushed_without_its_attestation() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    // buildx's usual output: one image and its provenance attestation, in an index. The image
    // is for a platform that is not this runner's: being the only image is what decides.
    let facts = TestImage::new("lambda").write_oci_layout_attested(dir.path(), &["linux/s390x"]);
    assert_eq!(facts.attestations.len(), 1);
    let run = push(&registry, dir.path(), &["--single-platform"], &[]);
    assert_single(&registry, &run, &facts, "linux/s390x");
}

#[test]
fn the_runners_platform_is_chosen_from_a_nested_multi_platform_index() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = TestImage::new("lambda")
        .write_oci_layout_nested(dir.path(), &["linux/amd64", "linux/arm64"]);
    // The Action passes `single-platform: true` as this variable.
    let run = push(
        &registry,
        dir.path(),
        &[],
        &[("ECR_PUSH_SINGLE_PLATFORM", "true")],
    );
    assert_single(&registry, &run, &facts, runner_platform());
}

#[test]
fn no_image_for_this_runner_is_a_usage_error_until_a_platform_is_named() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = TestImage::new("lambda")
        .write_oci_layout_attested(dir.path(), &["linux/s390x", "linux/ppc64le"]);
    let run = push(&registry, dir.path(), &["--single-platform"], &[]);
    run.failure(2);
    assert!(
        run.stderr.contains("linux/s390x, linux/ppc64le")
            && run.stderr.contains(runner_platform())
            && run.stderr.contains("--platform"),
        "{}",
        run.stderr
    );
    assert!(registry.catalog().is_empty(), "nothing was pushed");

    let run = push(
        &registry,
        dir.path(),
        &["--single-platform", "--platform", "linux/ppc64le"],
        &[],
    );
    assert_single(&registry, &run, &facts, "linux/ppc64le");
}

#[test]
fn a_docker_29_save_with_one_platform_present_pushes_that_platform() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("docker29.tar");
    let arm64 = TestImage::new("lambda").platform("linux/arm64");
    let s390x = TestImage::new("lambda").platform("linux/s390x");
    // Both platforms listed, only s390x pulled: the other is not a candidate.
    let facts = images::docker_save_29(&tar, &[arm64, s390x.clone()], &[s390x]);
    let run = push(&registry, &tar, &["--single-platform"], &[]);
    assert_single(&registry, &run, &facts, "linux/s390x");
}
