//! Every source format, pushed to a real registry and read back by skopeo.

use std::path::Path;

use crate::harness::images::{self, Facts, ImageSpec};
use crate::harness::{Registry, ecr_push, ecr_push_in, fixture_facts, fixtures, skopeo};

/// Pushes `source` under two tags and checks the result with skopeo. Returns the pushed digest.
fn push_and_check(
    registry: &Registry,
    source: &Path,
    repository: &str,
    facts: &Facts,
    extra: &[&str],
) -> String {
    let source = source.to_str().unwrap();
    let url = registry.url();
    let mut args = vec![
        "push",
        source,
        "--registry",
        &url,
        "--repository",
        repository,
        "--tag",
        "v1",
        "--tag",
        "latest",
        "--json",
    ];
    args.extend_from_slice(extra);
    let run = ecr_push(&args, &[]);
    run.success();
    let report = run.json();
    let digest = report["digest"].as_str().unwrap().to_owned();
    if !facts.digest.is_empty() {
        assert_eq!(
            digest, facts.digest,
            "an OCI input must keep its manifest digest"
        );
    }
    if !facts.config_digest.is_empty() {
        assert_eq!(report["config_digest"], facts.config_digest.as_str());
    }
    assert_eq!(
        report["image_ref"],
        format!("{}/{repository}@{digest}", registry.host()).as_str()
    );
    assert_eq!(
        report["image_uri"],
        format!("{}/{repository}:v1", registry.host()).as_str()
    );
    assert_eq!(report["verified"], true);
    if !facts.media_type.is_empty() {
        assert_eq!(report["media_type"], facts.media_type.as_str());
    }
    let mut tags = registry.tags(repository);
    tags.sort();
    assert!(
        tags.contains(&"v1".to_owned()) && tags.contains(&"latest".to_owned()),
        "{tags:?}"
    );
    for tag in ["v1", "latest"] {
        let reference = format!("{}/{repository}:{tag}", registry.host());
        assert_eq!(
            skopeo::remote_digest(&reference, registry.skopeo_creds()),
            digest,
            "skopeo reads {reference}"
        );
        if !facts.config_digest.is_empty() {
            assert_eq!(
                skopeo::remote_config_digest(&reference, registry.skopeo_creds()),
                facts.config_digest
            );
        }
    }
    // skopeo downloads every blob and checks its digest: the image is complete and intact.
    let copy = tempfile::tempdir().unwrap();
    skopeo::copy_to_oci(
        &format!("{}/{repository}:v1", registry.host()),
        registry.skopeo_creds(),
        copy.path(),
    );
    digest
}

#[test]
fn oci_layout_directory_keeps_its_digest() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("app"));
    push_and_check(&registry, dir.path(), "team/layout", &facts, &[]);
}

#[test]
fn oci_archive_plain_gzip_and_zstd_keep_their_digest() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    let facts = images::oci_archive(&tar, &ImageSpec::new("app").seed(2));
    images::gzip_file(&tar, &dir.path().join("image.tar.gz"));
    images::zstd_file(&tar, &dir.path().join("image.tar.zst"));
    for name in ["image.tar", "image.tar.gz", "image.tar.zst"] {
        push_and_check(
            &registry,
            &dir.path().join(name),
            "team/archive",
            &facts,
            &[],
        );
    }
}

#[test]
fn manifest_without_media_type_is_pushed_byte_for_byte() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout_without_media_type(dir.path(), &ImageSpec::new("umoci-style"));
    push_and_check(&registry, dir.path(), "team/umoci", &facts, &[]);
}

#[test]
fn legacy_docker_save_is_compressed_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    // One layer over several compression chunks: from the wrapped copies, part of it is
    // compressed while the archive is decompressed, and the rest when it is pushed.
    let spec = ImageSpec::new("legacy").layer_sizes(&[3_500_000, 150_000, 1_100_000, 20_000]);
    let facts = images::docker_save_legacy(&tar, &[spec]).remove(0);
    images::gzip_file(&tar, &dir.path().join("legacy.tar.gz"));
    images::zstd_file(&tar, &dir.path().join("legacy.tar.zst"));

    // Two fresh registries, and the gzip- and zstd-wrapped copies: one digest.
    let first = Registry::start();
    let digest = push_and_check(&first, &tar, "team/legacy", &facts, &[]);
    let config = skopeo::inspect_config(&format!("{}/team/legacy:v1", first.host()), None);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(facts.diff_ids)
    );
    let second = Registry::start();
    for name in ["legacy.tar", "legacy.tar.gz", "legacy.tar.zst"] {
        assert_eq!(
            push_and_check(&second, &dir.path().join(name), "team/legacy", &facts, &[]),
            digest
        );
    }
}

#[test]
fn compression_level_is_what_the_layers_are_compressed_with() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    let spec = ImageSpec::new("levels").layer_sizes(&[1_500_000, 300_000]);
    let facts = images::docker_save_legacy(&tar, &[spec]).remove(0);
    let layer_bytes = |repository: &str| -> u64 {
        let manifest: serde_json::Value = serde_json::from_slice(&skopeo::inspect_raw(
            &format!("{}/{repository}:v1", registry.host()),
            None,
        ))
        .unwrap();
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| layer["size"].as_u64().unwrap())
            .sum()
    };
    // The default (gzip level 1), then level 9: another digest, smaller layers, the same image
    // (push_and_check has skopeo read every blob back and the config keep its digest).
    let fast = push_and_check(&registry, &tar, "team/level-1", &facts, &[]);
    let best = push_and_check(
        &registry,
        &tar,
        "team/level-9",
        &facts,
        &["--compression-level", "9"],
    );
    assert_ne!(fast, best, "the level changes the compressed bytes");
    assert!(
        layer_bytes("team/level-9") < layer_bytes("team/level-1"),
        "level 9 compresses more than level 1"
    );
    // Out of range: a usage error, nothing pushed.
    let run = ecr_push(
        [
            "push",
            tar.to_str().unwrap(),
            "--registry",
            &registry.url(),
            "--repository",
            "team/level-13",
            "--tag",
            "v1",
            "--compression-level",
            "13",
        ],
        &[],
    );
    run.failure(2);
    assert!(run.stderr.contains("1 to 12"), "{}", run.stderr);
    assert!(registry.tags("team/level-13").is_empty());
}

#[test]
fn legacy_layers_can_be_zstd() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    let facts = images::docker_save_legacy(&tar, &[ImageSpec::new("zstd")]).remove(0);
    push_and_check(
        &registry,
        &tar,
        "team/zstd",
        &facts,
        &["--compression", "zstd"],
    );
    let manifest: serde_json::Value = serde_json::from_slice(&skopeo::inspect_raw(
        &format!("{}/team/zstd:v1", registry.host()),
        None,
    ))
    .unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
}

#[test]
fn docker_25_save_is_pushed_from_its_oci_index() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("docker25.tar");
    let facts = images::docker_save_25(&tar, &ImageSpec::new("modern"));
    let run_digest = push_and_check(&registry, &tar, "team/docker25", &facts, &[]);
    assert_eq!(run_digest, facts.digest);
}

#[test]
fn multi_platform_layout_is_pushed_whole_or_one_platform() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let specs =
        ["linux/amd64", "linux/arm64", "linux/arm/v7"].map(|p| ImageSpec::new("multi").platform(p));
    let facts = images::oci_layout_multi(dir.path(), &specs);

    let run = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &registry.url(),
            "--repository",
            "team/multi",
            "--tag",
            "all",
            "--json",
        ],
        &[],
    );
    run.success();
    let report = run.json();
    assert_eq!(report["digest"], facts.digest.as_str());
    assert_eq!(report["media_type"], images::OCI_INDEX);
    let platforms = report["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 3);
    for (platform, digest, _) in &facts.platforms {
        assert!(
            platforms
                .iter()
                .any(|p| p["platform"] == platform.as_str() && p["digest"] == digest.as_str()),
            "{platform} missing from {platforms:?}"
        );
    }
    assert_eq!(
        skopeo::remote_digest(&format!("{}/team/multi:all", registry.host()), None),
        facts.digest
    );
    let copy = tempfile::tempdir().unwrap();
    skopeo::copy_to_oci(
        &format!("{}/team/multi:all", registry.host()),
        None,
        copy.path(),
    );

    let (platform, digest, config) = &facts.platforms[2];
    let run = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &registry.url(),
            "--repository",
            "team/arm",
            "--tag",
            "v7",
            "--platform",
            platform,
            "--json",
        ],
        &[],
    );
    run.success();
    assert_eq!(run.field("digest"), *digest);
    assert_eq!(run.field("config_digest"), *config);
    assert_eq!(run.field("media_type"), images::OCI_MANIFEST);
    assert_eq!(
        skopeo::remote_digest(&format!("{}/team/arm:v7", registry.host()), None),
        *digest
    );
}

#[test]
fn docker_29_save_with_absent_platforms_needs_a_platform() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("docker29.tar");
    let specs = ["linux/amd64", "linux/arm64"].map(|p| ImageSpec::new("cd").platform(p));
    let facts = images::docker_save_29(&tar, &specs, &specs[..1]);
    let source = tar.to_str().unwrap();

    let whole = ecr_push(
        [
            "push",
            source,
            "--registry",
            &registry.url(),
            "--repository",
            "team/cd",
            "--tag",
            "x",
        ],
        &[],
    );
    whole.failure(2);
    assert!(
        whole.stderr.contains("linux/arm64"),
        "the error names the absent platform: {}",
        whole.stderr
    );
    assert!(
        whole.stderr.contains("--platform linux/amd64"),
        "and says how to push what is there: {}",
        whole.stderr
    );
    assert!(
        registry.catalog().is_empty(),
        "nothing may be written for refused input"
    );

    let absent = ecr_push(
        [
            "push",
            source,
            "--registry",
            &registry.url(),
            "--repository",
            "team/cd",
            "--tag",
            "x",
            "--platform",
            "linux/arm64",
        ],
        &[],
    );
    absent.failure(2);

    let run = ecr_push(
        [
            "push",
            source,
            "--registry",
            &registry.url(),
            "--repository",
            "team/cd",
            "--tag",
            "amd64",
            "--platform",
            "linux/amd64",
            "--json",
        ],
        &[],
    );
    run.success();
    assert_eq!(run.field("digest"), facts.platforms[0].1);
    assert_eq!(
        skopeo::remote_config_digest(&format!("{}/team/cd:amd64", registry.host()), None),
        facts.platforms[0].2
    );
}

#[test]
fn several_images_in_one_tar_need_image() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("two.tar");
    let facts = images::docker_save_legacy(
        &tar,
        &[ImageSpec::new("first"), ImageSpec::new("second").tag("v2")],
    );
    let source = tar.to_str().unwrap();

    let ambiguous = ecr_push(
        [
            "push",
            source,
            "--registry",
            &registry.url(),
            "--repository",
            "team/two",
            "--tag",
            "x",
        ],
        &[],
    );
    ambiguous.failure(2);
    assert!(
        ambiguous.stderr.contains("first:v1") && ambiguous.stderr.contains("second:v2"),
        "{}",
        ambiguous.stderr
    );
    assert!(registry.catalog().is_empty());

    let run = ecr_push(
        [
            "push",
            source,
            "--registry",
            &registry.url(),
            "--repository",
            "team/two",
            "--tag",
            "x",
            "--image",
            "second:v2",
            "--json",
        ],
        &[],
    );
    run.success();
    assert_eq!(run.field("config_digest"), facts[1].config_digest);
}

#[test]
fn re_push_uploads_nothing_and_keeps_the_digest() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let legacy = dir.path().join("legacy.tar");
    images::docker_save_legacy(&legacy, &[ImageSpec::new("again")]);
    let layout = dir.path().join("layout");
    images::oci_layout(&layout, &ImageSpec::new("again").seed(7));
    for (source, repository) in [(&legacy, "team/again-legacy"), (&layout, "team/again-oci")] {
        let push = || {
            let run = ecr_push(
                [
                    "push",
                    source.to_str().unwrap(),
                    "--registry",
                    &registry.url(),
                    "--repository",
                    repository,
                    "--tag",
                    "v1",
                    "--json",
                ],
                &[],
            );
            run.success();
            run.json()
        };
        let first = push();
        assert!(first["blobs_uploaded"].as_u64().unwrap() >= 4);
        let second = push();
        assert_eq!(second["digest"], first["digest"]);
        assert_eq!(
            second["blobs_uploaded"], 0,
            "a re-push uploads nothing: {second}"
        );
        assert_eq!(second["bytes_uploaded"], 0);
        assert_eq!(second["blobs_skipped"], first["blobs_uploaded"]);
    }
}

#[test]
fn committed_fixtures_made_by_real_tools() {
    let registry = Registry::start();
    let facts = fixture_facts();
    for (name, fixture) in facts
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
    {
        let repository = format!("fixtures/{}", name.replace(['.', '_'], "-").to_lowercase());
        let expected = Facts {
            digest: if fixture["format"] == "docker-archive" {
                String::new()
            } else {
                fixture["manifest_digest"].as_str().unwrap().to_owned()
            },
            config_digest: fixture["config_digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ..Facts::default()
        };
        push_and_check(
            &registry,
            &fixtures().join(fixture["path"].as_str().unwrap()),
            &repository,
            &expected,
            &[],
        );
    }
}

#[test]
fn basic_auth_registry() {
    let registry = Registry::start_with_basic_auth("ci", "s3cret-pw");
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("auth"));
    let source = dir.path().to_str().unwrap();
    let args = [
        "push",
        source,
        "--registry",
        &registry.url(),
        "--repository",
        "team/auth",
        "--tag",
        "v1",
        "--username",
        "ci",
        "--json",
    ];

    let run = ecr_push(args, &[("ECR_PUSH_PASSWORD", "s3cret-pw")]);
    run.success();
    assert_eq!(run.field("digest"), facts.digest);
    assert!(!run.stdout.contains("s3cret-pw") && !run.stderr.contains("s3cret-pw"));

    let wrong = ecr_push(args, &[("ECR_PUSH_PASSWORD", "wrong-pw")]);
    wrong.failure(1);
    assert!(
        wrong.stderr.contains("refused the credentials"),
        "{}",
        wrong.stderr
    );
    assert!(!wrong.stderr.contains("wrong-pw"));

    let anonymous = ecr_push(
        [
            "push",
            source,
            "--registry",
            &registry.url(),
            "--repository",
            "team/auth",
            "--tag",
            "v1",
        ],
        &[],
    );
    anonymous.failure(1);
    assert!(
        anonymous.stderr.contains("--username"),
        "says how to pass credentials: {}",
        anonymous.stderr
    );

    let no_password = ecr_push(args, &[]);
    no_password.failure(2);
    assert!(
        no_password.stderr.contains("ECR_PUSH_PASSWORD"),
        "{}",
        no_password.stderr
    );
}

#[test]
fn text_mode_prints_the_reference_last() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("text"));
    let run = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &registry.url(),
            "--repository",
            "team/text",
            "--tag",
            "v1",
        ],
        &[],
    );
    run.success();
    assert_eq!(
        run.stdout.lines().last().unwrap(),
        format!("{}/team/text@{}", registry.host(), facts.digest)
    );
    assert!(
        run.stderr.contains("verified"),
        "progress goes to stderr: {}",
        run.stderr
    );
    let quiet = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &registry.url(),
            "--repository",
            "team/text",
            "--tag",
            "v1",
            "--quiet",
        ],
        &[],
    );
    quiet.success();
    assert!(
        quiet.stderr.is_empty(),
        "--quiet prints no progress: {}",
        quiet.stderr
    );
}

#[test]
fn default_tag_is_the_commit_sha() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    images::oci_layout(&layout, &ImageSpec::new("sha"));
    let source = layout.to_str().unwrap();
    let args = [
        "push",
        source,
        "--registry",
        &registry.url(),
        "--repository",
        "team/sha",
        "--json",
    ];

    let github_sha = "1111111111111111111111111111111111111111";
    let run = ecr_push(
        args,
        &[
            ("GITHUB_SHA", github_sha),
            ("CI_COMMIT_SHA", "2222222222222222222222222222222222222222"),
        ],
    );
    run.success();
    assert_eq!(run.json()["tags"], serde_json::json!([github_sha]));

    let gitlab_sha = "3333333333333333333333333333333333333333";
    assert_eq!(
        ecr_push(args, &[("CI_COMMIT_SHA", gitlab_sha)]).json()["tags"],
        serde_json::json!([gitlab_sha])
    );

    // No CI variables: the checkout's HEAD.
    let repo = dir.path().join("checkout");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(status.status.success(), "git {args:?}");
        String::from_utf8(status.stdout).unwrap().trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "x"]);
    let head = git(&["rev-parse", "HEAD"]);
    let run = ecr_push_in(Some(&repo), args, &[]);
    run.success();
    assert_eq!(run.json()["tags"], serde_json::json!([head]));

    let outside = ecr_push_in(Some(dir.path()), args, &[]);
    outside.failure(2);
    assert!(
        outside.stderr.contains("--tag"),
        "says how to pass a tag: {}",
        outside.stderr
    );
}

#[test]
fn full_verification_checks_layer_contents() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    images::docker_save_legacy(&tar, &[ImageSpec::new("full")]);
    let run = ecr_push(
        [
            "push",
            tar.to_str().unwrap(),
            "--registry",
            &registry.url(),
            "--repository",
            "team/full",
            "--tag",
            "v1",
            "--verify",
            "full",
            "--json",
        ],
        &[],
    );
    run.success();
    assert_eq!(run.field("verify_mode"), "full");
    assert_eq!(
        run.stderr.matches("content matches diff_id").count(),
        3,
        "{}",
        run.stderr
    );
}

#[test]
fn invalid_tag_or_repository_is_a_usage_error_and_writes_nothing() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    images::oci_layout(dir.path(), &ImageSpec::new("bad"));
    let source = dir.path().to_str().unwrap();
    for (repository, tag, needle) in [
        ("team/app", "-bad", "invalid tag"),
        ("team/app", "a/b", "invalid tag"),
        ("Team/App", "v1", "invalid repository name"),
    ] {
        let run = ecr_push(
            [
                "push",
                source,
                "--registry",
                &registry.url(),
                "--repository",
                repository,
                &format!("--tag={tag}"),
            ],
            &[],
        );
        run.failure(2);
        assert!(run.stderr.contains(needle), "{}", run.stderr);
    }
    assert!(registry.catalog().is_empty());
}

#[test]
fn bearer_token_flow() {
    use crate::harness::proxy::{Action, Proxy};
    use base64::Engine as _;
    use std::sync::{Arc, OnceLock};

    let registry = Registry::start();
    let realm: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let realm_in_hook = Arc::clone(&realm);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("robot:token-pw")
    );
    // A token service and a gate in front of the registry, as ghcr.io or Docker Hub have.
    let proxy = Proxy::start(&registry.url(), move |seen| {
        if seen.target.starts_with("/token") {
            return if seen.authorization.as_deref() == Some(basic.as_str())
                && seen
                    .target
                    .contains("scope=repository%3Ateam%2Fbearer%3Apull%2Cpush")
            {
                Action::Respond {
                    status: 200,
                    headers: vec![],
                    body: r#"{"token":"granted-bearer-token"}"#.into(),
                }
            } else {
                Action::status(401)
            };
        }
        if seen.authorization.as_deref() == Some("Bearer granted-bearer-token") {
            return Action::Forward;
        }
        Action::Respond {
            status: 401,
            headers: vec![(
                "WWW-Authenticate".into(),
                format!(
                    r#"Bearer realm="{}",service="test-registry",scope="repository:team/bearer:pull,push""#,
                    realm_in_hook.get().unwrap()
                ),
            )],
            body: r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                .into(),
        }
    });
    realm.set(format!("{}/token", proxy.url())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("bearer"));
    let run = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &proxy.url(),
            "--repository",
            "team/bearer",
            "--tag",
            "v1",
            "--username",
            "robot",
            "--json",
        ],
        &[("ECR_PUSH_PASSWORD", "token-pw")],
    );
    run.success();
    assert_eq!(run.field("digest"), facts.digest);
    assert_eq!(
        registry.manifest_digest("team/bearer", "v1").as_deref(),
        Some(facts.digest.as_str())
    );
    let token_requests = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.target.starts_with("/token"))
        .count();
    assert_eq!(token_requests, 1, "one token serves the whole push");
}

#[test]
fn a_new_tag_reuses_compressed_layers_found_in_the_repository() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.tar");
    images::docker_save_legacy(&first, &[ImageSpec::new("ci").layers(3)]);
    // The next commit: same base layer, others changed.
    let second = dir.path().join("second.tar");
    images::docker_save_legacy(&second, &[ImageSpec::new("ci-next").layers(3)]);
    let push = |source: &Path, tag: &str| {
        let run = ecr_push(
            [
                "push",
                source.to_str().unwrap(),
                "--registry",
                &registry.url(),
                "--repository",
                "team/ci",
                "--tag",
                tag,
                "--json",
            ],
            &[],
        );
        run.success();
        run.json()
    };
    let built = push(&first, "sha-1");
    assert_eq!(built["blobs_uploaded"], 4);
    // CI pushes every commit under a new tag: the earlier image is found through tags/list.
    let same_image = push(&first, "sha-2");
    assert_eq!(same_image["blobs_uploaded"], 0, "{same_image}");
    assert_eq!(same_image["digest"], built["digest"]);
    let next = push(&second, "sha-3");
    assert_eq!(
        next["blobs_skipped"], 1,
        "the shared base layer is reused: {next}"
    );
    assert_eq!(
        next["blobs_uploaded"], 3,
        "two changed layers and the config: {next}"
    );
}

#[test]
fn local_layer_cache_skips_compression_when_the_registry_cannot_list() {
    use crate::harness::proxy::{Action, Proxy};
    let registry = Registry::start();
    // A registry that answers no tag listing and no manifest reads before the push: only the
    // local cache can tell which compressed layers it has.
    let pushed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = Proxy::start(&registry.url(), {
        let pushed = std::sync::Arc::clone(&pushed);
        move |seen| {
            let lookup = seen.target.contains("/tags/list")
                || (seen.method == "GET"
                    && seen.target.contains("/manifests/")
                    && !pushed.load(std::sync::atomic::Ordering::SeqCst));
            if seen.method == "PUT" && seen.target.contains("/manifests/") {
                pushed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if lookup {
                Action::status(404)
            } else {
                Action::Forward
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    images::docker_save_legacy(&tar, &[ImageSpec::new("cached")]);
    let cache = dir.path().join("cache");
    let push = |tag: &str| {
        pushed.store(false, std::sync::atomic::Ordering::SeqCst);
        let run = ecr_push(
            [
                "push",
                tar.to_str().unwrap(),
                "--registry",
                &proxy.url(),
                "--repository",
                "team/cached",
                "--tag",
                tag,
                "--cache-dir",
                cache.to_str().unwrap(),
                "--json",
            ],
            &[],
        );
        run.success();
        run.json()
    };
    let first = push("one");
    assert_eq!(first["blobs_uploaded"], 4);
    assert!(cache.join("ecr-push-layers.json").is_file());
    let second = push("two");
    assert_eq!(second["blobs_uploaded"], 0, "{second}");
    assert_eq!(second["digest"], first["digest"]);
}

#[test]
fn one_read_pushed_to_several_registries() {
    let (first, second) = (Registry::start(), Registry::start());
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    let facts = images::docker_save_legacy(&tar, &[ImageSpec::new("fanout")]).remove(0);
    let run = ecr_push(
        [
            "push",
            tar.to_str().unwrap(),
            "--registry",
            &first.url(),
            "--registry",
            &second.url(),
            "--repository",
            "team/fanout",
            "--tag",
            "v1",
            "--json",
        ],
        &[],
    );
    run.success();
    let report = run.json();
    let destinations = report["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 2);
    let digest = report["digest"].as_str().unwrap();
    // Three layers, compressed once for both registries (see also `fanout`).
    assert_eq!(report["layers_compressed"], 3, "{report}");
    for (registry, destination) in [(&first, &destinations[0]), (&second, &destinations[1])] {
        assert_eq!(destination["digest"], digest);
        assert_eq!(destination["verified"], true);
        let reference = format!("{}/team/fanout:v1", registry.host());
        assert_eq!(skopeo::remote_digest(&reference, None), digest);
        assert_eq!(
            skopeo::remote_config_digest(&reference, None),
            facts.config_digest
        );
    }

    // Text mode prints every reference.
    let text = ecr_push(
        [
            "push",
            tar.to_str().unwrap(),
            "--registry",
            &format!("{},{}", first.url(), second.url()),
            "--repository",
            "team/fanout",
            "--tag",
            "v2",
        ],
        &[],
    );
    text.success();
    assert_eq!(text.stdout.lines().count(), 2, "{}", text.stdout);
}

#[test]
fn a_failing_destination_does_not_stop_the_others() {
    use crate::harness::proxy::{Action, Proxy};
    let working = Registry::start();
    let broken_backend = Registry::start();
    let broken = Proxy::start(&broken_backend.url(), |_| Action::status(503));
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("partial"));
    let run = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &broken.url(),
            "--registry",
            &working.url(),
            "--repository",
            "team/partial",
            "--tag",
            "v1",
            "--json",
            "--timeout",
            "3",
        ],
        &[],
    );
    run.failure(1);
    assert!(
        run.stderr.contains(&broken.url()) && run.stderr.contains("1 of 2 destinations"),
        "{}",
        run.stderr
    );
    let report = run.json();
    let destinations = report["destinations"].as_array().unwrap();
    assert!(
        destinations[0]["error"].as_str().unwrap().contains("503"),
        "{report}"
    );
    assert_eq!(destinations[1]["digest"], facts.digest.as_str());
    assert_eq!(
        working.manifest_digest("team/partial", "v1").as_deref(),
        Some(facts.digest.as_str())
    );
}
