//! OCI image layouts (<https://github.com/opencontainers/image-spec/blob/main/image-layout.md>),
//! as a directory or inside a tar (oci-archive, Docker ≥ 25 `docker save`).
//!
//! Manifests and indexes are kept as the exact bytes found, so the pushed digest equals the
//! local one. Every document is checked against its digest when read; layers are checked while
//! they stream (see `push`).

use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex as OciIndex, ImageManifest as OciManifest};
use serde::Deserialize;

use super::store::Store;
use super::{
    Blob, ConfigSummary, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, Document, ImageIndex,
    ImageManifest, ImageNode, Layer, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, ManifestSource,
    OCI_INDEX, OCI_MANIFEST, PlatformSpec, Selection, SourceError, blob_path, choose_single,
    name_matches, read_verified,
};
use crate::blob::BlobSource;

/// Config media types of container images (as opposed to artifacts, whose config may be
/// anything).
const IMAGE_CONFIG_TYPES: [&str; 2] = [
    super::OCI_CONFIG,
    "application/vnd.docker.container.image.v1+json",
];

/// How deep indexes may nest (Docker 29 uses two levels); deeper means a broken or hostile input.
const MAX_INDEX_DEPTH: usize = 4;

const NAME_ANNOTATIONS: [&str; 2] = [
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];

#[derive(Deserialize)]
struct LayoutHeader {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

/// Reads the layout's `index.json` and resolves the selected image.
pub fn read(
    store: &Store,
    path: &Path,
    selection: &Selection,
) -> Result<(Option<String>, ImageNode), SourceError> {
    check_layout_header(store, path)?;
    let index_bytes = store.read_document("index.json", MAX_MANIFEST_BYTES)?;
    let index = parse_index(&index_bytes, "index.json")?;
    let entries = index.manifests();
    if entries.is_empty() {
        return Err(SourceError::Invalid(
            "index.json lists no images; the layout is empty".into(),
        ));
    }

    let chosen = choose_entry(entries, selection.image.as_deref())?;
    let resolver = Resolver {
        store,
        platform: selection.platform.as_ref(),
        single: selection.single_platform,
        runner: selection.runner_platform.as_ref(),
    };
    if let Some(entry) = chosen {
        let name = entry_names(entry).into_iter().next();
        return Ok((name, resolver.resolve(entry, 0)?));
    }
    // Several platform entries and no names: index.json itself is the multi-platform image.
    let document = Document {
        digest: crate::blob::sha256_digest(&index_bytes),
        bytes: index_bytes,
        media_type: index
            .media_type()
            .as_ref()
            .map_or_else(|| OCI_INDEX.to_owned(), ToString::to_string),
    };
    Ok((None, resolver.index_node(document, entries, 0)?))
}

fn check_layout_header(store: &Store, path: &Path) -> Result<(), SourceError> {
    let not_layout = |reason: String| SourceError::NotAnImage {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match store.read_document("oci-layout", 64 * 1024) {
        Ok(bytes) => bytes,
        Err(SourceError::Missing(_)) => {
            return Err(not_layout(
                "it has an index.json but no oci-layout file, so it is not an OCI image layout"
                    .into(),
            ));
        }
        Err(other) => return Err(other),
    };
    parse_layout_header(&bytes).map_err(not_layout)
}

/// Checks the content of an `oci-layout` file; the error is the reason it is not a layout.
pub(super) fn parse_layout_header(bytes: &[u8]) -> Result<(), String> {
    let header: LayoutHeader = serde_json::from_slice(bytes)
        .map_err(|e| format!("its oci-layout file is not valid JSON: {e}"))?;
    if header.version != "1.0.0" {
        return Err(format!(
            "its oci-layout says imageLayoutVersion {:?}; only \"1.0.0\" is defined",
            header.version
        ));
    }
    Ok(())
}

fn parse_index(bytes: &[u8], what: &str) -> Result<OciIndex, SourceError> {
    OciIndex::from_reader(bytes)
        .map_err(|e| SourceError::Invalid(format!("{what} is not a valid image index: {e}")))
}

fn entry_names(entry: &Descriptor) -> Vec<String> {
    let Some(annotations) = entry.annotations() else {
        return Vec::new();
    };
    NAME_ANNOTATIONS
        .iter()
        .filter_map(|key| annotations.get(*key).cloned())
        .collect()
}

/// Picks the entry of `index.json` to push. `Ok(None)` means "the whole index.json", for a
/// layout whose entries are the platforms of one unnamed image.
fn choose_entry<'a>(
    entries: &'a [Descriptor],
    wanted: Option<&str>,
) -> Result<Option<&'a Descriptor>, SourceError> {
    let describe = |entry: &Descriptor| {
        entry_names(entry)
            .into_iter()
            .next()
            .unwrap_or_else(|| format!("(unnamed) {}", entry.digest()))
    };
    if let Some(wanted) = wanted {
        let matching: Vec<&Descriptor> = entries
            .iter()
            .filter(|entry| {
                entry_names(entry)
                    .iter()
                    .any(|name| name_matches(name, wanted))
            })
            .collect();
        return match matching.as_slice() {
            [one] => Ok(Some(one)),
            [] => Err(SourceError::Selection(format!(
                "--image {wanted} is not in the source; it holds: {}",
                entries.iter().map(describe).collect::<Vec<_>>().join(", ")
            ))),
            several => Err(SourceError::Selection(format!(
                "--image {wanted} matches {} entries ({}); give the full name",
                several.len(),
                several
                    .iter()
                    .map(|e| describe(e))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        };
    }
    if let [one] = entries {
        return Ok(Some(one));
    }
    let all_platforms = entries.iter().all(|e| e.platform().is_some());
    let mut names: Vec<String> = entries.iter().flat_map(entry_names).collect();
    names.sort();
    names.dedup();
    if all_platforms && names.len() <= 1 {
        return Ok(None);
    }
    Err(SourceError::Selection(format!(
        "the source holds {} images; choose one with --image <name:tag>: {}",
        entries.len(),
        entries.iter().map(describe).collect::<Vec<_>>().join(", ")
    )))
}

fn platform_of(descriptor: &Descriptor) -> Option<String> {
    let platform = descriptor.platform().as_ref()?;
    let mut text = format!("{}/{}", platform.os(), platform.architecture());
    if let Some(variant) = platform.variant().as_deref().filter(|v| !v.is_empty()) {
        text.push('/');
        text.push_str(variant);
    }
    Some(text)
}

/// `BuildKit`'s attestation manifests (provenance, SBOM) sit in an index beside the images they
/// describe, marked by an annotation, with platform `unknown/unknown`.
fn is_attestation(descriptor: &Descriptor) -> bool {
    let annotated = descriptor.annotations().as_ref().is_some_and(|a| {
        a.get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
    });
    annotated
        || descriptor
            .platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == "unknown")
}

fn is_index(descriptor: &Descriptor) -> bool {
    let media_type = descriptor.media_type().to_string();
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

fn require_sha256(descriptor: &Descriptor) -> Result<(), SourceError> {
    if descriptor.digest().algorithm().as_ref() == "sha256" {
        Ok(())
    } else {
        Err(SourceError::Invalid(format!(
            "{} uses a digest algorithm other than sha256, which this tool does not push",
            descriptor.digest()
        )))
    }
}

struct Resolver<'a> {
    store: &'a Store,
    platform: Option<&'a PlatformSpec>,
    /// `--single-platform`.
    single: bool,
    /// The runner's platform, for `--single-platform` (if known).
    runner: Option<&'a PlatformSpec>,
}

impl Resolver<'_> {
    fn resolve(&self, descriptor: &Descriptor, depth: usize) -> Result<ImageNode, SourceError> {
        require_sha256(descriptor)?;
        let media_type = descriptor.media_type().to_string();
        match media_type.as_str() {
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(ImageNode::Manifest(Box::new(
                self.manifest(descriptor, &media_type)?,
            ))),
            OCI_INDEX | DOCKER_MANIFEST_LIST => {
                let (bytes, index) = self.read_index(descriptor, depth)?;
                let document = Document {
                    bytes,
                    media_type: document_media_type(index.media_type().as_ref(), &media_type)?,
                    digest: descriptor.digest().clone(),
                };
                self.index_node(document, index.manifests(), depth + 1)
            }
            other => Err(SourceError::Invalid(format!(
                "{} has media type {other:?}, which is neither an image manifest nor an index \
                 ({OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST})",
                descriptor.digest()
            ))),
        }
    }

    /// An index: with `--platform`, just the matching manifest; otherwise every child, which
    /// must all be present.
    fn index_node(
        &self,
        document: Document,
        children: &[Descriptor],
        depth: usize,
    ) -> Result<ImageNode, SourceError> {
        if let Some(wanted) = self.platform {
            return self
                .find_platform(children, wanted, depth)
                .and_then(|found| {
                    found.ok_or_else(|| {
                        let available: Vec<String> =
                            children.iter().filter_map(platform_of).collect();
                        SourceError::Selection(format!(
                            "the image has no {wanted} manifest; its platforms: {}",
                            if available.is_empty() {
                                "none listed".into()
                            } else {
                                available.join(", ")
                            }
                        ))
                    })
                });
        }
        if self.single {
            let mut candidates = Vec::new();
            self.single_candidates(children, depth, &mut candidates)?;
            let listed: Vec<super::Candidate> = candidates
                .iter()
                .map(|c| super::Candidate {
                    platform: platform_of(c),
                    digest: c.digest().to_string(),
                })
                .collect();
            let chosen = choose_single(&listed, self.runner)?;
            return self.resolve(&candidates[chosen], depth);
        }
        let mut resolved = Vec::with_capacity(children.len());
        let mut missing = Vec::new();
        let mut present = Vec::new();
        for child in children {
            match self.resolve(child, depth) {
                Ok(node) => {
                    present.extend(platform_of(child));
                    resolved.push(node);
                }
                Err(SourceError::Missing(what)) => missing.push(format!(
                    "{} ({what})",
                    platform_of(child).unwrap_or_else(|| child.digest().to_string())
                )),
                Err(other) => return Err(other),
            }
        }
        if !missing.is_empty() {
            let hint = present
                .iter()
                .find(|p| !p.starts_with("unknown"))
                .map_or_else(String::new, |p| {
                    format!("; to push one platform that is present, pass --platform {p}")
                });
            return Err(SourceError::Selection(format!(
                "the multi-platform image lists manifests whose content is not in the source: {}{hint}",
                missing.join(", ")
            )));
        }
        Ok(ImageNode::Index(ImageIndex {
            document,
            children: resolved,
        }))
    }

    /// The manifest for `wanted` among `children`, looking into nested indexes too.
    fn find_platform(
        &self,
        children: &[Descriptor],
        wanted: &PlatformSpec,
        depth: usize,
    ) -> Result<Option<ImageNode>, SourceError> {
        let direct = children
            .iter()
            .find(|c| !is_index(c) && platform_of(c).is_some_and(|p| wanted.matches(&p)));
        if let Some(child) = direct {
            return self.resolve(child, depth).map(Some);
        }
        for child in children.iter().filter(|c| is_index(c)) {
            let (_, nested) = self.read_index(child, depth)?;
            if let Some(found) = self.find_platform(nested.manifests(), wanted, depth + 1)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The image manifests `--single-platform` may choose from, through nested indexes:
    /// attestation manifests are not images, and a platform whose manifest is not in the source
    /// (Docker 29 after pulling one platform) cannot be pushed.
    fn single_candidates(
        &self,
        children: &[Descriptor],
        depth: usize,
        found: &mut Vec<Descriptor>,
    ) -> Result<(), SourceError> {
        for child in children {
            if is_index(child) {
                let (_, nested) = self.read_index(child, depth)?;
                self.single_candidates(nested.manifests(), depth + 1, found)?;
            } else if !is_attestation(child) && self.store.contains(&blob_path(child.digest())) {
                found.push(child.clone());
            }
        }
        Ok(())
    }

    fn read_index(
        &self,
        descriptor: &Descriptor,
        depth: usize,
    ) -> Result<(bytes::Bytes, OciIndex), SourceError> {
        if depth >= MAX_INDEX_DEPTH {
            return Err(SourceError::Invalid(format!(
                "indexes nest more than {MAX_INDEX_DEPTH} levels deep"
            )));
        }
        let bytes = read_verified(
            self.store,
            descriptor.digest(),
            Some(descriptor.size()),
            MAX_MANIFEST_BYTES,
            "image index",
        )?;
        let index = parse_index(&bytes, &format!("image index {}", descriptor.digest()))?;
        Ok((bytes, index))
    }

    fn manifest(
        &self,
        descriptor: &Descriptor,
        media_type: &str,
    ) -> Result<ImageManifest, SourceError> {
        let digest = descriptor.digest();
        let bytes = read_verified(
            self.store,
            digest,
            Some(descriptor.size()),
            MAX_MANIFEST_BYTES,
            "manifest",
        )?;
        let manifest = OciManifest::from_reader(&bytes[..])
            .map_err(|e| SourceError::Invalid(format!("manifest {digest} is not valid: {e}")))?;
        let media_type = document_media_type(manifest.media_type().as_ref(), media_type)?;

        let config_descriptor = manifest.config();
        require_sha256(config_descriptor)?;
        let config_bytes = read_verified(
            self.store,
            config_descriptor.digest(),
            Some(config_descriptor.size()),
            MAX_CONFIG_BYTES,
            "image config",
        )?;
        // Artifacts may carry a non-JSON config; only image configs have platform and diff_ids,
        // and an image config that is not JSON is a broken image (registries and runtimes
        // would refuse it later, after the push).
        let config_type = config_descriptor.media_type().to_string();
        let summary = if IMAGE_CONFIG_TYPES.contains(&config_type.as_str()) {
            ConfigSummary::parse(
                &config_bytes,
                &format!("image config {}", config_descriptor.digest()),
            )?
        } else {
            serde_json::from_slice::<ConfigSummary>(&config_bytes).unwrap_or_default()
        };
        let config = Blob {
            digest: config_descriptor.digest().clone(),
            size: config_descriptor.size(),
            media_type: config_descriptor.media_type().to_string(),
            source: BlobSource::Memory(config_bytes),
        };

        let layers = manifest
            .layers()
            .iter()
            .map(|layer| self.layer(layer))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImageManifest {
            manifest: ManifestSource::Stored(Document {
                bytes,
                media_type,
                digest: digest.clone(),
            }),
            config,
            layers,
            platform: platform_of(descriptor).or_else(|| summary.platform()),
            diff_ids: summary.diff_ids(),
        })
    }

    fn layer(&self, descriptor: &Descriptor) -> Result<Layer, SourceError> {
        require_sha256(descriptor)?;
        let digest = descriptor.digest();
        let source = match self.store.source(&blob_path(digest)) {
            Ok(source) => source,
            // Foreign layers (Windows base layers) are fetched by clients from their URLs.
            Err(SourceError::Missing(_))
                if descriptor.urls().as_ref().is_some_and(|u| !u.is_empty()) =>
            {
                return Ok(Layer::Foreign {
                    digest: digest.clone(),
                    size: descriptor.size(),
                });
            }
            Err(SourceError::Missing(_)) => {
                return Err(SourceError::Missing(format!("layer {digest}")));
            }
            Err(other) => return Err(other),
        };
        if source.len() != descriptor.size() {
            return Err(SourceError::Invalid(format!(
                "layer {digest} is {} bytes in the source but its descriptor says {}",
                source.len(),
                descriptor.size()
            )));
        }
        Ok(Layer::Stored(Blob {
            digest: digest.clone(),
            size: descriptor.size(),
            media_type: descriptor.media_type().to_string(),
            source,
        }))
    }
}

/// A document's media type: its own `mediaType` field when present (it must then agree with
/// the descriptor), else the descriptor's (umoci writes manifests without the field).
fn document_media_type(
    own: Option<&oci_spec::image::MediaType>,
    from_descriptor: &str,
) -> Result<String, SourceError> {
    match own.map(ToString::to_string) {
        Some(own) if own != from_descriptor => Err(SourceError::Invalid(format!(
            "a document says its media type is {own} but the descriptor pointing to it says \
             {from_descriptor}"
        ))),
        _ => Ok(from_descriptor.to_owned()),
    }
}
