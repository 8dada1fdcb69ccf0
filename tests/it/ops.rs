//! Repository operations (`tag`, `status`, `images`, `cleanup`, `lifecycle`) against moto and
//! a real registry. Images get there as in ECR: pushed by ecr-push over the registry API, and
//! seen by the ECR API because the harness mirror puts every accepted manifest into moto.

use std::collections::BTreeSet;

use serde_json::json;

use crate::harness::images::{self, ImageSpec, TestImage};
use crate::harness::mirror::Mirror;
use crate::harness::moto::Moto;
use crate::harness::proxy::{Action, Kind, Modify};
use crate::harness::{Facts, Registry, Run, ecr_push, sha256, skopeo};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "eu-west-1";

/// moto with the default account's credentials, its registry data plane, and the mirror
/// between ecr-push and the registry.
struct Setup {
    moto: Moto,
    registry: Registry,
    mirror: Mirror,
    dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Self {
        Self::start_with(|_| Action::Forward)
    }

    /// With `hook` deciding about each request on its way to the registry.
    fn start_with(
        hook: impl Fn(&crate::harness::proxy::Seen) -> Action + Send + Sync + 'static,
    ) -> Self {
        let moto = Moto::start();
        let registry = Registry::start_with_basic_auth("AWS", &format!("{ACCOUNT}-auth-token"));
        let mirror = Mirror::start_with(&registry.url(), &moto.url(), ACCOUNT, REGION, hook);
        Self {
            moto,
            registry,
            mirror,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEOPS"),
            ("AWS_SECRET_ACCESS_KEY", "ops-secret"),
            ("AWS_REGION", REGION),
        ]
    }

    /// `ecr-push <args> --registry <mirror> --ecr-endpoint … --sts-endpoint …`.
    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// [`Setup::run`] with more environment variables.
    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let url = self.mirror.url();
        let moto = self.moto.url();
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--registry",
            &url,
            "--ecr-endpoint",
            &moto,
            "--sts-endpoint",
            &moto,
        ]);
        let mut env_all = Self::env();
        env_all.extend_from_slice(env);
        ecr_push(all, &env_all)
    }

    /// Pushes a written image (`layout` under the setup's directory) as `repository:tag`.
    fn push(&self, layout: &str, repository: &str, tag: &str) {
        let path = self.dir.path().join(layout);
        self.run(&[
            "push",
            path.to_str().unwrap(),
            "--repository",
            repository,
            "--tag",
            tag,
        ])
        .success();
    }

    /// Writes an OCI layout of `image` under the setup's directory.
    fn layout(&self, name: &str, write: impl FnOnce(&std::path::Path) -> Facts) -> Facts {
        write(&self.dir.path().join(name))
    }

    fn ecr(&self, action: &str, body: &serde_json::Value) -> serde_json::Value {
        self.moto.ecr(ACCOUNT, action, body)
    }

    /// Digest → tags of every image moto's ECR API knows in `repository`.
    fn images(&self, repository: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
        let images = self.ecr(
            "DescribeImages",
            &json!({"registryId": ACCOUNT, "repositoryName": repository}),
        );
        images["imageDetails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["imageDigest"].as_str().unwrap().to_owned(),
                    i["imageTags"]
                        .as_array()
                        .map(|tags| {
                            tags.iter()
                                .map(|t| t.as_str().unwrap().to_owned())
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    fn remaining(&self, repository: &str) -> BTreeSet<String> {
        self.images(repository).into_keys().collect()
    }
}

fn set(digests: &[&str]) -> BTreeSet<String> {
    digests.iter().map(|d| (*d).to_owned()).collect()
}

/// The digests of a JSON list of images (or of digest strings) in a report.
fn digests_of(value: &serde_json::Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().or(i.as_str()).unwrap().to_owned())
        .collect()
}

#[test]
fn tag_promotes_without_uploading_within_and_across_repositories() {
    let setup = Setup::start();
    let facts = setup.layout("promote", |dir| {
        images::oci_layout(dir, &ImageSpec::new("promote"))
    });
    setup.push("promote", "team/app", "build-1");
    assert_eq!(
        setup.images("team/app")[&facts.digest],
        set(&["build-1"]),
        "the ECR API sees the pushed image"
    );

    // Same repository: new tags on the same manifest, nothing moved.
    let run = setup.run(&[
        "tag",
        &format!("team/app@{}", facts.digest),
        "--tag",
        "prod",
        "--tag",
        "v1.2.3",
        "--json",
    ]);
    run.success();
    assert_eq!(run.field("digest"), facts.digest);
    assert_eq!(run.json()["blobs_mounted"], 0);
    assert_eq!(run.json()["blobs_copied"], 0);
    assert_eq!(
        setup.images("team/app")[&facts.digest],
        set(&["build-1", "prod", "v1.2.3"])
    );

    // Another repository: created, every blob (config and 3 layers) mounted, the digest kept.
    let run = setup.run(&[
        "tag",
        "team/app:build-1",
        "--tag",
        "prod",
        "--repository",
        "team/app-prod",
        "--json",
    ]);
    run.success();
    assert_eq!(run.field("digest"), facts.digest);
    assert_eq!(run.json()["blobs_mounted"], 4, "{}", run.stdout);
    assert_eq!(run.json()["blobs_copied"], 0);
    assert_eq!(setup.images("team/app-prod")[&facts.digest], set(&["prod"]));
    let reference = format!("{}/team/app-prod:prod", setup.registry.host());
    assert_eq!(
        skopeo::remote_digest(&reference, setup.registry.skopeo_creds()),
        facts.digest
    );
    let copy = tempfile::tempdir().unwrap();
    skopeo::copy_to_oci(&reference, setup.registry.skopeo_creds(), copy.path());

    // An image that is not there.
    let missing = setup.run(&["tag", "team/app:nope", "--tag", "prod"]);
    missing.failure(1);
    assert!(
        missing.stderr.contains("team/app:nope"),
        "{}",
        missing.stderr
    );
    setup.mirror.assert_no_errors();
}

#[test]
fn tag_copies_what_the_registry_will_not_mount() {
    // A registry that cannot mount (ECR without blob mounting, other encryption) answers the
    // mount request with 202, a plain upload session: here the mount parameters are dropped on
    // the way, so the registry starts a real session.
    let setup = Setup::start_with(|seen| {
        if seen.kind == Kind::StartUpload && seen.target.contains("mount=") {
            Action::ForwardModified(Modify {
                strip_query: true,
                ..Modify::default()
            })
        } else {
            Action::Forward
        }
    });
    let facts = setup.layout("multi", |dir| {
        TestImage::new("copied").write_oci_layout_multi(dir, &["linux/amd64", "linux/arm64"])
    });
    setup.push("multi", "team/src", "v1");
    let proxy = setup.mirror.proxy();
    let commits_before = proxy.count(Kind::CommitUpload);

    let run = setup.run(&[
        "tag",
        "team/src:v1",
        "--tag",
        "release",
        "--repository",
        "team/dst",
        "--json",
    ]);
    run.success();
    let report = run.json();
    // Two platforms: two configs, two own layers each, and the base layer they share.
    assert_eq!(report["blobs_copied"], 7, "{report}");
    assert_eq!(report["blobs_mounted"], 0);
    assert_eq!(proxy.count(Kind::CommitUpload) - commits_before, 7);
    assert_eq!(
        proxy.count(Kind::CancelUpload),
        7,
        "every session the refused mount opened was given back"
    );
    assert_eq!(report["digest"], facts.digest.as_str());
    let reference = format!("{}/team/dst:release", setup.registry.host());
    assert_eq!(
        skopeo::remote_digest(&reference, setup.registry.skopeo_creds()),
        facts.digest
    );
    // skopeo reads every copied blob back and checks its digest.
    let copy = tempfile::tempdir().unwrap();
    skopeo::copy_to_oci(&reference, setup.registry.skopeo_creds(), copy.path());
    let dst = setup.images("team/dst");
    assert_eq!(dst[&facts.digest], set(&["release"]));
    for (platform, digest, _) in &facts.platforms {
        assert!(dst.contains_key(digest), "{platform} is in the ECR API");
    }
    setup.mirror.assert_no_errors();
}

#[test]
fn tag_never_creates_the_images_own_repository() {
    let setup = Setup::start();
    let typo = setup.run(&["tag", "team/ap:v1", "--tag", "prod"]);
    typo.failure(2);
    assert!(
        typo.stderr.contains("team/ap") && typo.stderr.contains("does not exist"),
        "{}",
        typo.stderr
    );
    let repositories = setup.ecr("DescribeRepositories", &json!({}));
    assert_eq!(repositories["repositories"], json!([]), "nothing created");

    // Another repository only when --create-repository allows it.
    setup.layout("one", |dir| images::oci_layout(dir, &ImageSpec::new("one")));
    setup.push("one", "team/app", "v1");
    let refused = setup.run(&[
        "tag",
        "team/app:v1",
        "--tag",
        "prod",
        "--repository",
        "team/app-prod",
        "--create-repository",
        "false",
    ]);
    refused.failure(1);
    assert!(
        refused.stderr.contains("team/app-prod"),
        "{}",
        refused.stderr
    );
    let names: Vec<String> = setup.ecr("DescribeRepositories", &json!({}))["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repositoryName"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["team/app"]);
}

#[test]
fn tag_honours_immutable_tags() {
    let setup = Setup::start();
    let first = setup.layout("a", |dir| {
        images::oci_layout(dir, &ImageSpec::new("a").seed(1))
    });
    let second = setup.layout("b", |dir| {
        images::oci_layout(dir, &ImageSpec::new("b").seed(2))
    });
    for (path, tag) in [("a", "a"), ("b", "b")] {
        setup
            .run(&[
                "push",
                setup.dir.path().join(path).to_str().unwrap(),
                "--repository",
                "team/locked",
                "--tag",
                tag,
                "--tag-mutability",
                "IMMUTABLE",
            ])
            .success();
    }
    setup
        .run(&["tag", "team/locked:a", "--tag", "release"])
        .success();
    setup
        .run(&["tag", "team/locked:a", "--tag", "release"])
        .success();
    let conflict = setup.run(&["tag", "team/locked:b", "--tag", "release"]);
    conflict.failure(1);
    assert!(
        conflict.stderr.contains(&first.digest) && conflict.stderr.contains(&second.digest),
        "{}",
        conflict.stderr
    );
    assert_eq!(
        setup
            .registry
            .manifest_digest("team/locked", "release")
            .as_deref(),
        Some(first.digest.as_str())
    );
    assert_eq!(
        setup.images("team/locked")[&first.digest],
        set(&["a", "release"])
    );
    setup.mirror.assert_no_errors();
}

#[test]
fn status_and_images_describe_the_repository() {
    let setup = Setup::start();
    let policy = r#"{"rules":[{"rulePriority":1,"description":"keep 5 images always","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}}]}"#;
    setup.ecr("CreateRepository", &json!({"repositoryName": "team/status", "imageTagMutability": "IMMUTABLE", "imageScanningConfiguration": {"scanOnPush": true}}));
    setup.ecr(
        "PutLifecyclePolicy",
        &json!({"repositoryName": "team/status", "lifecyclePolicyText": policy}),
    );
    let single = setup.layout("single", |dir| {
        images::oci_layout(dir, &ImageSpec::new("single"))
    });
    let multi = setup.layout("multi", |dir| {
        TestImage::new("multi").write_oci_layout_multi(dir, &["linux/amd64", "linux/arm64"])
    });
    setup.push("single", "team/status", "v1");
    setup.push("multi", "team/status", "release-2");

    let status = setup.run(&["status", "team/status", "--json"]);
    status.success();
    let report = status.json();
    assert_eq!(report["exists"], true);
    assert_eq!(report["tag_mutability"], "IMMUTABLE");
    assert_eq!(report["scan_on_push"], true);
    // The single image, the index and its two platform manifests.
    assert_eq!(report["image_count"], 4);
    assert_eq!(report["lifecycle_policy"]["rules"][0]["rulePriority"], 1);

    let text = setup.run(&["status", "team/status"]);
    text.success();
    assert!(
        text.stdout.contains("IMMUTABLE") && text.stdout.contains("release-2"),
        "{}",
        text.stdout
    );

    let all = setup.run(&["images", "team/status", "--json"]);
    all.success();
    let platforms: Vec<&str> = multi.platforms.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(
        digests_of(&all.json()),
        set(&[&single.digest, &multi.digest, platforms[0], platforms[1]])
    );
    let untagged = setup.run(&["images", "team/status", "--filter", "untagged", "--json"]);
    assert_eq!(digests_of(&untagged.json()), set(&platforms));
    let prefixed = setup.run(&[
        "images",
        "team/status",
        "--tag-prefix",
        "release-",
        "--json",
    ]);
    assert_eq!(digests_of(&prefixed.json()), set(&[&multi.digest]));

    // Every option can come from the environment instead.
    let from_env = setup.run_env(
        &["images"],
        &[
            ("ECR_PUSH_REPOSITORY", "team/status"),
            ("ECR_PUSH_TAG_PREFIX", "v"),
            ("ECR_PUSH_JSON", "true"),
        ],
    );
    from_env.success();
    assert_eq!(digests_of(&from_env.json()), set(&[&single.digest]));
    let limited = setup.run_env(
        &["status"],
        &[
            ("ECR_PUSH_REPOSITORY", "team/status"),
            ("ECR_PUSH_LIMIT", "1"),
            ("ECR_PUSH_JSON", "true"),
        ],
    );
    limited.success();
    assert_eq!(limited.json()["newest"].as_array().unwrap().len(), 1);

    let absent = setup.run(&["status", "team/absent", "--json"]);
    absent.success();
    assert_eq!(absent.json()["exists"], false);
    setup.mirror.assert_no_errors();
}

/// An untagged manifest nothing refers to (a platform image whose index is gone), put into
/// the ECR API directly: ECR keeps one when a tag moves, moto deletes it.
fn put_orphan(setup: &Setup, repository: &str) -> String {
    let config = sha256(b"orphan config");
    let manifest = json!({"schemaVersion": 2, "mediaType": images::OCI_MANIFEST,
        "config": {"mediaType": images::OCI_CONFIG, "digest": config, "size": 13},
        "layers": [{"mediaType": images::LAYER_GZIP, "digest": sha256(b"orphan layer"), "size": 12}]});
    let bytes = serde_json::to_vec(&manifest).unwrap();
    setup.ecr(
        "PutImage",
        &json!({"registryId": ACCOUNT, "repositoryName": repository,
                "imageManifest": String::from_utf8(bytes.clone()).unwrap(),
                "imageManifestMediaType": images::OCI_MANIFEST, "imageDigest": sha256(&bytes)}),
    );
    sha256(&bytes)
}

#[test]
fn cleanup_counts_whole_images_and_keeps_what_a_kept_image_needs() {
    let setup = Setup::start();
    // Two multi-platform images with BuildKit attestations; the older one with its index
    // nested in another (outer index → inner index → platform and attestation manifests). They
    // share the linux/amd64 manifest and its attestation.
    let image = TestImage::new("cleanup");
    let old = setup.layout("old", |dir| {
        image.write_oci_layout_nested(dir, &["linux/amd64", "linux/arm64"])
    });
    let new = setup.layout("new", |dir| {
        image.write_oci_layout_attested(dir, &["linux/amd64", "linux/s390x"])
    });
    setup.ecr("CreateRepository", &json!({"repositoryName": "team/clean"}));
    let orphan = put_orphan(&setup, "team/clean");
    // moto records push times in whole seconds: keep the order unambiguous.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    setup.push("old", "team/clean", "v1");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    setup.push("new", "team/clean", "v2");
    let everything = setup.remaining("team/clean");
    // The orphan; v1's two indexes, two platform manifests and two attestations; v2's index
    // and its own platform manifest and attestation.
    assert_eq!(everything.len(), 1 + 2 + 4 + 1 + 2, "{everything:#?}");
    let (amd64, arm64, s390x) = (
        &old.platforms[0].1,
        &old.platforms[1].1,
        &new.platforms[1].1,
    );
    assert_eq!(amd64, &new.platforms[0].1, "the shared platform manifest");
    let (amd64_att, arm64_att, s390x_att) = (
        &old.attestations[0],
        &old.attestations[1],
        &new.attestations[1],
    );
    let inner = &old.nested_indexes[0];

    // Untagged images only: that is the orphan. The nested index and the manifests below it
    // are untagged too, but they are parts of v1, which stays.
    let untagged = setup.run(&[
        "cleanup",
        "team/clean",
        "--untagged",
        "--older-than",
        "0",
        "--json",
    ]);
    untagged.success();
    assert_eq!(digests_of(&untagged.json()["deleted"]), set(&[&orphan]));
    everything_but(&setup, &everything, &[&orphan]);

    // Keep the newest image: v2 with its parts stays; v1 goes with the parts only it has. The
    // shared platform manifest and attestation stay for v2.
    let dry = setup.run(&[
        "cleanup",
        "team/clean",
        "--keep",
        "1",
        "--dry-run",
        "--json",
    ]);
    dry.success();
    let report = dry.json();
    let v1_alone = [&old.digest, inner, arm64, arm64_att];
    assert_eq!(
        digests_of(&report["deleted"]),
        set(&v1_alone.map(String::as_str))
    );
    assert_eq!(digests_of(&report["protected"]), set(&[amd64, amd64_att]));
    everything_but(&setup, &everything, &[&orphan]);

    let run = setup.run(&["cleanup", "team/clean", "--keep", "1"]);
    run.success();
    assert!(run.stderr.contains("deleted 4 image(s)"), "{}", run.stderr);
    assert_eq!(
        setup.remaining("team/clean"),
        set(&[&new.digest, amd64, amd64_att, s390x, s390x_att])
    );
    let refused = setup.run(&["cleanup", "team/clean"]);
    refused.failure(2);
    assert!(refused.stderr.contains("--keep"), "{}", refused.stderr);
    setup.mirror.assert_no_errors();
}

#[track_caller]
fn everything_but(setup: &Setup, everything: &BTreeSet<String>, gone: &[&String]) {
    let expected: BTreeSet<String> = everything
        .iter()
        .filter(|d| !gone.contains(d))
        .cloned()
        .collect();
    assert_eq!(setup.remaining("team/clean"), expected);
}

#[test]
fn images_ecr_does_not_delete_are_reported_and_fail_the_cleanup() {
    let setup = Setup::start();
    setup.ecr("CreateRepository", &json!({"repositoryName": "team/stuck"}));
    let orphan = put_orphan(&setup, "team/stuck");
    // An image BatchDeleteImage refuses: moto checks digests against sha256:<64 hex>, and this
    // one (put with a malformed digest) fails that check, as an image ECR will not delete.
    let stuck = "sha256:not-a-real-digest";
    let manifest = json!({"schemaVersion": 2, "mediaType": images::OCI_MANIFEST,
        "config": {"mediaType": images::OCI_CONFIG, "digest": sha256(b"c"), "size": 1}, "layers": []});
    setup.ecr(
        "PutImage",
        &json!({"registryId": ACCOUNT, "repositoryName": "team/stuck",
                "imageManifest": manifest.to_string(),
                "imageManifestMediaType": images::OCI_MANIFEST, "imageDigest": stuck}),
    );
    let run = setup.run(&["cleanup", "team/stuck", "--older-than", "0", "--json"]);
    run.failure(1);
    let report = run.json();
    assert_eq!(digests_of(&report["deleted"]), set(&[&orphan]));
    assert_eq!(report["failures"][0]["digest"], stuck);
    assert_eq!(report["failures"][0]["code"], "InvalidImageDigest");
    assert!(
        run.stderr.contains("could not delete 1") && run.stderr.contains(stuck),
        "{}",
        run.stderr
    );
    assert_eq!(setup.remaining("team/stuck"), set(&[stuck]));
}

#[test]
fn cleanup_options_come_from_the_environment_too() {
    let setup = Setup::start();
    setup.ecr("CreateRepository", &json!({"repositoryName": "team/env"}));
    let orphan = put_orphan(&setup, "team/env");
    let run = setup.run_env(
        &["cleanup"],
        &[
            ("ECR_PUSH_REPOSITORY", "team/env"),
            ("ECR_PUSH_OLDER_THAN", "0"),
            ("ECR_PUSH_UNTAGGED", "true"),
            ("ECR_PUSH_DRY_RUN", "true"),
            ("ECR_PUSH_JSON", "true"),
        ],
    );
    run.success();
    assert_eq!(run.json()["dry_run"], true);
    assert_eq!(digests_of(&run.json()["deleted"]), set(&[&orphan]));
    assert_eq!(setup.remaining("team/env"), set(&[&orphan]));
}

#[test]
fn lifecycle_policy_is_set_and_shown() {
    let setup = Setup::start();
    setup.ecr("CreateRepository", &json!({"repositoryName": "team/life"}));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"rules":[{"rulePriority":1,"description":"expire untagged after a day","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}}]}"#).unwrap();
    setup
        .run(&["lifecycle", "team/life", "--set", policy.to_str().unwrap()])
        .success();
    let stored = setup.ecr(
        "GetLifecyclePolicy",
        &json!({"repositoryName": "team/life"}),
    );
    let stored: serde_json::Value =
        serde_json::from_str(stored["lifecyclePolicyText"].as_str().unwrap()).unwrap();
    assert_eq!(stored["rules"][0]["selection"]["tagStatus"], "untagged");
    let shown = setup.run(&["lifecycle", "team/life", "--json"]);
    shown.success();
    assert_eq!(shown.json()["policy"], stored);
    let from_env = setup.run_env(
        &["lifecycle"],
        &[
            ("ECR_PUSH_REPOSITORY", "team/life"),
            ("ECR_PUSH_JSON", "true"),
        ],
    );
    from_env.success();
    assert_eq!(from_env.json()["policy"], stored);
    let invalid = dir.path().join("invalid.json");
    std::fs::write(&invalid, "{not json").unwrap();
    setup
        .run(&["lifecycle", "team/life", "--set", invalid.to_str().unwrap()])
        .failure(2);
}
