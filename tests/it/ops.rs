//! Repository operations (`tag`, `status`, `images`, `cleanup`, `lifecycle`) against moto and
//! a real registry.

use serde_json::json;

use crate::harness::images::{self, ImageSpec};
use crate::harness::moto::Moto;
use crate::harness::{Registry, Run, ecr_push, sha256, skopeo};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "eu-west-1";

/// moto with the default account's credentials, and its registry data plane.
struct Setup {
    moto: Moto,
    registry: Registry,
}

impl Setup {
    fn start() -> Self {
        Self {
            moto: Moto::start(),
            registry: Registry::start_with_basic_auth("AWS", &format!("{ACCOUNT}-auth-token")),
        }
    }

    fn env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEOPS"),
            ("AWS_SECRET_ACCESS_KEY", "ops-secret"),
            ("AWS_REGION", REGION),
        ]
    }

    /// `ecr-push <args> --registry … --ecr-endpoint … --sts-endpoint …`.
    fn run(&self, args: &[&str]) -> Run {
        let url = self.registry.url();
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
        ecr_push(all, &Self::env())
    }

    fn ecr(&self, action: &str, body: &serde_json::Value) -> serde_json::Value {
        self.moto.ecr(ACCOUNT, action, body)
    }

    fn put(
        &self,
        repository: &str,
        manifest: &serde_json::Value,
        media_type: &str,
        tag: Option<&str>,
    ) -> String {
        let bytes = serde_json::to_vec(manifest).unwrap();
        let mut body = json!({
            "registryId": ACCOUNT, "repositoryName": repository, "imageManifest": String::from_utf8(bytes.clone()).unwrap(),
            "imageManifestMediaType": media_type, "imageDigest": sha256(&bytes),
        });
        if let Some(tag) = tag {
            body["imageTag"] = json!(tag);
        }
        self.ecr("PutImage", &body);
        sha256(&bytes)
    }

    fn remaining(&self, repository: &str) -> Vec<String> {
        let images = self.ecr(
            "DescribeImages",
            &json!({"registryId": ACCOUNT, "repositoryName": repository}),
        );
        let mut digests: Vec<String> = images["imageDetails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["imageDigest"].as_str().unwrap().to_owned())
            .collect();
        digests.sort();
        digests
    }
}

fn manifest(seed: &str) -> serde_json::Value {
    let config = sha256(seed.as_bytes());
    json!({"schemaVersion": 2, "mediaType": images::OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 10},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(format!("layer {seed}").as_bytes()), "size": 20}]})
}

fn sorted(mut digests: Vec<String>) -> Vec<String> {
    digests.sort();
    digests
}

#[test]
fn tag_promotes_without_uploading_within_and_across_repositories() {
    let setup = Setup::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("promote"));
    setup
        .run(&[
            "push",
            dir.path().to_str().unwrap(),
            "--repository",
            "team/app",
            "--tag",
            "build-1",
        ])
        .success();

    // Same repository: new tags on the same manifest.
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
    assert_eq!(run.json()["blobs_copied"], 0);
    for tag in ["prod", "v1.2.3"] {
        assert_eq!(
            setup.registry.manifest_digest("team/app", tag).as_deref(),
            Some(facts.digest.as_str())
        );
    }

    // Another repository: created, blobs mounted or copied, the digest kept.
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
    assert_eq!(
        setup.ecr(
            "DescribeRepositories",
            &json!({"repositoryNames": ["team/app-prod"]})
        )["repositories"][0]["repositoryName"],
        "team/app-prod"
    );
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
}

#[test]
fn tag_honours_immutable_tags() {
    let setup = Setup::start();
    let dir = tempfile::tempdir().unwrap();
    let first = images::oci_layout(&dir.path().join("a"), &ImageSpec::new("a").seed(1));
    let second = images::oci_layout(&dir.path().join("b"), &ImageSpec::new("b").seed(2));
    for (path, tag) in [("a", "a"), ("b", "b")] {
        setup
            .run(&[
                "push",
                dir.path().join(path).to_str().unwrap(),
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
    let v1 = setup.put(
        "team/status",
        &manifest("one"),
        images::OCI_MANIFEST,
        Some("v1"),
    );
    let untagged = setup.put("team/status", &manifest("two"), images::OCI_MANIFEST, None);
    let release = setup.put(
        "team/status",
        &manifest("three"),
        images::OCI_MANIFEST,
        Some("release-2"),
    );

    let status = setup.run(&["status", "team/status", "--json"]);
    status.success();
    let report = status.json();
    assert_eq!(report["exists"], true);
    assert_eq!(report["tag_mutability"], "IMMUTABLE");
    assert_eq!(report["scan_on_push"], true);
    assert_eq!(report["image_count"], 3);
    assert_eq!(report["lifecycle_policy"]["rules"][0]["rulePriority"], 1);

    let text = setup.run(&["status", "team/status"]);
    text.success();
    assert!(
        text.stdout.contains("IMMUTABLE") && text.stdout.contains("release-2"),
        "{}",
        text.stdout
    );

    let digests = |run: &Run| {
        sorted(
            run.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["digest"].as_str().unwrap().to_owned())
                .collect(),
        )
    };
    let all = setup.run(&["images", "team/status", "--json"]);
    all.success();
    assert_eq!(
        digests(&all),
        sorted(vec![v1.clone(), untagged.clone(), release.clone()])
    );
    let untagged_only = setup.run(&["images", "team/status", "--filter", "untagged", "--json"]);
    assert_eq!(digests(&untagged_only), vec![untagged]);
    let prefixed = setup.run(&[
        "images",
        "team/status",
        "--tag-prefix",
        "release-",
        "--json",
    ]);
    assert_eq!(digests(&prefixed), vec![release]);

    let absent = setup.run(&["status", "team/absent", "--json"]);
    absent.success();
    assert_eq!(absent.json()["exists"], false);
}

#[test]
fn cleanup_deletes_what_matches_but_never_what_a_kept_index_needs() {
    let setup = Setup::start();
    setup.ecr("CreateRepository", &json!({"repositoryName": "team/clean"}));
    let orphan = setup.put(
        "team/clean",
        &manifest("orphan"),
        images::OCI_MANIFEST,
        None,
    );
    let amd64 = setup.put("team/clean", &manifest("amd64"), images::OCI_MANIFEST, None);
    let arm64 = setup.put("team/clean", &manifest("arm64"), images::OCI_MANIFEST, None);
    let index = json!({"schemaVersion": 2, "mediaType": images::OCI_INDEX, "manifests": [
        {"mediaType": images::OCI_MANIFEST, "digest": amd64, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": images::OCI_MANIFEST, "digest": arm64, "size": 1, "platform": {"architecture": "arm64", "os": "linux"}}]});
    let multi = setup.put("team/clean", &index, images::OCI_INDEX, Some("multi"));
    let before = setup.remaining("team/clean");

    let dry = setup.run(&[
        "cleanup",
        "team/clean",
        "--untagged",
        "--older-than",
        "0",
        "--dry-run",
        "--json",
    ]);
    dry.success();
    let report = dry.json();
    let planned: Vec<&str> = report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        planned,
        vec![orphan.as_str()],
        "only the orphan: the index's platforms are protected"
    );
    assert_eq!(
        sorted(
            report["protected"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect()
        ),
        sorted(vec![amd64.clone(), arm64.clone()])
    );
    assert_eq!(
        setup.remaining("team/clean"),
        before,
        "a dry run deletes nothing"
    );

    setup
        .run(&["cleanup", "team/clean", "--untagged", "--older-than", "0"])
        .success();
    assert_eq!(
        setup.remaining("team/clean"),
        sorted(vec![amd64, arm64, multi])
    );
}

#[test]
fn cleanup_keeps_the_newest() {
    let setup = Setup::start();
    setup.ecr("CreateRepository", &json!({"repositoryName": "team/keep"}));
    let mut digests = Vec::new();
    for name in ["oldest", "middle", "newest"] {
        digests.push(setup.put(
            "team/keep",
            &manifest(name),
            images::OCI_MANIFEST,
            Some(name),
        ));
        // moto records push times in whole seconds.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let run = setup.run(&["cleanup", "team/keep", "--keep", "1"]);
    run.success();
    assert!(run.stderr.contains("deleted 2 image(s)"), "{}", run.stderr);
    assert_eq!(setup.remaining("team/keep"), vec![digests[2].clone()]);
    let refused = setup.run(&["cleanup", "team/keep"]);
    refused.failure(2);
    assert!(refused.stderr.contains("--keep"), "{}", refused.stderr);
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
    let invalid = dir.path().join("invalid.json");
    std::fs::write(&invalid, "{not json").unwrap();
    setup
        .run(&["lifecycle", "team/life", "--set", invalid.to_str().unwrap()])
        .failure(2);
}
