//! Everything the user sees while and after a push: progress (bars on a terminal, one line per
//! event otherwise, nothing with `--quiet`) and the final report (text or JSON).
//!
//! Library code never prints: it sends [`Event`]s to a [`Reporter`]. Human text goes to stderr;
//! stdout carries only the result (`repository@digest`, or the JSON report).
//!
//! `--verbose` adds debug lines ([`Event::Debug`]): every registry request (method, path,
//! status, attempt), every authentication step, every AWS call. Library code sends them through
//! a [`DebugLog`], which costs nothing when verbose output is off. They are built from
//! operations, paths and statuses only, never from headers, query strings or bodies, so no
//! credential can reach them.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Something that happened during a push.
#[derive(Debug)]
pub enum Event<'a> {
    /// The source was read.
    SourceRead {
        description: &'a str,
    },
    /// A blob transfer begins. `id` identifies it in later events.
    BlobStarted {
        id: &'a str,
        what: &'a str,
        size: Option<u64>,
    },
    /// `bytes` more bytes of the blob were sent.
    BlobProgress {
        id: &'a str,
        bytes: u64,
    },
    /// The blob is in the registry: uploaded (`uploaded` bytes) or already there.
    BlobDone {
        id: &'a str,
        digest: &'a str,
        uploaded: Option<u64>,
    },
    /// A manifest or index was put under a reference.
    ManifestPut {
        reference: &'a str,
        digest: &'a str,
    },
    /// A step of the post-push verification passed.
    Verified {
        what: &'a str,
    },
    /// Something worth knowing that is not a problem.
    Note {
        message: &'a str,
    },
    Warning {
        message: &'a str,
    },
    /// A step begins (used to group log output on CI).
    Step {
        name: &'a str,
    },
    /// A detail for `--verbose` (requests, auth steps, AWS calls); shown only when asked for.
    Debug {
        message: &'a str,
    },
}

pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// Where library code sends debug lines: to a reporter when `--verbose` is on, nowhere
/// otherwise (and then the line is not even formatted).
#[derive(Clone, Default)]
pub struct DebugLog(Option<std::sync::Arc<dyn Reporter>>);

impl DebugLog {
    /// Debug lines go to `reporter`.
    pub fn to(reporter: std::sync::Arc<dyn Reporter>) -> Self {
        Self(Some(reporter))
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Sends the line `message` builds, if anyone listens.
    pub fn line(&self, message: impl FnOnce() -> String) {
        if let Some(reporter) = &self.0 {
            reporter.event(&Event::Debug {
                message: &message(),
            });
        }
    }
}

impl std::fmt::Debug for DebugLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.enabled() {
            "DebugLog(on)"
        } else {
            "DebugLog(off)"
        })
    }
}

/// Reports nothing (`--quiet`).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, event: &Event<'_>) {
        // Warnings still matter with --quiet.
        if let Event::Warning { message } = event {
            eprintln!("warning: {message}");
        }
    }
}

/// One line per event on stderr, for CI logs (no carriage returns, no colours).
pub struct Lines {
    /// Prefix for warnings; `::warning::` on GitHub Actions makes them annotations.
    pub warning_prefix: &'static str,
    /// Show [`Event::Debug`] lines (`--verbose`).
    pub verbose: bool,
}

impl Reporter for Lines {
    fn event(&self, event: &Event<'_>) {
        let line = match event {
            Event::SourceRead { description } => format!("read {description}"),
            Event::BlobStarted { what, size, .. } => match size {
                Some(size) => format!("uploading {what} ({})", human_bytes(*size)),
                None => format!("uploading {what}"),
            },
            Event::Debug { message } if self.verbose => format!("debug: {message}"),
            Event::BlobProgress { .. } | Event::Step { .. } | Event::Debug { .. } => return,
            Event::BlobDone {
                digest, uploaded, ..
            } => match uploaded {
                Some(bytes) => format!("pushed {digest} ({})", human_bytes(*bytes)),
                None => format!("exists {digest}"),
            },
            Event::ManifestPut { reference, digest } => format!("put {reference} -> {digest}"),
            Event::Verified { what } => format!("verified {what}"),
            Event::Note { message } => (*message).to_owned(),
            Event::Warning { message } => format!("{}{message}", self.warning_prefix),
        };
        eprintln!("{line}");
    }
}

/// Progress bars on an interactive terminal.
pub struct Bars {
    multi: MultiProgress,
    /// The bars of the blobs in flight, by event id.
    active: Mutex<HashMap<String, ProgressBar>>,
    verbose: bool,
}

impl Bars {
    pub fn new() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            active: Mutex::new(HashMap::new()),
            verbose: false,
        }
    }

    /// Also show [`Event::Debug`] lines (`--verbose`).
    #[must_use]
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for Bars {
    fn event(&self, event: &Event<'_>) {
        let mut bars = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            Event::BlobStarted { id, what, size } => {
                let bar = match size {
                    Some(size) => ProgressBar::new(*size).with_style(
                        ProgressStyle::with_template(
                            "{msg:>24} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    ),
                    None => ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template(
                            "{msg:>24} {spinner} {bytes:>10} {bytes_per_sec}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    ),
                };
                let bar = self.multi.add(bar.with_message((*what).to_owned()));
                bar.enable_steady_tick(Duration::from_millis(200));
                bars.insert((*id).to_owned(), bar);
            }
            Event::BlobProgress { id, bytes } => {
                if let Some(bar) = bars.get(*id) {
                    bar.inc(*bytes);
                }
            }
            Event::BlobDone {
                id,
                digest,
                uploaded,
            } => {
                let short = short_digest(digest);
                let text = match uploaded {
                    Some(bytes) => format!("pushed {short} ({})", human_bytes(*bytes)),
                    None => format!("exists {short}"),
                };
                match bars.remove(*id) {
                    Some(bar) => bar.finish_with_message(text),
                    None => {
                        let _ = self.multi.println(text);
                    }
                }
            }
            Event::SourceRead { description } => {
                let _ = self.multi.println(format!("read {description}"));
            }
            Event::ManifestPut { reference, digest } => {
                let _ = self
                    .multi
                    .println(format!("put {reference} -> {}", short_digest(digest)));
            }
            Event::Verified { what } => {
                let _ = self.multi.println(format!("verified {what}"));
            }
            Event::Note { message } => {
                let _ = self.multi.println(*message);
            }
            Event::Warning { message } => {
                let _ = self.multi.println(format!("warning: {message}"));
            }
            Event::Debug { message } => {
                if self.verbose {
                    let _ = self.multi.println(format!("debug: {message}"));
                }
            }
            Event::Step { .. } => {}
        }
    }
}

/// The reporter for this run: nothing, bars on a terminal, lines elsewhere.
pub fn for_terminal(quiet: bool, warning_prefix: &'static str) -> Box<dyn Reporter> {
    for_terminal_verbose(quiet, false, warning_prefix)
}

/// [`for_terminal`], with debug lines when `verbose` (`--verbose`).
pub fn for_terminal_verbose(
    quiet: bool,
    verbose: bool,
    warning_prefix: &'static str,
) -> Box<dyn Reporter> {
    if quiet {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bars::new().verbose(verbose))
    } else {
        Box::new(Lines {
            warning_prefix,
            verbose,
        })
    }
}

fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)] // a display value
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The final report of a push: printed with `--json`, written to `$GITHUB_OUTPUT` and the
/// metadata file. Field names are an interface: add, never rename.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    pub registry: String,
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub tags: Vec<String>,
    pub image_uri: String,
    pub image_ref: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformReport>,
    pub blobs_uploaded: u64,
    pub blobs_skipped: u64,
    pub bytes_uploaded: u64,
    /// Layers compressed by this run (uncompressed sources only), over every destination: a
    /// layer compressed once for several destinations counts once, a layer the registry (or
    /// `--cache-dir`) already had counts not at all.
    pub layers_compressed: u64,
    pub verified: bool,
    pub verify_mode: String,
    pub source_format: String,
    pub duration_seconds: f64,
    #[serde(flatten)]
    pub ecr: Option<EcrReport>,
    /// Findings per severity over every scanned image (`--scan wait`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub scan_findings: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scans: Vec<crate::aws::scan::ScanReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_gate: Option<ScanGate>,
    /// Why waiting for the scan failed (timeout, scan error); the image was pushed all the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_error: Option<String>,
    /// Where ECR replicated the image (`--wait-replication`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<crate::aws::images::Replica>,
    /// `--wait-replication`: `complete`, `not_configured` (no replication rule covers the
    /// repository) or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_status: Option<String>,
    /// Why waiting for replication failed; the image was pushed all the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_error: Option<String>,
    /// Every destination, when there are several (the fields above are the first one's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationReport>,
}

/// The verdict of `--fail-on-severity`.
#[derive(Clone, Debug, Serialize)]
pub struct ScanGate {
    pub threshold: crate::aws::scan::Severity,
    /// Findings at or above the threshold (accepted risks left out).
    pub findings: u64,
    pub passed: bool,
}

impl ScanGate {
    pub fn evaluate(
        threshold: crate::aws::scan::Severity,
        scans: &[crate::aws::scan::ScanReport],
    ) -> Self {
        let findings = scans.iter().map(|scan| scan.at_or_above(threshold)).sum();
        Self {
            threshold,
            findings,
            passed: findings == 0,
        }
    }

    pub fn message(&self) -> String {
        format!(
            "the vulnerability scan found {} finding(s) at or above {}; fix them, or accept a risk with --ignore-cve",
            self.findings,
            self.threshold.name()
        )
    }
}

/// One destination of a push to several.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationReport {
    pub destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub verified: bool,
    #[serde(flatten)]
    pub ecr: Option<EcrReport>,
    /// Why the push to this destination failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Pushed, but waiting for its scan failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_error: Option<String>,
    /// Pushed, but waiting for its replication failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_error: Option<String>,
}

impl DestinationReport {
    pub fn from_report(destination: &str, report: &PushReport) -> Self {
        Self {
            destination: destination.to_owned(),
            registry: Some(report.registry.clone()),
            image_ref: Some(report.image_ref.clone()),
            digest: Some(report.digest.clone()),
            verified: report.verified,
            ecr: report.ecr.clone(),
            error: None,
            scan_error: report.scan_error.clone(),
            replication_error: report.replication_error.clone(),
        }
    }

    pub fn failed(destination: &str, error: &dyn std::error::Error) -> Self {
        Self {
            destination: destination.to_owned(),
            registry: None,
            image_ref: None,
            digest: None,
            verified: false,
            ecr: None,
            error: Some(error.to_string()),
            scan_error: None,
            replication_error: None,
        }
    }
}

/// Prefixes every event of one destination with its name, when several are pushed at once.
pub struct Prefixed {
    inner: std::sync::Arc<dyn Reporter>,
    prefix: String,
}

impl Prefixed {
    pub fn new(inner: std::sync::Arc<dyn Reporter>, label: &str) -> Self {
        Self {
            inner,
            prefix: format!("[{label}] "),
        }
    }
}

impl Reporter for Prefixed {
    fn event(&self, event: &Event<'_>) {
        let p = |text: &str| format!("{}{text}", self.prefix);
        match event {
            Event::SourceRead { description } => self.inner.event(&Event::SourceRead {
                description: &p(description),
            }),
            Event::BlobStarted { id, what, size } => self.inner.event(&Event::BlobStarted {
                id: &p(id),
                what: &p(what),
                size: *size,
            }),
            Event::BlobProgress { id, bytes } => self.inner.event(&Event::BlobProgress {
                id: &p(id),
                bytes: *bytes,
            }),
            Event::BlobDone {
                id,
                digest,
                uploaded,
            } => self.inner.event(&Event::BlobDone {
                id: &p(id),
                digest: &p(digest),
                uploaded: *uploaded,
            }),
            Event::ManifestPut { reference, digest } => self.inner.event(&Event::ManifestPut {
                reference: &p(reference),
                digest,
            }),
            Event::Verified { what } => self.inner.event(&Event::Verified { what: &p(what) }),
            Event::Note { message } => self.inner.event(&Event::Note {
                message: &p(message),
            }),
            Event::Warning { message } => self.inner.event(&Event::Warning {
                message: &p(message),
            }),
            Event::Step { name } => self.inner.event(&Event::Step { name: &p(name) }),
            Event::Debug { message } => self.inner.event(&Event::Debug {
                message: &p(message),
            }),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PlatformReport {
    pub platform: String,
    pub digest: String,
}

/// ECR-specific fields, present in ECR mode.
#[derive(Clone, Debug, Serialize)]
pub struct EcrReport {
    pub registry_id: String,
    pub region: String,
    pub repository_uri: String,
    pub repository_created: bool,
}

impl PushReport {
    /// Writes the result to stdout: the JSON report, or `host/repository@digest` as the last
    /// line (what scripts capture).
    pub fn print(&self, json: bool) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if json {
            serde_json::to_writer_pretty(&mut stdout, self)?;
            writeln!(stdout)?;
        } else if self.destinations.is_empty() {
            writeln!(stdout, "{}", self.image_ref)?;
        } else {
            for reference in self
                .destinations
                .iter()
                .filter_map(|d| d.image_ref.as_ref())
            {
                writeln!(stdout, "{reference}")?;
            }
        }
        stdout.flush()
    }
}

/// Prints a failure to stderr with its causes; on GitHub Actions also as an `::error::`
/// annotation (one line, as the runner requires).
pub fn print_error(error: &dyn std::error::Error, github_actions: bool) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    if github_actions {
        eprintln!(
            "::error title=ecr-push failed::{}",
            crate::github::escape_data(&message)
        );
    }
    eprintln!("error: {message}");
    message
}

/// Prints clap's answer to a command line it did not run: help or the version on stdout, or
/// what is wrong with the arguments on stderr, then on GitHub Actions also an `::error::`
/// annotation (an input of the action is an `ECR_PUSH_*` variable that clap reads). Returns
/// the error's text for a step summary.
pub fn print_usage_error(error: &clap::Error, github_actions: bool) -> String {
    let text = error.render().to_string();
    // Styled for a terminal, plain otherwise, on the stream clap chooses.
    let _ = error.print();
    if error.use_stderr() && github_actions {
        // What is wrong and any tip, without the usage synopsis that follows.
        let message = text.split("\n\nUsage:").next().unwrap_or(&text).trim();
        let message = message.strip_prefix("error: ").unwrap_or(message);
        eprintln!(
            "::error title=ecr-push failed::{}",
            crate::github::escape_data(message)
        );
    }
    text
}

/// Prints `value` as pretty JSON on stdout (the `--json` of every subcommand).
pub fn print_json(value: &impl Serialize) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)?;
    writeln!(stdout)?;
    stdout.flush()
}

/// Prints rows as a plain aligned table on stdout.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut stdout = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(stdout, "{}", line(headers.to_vec()))?;
    for row in rows {
        writeln!(stdout, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    stdout.flush()
}

/// Table rows for a list of images.
pub fn image_rows(images: &[crate::aws::images::ImageInfo]) -> Vec<Vec<String>> {
    images
        .iter()
        .map(|image| {
            vec![
                image.digest.get(..19).unwrap_or(&image.digest).to_owned(),
                if image.tags.is_empty() {
                    "<untagged>".to_owned()
                } else {
                    image.tags.join(",")
                },
                human_bytes(image.size),
                crate::clock::utc_minute(whole_seconds(image.pushed_at)),
                image.scan_status.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to u64's range first
fn whole_seconds(seconds: f64) -> u64 {
    seconds.clamp(0.0, 1e15) as u64
}

pub const IMAGE_HEADERS: [&str; 5] = ["DIGEST", "TAGS", "SIZE", "PUSHED (UTC)", "SCAN"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
