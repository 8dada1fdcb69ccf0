//! Repository operations beyond the push: promotion (`tag`), `status`, `images`, `cleanup` and
//! `lifecycle`, with the same credential chain as `push`.
//!
//! Promotion uses the registry API, like the push: the manifest is read with every media type
//! accepted and put back byte for byte under the new tags (for ECR this is what `PutImage`
//! does), so the digest cannot change. Across repositories, blobs are mounted when the registry
//! allows it and copied (through a temporary file, digest-checked) otherwise.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use oci_spec::image::{Digest, ImageIndex as OciIndex, ImageManifest as OciManifest};
use serde::Serialize;
use url::Url;

use crate::app::{Failure, check_immutable_tags};
use crate::aws::images::{self, ImageInfo, TagFilter};
use crate::aws::{self, Aws, AwsError, EcrCredentials, LoginTarget, Session};
use crate::blob::{self, BlobSource};
use crate::push::{HashingWriter, PushOptions, Pusher};
use crate::registry::{Client, RegistryError};
use crate::report::Reporter;
use crate::reuse::KnownLayers;
use crate::settings::{EcrCommandSettings, EcrTarget};
use crate::source::{Blob, DOCKER_MANIFEST_LIST, Document, OCI_INDEX, SourceError};

/// AWS credentials and the registry they are for.
pub struct EcrContext {
    pub aws: Arc<Aws>,
    pub session: Session,
    pub registry_id: String,
}

pub async fn context(target: &EcrTarget) -> Result<EcrContext, Failure> {
    if target.public {
        return Err(AwsError::Invalid(
            "this command works on private ECR registries, not ECR Public".into(),
        )
        .into());
    }
    let aws = Arc::new(Aws::load(target.aws.clone()).await?);
    let session = aws.session().await?;
    Ok(EcrContext {
        registry_id: session.account.clone(),
        aws,
        session,
    })
}

impl EcrContext {
    /// A registry client for this registry (or the `--registry` URL).
    async fn registry(&self, settings: &EcrCommandSettings) -> Result<Client, Failure> {
        let login = self.session.registry_login(&self.registry_id).await?;
        let url: Url = settings
            .target
            .registry_override
            .clone()
            .unwrap_or(login.endpoint);
        let provider = EcrCredentials::new(
            Arc::clone(&self.aws),
            LoginTarget::Private {
                registry_id: self.registry_id.clone(),
            },
            login.credentials,
        );
        Ok(Client::new(url, Box::new(provider), &settings.client)?)
    }
}

/// `status`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub repository: String,
    pub registry_id: String,
    pub exists: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag_mutability: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_on_push: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle_policy: Option<serde_json::Value>,
    pub image_count: usize,
    pub total_size: u64,
    pub newest: Vec<ImageInfo>,
}

pub async fn status(
    settings: &EcrCommandSettings,
    repository: &str,
    limit: usize,
) -> Result<StatusReport, Failure> {
    let ctx = context(&settings.target).await?;
    let ecr = &ctx.session.ecr;
    let Some(details) = aws::repository::describe(ecr, &ctx.registry_id, repository).await? else {
        return Ok(StatusReport {
            repository: repository.to_owned(),
            registry_id: ctx.registry_id,
            exists: false,
            uri: None,
            tag_mutability: None,
            scan_on_push: None,
            encryption: None,
            lifecycle_policy: None,
            image_count: 0,
            total_size: 0,
            newest: Vec::new(),
        });
    };
    let policy = aws::repository::lifecycle_policy(ecr, &ctx.registry_id, repository).await?;
    let all = images::list(ecr, &ctx.registry_id, repository, TagFilter::Any).await?;
    Ok(StatusReport {
        repository: repository.to_owned(),
        registry_id: ctx.registry_id.clone(),
        exists: true,
        uri: details.repository_uri().map(str::to_owned),
        tag_mutability: details
            .image_tag_mutability()
            .map(|m| m.as_str().to_owned()),
        scan_on_push: Some(
            details
                .image_scanning_configuration()
                .is_some_and(aws_sdk_ecr::types::ImageScanningConfiguration::scan_on_push),
        ),
        encryption: Some(
            details
                .encryption_configuration()
                .map_or("AES256".to_owned(), |e| {
                    e.encryption_type().as_str().to_owned()
                }),
        ),
        lifecycle_policy: policy.and_then(|text| serde_json::from_str(&text).ok()),
        image_count: all.len(),
        total_size: all.iter().map(|i| i.size).sum(),
        newest: all.into_iter().take(limit).collect(),
    })
}

/// `images`.
pub async fn list_images(
    settings: &EcrCommandSettings,
    repository: &str,
    filter: TagFilter,
    tag_prefix: Option<&str>,
) -> Result<Vec<ImageInfo>, Failure> {
    let ctx = context(&settings.target).await?;
    let mut images = images::list(&ctx.session.ecr, &ctx.registry_id, repository, filter)
        .await
        .map_err(|e| missing_repository(e, repository, &ctx.registry_id))?;
    if let Some(prefix) = tag_prefix {
        images.retain(|image| image.tags.iter().any(|t| t.starts_with(prefix)));
    }
    Ok(images)
}

fn missing_repository(error: AwsError, repository: &str, registry_id: &str) -> AwsError {
    match &error {
        AwsError::Api { message, .. } if message.contains("RepositoryNotFoundException") => {
            AwsError::RepositoryMissing {
                repository: repository.to_owned(),
                registry_id: registry_id.to_owned(),
            }
        }
        _ => error,
    }
}

/// What `cleanup` deletes.
#[derive(Clone, Debug)]
pub struct CleanupRules {
    pub keep: Option<usize>,
    pub older_than_days: Option<u64>,
    pub untagged_only: bool,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct CleanupReport {
    pub repository: String,
    pub dry_run: bool,
    /// Deleted (or, with `--dry-run`, to be deleted).
    pub deleted: Vec<ImageInfo>,
    /// Matched the rules but are referenced by an image index that stays.
    pub protected: Vec<String>,
    pub failures: Vec<(String, String)>,
}

#[allow(clippy::cast_precision_loss)] // whole days stay exact far beyond any retention period
fn days_in_seconds(days: u64) -> f64 {
    days.saturating_mul(86_400) as f64
}

/// Chooses what to delete: of the images considered (all, or untagged only), newest first,
/// those beyond the newest `keep` and/or older than `older_than`.
pub fn select_for_deletion(
    considered: &[ImageInfo],
    rules: &CleanupRules,
    now: f64,
) -> Vec<ImageInfo> {
    considered
        .iter()
        .enumerate()
        .filter(|(position, _)| rules.keep.is_none_or(|keep| *position >= keep))
        .filter(|(_, image)| {
            rules
                .older_than_days
                .is_none_or(|days| image.pushed_at < now - days_in_seconds(days))
        })
        .map(|(_, image)| image.clone())
        .collect()
}

pub async fn cleanup(
    settings: &EcrCommandSettings,
    repository: &str,
    rules: &CleanupRules,
) -> Result<CleanupReport, Failure> {
    let ctx = context(&settings.target).await?;
    let ecr = &ctx.session.ecr;
    let all = images::list(ecr, &ctx.registry_id, repository, TagFilter::Any)
        .await
        .map_err(|e| missing_repository(e, repository, &ctx.registry_id))?;
    let considered: Vec<ImageInfo> = all
        .iter()
        .filter(|image| !rules.untagged_only || image.tags.is_empty())
        .cloned()
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut selected = select_for_deletion(&considered, rules, now);

    // Never delete what a remaining index needs: its platform manifests are untagged images.
    let leaving: HashSet<&str> = selected.iter().map(|i| i.digest.as_str()).collect();
    let kept_indexes: Vec<String> = all
        .iter()
        .filter(|image| image.is_index() && !leaving.contains(image.digest.as_str()))
        .map(|image| image.digest.clone())
        .collect();
    let needed = images::index_children(ecr, &ctx.registry_id, repository, &kept_indexes).await?;
    let (protected, deletable): (Vec<ImageInfo>, Vec<ImageInfo>) = selected
        .drain(..)
        .partition(|image| needed.contains(&image.digest));

    let failures = if rules.dry_run || deletable.is_empty() {
        Vec::new()
    } else {
        let digests: Vec<String> = deletable.iter().map(|i| i.digest.clone()).collect();
        images::delete(ecr, &ctx.registry_id, repository, &digests).await?
    };
    Ok(CleanupReport {
        repository: repository.to_owned(),
        dry_run: rules.dry_run,
        deleted: deletable,
        protected: protected.into_iter().map(|i| i.digest).collect(),
        failures,
    })
}

/// `lifecycle`.
#[derive(Debug, Serialize)]
pub struct LifecycleReport {
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    pub applied: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiring: Option<Vec<images::Expiring>>,
}

pub async fn lifecycle(
    settings: &EcrCommandSettings,
    repository: &str,
    set: Option<&str>,
    preview: Option<Option<&str>>,
) -> Result<LifecycleReport, Failure> {
    let ctx = context(&settings.target).await?;
    let ecr = &ctx.session.ecr;
    let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
    if let Some(policy) = set {
        aws::repository::set_lifecycle_policy(ecr, &ctx.registry_id, repository, policy).await?;
        return Ok(LifecycleReport {
            repository: repository.to_owned(),
            policy: parse(policy),
            applied: true,
            expiring: None,
        });
    }
    if let Some(policy) = preview {
        let expiring = images::lifecycle_preview(
            ecr,
            &ctx.registry_id,
            repository,
            policy,
            Duration::from_secs(300),
        )
        .await?;
        return Ok(LifecycleReport {
            repository: repository.to_owned(),
            policy: policy.and_then(parse),
            applied: false,
            expiring: Some(expiring),
        });
    }
    let policy = aws::repository::lifecycle_policy(ecr, &ctx.registry_id, repository).await?;
    Ok(LifecycleReport {
        repository: repository.to_owned(),
        policy: policy.as_deref().and_then(parse),
        applied: false,
        expiring: None,
    })
}

/// `tag`.
#[derive(Debug, Serialize)]
pub struct TagReport {
    pub source: String,
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub tags: Vec<String>,
    pub image_ref: String,
    pub blobs_copied: u64,
}

/// `repository@sha256:…` or `repository:tag` → (repository, reference).
pub fn parse_image_reference(text: &str) -> Result<(String, String), SourceError> {
    let invalid = || {
        SourceError::Selection(format!(
            "{text:?} is not an image reference; write repository@sha256:… or repository:tag"
        ))
    };
    if let Some((repository, digest)) = text.split_once('@') {
        digest.parse::<Digest>().map_err(|_| invalid())?;
        return Ok((repository.to_owned(), digest.to_owned()));
    }
    let (repository, tag) = text
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .ok_or_else(invalid)?;
    Ok((repository.to_owned(), tag.to_owned()))
}

pub async fn tag(
    settings: &EcrCommandSettings,
    image: &str,
    target_repository: Option<&str>,
    tags: &[String],
    reporter: Arc<dyn Reporter>,
) -> Result<TagReport, Failure> {
    let (source_repository, reference) = parse_image_reference(image)?;
    let target = target_repository.unwrap_or(&source_repository).to_owned();
    crate::settings::validate_repository(&source_repository)?;
    crate::settings::validate_repository(&target)?;
    let ctx = context(&settings.target).await?;
    let state = aws::repository::ensure(
        &ctx.session.ecr,
        &ctx.registry_id,
        &target,
        &settings.target.repository,
    )
    .await?;
    let client = ctx.registry(settings).await?;

    let document = fetch_document(&client, &source_repository, &reference).await?;
    let mut copied = 0;
    if target != source_repository {
        copied = copy_content(&client, &source_repository, &target, &document, &reporter).await?;
    }
    let immutable: Vec<String> = tags
        .iter()
        .filter(|t| state.is_immutable(t))
        .cloned()
        .collect();
    let to_put = check_immutable_tags(
        &client,
        &target,
        tags,
        &immutable,
        Some(&document.digest),
        reporter.as_ref(),
    )
    .await?;
    for tag in &to_put {
        client.put_manifest(&target, tag, &document).await?;
    }
    for tag in tags {
        let served = fetch_document(&client, &target, tag).await?;
        if served.digest != document.digest {
            return Err(crate::verify::VerifyError::Mismatch {
                what: format!("{target}:{tag}"),
                expected: document.digest.to_string(),
                found: served.digest.to_string(),
            }
            .into());
        }
    }
    Ok(TagReport {
        source: format!("{source_repository}@{}", document.digest),
        image_ref: format!("{}/{target}@{}", client.host(), document.digest),
        repository: target,
        digest: document.digest.to_string(),
        media_type: document.media_type,
        tags: tags.to_vec(),
        blobs_copied: copied,
    })
}

async fn fetch_document(
    client: &Client,
    repository: &str,
    reference: &str,
) -> Result<Document, Failure> {
    let (bytes, media_type) = client
        .get_manifest(repository, reference)
        .await?
        .ok_or_else(|| {
            Failure::from(RegistryError::Protocol(format!(
                "{repository}:{reference} is not in the registry"
            )))
        })?;
    let digest = blob::sha256_digest(&bytes);
    if reference.starts_with("sha256:") && digest.as_ref() != reference {
        return Err(crate::verify::VerifyError::Mismatch {
            what: format!("manifest {repository}@{reference}"),
            expected: reference.to_owned(),
            found: digest.to_string(),
        }
        .into());
    }
    Ok(Document {
        bytes,
        media_type,
        digest,
    })
}

/// Makes every blob and child manifest of `document` exist in `to`. Returns the blobs copied.
async fn copy_content(
    client: &Client,
    from: &str,
    to: &str,
    document: &Document,
    reporter: &Arc<dyn Reporter>,
) -> Result<u64, Failure> {
    let mut copied = 0;
    if document.media_type == OCI_INDEX || document.media_type == DOCKER_MANIFEST_LIST {
        let index = OciIndex::from_reader(&document.bytes[..])
            .map_err(|e| SourceError::Invalid(format!("{from}: not an image index: {e}")))?;
        for child in index.manifests() {
            let child_document = fetch_document(client, from, child.digest().as_ref()).await?;
            copied += Box::pin(copy_content(client, from, to, &child_document, reporter)).await?;
            client
                .put_manifest(to, child.digest().as_ref(), &child_document)
                .await?;
        }
        return Ok(copied);
    }
    let manifest = OciManifest::from_reader(&document.bytes[..])
        .map_err(|e| SourceError::Invalid(format!("{from}: not an image manifest: {e}")))?;
    for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let digest = descriptor.digest();
        if client.blob_size(to, digest).await? == Some(descriptor.size())
            || client.mount_blob(to, digest, from).await?
        {
            continue;
        }
        copy_blob(client, from, to, descriptor, reporter).await?;
        copied += 1;
    }
    Ok(copied)
}

/// Copies one blob through an anonymous temporary file (no layer is held in memory), checking
/// its digest on the way down and on the way up.
async fn copy_blob(
    client: &Client,
    from: &str,
    to: &str,
    descriptor: &oci_spec::image::Descriptor,
    reporter: &Arc<dyn Reporter>,
) -> Result<(), Failure> {
    let mut response = client.get_blob(from, descriptor.digest()).await?;
    let file = tempfile::tempfile()
        .map_err(|e| Failure::Io(format!("cannot create a temporary file: {e}")))?;
    let mut writer = HashingWriter::new(std::io::BufWriter::new(&file));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| RegistryError::transport(&format!("download {}", descriptor.digest()), &e))?
    {
        std::io::Write::write_all(&mut writer, &chunk)
            .map_err(|e| Failure::Io(format!("cannot write a temporary file: {e}")))?;
    }
    let measured = writer
        .finish()
        .map_err(|e| Failure::Io(format!("cannot write a temporary file: {e}")))?;
    if &measured.digest != descriptor.digest() {
        return Err(crate::verify::VerifyError::Mismatch {
            what: format!("blob {} downloaded from {from}", descriptor.digest()),
            expected: descriptor.digest().to_string(),
            found: measured.digest.to_string(),
        }
        .into());
    }
    let options = PushOptions {
        tags: Vec::new(),
        jobs: 1,
        compression: blob::Compression::Gzip { level: 1 },
    };
    let known = KnownLayers::default();
    let pusher = Pusher {
        client,
        known_layers: &known,
        repository: to,
        reporter: Arc::clone(reporter),
        options: &options,
    };
    pusher
        .push_blob_once(Blob {
            digest: descriptor.digest().clone(),
            size: measured.size,
            media_type: descriptor.media_type().to_string(),
            source: BlobSource::FileRange {
                file: Arc::new(file),
                offset: 0,
                len: measured.size,
            },
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(digest: &str, age_days: f64, tagged: bool) -> ImageInfo {
        ImageInfo {
            digest: digest.into(),
            tags: if tagged {
                vec![format!("t-{digest}")]
            } else {
                Vec::new()
            },
            size: 1,
            pushed_at: 1_000_000.0 - age_days * 86_400.0,
            media_type: None,
            scan_status: None,
        }
    }

    #[test]
    fn keep_spares_the_newest_and_older_than_filters_by_age() {
        let images = [
            image("a", 1.0, true),
            image("b", 5.0, true),
            image("c", 40.0, true),
            image("d", 90.0, false),
        ];
        let rules = |keep, older| CleanupRules {
            keep,
            older_than_days: older,
            untagged_only: false,
            dry_run: true,
        };
        let digests =
            |selected: Vec<ImageInfo>| selected.into_iter().map(|i| i.digest).collect::<Vec<_>>();
        assert_eq!(
            digests(select_for_deletion(
                &images,
                &rules(Some(2), None),
                1_000_000.0
            )),
            vec!["c", "d"]
        );
        assert_eq!(
            digests(select_for_deletion(
                &images,
                &rules(None, Some(30)),
                1_000_000.0
            )),
            vec!["c", "d"]
        );
        assert_eq!(
            digests(select_for_deletion(
                &images,
                &rules(Some(3), Some(30)),
                1_000_000.0
            )),
            vec!["d"]
        );
    }

    #[test]
    fn image_references_parse() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_image_reference(&format!("team/app@{digest}")).unwrap(),
            ("team/app".into(), digest)
        );
        assert_eq!(
            parse_image_reference("team/app:v1").unwrap(),
            ("team/app".into(), "v1".into())
        );
        assert!(parse_image_reference("team/app").is_err());
        assert!(parse_image_reference("team/app@sha256:nope").is_err());
    }
}
