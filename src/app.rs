//! Runs a command from parsed arguments to an exit code: the only place that sees the whole
//! chain (settings → source → registry → push → verify → report).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use futures::StreamExt as _;
use std::path::PathBuf;

use crate::cli::{
    CleanupArgs, Cli, Command, EcrCommandArgs, ImagesArgs, LifecycleArgs, LoginArgs, PushArgs,
    StatusArgs, TagArgs,
};
use crate::docker_config::{self, DockerConfigError};
use crate::env::Env;
use crate::github::{self, ActionsFiles};
use crate::ops;
use url::Url;

use crate::aws::{self, Aws, AwsError, EcrCredentials, LoginTarget};
use crate::push::{
    self, PushError, PushOptions, PushedNode, Pusher, predict_digest, uncompressed_diff_ids,
};
use crate::registry::{Client, ClientOptions, RegistryError, StaticCredentials};
use crate::report::{
    self, DebugLog, DestinationReport, EcrReport, Event, PlatformReport, PushReport, Reporter,
    ScanGate,
};
use crate::reuse::{self, KnownLayers, LayerCache};
use crate::settings::{
    EcrCommandSettings, EcrTarget, LoginSettings, PushSettings, Target, UsageError,
};
use crate::source::{self, SourceError, SourceImage};
use crate::verify::{Verifier, VerifyError};

/// Exit codes, as documented in `--help` and README.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    /// The push or its verification failed.
    pub const FAILED: u8 = 1;
    /// Usage error or invalid input.
    pub const INVALID: u8 = 2;
    /// Pushed, but the vulnerability scan found findings at or above `--fail-on-severity`.
    pub const SCAN_GATE: u8 = 3;
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
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    DockerConfig(#[from] DockerConfigError),
    /// The machine itself failed us (writing a file, starting the runtime).
    #[error("{0}")]
    Io(String),
    /// The image was pushed, but its scan found what `--fail-on-severity` forbids.
    #[error("{0}")]
    ScanGate(String),
    /// The work was done in part; the printed report says what is missing (a cleanup that
    /// could not delete some images; a scan or replication wait that failed after the push).
    #[error("{0}")]
    Incomplete(String),
    /// Some destinations failed; the report lists all of them.
    #[error("the push failed at {} of {} destinations: {}", failed.len(), report.destinations.len(), failed.join("; "))]
    Partial {
        report: Box<PushReport>,
        failed: Vec<String>,
        /// Some failed because the input is invalid (found while streaming it): that is the
        /// user's to fix, whatever the other destinations did (exit code 2).
        invalid_input: bool,
    },
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
            Self::Usage(_)
            | Self::Source(_)
            | Self::Partial {
                invalid_input: true,
                ..
            } => exit::INVALID,
            Self::Aws(error) if error.is_usage() => exit::INVALID,
            Self::Registry(_)
            | Self::Verify(_)
            | Self::Aws(_)
            | Self::DockerConfig(_)
            | Self::Io(_)
            | Self::Incomplete(_)
            | Self::Partial { .. } => exit::FAILED,
            Self::ScanGate(_) => exit::SCAN_GATE,
        }
    }
}

pub fn run(cli: Cli, env: &Env) -> ExitCode {
    let github = env.is_github_actions();
    if github {
        // From here on every secret is masked in the job log the moment it is created.
        crate::secret::set_mask_hook(crate::github::add_mask);
    }
    let (result, summary) = match cli.command {
        Command::Push(args) => run_push(&args, env),
        Command::Login(args) => run_login(&args, env),
        Command::Tag(args) => run_tag(&args, env),
        Command::Status(args) => run_status(&args, env),
        Command::Images(args) => run_images(&args, env),
        Command::Cleanup(args) => run_cleanup(&args, env),
        Command::Lifecycle(args) => run_lifecycle(&args, env),
    };
    match result {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(failure) => {
            let message = report::print_error(&failure, github);
            if let Some(path) = summary {
                // Best effort: the error itself was already printed.
                let _ = github::append(&path, &github::failure_summary(&message));
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

/// A command line clap did not parse, or `--help`/`--version`: clap's text, and on GitHub
/// Actions the annotation and failure summary that [`run`] gives every other failure. Exit 0
/// for help and the version, 2 (usage error) otherwise.
pub fn refused_command_line(error: &clap::Error, env: &Env) -> ExitCode {
    let github = env.is_github_actions();
    let text = report::print_usage_error(error, github);
    if !error.use_stderr() {
        return ExitCode::from(exit::SUCCESS);
    }
    if let Some(path) = summary_path(env) {
        // Best effort: the error itself was already printed.
        let _ = github::append(&path, &github::failure_summary(text.trim()));
    }
    ExitCode::from(exit::INVALID)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Io(format!("cannot start the async runtime: {e}")))
}

/// Runs `push`; also returns where a failure summary should go (on GitHub Actions).
fn run_push(args: &PushArgs, env: &Env) -> (Result<(), Failure>, Option<PathBuf>) {
    let settings = match PushSettings::from_args(args, env) {
        Ok(settings) => settings,
        Err(error) => return (Err(error.into()), summary_path(env)),
    };
    let summary = settings.actions.as_ref().and_then(|a| a.summary.clone());
    (push_and_report(&settings), summary)
}

fn summary_path(env: &Env) -> Option<PathBuf> {
    env.is_github_actions()
        .then(|| env.get(crate::env::GITHUB_STEP_SUMMARY).map(PathBuf::from))
        .flatten()
}

fn push_and_report(settings: &PushSettings) -> Result<(), Failure> {
    let reporter: Arc<dyn Reporter> = Arc::from(report::for_terminal_verbose(
        settings.quiet,
        settings.verbose,
        if settings.github_actions {
            "::warning::"
        } else {
            "warning: "
        },
    ));
    if settings.github_actions {
        github::start_group(&format!("ecr-push: push {}", settings.repository));
    }
    let result = runtime().and_then(|runtime| runtime.block_on(push(settings, reporter)));
    if settings.github_actions {
        github::end_group();
    }
    // An image that was pushed has a report, even when the push then failed in part (some
    // destinations; a scan or replication wait afterwards) or the scan gate closed: write it,
    // then fail. A failure of the work outranks the gate's verdict (exit 1, not 3).
    let (report, partial) = match result {
        Ok(report) => {
            let failure = after_push_failure(&report).or_else(|| {
                report
                    .scan_gate
                    .as_ref()
                    .filter(|gate| !gate.passed)
                    .map(|gate| Failure::ScanGate(gate.message()))
            });
            (report, failure)
        }
        Err(Failure::Partial {
            report,
            failed,
            invalid_input,
        }) => {
            let report = *report;
            let failure = Failure::Partial {
                report: Box::new(report.clone()),
                failed,
                invalid_input,
            };
            (report, Some(failure))
        }
        Err(failure) => return Err(failure),
    };
    report
        .print(settings.json)
        .map_err(|e| Failure::Io(format!("cannot write the result to stdout: {e}")))?;
    if let Some(path) = &settings.metadata_file {
        let json = serde_json::to_vec_pretty(&report).unwrap_or_default();
        std::fs::write(path, json).map_err(|e| {
            Failure::Io(format!(
                "cannot write --metadata-file {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(actions) = &settings.actions {
        write_actions_files(
            actions,
            &github::push_outputs(&report),
            &github::push_summary(&report),
        )?;
    }
    partial.map_or(Ok(()), Err)
}

fn write_actions_files(
    actions: &ActionsFiles,
    outputs: &[(&str, String)],
    summary: &str,
) -> Result<(), Failure> {
    if let Some(path) = &actions.output {
        github::write_outputs(path, outputs).map_err(|e| {
            Failure::Io(format!(
                "cannot write the step outputs to {}: {e}",
                path.display()
            ))
        })?;
    }
    if let Some(path) = &actions.summary {
        github::append(path, summary).map_err(|e| {
            Failure::Io(format!(
                "cannot write the step summary to {}: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

/// `login`: ECR credentials into a Docker config, or the password on stdout.
fn run_login(args: &LoginArgs, env: &Env) -> (Result<(), Failure>, Option<PathBuf>) {
    let settings = match LoginSettings::from_args(args, env) {
        Ok(settings) => settings,
        Err(error) => return (Err(error.into()), summary_path(env)),
    };
    let summary = settings.actions.as_ref().and_then(|a| a.summary.clone());
    (login(&settings), summary)
}

fn login(settings: &LoginSettings) -> Result<(), Failure> {
    let (host, credentials) = runtime()?.block_on(async {
        let (aws, session) = aws_session(&settings.target, DebugLog::default()).await?;
        let target = login_target(&settings.target, &session);
        let credentials = aws.login(&session, &target).await?;
        let host = match (&settings.target.registry_override, &target) {
            (Some(url), _) => host_of(url),
            (None, LoginTarget::Public) => aws::public::HOST.to_owned(),
            (None, LoginTarget::Private { registry_id }) => {
                host_of(&session.registry_login(registry_id).await?.endpoint)
            }
        };
        Ok::<_, Failure>((host, credentials))
    })?;
    if settings.password_stdout {
        println!("{}", credentials.password.expose());
        return Ok(());
    }
    for warning in docker_config::store(&settings.docker_config, &host, &credentials)? {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "logged in to {host}; credentials written to {} (valid for 12 hours)",
        settings.docker_config.display()
    );
    println!("{host}");
    if let Some(actions) = &settings.actions {
        let outputs = [
            ("registry", host.clone()),
            (
                "docker-config",
                settings.docker_config.display().to_string(),
            ),
        ];
        write_actions_files(
            actions,
            &outputs,
            &format!("### ecr-push: logged in to `{host}`\n\n"),
        )?;
    }
    Ok(())
}

/// Runs a repository subcommand: settings, then `work` on a runtime, then its result printed,
/// then `verdict` on it (a result can be printed and still be a failure).
fn run_ecr_command<T>(
    command: EcrCommand<'_>,
    env: &Env,
    work: impl AsyncFnOnce(&EcrCommandSettings) -> Result<T, Failure>,
    print: impl FnOnce(&T) -> std::io::Result<()>,
    verdict: impl FnOnce(&T) -> Result<(), Failure>,
) -> (Result<(), Failure>, Option<PathBuf>)
where
    T: serde::Serialize,
{
    let settings = match EcrCommandSettings::from_args(
        command.common,
        command.repository,
        command.create_repository,
        env,
    ) {
        Ok(settings) => settings,
        Err(error) => return (Err(error.into()), summary_path(env)),
    };
    let summary = settings.actions.as_ref().and_then(|a| a.summary.clone());
    let result = runtime()
        .and_then(|runtime| runtime.block_on(work(&settings)))
        .and_then(|value| {
            if settings.json {
                report::print_json(&value)
            } else {
                print(&value)
            }
            .map_err(|e| Failure::Io(format!("cannot write the result to stdout: {e}")))?;
            verdict(&value)
        });
    (result, summary)
}

/// What every repository subcommand shares.
#[derive(Clone, Copy)]
struct EcrCommand<'a> {
    common: &'a EcrCommandArgs,
    repository: &'a str,
    /// Whether a missing repository may be created (only `tag` into another repository).
    create_repository: bool,
}

impl<'a> EcrCommand<'a> {
    fn on(common: &'a EcrCommandArgs, repository: &'a str) -> Self {
        Self {
            common,
            repository,
            create_repository: false,
        }
    }
}

fn run_tag(args: &TagArgs, env: &Env) -> (Result<(), Failure>, Option<PathBuf>) {
    let tags = match crate::settings::resolve_tags(&args.tags, env) {
        Ok(tags) => tags,
        Err(error) => return (Err(error.into()), summary_path(env)),
    };
    let repository = args
        .repository
        .as_deref()
        .unwrap_or_else(|| args.image.split(['@', ':']).next().unwrap_or_default());
    let quiet = args.common.json;
    let command = EcrCommand {
        create_repository: args.create_repository,
        ..EcrCommand::on(&args.common, repository)
    };
    run_ecr_command(
        command,
        env,
        async |settings| {
            let reporter: Arc<dyn Reporter> = Arc::from(report::for_terminal(quiet, "warning: "));
            ops::tag(
                settings,
                &args.image,
                args.repository.as_deref(),
                &tags,
                reporter,
            )
            .await
        },
        |report| {
            eprintln!("tagged {} as {}", report.source, report.tags.join(", "));
            println!("{}", report.image_ref);
            Ok(())
        },
        |_| Ok(()),
    )
}

fn run_status(args: &StatusArgs, env: &Env) -> (Result<(), Failure>, Option<PathBuf>) {
    run_ecr_command(
        EcrCommand::on(&args.common, &args.repository),
        env,
        async |settings| ops::status(settings, &args.repository, args.limit).await,
        |status| {
            if !status.exists {
                println!(
                    "{} does not exist in registry {}",
                    status.repository, status.registry_id
                );
                return Ok(());
            }
            let lifecycle = status
                .lifecycle_policy
                .as_ref()
                .map_or("none".to_owned(), ToString::to_string);
            let rows = vec![
                vec!["repository".into(), status.uri.clone().unwrap_or_default()],
                vec![
                    "tag mutability".into(),
                    status.tag_mutability.clone().unwrap_or_default(),
                ],
                vec![
                    "scan on push".into(),
                    status.scan_on_push.unwrap_or(false).to_string(),
                ],
                vec![
                    "encryption".into(),
                    status.encryption.clone().unwrap_or_default(),
                ],
                vec!["lifecycle policy".into(), lifecycle],
                vec![
                    "images".into(),
                    format!(
                        "{} ({})",
                        status.image_count,
                        report::human_bytes(status.total_size)
                    ),
                ],
            ];
            report::print_table(&["", ""], &rows)?;
            println!();
            report::print_table(&report::IMAGE_HEADERS, &report::image_rows(&status.newest))
        },
        |_| Ok(()),
    )
}

fn run_images(args: &ImagesArgs, env: &Env) -> (Result<(), Failure>, Option<PathBuf>) {
    run_ecr_command(
        EcrCommand::on(&args.common, &args.repository),
        env,
        async |settings| {
            ops::list_images(
                settings,
                &args.repository,
                args.filter,
                args.tag_prefix.as_deref(),
            )
            .await
        },
        |images| report::print_table(&report::IMAGE_HEADERS, &report::image_rows(images)),
        |_| Ok(()),
    )
}

fn run_cleanup(args: &CleanupArgs, env: &Env) -> (Result<(), Failure>, Option<PathBuf>) {
    if args.keep.is_none() && args.older_than.is_none() {
        return (
            Err(UsageError("cleanup needs --keep <n> and/or --older-than <days>".into()).into()),
            summary_path(env),
        );
    }
    let rules = ops::CleanupRules {
        keep: args.keep,
        older_than_days: args.older_than,
        untagged_only: args.untagged,
        dry_run: args.dry_run,
    };
    run_ecr_command(
        EcrCommand::on(&args.common, &args.repository),
        env,
        async |settings| ops::cleanup(settings, &args.repository, &rules).await,
        |report| {
            let verb = if report.dry_run {
                "would delete"
            } else {
                "deleted"
            };
            eprintln!(
                "{verb} {} image(s), {}; {} kept because an image that stays refers to them",
                report.deleted.len(),
                report::human_bytes(report.deleted.iter().map(|i| i.size).sum()),
                report.protected.len()
            );
            for failure in &report.failures {
                eprintln!(
                    "not deleted: {} ({}{})",
                    failure.digest,
                    failure
                        .code
                        .as_ref()
                        .map(|c| format!("{c}: "))
                        .unwrap_or_default(),
                    failure.reason
                );
            }
            report::print_table(&report::IMAGE_HEADERS, &report::image_rows(&report.deleted))
        },
        ops::CleanupReport::verdict,
    )
}

fn run_lifecycle(args: &LifecycleArgs, env: &Env) -> (Result<(), Failure>, Option<PathBuf>) {
    let read = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| UsageError(format!("{} is not valid JSON: {e}", path.display())))?;
        Ok::<_, UsageError>(text)
    };
    let set = match args.set.as_deref().map(read).transpose() {
        Ok(set) => set,
        Err(error) => return (Err(error.into()), summary_path(env)),
    };
    let policy = match args.policy.as_deref().map(read).transpose() {
        Ok(policy) => policy,
        Err(error) => return (Err(error.into()), summary_path(env)),
    };
    let preview = args.preview.then_some(policy.as_deref());
    run_ecr_command(
        EcrCommand::on(&args.common, &args.repository),
        env,
        async |settings| ops::lifecycle(settings, &args.repository, set.as_deref(), preview).await,
        |report| {
            if let Some(expiring) = &report.expiring {
                eprintln!("{} image(s) would expire", expiring.len());
                let rows: Vec<Vec<String>> = expiring
                    .iter()
                    .map(|e| {
                        vec![
                            e.digest.clone(),
                            e.tags.join(","),
                            e.rule_priority.map(|p| p.to_string()).unwrap_or_default(),
                        ]
                    })
                    .collect();
                return report::print_table(&["DIGEST", "TAGS", "RULE"], &rows);
            }
            if report.applied {
                eprintln!("lifecycle policy applied to {}", report.repository);
            }
            match &report.policy {
                Some(policy) => println!(
                    "{}",
                    serde_json::to_string_pretty(policy).unwrap_or_default()
                ),
                None => println!("{} has no lifecycle policy", report.repository),
            }
            Ok(())
        },
        |_| Ok(()),
    )
}

fn host_of(url: &Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

async fn aws_session(
    target: &EcrTarget,
    log: DebugLog,
) -> Result<(Arc<Aws>, aws::Session), Failure> {
    let settings = aws::AwsSettings {
        log,
        ..target.aws.clone()
    };
    let aws = Arc::new(Aws::load(settings).await?);
    let session = aws.session().await?;
    Ok((aws, session))
}

fn login_target(target: &EcrTarget, session: &aws::Session) -> LoginTarget {
    if target.public {
        LoginTarget::Public
    } else {
        LoginTarget::Private {
            registry_id: session.account.clone(),
        }
    }
}

/// The push command, from validated settings to the report. With several destinations the
/// source is read once, every destination is connected to and asked which layers it already
/// has, then what some destination still needs is compressed once and pushed to each in
/// parallel; the report lists every destination, and a failure at some does not stop the
/// others.
pub async fn push(
    settings: &PushSettings,
    reporter: Arc<dyn Reporter>,
) -> Result<PushReport, Failure> {
    let started = Instant::now();
    let image = read_source(settings).await?;
    reporter.event(&Event::SourceRead {
        description: &source_description(settings, &image),
    });
    let wanted = uncompressed_diff_ids(&image.root);
    let mut cache = settings.cache_dir.as_deref().map(LayerCache::open);
    let several = settings.targets.len() > 1;

    // Which layers each destination has is known before anything is compressed.
    let prepared = prepare_all(settings, &wanted, cache.as_ref(), &reporter).await;
    let compressed = if several {
        compress_needed(settings, &image, &wanted, &prepared).await?
    } else {
        // One destination compresses while it uploads, with no temporary file.
        HashMap::new()
    };

    let results: Vec<(String, Result<Pushed, Failure>)> = {
        let (image, compressed) = (&image, &compressed);
        futures::stream::iter(prepared)
            .map(|(label, reporter, prepared)| async move {
                let result = match prepared {
                    Ok(prepared) => {
                        let root = push::with_compressed(&image.root, compressed, &prepared.known);
                        push_prepared(settings, prepared, image, &root, reporter).await
                    }
                    Err(failure) => Err(failure),
                };
                (label, result)
            })
            .buffered(MAX_PARALLEL_DESTINATIONS)
            .collect()
            .await
    };

    if let Some(cache) = &mut cache {
        for (diff_id, blob) in &compressed {
            cache.record(diff_id, &push::PushedBlob::from(blob), settings.compression);
        }
        for (_, result) in &results {
            for (diff_id, blob) in result.iter().flat_map(|pushed| &pushed.compressed_layers) {
                cache.record(diff_id, blob, settings.compression);
            }
        }
        if let Err(error) = cache.save() {
            reporter.event(&Event::Warning {
                message: &format!("could not save the layer cache: {error}"),
            });
        }
    }

    let layers_compressed = compressed.len() as u64
        + results
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|pushed| pushed.report.layers_compressed)
            .sum::<u64>();
    let duration = seconds_since(started);
    let results = results
        .into_iter()
        .map(|(label, result)| (label, result.map(|pushed| pushed.report)))
        .collect();
    let mut report = if several {
        combine(results, duration)?
    } else {
        let mut report = results
            .into_iter()
            .map(|(_, result)| result)
            .next()
            .unwrap_or_else(|| Err(UsageError("no destination to push to".into()).into()))?;
        report.duration_seconds = duration;
        report
    };
    report.layers_compressed = layers_compressed;
    Ok(report)
}

/// A destination connected to (or not), with its name and reporter.
type PreparedDestination = (String, Arc<dyn Reporter>, Result<Prepared, Failure>);

/// Connects to every destination (a few at a time) and finds the layers each already has.
async fn prepare_all(
    settings: &PushSettings,
    wanted: &HashSet<oci_spec::image::Digest>,
    cache: Option<&LayerCache>,
    reporter: &Arc<dyn Reporter>,
) -> Vec<PreparedDestination> {
    let several = settings.targets.len() > 1;
    futures::stream::iter(&settings.targets)
        .map(|target| {
            let label = target.label();
            let reporter: Arc<dyn Reporter> = if several {
                Arc::new(report::Prefixed::new(Arc::clone(reporter), &label))
            } else {
                Arc::clone(reporter)
            };
            async move {
                let result = prepare(settings, target, wanted, cache, several, &reporter).await;
                (label, reporter, result)
            }
        })
        .buffered(MAX_PARALLEL_DESTINATIONS)
        .collect()
        .await
}

/// Compresses, once, the layers at least one connected destination still needs, into
/// temporary files every destination's push then reads.
async fn compress_needed(
    settings: &PushSettings,
    image: &SourceImage,
    wanted: &HashSet<oci_spec::image::Digest>,
    prepared: &[PreparedDestination],
) -> Result<HashMap<oci_spec::image::Digest, source::Blob>, Failure> {
    let needed: HashSet<oci_spec::image::Digest> = wanted
        .iter()
        .filter(|diff_id| {
            prepared
                .iter()
                .any(|(_, _, p)| p.as_ref().is_ok_and(|p| p.known.get(diff_id).is_none()))
        })
        .cloned()
        .collect();
    if needed.is_empty() {
        return Ok(HashMap::new());
    }
    let (root, compression, temp_dir) = (
        image.root.clone(),
        settings.compression,
        settings.temp_dir.clone(),
    );
    Ok(tokio::task::spawn_blocking(move || {
        push::compress_layers(&root, &needed, compression, &temp_dir)
    })
    .await
    .map_err(|e| Failure::Io(format!("compressing the layers failed: {e}")))??)
}

/// `path (format)`, with the image's name and, when one image was picked out of an index, its
/// platform.
fn source_description(settings: &PushSettings, image: &SourceImage) -> String {
    let mut description = format!("{} ({})", settings.source.display(), image.format);
    if let Some(name) = &image.name {
        let _ = write!(description, ", image {name}");
    }
    let narrowed = settings.selection.platform.is_some() || settings.selection.single_platform;
    if narrowed && let source::ImageNode::Manifest(manifest) = &image.root {
        let _ = write!(
            description,
            ", platform {}",
            manifest.platform.as_deref().unwrap_or("unknown")
        );
    }
    description
}

/// Destinations pushed to at the same time.
const MAX_PARALLEL_DESTINATIONS: usize = 3;

fn seconds_since(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// One report for several destinations: the first that succeeded at the top (as for a single
/// destination), every destination in `destinations`.
fn combine(
    results: Vec<(String, Result<PushReport, Failure>)>,
    duration: f64,
) -> Result<PushReport, Failure> {
    let destinations: Vec<DestinationReport> = results
        .iter()
        .map(|(label, result)| match result {
            Ok(report) => DestinationReport::from_report(label, report),
            Err(failure) => DestinationReport::failed(label, failure),
        })
        .collect();
    let results_gates: Vec<ScanGate> = results
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok()?.scan_gate.clone())
        .collect();
    let mut failed = Vec::new();
    let mut first = None;
    let mut first_failure: Option<Failure> = None;
    let mut invalid_input = false;
    for (label, result) in results {
        match result {
            Ok(report) => {
                first.get_or_insert(report);
            }
            Err(failure) => {
                failed.push(format!("{label}: {failure}"));
                // Bad input is the same at every destination and the user's to fix: it is what
                // the run ends with (exit 2), even where another destination failed otherwise
                // first or did not need to read the bad part (a blob it already had).
                let input = failure.exit_code() == exit::INVALID;
                invalid_input |= input;
                if input
                    && first_failure
                        .as_ref()
                        .is_none_or(|f| f.exit_code() != exit::INVALID)
                {
                    first_failure = Some(failure);
                } else {
                    first_failure.get_or_insert(failure);
                }
            }
        }
    }
    let Some(mut report) = first else {
        return Err(first_failure.expect("every destination failed, so one did"));
    };
    // The gate holds if it holds everywhere.
    if let Some(failed_gate) = results_gates.into_iter().find(|gate| !gate.passed) {
        report.scan_gate = Some(failed_gate);
    }
    report.duration_seconds = duration;
    report.destinations = destinations;
    if failed.is_empty() {
        Ok(report)
    } else {
        Err(Failure::Partial {
            report: Box::new(report),
            failed,
            invalid_input,
        })
    }
}

/// A destination connected to, with the layers it already has.
struct Prepared {
    destination: Destination,
    known: KnownLayers,
}

/// The push to one destination, and what it compressed (for the local cache).
struct Pushed {
    report: PushReport,
    compressed_layers: Vec<(oci_spec::image::Digest, push::PushedBlob)>,
}

/// Connects to a destination and finds which of the layers to compress it already has. With
/// several destinations each claim is checked against the registry now, since it decides what
/// is compressed for all of them (a single destination's push checks as it goes).
async fn prepare(
    settings: &PushSettings,
    target: &Target,
    wanted: &HashSet<oci_spec::image::Digest>,
    cache: Option<&LayerCache>,
    several: bool,
    reporter: &Arc<dyn Reporter>,
) -> Result<Prepared, Failure> {
    let log = if settings.verbose {
        DebugLog::to(Arc::clone(reporter))
    } else {
        DebugLog::default()
    };
    let reporter = reporter.as_ref();
    let destination = connect(settings, target, !wanted.is_empty(), reporter, log).await?;
    let mut known = find_known_layers(settings, &destination, wanted, cache, reporter).await;
    if several
        && !known.is_empty()
        && let Err(error) = known
            .confirm(&destination.client, &settings.repository)
            .await
    {
        reporter.event(&Event::Warning {
            message: &format!("could not check which layers the registry has ({error})"),
        });
    }
    Ok(Prepared { destination, known })
}

/// The push to one destination: check immutable tags, push, verify, then what ECR was asked
/// to do with the image (scan, replication). A failure of the latter is recorded in the report
/// of the image that was pushed, not returned.
async fn push_prepared(
    settings: &PushSettings,
    prepared: Prepared,
    image: &SourceImage,
    root: &source::ImageNode,
    reporter: Arc<dyn Reporter>,
) -> Result<Pushed, Failure> {
    let Prepared { destination, known } = prepared;
    let client = &destination.client;
    let predicted = predict_digest(root, &known, settings.compression);
    let tags_to_put = check_immutable_tags(
        client,
        &settings.repository,
        &settings.tags,
        &destination.immutable_tags,
        predicted.as_ref(),
        reporter.as_ref(),
    )
    .await?;

    let options = PushOptions {
        tags: tags_to_put,
        jobs: settings.jobs,
        compression: settings.compression,
    };
    let pusher = Pusher {
        client,
        known_layers: &known,
        repository: &settings.repository,
        reporter: Arc::clone(&reporter),
        options: &options,
    };
    let outcome = pusher.push(root).await?;

    let verifier = Verifier {
        client,
        repository: &settings.repository,
        reporter: Arc::clone(&reporter),
        mode: settings.verify,
    };
    verifier.verify(&outcome.root, &settings.tags).await?;

    let after = match &destination.ecr_api {
        Some(api) => after_push(settings, api, &outcome.root, reporter.as_ref()).await,
        None => AfterPush::default(),
    };
    let scan_gate = settings
        .scan
        .as_ref()
        .and_then(|scan| scan.fail_on)
        .filter(|_| after.scan_error.is_none())
        .map(|threshold| ScanGate::evaluate(threshold, &after.scans));

    let mut report = report_of(
        settings,
        image,
        &outcome,
        client,
        destination.ecr,
        after.scans,
        scan_gate,
    );
    report.scan_error = after.scan_error;
    report.replication = after.replication;
    report.replication_status = after.replication_status;
    report.replication_error = after.replication_error;
    Ok(Pushed {
        report,
        compressed_layers: outcome.compressed_layers,
    })
}

/// What ECR did with a pushed image, as far as the user asked to wait for it.
#[derive(Default)]
struct AfterPush {
    scans: Vec<aws::scan::ScanReport>,
    scan_error: Option<String>,
    replication: Vec<aws::images::Replica>,
    replication_status: Option<String>,
    replication_error: Option<String>,
}

/// ECR's work on a pushed image that the user asked to wait for: scans, replication. Both are
/// waited for even when the other failed; failures are kept as messages for the report.
async fn after_push(
    settings: &PushSettings,
    api: &EcrApi,
    root: &PushedNode,
    reporter: &dyn Reporter,
) -> AfterPush {
    let mut after = AfterPush::default();
    if let Some(scan) = &settings.scan {
        let (scans, error) = run_scans(api, &settings.repository, root, scan, reporter).await;
        after.scans = scans;
        after.scan_error = error.map(|e| e.to_string());
    }
    if let Some(timeout) = settings.replication_timeout {
        let digest = &root.document().digest;
        reporter.event(&Event::Note {
            message: &format!("waiting for ECR to replicate {digest}"),
        });
        match aws::images::wait_for_replication(
            &api.ecr,
            &api.registry_id,
            &settings.repository,
            digest.as_ref(),
            timeout,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(aws::images::Replication::NotConfigured) => {
                reporter.event(&Event::Note {
                    message: &format!(
                        "registry {} has no replication rule for {}: nothing replicates, nothing to wait for",
                        api.registry_id, settings.repository
                    ),
                });
                after.replication_status = Some("not_configured".to_owned());
            }
            Ok(aws::images::Replication::Complete(replicas)) => {
                reporter.event(&Event::Note {
                    message: &format!(
                        "replicated to {}",
                        replicas
                            .iter()
                            .map(|r| format!("{} ({})", r.region, r.registry_id))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
                after.replication = replicas;
                after.replication_status = Some("complete".to_owned());
            }
            Err(error) => {
                after.replication_status = Some("failed".to_owned());
                after.replication_error = Some(error.to_string());
            }
        }
    }
    after
}

/// The failure of a push whose image was pushed and verified, but whose scan or replication
/// wait failed (at any destination): exit code 1 after the report was written.
fn after_push_failure(report: &PushReport) -> Option<Failure> {
    let mut failures: Vec<String> = Vec::new();
    let mut add = |label: Option<&str>, what: &str, error: &Option<String>| {
        if let Some(error) = error {
            let at = label.map(|l| format!(" at {l}")).unwrap_or_default();
            failures.push(format!("{what}{at} failed: {error}"));
        }
    };
    if report.destinations.is_empty() {
        add(None, "the scan", &report.scan_error);
        add(None, "replication", &report.replication_error);
    } else {
        for destination in &report.destinations {
            let label = Some(destination.destination.as_str());
            add(label, "the scan", &destination.scan_error);
            add(label, "replication", &destination.replication_error);
        }
    }
    (!failures.is_empty()).then(|| {
        Failure::Incomplete(format!(
            "the image was pushed and verified, but waiting for {}",
            failures.join("; ")
        ))
    })
}

/// The report of one destination.
fn report_of(
    settings: &PushSettings,
    image: &SourceImage,
    outcome: &push::PushOutcome,
    client: &Client,
    ecr: Option<EcrReport>,
    scans: Vec<aws::scan::ScanReport>,
    scan_gate: Option<ScanGate>,
) -> PushReport {
    let host = client.host();
    let root = outcome.root.document();
    let (config_digest, platforms) = match &outcome.root {
        PushedNode::Manifest(manifest) => (Some(manifest.config.digest.to_string()), Vec::new()),
        PushedNode::Index { children, .. } => (None, platform_reports(children)),
    };
    PushReport {
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
        layers_compressed: outcome.stats.layers_compressed,
        verified: settings.verify != crate::verify::VerifyMode::Off,
        verify_mode: settings.verify.name().to_owned(),
        source_format: image.format.to_string(),
        duration_seconds: 0.0,
        ecr,
        scan_findings: scan_totals(&scans),
        scans,
        scan_gate,
        scan_error: None,
        replication: Vec::new(),
        replication_status: None,
        replication_error: None,
        destinations: Vec::new(),
    }
}

/// Waits for the scan of every image manifest pushed (each platform of an index; attestation
/// manifests are not images and are not scanned). Stops at the first scan that fails or times
/// out, keeping the reports of those before it.
async fn run_scans(
    api: &EcrApi,
    repository: &str,
    root: &PushedNode,
    settings: &aws::scan::ScanSettings,
    reporter: &dyn Reporter,
) -> (Vec<aws::scan::ScanReport>, Option<AwsError>) {
    let mut images = Vec::new();
    collect_images(root, &mut images);
    let mut reports = Vec::with_capacity(images.len());
    for (digest, platform) in images {
        reporter.event(&Event::Note {
            message: &format!("waiting for the vulnerability scan of {repository}@{digest}"),
        });
        let mut report = match aws::scan::scan_image(
            &api.ecr,
            &api.registry_id,
            repository,
            &digest,
            api.scan_on_push,
            settings,
        )
        .await
        {
            Ok(report) => report,
            Err(error) => return (reports, Some(error)),
        };
        report.platform = platform;
        reporter.event(&Event::Note {
            message: &format!(
                "scan {}: {}",
                report.status,
                if report.counts.is_empty() {
                    "no findings".to_owned()
                } else {
                    report
                        .counts
                        .iter()
                        .map(|(s, n)| format!("{n} {s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        });
        reports.push(report);
    }
    (reports, None)
}

fn collect_images(node: &PushedNode, images: &mut Vec<(String, Option<String>)>) {
    match node {
        PushedNode::Manifest(manifest) => {
            if !manifest
                .platform
                .as_deref()
                .is_some_and(|p| p.starts_with("unknown"))
            {
                images.push((
                    manifest.document.digest.to_string(),
                    manifest.platform.clone(),
                ));
            }
        }
        PushedNode::Index { children, .. } => {
            for child in children {
                collect_images(child, images);
            }
        }
    }
}

fn scan_totals(scans: &[aws::scan::ScanReport]) -> std::collections::BTreeMap<String, u64> {
    let mut totals = std::collections::BTreeMap::new();
    for scan in scans {
        for (severity, count) in &scan.counts {
            *totals.entry(severity.clone()).or_default() += count;
        }
    }
    totals
}

async fn read_source(settings: &PushSettings) -> Result<SourceImage, Failure> {
    let path = settings.source.clone();
    let selection = settings.selection.clone();
    let temp_dir = settings.temp_dir.clone();
    let compression = settings.compression;
    let image = tokio::task::spawn_blocking(move || {
        source::open(&path, &selection, &temp_dir, compression)
    })
    .await
    .map_err(|e| SourceError::Invalid(format!("reading the source failed: {e}")))??;
    Ok(image)
}

/// The registry to push to, authenticated.
struct Destination {
    client: Client,
    ecr: Option<EcrReport>,
    /// Tags that cannot move once they exist (ECR immutable tags).
    immutable_tags: Vec<String>,
    /// The newest images of the repository (ECR, by push time), digests.
    recent_images: Vec<String>,
    /// The ECR API of a private registry, for the scan gate and replication.
    ecr_api: Option<EcrApi>,
}

struct EcrApi {
    ecr: aws_sdk_ecr::Client,
    registry_id: String,
    scan_on_push: bool,
}

/// How many of the newest images are looked at for reusable layers.
const RECENT_IMAGES: usize = 3;

/// `tags/list` pages read when looking for reusable layers (ECR's largest page is 1000 tags):
/// bounded, so a repository with a huge tag history costs seconds, not minutes.
const TAG_PAGE_SIZE: usize = 1000;
const TAG_PAGES: usize = 10;

/// `diff_id → compressed blob` from the local cache and from likely images in the repository
/// (see `reuse`). Best effort: a registry that refuses these reads only costs compression time.
async fn find_known_layers(
    settings: &PushSettings,
    destination: &Destination,
    wanted: &HashSet<oci_spec::image::Digest>,
    cache: Option<&LayerCache>,
    reporter: &dyn Reporter,
) -> KnownLayers {
    let mut known = KnownLayers::default();
    if wanted.is_empty() {
        return known;
    }
    if let Some(cache) = cache {
        cache.fill(&mut known, wanted, settings.compression);
    }
    let repository = &settings.repository;
    let client = &destination.client;
    let references: Vec<String> = settings
        .tags
        .iter()
        .chain(&settings.cache_from)
        .chain(&destination.recent_images)
        .cloned()
        .collect();
    let mut result = known
        .learn(
            client,
            repository,
            &references,
            wanted,
            settings.compression,
        )
        .await;
    if result.is_ok() && !known.knows_all(wanted) {
        result = match client.list_tags(repository, TAG_PAGE_SIZE, TAG_PAGES).await {
            Ok(tags) => {
                let likely = reuse::likely_tags(tags, &references, reuse::TAG_LIST_LOOKUPS);
                known
                    .learn(client, repository, &likely, wanted, settings.compression)
                    .await
            }
            Err(error) => Err(error),
        };
    }
    if let Err(error) = result {
        reporter.event(&Event::Warning {
            message: &format!("looking for layers to reuse failed ({error}); compressing them all"),
        });
    }
    known
}

async fn connect(
    settings: &PushSettings,
    target: &Target,
    wants_reuse: bool,
    reporter: &dyn Reporter,
    log: DebugLog,
) -> Result<Destination, Failure> {
    let options = ClientOptions {
        log: log.clone(),
        ..settings.client.clone()
    };
    match target {
        Target::Registry { url, credentials } => Ok(Destination {
            client: Client::new(
                url.clone(),
                Box::new(StaticCredentials(credentials.clone())),
                &options,
            )?,
            ecr: None,
            immutable_tags: Vec::new(),
            recent_images: Vec::new(),
            ecr_api: None,
        }),
        Target::Ecr(target) => connect_ecr(settings, target, wants_reuse, reporter, &options).await,
    }
}

/// ECR: credentials → repository (created before any upload) → authorization token.
async fn connect_ecr(
    settings: &PushSettings,
    target: &EcrTarget,
    wants_reuse: bool,
    reporter: &dyn Reporter,
    options: &ClientOptions,
) -> Result<Destination, Failure> {
    let repository = &settings.repository;
    let (aws, session) = aws_session(target, options.log.clone()).await?;
    if target.public {
        let api = aws.public_client(&session);
        let created =
            aws::public::ensure_repository(&api, repository, target.repository.create).await?;
        let credentials = aws::public::login(&api).await?;
        let url = target.registry_override.clone().unwrap_or_else(|| {
            Url::parse(&format!("https://{}", aws::public::HOST)).expect("a valid URL")
        });
        let provider = EcrCredentials::new(Arc::clone(&aws), LoginTarget::Public, credentials);
        return Ok(Destination {
            client: Client::new(url, Box::new(provider), options)?,
            ecr: Some(EcrReport {
                registry_id: aws::public::HOST.to_owned(),
                region: aws::public::REGION.to_owned(),
                repository_uri: format!("{}/{repository}", aws::public::HOST),
                repository_created: created,
            }),
            immutable_tags: Vec::new(),
            recent_images: Vec::new(),
            ecr_api: None,
        });
    }

    let registry_id = session.account.clone();
    let state =
        aws::repository::ensure(&session.ecr, &registry_id, repository, &target.repository).await?;
    for difference in &state.drift {
        reporter.event(&Event::Warning {
            message: &format!(
                "repository {repository} exists with other settings than asked: {difference}; nothing was changed"
            ),
        });
    }
    for skipped in &state.unchecked {
        reporter.event(&Event::Warning { message: skipped });
    }
    let login = session.registry_login(&registry_id).await?;
    let url = target.registry_override.clone().unwrap_or(login.endpoint);
    let provider = EcrCredentials::new(
        Arc::clone(&aws),
        LoginTarget::Private {
            registry_id: registry_id.clone(),
        },
        login.credentials,
    );
    let client = Client::new(url, Box::new(provider), options)?;
    let repository_uri = if state.uri.is_empty() {
        format!("{}/{repository}", client.host())
    } else {
        state.uri.clone()
    };
    let recent_images = if wants_reuse && !state.created {
        aws::repository::recent_images(&session.ecr, &registry_id, repository, RECENT_IMAGES)
            .await
            .unwrap_or_else(|error| {
                reporter.event(&Event::Warning {
                    message: &format!("could not list recent images for layer reuse: {error}"),
                });
                Vec::new()
            })
    } else {
        Vec::new()
    };
    let ecr_api = Some(EcrApi {
        ecr: session.ecr.clone(),
        registry_id: registry_id.clone(),
        scan_on_push: state.scan_on_push,
    });
    Ok(Destination {
        ecr_api,
        recent_images,
        immutable_tags: settings
            .tags
            .iter()
            .filter(|t| state.is_immutable(t))
            .cloned()
            .collect(),
        client,
        ecr: Some(EcrReport {
            registry_id,
            region: aws.region().to_owned(),
            repository_uri,
            repository_created: state.created,
        }),
    })
}

/// Before anything is uploaded: an immutable tag that already exists must point at this very
/// image (an idempotent re-run: the tag is not put again), otherwise the push stops here.
/// Returns the tags to put.
pub(crate) async fn check_immutable_tags(
    client: &Client,
    repository: &str,
    tags: &[String],
    immutable: &[String],
    predicted: Option<&oci_spec::image::Digest>,
    reporter: &dyn Reporter,
) -> Result<Vec<String>, Failure> {
    let mut to_put = Vec::with_capacity(tags.len());
    for tag in tags {
        if !immutable.contains(tag) {
            to_put.push(tag.clone());
            continue;
        }
        let Some((bytes, _)) = client.get_manifest(repository, tag).await? else {
            to_put.push(tag.clone());
            continue;
        };
        let existing = crate::blob::sha256_digest(&bytes);
        if predicted == Some(&existing) {
            reporter.event(&Event::Note {
                message: &format!("immutable tag {tag} already points to {existing}, this image; not putting it again"),
            });
        } else {
            return Err(AwsError::TagConflict {
                repository: repository.to_owned(),
                tag: tag.clone(),
                existing: existing.to_string(),
                pushing: predicted.map_or_else(
                    || "a different image (its layers are not in the repository)".to_owned(),
                    ToString::to_string,
                ),
            }
            .into());
        }
    }
    Ok(to_put)
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
