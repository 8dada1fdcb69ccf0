//! Raw arguments + environment → validated settings. This is the one place that says what is
//! allowed; everything after it can trust its input.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::aws::identity::TokenSource;
use crate::aws::repository::{Encryption, RepositorySettings};
use crate::aws::scan::ScanSettings;
use crate::aws::{AwsSettings, RoleSettings};
use crate::blob::Compression;
use crate::cli::{
    AwsArgs, CompressionArg, EcrCommandArgs, LoginArgs, PushArgs, RepositoryArgs, ScanMode,
};
use crate::env::{self, Env};
use crate::github::ActionsFiles;
use crate::registry::{BasicCredentials, ClientOptions, RetryPolicy};
use crate::secret::Secret;
use crate::source::{PlatformSpec, Selection};
use crate::verify::VerifyMode;

/// A usage error: the message says what is wrong and how to fix it (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Where to push.
#[derive(Debug)]
pub enum Target {
    /// A registry given by URL, with optional Basic/Bearer credentials.
    Registry {
        url: Url,
        credentials: Option<BasicCredentials>,
    },
    /// Amazon ECR: registry and credentials come from AWS.
    Ecr(Box<EcrTarget>),
}

#[derive(Debug)]
pub struct EcrTarget {
    pub aws: AwsSettings,
    /// Talk to this URL instead of the registry ECR names (VPC endpoints, tests).
    pub registry_override: Option<Url>,
    /// ECR Public (`public.ecr.aws`) rather than a private registry.
    pub public: bool,
    pub repository: RepositorySettings,
}

#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent yes/no options, not a state machine
pub struct PushSettings {
    pub source: PathBuf,
    pub repository: String,
    pub tags: Vec<String>,
    /// Where to push: one or more destinations.
    pub targets: Vec<Target>,
    pub selection: Selection,
    pub compression: Compression,
    pub jobs: usize,
    pub verify: VerifyMode,
    pub client: ClientOptions,
    pub json: bool,
    pub quiet: bool,
    /// `--verbose`: debug lines for requests, auth steps and AWS calls.
    pub verbose: bool,
    pub temp_dir: PathBuf,
    pub github_actions: bool,
    /// `$GITHUB_OUTPUT` and the step summary, on GitHub Actions.
    pub actions: Option<ActionsFiles>,
    pub metadata_file: Option<PathBuf>,
    /// `--wait-replication`: how long to wait for ECR replication.
    pub replication_timeout: Option<Duration>,
    /// The scan gate (`--scan wait`, `--fail-on-severity`), in ECR mode.
    pub scan: Option<ScanSettings>,
    /// Images whose layers may be reused (`--cache-from`), tags or digests.
    pub cache_from: Vec<String>,
    pub cache_dir: Option<PathBuf>,
}

impl PushSettings {
    pub fn from_args(args: &PushArgs, env: &Env) -> Result<Self, UsageError> {
        let repository = args.repository.trim().to_owned();
        validate_repository(&repository)?;
        let tags = resolve_tags(&args.tags, env)?;
        let selection = Selection {
            image: args.image.clone().filter(|s| !s.is_empty()),
            platform: args
                .platform
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(str::parse::<PlatformSpec>)
                .transpose()
                .map_err(|e| usage(format!("--platform: {e}")))?,
            single_platform: args.single_platform,
            runner_platform: PlatformSpec::of_this_machine(),
        };
        let targets = targets(args, env)?;
        let scan = scan_settings(args, &targets)?;
        let replication_timeout = replication(args, &targets)?;
        if args.jobs == 0 || args.jobs > 64 {
            return Err(usage(format!(
                "--jobs must be between 1 and 64, not {}",
                args.jobs
            )));
        }
        if args.retries == 0 {
            return Err(usage(
                "--retries must be at least 1 (it counts the first attempt)",
            ));
        }
        if args.timeout == 0 {
            return Err(usage("--timeout must be at least 1 second"));
        }
        Ok(Self {
            source: args.source.clone(),
            repository,
            tags,
            targets,
            selection,
            compression: compression(args.compression, args.compression_level)?,
            jobs: args.jobs,
            verify: args.verify,
            client: ClientOptions {
                retry: RetryPolicy {
                    max_attempts: args.retries,
                    total: Duration::from_secs(args.timeout),
                    ..RetryPolicy::default()
                },
                ..ClientOptions::default()
            },
            json: args.json,
            quiet: args.quiet,
            verbose: args.verbose,
            temp_dir: env.temp_dir(),
            github_actions: env.is_github_actions(),
            actions: actions_files(env),
            metadata_file: args.metadata_file.clone(),
            scan,
            replication_timeout,
            cache_from: cache_from(&args.cache_from)?,
            cache_dir: args.cache_dir.clone(),
        })
    }
}

/// `--scan wait` and its gate. Scanning is an ECR feature: plain registries and ECR Public
/// cannot scan.
fn scan_settings(args: &PushArgs, targets: &[Target]) -> Result<Option<ScanSettings>, UsageError> {
    let wanted = args.scan == ScanMode::Wait || args.fail_on_severity.is_some();
    if !wanted {
        return Ok(None);
    }
    if targets
        .iter()
        .any(|t| !matches!(t, Target::Ecr(ecr) if !ecr.public))
    {
        return Err(usage(
            "--scan and --fail-on-severity need a private ECR registry (plain registries and ECR Public do not scan)",
        ));
    }
    let mut ignore: HashSet<String> = args
        .ignore_cves
        .iter()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .collect();
    if let Some(path) = &args.ignore_cve_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "cannot read --ignore-cve-file {}: {e}",
                path.display()
            ))
        })?;
        ignore.extend(crate::aws::scan::parse_ignore_file(&text));
    }
    if args.scan_timeout == 0 {
        return Err(usage("--scan-timeout must be at least 1 second"));
    }
    Ok(Some(ScanSettings::new(
        Duration::from_secs(args.scan_timeout),
        args.fail_on_severity,
        ignore,
    )))
}

fn replication(args: &PushArgs, targets: &[Target]) -> Result<Option<Duration>, UsageError> {
    if !args.wait_replication {
        return Ok(None);
    }
    if targets
        .iter()
        .any(|t| !matches!(t, Target::Ecr(ecr) if !ecr.public))
    {
        return Err(usage("--wait-replication needs a private ECR registry"));
    }
    Ok(Some(Duration::from_secs(args.replication_timeout.max(1))))
}

/// `--cache-from` references: tags or digests of the target repository.
fn cache_from(given: &[String]) -> Result<Vec<String>, UsageError> {
    given
        .iter()
        .map(|r| r.trim())
        .filter(|r| !r.is_empty())
        .map(|reference| {
            if reference.starts_with("sha256:") {
                reference
                    .parse::<oci_spec::image::Digest>()
                    .map(|_| reference.to_owned())
                    .map_err(|e| usage(format!("--cache-from {reference}: {e}")))
            } else {
                validate_tag(reference).map(|()| reference.to_owned()).map_err(|_| {
                    usage(format!(
                        "--cache-from {reference:?} must be a tag or a sha256 digest of the target repository"
                    ))
                })
            }
        })
        .collect()
}

/// Plain registries, or ECR destinations (the default without `--registry`; also when a registry
/// URL is an ECR one or AWS options are given): one per region × registry ID, or per ECR URL.
fn targets(args: &PushArgs, env: &Env) -> Result<Vec<Target>, UsageError> {
    let registries = args
        .registries
        .iter()
        .map(|r| r.trim())
        .filter(|s| !s.is_empty())
        .map(parse_registry_url)
        .collect::<Result<Vec<_>, _>>()?;
    let is_ecr_url = |url: &Url| {
        url.host_str()
            .is_some_and(|h| parse_ecr_host(h).is_some() || h == crate::aws::public::HOST)
    };
    let ecr_urls = registries.iter().filter(|url| is_ecr_url(url)).count();
    if registries.is_empty() || ecr_urls > 0 || args.aws.any_given() {
        if args.username.is_some() {
            return Err(usage(
                "--username is for plain registries; in ECR mode the credentials come from AWS",
            ));
        }
        let repository = repository_settings(&args.repository_settings)?;
        let base = aws_settings(&args.aws, env)?;
        return ecr_destinations(registries, ecr_urls, &args.aws, &base, &repository).map(
            |targets| {
                targets
                    .into_iter()
                    .map(|t| Target::Ecr(Box::new(t)))
                    .collect()
            },
        );
    }
    let credentials = registry_credentials(args.username.as_deref(), env)?;
    Ok(registries
        .into_iter()
        .map(|url| Target::Registry {
            url,
            credentials: credentials.clone(),
        })
        .collect())
}

fn ecr_destinations(
    registries: Vec<Url>,
    ecr_urls: usize,
    args: &AwsArgs,
    base: &AwsSettings,
    repository: &RepositorySettings,
) -> Result<Vec<EcrTarget>, UsageError> {
    let regions: Vec<Option<String>> = non_empty_or_default(&args.regions);
    let ids: Vec<Option<String>> = non_empty_or_default(&args.registry_ids);
    for id in ids.iter().flatten() {
        if !(id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())) {
            return Err(usage(format!(
                "--registry-id must be a 12-digit AWS account ID, not {id:?}"
            )));
        }
    }
    let with = |region: Option<String>, id: Option<String>| AwsSettings {
        region,
        registry_id: id,
        ..base.clone()
    };
    if ecr_urls > 0 {
        // ECR registry URLs name their destinations themselves.
        if ecr_urls != registries.len() || regions.len() > 1 || ids.len() > 1 {
            return Err(usage(
                "give destinations either as ECR registry URLs or as --region/--registry-id, not both",
            ));
        }
        return registries
            .into_iter()
            .map(|url| {
                ecr_target(
                    Some(url),
                    with(regions[0].clone(), ids[0].clone()),
                    repository.clone(),
                )
            })
            .collect();
    }
    let combinations: Vec<(Option<String>, Option<String>)> = regions
        .iter()
        .flat_map(|region| ids.iter().map(move |id| (region.clone(), id.clone())))
        .collect();
    let overrides: Vec<Option<Url>> = match registries.len() {
        0 => vec![None; combinations.len()],
        n if n == combinations.len() => registries.into_iter().map(Some).collect(),
        n => {
            return Err(usage(format!(
                "{n} --registry URLs for {} destinations; give one URL per destination, in the \
                 order of --region × --registry-id",
                combinations.len()
            )));
        }
    };
    combinations
        .into_iter()
        .zip(overrides)
        .map(|((region, id), url)| ecr_target(url, with(region, id), repository.clone()))
        .collect()
}

fn non_empty_or_default(values: &[String]) -> Vec<Option<String>> {
    let mut values: Vec<Option<String>> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| Some(v.to_owned()))
        .collect();
    values.dedup();
    if values.is_empty() {
        values.push(None);
    }
    values
}

/// ECR settings from a registry URL (if any) and the AWS settings: an ECR host gives account and
/// region; `public.ecr.aws` means ECR Public; any other URL is talked to instead of the ECR
/// endpoint (VPC endpoints, tests).
fn ecr_target(
    registry: Option<Url>,
    mut aws: AwsSettings,
    repository: RepositorySettings,
) -> Result<EcrTarget, UsageError> {
    let host = registry.as_ref().and_then(|url| url.host_str());
    let ecr_host = host.and_then(parse_ecr_host);
    let public = host == Some(crate::aws::public::HOST);
    if let Some((account, region)) = &ecr_host {
        aws.region.get_or_insert_with(|| region.clone());
        aws.registry_id.get_or_insert_with(|| account.clone());
    }
    let registry_override = registry.filter(|_| ecr_host.is_none() && !public);
    if let Some(url) = &registry_override
        && url.scheme() == "http"
        && !is_loopback(url)
    {
        return Err(usage(format!(
            "--registry {url} would send the ECR password over plain HTTP; use https:// (plain \
             http is only allowed to a loopback address)"
        )));
    }
    Ok(EcrTarget {
        aws,
        registry_override,
        public,
        repository,
    })
}

/// What `login` needs.
#[derive(Debug)]
pub struct LoginSettings {
    pub target: EcrTarget,
    /// The Docker config file to update.
    pub docker_config: PathBuf,
    pub password_stdout: bool,
    pub actions: Option<ActionsFiles>,
}

impl LoginSettings {
    pub fn from_args(args: &LoginArgs, env: &Env) -> Result<Self, UsageError> {
        let docker_config = match &args.docker_config {
            Some(path) if path.extension().is_some_and(|e| e == "json") => path.clone(),
            Some(dir) => dir.join("config.json"),
            None => env
                .get(env::DOCKER_CONFIG)
                .map(PathBuf::from)
                .or_else(|| {
                    env.get(env::HOME)
                        .map(|home| PathBuf::from(home).join(".docker"))
                })
                .ok_or_else(|| {
                    usage("no --docker-config given and neither DOCKER_CONFIG nor HOME is set")
                })?
                .join("config.json"),
        };
        Ok(Self {
            target: single_ecr_target(
                args.registry.as_deref(),
                &args.aws,
                RepositorySettings::default(),
                env,
            )?,
            docker_config,
            password_stdout: args.password_stdout,
            actions: actions_files(env),
        })
    }
}

/// One ECR destination from `--registry` and the AWS options (`login` and the repository
/// subcommands).
fn single_ecr_target(
    registry: Option<&str>,
    args: &AwsArgs,
    repository: RepositorySettings,
    env: &Env,
) -> Result<EcrTarget, UsageError> {
    let registry = registry
        .filter(|s| !s.is_empty())
        .map(parse_registry_url)
        .transpose()?;
    if args.regions.len() > 1 || args.registry_ids.len() > 1 {
        return Err(usage(
            "this command takes one --region and one --registry-id",
        ));
    }
    let mut aws = aws_settings(args, env)?;
    aws.region = non_empty_or_default(&args.regions).remove(0);
    aws.registry_id = non_empty_or_default(&args.registry_ids).remove(0);
    ecr_target(registry, aws, repository)
}

/// What the repository subcommands (`tag`, `status`, `images`, `cleanup`, `lifecycle`) need.
#[derive(Debug)]
pub struct EcrCommandSettings {
    pub target: EcrTarget,
    pub json: bool,
    pub client: ClientOptions,
    pub actions: Option<ActionsFiles>,
}

impl EcrCommandSettings {
    /// `create_repository`: whether a missing repository may be created (only `tag`, into
    /// another repository, ever does).
    pub fn from_args(
        args: &EcrCommandArgs,
        repository: &str,
        create_repository: bool,
        env: &Env,
    ) -> Result<Self, UsageError> {
        validate_repository(repository)?;
        Ok(Self {
            target: single_ecr_target(
                args.registry.as_deref(),
                &args.aws,
                RepositorySettings {
                    create: create_repository,
                    ..RepositorySettings::default()
                },
                env,
            )?,
            json: args.json,
            client: ClientOptions::default(),
            actions: actions_files(env),
        })
    }
}

fn actions_files(env: &Env) -> Option<ActionsFiles> {
    env.is_github_actions().then(|| ActionsFiles {
        output: env.get(env::GITHUB_OUTPUT).map(PathBuf::from),
        summary: env.get(env::GITHUB_STEP_SUMMARY).map(PathBuf::from),
    })
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain == "localhost",
        None => false,
    }
}

/// `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]` or the dual-stack
/// `<account>.dkr-ecr[-fips].<region>.on.aws` → (account, region).
pub fn parse_ecr_host(host: &str) -> Option<(String, String)> {
    let mut parts = host.split('.');
    let account = parts.next()?;
    let service = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let region = match (service, rest.as_slice()) {
        (
            "dkr",
            ["ecr" | "ecr-fips", region, "amazonaws", "com"]
            | ["ecr" | "ecr-fips", region, "amazonaws", "com", "cn"],
        )
        | ("dkr-ecr" | "dkr-ecr-fips", [region, "on", "aws"]) => *region,
        _ => return None,
    };
    account_ok.then(|| (account.to_owned(), region.to_owned()))
}

fn aws_settings(args: &AwsArgs, env: &Env) -> Result<AwsSettings, UsageError> {
    let role = args
        .role_arn
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|arn| role_settings(arn, args, env))
        .transpose()?;
    if role.is_none()
        && (args.web_identity_token_file.is_some() || args.web_identity_token_env.is_some())
    {
        return Err(usage(
            "a web identity token was given but no role to assume; pass --role-arn too",
        ));
    }
    let token = if role.is_some() {
        token_source(args, env)?
    } else {
        None
    };
    // Region and registry ID are set per destination.
    Ok(AwsSettings {
        region: None,
        registry_id: None,
        role,
        token,
        on_github: env.is_github_actions(),
        ecr_endpoint: args.ecr_endpoint.clone().filter(|s| !s.is_empty()),
        sts_endpoint: args.sts_endpoint.clone().filter(|s| !s.is_empty()),
        ..AwsSettings::default()
    })
}

fn role_settings(arn: &str, args: &AwsArgs, env: &Env) -> Result<RoleSettings, UsageError> {
    if !(arn.starts_with("arn:") && arn.contains(":role/")) {
        return Err(usage(format!(
            "--role-arn {arn:?} is not a role ARN; it looks like arn:aws:iam::123456789012:role/name"
        )));
    }
    let session_name = match &args.role_session_name {
        Some(name) => name.clone(),
        None => format!(
            "ecr-push-{}",
            env.get("GITHUB_RUN_ID")
                .or_else(|| env.get("CI_JOB_ID"))
                .map_or_else(|| unix_seconds().to_string(), str::to_owned)
        ),
    };
    let valid_name = (2..=64).contains(&session_name.len())
        && session_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if !valid_name {
        return Err(usage(format!(
            "--role-session-name {session_name:?} must be 2 to 64 characters of letters, digits \
             and _+=,.@-"
        )));
    }
    let duration = args
        .role_duration_seconds
        .map(|seconds| {
            if (900..=43_200).contains(&seconds) {
                Ok(Duration::from_secs(seconds))
            } else {
                Err(usage(format!(
                    "--role-duration-seconds must be between 900 and 43200, not {seconds}"
                )))
            }
        })
        .transpose()?;
    Ok(RoleSettings {
        arn: arn.to_owned(),
        session_name,
        duration,
    })
}

/// The web identity token to exchange: an explicit file or env var first, then GitHub's OIDC
/// token service, then `AWS_WEB_IDENTITY_TOKEN_FILE`.
fn token_source(args: &AwsArgs, env: &Env) -> Result<Option<TokenSource>, UsageError> {
    if let Some(path) = &args.web_identity_token_file {
        return Ok(Some(TokenSource::File(path.clone())));
    }
    if let Some(name) = args
        .web_identity_token_env
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        let value = env.secret(name).ok_or_else(|| {
            usage(format!(
                "--web-identity-token-env {name}: the variable ${name} is empty or not set"
            ))
        })?;
        return Ok(Some(TokenSource::EnvVar {
            name: name.to_owned(),
            value,
        }));
    }
    if let (Some(url), Some(token)) = (
        env.get(env::ACTIONS_ID_TOKEN_REQUEST_URL),
        env.secret(env::ACTIONS_ID_TOKEN_REQUEST_TOKEN),
    ) {
        return Ok(Some(TokenSource::GitHub {
            request_url: url.to_owned(),
            request_token: token,
            audience: args.audience.clone(),
        }));
    }
    Ok(env
        .get(env::AWS_WEB_IDENTITY_TOKEN_FILE)
        .map(|path| TokenSource::File(PathBuf::from(path))))
}

fn repository_settings(args: &RepositoryArgs) -> Result<RepositorySettings, UsageError> {
    let tags = args
        .repository_tags
        .iter()
        .filter(|t| !t.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .filter(|(key, _)| !key.trim().is_empty())
                .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                .ok_or_else(|| usage(format!("--repository-tag {pair:?} must be key=value")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let lifecycle_policy = args
        .lifecycle_policy
        .as_ref()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| {
                usage(format!(
                    "cannot read --lifecycle-policy {}: {e}",
                    path.display()
                ))
            })?;
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| {
                usage(format!(
                    "--lifecycle-policy {} is not valid JSON: {e}",
                    path.display()
                ))
            })?;
            Ok(text)
        })
        .transpose()?;
    if args.kms_key.is_some() && args.encryption == Some(Encryption::Aes256) {
        return Err(usage("--kms-key needs --encryption KMS"));
    }
    Ok(RepositorySettings {
        create: args.create_repository,
        scan_on_push: args.scan_on_push,
        tag_mutability: args.tag_mutability,
        encryption: args.encryption,
        kms_key: args.kms_key.clone(),
        tags,
        lifecycle_policy,
    })
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn compression(kind: CompressionArg, level: Option<i32>) -> Result<Compression, UsageError> {
    match kind {
        CompressionArg::Gzip => {
            // libdeflate levels; 1 is the measured best trade-off (see `compress`).
            let level = level.unwrap_or(1);
            if !(1..=12).contains(&level) {
                return Err(usage(format!(
                    "--compression-level for gzip is 1 to 12, not {level}"
                )));
            }
            Ok(Compression::Gzip {
                level: level.unsigned_abs(),
            })
        }
        CompressionArg::Zstd => {
            let level = level.unwrap_or(3);
            if !(1..=19).contains(&level) {
                return Err(usage(format!(
                    "--compression-level for zstd is 1 to 19, not {level}"
                )));
            }
            Ok(Compression::Zstd { level })
        }
    }
}

fn registry_credentials(
    username: Option<&str>,
    env: &Env,
) -> Result<Option<BasicCredentials>, UsageError> {
    let password = env.secret(env::PASSWORD);
    match (username.filter(|u| !u.is_empty()), password) {
        (Some(username), Some(password)) => Ok(Some(BasicCredentials {
            username: username.to_owned(),
            password,
        })),
        (Some(_), None) => Err(usage(format!(
            "--username is given but {} is not set; put the password in that environment variable",
            env::PASSWORD
        ))),
        (None, Some(_)) => Err(usage(format!(
            "{} is set but --username is not; pass --username too",
            env::PASSWORD
        ))),
        (None, None) => Ok(None),
    }
}

/// `http://host:port`, `https://host`, or a bare `host[:port]` (HTTPS). Paths are not allowed:
/// the distribution API lives at `/v2/` of the host.
pub fn parse_registry_url(text: &str) -> Result<Url, UsageError> {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("https://{text}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| {
        usage(format!(
            "--registry {text:?} is not a URL ({e}); e.g. https://ghcr.io or http://127.0.0.1:5000"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(usage(format!(
            "--registry must be an http:// or https:// URL, not {text:?}"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(usage(format!("--registry {text:?} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(usage(
            "--registry must not contain credentials; use --username and ECR_PUSH_PASSWORD",
        ));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(usage(format!(
            "--registry {text:?} has a path or query; give only scheme, host and port"
        )));
    }
    Ok(url)
}

/// The tags to push: the given ones (templates expanded), or the commit SHA. Each must be a
/// valid tag.
pub fn resolve_tags(given: &[String], env: &Env) -> Result<Vec<String>, UsageError> {
    let mut templates: Vec<&str> = given
        .iter()
        .flat_map(|t| t.split(['\n', ',']))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if templates.is_empty() {
        templates.push("{sha}");
    }
    let mut unique = Vec::with_capacity(templates.len());
    for template in templates {
        let tag = expand_tag(template, env)?;
        validate_tag(&tag)?;
        if !unique.contains(&tag) {
            unique.push(tag);
        }
    }
    Ok(unique)
}

/// Expands `{sha}`, `{short_sha}`, `{branch}`, `{run_number}` and `{date}` in a tag, so CI
/// configurations need no shell to build tags.
fn expand_tag(template: &str, env: &Env) -> Result<String, UsageError> {
    let mut tag = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        tag.push_str(&rest[..open]);
        let close = rest[open..].find('}').ok_or_else(|| {
            usage(format!(
                "tag template {template:?} has a '{{' without a closing '}}'"
            ))
        })? + open;
        tag.push_str(&template_value(&rest[open + 1..close], template, env)?);
        rest = &rest[close + 1..];
    }
    tag.push_str(rest);
    Ok(tag)
}

fn template_value(name: &str, template: &str, env: &Env) -> Result<String, UsageError> {
    let missing = |what: &str| {
        usage(format!(
            "tag template {template:?} needs {what}, which is not known here; pass the tag literally"
        ))
    };
    let sha = || {
        commit_sha(env).ok_or_else(|| {
            usage(
                "no --tag given and no commit SHA found (GITHUB_SHA, CI_COMMIT_SHA, or a git \
                 checkout in the current directory); pass --tag <tag>",
            )
        })
    };
    match name {
        "sha" => sha(),
        "short_sha" => Ok(sha()?.chars().take(7).collect()),
        "branch" => branch(env).map(|b| sanitize_tag_part(&b)).ok_or_else(|| {
            missing("the branch (GITHUB_HEAD_REF, GITHUB_REF_NAME, CI_COMMIT_REF_NAME or git)")
        }),
        "run_number" => [
            "GITHUB_RUN_NUMBER",
            "CI_PIPELINE_IID",
            "BUILDKITE_BUILD_NUMBER",
            "BUILD_NUMBER",
        ]
        .iter()
        .find_map(|name| env.get(name))
        .map(str::to_owned)
        .ok_or_else(|| missing("the run number (GITHUB_RUN_NUMBER, CI_PIPELINE_IID)")),
        "date" => Ok(utc_date(unix_seconds())),
        other => Err(usage(format!(
            "tag template {template:?} uses {{{other}}}; known are {{sha}}, {{short_sha}}, \
             {{branch}}, {{run_number}} and {{date}}"
        ))),
    }
}

fn branch(env: &Env) -> Option<String> {
    // On a pull request GITHUB_REF_NAME is `<n>/merge`; the source branch is GITHUB_HEAD_REF.
    if let Some(name) = [
        "GITHUB_HEAD_REF",
        "GITHUB_REF_NAME",
        "CI_COMMIT_REF_NAME",
        "BUILDKITE_BRANCH",
    ]
    .iter()
    .find_map(|name| env.get(name))
    {
        return Some(name.to_owned());
    }
    let output = std::process::Command::new("git")
        .args(["rev-parse", "--abbrev-ref", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let name = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !name.is_empty() && name != "HEAD").then_some(name)
}

/// Makes a branch name usable in a tag: `feature/x` → `feature-x`.
fn sanitize_tag_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out.trim_start_matches(['-', '.'])
        .trim_end_matches('-')
        .chars()
        .take(128)
        .collect()
}

/// `YYYYMMDD` in UTC.
fn utc_date(unix_seconds: u64) -> String {
    let (year, month, day) = crate::clock::utc_date(unix_seconds);
    format!("{year:04}{month:02}{day:02}")
}

fn commit_sha(env: &Env) -> Option<String> {
    if let Some(sha) = env
        .get(env::GITHUB_SHA)
        .or_else(|| env.get(env::CI_COMMIT_SHA))
    {
        return Some(sha.to_owned());
    }
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let sha = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !sha.is_empty()).then_some(sha)
}

/// OCI tag grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`, which is also what ECR accepts.
pub fn validate_tag(tag: &str) -> Result<(), UsageError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let first_ok = tag
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if tag.len() <= 128 && first_ok && tag.chars().all(valid_char) {
        Ok(())
    } else {
        Err(usage(format!(
            "invalid tag {tag:?}: a tag is 1 to 128 characters of letters, digits, '_', '.' and \
             '-', not starting with '.' or '-'"
        )))
    }
}

/// OCI repository name grammar: lowercase path components of `[a-z0-9]` separated by `.`, `_`,
/// `__` or dashes, joined by `/`; at most 255 characters (ECR allows 2 to 256).
pub fn validate_repository(name: &str) -> Result<(), UsageError> {
    let component_ok = |component: &str| {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let separator = &component[start..i];
            let ok = separator == "."
                || separator == "_"
                || separator == "__"
                || separator.bytes().all(|b| b == b'-');
            if !ok {
                return false;
            }
        }
        true
    };
    if !name.is_empty() && name.len() <= 255 && name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(usage(format!(
            "invalid repository name {name:?}: use lowercase letters, digits and single '.', '_' \
             or '-' between them, with '/' between path parts (e.g. team/app)"
        )))
    }
}

impl Target {
    /// The password, if any, for masking.
    pub fn secret(&self) -> Option<&Secret> {
        match self {
            Self::Registry { credentials, .. } => credentials.as_ref().map(|c| &c.password),
            Self::Ecr(_) => None,
        }
    }

    /// A short name for messages: the registry URL, or the ECR account and region.
    pub fn label(&self) -> String {
        match self {
            Self::Registry { url, .. } => url.as_str().trim_end_matches('/').to_owned(),
            Self::Ecr(target) if target.public => crate::aws::public::HOST.to_owned(),
            Self::Ecr(target) => format!(
                "{}{}",
                target.aws.registry_id.as_deref().unwrap_or("ECR"),
                target
                    .aws
                    .region
                    .as_deref()
                    .map(|r| format!(" in {r}"))
                    .unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_oci_grammar() {
        for ok in ["v1", "latest", "1.2.3", "_x", "a-b_c.d", &"a".repeat(128)] {
            assert!(validate_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", ".x", "a/b", "a:b", "ü", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repository_names_follow_the_oci_grammar() {
        for ok in ["app", "team/app", "a.b/c_d/e__f/g-h", "a--b", "x1/2y"] {
            assert!(validate_repository(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "App",
            "team//app",
            "/app",
            "app/",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a b",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commit_sha_comes_from_github_then_gitlab() {
        let env = Env::from_pairs([(env::GITHUB_SHA, "abc"), (env::CI_COMMIT_SHA, "def")]);
        assert_eq!(resolve_tags(&[], &env).unwrap(), vec!["abc"]);
        let env = Env::from_pairs([(env::CI_COMMIT_SHA, "def")]);
        assert_eq!(resolve_tags(&[], &env).unwrap(), vec!["def"]);
    }

    #[test]
    fn templates_expand_from_ci_variables() {
        let env = Env::from_pairs([
            (env::GITHUB_SHA, "0123456789abcdef0123456789abcdef01234567"),
            ("GITHUB_REF_NAME", "feature/new UI"),
            ("GITHUB_RUN_NUMBER", "42"),
        ]);
        let tags = resolve_tags(
            &[
                "{branch}-{short_sha}".into(),
                "build-{run_number}".into(),
                "{sha}".into(),
            ],
            &env,
        )
        .unwrap();
        assert_eq!(
            tags,
            vec![
                "feature-new-UI-0123456",
                "build-42",
                "0123456789abcdef0123456789abcdef01234567"
            ]
        );
        assert!(resolve_tags(&["{nope}".into()], &env).is_err());
        assert!(resolve_tags(&["{sha".into()], &env).is_err());
    }

    #[test]
    fn pull_requests_use_the_source_branch() {
        let env = Env::from_pairs([
            ("GITHUB_REF_NAME", "17/merge"),
            ("GITHUB_HEAD_REF", "fix/bug"),
        ]);
        assert_eq!(
            resolve_tags(&["{branch}".into()], &env).unwrap(),
            vec!["fix-bug"]
        );
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(utc_date(0), "19700101");
        assert_eq!(utc_date(951_782_400), "20000229");
        assert_eq!(utc_date(1_795_392_000), "20261123");
    }

    #[test]
    fn branch_names_are_sanitised() {
        assert_eq!(sanitize_tag_part("feature/x"), "feature-x");
        assert_eq!(sanitize_tag_part("--weird//name--"), "weird-name");
        assert_eq!(sanitize_tag_part(".hidden"), "hidden");
    }

    #[test]
    fn given_tags_are_split_trimmed_and_deduplicated() {
        let tags =
            resolve_tags(&["v1, latest".into(), "v1\nedge".into()], &Env::default()).unwrap();
        assert_eq!(tags, vec!["v1", "latest", "edge"]);
    }

    #[test]
    fn registry_urls() {
        assert_eq!(
            parse_registry_url("http://127.0.0.1:5000")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:5000/"
        );
        assert_eq!(
            parse_registry_url("ghcr.io").unwrap().as_str(),
            "https://ghcr.io/"
        );
        assert!(parse_registry_url("ftp://x").is_err());
        assert!(parse_registry_url("https://u:p@x").is_err());
        assert!(parse_registry_url("https://x/v2/").is_err());
    }

    fn aws_args(regions: &[&str], registry_ids: &[&str]) -> AwsArgs {
        AwsArgs {
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            registry_ids: registry_ids.iter().map(|r| (*r).to_owned()).collect(),
            role_arn: None,
            role_session_name: None,
            role_duration_seconds: None,
            web_identity_token_file: None,
            web_identity_token_env: None,
            audience: "sts.amazonaws.com".into(),
            ecr_endpoint: None,
            sts_endpoint: None,
        }
    }

    #[test]
    fn several_regions_and_accounts_are_every_combination() {
        let args = aws_args(
            &["eu-west-1", "us-east-1"],
            &["111111111111", "222222222222"],
        );
        let base = aws_settings(&args, &Env::default()).unwrap();
        let repository = RepositorySettings::default();
        let targets = ecr_destinations(Vec::new(), 0, &args, &base, &repository).unwrap();
        let labels: Vec<String> = targets
            .into_iter()
            .map(|t| Target::Ecr(Box::new(t)).label())
            .collect();
        assert_eq!(
            labels,
            vec![
                "111111111111 in eu-west-1",
                "222222222222 in eu-west-1",
                "111111111111 in us-east-1",
                "222222222222 in us-east-1",
            ]
        );

        // One --registry URL per destination, in that order; any other count is refused.
        let urls: Vec<Url> = (0..4)
            .map(|i| parse_registry_url(&format!("https://vpce-{i}.example")).unwrap())
            .collect();
        let targets = ecr_destinations(urls.clone(), 0, &args, &base, &repository).unwrap();
        assert_eq!(
            targets[3].registry_override.as_ref().map(Url::as_str),
            Some("https://vpce-3.example/")
        );
        assert_eq!(targets[3].aws.registry_id.as_deref(), Some("222222222222"));
        let error = ecr_destinations(urls[..3].to_vec(), 0, &args, &base, &repository)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("3 --registry URLs for 4 destinations"),
            "{error}"
        );

        let bad = aws_args(&["eu-west-1"], &["111111111111", "12345"]);
        let error = ecr_destinations(Vec::new(), 0, &bad, &base, &repository)
            .unwrap_err()
            .to_string();
        assert!(error.contains("12-digit"), "{error}");
    }

    #[test]
    fn password_without_user_is_an_error() {
        let env = Env::from_pairs([(env::PASSWORD, "pw")]);
        assert!(registry_credentials(None, &env).is_err());
        assert!(registry_credentials(Some("u"), &Env::default()).is_err());
        let credentials = registry_credentials(Some("u"), &env).unwrap().unwrap();
        assert_eq!(credentials.password.expose(), "pw");
    }
}
