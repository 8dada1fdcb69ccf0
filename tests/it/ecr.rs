//! ECR mode end to end: `moto_server` for STS and ECR, a real registry (htpasswd user `AWS`
//! with moto's token password) as the data plane, a fake GitHub OIDC endpoint in this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::harness::images::{self, ImageSpec};
use crate::harness::mirror::Mirror;
use crate::harness::moto::Moto;
use crate::harness::oidc::OidcServer;
use crate::harness::proxy::{Action, Proxy};
use crate::harness::{Registry, Run, ecr_push, skopeo};

const ACCOUNT: &str = "210987654321";
const REGION: &str = "eu-west-1";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const SUBJECT: &str = "repo:acme/app:ref:refs/heads/main";

/// One AWS account's worth of test infrastructure.
struct Ecr {
    moto: Moto,
    registry: Registry,
    oidc: OidcServer,
}

impl Ecr {
    fn start() -> Self {
        Self {
            moto: Moto::start(),
            // moto's GetAuthorizationToken always answers AWS:<account>-auth-token.
            registry: Registry::start_with_basic_auth("AWS", &format!("{ACCOUNT}-auth-token")),
            oidc: OidcServer::start(SUBJECT, "request-token-for-the-job"),
        }
    }

    fn role() -> String {
        format!("arn:aws:iam::{ACCOUNT}:role/ci-push")
    }

    /// The environment of a GitHub Actions job with `id-token: write`.
    fn github_env(&self) -> Vec<(String, String)> {
        vec![
            ("GITHUB_ACTIONS".into(), "true".into()),
            ("GITHUB_SHA".into(), SHA.into()),
            (
                "ACTIONS_ID_TOKEN_REQUEST_URL".into(),
                self.oidc.request_url(),
            ),
            (
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(),
                self.oidc.request_token.clone(),
            ),
        ]
    }

    /// `push <source> --repository <repository>` against moto and the registry at `registry_url`.
    fn push_args(&self, source: &str, repository: &str, registry_url: &str) -> Vec<String> {
        [
            "push",
            source,
            "--repository",
            repository,
            "--region",
            REGION,
            "--role-arn",
            &Self::role(),
            "--registry",
            registry_url,
            "--ecr-endpoint",
            &self.moto.url(),
            "--sts-endpoint",
            &self.moto.url(),
            "--json",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn run(&self, args: &[String], extra: &[String], env: &[(String, String)]) -> Run {
        let _ = &self.moto;
        let args: Vec<&String> = args.iter().chain(extra).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ecr_push(args, &env)
    }

    fn describe_repository(&self, name: &str) -> serde_json::Value {
        self.moto.ecr(
            ACCOUNT,
            "DescribeRepositories",
            &json!({"registryId": ACCOUNT, "repositoryNames": [name]}),
        )["repositories"][0]
            .clone()
    }

    fn creds(&self) -> Option<(&str, &str)> {
        self.registry.skopeo_creds()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn github_oidc_to_verified_push_with_a_new_repository() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    let facts = images::docker_save_legacy(&tar, &[ImageSpec::new("app")]).remove(0);
    let policy = dir.path().join("lifecycle.json");
    let policy_text = r#"{"rules":[{"rulePriority":1,"description":"keep the last 30 images","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":30},"action":{"type":"expire"}}]}"#;
    std::fs::write(&policy, policy_text).unwrap();
    let kms_key = format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/0000-1111");

    let args = ecr.push_args(tar.to_str().unwrap(), "team/app", &ecr.registry.url());
    let settings = strings(&[
        "--tag-mutability",
        "IMMUTABLE",
        "--scan-on-push",
        "--encryption",
        "KMS",
        "--kms-key",
        &kms_key,
        "--repository-tag",
        "team=platform",
        "--repository-tag",
        "cost-center=ci",
        "--lifecycle-policy",
        policy.to_str().unwrap(),
    ]);
    let run = ecr.run(&args, &settings, &ecr.github_env());
    run.success();

    // The chain: one OIDC token, exchanged for the role's account, whose registry was used.
    assert_eq!(ecr.oidc.minted(), 1);
    let report = run.json();
    assert_eq!(report["registry_id"], ACCOUNT);
    assert_eq!(report["region"], REGION);
    assert_eq!(
        report["repository_uri"],
        format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/team/app").as_str()
    );
    assert_eq!(report["repository_created"], true);
    assert_eq!(
        report["tags"],
        json!([SHA]),
        "the default tag is the commit SHA"
    );
    assert_eq!(report["config_digest"], facts.config_digest.as_str());
    let digest = report["digest"].as_str().unwrap();
    let reference = format!("{}/team/app:{SHA}", ecr.registry.host());
    assert_eq!(skopeo::remote_digest(&reference, ecr.creds()), digest);
    assert_eq!(
        skopeo::remote_config_digest(&reference, ecr.creds()),
        facts.config_digest
    );

    assert_repository_settings(&ecr, "team/app", &kms_key, policy_text);

    // Every secret was masked in the job log before anything else could print it.
    assert!(
        run.stderr
            .contains(&format!("::add-mask::{ACCOUNT}-auth-token")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.lines().any(|l| l.starts_with("::add-mask::eyJ")),
        "the OIDC token is masked: {}",
        run.stderr
    );
}

/// The repository has what was asked, as the ECR API says.
fn assert_repository_settings(ecr: &Ecr, name: &str, kms_key: &str, policy_text: &str) {
    let repository = ecr.describe_repository(name);
    assert_eq!(repository["imageTagMutability"], "IMMUTABLE");
    assert_eq!(repository["imageScanningConfiguration"]["scanOnPush"], true);
    assert_eq!(
        repository["encryptionConfiguration"]["encryptionType"],
        "KMS"
    );
    assert_eq!(repository["encryptionConfiguration"]["kmsKey"], kms_key);
    let lifecycle = ecr.moto.ecr(
        ACCOUNT,
        "GetLifecyclePolicy",
        &json!({"registryId": ACCOUNT, "repositoryName": name}),
    );
    let stored: serde_json::Value =
        serde_json::from_str(lifecycle["lifecyclePolicyText"].as_str().unwrap()).unwrap();
    assert_eq!(
        stored,
        serde_json::from_str::<serde_json::Value>(policy_text).unwrap()
    );
    let tags = ecr.moto.ecr(
        ACCOUNT,
        "ListTagsForResource",
        &json!({"resourceArn": repository["repositoryArn"]}),
    );
    let mut tags: Vec<(String, String)> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().to_owned(),
                t["Value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            ("cost-center".into(), "ci".into()),
            ("team".into(), "platform".into())
        ]
    );
}

#[test]
fn immutable_tags_rerun_succeeds_and_conflict_fails_before_uploading() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let first_facts = images::oci_layout(&first, &ImageSpec::new("app").seed(1));
    let args = ecr.push_args(
        first.to_str().unwrap(),
        "team/immutable",
        &ecr.registry.url(),
    );
    let tag = strings(&["--tag", "release-1", "--tag-mutability", "IMMUTABLE"]);
    ecr.run(&args, &tag, &ecr.github_env()).success();

    // The same image again: success, nothing uploaded, the tag not put again.
    let rerun = ecr.run(&args, &tag, &ecr.github_env());
    rerun.success();
    assert_eq!(rerun.field("digest"), first_facts.digest);
    assert_eq!(rerun.json()["blobs_uploaded"], 0);
    assert!(
        rerun.stderr.contains("already points to"),
        "{}",
        rerun.stderr
    );

    // Another image under the same tag: refused before any blob of it is uploaded.
    let second = dir.path().join("second");
    let second_facts = images::oci_layout(&second, &ImageSpec::new("other").seed(2));
    let conflict = ecr.run(
        &ecr.push_args(
            second.to_str().unwrap(),
            "team/immutable",
            &ecr.registry.url(),
        ),
        &tag,
        &ecr.github_env(),
    );
    conflict.failure(1);
    assert!(conflict.stderr.contains("release-1"), "{}", conflict.stderr);
    assert!(
        conflict.stderr.contains(&first_facts.digest)
            && conflict.stderr.contains(&second_facts.digest),
        "both digests: {}",
        conflict.stderr
    );
    for layer in &second_facts.layer_digests {
        assert!(
            !ecr.registry.blob_exists("team/immutable", layer),
            "{layer} must not have been uploaded"
        );
    }
    assert_eq!(
        ecr.registry
            .manifest_digest("team/immutable", "release-1")
            .as_deref(),
        Some(first_facts.digest.as_str())
    );
}

#[test]
fn expired_credentials_mid_push_are_minted_again_once() {
    let ecr = Ecr::start();
    // The registry "expires" the credentials after 6 requests: from then on it answers 401 until
    // a second OIDC token has been minted, i.e. until the whole chain was renewed.
    let minted = ecr.oidc.counter();
    let requests = Arc::new(AtomicUsize::new(0));
    let proxy = Proxy::start(&ecr.registry.url(), {
        let requests = Arc::clone(&requests);
        move |_seen| {
            let number = requests.fetch_add(1, Ordering::SeqCst) + 1;
            if number > 6 && minted.load(Ordering::SeqCst) < 2 {
                return Action::Respond {
                    status: 401,
                    headers: vec![("WWW-Authenticate".into(), r#"Basic realm="ecr""#.into())],
                    body: r#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired."}]}"#.into(),
                };
            }
            Action::Forward
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("long").layers(5));
    let run = ecr.run(
        &ecr.push_args(dir.path().to_str().unwrap(), "team/long", &proxy.url()),
        &strings(&["--jobs", "1"]),
        &ecr.github_env(),
    );
    run.success();
    assert_eq!(run.field("digest"), facts.digest);
    assert_eq!(
        ecr.oidc.minted(),
        2,
        "a new OIDC token, role session and ECR token, once"
    );
    assert!(
        proxy.seen().iter().any(|s| s.number == 7),
        "the registry refused the old credentials"
    );
    assert!(
        requests.load(Ordering::SeqCst) > 8,
        "and the push went on after the renewal"
    );
    assert_eq!(
        ecr.registry.manifest_digest("team/long", SHA).as_deref(),
        Some(facts.digest.as_str())
    );
}

#[test]
fn missing_repository_without_create_fails_clearly() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    images::oci_layout(dir.path(), &ImageSpec::new("nocreate"));
    let run = ecr.run(
        &ecr.push_args(
            dir.path().to_str().unwrap(),
            "team/absent",
            &ecr.registry.url(),
        ),
        &strings(&["--create-repository", "false"]),
        &ecr.github_env(),
    );
    run.failure(1);
    assert!(
        run.stderr.contains("team/absent") && run.stderr.contains("--create-repository"),
        "{}",
        run.stderr
    );
    assert!(ecr.registry.catalog().is_empty(), "nothing is uploaded");
}

#[test]
fn existing_repository_drift_is_reported_not_changed() {
    let ecr = Ecr::start();
    ecr.moto.ecr(ACCOUNT, "CreateRepository", &json!({"registryId": ACCOUNT, "repositoryName": "team/drift", "imageTagMutability": "MUTABLE"}));
    let dir = tempfile::tempdir().unwrap();
    images::oci_layout(dir.path(), &ImageSpec::new("drift"));
    let run = ecr.run(
        &ecr.push_args(
            dir.path().to_str().unwrap(),
            "team/drift",
            &ecr.registry.url(),
        ),
        &strings(&["--tag-mutability", "IMMUTABLE", "--scan-on-push"]),
        &ecr.github_env(),
    );
    run.success();
    assert_eq!(run.json()["repository_created"], false);
    assert!(
        run.stderr.contains("::warning::")
            && run
                .stderr
                .contains("tag mutability is MUTABLE (asked: IMMUTABLE)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("scan on push is false (asked: true)"),
        "{}",
        run.stderr
    );
    assert_eq!(
        ecr.describe_repository("team/drift")["imageTagMutability"],
        "MUTABLE",
        "nothing changed silently"
    );
}

#[test]
fn gitlab_id_token_from_an_env_var_and_token_file() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path().join("l").as_path(), &ImageSpec::new("gitlab"));
    let source = dir.path().join("l");
    let token = crate::harness::oidc::jwt(
        "project_path:acme/app:ref_type:branch:ref:main",
        "sts.amazonaws.com",
        1,
    );
    let gitlab = vec![
        ("CI_COMMIT_SHA".to_owned(), SHA.to_owned()),
        ("GITLAB_OIDC_TOKEN".to_owned(), token.clone()),
    ];
    let run = ecr.run(
        &ecr.push_args(source.to_str().unwrap(), "team/gitlab", &ecr.registry.url()),
        &strings(&["--web-identity-token-env", "GITLAB_OIDC_TOKEN"]),
        &gitlab,
    );
    run.success();
    assert_eq!(run.field("digest"), facts.digest);
    assert_eq!(run.json()["registry_id"], ACCOUNT);
    assert!(!run.stdout.contains(&token) && !run.stderr.contains(&token));

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let run = ecr.run(
        &ecr.push_args(source.to_str().unwrap(), "team/gitlab", &ecr.registry.url()),
        &strings(&["--tag", "from-file"]),
        &[(
            "AWS_WEB_IDENTITY_TOKEN_FILE".to_owned(),
            token_file.to_str().unwrap().to_owned(),
        )],
    );
    run.success();
    assert_eq!(ecr.oidc.minted(), 0, "no GitHub token was involved");
}

#[test]
fn default_credential_chain_and_role_chaining() {
    let ecr = Ecr::start();
    // moto's default account for plain access keys.
    let default_registry = Registry::start_with_basic_auth("AWS", "123456789012-auth-token");
    let dir = tempfile::tempdir().unwrap();
    images::oci_layout(dir.path(), &ImageSpec::new("chain"));
    let keys = vec![
        (
            "AWS_ACCESS_KEY_ID".to_owned(),
            "AKIAEXAMPLEDEFAULT".to_owned(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_owned(),
            "default-secret-key-value".to_owned(),
        ),
        ("AWS_REGION".to_owned(), REGION.to_owned()),
    ];
    let source = dir.path().to_str().unwrap();
    let plain = strings(&[
        "push",
        source,
        "--repository",
        "team/chain",
        "--tag",
        "v1",
        "--registry",
        &default_registry.url(),
        "--ecr-endpoint",
        &ecr.moto.url(),
        "--sts-endpoint",
        &ecr.moto.url(),
        "--json",
    ]);
    let run = ecr.run(&plain, &[], &keys);
    run.success();
    assert_eq!(
        run.json()["registry_id"],
        "123456789012",
        "the caller's account, from STS"
    );
    assert_eq!(run.json()["region"], REGION, "the region from AWS_REGION");

    // --role-arn without a web identity token: AssumeRole with the default chain.
    let mut chained = ecr.push_args(source, "team/chain", &ecr.registry.url());
    chained.extend(strings(&["--tag", "v1"]));
    let run = ecr.run(&chained, &[], &keys);
    run.success();
    assert_eq!(run.json()["registry_id"], ACCOUNT);
    assert!(!run.stderr.contains("default-secret-key-value"));
}

#[test]
fn github_without_id_token_permission_says_so() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    images::oci_layout(dir.path(), &ImageSpec::new("perm"));
    let env = vec![
        ("GITHUB_ACTIONS".to_owned(), "true".to_owned()),
        ("GITHUB_SHA".to_owned(), SHA.to_owned()),
    ];
    let run = ecr.run(
        &ecr.push_args(
            dir.path().to_str().unwrap(),
            "team/perm",
            &ecr.registry.url(),
        ),
        &[],
        &env,
    );
    run.failure(1);
    assert!(run.stderr.contains("id-token: write"), "{}", run.stderr);
    assert!(
        run.stderr.contains("::error"),
        "an annotation on GitHub: {}",
        run.stderr
    );
}

#[test]
fn missing_region_is_a_usage_error() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    images::oci_layout(dir.path(), &ImageSpec::new("region"));
    let run = ecr.run(
        &strings(&[
            "push",
            dir.path().to_str().unwrap(),
            "--repository",
            "team/region",
            "--tag",
            "v1",
            "--role-arn",
            &Ecr::role(),
            "--ecr-endpoint",
            &ecr.moto.url(),
        ]),
        &[],
        &ecr.github_env(),
    );
    run.failure(2);
    assert!(run.stderr.contains("--region"), "{}", run.stderr);
}

/// Parses a `$GITHUB_OUTPUT` file written in the `name<<delimiter` form.
fn parse_outputs(text: &str) -> std::collections::HashMap<String, String> {
    let mut outputs = std::collections::HashMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let (name, delimiter) = line.split_once("<<").expect("heredoc output");
        let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
        outputs.insert(name.to_owned(), value.join("\n"));
    }
    outputs
}

#[test]
fn github_outputs_summary_and_metadata_file() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("layout");
    let facts = images::oci_layout(&source, &ImageSpec::new("outputs"));
    let output = dir.path().join("github_output");
    let summary = dir.path().join("step_summary");
    let metadata = dir.path().join("metadata.json");
    let mut env = ecr.github_env();
    env.push(("GITHUB_OUTPUT".into(), output.to_str().unwrap().into()));
    env.push((
        "GITHUB_STEP_SUMMARY".into(),
        summary.to_str().unwrap().into(),
    ));
    let run = ecr.run(
        &ecr.push_args(
            source.to_str().unwrap(),
            "team/outputs",
            &ecr.registry.url(),
        ),
        &strings(&[
            "--tag",
            "v1",
            "--tag",
            "latest",
            "--metadata-file",
            metadata.to_str().unwrap(),
        ]),
        &env,
    );
    run.success();

    let outputs = parse_outputs(&std::fs::read_to_string(&output).unwrap());
    let host = ecr.registry.host();
    assert_eq!(outputs["digest"], facts.digest);
    assert_eq!(
        outputs["image-ref"],
        format!("{host}/team/outputs@{}", facts.digest)
    );
    assert_eq!(outputs["image-uri"], format!("{host}/team/outputs:v1"));
    assert_eq!(outputs["tags"], "v1\nlatest");
    assert_eq!(outputs["config-digest"], facts.config_digest);
    assert_eq!(outputs["registry"], host);
    assert_eq!(
        outputs["repository-uri"],
        format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/team/outputs")
    );
    let from_output: serde_json::Value = serde_json::from_str(&outputs["metadata"]).unwrap();
    let from_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(from_output, run.json(), "metadata output = --json report");
    assert_eq!(from_file, run.json(), "metadata file = --json report");

    let summary = std::fs::read_to_string(&summary).unwrap();
    for expected in [
        facts.digest.as_str(),
        "`v1`, `latest`",
        "standard: passed",
        "(created)",
    ] {
        assert!(
            summary.contains(expected),
            "summary lacks {expected}: {summary}"
        );
    }
    assert!(
        run.stderr.contains("::group::ecr-push: push team/outputs")
            && run.stderr.contains("::endgroup::")
    );
}

#[test]
fn failures_on_github_become_annotations_and_a_summary() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("step_summary");
    let mut env = ecr.github_env();
    env.push((
        "GITHUB_STEP_SUMMARY".into(),
        summary.to_str().unwrap().into(),
    ));
    let missing = dir.path().join("no-such-image.tar");
    let run = ecr.run(
        &ecr.push_args(missing.to_str().unwrap(), "team/fail", &ecr.registry.url()),
        &[],
        &env,
    );
    run.failure(2);
    assert!(
        run.stderr.contains("::error title=ecr-push failed::"),
        "{}",
        run.stderr
    );
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains("ecr-push failed") && summary.contains("no-such-image.tar"),
        "{summary}"
    );
}

#[test]
fn login_writes_a_docker_config_that_other_tools_can_use() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("layout");
    let facts = images::oci_layout(&source, &ImageSpec::new("login"));
    ecr.run(
        &ecr.push_args(source.to_str().unwrap(), "team/login", &ecr.registry.url()),
        &[],
        &ecr.github_env(),
    )
    .success();

    let config_dir = dir.path().join("docker");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.json"),
        r#"{"auths":{"ghcr.io":{"auth":"Z2hjcjp4"}}}"#,
    )
    .unwrap();
    let login = strings(&[
        "login",
        "--registry",
        &ecr.registry.url(),
        "--region",
        REGION,
        "--role-arn",
        &Ecr::role(),
        "--ecr-endpoint",
        &ecr.moto.url(),
        "--sts-endpoint",
        &ecr.moto.url(),
        "--docker-config",
        config_dir.to_str().unwrap(),
    ]);
    let run = ecr.run(&login, &[], &ecr.github_env());
    run.success();
    assert_eq!(run.stdout.trim(), ecr.registry.host());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["auths"]["ghcr.io"]["auth"], "Z2hjcjp4",
        "other registries are kept"
    );
    assert!(config["auths"][ecr.registry.host()]["auth"].is_string());

    // skopeo, with only that file for credentials, reads the image.
    let output = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--authfile"])
        .arg(config_dir.join("config.json"))
        .arg(format!("docker://{}/team/login:{SHA}", ecr.registry.host()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(crate::harness::sha256(&output.stdout), facts.digest);

    // --password-stdout: the password alone, for `docker login --password-stdin`.
    let run = ecr.run(&login, &strings(&["--password-stdout"]), &ecr.github_env());
    run.success();
    assert_eq!(run.stdout, format!("{ACCOUNT}-auth-token\n"));
}

#[test]
fn several_regions_each_get_the_repository_and_the_image() {
    let ecr = Ecr::start();
    let second_registry = Registry::start_with_basic_auth("AWS", &format!("{ACCOUNT}-auth-token"));
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    let facts = images::docker_save_legacy(&tar, &[ImageSpec::new("regions")]).remove(0);
    let args = strings(&[
        "push",
        tar.to_str().unwrap(),
        "--repository",
        "team/regions",
        "--role-arn",
        &Ecr::role(),
        "--region",
        "eu-west-1,us-east-1",
        "--registry",
        &ecr.registry.url(),
        "--registry",
        &second_registry.url(),
        "--ecr-endpoint",
        &ecr.moto.url(),
        "--sts-endpoint",
        &ecr.moto.url(),
        "--json",
    ]);
    let run = ecr.run(&args, &[], &ecr.github_env());
    run.success();
    let report = run.json();
    let destinations = report["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 2);
    for (destination, region) in destinations.iter().zip(["eu-west-1", "us-east-1"]) {
        assert_eq!(destination["region"], region);
        assert_eq!(destination["repository_created"], true);
        assert_eq!(
            destination["repository_uri"],
            format!("{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/team/regions").as_str()
        );
        assert_eq!(destination["digest"], report["digest"]);
    }
    for registry in [&ecr.registry, &second_registry] {
        let reference = format!("{}/team/regions:{SHA}", registry.host());
        assert_eq!(
            skopeo::remote_config_digest(&reference, registry.skopeo_creds()),
            facts.config_digest
        );
    }
}

/// An OCI layout, and a mirror in front of the registry through which a push reaches moto's
/// ECR API too, as a push reaches the ECR API in real ECR.
fn scanned_image(ecr: &Ecr, dir: &std::path::Path) -> (images::Facts, Mirror) {
    let facts = images::oci_layout(dir, &ImageSpec::new("scanned"));
    let mirror = Mirror::start(&ecr.registry.url(), &ecr.moto.url(), ACCOUNT, REGION);
    (facts, mirror)
}

#[test]
fn scan_gate_fails_on_findings_at_or_above_the_threshold() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let (facts, mirror) = scanned_image(&ecr, &layout);
    let summary = dir.path().join("summary.md");
    let output = dir.path().join("output");
    let mut env = ecr.github_env();
    env.push((
        "GITHUB_STEP_SUMMARY".into(),
        summary.to_str().unwrap().into(),
    ));
    env.push(("GITHUB_OUTPUT".into(), output.to_str().unwrap().into()));
    let args = ecr.push_args(layout.to_str().unwrap(), "team/scanned", &mirror.url());

    // moto's scan always finds one HIGH finding, CVE-9999-9999.
    let gated = ecr.run(
        &args,
        &strings(&["--scan", "wait", "--fail-on-severity", "HIGH"]),
        &env,
    );
    gated.failure(3);
    assert!(
        gated.stderr.contains("1 finding(s) at or above HIGH"),
        "{}",
        gated.stderr
    );
    let report = gated.json();
    assert_eq!(
        report["digest"],
        facts.digest.as_str(),
        "the image was pushed all the same"
    );
    assert_eq!(report["scan_findings"], json!({"HIGH": 1}));
    assert_eq!(report["scan_gate"]["passed"], false);
    assert_eq!(report["scans"][0]["worst"][0]["id"], "CVE-9999-9999");
    let summary_text = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary_text.contains("**Failed**") && summary_text.contains("CVE-9999-9999"),
        "{summary_text}"
    );
    let outputs = parse_outputs(&std::fs::read_to_string(&output).unwrap());
    assert_eq!(outputs["scan-findings"], r#"{"HIGH":1}"#);

    // The finding accepted as a risk: the gate passes.
    let accepted = ecr.run(
        &args,
        &strings(&[
            "--fail-on-severity",
            "HIGH",
            "--ignore-cve",
            "CVE-9999-9999",
        ]),
        &ecr.github_env(),
    );
    accepted.success();
    assert_eq!(accepted.json()["scans"][0]["ignored"], 1);
    // A threshold above what was found: passes.
    ecr.run(
        &args,
        &strings(&["--fail-on-severity", "CRITICAL"]),
        &ecr.github_env(),
    )
    .success();
    mirror.assert_no_errors();
}

#[test]
fn scan_findings_configured_in_the_emulator_are_counted() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let (facts, mirror) = scanned_image(&ecr, dir.path());
    let finding = |id: &str, severity: &str| {
        json!({"name": id, "severity": severity, "uri": format!("https://nvd.nist.gov/vuln/detail/{id}"),
               "attributes": [{"key": "package_name", "value": "openssl"}, {"key": "package_version", "value": "3.0.1"}]})
    };
    ecr.moto.set_scan_findings(
        ACCOUNT,
        REGION,
        &json!({
            "registryId": ACCOUNT,
            "repositoryName": "team/findings",
            "imageId": {"imageDigest": facts.digest},
            "imageScanStatus": {"status": "COMPLETE", "description": "done"},
            "imageScanFindings": {
                "findings": [finding("CVE-2024-1", "CRITICAL"), finding("CVE-2024-2", "MEDIUM"), finding("CVE-2024-3", "MEDIUM")],
                "findingSeverityCounts": {"CRITICAL": 1, "MEDIUM": 2}
            }
        }),
    );
    let run = ecr.run(
        &ecr.push_args(dir.path().to_str().unwrap(), "team/findings", &mirror.url()),
        &strings(&["--fail-on-severity", "CRITICAL"]),
        &ecr.github_env(),
    );
    run.failure(3);
    let report = run.json();
    assert_eq!(report["scan_findings"], json!({"CRITICAL": 1, "MEDIUM": 2}));
    assert_eq!(report["scans"][0]["worst"][0]["id"], "CVE-2024-1");
    assert_eq!(report["scans"][0]["worst"][0]["package"], "openssl 3.0.1");
    mirror.assert_no_errors();
}

#[test]
fn a_scan_that_times_out_still_reports_the_pushed_image() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let (facts, mirror) = scanned_image(&ecr, &layout);
    // Enhanced scanning (Inspector) decides itself what it scans; moto never scans this image.
    ecr.moto.ecr(
        ACCOUNT,
        "PutRegistryScanningConfiguration",
        &json!({"scanType": "ENHANCED", "rules": []}),
    );
    let (summary, output) = (dir.path().join("summary.md"), dir.path().join("output"));
    let mut env = ecr.github_env();
    env.push((
        "GITHUB_STEP_SUMMARY".into(),
        summary.to_str().unwrap().into(),
    ));
    env.push(("GITHUB_OUTPUT".into(), output.to_str().unwrap().into()));
    let run = ecr.run(
        &ecr.push_args(layout.to_str().unwrap(), "team/slow-scan", &mirror.url()),
        &strings(&["--fail-on-severity", "HIGH", "--scan-timeout", "3"]),
        &env,
    );
    run.failure(1);
    assert!(
        run.stderr.contains("pushed and verified") && run.stderr.contains("--scan-timeout"),
        "{}",
        run.stderr
    );
    // The image is there, and everything that reports it was written.
    let report = run.json();
    assert_eq!(report["digest"], facts.digest.as_str());
    assert!(
        report["scan_error"].as_str().unwrap().contains("no result"),
        "{report}"
    );
    assert!(
        report.get("scan_gate").is_none(),
        "no verdict without a scan: {report}"
    );
    let outputs = parse_outputs(&std::fs::read_to_string(&output).unwrap());
    assert_eq!(outputs["digest"], facts.digest);
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains(&facts.digest) && summary.contains("**failed**"),
        "{summary}"
    );
    assert_eq!(
        ecr.registry
            .manifest_digest("team/slow-scan", SHA)
            .as_deref(),
        Some(facts.digest.as_str())
    );
    // No basic scan was started behind Inspector's back: moto still has none for the image.
    let describe = crate::harness::moto::ecr_call(
        &ecr.moto.url(),
        &crate::harness::moto::access_key(&ecr.moto.url(), ACCOUNT),
        REGION,
        "DescribeImageScanFindings",
        &json!({"registryId": ACCOUNT, "repositoryName": "team/slow-scan", "imageId": {"imageDigest": facts.digest}}),
    );
    let (_, error) = describe.expect_err("no scan was started");
    assert!(error.contains("ScanNotFoundException"), "{error}");
    mirror.assert_no_errors();
}

#[test]
fn wait_replication_without_a_rule_returns_at_once_and_with_one_reports_a_failed_wait() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let (facts, mirror) = scanned_image(&ecr, &layout);
    let args = ecr.push_args(layout.to_str().unwrap(), "team/replicated", &mirror.url());

    // The registry has no replication rule: nothing replicates, nothing to wait for (an empty
    // replication status must not be taken for "complete", nor waited on).
    let run = ecr.run(&args, &strings(&["--wait-replication"]), &ecr.github_env());
    run.success();
    let report = run.json();
    assert_eq!(report["replication_status"], "not_configured", "{report}");
    assert!(
        run.stderr
            .contains("no replication rule for team/replicated"),
        "{}",
        run.stderr
    );

    // With a rule, the wait happens; here it cannot succeed (moto does not record replication
    // status), and the push still reports its image, then exits 1.
    ecr.moto.ecr(
        ACCOUNT,
        "PutReplicationConfiguration",
        &json!({"replicationConfiguration": {"rules": [{"destinations": [{"region": "us-east-1", "registryId": ACCOUNT}]}]}}),
    );
    let run = ecr.run(
        &args,
        &strings(&["--wait-replication", "--replication-timeout", "2"]),
        &ecr.github_env(),
    );
    run.failure(1);
    let report = run.json();
    assert_eq!(report["digest"], facts.digest.as_str());
    assert_eq!(report["replication_status"], "failed", "{report}");
    assert!(report["replication_error"].is_string(), "{report}");
    assert!(run.stderr.contains("pushed and verified"), "{}", run.stderr);
    mirror.assert_no_errors();
}

#[test]
fn scanning_needs_a_private_ecr_registry() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    images::oci_layout(dir.path(), &ImageSpec::new("noscan"));
    let run = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &registry.url(),
            "--repository",
            "team/x",
            "--tag",
            "v1",
            "--scan",
            "wait",
        ],
        &[],
    );
    run.failure(2);
    assert!(run.stderr.contains("private ECR"), "{}", run.stderr);
    assert!(registry.catalog().is_empty());
}
