//! Image readers: turn whatever a build produced into one [`SourceImage`], the graph of
//! documents and blobs to push, without reading any layer.
//!
//! Formats are recognised from content, never from file names:
//! - a directory with `oci-layout` + `index.json` (OCI image layout);
//! - a tar holding the same (oci-archive, and `docker save` from Docker ≥ 25 and 29, which write
//!   an OCI layout next to the legacy `manifest.json`; the OCI side is preferred because it keeps
//!   manifest digests);
//! - a tar with only `manifest.json` (legacy `docker save`);
//! - any of these tars wrapped in gzip or zstd.

mod docker_archive;
#[doc(hidden)]
pub mod fuzzing;
mod oci_layout;
pub mod store;

use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use oci_spec::image::Digest;
use serde::Deserialize;

use crate::blob::{BlobSource, Compression};
use store::{Store, Wrapping};

/// The registry's limit on a manifest (ECR: 4 MiB); larger ones are refused before any upload.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Image configs are JSON documents; anything this large is not one.
pub const MAX_CONFIG_BYTES: u64 = 32 * 1024 * 1024;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type we push, for `Accept` headers (a registry converts a manifest when
/// the stored type is missing from `Accept`, which would change its digest).
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Input that cannot be pushed. Every variant means "fix the input" (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an image this tool can read: {reason}")]
    NotAnImage { path: PathBuf, reason: String },
    #[error("the image references {0}, which is not in it; the archive or layout is incomplete")]
    Missing(String),
    #[error("invalid image: {0}")]
    Invalid(String),
    #[error(
        "{what} does not match its digest: expected {expected}, found {found}; the image is \
         corrupt or was modified after it was built"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("{0}")]
    Selection(String),
}

impl SourceError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A manifest or index exactly as it will be sent: the bytes are never re-serialised, because
/// that would change the digest.
#[derive(Clone, Debug)]
pub struct Document {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// A blob whose digest and size are known before upload.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub source: BlobSource,
}

/// A layer as it is in the source.
#[derive(Clone, Debug)]
pub enum Layer {
    /// Pushed byte for byte (OCI inputs, already-compressed layers).
    Stored(Blob),
    /// An uncompressed tar (legacy docker save) that is compressed on the way out. Its
    /// compressed digest is known only once it has been compressed.
    Uncompressed { source: BlobSource, diff_id: Digest },
    /// A non-distributable ("foreign") layer whose bytes are not in the source and are not
    /// pushed; the manifest keeps its descriptor.
    Foreign { digest: Digest, size: u64 },
}

/// How a single image's manifest is obtained.
#[derive(Clone, Debug)]
pub enum ManifestSource {
    /// The manifest exists in the source and is pushed as is.
    Stored(Document),
    /// Legacy docker save has no manifest: one is built once the layers are compressed.
    Generated,
}

#[derive(Clone, Debug)]
pub struct ImageManifest {
    pub manifest: ManifestSource,
    pub config: Blob,
    pub layers: Vec<Layer>,
    /// `os/arch[/variant]` from the index descriptor or the config.
    pub platform: Option<String>,
    /// The layers' uncompressed digests, from the config.
    pub diff_ids: Vec<Digest>,
}

#[derive(Clone, Debug)]
pub struct ImageIndex {
    pub document: Document,
    pub children: Vec<ImageNode>,
}

#[derive(Clone, Debug)]
pub enum ImageNode {
    Manifest(Box<ImageManifest>),
    Index(ImageIndex),
}

impl ImageNode {
    pub fn platform(&self) -> Option<&str> {
        match self {
            Self::Manifest(manifest) => manifest.platform.as_deref(),
            Self::Index(_) => None,
        }
    }
}

/// The format a source was read as, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OciLayout,
    OciArchive,
    DockerArchive,
    DockerArchiveOci,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OciLayout => "OCI image layout",
            Self::OciArchive => "oci-archive",
            Self::DockerArchive => "docker save (legacy)",
            Self::DockerArchiveOci => "docker save (Docker ≥ 25, OCI layout inside)",
        })
    }
}

/// What was read, ready to push.
#[derive(Debug)]
pub struct SourceImage {
    pub format: Format,
    pub wrapping: Wrapping,
    /// The image's name in the source (a docker tag or OCI ref name), if it has one.
    pub name: Option<String>,
    pub root: ImageNode,
}

/// `os/arch[/variant]`, as given to `--platform`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for PlatformSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |s: &&str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => Ok(Self {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!(
                "{text:?} is not a platform; write it as os/arch or os/arch/variant, e.g. \
                 linux/amd64 or linux/arm/v7"
            )),
        }
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl PlatformSpec {
    /// Whether a platform string `os/arch[/variant]` satisfies this request. Without a variant
    /// in the request, any variant matches (`linux/arm64` picks `linux/arm64/v8`).
    pub fn matches(&self, platform: &str) -> bool {
        let mut parts = platform.split('/');
        let (Some(os), Some(arch)) = (parts.next(), parts.next()) else {
            return false;
        };
        let variant = parts.next();
        os == self.os
            && arch == self.architecture
            && self
                .variant
                .as_deref()
                .is_none_or(|wanted| Some(wanted) == variant)
    }
}

/// Which image of a source to push.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `--image name:tag`, for sources holding several images.
    pub image: Option<String>,
    /// `--platform`, to push one platform of a multi-platform image as a plain manifest.
    pub platform: Option<PlatformSpec>,
    /// `--single-platform`: push one image manifest, never an index or attestation manifests
    /// (Lambda and some scanners refuse indexes). Which one: `platform` if given, else the only
    /// image of the index, else the one for `runner_platform`.
    pub single_platform: bool,
    /// The platform this program runs on, for `--single-platform` without `--platform`.
    pub runner_platform: Option<PlatformSpec>,
}

impl PlatformSpec {
    /// The Linux platform of the machine this binary was built for (`linux/amd64` on x86-64,
    /// `linux/arm64` on aarch64): what a CI runner builds for by default. Images are Linux
    /// images even on macOS and Windows runners.
    pub fn of_this_machine() -> Option<Self> {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            _ => return None,
        };
        Some(Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        })
    }
}

/// An image manifest of an index, as `--single-platform` chooses among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// `os/arch[/variant]`, when the index says.
    pub platform: Option<String>,
    pub digest: String,
}

/// Picks the one image `--single-platform` pushes: the only candidate, else the only one for
/// the runner's platform. Attestation manifests are not candidates. The error says what there
/// is and how to choose.
pub fn choose_single(
    candidates: &[Candidate],
    runner: Option<&PlatformSpec>,
) -> Result<usize, SourceError> {
    let describe = |c: &Candidate| {
        c.platform
            .clone()
            .unwrap_or_else(|| format!("(no platform) {}", c.digest))
    };
    let listed = || {
        candidates
            .iter()
            .map(describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match candidates {
        [] => {
            return Err(SourceError::Selection(
                "--single-platform: the image index lists no image manifest (only attestations \
                 or nothing); there is nothing to push as a single image"
                    .into(),
            ));
        }
        [_] => return Ok(0),
        _ => {}
    }
    let Some(runner) = runner else {
        return Err(SourceError::Selection(format!(
            "--single-platform: the image has {} platforms ({}) and this machine's platform is \
             not one a container image has; choose one with --platform os/arch",
            candidates.len(),
            listed()
        )));
    };
    let matching: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.platform.as_deref().is_some_and(|p| runner.matches(p)))
        .map(|(i, _)| i)
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(SourceError::Selection(format!(
            "--single-platform: the image has no {runner} manifest (this runner's platform) \
             but several others: {}; choose one with --platform os/arch",
            listed()
        ))),
        several => Err(SourceError::Selection(format!(
            "--single-platform: {} manifests match this runner's platform {runner} ({}); \
             choose one with --platform os/arch/variant",
            several.len(),
            several
                .iter()
                .map(|i| format!("{} {}", describe(&candidates[*i]), candidates[*i].digest))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Reads the image at `path` (file or directory). Temporary data (a decompressed copy of a
/// compressed tar) goes to `temp_dir` and is gone when the process ends. `compression` is how
/// uncompressed layers will be compressed: a compressed tar's layers may be started on early.
pub fn open(
    path: &Path,
    selection: &Selection,
    temp_dir: &Path,
    compression: Compression,
) -> Result<SourceImage, SourceError> {
    let (store, wrapping) = Store::open(path, temp_dir, Some(compression))?;
    read_store(&store, wrapping, path, selection)
}

/// Reads the image in an opened store (format detection and the readers).
fn read_store(
    store: &Store,
    wrapping: Wrapping,
    path: &Path,
    selection: &Selection,
) -> Result<SourceImage, SourceError> {
    let is_directory = matches!(store, Store::Directory(_));
    let (format, name, root) = if store.contains("index.json") || store.contains("oci-layout") {
        let has_docker_manifest = store.contains("manifest.json");
        let (name, root) = oci_layout::read(store, path, selection)?;
        let format = match (is_directory, has_docker_manifest) {
            (true, _) => Format::OciLayout,
            (false, true) => Format::DockerArchiveOci,
            (false, false) => Format::OciArchive,
        };
        (format, name, root)
    } else if store.contains("manifest.json") {
        let (name, root) = docker_archive::read(store, selection)?;
        (Format::DockerArchive, name, root)
    } else {
        return Err(SourceError::NotAnImage {
            path: path.to_path_buf(),
            reason: if is_directory {
                "the directory is not an OCI image layout (no oci-layout and index.json)".into()
            } else {
                "the archive holds neither an OCI layout (oci-layout, index.json) nor a docker \
                 save manifest.json"
                    .into()
            },
        });
    };
    check_platform(&root, selection.platform.as_ref())?;
    Ok(SourceImage {
        format,
        wrapping,
        name,
        root,
    })
}

/// With `--platform`, checks that a single image is of the requested platform (indexes were
/// already narrowed to the matching manifest by the reader).
fn check_platform(root: &ImageNode, wanted: Option<&PlatformSpec>) -> Result<(), SourceError> {
    match (wanted, root.platform()) {
        (Some(wanted), Some(platform)) if !wanted.matches(platform) => Err(SourceError::Selection(
            format!("--platform {wanted} was asked for, but the image is {platform}"),
        )),
        _ => Ok(()),
    }
}

/// The parts of an image config this tool needs. Read leniently (every field optional): a
/// strict schema would refuse real-world configs that registries accept.
#[derive(Debug, Default, Deserialize)]
pub struct ConfigSummary {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl ConfigSummary {
    pub fn parse(bytes: &[u8], what: &str) -> Result<Self, SourceError> {
        serde_json::from_slice(bytes)
            .map_err(|e| SourceError::Invalid(format!("{what} is not a valid image config: {e}")))
    }

    pub fn platform(&self) -> Option<String> {
        let (os, arch) = (self.os.as_deref()?, self.architecture.as_deref()?);
        Some(match self.variant.as_deref() {
            Some(variant) if !variant.is_empty() => format!("{os}/{arch}/{variant}"),
            _ => format!("{os}/{arch}"),
        })
    }

    pub fn diff_ids(&self) -> Vec<Digest> {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.clone())
            .unwrap_or_default()
    }
}

/// Path of a blob inside an OCI layout.
pub(crate) fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.digest())
}

/// Reads a document (manifest, index, config) referenced by digest and checks its bytes.
pub(crate) fn read_verified(
    store: &Store,
    digest: &Digest,
    size: Option<u64>,
    limit: u64,
    what: &str,
) -> Result<Bytes, SourceError> {
    let path = blob_path(digest);
    let bytes = store.read_document(&path, limit).map_err(|e| match e {
        SourceError::Missing(_) => SourceError::Missing(format!("{what} {digest}")),
        other => other,
    })?;
    if let Some(size) = size
        && size != bytes.len() as u64
    {
        return Err(SourceError::Invalid(format!(
            "{what} {digest} is {} bytes but its descriptor says {size}",
            bytes.len()
        )));
    }
    let found = crate::blob::sha256_digest(&bytes);
    if &found != digest {
        return Err(SourceError::DigestMismatch {
            what: format!("{what} {path}"),
            expected: digest.to_string(),
            found: found.to_string(),
        });
    }
    Ok(bytes)
}

/// A name for an image that users may type to `--image`: the full reference and the shorter
/// forms Docker accepts (`docker.io/library/app:v1` is also `library/app:v1` and `app:v1`).
pub(crate) fn name_variants(name: &str) -> Vec<String> {
    let mut variants = vec![name.to_owned()];
    if let Some(rest) = name.strip_prefix("docker.io/") {
        variants.push(rest.to_owned());
        if let Some(short) = rest.strip_prefix("library/") {
            variants.push(short.to_owned());
        }
    }
    variants
}

/// Whether `wanted` (as typed to `--image`) names `candidate`. A name without a tag means
/// `:latest`, as in Docker.
pub(crate) fn name_matches(candidate: &str, wanted: &str) -> bool {
    let has_tag = wanted
        .rsplit_once('/')
        .map_or(wanted, |(_, last)| last)
        .contains(':')
        || wanted.contains('@');
    let wanted = if has_tag {
        wanted.to_owned()
    } else {
        format!("{wanted}:latest")
    };
    name_variants(candidate).contains(&wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_spec_parses_and_matches() {
        let arm64: PlatformSpec = "linux/arm64".parse().unwrap();
        assert!(arm64.matches("linux/arm64"));
        assert!(arm64.matches("linux/arm64/v8"));
        assert!(!arm64.matches("linux/amd64"));
        let arm_v7: PlatformSpec = "linux/arm/v7".parse().unwrap();
        assert!(arm_v7.matches("linux/arm/v7"));
        assert!(!arm_v7.matches("linux/arm/v6"));
        assert!(!arm_v7.matches("linux/arm"));
        assert!("linux".parse::<PlatformSpec>().is_err());
        assert!("linux/amd64/v2/x".parse::<PlatformSpec>().is_err());
        assert!("linux//amd64".parse::<PlatformSpec>().is_err());
    }

    fn candidate(platform: Option<&str>, digest: &str) -> Candidate {
        Candidate {
            platform: platform.map(str::to_owned),
            digest: digest.to_owned(),
        }
    }

    #[test]
    fn single_platform_takes_the_only_image_then_the_runners() {
        let amd64: PlatformSpec = "linux/amd64".parse().unwrap();
        // One image (buildx: one platform plus its attestation, which is no candidate).
        assert_eq!(
            choose_single(&[candidate(Some("linux/arm64"), "a")], Some(&amd64)).unwrap(),
            0
        );
        let two = [
            candidate(Some("linux/arm64"), "a"),
            candidate(Some("linux/amd64"), "b"),
        ];
        assert_eq!(choose_single(&two, Some(&amd64)).unwrap(), 1);
        let error = choose_single(&two, None).unwrap_err().to_string();
        assert!(error.contains("--platform"), "{error}");
        let other = [
            candidate(Some("linux/arm64"), "a"),
            candidate(Some("linux/s390x"), "b"),
        ];
        let error = choose_single(&other, Some(&amd64)).unwrap_err().to_string();
        assert!(
            error.contains("linux/arm64, linux/s390x") && error.contains("--platform"),
            "{error}"
        );
        let ambiguous = [
            candidate(Some("linux/amd64"), "a"),
            candidate(Some("linux/amd64/v3"), "b"),
        ];
        let error = choose_single(&ambiguous, Some(&amd64))
            .unwrap_err()
            .to_string();
        assert!(error.contains("2 manifests match"), "{error}");
        assert!(choose_single(&[], Some(&amd64)).is_err());
    }

    #[test]
    fn this_machine_has_a_linux_platform() {
        let platform = PlatformSpec::of_this_machine();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(platform.unwrap().to_string(), "linux/amd64");
        } else if cfg!(target_arch = "aarch64") {
            assert_eq!(platform.unwrap().to_string(), "linux/arm64");
        }
    }

    #[test]
    fn names_match_docker_style_short_forms() {
        assert!(name_matches("docker.io/library/app:v1", "app:v1"));
        assert!(name_matches("docker.io/library/app:v1", "library/app:v1"));
        assert!(name_matches("docker.io/library/app:latest", "app"));
        assert!(name_matches(
            "localhost:5000/team/app:latest",
            "localhost:5000/team/app"
        ));
        assert!(!name_matches("docker.io/library/app:v1", "app:v2"));
        assert!(!name_matches("docker.io/library/app:v1", "app"));
    }
}
