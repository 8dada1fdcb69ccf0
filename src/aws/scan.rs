//! The scan gate: wait for ECR's vulnerability scan of the pushed image and fail the job when
//! findings at or above a severity exist (exit code 3).
//!
//! Basic scanning (Clair-based) scans on push when the repository asks for it; otherwise a scan
//! is started here (`StartImageScan`, at most once a day per image). Enhanced scanning (Amazon
//! Inspector) scans by itself; its statuses include `ACTIVE` (scanned, watched continuously),
//! `PENDING` and `SCAN_ELIGIBILITY_EXPIRED`. Findings are read from
//! `DescribeImageScanFindings`, all pages, so accepted risks (`--ignore-cve`) are left out of the
//! counts.
//! (<https://docs.aws.amazon.com/AmazonECR/latest/userguide/image-scanning.html>)

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_ecr::types::{ImageIdentifier, ScanStatus, ScanType};
use serde::Serialize;

use super::{AwsError, api_error};

/// Finding severities, least severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, Serialize)]
#[value(rename_all = "UPPER")]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_uppercase().as_str() {
            "INFORMATIONAL" => Some(Self::Informational),
            "LOW" => Some(Self::Low),
            "MEDIUM" => Some(Self::Medium),
            "HIGH" => Some(Self::High),
            "CRITICAL" => Some(Self::Critical),
            // UNDEFINED, UNTRIAGED: counted, but below every threshold.
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Informational => "INFORMATIONAL",
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
            Self::Critical => "CRITICAL",
        }
    }
}

/// What the user asked of the scan.
#[derive(Clone, Debug)]
pub struct ScanSettings {
    pub timeout: Duration,
    pub fail_on: Option<Severity>,
    /// Finding IDs (CVE-…) accepted as risks: not counted.
    pub ignore: HashSet<String>,
    pub poll_initial: Duration,
    pub poll_max: Duration,
    /// How long a basic scan on push may take to show up before one is started here.
    pub start_after: Duration,
}

impl ScanSettings {
    pub fn new(timeout: Duration, fail_on: Option<Severity>, ignore: HashSet<String>) -> Self {
        Self {
            timeout,
            fail_on,
            ignore,
            poll_initial: Duration::from_secs(2),
            poll_max: Duration::from_secs(15),
            start_after: Duration::from_secs(60),
        }
    }
}

/// One finding, as shown in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub id: String,
    pub severity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The scan of one image manifest.
#[derive(Clone, Debug, Serialize)]
pub struct ScanReport {
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// `BASIC` or `ENHANCED`.
    pub scan_type: String,
    pub status: String,
    /// Findings per severity, accepted risks left out.
    pub counts: BTreeMap<String, u64>,
    pub ignored: u64,
    /// The most severe findings (at most 10).
    pub worst: Vec<Finding>,
}

impl ScanReport {
    /// Findings at or above `threshold`.
    pub fn at_or_above(&self, threshold: Severity) -> u64 {
        self.counts
            .iter()
            .filter(|(name, _)| Severity::parse(name).is_some_and(|s| s >= threshold))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Scans the image `digest` (unless it is being scanned on push) and waits for the result.
pub async fn scan_image(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    digest: &str,
    scanned_on_push: bool,
    settings: &ScanSettings,
) -> Result<ScanReport, AwsError> {
    let scan_type = registry_scan_type(ecr, registry_id).await?;
    let started = Instant::now();
    let mut started_scan = false;
    if scan_type == ScanType::Basic && !scanned_on_push {
        started_scan = start_scan(ecr, registry_id, repository, digest).await?;
    }
    let mut delay = settings.poll_initial;
    loop {
        match poll(ecr, registry_id, repository, digest, &scan_type, settings).await? {
            Poll::Done(report) => return Ok(report),
            // Basic scan on push did not start: start one here. Never with enhanced scanning:
            // Inspector decides what it scans (its repository filters), and StartImageScan
            // would be refused or start a basic scan the registry does not use.
            Poll::NotFound
                if scan_type == ScanType::Basic
                    && !started_scan
                    && started.elapsed() >= settings.start_after =>
            {
                started_scan = start_scan(ecr, registry_id, repository, digest).await?;
            }
            Poll::NotFound | Poll::Pending => {}
        }
        if started.elapsed() + delay > settings.timeout {
            return Err(AwsError::Api {
                action: "waiting for the image scan".into(),
                message: format!(
                    "no result for {repository}@{digest} after {} s; raise --scan-timeout or check the scan in the ECR console",
                    settings.timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(settings.poll_max);
    }
}

async fn registry_scan_type(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
) -> Result<ScanType, AwsError> {
    let _ = registry_id;
    match ecr.get_registry_scanning_configuration().send().await {
        Ok(output) => Ok(output
            .scanning_configuration()
            .and_then(|c| c.scan_type())
            .cloned()
            .unwrap_or(ScanType::Basic)),
        Err(error) => Err(api_error(
            "ecr:GetRegistryScanningConfiguration",
            None,
            &error,
        )),
    }
}

/// Returns whether a scan was started (false when ECR refuses a second scan today).
async fn start_scan(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    digest: &str,
) -> Result<bool, AwsError> {
    match ecr
        .start_image_scan()
        .registry_id(registry_id)
        .repository_name(repository)
        .image_id(ImageIdentifier::builder().image_digest(digest).build())
        .send()
        .await
    {
        Ok(_) => Ok(true),
        // One basic scan per image per day: the earlier one's findings are what there is.
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_limit_exceeded_exception()) =>
        {
            Ok(false)
        }
        Err(error) => Err(api_error("ecr:StartImageScan", Some(repository), &error)),
    }
}

enum Poll {
    NotFound,
    Pending,
    Done(ScanReport),
}

async fn poll(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    digest: &str,
    scan_type: &ScanType,
    settings: &ScanSettings,
) -> Result<Poll, AwsError> {
    let mut report = ScanReport {
        digest: digest.to_owned(),
        platform: None,
        scan_type: scan_type.as_str().to_owned(),
        status: String::new(),
        counts: BTreeMap::new(),
        ignored: 0,
        worst: Vec::new(),
    };
    let mut findings: Vec<Finding> = Vec::new();
    let mut next_token = None;
    loop {
        let output = match ecr
            .describe_image_scan_findings()
            .registry_id(registry_id)
            .repository_name(repository)
            .image_id(ImageIdentifier::builder().image_digest(digest).build())
            .max_results(1000)
            .set_next_token(next_token.take())
            .send()
            .await
        {
            Ok(output) => output,
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_scan_not_found_exception()) =>
            {
                return Ok(Poll::NotFound);
            }
            Err(error) => {
                return Err(api_error(
                    "ecr:DescribeImageScanFindings",
                    Some(repository),
                    &error,
                ));
            }
        };
        let status = output.image_scan_status().and_then(|s| s.status()).cloned();
        let description = output
            .image_scan_status()
            .and_then(|s| s.description())
            .unwrap_or_default()
            .to_owned();
        match status {
            Some(ScanStatus::Complete | ScanStatus::Active) => {}
            Some(ScanStatus::InProgress | ScanStatus::Pending) | None => return Ok(Poll::Pending),
            Some(other) => {
                return Err(AwsError::Api {
                    action: "the image scan".into(),
                    message: format!(
                        "{repository}@{digest} was not scanned: {}{}",
                        other.as_str(),
                        if description.is_empty() {
                            String::new()
                        } else {
                            format!(" ({description})")
                        }
                    ),
                });
            }
        }
        report.status = status.map_or_else(String::new, |s| s.as_str().to_owned());
        if let Some(scan) = output.image_scan_findings() {
            findings.extend(findings_of(scan));
        }
        next_token = output.next_token().map(str::to_owned);
        if next_token.is_none() {
            break;
        }
    }
    tally(&mut report, findings, &settings.ignore);
    Ok(Poll::Done(report))
}

/// Basic (Clair) and enhanced (Inspector) findings, in one shape.
fn findings_of(scan: &aws_sdk_ecr::types::ImageScanFindings) -> Vec<Finding> {
    let basic = scan.findings().iter().map(|f| Finding {
        id: f.name().unwrap_or("?").to_owned(),
        severity: f.severity().map_or("UNDEFINED", |s| s.as_str()).to_owned(),
        package: attribute(f.attributes(), "package_name").map(|name| {
            match attribute(f.attributes(), "package_version") {
                Some(version) => format!("{name} {version}"),
                None => name,
            }
        }),
        fixed_version: None,
        url: f.uri().map(str::to_owned),
    });
    let enhanced = scan.enhanced_findings().iter().map(|f| {
        let details = f.package_vulnerability_details();
        let package = details.and_then(|d| d.vulnerable_packages().first());
        Finding {
            id: details
                .and_then(|d| d.vulnerability_id())
                .or(f.title())
                .unwrap_or("?")
                .to_owned(),
            severity: f.severity().unwrap_or("UNDEFINED").to_owned(),
            package: package.and_then(|p| {
                Some(
                    format!("{} {}", p.name()?, p.version().unwrap_or_default())
                        .trim()
                        .to_owned(),
                )
            }),
            fixed_version: package
                .and_then(|p| p.fixed_in_version())
                .map(str::to_owned),
            url: details.and_then(|d| d.source_url()).map(str::to_owned),
        }
    });
    basic.chain(enhanced).collect()
}

/// Counts findings per severity, leaving accepted risks out, and keeps the worst ten.
fn tally(report: &mut ScanReport, findings: Vec<Finding>, ignore: &HashSet<String>) {
    for finding in findings {
        if ignore.contains(&finding.id) {
            report.ignored += 1;
            continue;
        }
        *report.counts.entry(finding.severity.clone()).or_default() += 1;
        report.worst.push(finding);
    }
    report
        .worst
        .sort_by_key(|f| std::cmp::Reverse(Severity::parse(&f.severity)));
    report.worst.truncate(10);
}

fn attribute(attributes: &[aws_sdk_ecr::types::Attribute], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|a| a.key() == key)
        .and_then(|a| a.value())
        .map(str::to_owned)
}

/// Reads `--ignore-cve-file`: one finding ID per line, `#` starts a comment.
pub fn parse_ignore_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecr::operation::describe_image_scan_findings::{
        DescribeImageScanFindingsError, DescribeImageScanFindingsOutput,
    };
    use aws_sdk_ecr::operation::get_registry_scanning_configuration::GetRegistryScanningConfigurationOutput;
    use aws_sdk_ecr::operation::start_image_scan::StartImageScanOutput;
    use aws_sdk_ecr::types::error::ScanNotFoundException;
    use aws_sdk_ecr::types::{
        EnhancedImageScanFinding, FindingSeverity, ImageScanFinding, ImageScanFindings,
        ImageScanStatus, PackageVulnerabilityDetails, RegistryScanningConfiguration,
        VulnerablePackage,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    fn fast(timeout_ms: u64, fail_on: Option<Severity>, ignore: &[&str]) -> ScanSettings {
        ScanSettings {
            timeout: Duration::from_millis(timeout_ms),
            fail_on,
            ignore: ignore.iter().map(|s| (*s).to_owned()).collect(),
            poll_initial: Duration::from_millis(1),
            poll_max: Duration::from_millis(5),
            start_after: Duration::ZERO,
        }
    }

    fn not_found() -> DescribeImageScanFindingsError {
        DescribeImageScanFindingsError::ScanNotFoundException(
            ScanNotFoundException::builder().build(),
        )
    }

    #[tokio::test]
    async fn a_scan_on_push_that_never_started_is_started_here() {
        let config = scan_type(ScanType::Basic);
        let start = mock!(aws_sdk_ecr::Client::start_image_scan)
            .then_output(|| StartImageScanOutput::builder().build());
        let findings = mock!(aws_sdk_ecr::Client::describe_image_scan_findings)
            .sequence()
            .error(not_found)
            .output(|| {
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(status(ScanStatus::Complete))
                    .build()
            })
            .build();
        let ecr = mock_client!(
            aws_sdk_ecr,
            RuleMode::MatchAny,
            [&config, &start, &findings]
        );
        scan_image(&ecr, "1", "r", "sha256:x", true, &fast(5_000, None, &[]))
            .await
            .unwrap();
        assert_eq!(start.num_calls(), 1);
    }

    #[tokio::test]
    async fn enhanced_scanning_is_never_started_here() {
        let config = scan_type(ScanType::Enhanced);
        let start = mock!(aws_sdk_ecr::Client::start_image_scan)
            .then_output(|| StartImageScanOutput::builder().build());
        let findings = mock!(aws_sdk_ecr::Client::describe_image_scan_findings)
            .sequence()
            .error(not_found)
            .times(3)
            .output(|| {
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(status(ScanStatus::Active))
                    .build()
            })
            .build();
        let ecr = mock_client!(
            aws_sdk_ecr,
            RuleMode::MatchAny,
            [&config, &start, &findings]
        );
        // Not scanned on push as far as the repository says, and not found for a while.
        let report = scan_image(&ecr, "1", "r", "sha256:x", false, &fast(5_000, None, &[]))
            .await
            .unwrap();
        assert_eq!(findings.num_calls(), 4);
        assert_eq!(start.num_calls(), 0, "Inspector scans by itself");
        assert_eq!(report.status, "ACTIVE");
    }

    fn scan_type(kind: ScanType) -> aws_smithy_mocks::Rule {
        mock!(aws_sdk_ecr::Client::get_registry_scanning_configuration).then_output(move || {
            GetRegistryScanningConfigurationOutput::builder()
                .scanning_configuration(
                    RegistryScanningConfiguration::builder()
                        .scan_type(kind.clone())
                        .build(),
                )
                .build()
        })
    }

    fn status(status: ScanStatus) -> ImageScanStatus {
        ImageScanStatus::builder().status(status).build()
    }

    fn basic(id: &str, severity: FindingSeverity) -> ImageScanFinding {
        ImageScanFinding::builder()
            .name(id)
            .severity(severity)
            .build()
    }

    #[tokio::test]
    async fn basic_scan_is_started_then_polled_until_complete() {
        let config = scan_type(ScanType::Basic);
        let start = mock!(aws_sdk_ecr::Client::start_image_scan)
            .then_output(|| StartImageScanOutput::builder().build());
        let not_yet = mock!(aws_sdk_ecr::Client::describe_image_scan_findings)
            .sequence()
            .error(|| {
                DescribeImageScanFindingsError::ScanNotFoundException(
                    ScanNotFoundException::builder().build(),
                )
            })
            .output(|| {
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(status(ScanStatus::InProgress))
                    .build()
            })
            .output(|| {
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(status(ScanStatus::Complete))
                    .image_scan_findings(
                        ImageScanFindings::builder()
                            .findings(basic("CVE-2024-0001", FindingSeverity::High))
                            .findings(basic("CVE-2024-0002", FindingSeverity::Critical))
                            .findings(basic("CVE-2024-0003", FindingSeverity::Low))
                            .build(),
                    )
                    .build()
            })
            .build();
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&config, &start, &not_yet]);
        let report = scan_image(
            &ecr,
            "1",
            "team/app",
            "sha256:x",
            false,
            &fast(5_000, Some(Severity::High), &["CVE-2024-0002"]),
        )
        .await
        .unwrap();
        assert_eq!(start.num_calls(), 1);
        assert_eq!(not_yet.num_calls(), 3);
        assert_eq!(report.status, "COMPLETE");
        assert_eq!(report.ignored, 1, "the accepted CVE is left out");
        assert_eq!(report.at_or_above(Severity::High), 1);
        assert_eq!(report.at_or_above(Severity::Low), 2);
        assert_eq!(report.worst[0].id, "CVE-2024-0001", "most severe first");
    }

    #[tokio::test]
    async fn scan_on_push_is_not_started_again() {
        let config = scan_type(ScanType::Basic);
        let start = mock!(aws_sdk_ecr::Client::start_image_scan)
            .then_output(|| StartImageScanOutput::builder().build());
        let done = mock!(aws_sdk_ecr::Client::describe_image_scan_findings).then_output(|| {
            DescribeImageScanFindingsOutput::builder()
                .image_scan_status(status(ScanStatus::Complete))
                .build()
        });
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&config, &start, &done]);
        let report = scan_image(&ecr, "1", "r", "sha256:x", true, &fast(1_000, None, &[]))
            .await
            .unwrap();
        assert_eq!(start.num_calls(), 0);
        assert!(report.counts.is_empty());
    }

    #[tokio::test]
    async fn enhanced_scanning_is_waited_for_and_read() {
        let config = scan_type(ScanType::Enhanced);
        let start = mock!(aws_sdk_ecr::Client::start_image_scan)
            .then_output(|| StartImageScanOutput::builder().build());
        let findings = mock!(aws_sdk_ecr::Client::describe_image_scan_findings)
            .sequence()
            .output(|| {
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(status(ScanStatus::Pending))
                    .build()
            })
            .output(|| {
                let details = PackageVulnerabilityDetails::builder()
                    .vulnerability_id("CVE-2025-1234")
                    .source_url("https://nvd.nist.gov/vuln/detail/CVE-2025-1234")
                    .vulnerable_packages(
                        VulnerablePackage::builder()
                            .name("openssl")
                            .version("3.0.1")
                            .fixed_in_version("3.0.9")
                            .build(),
                    )
                    .build();
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(status(ScanStatus::Active))
                    .image_scan_findings(
                        ImageScanFindings::builder()
                            .enhanced_findings(
                                EnhancedImageScanFinding::builder()
                                    .severity("CRITICAL")
                                    .package_vulnerability_details(details)
                                    .build(),
                            )
                            .build(),
                    )
                    .build()
            })
            .build();
        let ecr = mock_client!(
            aws_sdk_ecr,
            RuleMode::MatchAny,
            [&config, &start, &findings]
        );
        let report = scan_image(&ecr, "1", "r", "sha256:x", false, &fast(5_000, None, &[]))
            .await
            .unwrap();
        assert_eq!(start.num_calls(), 0, "Inspector scans by itself");
        assert_eq!(report.scan_type, "ENHANCED");
        assert_eq!(report.status, "ACTIVE");
        let finding = &report.worst[0];
        assert_eq!(finding.package.as_deref(), Some("openssl 3.0.1"));
        assert_eq!(finding.fixed_version.as_deref(), Some("3.0.9"));
        assert_eq!(report.at_or_above(Severity::Critical), 1);
    }

    #[tokio::test]
    async fn a_scan_that_never_ends_times_out() {
        let config = scan_type(ScanType::Enhanced);
        let pending = mock!(aws_sdk_ecr::Client::describe_image_scan_findings)
            .sequence()
            .output(|| {
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(status(ScanStatus::InProgress))
                    .build()
            })
            .repeatedly()
            .build();
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&config, &pending]);
        let error = scan_image(&ecr, "1", "r", "sha256:x", true, &fast(50, None, &[]))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("--scan-timeout"), "{error}");
    }

    #[tokio::test]
    async fn unsupported_images_are_an_error_not_a_pass() {
        let config = scan_type(ScanType::Basic);
        let unsupported =
            mock!(aws_sdk_ecr::Client::describe_image_scan_findings).then_output(|| {
                DescribeImageScanFindingsOutput::builder()
                    .image_scan_status(
                        ImageScanStatus::builder()
                            .status(ScanStatus::UnsupportedImage)
                            .description("UnsupportedImageError")
                            .build(),
                    )
                    .build()
            });
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&config, &unsupported]);
        let error = scan_image(&ecr, "1", "r", "sha256:x", true, &fast(1_000, None, &[]))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("UNSUPPORTED_IMAGE"), "{error}");
    }

    #[test]
    fn severity_order_and_ignore_files() {
        assert!(Severity::Critical > Severity::High && Severity::Low > Severity::Informational);
        assert_eq!(
            parse_ignore_file("CVE-1 # accepted\n\n# note\n  CVE-2\n"),
            vec!["CVE-1", "CVE-2"]
        );
    }
}
