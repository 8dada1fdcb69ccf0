//! No secret reaches anything ecr-push writes: the whole ECR flow runs at the most verbose
//! level (`--verbose`) with distinctive values for every secret — the GitHub OIDC request token
//! and JWT, the STS session credentials, the ECR password — or with distinctive static AWS keys
//! from the default chain, and fails once on purpose; none of those values, raw or base64, is
//! in stdout, stderr, `$GITHUB_OUTPUT`, the step summary, the metadata file or the error.
//!
//! The session credentials and the ECR token are made by the AWS emulator, so the test reads
//! them off the wire: STS and ECR are reached through a proxy that keeps every answer.
//!
//! The one exception is the `::add-mask::<secret>` lines: announcing a secret to the runner
//! before anything could print it is their purpose (the runner removes them from the log and
//! hides the value everywhere else), so exactly those lines are left out of the check — and the
//! test checks that they are there.

use std::path::PathBuf;

use base64::Engine as _;

use crate::harness::images::{self, ImageSpec};
use crate::harness::moto::Moto;
use crate::harness::oidc::{self, OidcServer};
use crate::harness::proxy::{Action, Proxy};
use crate::harness::{Registry, Run, ecr_push};

const ACCOUNT: &str = "918273645501";
const REGION: &str = "eu-central-1";
const SUBJECT: &str = "repo:acme/secret-app:ref:refs/heads/main";
const REQUEST_TOKEN: &str = "req-tok-Q7x9Zr2Lp4Vn8Ks1-distinct";
/// moto's `GetAuthorizationToken` password for `ACCOUNT`.
const ECR_PASSWORD: &str = "918273645501-auth-token";
const SHA: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// Static keys for the default credential chain, distinctive enough to be found anywhere.
const ACCESS_KEY: &str = "AKIAZQ3DISTINCTKEY77";
const SECRET_KEY: &str = "sK9/distinct+Secret-Access-Key/0f1e2d3c4b5a";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEDistinctSessionToken//8a7b6c5d4e3f";
/// moto's `GetAuthorizationToken` password for the account of unknown static keys.
const DEFAULT_ECR_PASSWORD: &str = "123456789012-auth-token";

/// AWS (moto, behind a recording proxy), a GitHub OIDC endpoint, an image, and a directory for
/// the files a GitHub Actions step writes.
struct World {
    _moto: Moto,
    aws: Proxy,
    oidc: OidcServer,
    dir: tempfile::TempDir,
    source: PathBuf,
}

/// What one run wrote, by where it went.
struct Written(Vec<(&'static str, String)>);

impl World {
    fn start() -> Self {
        let moto = Moto::start();
        let aws = Proxy::start(&moto.url(), |_| Action::Forward);
        let oidc = OidcServer::start(SUBJECT, REQUEST_TOKEN);
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("layout");
        images::oci_layout(&source, &ImageSpec::new("secrets"));
        Self {
            _moto: moto,
            aws,
            oidc,
            dir,
            source,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `push` at the most verbose level, as a GitHub Actions step with outputs, a summary and
    /// a metadata file; `extra` adds options, `env` the credentials' environment.
    fn push(&self, registry: &Registry, extra: &[&str], env: &[(&str, &str)]) -> (Run, Written) {
        let (output, summary, metadata) = (
            self.file("output"),
            self.file("summary"),
            self.file("metadata.json"),
        );
        for file in [&output, &summary, &metadata] {
            let _ = std::fs::remove_file(file);
        }
        let aws = self.aws.url();
        let registry = registry.url();
        let mut args = vec![
            "push",
            self.source.to_str().unwrap(),
            "--repository",
            "team/secret",
            "--tag",
            "v1",
            "--registry",
            &registry,
            "--region",
            REGION,
            "--ecr-endpoint",
            &aws,
            "--sts-endpoint",
            &aws,
            "--metadata-file",
            metadata.to_str().unwrap(),
            "--verbose",
        ];
        args.extend_from_slice(extra);
        let mut env = env.to_vec();
        env.extend([
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SHA", SHA),
            ("GITHUB_OUTPUT", output.to_str().unwrap()),
            ("GITHUB_STEP_SUMMARY", summary.to_str().unwrap()),
        ]);
        let run = ecr_push(&args, &env);
        let read = |path: &PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        let written = Written(vec![
            ("stdout", run.stdout.clone()),
            ("stderr", run.stderr.clone()),
            ("$GITHUB_OUTPUT", read(&output)),
            ("the step summary", read(&summary)),
            ("the metadata file", read(&metadata)),
        ]);
        (run, written)
    }

    /// The environment of a GitHub Actions job with `id-token: write`.
    fn github_oidc(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ACTIONS_ID_TOKEN_REQUEST_URL", self.oidc.request_url()),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", REQUEST_TOKEN.to_owned()),
        ]
    }

    /// The secrets AWS handed out, read off the wire: every session credential STS issued and
    /// every ECR authorization token (base64 of `AWS:<password>`).
    fn issued(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (_, outcome) in self.aws.records() {
            let body = String::from_utf8_lossy(&outcome.response_body);
            for (tag, what) in [
                ("AccessKeyId", "session access key ID"),
                ("SecretAccessKey", "session secret access key"),
                ("SessionToken", "session token"),
            ] {
                if let Some(value) = between(&body, &format!("<{tag}>"), &format!("</{tag}>")) {
                    found.push((what.to_owned(), value.to_owned()));
                }
            }
            if let Some(token) = between(&body, "\"authorizationToken\": \"", "\"")
                .or_else(|| between(&body, "\"authorizationToken\":\"", "\""))
            {
                found.push(("ECR authorization token".to_owned(), token.to_owned()));
            }
        }
        found
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

/// A secret and the forms it could leak in: as is, and base64 (standard and URL-safe).
fn forms(value: &str) -> Vec<String> {
    vec![
        value.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(value),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
    ]
}

/// None of `secrets` (in any of its forms) is in anything written, `::add-mask::` lines aside.
#[track_caller]
fn assert_no_secret(written: &Written, secrets: &[(String, String)]) {
    let mut leaks = Vec::new();
    for (place, text) in &written.0 {
        let checked: String = text
            .lines()
            // Announcing the secret to the runner is what these lines are for.
            .filter(|line| !line.starts_with("::add-mask::"))
            .collect::<Vec<_>>()
            .join("\n");
        for (what, value) in secrets {
            for form in forms(value) {
                if checked.contains(&form) {
                    leaks.push(format!("the {what} ({form}) is in {place}"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}

/// Every one of `secrets` was announced with `::add-mask::` before use.
#[track_caller]
fn assert_masked(run: &Run, secrets: &[(String, String)]) {
    for (what, value) in secrets {
        assert!(
            run.stderr
                .lines()
                .any(|line| line == format!("::add-mask::{value}")),
            "the {what} was masked:\n{}",
            run.stderr
        );
    }
}

/// The run was verbose: debug lines for registry requests, auth steps and AWS calls.
#[track_caller]
fn assert_verbose(run: &Run, aws_calls: &[&str]) {
    let debug: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.starts_with("debug: "))
        .collect();
    for needle in aws_calls
        .iter()
        .copied()
        .chain(["auth: ", "HEAD /v2/team/secret/blobs/sha256:"])
    {
        assert!(
            debug.iter().any(|line| line.contains(needle)),
            "a debug line about {needle:?}:\n{}",
            run.stderr
        );
    }
}

fn strings(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(what, value)| ((*what).to_owned(), value.clone()))
        .collect()
}

#[test]
fn github_oidc_flow_at_the_most_verbose_level_leaks_no_secret() {
    let world = World::start();
    let registry = Registry::start_with_basic_auth("AWS", ECR_PASSWORD);
    let role = format!("arn:aws:iam::{ACCOUNT}:role/ci-push");
    let env = world.github_oidc();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (run, written) = world.push(&registry, &["--role-arn", &role], &env);
    run.success();
    assert_eq!(world.oidc.minted(), 1);

    let mut secrets = strings(&[
        ("GitHub OIDC request token", REQUEST_TOKEN.to_owned()),
        (
            "GitHub OIDC token",
            oidc::jwt(SUBJECT, "sts.amazonaws.com", 1),
        ),
        ("ECR password", ECR_PASSWORD.to_owned()),
        ("ECR Basic credentials", format!("AWS:{ECR_PASSWORD}")),
    ]);
    let issued = world.issued();
    for what in [
        "session access key ID",
        "session secret access key",
        "session token",
        "ECR authorization token",
    ] {
        assert!(
            issued.iter().any(|(w, _)| w == what),
            "the {what} was seen on the wire: {issued:?}"
        );
    }
    secrets.extend(issued);
    assert_no_secret(&written, &secrets);
    assert_masked(
        &run,
        &strings(&[
            (
                "GitHub OIDC token",
                oidc::jwt(SUBJECT, "sts.amazonaws.com", 1),
            ),
            ("ECR password", ECR_PASSWORD.to_owned()),
        ]),
    );
    assert_verbose(
        &run,
        &["STS.AssumeRoleWithWebIdentity", "ECR.GetAuthorizationToken"],
    );
}

#[test]
fn default_credential_chain_at_the_most_verbose_level_leaks_no_secret() {
    let world = World::start();
    let registry = Registry::start_with_basic_auth("AWS", DEFAULT_ECR_PASSWORD);
    let (run, written) = world.push(
        &registry,
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
        ],
    );
    run.success();
    let keys = strings(&[
        ("access key ID", ACCESS_KEY.to_owned()),
        ("secret access key", SECRET_KEY.to_owned()),
        ("session token", SESSION_TOKEN.to_owned()),
    ]);
    let mut secrets = keys.clone();
    secrets.extend(strings(&[
        ("ECR password", DEFAULT_ECR_PASSWORD.to_owned()),
        (
            "ECR Basic credentials",
            format!("AWS:{DEFAULT_ECR_PASSWORD}"),
        ),
    ]));
    secrets.extend(world.issued());
    assert_no_secret(&written, &secrets);
    assert_masked(&run, &keys);
    assert_verbose(
        &run,
        &["STS.GetCallerIdentity", "ECR.GetAuthorizationToken"],
    );
}

#[test]
fn a_failing_push_at_the_most_verbose_level_leaks_no_secret() {
    // The registry wants another password than ECR hands out: the push fails after renewing
    // the whole chain once (a second OIDC token, session and ECR token), and its error, its
    // annotation and its failure summary are checked too.
    let world = World::start();
    let registry = Registry::start_with_basic_auth("AWS", "not-what-ecr-says");
    let role = format!("arn:aws:iam::{ACCOUNT}:role/ci-push");
    let env = world.github_oidc();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (run, written) = world.push(&registry, &["--role-arn", &role], &env);
    run.failure(1);
    assert!(
        run.stderr.contains("refused the credentials (HTTP 401)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("::error title=ecr-push failed::"),
        "{}",
        run.stderr
    );
    let summary = &written.0[3].1;
    assert!(summary.contains("refused the credentials"), "{summary}");
    assert_eq!(world.oidc.minted(), 2, "the chain was renewed once");

    let mut secrets = strings(&[
        ("GitHub OIDC request token", REQUEST_TOKEN.to_owned()),
        ("ECR password", ECR_PASSWORD.to_owned()),
        ("ECR Basic credentials", format!("AWS:{ECR_PASSWORD}")),
    ]);
    for n in 1..=2 {
        secrets.push((
            format!("GitHub OIDC token #{n}"),
            oidc::jwt(SUBJECT, "sts.amazonaws.com", n),
        ));
    }
    secrets.extend(world.issued());
    assert_no_secret(&written, &secrets);
    assert_verbose(&run, &["STS.AssumeRoleWithWebIdentity"]);
}
