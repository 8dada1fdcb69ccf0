//! Pushes a [`SourceImage`](crate::source::SourceImage) in referential order: every blob once
//! (skipping what the registry has), in parallel up to `jobs`; then each manifest once its blobs
//! exist; then an index once its manifests exist; then the tags.
//!
//! Every byte sent is hashed on the way; a blob is committed only when what was sent is what the
//! image says it is (digest and size, or for compressed-on-the-fly layers the uncompressed
//! digest, the `diff_id`). A corrupt source therefore never becomes a tagged image.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt as _, TryStreamExt as _};
use oci_spec::image::{DescriptorBuilder, Digest, ImageManifestBuilder, MediaType};

use crate::blob::{self, BlobSource, Compression, Streamed};
use crate::registry::{Client, RegistryError, UploadBody, UploadError};
use crate::report::{Event, Reporter};
use crate::reuse::KnownLayers;
use crate::source::{
    Blob, Document, ImageIndex, ImageManifest, ImageNode, Layer, ManifestSource, OCI_MANIFEST,
    SourceError,
};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The source turned out to be corrupt while it was streamed (exit code 2).
    #[error(transparent)]
    Source(#[from] SourceError),
}

#[derive(Clone, Debug)]
pub struct PushOptions {
    pub tags: Vec<String>,
    pub jobs: usize,
    pub compression: Compression,
}

/// A blob as it is in the registry after the push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedBlob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// Foreign layers are referenced but not stored in the registry.
    pub foreign: bool,
}

#[derive(Clone, Debug)]
pub struct PushedManifest {
    pub document: Document,
    pub config: PushedBlob,
    pub layers: Vec<PushedBlob>,
    pub diff_ids: Vec<Digest>,
    pub platform: Option<String>,
}

#[derive(Clone, Debug)]
pub enum PushedNode {
    Manifest(PushedManifest),
    Index {
        document: Document,
        children: Vec<PushedNode>,
    },
}

impl PushedNode {
    pub fn document(&self) -> &Document {
        match self {
            Self::Manifest(manifest) => &manifest.document,
            Self::Index { document, .. } => document,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PushStats {
    pub blobs_uploaded: u64,
    pub blobs_skipped: u64,
    pub bytes_uploaded: u64,
    /// Layers compressed on the way out (those the registry did not have already).
    pub layers_compressed: u64,
}

#[derive(Clone, Debug)]
pub struct PushOutcome {
    pub root: PushedNode,
    pub stats: PushStats,
    /// `diff_id` → compressed blob of every layer compressed here (for the local cache).
    pub compressed_layers: Vec<(Digest, PushedBlob)>,
}

/// Identity of a blob upload, for deduplication: stored blobs by digest; layers compressed here
/// by their uncompressed digest (the compressed digest is not known before compressing).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum BlobKey {
    Stored(Digest),
    Compressed(Digest),
}

enum BlobJob {
    Stored(Blob),
    Compress { source: BlobSource, diff_id: Digest },
}

pub struct Pusher<'a> {
    pub client: &'a Client,
    /// Compressed layers the repository already has, by `diff_id` (see `reuse`).
    pub known_layers: &'a KnownLayers,
    pub repository: &'a str,
    pub reporter: Arc<dyn Reporter>,
    pub options: &'a PushOptions,
}

impl Pusher<'_> {
    /// Pushes the image whose root is `root`: a source image's, perhaps with layers compressed
    /// already (see [`with_compressed`]).
    pub async fn push(&self, root: &ImageNode) -> Result<PushOutcome, PushError> {
        let mut jobs: Vec<(BlobKey, BlobJob)> = Vec::new();
        collect_jobs(root, &mut jobs);
        let stats = Stats::default();

        let results: HashMap<BlobKey, PushedBlob> = futures::stream::iter(jobs)
            .map(|(key, job)| {
                let stats = &stats;
                async move { Ok::<_, PushError>((key, self.push_blob(job, stats).await?)) }
            })
            .buffer_unordered(self.options.jobs.max(1))
            .try_collect()
            .await?;

        let root = self.push_documents(root, &results, true).await?;
        let compressed_layers = results
            .iter()
            .filter_map(|(key, blob)| match key {
                BlobKey::Compressed(diff_id) => Some((diff_id.clone(), blob.clone())),
                BlobKey::Stored(_) => None,
            })
            .collect();
        Ok(PushOutcome {
            root,
            stats: stats.snapshot(),
            compressed_layers,
        })
    }

    async fn push_blob(&self, job: BlobJob, stats: &Stats) -> Result<PushedBlob, PushError> {
        match job {
            BlobJob::Stored(blob) => self.push_stored(blob, stats).await,
            BlobJob::Compress { source, diff_id } => {
                self.push_compressed(source, diff_id, stats).await
            }
        }
    }

    /// Uploads one blob (unless the repository has it), checking its digest on the way.
    pub async fn push_blob_once(&self, blob: Blob) -> Result<PushedBlob, PushError> {
        self.push_stored(blob, &Stats::default()).await
    }

    async fn push_stored(&self, blob: Blob, stats: &Stats) -> Result<PushedBlob, PushError> {
        let pushed = PushedBlob {
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: blob.media_type.clone(),
            foreign: false,
        };
        let id = blob.digest.to_string();
        if self.client.blob_size(self.repository, &blob.digest).await? == Some(blob.size) {
            stats.skipped();
            self.reporter.event(&Event::BlobDone {
                id: &id,
                digest: &id,
                uploaded: None,
            });
            return Ok(pushed);
        }
        self.reporter.event(&Event::BlobStarted {
            id: &id,
            what: &short(&blob.digest),
            size: Some(blob.size),
        });
        let expected = blob::Measured {
            digest: blob.digest.clone(),
            size: blob.size,
        };
        let check = |streamed: &Streamed| {
            if streamed.sent == expected {
                Ok(())
            } else {
                Err(SourceError::DigestMismatch {
                    what: format!("blob {}", expected.digest),
                    expected: format!("{} ({} bytes)", expected.digest, expected.size),
                    found: format!("{} ({} bytes)", streamed.sent.digest, streamed.sent.size),
                })
            }
        };
        let streamed = self
            .upload(&id, &blob.source, None, Some(blob.size), &check)
            .await?;
        stats.uploaded(streamed.sent.size);
        self.reporter.event(&Event::BlobDone {
            id: &id,
            digest: &id,
            uploaded: Some(streamed.sent.size),
        });
        Ok(pushed)
    }

    async fn push_compressed(
        &self,
        source: BlobSource,
        diff_id: Digest,
        stats: &Stats,
    ) -> Result<PushedBlob, PushError> {
        let id = diff_id.to_string();
        let codec = self.options.compression;
        if let Some(known) = self.known_layers.get(&diff_id)
            && self
                .client
                .blob_size(self.repository, &known.digest)
                .await?
                == Some(known.size)
        {
            stats.skipped();
            let digest = known.digest.to_string();
            self.reporter.event(&Event::BlobDone {
                id: &id,
                digest: &digest,
                uploaded: None,
            });
            // The bytes are the same whichever gzip media type named them before.
            return Ok(PushedBlob {
                media_type: codec.layer_media_type().to_owned(),
                ..known.clone()
            });
        }
        self.reporter.event(&Event::BlobStarted {
            id: &id,
            what: &format!("layer {}", short(&diff_id)),
            size: None,
        });
        let check = |streamed: &Streamed| match &streamed.uncompressed {
            Some(found) if found.digest == diff_id => Ok(()),
            found => Err(SourceError::DigestMismatch {
                what: "a layer (its uncompressed digest, the config's rootfs.diff_ids entry)"
                    .into(),
                expected: diff_id.to_string(),
                found: found
                    .as_ref()
                    .map_or_else(String::new, |m| m.digest.to_string()),
            }),
        };
        let streamed = self.upload(&id, &source, Some(codec), None, &check).await?;
        stats.uploaded(streamed.sent.size);
        stats.compressed.fetch_add(1, Ordering::Relaxed);
        let digest = streamed.sent.digest.to_string();
        self.reporter.event(&Event::BlobDone {
            id: &id,
            digest: &digest,
            uploaded: Some(streamed.sent.size),
        });
        Ok(PushedBlob {
            digest: streamed.sent.digest,
            size: streamed.sent.size,
            media_type: codec.layer_media_type().to_owned(),
            foreign: false,
        })
    }

    /// Uploads `source` (optionally compressing it), reporting progress; `check` decides
    /// whether what streamed may be committed.
    async fn upload(
        &self,
        id: &str,
        source: &BlobSource,
        compression: Option<Compression>,
        length: Option<u64>,
        check: &(dyn Fn(&Streamed) -> Result<(), SourceError> + Sync),
    ) -> Result<Streamed, PushError> {
        let make_body = || {
            let body = blob::stream(source, compression);
            let reporter = Arc::clone(&self.reporter);
            let id = id.to_owned();
            let chunks = tokio_stream_from(body.chunks).inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    reporter.event(&Event::BlobProgress {
                        id: &id,
                        bytes: bytes.len() as u64,
                    });
                }
            });
            UploadBody {
                chunks: Box::pin(chunks),
                length,
                outcome: body.outcome,
            }
        };
        self.client
            .upload_blob(self.repository, &make_body, check)
            .await
            .map_err(|error| match error {
                UploadError::Registry(error) => PushError::Registry(error),
                UploadError::Refused(error) => PushError::Source(error),
                UploadError::Source(error) => PushError::Source(SourceError::Invalid(format!(
                    "cannot read a blob of the image: {error}"
                ))),
            })
    }

    /// Puts manifests bottom-up: children by digest, the root under every tag.
    async fn push_documents(
        &self,
        node: &ImageNode,
        blobs: &HashMap<BlobKey, PushedBlob>,
        is_root: bool,
    ) -> Result<PushedNode, PushError> {
        let pushed = match node {
            ImageNode::Manifest(manifest) => PushedNode::Manifest(build_manifest(manifest, blobs)?),
            ImageNode::Index(ImageIndex { document, children }) => {
                let mut pushed_children = Vec::with_capacity(children.len());
                for child in children {
                    pushed_children.push(Box::pin(self.push_documents(child, blobs, false)).await?);
                }
                PushedNode::Index {
                    document: document.clone(),
                    children: pushed_children,
                }
            }
        };
        let document = pushed.document();
        let digest = document.digest.to_string();
        let references: Vec<&str> = if is_root {
            self.options.tags.iter().map(String::as_str).collect()
        } else {
            vec![digest.as_str()]
        };
        for reference in references {
            self.client
                .put_manifest(self.repository, reference, document)
                .await?;
            self.reporter.event(&Event::ManifestPut {
                reference: &format!("{}:{reference}", self.repository),
                digest: &digest,
            });
        }
        Ok(pushed)
    }
}

/// Compresses the layers `which` (by `diff_id`), once each, into anonymous temporary files, so
/// the image can go to several registries without being compressed for each. The `diff_id`s
/// are checked on the way, as a streaming push would.
pub(crate) fn compress_layers(
    root: &ImageNode,
    which: &HashSet<Digest>,
    compression: Compression,
    temp_dir: &std::path::Path,
) -> Result<HashMap<Digest, Blob>, SourceError> {
    let mut sources = Vec::new();
    collect_uncompressed(root, &mut sources);
    let mut done: HashMap<Digest, Blob> = HashMap::new();
    for (diff_id, source) in sources {
        if which.contains(&diff_id) && !done.contains_key(&diff_id) {
            let blob = compress_to_temp(&source, &diff_id, compression, temp_dir)?;
            done.insert(diff_id, blob);
        }
    }
    Ok(done)
}

fn collect_uncompressed(node: &ImageNode, out: &mut Vec<(Digest, BlobSource)>) {
    match node {
        ImageNode::Index(index) => {
            for child in &index.children {
                collect_uncompressed(child, out);
            }
        }
        ImageNode::Manifest(manifest) => {
            for layer in &manifest.layers {
                if let Layer::Uncompressed { source, diff_id } = layer {
                    out.push((diff_id.clone(), source.clone()));
                }
            }
        }
    }
}

/// The image with the layers in `compressed` as stored blobs, except those `known` says the
/// destination has already: those stay as they are, so the push reuses the registry's blob
/// (which may have been compressed differently) instead of uploading another.
pub(crate) fn with_compressed(
    node: &ImageNode,
    compressed: &HashMap<Digest, Blob>,
    known: &KnownLayers,
) -> ImageNode {
    match node {
        ImageNode::Index(index) => ImageNode::Index(ImageIndex {
            document: index.document.clone(),
            children: index
                .children
                .iter()
                .map(|child| with_compressed(child, compressed, known))
                .collect(),
        }),
        ImageNode::Manifest(manifest) => {
            let mut manifest = manifest.clone();
            for layer in &mut manifest.layers {
                if let Layer::Uncompressed { diff_id, .. } = layer
                    && known.get(diff_id).is_none()
                    && let Some(blob) = compressed.get(diff_id)
                {
                    *layer = Layer::Stored(blob.clone());
                }
            }
            ImageNode::Manifest(manifest)
        }
    }
}

impl From<&Blob> for PushedBlob {
    fn from(blob: &Blob) -> Self {
        Self {
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: blob.media_type.clone(),
            foreign: false,
        }
    }
}

fn compress_to_temp(
    source: &BlobSource,
    diff_id: &Digest,
    compression: Compression,
    temp_dir: &std::path::Path,
) -> Result<Blob, SourceError> {
    let failed = |e: std::io::Error| SourceError::Invalid(format!("cannot compress a layer: {e}"));
    let file = tempfile::tempfile_in(temp_dir).map_err(failed)?;
    let mut input = blob::HashingReader::new(source.open());
    let mut output = HashingWriter::new(std::io::BufWriter::new(&file));
    compression
        .compress_source(source, &mut input, &mut output)
        .map_err(failed)?;
    let written = output.finish().map_err(failed)?;
    let read = input.finish();
    if &read.digest != diff_id {
        return Err(SourceError::DigestMismatch {
            what: "a layer (its uncompressed digest, the config's rootfs.diff_ids entry)".into(),
            expected: diff_id.to_string(),
            found: read.digest.to_string(),
        });
    }
    Ok(Blob {
        digest: written.digest,
        size: written.size,
        media_type: compression.layer_media_type().to_owned(),
        source: BlobSource::FileRange {
            file: Arc::new(file),
            offset: 0,
            len: written.size,
        },
    })
}

/// Hashes and counts what is written through it.
pub(crate) struct HashingWriter<W: std::io::Write> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: sha2::Digest::new(),
            size: 0,
        }
    }

    pub(crate) fn finish(mut self) -> std::io::Result<blob::Measured> {
        self.inner.flush()?;
        let hex = hex::encode(sha2::Digest::finalize(self.hasher));
        Ok(blob::Measured {
            digest: format!("sha256:{hex}").parse().expect("a sha256 digest"),
            size: self.size,
        })
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The `diff_id`s of the layers that are compressed here (and so may be found in the registry or
/// the local cache by their `diff_id`).
pub fn uncompressed_diff_ids(node: &ImageNode) -> HashSet<Digest> {
    match node {
        ImageNode::Manifest(manifest) => manifest
            .layers
            .iter()
            .filter_map(|layer| match layer {
                Layer::Uncompressed { diff_id, .. } => Some(diff_id.clone()),
                _ => None,
            })
            .collect(),
        ImageNode::Index(index) => index
            .children
            .iter()
            .flat_map(uncompressed_diff_ids)
            .collect(),
    }
}

fn collect_jobs(node: &ImageNode, jobs: &mut Vec<(BlobKey, BlobJob)>) {
    let mut add = |key: BlobKey, job: BlobJob| {
        if !jobs.iter().any(|(existing, _)| *existing == key) {
            jobs.push((key, job));
        }
    };
    match node {
        ImageNode::Manifest(manifest) => {
            add(
                BlobKey::Stored(manifest.config.digest.clone()),
                BlobJob::Stored(manifest.config.clone()),
            );
            for layer in &manifest.layers {
                match layer {
                    Layer::Stored(blob) => add(
                        BlobKey::Stored(blob.digest.clone()),
                        BlobJob::Stored(blob.clone()),
                    ),
                    Layer::Uncompressed { source, diff_id } => add(
                        BlobKey::Compressed(diff_id.clone()),
                        BlobJob::Compress {
                            source: source.clone(),
                            diff_id: diff_id.clone(),
                        },
                    ),
                    Layer::Foreign { .. } => {}
                }
            }
        }
        ImageNode::Index(index) => {
            for child in &index.children {
                collect_jobs(child, jobs);
            }
        }
    }
}

/// The manifest as pushed: stored bytes as they are, or (legacy docker save) a new OCI manifest
/// over the compressed layers. Serialisation is deterministic, so a re-run gives the same digest.
fn build_manifest(
    manifest: &ImageManifest,
    blobs: &HashMap<BlobKey, PushedBlob>,
) -> Result<PushedManifest, PushError> {
    manifest_with(manifest, &|key| blobs.get(key).cloned())?.ok_or_else(|| {
        PushError::Source(SourceError::Invalid(
            "internal: a blob of the manifest has no upload result".into(),
        ))
    })
}

/// The digest the image will have once pushed, if it can be known before uploading: stored
/// documents have theirs; a generated manifest's is known when every layer is already in the
/// registry (`known`), since compression would give the same bytes.
pub fn predict_digest(
    root: &ImageNode,
    known: &KnownLayers,
    compression: Compression,
) -> Option<Digest> {
    match root {
        ImageNode::Index(index) => Some(index.document.digest.clone()),
        ImageNode::Manifest(manifest) => {
            let lookup = |key: &BlobKey| match key {
                BlobKey::Stored(digest) => stored_blob(manifest, digest),
                BlobKey::Compressed(diff_id) => known.get(diff_id).map(|blob| PushedBlob {
                    media_type: compression.layer_media_type().to_owned(),
                    ..blob.clone()
                }),
            };
            manifest_with(manifest, &lookup)
                .ok()
                .flatten()
                .map(|m| m.document.digest)
        }
    }
}

fn stored_blob(manifest: &ImageManifest, digest: &Digest) -> Option<PushedBlob> {
    std::iter::once(&manifest.config)
        .chain(manifest.layers.iter().filter_map(|layer| match layer {
            Layer::Stored(blob) => Some(blob),
            _ => None,
        }))
        .find(|blob| &blob.digest == digest)
        .map(|blob| PushedBlob {
            digest: blob.digest.clone(),
            size: blob.size,
            media_type: blob.media_type.clone(),
            foreign: false,
        })
}

/// The manifest given where each blob is (or will be) in the registry; `None` when `lookup`
/// does not know a blob.
fn manifest_with(
    manifest: &ImageManifest,
    lookup: &dyn Fn(&BlobKey) -> Option<PushedBlob>,
) -> Result<Option<PushedManifest>, SourceError> {
    let Some(config) = lookup(&BlobKey::Stored(manifest.config.digest.clone())) else {
        return Ok(None);
    };
    let layers = manifest
        .layers
        .iter()
        .map(|layer| match layer {
            Layer::Stored(blob) => lookup(&BlobKey::Stored(blob.digest.clone())),
            Layer::Uncompressed { diff_id, .. } => lookup(&BlobKey::Compressed(diff_id.clone())),
            Layer::Foreign { digest, size } => Some(PushedBlob {
                digest: digest.clone(),
                size: *size,
                media_type: String::new(),
                foreign: true,
            }),
        })
        .collect::<Option<Vec<_>>>();
    let Some(layers) = layers else {
        return Ok(None);
    };
    let document = match &manifest.manifest {
        ManifestSource::Stored(document) => document.clone(),
        ManifestSource::Generated => generate_manifest(&config, &layers)?,
    };
    Ok(Some(PushedManifest {
        document,
        config,
        layers,
        diff_ids: manifest.diff_ids.clone(),
        platform: manifest.platform.clone(),
    }))
}

fn generate_manifest(config: &PushedBlob, layers: &[PushedBlob]) -> Result<Document, SourceError> {
    let descriptor = |blob: &PushedBlob| {
        DescriptorBuilder::default()
            .media_type(MediaType::from(blob.media_type.as_str()))
            .digest(blob.digest.clone())
            .size(blob.size)
            .build()
    };
    let internal = |e: oci_spec::OciSpecError| {
        SourceError::Invalid(format!("internal: cannot build a manifest: {e}"))
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(config).map_err(internal)?)
        .layers(
            layers
                .iter()
                .map(descriptor)
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal)?,
        )
        .build()
        .map_err(internal)?;
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| SourceError::Invalid(format!("internal: cannot serialise a manifest: {e}")))?;
    Ok(Document {
        digest: blob::sha256_digest(&bytes),
        bytes: bytes.into(),
        media_type: OCI_MANIFEST.to_owned(),
    })
}

fn short(digest: &Digest) -> String {
    digest.digest().chars().take(12).collect()
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[derive(Default)]
struct Stats {
    uploaded: AtomicU64,
    skipped: AtomicU64,
    bytes: AtomicU64,
    compressed: AtomicU64,
}

impl Stats {
    fn uploaded(&self, bytes: u64) {
        self.uploaded.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> PushStats {
        PushStats {
            blobs_uploaded: self.uploaded.load(Ordering::Relaxed),
            blobs_skipped: self.skipped.load(Ordering::Relaxed),
            bytes_uploaded: self.bytes.load(Ordering::Relaxed),
            layers_compressed: self.compressed.load(Ordering::Relaxed),
        }
    }
}
