//! Runs a command from parsed arguments to an exit code: the only place that sees the whole
//! chain (settings → source → registry → push → verify → report).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use crate::cli::{Cli, Command, PushArgs};
use crate::env::Env;
use crate::push::{PushError, PushOptions, PushedNode, Pusher, has_uncompressed_layers};
use crate::registry::{Client, RegistryError, StaticCredentials};
use crate::report::{self, Event, PlatformReport, PushReport, Reporter};
use crate::reuse::KnownLayers;
use crate::settings::{PushSettings, Target, UsageError};
use crate::source::{self, SourceError};
use crate::verify::{Verifier, VerifyError};

/// Exit codes, as documented in `--help` and README.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The push or its verification failed.
    pub const FAILED: u8 = 1;
    /// Usage error or invalid input.
    pub const INVALID: u8 = 2;
}

/// Why a command failed; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl From<PushError> for Failure {
    fn from(error: PushError) -> Self {
        match error {
            PushError::Registry(error) => Self::Registry(error),
            PushError::Source(error) => Self::Source(error),
        }
    }
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Source(_) => exit::INVALID,
            Self::Registry(_) | Self::Verify(_) => exit::FAILED,
        }
    }
}

pub fn run(cli: Cli, env: &Env) -> ExitCode {
    match cli.command {
        Command::Push(args) => finish(run_push(&args, env), env.is_github_actions()),
    }
}

fn finish(result: Result<(), Failure>, github_actions: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(failure) => {
            report::print_error(&failure, github_actions);
            ExitCode::from(failure.exit_code())
        }
    }
}

fn run_push(args: &PushArgs, env: &Env) -> Result<(), Failure> {
    let settings = PushSettings::from_args(args, env)?;
    let reporter: Arc<dyn Reporter> = Arc::from(report::for_terminal(
        settings.quiet,
        if settings.github_actions {
            "::warning::"
        } else {
            "warning: "
        },
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::Source(SourceError::Invalid(format!(
                "cannot start the async runtime: {e}"
            )))
        })?;
    let report = runtime.block_on(push(&settings, reporter))?;
    report.print(settings.json).map_err(|e| {
        Failure::Source(SourceError::Invalid(format!(
            "cannot write the result to stdout: {e}"
        )))
    })?;
    Ok(())
}

/// The push command, from validated settings to the report.
pub async fn push(
    settings: &PushSettings,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport, Failure> {
    let started = Instant::now();
    let image = {
        let path = settings.source.clone();
        let selection = settings.selection.clone();
        let temp_dir = settings.temp_dir.clone();
        tokio::task::spawn_blocking(move || source::open(&path, &selection, &temp_dir))
            .await
            .map_err(|e| SourceError::Invalid(format!("reading the source failed: {e}")))??
    };
    reporter.event(&Event::SourceRead {
        description: &format!(
            "{} ({}){}",
            settings.source.display(),
            image.format,
            image
                .name
                .as_ref()
                .map(|n| format!(", image {n}"))
                .unwrap_or_default()
        ),
    });

    let Target::Registry { url, credentials } = &settings.target;
    let client = Client::new(
        url.clone(),
        Box::new(StaticCredentials(credentials.clone())),
        &settings.client,
    )?;

    let options = PushOptions {
        tags: settings.tags.clone(),
        jobs: settings.jobs,
        compression: settings.compression,
    };
    let mut known_layers = KnownLayers::default();
    if has_uncompressed_layers(&image.root) {
        known_layers
            .learn(
                &client,
                &settings.repository,
                &settings.tags,
                settings.compression,
            )
            .await?;
    }
    let pusher = Pusher {
        client: &client,
        known_layers: &known_layers,
        repository: &settings.repository,
        reporter: Arc::clone(&reporter),
        options: &options,
    };
    let outcome = pusher.push(&image).await?;

    let verifier = Verifier {
        client: &client,
        repository: &settings.repository,
        reporter: Arc::clone(&reporter),
        mode: settings.verify,
    };
    verifier.verify(&outcome.root, &settings.tags).await?;

    let host = client.host();
    let root = outcome.root.document();
    let (config_digest, platforms) = match &outcome.root {
        PushedNode::Manifest(manifest) => (Some(manifest.config.digest.to_string()), Vec::new()),
        PushedNode::Index { children, .. } => (None, platform_reports(children)),
    };
    Ok(PushReport {
        registry: host.clone(),
        repository: settings.repository.clone(),
        digest: root.digest.to_string(),
        media_type: root.media_type.clone(),
        tags: settings.tags.clone(),
        image_uri: format!("{host}/{}:{}", settings.repository, settings.tags[0]),
        image_ref: format!("{host}/{}@{}", settings.repository, root.digest),
        config_digest,
        platforms,
        blobs_uploaded: outcome.stats.blobs_uploaded,
        blobs_skipped: outcome.stats.blobs_skipped,
        bytes_uploaded: outcome.stats.bytes_uploaded,
        verified: settings.verify != crate::verify::VerifyMode::Off,
        verify_mode: settings.verify.name().to_owned(),
        source_format: image.format.to_string(),
        duration_seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        ecr: None,
    })
}

fn platform_reports(children: &[PushedNode]) -> Vec<PlatformReport> {
    children
        .iter()
        .flat_map(|child| match child {
            PushedNode::Manifest(manifest) => vec![PlatformReport {
                platform: manifest
                    .platform
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
                digest: manifest.document.digest.to_string(),
            }],
            PushedNode::Index { children, .. } => platform_reports(children),
        })
        .collect()
}
