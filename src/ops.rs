//! Repository operations beyond the push: promotion (`tag`), `status`, `images`, `cleanup` and
//! `lifecycle`, with the same credential chain as `push`.
//!
//! Promotion uses the registry API, like the push: the manifest is read with every media type
//! accepted and put back byte for byte under the new tags (for ECR this is what `PutImage`
//! does), so the digest cannot change. Across repositories, blobs are mounted when the registry
//! allows it and copied (through a temporary file, digest-checked) otherwise.

use std::collections::{HashMap, HashSet};
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
use crate::settings::{EcrCommandSettings, EcrTarget, UsageError};
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
    /// Deleted (or, with `--dry-run`, to be deleted): the images the rules chose, and what only
    /// they refer to (an index's platform and attestation manifests, nested indexes).
    pub deleted: Vec<ImageInfo>,
    /// Referred to by a chosen image, but kept because an image that stays refers to them too.
    pub protected: Vec<String>,
    /// Not deleted: what ECR refused, and what a refused image refers to.
    pub failures: Vec<images::DeleteFailure>,
}

impl CleanupReport {
    /// A cleanup that left images it should have deleted failed (exit code 1), even though
    /// its report is printed.
    pub fn verdict(&self) -> Result<(), Failure> {
        if self.failures.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = self
            .failures
            .iter()
            .map(|f| match &f.code {
                Some(code) => format!("{} ({code}: {})", f.digest, f.reason),
                None => format!("{} ({})", f.digest, f.reason),
            })
            .collect();
        Err(Failure::Incomplete(format!(
            "cleanup of {} deleted {} image(s) but could not delete {}: {}",
            self.repository,
            self.deleted.len(),
            self.failures.len(),
            listed.join("; ")
        )))
    }
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

/// What a cleanup deletes, in the order it must: an image before what it refers to (ECR
/// refuses to delete a manifest an index still lists, failure `ImageReferencedByManifestList`,
/// <https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_ImageFailure.html>).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct CleanupPlan {
    /// Levels: every image of a level is referred to only by images of earlier levels.
    pub levels: Vec<Vec<ImageInfo>>,
    pub protected: Vec<String>,
}

/// Plans a cleanup over a repository's images (`all`, newest first) and what each index refers
/// to (`children`).
///
/// The rules count and age *roots* only: images no other image refers to (a tagged image or
/// index, an orphaned untagged manifest). An index's platform and attestation manifests (and a
/// nested index's) are untagged images in ECR, but they are parts of their root: they go with
/// it, and stay while any root that stays refers to them, however deep.
pub(crate) fn plan_cleanup(
    all: &[ImageInfo],
    children: &HashMap<String, Vec<String>>,
    rules: &CleanupRules,
    now: f64,
) -> CleanupPlan {
    let present: HashSet<&str> = all.iter().map(|i| i.digest.as_str()).collect();
    let referenced: HashSet<&str> = children
        .values()
        .flatten()
        .map(String::as_str)
        .filter(|d| present.contains(d))
        .collect();
    let roots: Vec<ImageInfo> = all
        .iter()
        .filter(|image| !referenced.contains(image.digest.as_str()))
        .cloned()
        .collect();
    let considered: Vec<ImageInfo> = roots
        .iter()
        .filter(|image| !rules.untagged_only || image.tags.is_empty())
        .cloned()
        .collect();
    let selected: HashSet<String> = select_for_deletion(&considered, rules, now)
        .into_iter()
        .map(|i| i.digest)
        .collect();
    let kept = closure(
        roots
            .iter()
            .filter(|r| !selected.contains(&r.digest))
            .map(|r| r.digest.as_str()),
        children,
    );
    let reached = closure(selected.iter().map(String::as_str), children);
    let mut protected: Vec<String> = reached
        .iter()
        .filter(|d| kept.contains(*d) && present.contains(d.as_str()))
        .cloned()
        .collect();
    protected.sort();
    let mut doomed: HashSet<String> = reached
        .into_iter()
        .filter(|d| !kept.contains(d) && present.contains(d.as_str()))
        .collect();

    // Parents first: a level holds what no remaining doomed image refers to.
    let mut levels = Vec::new();
    while !doomed.is_empty() {
        let still_referred: HashSet<&String> = doomed
            .iter()
            .filter_map(|d| children.get(d))
            .flatten()
            .collect();
        let mut level: Vec<ImageInfo> = all
            .iter()
            .filter(|i| doomed.contains(&i.digest) && !still_referred.contains(&i.digest))
            .cloned()
            .collect();
        if level.is_empty() {
            // Content addressing makes cycles impossible; should a broken listing show one,
            // delete the rest together rather than loop.
            level = all
                .iter()
                .filter(|i| doomed.contains(&i.digest))
                .cloned()
                .collect();
        }
        for image in &level {
            doomed.remove(&image.digest);
        }
        levels.push(level);
    }
    CleanupPlan { levels, protected }
}

/// Every digest reachable from `start` through `children`, `start` included.
fn closure<'a>(
    start: impl IntoIterator<Item = &'a str>,
    children: &HashMap<String, Vec<String>>,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut stack: Vec<String> = start.into_iter().map(str::to_owned).collect();
    while let Some(digest) = stack.pop() {
        if let Some(refs) = children.get(&digest) {
            stack.extend(refs.iter().filter(|r| !seen.contains(*r)).cloned());
        }
        seen.insert(digest);
    }
    seen
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
    let indexes: Vec<String> = all
        .iter()
        .filter(|image| image.is_index())
        .map(|image| image.digest.clone())
        .collect();
    let children = images::index_children(ecr, &ctx.registry_id, repository, &indexes).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let plan = plan_cleanup(&all, &children, rules, now);
    let (deleted, failures) = if rules.dry_run {
        (plan.levels.into_iter().flatten().collect(), Vec::new())
    } else {
        execute_cleanup(ecr, &ctx.registry_id, repository, plan.levels, &children).await?
    };
    Ok(CleanupReport {
        repository: repository.to_owned(),
        dry_run: rules.dry_run,
        deleted,
        protected: plan.protected,
        failures,
    })
}

/// Deletes level by level. What an image that could not be deleted refers to is not deleted
/// either: it is still in use.
pub(crate) async fn execute_cleanup(
    ecr: &aws_sdk_ecr::Client,
    registry_id: &str,
    repository: &str,
    levels: Vec<Vec<ImageInfo>>,
    children: &HashMap<String, Vec<String>>,
) -> Result<(Vec<ImageInfo>, Vec<images::DeleteFailure>), AwsError> {
    let mut deleted = Vec::new();
    let mut failures: Vec<images::DeleteFailure> = Vec::new();
    for level in levels {
        let in_use: HashMap<&String, &String> = failures
            .iter()
            .flat_map(|f| {
                children
                    .get(&f.digest)
                    .into_iter()
                    .flatten()
                    .map(move |child| (child, &f.digest))
            })
            .collect();
        let (blocked, to_delete): (Vec<ImageInfo>, Vec<ImageInfo>) = level
            .into_iter()
            .partition(|image| in_use.contains_key(&image.digest));
        let blocked: Vec<images::DeleteFailure> = blocked
            .into_iter()
            .map(|image| images::DeleteFailure {
                reason: format!("not deleted: {} still refers to it", in_use[&image.digest]),
                digest: image.digest,
                code: None,
            })
            .collect();
        if !to_delete.is_empty() {
            let digests: Vec<String> = to_delete.iter().map(|i| i.digest.clone()).collect();
            let refused = images::delete(ecr, registry_id, repository, &digests).await?;
            let refused_digests: HashSet<&str> =
                refused.iter().map(|f| f.digest.as_str()).collect();
            deleted.extend(
                to_delete
                    .into_iter()
                    .filter(|i| !refused_digests.contains(i.digest.as_str())),
            );
            failures.extend(refused);
        }
        failures.extend(blocked);
    }
    Ok((deleted, failures))
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
    /// Blobs the registry mounted from the source repository (no data moved).
    pub blobs_mounted: u64,
    /// Blobs downloaded and uploaded again, where the registry would not mount them.
    pub blobs_copied: u64,
}

/// How the blobs of a promotion across repositories got there.
#[derive(Debug, Default)]
struct CopyStats {
    mounted: u64,
    copied: u64,
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
    // The image's own repository is never created here: a typo in its name must not make a
    // repository. Another target repository is, when --create-repository allows it.
    let state = if target == source_repository {
        aws::repository::ensure(
            &ctx.session.ecr,
            &ctx.registry_id,
            &target,
            &aws::repository::RepositorySettings::default(),
        )
        .await
        .map_err(|error| match error {
            AwsError::RepositoryMissing {
                repository,
                registry_id,
            } => Failure::from(UsageError(format!(
                "repository {repository} does not exist in registry {registry_id}; check the \
                 name of the image to tag"
            ))),
            other => other.into(),
        })?
    } else {
        aws::repository::ensure(
            &ctx.session.ecr,
            &ctx.registry_id,
            &target,
            &settings.target.repository,
        )
        .await?
    };
    let client = ctx.registry(settings).await?;

    let document = fetch_document(&client, &source_repository, &reference).await?;
    let mut copy = CopyStats::default();
    if target != source_repository {
        copy_content(
            &client,
            &source_repository,
            &target,
            &document,
            &reporter,
            &mut copy,
        )
        .await?;
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
        blobs_mounted: copy.mounted,
        blobs_copied: copy.copied,
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

/// Makes every blob and child manifest of `document` exist in `to`, counting how.
async fn copy_content(
    client: &Client,
    from: &str,
    to: &str,
    document: &Document,
    reporter: &Arc<dyn Reporter>,
    stats: &mut CopyStats,
) -> Result<(), Failure> {
    if document.media_type == OCI_INDEX || document.media_type == DOCKER_MANIFEST_LIST {
        let index = OciIndex::from_reader(&document.bytes[..])
            .map_err(|e| SourceError::Invalid(format!("{from}: not an image index: {e}")))?;
        for child in index.manifests() {
            let child_document = fetch_document(client, from, child.digest().as_ref()).await?;
            Box::pin(copy_content(
                client,
                from,
                to,
                &child_document,
                reporter,
                stats,
            ))
            .await?;
            client
                .put_manifest(to, child.digest().as_ref(), &child_document)
                .await?;
        }
        return Ok(());
    }
    let manifest = OciManifest::from_reader(&document.bytes[..])
        .map_err(|e| SourceError::Invalid(format!("{from}: not an image manifest: {e}")))?;
    for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let digest = descriptor.digest();
        if client.blob_size(to, digest).await? == Some(descriptor.size()) {
            continue;
        }
        // ECR mounts only when the registry has blob mounting enabled, within one registry,
        // between repositories with the same encryption; otherwise it answers 202, a plain
        // upload session, and the blob is copied.
        // (<https://docs.aws.amazon.com/AmazonECR/latest/userguide/blob-mounting.html>)
        if client.mount_blob(to, digest, from).await? {
            stats.mounted += 1;
            continue;
        }
        copy_blob(client, from, to, descriptor, reporter).await?;
        stats.copied += 1;
    }
    Ok(())
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

    fn rules(keep: Option<usize>, older: Option<u64>, untagged: bool) -> CleanupRules {
        CleanupRules {
            keep,
            older_than_days: older,
            untagged_only: untagged,
            dry_run: false,
        }
    }

    fn children(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(parent, kids)| {
                (
                    (*parent).to_owned(),
                    kids.iter().map(|k| (*k).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn levels(plan: &CleanupPlan) -> Vec<Vec<&str>> {
        plan.levels
            .iter()
            .map(|level| {
                let mut digests: Vec<&str> = level.iter().map(|i| i.digest.as_str()).collect();
                digests.sort_unstable();
                digests
            })
            .collect()
    }

    /// A newer multi-platform image `new` (index → amd64, s390x) and an older one `old` whose
    /// index is nested (old → inner → amd64, arm64), sharing amd64; and an old orphan.
    fn repository() -> (Vec<ImageInfo>, HashMap<String, Vec<String>>) {
        let all = vec![
            image("new", 1.0, true),
            image("amd64", 1.0, false),
            image("s390x", 1.0, false),
            image("old", 5.0, true),
            image("inner", 5.0, false),
            image("arm64", 5.0, false),
            image("orphan", 9.0, false),
        ];
        let graph = children(&[
            ("new", &["amd64", "s390x"]),
            ("old", &["inner"]),
            ("inner", &["amd64", "arm64"]),
        ]);
        (all, graph)
    }

    #[test]
    fn keep_counts_whole_images_and_parts_follow_their_root() {
        let (all, graph) = repository();
        let plan = plan_cleanup(&all, &graph, &rules(Some(1), None, false), 1_000_000.0);
        // `old` and the orphan go, each index before what it lists; amd64 stays for `new`.
        assert_eq!(
            levels(&plan),
            vec![vec!["old", "orphan"], vec!["inner"], vec!["arm64"]]
        );
        assert_eq!(plan.protected, vec!["amd64"]);
    }

    #[test]
    fn untagged_means_untagged_roots_not_the_parts_of_a_kept_index() {
        let (all, graph) = repository();
        let plan = plan_cleanup(&all, &graph, &rules(None, Some(0), true), 1_000_000.0);
        assert_eq!(levels(&plan), vec![vec!["orphan"]]);
        assert!(plan.protected.is_empty());
        // Nothing old enough: nothing at all.
        let plan = plan_cleanup(&all, &graph, &rules(None, Some(30), false), 1_000_000.0);
        assert_eq!(plan, CleanupPlan::default());
    }

    #[tokio::test]
    async fn what_ecr_refuses_to_delete_is_reported_and_its_parts_are_kept() {
        use aws_sdk_ecr::operation::batch_delete_image::BatchDeleteImageOutput;
        use aws_sdk_ecr::types::{ImageFailure, ImageFailureCode, ImageIdentifier};
        use aws_smithy_mocks::{mock, mock_client};

        let (all, graph) = repository();
        let plan = plan_cleanup(&all, &graph, &rules(Some(1), None, false), 1_000_000.0);
        // ECR deletes the orphan but refuses `old`.
        let delete = mock!(aws_sdk_ecr::Client::batch_delete_image).then_output(|| {
            BatchDeleteImageOutput::builder()
                .image_ids(ImageIdentifier::builder().image_digest("orphan").build())
                .failures(
                    ImageFailure::builder()
                        .image_id(ImageIdentifier::builder().image_digest("old").build())
                        .failure_code(ImageFailureCode::ImageReferencedByManifestList)
                        .failure_reason("in use")
                        .build(),
                )
                .build()
        });
        let ecr = mock_client!(aws_sdk_ecr, [&delete]);
        let (deleted, failures) = execute_cleanup(&ecr, "1", "r", plan.levels, &graph)
            .await
            .unwrap();
        assert_eq!(
            delete.num_calls(),
            1,
            "what `old` refers to is not even tried"
        );
        assert_eq!(
            deleted
                .iter()
                .map(|i| i.digest.as_str())
                .collect::<Vec<_>>(),
            vec!["orphan"]
        );
        let failed: Vec<(&str, Option<&str>)> = failures
            .iter()
            .map(|f| (f.digest.as_str(), f.code.as_deref()))
            .collect();
        assert_eq!(
            failed,
            vec![
                ("old", Some("ImageReferencedByManifestList")),
                ("inner", None),
                ("arm64", None)
            ]
        );
        let report = CleanupReport {
            repository: "r".into(),
            dry_run: false,
            deleted,
            protected: plan.protected,
            failures,
        };
        let failure = report.verdict().unwrap_err();
        assert_eq!(failure.exit_code(), crate::app::exit::FAILED);
        assert!(
            failure.to_string().contains("could not delete 3"),
            "{failure}"
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
