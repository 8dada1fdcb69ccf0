//! Command-line interface. Every flag can also be set through an `ECR_PUSH_*` environment
//! variable (CI systems configured by env); the GitHub Action passes its inputs that way.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::verify::VerifyMode;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the push or its verification failed (network, registry, credentials, AWS, digest mismatch)
  2  usage error or invalid input (bad flag, unreadable or corrupt image, invalid tag or name)";

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Debug, Args)]
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

    /// Registry URL, e.g. `http://127.0.0.1:5000` or `https://ghcr.io`.
    #[arg(long, env = "ECR_PUSH_REGISTRY")]
    pub registry: Option<String>,

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

    /// Compression for layers that are uncompressed in the source (legacy docker save).
    #[arg(long, env = "ECR_PUSH_COMPRESSION", value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,

    /// Compression level (gzip 1-9, default 6; zstd 1-19, default 3).
    #[arg(long, env = "ECR_PUSH_COMPRESSION_LEVEL")]
    pub compression_level: Option<i32>,

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

    /// Print the result as one JSON object on stdout.
    #[arg(long, env = "ECR_PUSH_JSON")]
    pub json: bool,

    /// No progress output (errors and warnings still go to stderr).
    #[arg(long, short, env = "ECR_PUSH_QUIET")]
    pub quiet: bool,
}
