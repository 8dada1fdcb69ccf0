//! Images in an ECR repository, through the ECR API: listing (all pages), deleting in batches,
//! the children of image indexes (which must never be deleted while their index is kept),
//! lifecycle policy previews, and replication status (against the registry's replication
//! rules).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_ecr::types::{
    ImageIdentifier, LifecyclePolicyPreviewStatus, ReplicationStatus, TagStatus,
};
use serde::Serialize;

use super::{AwsError, api_error};

/// One image of a repository.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageInfo {
    pub digest: String,
    pub tags: Vec<String>,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub pushed_at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_status: Option<String>,
}

impl ImageInfo {
    pub fn is_index(&self) -> bool {
        self.media_type.as_deref().is_some_and(|m| {
            m == crate::source::OCI_INDEX || m == crate::source::DOCKER_MANIFEST_LIST
        })
    }
}

/// Which images to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TagFilter {
    Any,
    Tagged,
    Untagged,
}

/// Every image of `repository` (all pages), newest first.
pub async fn list(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    filter: TagFilter,
) -> Result<Vec<ImageInfo>, AwsError> {
    let status = match filter {
        TagFilter::Any => TagStatus::Any,
        TagFilter::Tagged => TagStatus::Tagged,
        TagFilter::Untagged => TagStatus::Untagged,
    };
    let mut images = Vec::new();
    let mut next_token = None;
    loop {
        let output = ecr
            .describe_images()
            .registry_id(registry_id)
            .repository_name(repository)
            .filter(
                aws_sdk_ecr::types::DescribeImagesFilter::builder()
                    .tag_status(status.clone())
                    .build(),
            )
            .max_results(1000)
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|e| api_error("ecr:DescribeImages", Some(repository), &e))?;
        images.extend(output.image_details().iter().map(|image| {
            ImageInfo {
                digest: image.image_digest().unwrap_or_default().to_owned(),
                tags: image.image_tags().to_vec(),
                size: image
                    .image_size_in_bytes()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
                pushed_at: image.image_pushed_at().map_or(0.0, aws_smithy_types_secs),
                media_type: image.image_manifest_media_type().map(str::to_owned),
                scan_status: image
                    .image_scan_status()
                    .and_then(|s| s.status())
                    .map(|s| s.as_str().to_owned()),
            }
        }));
        next_token = output.next_token().map(str::to_owned);
        if next_token.is_none() {
            break;
        }
    }
    // The filter is applied here too: not every ECR-compatible API honours it.
    images.retain(|image| match filter {
        TagFilter::Any => true,
        TagFilter::Tagged => !image.tags.is_empty(),
        TagFilter::Untagged => image.tags.is_empty(),
    });
    // Newest first; ties in push time (second resolution) ordered by digest, so runs agree.
    images.sort_by(|a, b| {
        b.pushed_at
            .total_cmp(&a.pushed_at)
            .then_with(|| a.digest.cmp(&b.digest))
    });
    Ok(images)
}

fn aws_smithy_types_secs(time: &aws_sdk_ecr::primitives::DateTime) -> f64 {
    time.as_secs_f64()
}

/// The manifests each image index refers to (platform images, attestations, nested indexes),
/// by the index's digest.
pub async fn index_children(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    digests: &[String],
) -> Result<HashMap<String, Vec<String>>, AwsError> {
    let mut children = HashMap::new();
    for batch in digests.chunks(100) {
        let output = ecr
            .batch_get_image()
            .registry_id(registry_id)
            .repository_name(repository)
            .set_image_ids(Some(
                batch
                    .iter()
                    .map(|d| ImageIdentifier::builder().image_digest(d).build())
                    .collect(),
            ))
            .accepted_media_types(crate::source::OCI_INDEX)
            .accepted_media_types(crate::source::DOCKER_MANIFEST_LIST)
            .accepted_media_types(crate::source::OCI_MANIFEST)
            .accepted_media_types(crate::source::DOCKER_MANIFEST)
            .send()
            .await
            .map_err(|e| api_error("ecr:BatchGetImage", Some(repository), &e))?;
        for image in output.images() {
            let (Some(manifest), Some(digest)) = (
                image.image_manifest(),
                image.image_id().and_then(|id| id.image_digest()),
            ) else {
                continue;
            };
            if let Ok(index) = serde_json::from_str::<serde_json::Value>(manifest)
                && let Some(manifests) = index["manifests"].as_array()
            {
                children.insert(
                    digest.to_owned(),
                    manifests
                        .iter()
                        .filter_map(|m| m["digest"].as_str().map(str::to_owned))
                        .collect(),
                );
            }
        }
    }
    Ok(children)
}

/// An image `BatchDeleteImage` did not delete, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeleteFailure {
    pub digest: String,
    /// ECR's failure code (`ImageReferencedByManifestList`, `ImageNotFound`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub reason: String,
}

/// Deletes images by digest, 100 at a time. Returns what ECR reported as not deleted.
pub async fn delete(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    digests: &[String],
) -> Result<Vec<DeleteFailure>, AwsError> {
    let mut failures = Vec::new();
    for batch in digests.chunks(100) {
        let output = ecr
            .batch_delete_image()
            .registry_id(registry_id)
            .repository_name(repository)
            .set_image_ids(Some(
                batch
                    .iter()
                    .map(|d| ImageIdentifier::builder().image_digest(d).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| api_error("ecr:BatchDeleteImage", Some(repository), &e))?;
        failures.extend(output.failures().iter().map(|failure| {
            DeleteFailure {
                digest: failure
                    .image_id()
                    .and_then(|id| id.image_digest())
                    .unwrap_or("?")
                    .to_owned(),
                code: failure.failure_code().map(|c| c.as_str().to_owned()),
                reason: failure
                    .failure_reason()
                    .unwrap_or("no reason given")
                    .to_owned(),
            }
        }));
    }
    Ok(failures)
}

/// An image a lifecycle policy would expire.
#[derive(Clone, Debug, Serialize)]
pub struct Expiring {
    pub digest: String,
    pub tags: Vec<String>,
    pub rule_priority: Option<i32>,
}

/// Starts a lifecycle policy preview (of `policy`, or of the repository's own policy) and waits
/// for its result.
pub async fn lifecycle_preview(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    policy: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Expiring>, AwsError> {
    ecr.start_lifecycle_policy_preview()
        .registry_id(registry_id)
        .repository_name(repository)
        .set_lifecycle_policy_text(policy.map(str::to_owned))
        .send()
        .await
        .map_err(|e| api_error("ecr:StartLifecyclePolicyPreview", Some(repository), &e))?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        let mut expiring = Vec::new();
        let mut next_token = None;
        let mut status;
        loop {
            let output = ecr
                .get_lifecycle_policy_preview()
                .registry_id(registry_id)
                .repository_name(repository)
                .set_next_token(next_token)
                .send()
                .await
                .map_err(|e| api_error("ecr:GetLifecyclePolicyPreview", Some(repository), &e))?;
            status = output.status().cloned();
            expiring.extend(output.preview_results().iter().map(|result| Expiring {
                digest: result.image_digest().unwrap_or_default().to_owned(),
                tags: result.image_tags().to_vec(),
                rule_priority: result.applied_rule_priority(),
            }));
            next_token = output.next_token().map(str::to_owned);
            if next_token.is_none() || status != Some(LifecyclePolicyPreviewStatus::Complete) {
                break;
            }
        }
        match status {
            Some(LifecyclePolicyPreviewStatus::Complete) => return Ok(expiring),
            Some(LifecyclePolicyPreviewStatus::Failed | LifecyclePolicyPreviewStatus::Expired) => {
                return Err(AwsError::Api {
                    action: "the lifecycle policy preview".into(),
                    message: format!(
                        "{repository}: {}",
                        status.map(|s| s.as_str().to_owned()).unwrap_or_default()
                    ),
                });
            }
            _ => {}
        }
        if started.elapsed() + delay > timeout {
            return Err(AwsError::Api {
                action: "the lifecycle policy preview".into(),
                message: format!("no result for {repository} after {} s", timeout.as_secs()),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Where an image has been replicated to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Replica {
    pub region: String,
    pub registry_id: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// What `--wait-replication` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    /// No replication rule of the registry covers the repository: nothing replicates, nothing
    /// to wait for.
    NotConfigured,
    /// Every replica is complete.
    Complete(Vec<Replica>),
}

/// Waits until every replica of `digest` is complete (or one failed), up to `timeout`.
///
/// An empty `replicationStatuses` is ambiguous: the registry replicates nothing, or ECR has not
/// recorded the replication yet (it starts after the push). The registry's replication rules
/// (`DescribeRegistry`) tell which: without a rule for the repository there is nothing to wait
/// for; with one, an empty answer means "not yet" and is polled again. `DescribeRegistry`
/// describes the caller's own registry only: for another account's registry the rules cannot
/// be read, and an empty answer means "not yet".
pub async fn wait_for_replication(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    digest: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Replication, AwsError> {
    if replicates(ecr, registry_id, repository).await? == Some(false) {
        return Ok(Replication::NotConfigured);
    }
    let started = Instant::now();
    loop {
        let output = ecr
            .describe_image_replication_status()
            .registry_id(registry_id)
            .repository_name(repository)
            .image_id(ImageIdentifier::builder().image_digest(digest).build())
            .send()
            .await
            .map_err(|e| api_error("ecr:DescribeImageReplicationStatus", Some(repository), &e))?;
        let statuses = output.replication_statuses();
        if let Some(failed) = statuses
            .iter()
            .find(|s| s.status() == Some(&ReplicationStatus::Failed))
        {
            return Err(AwsError::Api {
                action: "replication".into(),
                message: format!(
                    "{repository}@{digest} failed to replicate to {} ({})",
                    failed.region().unwrap_or("?"),
                    failed.failure_code().unwrap_or("no reason given")
                ),
            });
        }
        let complete = !statuses.is_empty()
            && statuses
                .iter()
                .all(|s| s.status() == Some(&ReplicationStatus::Complete));
        if complete {
            return Ok(Replication::Complete(
                statuses
                    .iter()
                    .map(|status| Replica {
                        region: status.region().unwrap_or_default().to_owned(),
                        registry_id: status.registry_id().unwrap_or_default().to_owned(),
                        status: status.status().map_or("UNKNOWN", |s| s.as_str()).to_owned(),
                        failure: status.failure_code().map(str::to_owned),
                    })
                    .collect(),
            ));
        }
        if started.elapsed() + poll > timeout {
            let state = if statuses.is_empty() {
                "ECR has recorded no replication of it yet".to_owned()
            } else {
                let pending: Vec<String> = statuses
                    .iter()
                    .filter(|s| s.status() != Some(&ReplicationStatus::Complete))
                    .map(|s| {
                        format!(
                            "{} {}",
                            s.region().unwrap_or("?"),
                            s.status().map_or("UNKNOWN", |s| s.as_str())
                        )
                    })
                    .collect();
                format!("still pending: {}", pending.join(", "))
            };
            return Err(AwsError::Api {
                action: "replication".into(),
                message: format!(
                    "{repository}@{digest} is not replicated everywhere after {} s ({state}); \
                     raise --replication-timeout or check replication in the ECR console",
                    timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// Whether a replication rule of registry `registry_id` covers `repository` (a rule without
/// repository filters covers every repository; filters match by prefix); `None` when the
/// registry is not the caller's, whose rules cannot be read.
async fn replicates(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
) -> Result<Option<bool>, AwsError> {
    let output = ecr
        .describe_registry()
        .send()
        .await
        .map_err(|e| api_error("ecr:DescribeRegistry", None, &e))?;
    if output.registry_id().is_some_and(|id| id != registry_id) {
        return Ok(None);
    }
    Ok(Some(
        output
            .replication_configuration()
            .map(|config| config.rules())
            .unwrap_or_default()
            .iter()
            .filter(|rule| !rule.destinations().is_empty())
            .any(|rule| {
                let filters = rule.repository_filters();
                filters.is_empty() || filters.iter().any(|f| repository.starts_with(f.filter()))
            }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ecr::operation::describe_image_replication_status::DescribeImageReplicationStatusOutput;
    use aws_sdk_ecr::operation::describe_registry::DescribeRegistryOutput;
    use aws_sdk_ecr::operation::get_lifecycle_policy_preview::GetLifecyclePolicyPreviewOutput;
    use aws_sdk_ecr::operation::start_lifecycle_policy_preview::StartLifecyclePolicyPreviewOutput;
    use aws_sdk_ecr::types::{
        ImageReplicationStatus, LifecyclePolicyPreviewResult, ReplicationConfiguration,
        ReplicationDestination, ReplicationRule, RepositoryFilter, RepositoryFilterType,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    fn replica(region: &str, status: ReplicationStatus) -> ImageReplicationStatus {
        ImageReplicationStatus::builder()
            .region(region)
            .registry_id("1")
            .status(status)
            .build()
    }

    #[tokio::test]
    async fn replication_is_waited_for_until_complete() {
        let statuses = mock!(aws_sdk_ecr::Client::describe_image_replication_status)
            .sequence()
            .output(|| {
                DescribeImageReplicationStatusOutput::builder()
                    .replication_statuses(replica("us-east-1", ReplicationStatus::InProgress))
                    .replication_statuses(replica("eu-west-1", ReplicationStatus::Complete))
                    .build()
            })
            .output(|| {
                DescribeImageReplicationStatusOutput::builder()
                    .replication_statuses(replica("us-east-1", ReplicationStatus::Complete))
                    .replication_statuses(replica("eu-west-1", ReplicationStatus::Complete))
                    .build()
            })
            .build();
        let registry = registry_replicating(&[]);
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&registry, &statuses]);
        let Replication::Complete(replicas) = wait(&ecr, 5_000).await.unwrap() else {
            panic!("not complete")
        };
        assert_eq!(statuses.num_calls(), 2);
        assert_eq!(replicas.len(), 2);
        assert!(replicas.iter().all(|r| r.status == "COMPLETE"));
    }

    /// `DescribeRegistry` with one rule replicating the repositories named by `prefixes`
    /// (none: every repository) to us-east-1.
    fn registry_replicating(prefixes: &[&str]) -> aws_smithy_mocks::Rule {
        let prefixes: Vec<String> = prefixes.iter().map(|p| (*p).to_owned()).collect();
        mock!(aws_sdk_ecr::Client::describe_registry).then_output(move || {
            let mut rule = ReplicationRule::builder().destinations(
                ReplicationDestination::builder()
                    .region("us-east-1")
                    .registry_id("1")
                    .build()
                    .unwrap(),
            );
            for prefix in &prefixes {
                rule = rule.repository_filters(
                    RepositoryFilter::builder()
                        .filter(prefix)
                        .filter_type(RepositoryFilterType::PrefixMatch)
                        .build()
                        .unwrap(),
                );
            }
            DescribeRegistryOutput::builder()
                .registry_id("1")
                .replication_configuration(
                    ReplicationConfiguration::builder()
                        .rules(rule.build().unwrap())
                        .build()
                        .unwrap(),
                )
                .build()
        })
    }

    async fn wait(ecr: &aws_sdk_ecr::Client, timeout_ms: u64) -> Result<Replication, AwsError> {
        wait_for_replication(
            ecr,
            "1",
            "team/app",
            "sha256:x",
            Duration::from_millis(timeout_ms),
            Duration::from_millis(1),
        )
        .await
    }

    #[tokio::test]
    async fn without_a_replication_rule_nothing_is_waited_for() {
        let no_rules = mock!(aws_sdk_ecr::Client::describe_registry)
            .then_output(|| DescribeRegistryOutput::builder().registry_id("1").build());
        let statuses = mock!(aws_sdk_ecr::Client::describe_image_replication_status)
            .then_output(|| DescribeImageReplicationStatusOutput::builder().build());
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&no_rules, &statuses]);
        assert_eq!(wait(&ecr, 5_000).await.unwrap(), Replication::NotConfigured);
        assert_eq!(statuses.num_calls(), 0);

        // A rule for other repositories only is no rule for this one.
        let elsewhere = registry_replicating(&["other/"]);
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&elsewhere, &statuses]);
        assert_eq!(wait(&ecr, 5_000).await.unwrap(), Replication::NotConfigured);
        assert_eq!(statuses.num_calls(), 0);
    }

    #[tokio::test]
    async fn another_accounts_registry_is_polled_whatever_the_callers_rules() {
        // DescribeRegistry answers for the caller's registry "1", with no rules.
        let own_rules = mock!(aws_sdk_ecr::Client::describe_registry)
            .then_output(|| DescribeRegistryOutput::builder().registry_id("1").build());
        let statuses = mock!(aws_sdk_ecr::Client::describe_image_replication_status)
            .sequence()
            .output(|| DescribeImageReplicationStatusOutput::builder().build())
            .output(|| {
                DescribeImageReplicationStatusOutput::builder()
                    .replication_statuses(replica("us-east-1", ReplicationStatus::Complete))
                    .build()
            })
            .build();
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&own_rules, &statuses]);
        let outcome = wait_for_replication(
            &ecr,
            "2",
            "team/app",
            "sha256:x",
            Duration::from_secs(5),
            Duration::from_millis(1),
        )
        .await
        .unwrap();
        assert_eq!(statuses.num_calls(), 2);
        assert!(matches!(outcome, Replication::Complete(_)));
    }

    #[tokio::test]
    async fn replication_not_yet_recorded_is_waited_for() {
        let registry = registry_replicating(&["team/"]);
        let statuses = mock!(aws_sdk_ecr::Client::describe_image_replication_status)
            .sequence()
            .output(|| DescribeImageReplicationStatusOutput::builder().build())
            .times(2)
            .output(|| {
                DescribeImageReplicationStatusOutput::builder()
                    .replication_statuses(replica("us-east-1", ReplicationStatus::Complete))
                    .build()
            })
            .build();
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&registry, &statuses]);
        let outcome = wait(&ecr, 5_000).await.unwrap();
        assert_eq!(statuses.num_calls(), 3, "empty answers were polled again");
        assert!(matches!(outcome, Replication::Complete(r) if r.len() == 1));
    }

    #[tokio::test]
    async fn replication_never_recorded_times_out() {
        let registry = registry_replicating(&[]);
        let statuses = mock!(aws_sdk_ecr::Client::describe_image_replication_status)
            .sequence()
            .output(|| DescribeImageReplicationStatusOutput::builder().build())
            .repeatedly()
            .build();
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&registry, &statuses]);
        let error = wait(&ecr, 30).await.unwrap_err().to_string();
        assert!(
            error.contains("no replication of it yet") && error.contains("--replication-timeout"),
            "{error}"
        );
        assert!(statuses.num_calls() > 1);
    }

    #[tokio::test]
    async fn failed_replication_names_the_region() {
        let statuses =
            mock!(aws_sdk_ecr::Client::describe_image_replication_status).then_output(|| {
                DescribeImageReplicationStatusOutput::builder()
                    .replication_statuses(
                        ImageReplicationStatus::builder()
                            .region("ap-south-1")
                            .status(ReplicationStatus::Failed)
                            .failure_code("KMS_KEY_NOT_FOUND")
                            .build(),
                    )
                    .build()
            });
        let registry = registry_replicating(&[]);
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&registry, &statuses]);
        let error = wait(&ecr, 5_000).await.unwrap_err().to_string();
        assert!(
            error.contains("ap-south-1") && error.contains("KMS_KEY_NOT_FOUND"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn lifecycle_preview_waits_and_lists_expiring_images() {
        let start = mock!(aws_sdk_ecr::Client::start_lifecycle_policy_preview)
            .match_requests(|r| r.lifecycle_policy_text() == Some("{}"))
            .then_output(|| StartLifecyclePolicyPreviewOutput::builder().build());
        let preview = mock!(aws_sdk_ecr::Client::get_lifecycle_policy_preview)
            .sequence()
            .output(|| {
                GetLifecyclePolicyPreviewOutput::builder()
                    .status(LifecyclePolicyPreviewStatus::InProgress)
                    .build()
            })
            .output(|| {
                GetLifecyclePolicyPreviewOutput::builder()
                    .status(LifecyclePolicyPreviewStatus::Complete)
                    .preview_results(
                        LifecyclePolicyPreviewResult::builder()
                            .image_digest("sha256:old")
                            .image_tags("v1")
                            .applied_rule_priority(1)
                            .build(),
                    )
                    .build()
            })
            .build();
        let ecr = mock_client!(aws_sdk_ecr, RuleMode::MatchAny, [&start, &preview]);
        let expiring = lifecycle_preview(&ecr, "1", "r", Some("{}"), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(expiring.len(), 1);
        assert_eq!(expiring[0].digest, "sha256:old");
        assert_eq!(expiring[0].rule_priority, Some(1));
    }
}
