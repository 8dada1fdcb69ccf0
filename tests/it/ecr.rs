//! ECR mode end to end: `moto_server` for STS and ECR, a real registry (htpasswd user `AWS`
//! with moto's token password) as the data plane, a fake GitHub OIDC endpoint in this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use serde_json::json;

use crate::harness::aws_recorder::AwsRecorder;
use crate::harness::images::{self, ImageSpec};
use crate::harness::mirror::Mirror;
use crate::harness::moto::Moto;
use crate::harness::oidc::OidcServer;
use crate::harness::proxy::{Action, Kind, Proxy};
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
        Self::push_args_via(source, repository, registry_url, &self.moto.url())
    }

    /// [`Ecr::push_args`] with the AWS APIs at `aws_url` (an [`AwsRecorder`] in front of moto).
    fn push_args_via(
        source: &str,
        repository: &str,
        registry_url: &str,
        aws_url: &str,
    ) -> Vec<String> {
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
            aws_url,
            "--sts-endpoint",
            aws_url,
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

    // Every secret was masked in the job log before anything else could print it, once: the
    // job's request token, the OIDC token, the session's three parts, the ECR token and the
    // password in it. Not once per registry request.
    let masks = add_masks(&run);
    assert_eq!(masks.len(), 7, "{masks:#?}");
    for secret in [
        "request-token-for-the-job".to_owned(),
        format!("{ACCOUNT}-auth-token"),
        base64::engine::general_purpose::STANDARD.encode(format!("AWS:{ACCOUNT}-auth-token")),
    ] {
        assert!(masks.contains(&secret), "{secret} masked: {masks:#?}");
    }
    assert!(
        masks.iter().any(|m| m.starts_with("eyJ")),
        "the OIDC token is masked: {masks:#?}"
    );
}

/// The values of the `::add-mask::` lines of a run, each seen once at most.
#[track_caller]
fn add_masks(run: &Run) -> Vec<String> {
    let masks: Vec<String> = run
        .stderr
        .lines()
        .filter_map(|line| line.strip_prefix("::add-mask::"))
        .map(str::to_owned)
        .collect();
    let distinct: std::collections::HashSet<&String> = masks.iter().collect();
    assert_eq!(
        distinct.len(),
        masks.len(),
        "a secret masked twice: {masks:#?}"
    );
    masks
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

/// The registry refuses the credentials in the middle of a push, as ECR does when its token
/// expires: every layer PATCH is answered `status` (with `headers` and `body`) until a second
/// OIDC token has been minted.
/// The whole chain is minted again, exactly once (a second OIDC token, role session and ECR
/// token, as the AWS API calls show), the push goes on with four jobs, and an independent
/// client reads back the image that was built.
fn refused_mid_push_then_minted_again_once(status: u16, headers: &[(&str, &str)], body: &str) {
    let ecr = Ecr::start();
    let aws = AwsRecorder::start(&ecr.moto.url());
    let minted = ecr.oidc.counter();
    let fired = Arc::new(AtomicUsize::new(0));
    let last_refused = Arc::new(AtomicUsize::new(0));
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let body = body.to_owned();
    let proxy = Proxy::start(&ecr.registry.url(), {
        let (fired, last_refused) = (Arc::clone(&fired), Arc::clone(&last_refused));
        move |seen| {
            // Layers only: the config blob is tiny (and usually uploaded first).
            let layer = seen.kind == Kind::PatchUpload && seen.content_length.unwrap_or(0) > 10_000;
            if layer && minted.load(Ordering::SeqCst) < 2 {
                fired.fetch_add(1, Ordering::SeqCst);
                last_refused.fetch_max(seen.number, Ordering::SeqCst);
                return Action::Respond {
                    status,
                    headers: headers.clone(),
                    body: body.clone(),
                };
            }
            Action::Forward
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("long").layers(6));
    let run = ecr.run(
        &Ecr::push_args_via(
            dir.path().to_str().unwrap(),
            "team/long",
            &proxy.url(),
            &aws.url(),
        ),
        &strings(&["--jobs", "4"]),
        &ecr.github_env(),
    );
    run.success();
    let refused = fired.load(Ordering::SeqCst);
    assert!(refused >= 1, "the registry refused a layer upload");

    // The chain, minted again once: OIDC token, role session, ECR token.
    assert_eq!(ecr.oidc.minted(), 2, "{}", run.stderr);
    assert_eq!(aws.count("AssumeRoleWithWebIdentity"), 2);
    assert_eq!(aws.count("GetAuthorizationToken"), 2);
    // Each refused upload was started again, nothing else was, and uploads went on after the
    // last refusal.
    let blobs = facts.layer_digests.len() + 1;
    assert_eq!(proxy.count(Kind::PatchUpload), blobs + refused);
    let last_refused = last_refused.load(Ordering::SeqCst);
    assert!(
        proxy
            .seen()
            .iter()
            .any(|s| s.kind == Kind::PatchUpload && s.number > last_refused),
        "an upload after the renewal"
    );

    assert_eq!(run.field("digest"), facts.digest);
    let reference = format!("{}/team/long:{SHA}", ecr.registry.host());
    assert_eq!(skopeo::remote_digest(&reference, ecr.creds()), facts.digest);

    // The new OIDC token and role session were masked; the ECR token, the same again (moto
    // always gives the same), not twice.
    assert_eq!(add_masks(&run).len(), 7 + 4);
}

#[test]
fn a_401_mid_push_mints_the_chain_again_once() {
    refused_mid_push_then_minted_again_once(
        401,
        &[("WWW-Authenticate", r#"Basic realm="ecr""#)],
        "",
    );
}

#[test]
fn ecr_expired_token_403_mid_push_mints_the_chain_again_once() {
    // ECR's answer to an expired authorization token.
    refused_mid_push_then_minted_again_once(
        403,
        &[("Content-Type", "application/json")],
        r#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired. Reauthenticate and try again."}]}"#,
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

/// The claims of a JWT (unverified), as STS would read them.
fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[test]
fn role_session_flags_audience_and_registry_id_reach_aws() {
    const OTHER: &str = "111111111111";
    let ecr = Ecr::start();
    let aws = AwsRecorder::start(&ecr.moto.url());
    // An ECR token is good for every registry the role may use: the role's, for OTHER's.
    let registry = &ecr.registry;
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new("flags"));
    let run = ecr.run(
        &Ecr::push_args_via(
            dir.path().to_str().unwrap(),
            "team/flags",
            &registry.url(),
            &aws.url(),
        ),
        &strings(&[
            "--registry-id",
            OTHER,
            "--role-session-name",
            "release-42",
            "--role-duration-seconds",
            "1800",
            "--audience",
            "custom-audience",
        ]),
        &ecr.github_env(),
    );
    run.success();
    let report = run.json();
    assert_eq!(report["registry_id"], OTHER);
    assert!(
        report["repository_uri"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{OTHER}.dkr.ecr.{REGION}.")),
        "{report}"
    );
    assert_eq!(
        skopeo::remote_digest(
            &format!("{}/team/flags:{SHA}", registry.host()),
            registry.skopeo_creds()
        ),
        facts.digest
    );

    let assumed = aws.calls_of("AssumeRoleWithWebIdentity");
    assert_eq!(assumed.len(), 1);
    let params = &assumed[0].params;
    assert_eq!(params["RoleArn"], Ecr::role().as_str());
    assert_eq!(params["RoleSessionName"], "release-42");
    assert_eq!(params["DurationSeconds"], "1800");
    // The audience GitHub was asked for is the token's.
    let claims = jwt_claims(params["WebIdentityToken"].as_str().unwrap());
    assert_eq!(claims["aud"], "custom-audience");
    assert_eq!(claims["sub"], SUBJECT);

    assert_eq!(aws.count("GetAuthorizationToken"), 1);
    // The repository is looked up and created in registry OTHER, not the role's.
    for action in ["DescribeRepositories", "CreateRepository"] {
        let calls = aws.calls_of(action);
        assert!(!calls.is_empty(), "{action} called");
        assert!(
            calls.iter().all(|c| c.params["registryId"] == OTHER),
            "{action} in registry {OTHER}: {calls:?}"
        );
    }
}

#[test]
fn token_file_flag_and_endpoint_variables() {
    let ecr = Ecr::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("layout");
    images::oci_layout(&source, &ImageSpec::new("endpoints"));
    let token = crate::harness::oidc::jwt("file-subject", "sts.amazonaws.com", 7);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    // No --ecr-endpoint or --sts-endpoint: the endpoints come from the environment.
    let args = |tag: &str| {
        strings(&[
            "push",
            source.to_str().unwrap(),
            "--repository",
            "team/endpoints",
            "--tag",
            tag,
            "--region",
            REGION,
            "--role-arn",
            &Ecr::role(),
            "--registry",
            &ecr.registry.url(),
            "--web-identity-token-file",
            token_file.to_str().unwrap(),
            "--json",
        ])
    };

    // One variable per service; the token file wins over GitHub's OIDC token.
    let (sts, api) = (
        AwsRecorder::start(&ecr.moto.url()),
        AwsRecorder::start(&ecr.moto.url()),
    );
    let mut env = ecr.github_env();
    env.push(("AWS_ENDPOINT_URL_STS".into(), sts.url()));
    env.push(("AWS_ENDPOINT_URL_ECR".into(), api.url()));
    ecr.run(&args("v1"), &[], &env).success();
    assert_eq!(
        ecr.oidc.minted(),
        0,
        "the token file was used, not GitHub's"
    );
    let assumed = sts.calls_of("AssumeRoleWithWebIdentity");
    assert_eq!(assumed.len(), 1);
    assert_eq!(assumed[0].params["WebIdentityToken"], token.as_str());
    assert_eq!(sts.count("GetAuthorizationToken"), 0);
    assert_eq!(api.count("GetAuthorizationToken"), 1);
    assert_eq!(api.count("AssumeRoleWithWebIdentity"), 0);

    // One variable for every service.
    let both = AwsRecorder::start(&ecr.moto.url());
    let env = vec![("AWS_ENDPOINT_URL".to_owned(), both.url())];
    ecr.run(&args("v2"), &[], &env).success();
    assert_eq!(both.count("AssumeRoleWithWebIdentity"), 1);
    assert_eq!(both.count("GetAuthorizationToken"), 1);
    assert_eq!(ecr.registry.tags("team/endpoints").len(), 2);
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
