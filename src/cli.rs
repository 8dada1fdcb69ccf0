//! Command-line interface. Every flag can also be set through an `ECR_PUSH_*` environment
//! variable (CI systems configured by env); the GitHub Action passes its inputs that way.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::verify::VerifyMode;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the push or its verification failed (network, registry, credentials, AWS, digest mismatch)
  2  usage error or invalid input (bad flag, unreadable or corrupt image, invalid tag or name)
  3  pushed, but the vulnerability scan found findings at or above --fail-on-severity";

#[derive(Debug, Parser)]
#[command(
    name = "ecr-push",
    version,
    about = "Push a docker-save tarball or OCI layout to Amazon ECR (or any OCI registry), layer by layer, with no Docker daemon, and verify it.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Push an image and verify it.
    #[command(after_help = EXIT_CODES)]
    Push(Box<PushArgs>),
    /// Get ECR credentials for later docker, buildx or helm steps: write them into a Docker
    /// `config.json`, or print the password for `--password-stdin`.
    #[command(after_help = EXIT_CODES)]
    Login(Box<LoginArgs>),
    /// Add tags to an image already in ECR (promotion), without uploading it again.
    #[command(after_help = EXIT_CODES)]
    Tag(Box<TagArgs>),
    /// A repository at a glance: settings, lifecycle policy, size, newest images.
    #[command(after_help = EXIT_CODES)]
    Status(Box<StatusArgs>),
    /// List a repository's images.
    #[command(after_help = EXIT_CODES)]
    Images(Box<ImagesArgs>),
    /// Delete old or untagged images (never what a kept image index refers to).
    #[command(after_help = EXIT_CODES)]
    Cleanup(Box<CleanupArgs>),
    /// Apply a lifecycle policy, or preview what one would expire.
    #[command(after_help = EXIT_CODES)]
    Lifecycle(Box<LifecycleArgs>),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry to log in to: an ECR registry URL, or `public.ecr.aws`
    /// (default: the registry of `--registry-id`, or of the caller's account).
    #[arg(long, env = "ECR_PUSH_REGISTRY")]
    pub registry: Option<String>,

    #[command(flatten)]
    pub aws: AwsArgs,

    /// Docker config to update: a directory (like `DOCKER_CONFIG`) or a `.json` file
    /// (default: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
    #[arg(long, env = "ECR_PUSH_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,

    /// Print only the password on stdout, for `docker login --username AWS --password-stdin`.
    #[arg(long, env = "ECR_PUSH_PASSWORD_STDOUT")]
    pub password_stdout: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScanMode {
    Off,
    Wait,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // command-line flags, each independent of the others
pub struct PushArgs {
    /// The image: a `docker save` tar, an OCI layout directory, or an oci-archive tar;
    /// optionally gzip- or zstd-compressed (recognised by content).
    #[arg(env = "ECR_PUSH_SOURCE", value_name = "SOURCE")]
    pub source: PathBuf,

    /// Repository to push to, e.g. `team/app`.
    #[arg(long, env = "ECR_PUSH_REPOSITORY")]
    pub repository: String,

    /// Tag to put the image under (repeatable). Default: the commit SHA from `GITHUB_SHA`,
    /// `CI_COMMIT_SHA` or `git rev-parse HEAD`.
    #[arg(long = "tag", env = "ECR_PUSH_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,

    /// Registry URL, e.g. `http://127.0.0.1:5000` or `https://ghcr.io` (repeatable: the image
    /// is read once and pushed to each). With AWS options, the URL to talk to instead of ECR's
    /// own (VPC endpoints): one, or one per destination.
    #[arg(long = "registry", env = "ECR_PUSH_REGISTRY", value_delimiter = ',')]
    pub registries: Vec<String>,

    /// User name for the registry; the password is read from `ECR_PUSH_PASSWORD`.
    #[arg(long, env = "ECR_PUSH_USERNAME")]
    pub username: Option<String>,

    /// Which image of a source that holds several (`name:tag`).
    #[arg(long, env = "ECR_PUSH_IMAGE")]
    pub image: Option<String>,

    /// Push only this platform (`os/arch[/variant]`) of a multi-platform image, as a plain
    /// manifest.
    #[arg(long, env = "ECR_PUSH_PLATFORM")]
    pub platform: Option<String>,

    /// Push one image manifest of a multi-platform image, without the index and without
    /// attestation manifests (for Lambda and scanners that refuse indexes): the `--platform`
    /// one, else the only image the index holds, else the one for this runner's platform
    /// (linux/amd64 on x86-64, linux/arm64 on aarch64).
    #[arg(long, env = "ECR_PUSH_SINGLE_PLATFORM")]
    pub single_platform: bool,

    /// Compression for layers that are uncompressed in the source (legacy docker save).
    #[arg(long, env = "ECR_PUSH_COMPRESSION", value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,

    /// Compression level (gzip 1-12, default 1; zstd 1-19, default 3). Levels are libdeflate's
    /// for gzip: level 1 is close to `gzip -6` in size at three times its speed.
    #[arg(long, env = "ECR_PUSH_COMPRESSION_LEVEL")]
    pub compression_level: Option<i32>,

    /// An image in the target repository (tag or digest) whose layers this push may reuse
    /// instead of compressing again (repeatable). The tags being pushed, the newest images (ECR)
    /// and a few tags of the repository are looked at anyway.
    #[arg(
        long = "cache-from",
        env = "ECR_PUSH_CACHE_FROM",
        value_delimiter = ','
    )]
    pub cache_from: Vec<String>,

    /// Directory for a small local cache of compressed layer digests (keep it with
    /// `actions/cache` to skip recompressing unchanged layers).
    #[arg(long, env = "ECR_PUSH_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Blobs uploaded at the same time.
    #[arg(long, env = "ECR_PUSH_JOBS", default_value_t = 4)]
    pub jobs: usize,

    /// Post-push verification.
    #[arg(long, env = "ECR_PUSH_VERIFY", value_enum, default_value_t = VerifyMode::Standard)]
    pub verify: VerifyMode,

    /// Attempts per registry request before giving up (transient errors only).
    #[arg(long, env = "ECR_PUSH_RETRIES", default_value_t = 6)]
    pub retries: u32,

    /// Seconds a request keeps being retried before the push fails.
    #[arg(long, env = "ECR_PUSH_TIMEOUT", default_value_t = 120)]
    pub timeout: u64,

    #[command(flatten)]
    pub aws: AwsArgs,

    #[command(flatten)]
    pub repository_settings: RepositoryArgs,

    /// `wait`: after the push, wait for ECR's vulnerability scan of the image (starting a basic
    /// scan when the repository does not scan on push) and report its findings.
    #[arg(long, env = "ECR_PUSH_SCAN", value_enum, default_value_t = ScanMode::Off)]
    pub scan: ScanMode,

    /// Seconds to wait for the scan.
    #[arg(long, env = "ECR_PUSH_SCAN_TIMEOUT", default_value_t = 900)]
    pub scan_timeout: u64,

    /// Exit with code 3 when the scan finds anything at or above this severity (implies
    /// `--scan wait`).
    #[arg(long, env = "ECR_PUSH_FAIL_ON_SEVERITY", value_enum)]
    pub fail_on_severity: Option<crate::aws::scan::Severity>,

    /// A finding (CVE ID) accepted as a risk: not counted (repeatable).
    #[arg(
        long = "ignore-cve",
        env = "ECR_PUSH_IGNORE_CVES",
        value_delimiter = ','
    )]
    pub ignore_cves: Vec<String>,

    /// A file of accepted finding IDs, one per line (`#` comments).
    #[arg(long, env = "ECR_PUSH_IGNORE_CVE_FILE")]
    pub ignore_cve_file: Option<PathBuf>,

    /// After the push, wait until ECR has replicated the image to every region and account its
    /// replication rules name (`DescribeImageReplicationStatus`), and report where it is.
    #[arg(long, env = "ECR_PUSH_WAIT_REPLICATION")]
    pub wait_replication: bool,

    /// Seconds to wait for replication.
    #[arg(long, env = "ECR_PUSH_REPLICATION_TIMEOUT", default_value_t = 900)]
    pub replication_timeout: u64,

    /// Also write the JSON report to this file (for later steps and other tools).
    #[arg(long, env = "ECR_PUSH_METADATA_FILE")]
    pub metadata_file: Option<PathBuf>,

    /// Print the result as one JSON object on stdout.
    #[arg(long, env = "ECR_PUSH_JSON")]
    pub json: bool,

    /// No progress output (errors and warnings still go to stderr).
    #[arg(long, short, env = "ECR_PUSH_QUIET")]
    pub quiet: bool,

    /// Debug lines on stderr: every registry request (method, path, status, attempt), every
    /// authentication step, every AWS call. They never show headers, tokens, keys or
    /// passwords.
    #[arg(long, short, env = "ECR_PUSH_VERBOSE", conflicts_with = "quiet")]
    pub verbose: bool,
}

/// ECR mode: where the registry and its credentials come from AWS. ECR mode is the default when
/// `--registry` is not given; `--registry` with any of these means "ECR credentials, but talk
/// to this URL" (VPC endpoints, tests).
#[derive(Debug, Args)]
#[command(next_help_heading = "Amazon ECR")]
pub struct AwsArgs {
    /// AWS region (default: `AWS_REGION`, `AWS_DEFAULT_REGION`, the AWS profile). Several
    /// (`eu-west-1,us-east-1`): the image is read and compressed once and pushed to each.
    #[arg(long = "region", env = "ECR_PUSH_REGION", value_delimiter = ',')]
    pub regions: Vec<String>,

    /// Account ID of the registry (default: the caller's account). Several: one destination
    /// per account (and region).
    #[arg(
        long = "registry-id",
        env = "ECR_PUSH_REGISTRY_ID",
        value_delimiter = ','
    )]
    pub registry_ids: Vec<String>,

    /// Role to assume, with the web identity token if there is one (GitHub OIDC, token file,
    /// token env var), else with the default credential chain.
    #[arg(long, env = "ECR_PUSH_ROLE_ARN", visible_alias = "role-to-assume")]
    pub role_arn: Option<String>,

    /// Session name for the assumed role (default: ecr-push-<run id>).
    #[arg(long, env = "ECR_PUSH_ROLE_SESSION_NAME")]
    pub role_session_name: Option<String>,

    /// Role session duration in seconds (900 to 43200; default 3600).
    #[arg(long, env = "ECR_PUSH_ROLE_DURATION_SECONDS")]
    pub role_duration_seconds: Option<u64>,

    /// File holding a web identity (OIDC) token (default: `AWS_WEB_IDENTITY_TOKEN_FILE`).
    #[arg(long, env = "ECR_PUSH_WEB_IDENTITY_TOKEN_FILE")]
    pub web_identity_token_file: Option<std::path::PathBuf>,

    /// Name of an environment variable holding a web identity token (GitLab `id_tokens`).
    #[arg(long, env = "ECR_PUSH_WEB_IDENTITY_TOKEN_ENV")]
    pub web_identity_token_env: Option<String>,

    /// Audience of the GitHub OIDC token.
    #[arg(long, env = "ECR_PUSH_AUDIENCE", default_value = "sts.amazonaws.com")]
    pub audience: String,

    /// ECR API endpoint URL (default: `AWS_ENDPOINT_URL_ECR`, `AWS_ENDPOINT_URL`, the AWS one).
    #[arg(long, env = "ECR_PUSH_ECR_ENDPOINT")]
    pub ecr_endpoint: Option<String>,

    /// STS endpoint URL (default: `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, the AWS one).
    #[arg(long, env = "ECR_PUSH_STS_ENDPOINT")]
    pub sts_endpoint: Option<String>,
}

/// Settings of a repository that `push` creates (drift is reported for an existing one).
#[derive(Debug, Args)]
#[command(next_help_heading = "Amazon ECR repository")]
pub struct RepositoryArgs {
    /// Create the repository if it does not exist.
    #[arg(long, env = "ECR_PUSH_CREATE_REPOSITORY", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub create_repository: bool,

    /// Scan images on push (for a repository created here; drift is reported otherwise).
    #[arg(long, env = "ECR_PUSH_SCAN_ON_PUSH", num_args = 0..=1, default_missing_value = "true", value_name = "true|false")]
    pub scan_on_push: Option<bool>,

    /// Tag mutability of a repository created here.
    #[arg(long, env = "ECR_PUSH_TAG_MUTABILITY", value_enum)]
    pub tag_mutability: Option<crate::aws::repository::TagMutability>,

    /// Encryption of a repository created here.
    #[arg(long, env = "ECR_PUSH_ENCRYPTION", value_enum)]
    pub encryption: Option<crate::aws::repository::Encryption>,

    /// KMS key (ARN or alias) for `--encryption KMS`.
    #[arg(long, env = "ECR_PUSH_KMS_KEY")]
    pub kms_key: Option<String>,

    /// Resource tag for a repository created here, `key=value` (repeatable).
    #[arg(
        long = "repository-tag",
        env = "ECR_PUSH_REPOSITORY_TAGS",
        value_delimiter = ','
    )]
    pub repository_tags: Vec<String>,

    /// Lifecycle policy (JSON file) for a repository created here.
    #[arg(long, env = "ECR_PUSH_LIFECYCLE_POLICY")]
    pub lifecycle_policy: Option<std::path::PathBuf>,
}

impl AwsArgs {
    /// Whether any option that only makes sense for ECR was given.
    pub fn any_given(&self) -> bool {
        !self.regions.is_empty()
            || !self.registry_ids.is_empty()
            || self.role_arn.is_some()
            || self.web_identity_token_file.is_some()
            || self.web_identity_token_env.is_some()
            || self.ecr_endpoint.is_some()
            || self.sts_endpoint.is_some()
    }
}

/// What every repository subcommand (`tag`, `status`, `images`, `cleanup`, `lifecycle`) takes.
#[derive(Debug, Args)]
pub struct EcrCommandArgs {
    /// The registry: an ECR registry URL (sets account and region), or the URL to talk to
    /// instead of ECR's own (VPC endpoints).
    #[arg(long, env = "ECR_PUSH_REGISTRY")]
    pub registry: Option<String>,

    #[command(flatten)]
    pub aws: AwsArgs,

    /// Print the result as JSON on stdout.
    #[arg(long, env = "ECR_PUSH_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image to tag: `repository@sha256:…` or `repository:tag`.
    #[arg(value_name = "IMAGE", env = "ECR_PUSH_SOURCE_IMAGE")]
    pub image: String,

    /// Tag to add (repeatable).
    #[arg(
        long = "tag",
        required = true,
        env = "ECR_PUSH_TAGS",
        value_delimiter = ','
    )]
    pub tags: Vec<String>,

    /// Put the tags in this repository of the same registry instead (blobs are mounted or
    /// copied).
    #[arg(long, env = "ECR_PUSH_REPOSITORY")]
    pub repository: Option<String>,

    /// Create the `--repository` if it does not exist (never the image's own repository).
    #[arg(long, env = "ECR_PUSH_CREATE_REPOSITORY", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub create_repository: bool,

    #[command(flatten)]
    pub common: EcrCommandArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(env = "ECR_PUSH_REPOSITORY")]
    pub repository: String,

    /// How many of the newest images to show.
    #[arg(long, env = "ECR_PUSH_LIMIT", default_value_t = 10)]
    pub limit: usize,

    #[command(flatten)]
    pub common: EcrCommandArgs,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[arg(env = "ECR_PUSH_REPOSITORY")]
    pub repository: String,

    /// Which images.
    #[arg(long, env = "ECR_PUSH_FILTER", value_enum, default_value_t = crate::aws::images::TagFilter::Any)]
    pub filter: crate::aws::images::TagFilter,

    /// Only images with a tag starting with this.
    #[arg(long, env = "ECR_PUSH_TAG_PREFIX")]
    pub tag_prefix: Option<String>,

    #[command(flatten)]
    pub common: EcrCommandArgs,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[arg(env = "ECR_PUSH_REPOSITORY")]
    pub repository: String,

    /// Keep the newest N images (of those considered) and delete the rest. An image index
    /// counts as one image with its platform and attestation manifests.
    #[arg(long, env = "ECR_PUSH_KEEP")]
    pub keep: Option<usize>,

    /// Delete images pushed more than this many days ago.
    #[arg(long, env = "ECR_PUSH_OLDER_THAN")]
    pub older_than: Option<u64>,

    /// Consider untagged images only (not the parts of an image index: they go with it).
    #[arg(long, env = "ECR_PUSH_UNTAGGED")]
    pub untagged: bool,

    /// Show what would be deleted; delete nothing.
    #[arg(long, env = "ECR_PUSH_DRY_RUN")]
    pub dry_run: bool,

    #[command(flatten)]
    pub common: EcrCommandArgs,
}

#[derive(Debug, Args)]
pub struct LifecycleArgs {
    #[arg(env = "ECR_PUSH_REPOSITORY")]
    pub repository: String,

    /// Apply this lifecycle policy (JSON file) to the repository.
    #[arg(long, env = "ECR_PUSH_LIFECYCLE_SET", conflicts_with = "preview")]
    pub set: Option<PathBuf>,

    /// Show which images a policy would expire: the file given with --policy, or the
    /// repository's own.
    #[arg(long, env = "ECR_PUSH_LIFECYCLE_PREVIEW")]
    pub preview: bool,

    /// The policy to preview (JSON file).
    #[arg(long, env = "ECR_PUSH_PREVIEW_POLICY", requires = "preview")]
    pub policy: Option<PathBuf>,

    #[command(flatten)]
    pub common: EcrCommandArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every option and argument of every subcommand can come from an `ECR_PUSH_*` variable
    /// (CI systems are configured by environment; the Action passes inputs that way).
    #[test]
    fn every_flag_of_every_subcommand_has_an_environment_variable() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        let mut checked = 0;
        for command in cli.get_subcommands() {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                checked += 1;
                match arg.get_env() {
                    Some(name) if name.to_string_lossy().starts_with("ECR_PUSH_") => {}
                    _ => missing.push(format!("{} {id}", command.get_name())),
                }
            }
        }
        assert!(checked > 60, "only {checked} arguments seen");
        assert!(missing.is_empty(), "no ECR_PUSH_* variable: {missing:?}");
    }

    #[test]
    fn an_environment_variable_means_one_thing_in_every_subcommand() {
        let cli = Cli::command();
        let mut meaning: std::collections::HashMap<String, (String, String)> =
            std::collections::HashMap::new();
        for command in cli.get_subcommands() {
            for arg in command.get_arguments() {
                let Some(env) = arg.get_env() else { continue };
                let env = env.to_string_lossy().into_owned();
                // The flag's name (positionals have none: their id).
                let id = arg
                    .get_long()
                    .unwrap_or_else(|| arg.get_id().as_str())
                    .to_owned();
                let entry = meaning
                    .entry(env.clone())
                    .or_insert_with(|| (id.clone(), command.get_name().to_owned()));
                assert_eq!(
                    entry.0,
                    id,
                    "{env} is {} in {} but {id} in {}",
                    entry.0,
                    entry.1,
                    command.get_name()
                );
            }
        }
    }
}
