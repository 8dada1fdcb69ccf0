//! The ECR repository: created before any upload when missing (ECR drops the connection or
//! answers `NAME_UNKNOWN` when a push targets a missing repository), with the requested
//! settings and lifecycle policy. An existing repository is never changed silently: each setting
//! that differs from the request is reported as drift.

use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability,
    Repository, Tag,
};

use super::{AwsError, api_error};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagMutability {
    Mutable,
    Immutable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Encryption {
    Aes256,
    Kms,
}

/// What the user asked the repository to be. `None` means "not asked": ECR's default when
/// creating, not compared when the repository exists.
#[derive(Clone, Debug, Default)]
pub struct RepositorySettings {
    pub create: bool,
    pub scan_on_push: Option<bool>,
    pub tag_mutability: Option<TagMutability>,
    pub encryption: Option<Encryption>,
    pub kms_key: Option<String>,
    pub tags: Vec<(String, String)>,
    /// The lifecycle policy JSON text.
    pub lifecycle_policy: Option<String>,
}

/// The repository as it is after `ensure`.
#[derive(Clone, Debug)]
pub struct RepositoryState {
    pub uri: String,
    pub created: bool,
    pub mutability: ImageTagMutability,
    /// Wildcard filters of `*_WITH_EXCLUSION` mutability.
    pub exclusion_filters: Vec<String>,
    /// Differences between the request and an existing repository, one sentence each.
    pub drift: Vec<String>,
    /// Settings that could not be compared (the role may not read them), one sentence each.
    pub unchecked: Vec<String>,
    /// Whether images are scanned when pushed (basic scanning).
    pub scan_on_push: bool,
}

impl RepositoryState {
    /// Whether `tag` cannot be moved once it exists.
    pub fn is_immutable(&self, tag: &str) -> bool {
        let excluded = self
            .exclusion_filters
            .iter()
            .any(|filter| wildcard_match(filter, tag));
        match self.mutability {
            ImageTagMutability::Immutable => true,
            ImageTagMutability::ImmutableWithExclusion => !excluded,
            ImageTagMutability::MutableWithExclusion => excluded,
            _ => false,
        }
    }
}

/// `*` matches any run of characters (ECR's exclusion filter syntax).
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Makes sure `name` exists in `registry_id`, creating it as requested.
pub async fn ensure(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    name: &str,
    wanted: &RepositorySettings,
) -> Result<RepositoryState, AwsError> {
    match describe(ecr, registry_id, name).await? {
        Some(existing) => existing_state(ecr, registry_id, name, &existing, wanted).await,
        None if !wanted.create => Err(AwsError::RepositoryMissing {
            repository: name.to_owned(),
            registry_id: registry_id.to_owned(),
        }),
        None => create(ecr, registry_id, name, wanted).await,
    }
}

pub async fn describe(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    name: &str,
) -> Result<Option<Repository>, AwsError> {
    match ecr
        .describe_repositories()
        .registry_id(registry_id)
        .repository_names(name)
        .send()
        .await
    {
        Ok(output) => Ok(output.repositories().first().cloned()),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_repository_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(error) => Err(api_error("ecr:DescribeRepositories", Some(name), &error)),
    }
}

async fn create(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    name: &str,
    wanted: &RepositorySettings,
) -> Result<RepositoryState, AwsError> {
    let mut request = ecr
        .create_repository()
        .registry_id(registry_id)
        .repository_name(name)
        .set_image_tag_mutability(wanted.tag_mutability.map(mutability))
        .set_image_scanning_configuration(wanted.scan_on_push.map(|scan| {
            ImageScanningConfiguration::builder()
                .scan_on_push(scan)
                .build()
        }));
    if let Some(encryption) = encryption_configuration(wanted)? {
        request = request.encryption_configuration(encryption);
    }
    for (key, value) in &wanted.tags {
        let tag = Tag::builder()
            .key(key)
            .value(value)
            .build()
            .map_err(|e| AwsError::Invalid(format!("repository tag {key}: {e}")))?;
        request = request.tags(tag);
    }
    let repository = match request.send().await {
        Ok(output) => output.repository().cloned(),
        // Another job created it at the same moment: use it as it is.
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_repository_already_exists_exception()) =>
        {
            let existing =
                describe(ecr, registry_id, name)
                    .await?
                    .ok_or_else(|| AwsError::Api {
                        action: "ecr:CreateRepository".into(),
                        message: format!("{name} both exists and does not"),
                    })?;
            return existing_state(ecr, registry_id, name, &existing, wanted).await;
        }
        Err(error) => return Err(api_error("ecr:CreateRepository", Some(name), &error)),
    };
    if let Some(policy) = &wanted.lifecycle_policy {
        set_lifecycle_policy(ecr, registry_id, name, policy).await?;
    }
    Ok(RepositoryState {
        uri: repository
            .as_ref()
            .and_then(Repository::repository_uri)
            .unwrap_or_default()
            .to_owned(),
        created: true,
        mutability: repository
            .as_ref()
            .and_then(Repository::image_tag_mutability)
            .cloned()
            .unwrap_or(ImageTagMutability::Mutable),
        exclusion_filters: repository
            .as_ref()
            .map(exclusion_filters)
            .unwrap_or_default(),
        drift: Vec::new(),
        unchecked: Vec::new(),
        scan_on_push: wanted.scan_on_push.unwrap_or(false),
    })
}

fn mutability(value: TagMutability) -> ImageTagMutability {
    match value {
        TagMutability::Mutable => ImageTagMutability::Mutable,
        TagMutability::Immutable => ImageTagMutability::Immutable,
    }
}

fn encryption_configuration(
    wanted: &RepositorySettings,
) -> Result<Option<EncryptionConfiguration>, AwsError> {
    let kind = match (wanted.encryption, &wanted.kms_key) {
        (None, None) => return Ok(None),
        (Some(Encryption::Aes256), Some(_)) => {
            return Err(AwsError::Invalid(
                "--kms-key needs --encryption KMS, not AES256".into(),
            ));
        }
        (Some(Encryption::Aes256), None) => EncryptionType::Aes256,
        (Some(Encryption::Kms) | None, _) => EncryptionType::Kms,
    };
    EncryptionConfiguration::builder()
        .encryption_type(kind)
        .set_kms_key(wanted.kms_key.clone())
        .build()
        .map(Some)
        .map_err(|e| AwsError::Invalid(format!("encryption settings: {e}")))
}

fn exclusion_filters(repository: &Repository) -> Vec<String> {
    repository
        .image_tag_mutability_exclusion_filters()
        .iter()
        .map(|f| f.filter().to_owned())
        .collect()
}

async fn existing_state(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    name: &str,
    existing: &Repository,
    wanted: &RepositorySettings,
) -> Result<RepositoryState, AwsError> {
    let mut drift = Vec::new();
    let current_mutability = existing
        .image_tag_mutability()
        .cloned()
        .unwrap_or(ImageTagMutability::Mutable);
    if let Some(asked) = wanted.tag_mutability
        && mutability(asked) != current_mutability
    {
        drift.push(format!(
            "tag mutability is {} (asked: {})",
            current_mutability.as_str(),
            mutability(asked).as_str()
        ));
    }
    if let Some(asked) = wanted.scan_on_push {
        let current = existing
            .image_scanning_configuration()
            .is_some_and(ImageScanningConfiguration::scan_on_push);
        if current != asked {
            drift.push(format!("scan on push is {current} (asked: {asked})"));
        }
    }
    if let Some(asked) = encryption_configuration(wanted)? {
        let current = existing.encryption_configuration();
        let current_type = current.map_or("AES256", |c| c.encryption_type().as_str());
        if current_type != asked.encryption_type().as_str()
            || (asked.kms_key().is_some()
                && current.and_then(EncryptionConfiguration::kms_key) != asked.kms_key())
        {
            drift.push(format!(
                "encryption is {current_type}{} (asked: {}{}); encryption cannot change after creation",
                current.and_then(EncryptionConfiguration::kms_key).map(|k| format!(" with {k}")).unwrap_or_default(),
                asked.encryption_type().as_str(),
                asked.kms_key().map(|k| format!(" with {k}")).unwrap_or_default(),
            ));
        }
    }
    // Reading tags and the lifecycle policy needs permissions a push does not: without them
    // the push goes on, and the user learns which comparison was skipped and why.
    let mut unchecked = Vec::new();
    if !wanted.tags.is_empty()
        && let Some(arn) = existing.repository_arn()
    {
        let listed = ecr
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(|e| api_error("ecr:ListTagsForResource", Some(name), &e));
        if let Some(output) = optional_read(listed, "the resource tags", &mut unchecked)? {
            for (key, value) in &wanted.tags {
                let current = output
                    .tags()
                    .iter()
                    .find(|t| t.key() == key)
                    .map(Tag::value);
                if current != Some(value.as_str()) {
                    drift.push(format!(
                        "resource tag {key} is {} (asked: {value})",
                        current.map_or_else(|| "not set".to_owned(), |v| format!("{v:?}"))
                    ));
                }
            }
        }
    }
    if let Some(asked) = &wanted.lifecycle_policy {
        let read = lifecycle_policy(ecr, registry_id, name).await;
        if let Some(current) = optional_read(read, "the lifecycle policy", &mut unchecked)?
            && !same_json(current.as_deref(), asked)
        {
            drift.push(if current.is_some() {
                "the lifecycle policy differs from the one given".to_owned()
            } else {
                "the repository has no lifecycle policy".to_owned()
            });
        }
    }
    Ok(RepositoryState {
        uri: existing.repository_uri().unwrap_or_default().to_owned(),
        created: false,
        mutability: current_mutability,
        exclusion_filters: exclusion_filters(existing),
        drift,
        unchecked,
        scan_on_push: existing
            .image_scanning_configuration()
            .is_some_and(ImageScanningConfiguration::scan_on_push),
    })
}

/// A read done only to report drift: access denied is noted in `unchecked` (naming the IAM
/// action to grant) and gives `None`; any other error is one.
fn optional_read<T>(
    read: Result<T, AwsError>,
    what: &str,
    unchecked: &mut Vec<String>,
) -> Result<Option<T>, AwsError> {
    match read {
        Ok(value) => Ok(Some(value)),
        Err(AwsError::AccessDenied { action, .. }) => {
            unchecked.push(format!(
                "could not compare {what} of the existing repository with what was asked: AWS \
                 denied {action}; grant `{action}` to have differences reported"
            ));
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// The repository's lifecycle policy text, if it has one.
pub async fn lifecycle_policy(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    name: &str,
) -> Result<Option<String>, AwsError> {
    match ecr
        .get_lifecycle_policy()
        .registry_id(registry_id)
        .repository_name(name)
        .send()
        .await
    {
        Ok(output) => Ok(output.lifecycle_policy_text().map(str::to_owned)),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_lifecycle_policy_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(error) => Err(api_error("ecr:GetLifecyclePolicy", Some(name), &error)),
    }
}

/// Applies a lifecycle policy.
pub async fn set_lifecycle_policy(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    name: &str,
    policy: &str,
) -> Result<(), AwsError> {
    ecr.put_lifecycle_policy()
        .registry_id(registry_id)
        .repository_name(name)
        .lifecycle_policy_text(policy)
        .send()
        .await
        .map_err(|e| api_error("ecr:PutLifecyclePolicy", Some(name), &e))?;
    Ok(())
}

/// Pages of `DescribeImages` read to find the newest images (1000 images a page).
const MAX_IMAGE_PAGES: usize = 5;

/// Digests of the most recently pushed images of a repository, newest first, at most `limit`.
/// In CI every push has a new SHA tag, so the previous commit's image, the one most likely to
/// share layers, is found by push time, not by tag.
pub async fn recent_images(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    name: &str,
    limit: usize,
) -> Result<Vec<String>, AwsError> {
    let mut images = Vec::new();
    let mut next_token = None;
    for _ in 0..MAX_IMAGE_PAGES {
        let output = ecr
            .describe_images()
            .registry_id(registry_id)
            .repository_name(name)
            .max_results(1000)
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|e| api_error("ecr:DescribeImages", Some(name), &e))?;
        images.extend(output.image_details().iter().filter_map(|image| {
            Some((
                image.image_pushed_at()?.as_secs_f64(),
                image.image_digest()?.to_owned(),
            ))
        }));
        next_token = output.next_token().map(str::to_owned);
        if next_token.is_none() {
            break;
        }
    }
    images.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(images
        .into_iter()
        .take(limit)
        .map(|(_, digest)| digest)
        .collect())
}

/// JSON documents compared by value (ECR re-serialises policies).
fn same_json(current: Option<&str>, asked: &str) -> bool {
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
    match (current.and_then(parse), parse(asked)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recent_images_are_newest_first() {
        use aws_sdk_ecr::operation::describe_images::DescribeImagesOutput;
        use aws_sdk_ecr::types::ImageDetail;
        use aws_smithy_mocks::{mock, mock_client};
        let image = |digest: &str, pushed: i64| {
            ImageDetail::builder()
                .image_digest(digest)
                .image_pushed_at(aws_sdk_ecr::primitives::DateTime::from_secs(pushed))
                .build()
        };
        let first_page = mock!(aws_sdk_ecr::Client::describe_images)
            .match_requests(|r| r.next_token().is_none())
            .then_output(move || {
                DescribeImagesOutput::builder()
                    .image_details(image("sha256:old", 100))
                    .image_details(image("sha256:newest", 300))
                    .next_token("page-2")
                    .build()
            });
        let second_page = mock!(aws_sdk_ecr::Client::describe_images)
            .match_requests(|r| r.next_token() == Some("page-2"))
            .then_output(move || {
                DescribeImagesOutput::builder()
                    .image_details(image("sha256:middle", 200))
                    .build()
            });
        let ecr = mock_client!(aws_sdk_ecr, [&first_page, &second_page]);
        let recent = recent_images(&ecr, "123456789012", "team/app", 2)
            .await
            .unwrap();
        assert_eq!(recent, vec!["sha256:newest", "sha256:middle"]);
    }

    #[tokio::test]
    async fn drift_checks_the_role_may_not_read_are_warnings_not_failures() {
        use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesOutput;
        use aws_sdk_ecr::operation::get_lifecycle_policy::GetLifecyclePolicyError;
        use aws_sdk_ecr::operation::list_tags_for_resource::ListTagsForResourceError;
        use aws_smithy_mocks::{RuleMode, mock, mock_client};
        let denied = |action: &str| {
            aws_sdk_ecr::error::ErrorMetadata::builder()
                .code("AccessDeniedException")
                .message(format!(
                    "User: arn:aws:sts::123456789012:assumed-role/ci/s is not authorized to \
                     perform: {action}"
                ))
                .build()
        };
        let describe = mock!(aws_sdk_ecr::Client::describe_repositories).then_output(|| {
            DescribeRepositoriesOutput::builder()
                .repositories(
                    Repository::builder()
                        .repository_name("team/app")
                        .repository_arn("arn:aws:ecr:eu-west-1:123456789012:repository/team/app")
                        .repository_uri("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app")
                        .image_tag_mutability(ImageTagMutability::Mutable)
                        .build(),
                )
                .build()
        });
        let tags = mock!(aws_sdk_ecr::Client::list_tags_for_resource).then_error(move || {
            ListTagsForResourceError::generic(denied("ecr:ListTagsForResource"))
        });
        let lifecycle = mock!(aws_sdk_ecr::Client::get_lifecycle_policy)
            .then_error(move || GetLifecyclePolicyError::generic(denied("ecr:GetLifecyclePolicy")));
        let ecr = mock_client!(
            aws_sdk_ecr,
            RuleMode::MatchAny,
            [&describe, &tags, &lifecycle]
        );
        let wanted = RepositorySettings {
            create: true,
            tag_mutability: Some(TagMutability::Immutable),
            tags: vec![("team".into(), "platform".into())],
            lifecycle_policy: Some(r#"{"rules":[]}"#.into()),
            ..RepositorySettings::default()
        };
        let state = ensure(&ecr, "123456789012", "team/app", &wanted)
            .await
            .expect("the push goes on");
        assert_eq!(tags.num_calls(), 1);
        assert_eq!(lifecycle.num_calls(), 1);
        // What could be compared still is.
        assert_eq!(
            state.drift,
            ["tag mutability is MUTABLE (asked: IMMUTABLE)"]
        );
        assert_eq!(state.unchecked.len(), 2, "{:?}", state.unchecked);
        assert!(
            state.unchecked[0].starts_with("could not compare the resource tags")
                && state.unchecked[0].contains("grant `ecr:ListTagsForResource`"),
            "{}",
            state.unchecked[0]
        );
        assert!(
            state.unchecked[1].starts_with("could not compare the lifecycle policy")
                && state.unchecked[1].contains("grant `ecr:GetLifecyclePolicy`"),
            "{}",
            state.unchecked[1]
        );
    }

    #[test]
    fn wildcards_match_like_ecr_exclusion_filters() {
        assert!(wildcard_match("latest", "latest"));
        assert!(!wildcard_match("latest", "latest2"));
        assert!(wildcard_match("dev-*", "dev-123"));
        assert!(wildcard_match("*-snapshot", "1.0-snapshot"));
        assert!(wildcard_match("a*b*c", "a-x-b-y-c"));
        assert!(!wildcard_match("a*b*c", "a-x-c"));
        assert!(wildcard_match("*", "anything"));
    }

    #[test]
    fn immutability_follows_mode_and_filters() {
        let state = |mutability, filters: &[&str]| RepositoryState {
            uri: String::new(),
            created: false,
            mutability,
            exclusion_filters: filters.iter().map(|s| (*s).to_owned()).collect(),
            drift: Vec::new(),
            unchecked: Vec::new(),
            scan_on_push: false,
        };
        assert!(state(ImageTagMutability::Immutable, &[]).is_immutable("v1"));
        assert!(!state(ImageTagMutability::Mutable, &[]).is_immutable("v1"));
        let with_exclusion = state(ImageTagMutability::ImmutableWithExclusion, &["latest"]);
        assert!(with_exclusion.is_immutable("v1"));
        assert!(!with_exclusion.is_immutable("latest"));
        let mutable_with_exclusion =
            state(ImageTagMutability::MutableWithExclusion, &["release-*"]);
        assert!(mutable_with_exclusion.is_immutable("release-1"));
        assert!(!mutable_with_exclusion.is_immutable("dev"));
    }

    #[test]
    fn policies_compare_by_value() {
        assert!(same_json(
            Some(r#"{"rules": [1, 2]}"#),
            r#"{"rules":[1,2]}"#
        ));
        assert!(!same_json(Some(r#"{"rules": [1]}"#), r#"{"rules":[1,2]}"#));
        assert!(!same_json(None, "{}"));
    }
}
