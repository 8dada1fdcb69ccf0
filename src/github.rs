//! GitHub Actions glue: workflow commands (`::add-mask::`, `::group::`, `::error::`), step
//! outputs (`$GITHUB_OUTPUT`) and the step summary (`$GITHUB_STEP_SUMMARY`).
//!
//! Workflow commands go to stderr: the runner parses commands on both streams of a `run:` step
//! (its script handler feeds stdout and stderr to the same command processor), and stdout stays
//! reserved for the result (`repository@digest` or the `--json` report).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{PushReport, human_bytes};

/// Where the runner wants outputs and the summary (absent outside Actions).
#[derive(Clone, Debug, Default)]
pub struct ActionsFiles {
    pub output: Option<PathBuf>,
    pub summary: Option<PathBuf>,
}

/// Tells the runner to hide `value` in every log line from now on.
pub fn add_mask(value: &str) {
    // A multi-line secret is masked line by line, as the runner itself does.
    for line in value.lines().filter(|line| !line.trim().is_empty()) {
        eprintln!("::add-mask::{}", escape_data(line));
    }
}

/// Escaping for the data part of a workflow command.
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Folds the following log lines under `title`.
pub fn start_group(title: &str) {
    eprintln!("::group::{}", escape_data(title));
}

pub fn end_group() {
    eprintln!("::endgroup::");
}

/// The step outputs of a push, as named in `action.yml`.
pub fn push_outputs(report: &PushReport) -> Vec<(&'static str, String)> {
    let mut outputs = vec![
        ("registry", report.registry.clone()),
        (
            "repository-uri",
            report.ecr.as_ref().map_or_else(
                || format!("{}/{}", report.registry, report.repository),
                |e| e.repository_uri.clone(),
            ),
        ),
        ("image-uri", report.image_uri.clone()),
        ("image-ref", report.image_ref.clone()),
        ("digest", report.digest.clone()),
        ("tags", report.tags.join("\n")),
        (
            "config-digest",
            report.config_digest.clone().unwrap_or_default(),
        ),
        (
            "metadata",
            serde_json::to_string(report).unwrap_or_default(),
        ),
    ];
    if let Some(ecr) = &report.ecr {
        outputs.push(("registry-id", ecr.registry_id.clone()));
        outputs.push(("repository-created", ecr.repository_created.to_string()));
    }
    if !report.scans.is_empty() {
        outputs.push((
            "scan-findings",
            serde_json::to_string(&report.scan_findings).unwrap_or_default(),
        ));
    }
    if !report.destinations.is_empty() {
        outputs.push((
            "destinations",
            serde_json::to_string(&report.destinations).unwrap_or_default(),
        ));
    }
    outputs
}

/// Appends `name=value` pairs to the `$GITHUB_OUTPUT` file, each in the heredoc form with a
/// delimiter that does not occur in its value (so a value cannot inject other outputs).
pub fn write_outputs(path: &Path, outputs: &[(&str, String)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (name, value) in outputs {
        let delimiter = loop {
            let candidate = format!(
                "ghadelimiter_{:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            );
            if !value.contains(&candidate) {
                break candidate;
            }
        };
        let _ = write!(text, "{name}<<{delimiter}\n{value}\n{delimiter}\n");
    }
    append(path, &text)
}

/// Appends markdown to the step summary.
pub fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// The step summary of a successful push.
pub fn push_summary(report: &PushReport) -> String {
    let mut md = format!(
        "### ecr-push: pushed `{}`\n\n| | |\n|---|---|\n",
        report.repository
    );
    let mut row = |key: &str, value: String| {
        let _ = writeln!(md, "| {key} | {} |", value.replace('|', "\\|"));
    };
    row("Image", format!("`{}`", report.image_ref));
    row(
        "Tags",
        report
            .tags
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row("Digest", format!("`{}`", report.digest));
    if let Some(config) = &report.config_digest {
        row("Config", format!("`{config}`"));
    }
    if !report.platforms.is_empty() {
        row(
            "Platforms",
            report
                .platforms
                .iter()
                .map(|p| format!("{} (`{}`)", p.platform, short(&p.digest)))
                .collect::<Vec<_>>()
                .join("<br>"),
        );
    }
    row(
        "Blobs",
        format!(
            "{} uploaded ({}), {} already in the registry",
            report.blobs_uploaded,
            human_bytes(report.bytes_uploaded),
            report.blobs_skipped
        ),
    );
    row(
        "Verification",
        if report.verified {
            format!("{}: passed", report.verify_mode)
        } else {
            "off".to_owned()
        },
    );
    if let Some(ecr) = &report.ecr {
        row(
            "Repository",
            format!(
                "`{}`{}",
                ecr.repository_uri,
                if ecr.repository_created {
                    " (created)"
                } else {
                    ""
                }
            ),
        );
    }
    row("Source", report.source_format.clone());
    if let Some(status) = &report.replication_status {
        row(
            "Replication",
            match status.as_str() {
                "complete" => format!(
                    "complete: {}",
                    report
                        .replication
                        .iter()
                        .map(|r| format!("{} ({})", r.region, r.registry_id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "not_configured" => "no replication rule covers this repository".to_owned(),
                other => format!("**{other}**"),
            },
        );
    }
    for (what, error) in [
        ("Scan", &report.scan_error),
        ("Replication error", &report.replication_error),
    ] {
        if let Some(error) = error {
            row(what, format!("**failed**: {error}"));
        }
    }
    row("Duration", format!("{:.1} s", report.duration_seconds));
    md.push('\n');
    md.push_str(&scan_summary(report));
    md.push_str(&destinations_summary(report));
    md
}

/// The scan's counts and its worst findings.
fn scan_summary(report: &PushReport) -> String {
    if report.scans.is_empty() {
        return String::new();
    }
    let mut md = String::from("#### Vulnerability scan\n\n");
    if let Some(gate) = &report.scan_gate {
        let _ = writeln!(
            md,
            "{} `--fail-on-severity {}`: {} finding(s) at or above it.\n",
            if gate.passed { "Passed" } else { "**Failed**" },
            gate.threshold.name(),
            gate.findings
        );
    }
    md.push_str("| Image | Status | Findings |\n|---|---|---|\n");
    for scan in &report.scans {
        let counts = if scan.counts.is_empty() {
            "none".to_owned()
        } else {
            scan.counts
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| `{}`{} | {} {} | {counts}{} |",
            short(&scan.digest),
            scan.platform
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
            scan.scan_type,
            scan.status,
            if scan.ignored > 0 {
                format!(" ({} accepted)", scan.ignored)
            } else {
                String::new()
            }
        );
    }
    let worst: Vec<_> = report
        .scans
        .iter()
        .flat_map(|scan| &scan.worst)
        .take(10)
        .collect();
    if !worst.is_empty() {
        md.push_str("\n| Finding | Severity | Package | Fixed in |\n|---|---|---|---|\n");
        for finding in worst {
            let id = match &finding.url {
                Some(url) => format!("[{}]({url})", finding.id),
                None => finding.id.clone(),
            };
            let _ = writeln!(
                md,
                "| {id} | {} | {} | {} |",
                finding.severity,
                finding.package.as_deref().unwrap_or(""),
                finding.fixed_version.as_deref().unwrap_or("")
            );
        }
    }
    md.push('\n');
    md
}

fn destinations_summary(report: &PushReport) -> String {
    if report.destinations.is_empty() {
        return String::new();
    }
    let mut md = String::from("#### Destinations\n\n| Destination | Result |\n|---|---|\n");
    for destination in &report.destinations {
        let mut result = match (&destination.image_ref, &destination.error) {
            (_, Some(error)) => format!("failed: {}", error.replace('|', "\\|")),
            (Some(reference), None) => format!("`{reference}`"),
            (None, None) => String::new(),
        };
        for (what, error) in [
            ("scan", &destination.scan_error),
            ("replication", &destination.replication_error),
        ] {
            if let Some(error) = error {
                let _ = write!(result, "<br>{what} failed: {}", error.replace('|', "\\|"));
            }
        }
        let _ = writeln!(md, "| {} | {result} |", destination.destination);
    }
    md.push('\n');
    md
}

/// The step summary of a failed command.
pub fn failure_summary(message: &str) -> String {
    format!(
        "### ecr-push failed\n\n```\n{}\n```\n\n",
        message.replace("```", "'''")
    )
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_use_a_delimiter_absent_from_the_value() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let hostile = "line1\nEOF\ndigest<<EOF\nsha256:evil\nEOF".to_owned();
        write_outputs(
            file.path(),
            &[("tags", hostile.clone()), ("digest", "sha256:abc".into())],
        )
        .unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        let mut lines = text.lines();
        let first = lines.next().unwrap();
        let delimiter = first.strip_prefix("tags<<").unwrap();
        assert!(delimiter.starts_with("ghadelimiter_"));
        let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delimiter).collect();
        assert_eq!(
            value.join("\n"),
            hostile,
            "the hostile value stays inside its own output"
        );
        assert!(lines.next().unwrap().starts_with("digest<<ghadelimiter_"));
    }

    #[test]
    fn annotations_escape_newlines() {
        assert_eq!(escape_data("a%b\nc\r"), "a%25b%0Ac%0D");
    }
}
