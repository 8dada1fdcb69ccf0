//! Legacy `docker save` archives: `manifest.json` naming a config file and one tar per layer
//! (`<id>/layer.tar`, often a symlink to an identical layer of another image).
//!
//! There is no registry manifest in such an archive: layers are uncompressed, so they are
//! compressed on the way out and the manifest is generated afterwards. The config is pushed byte
//! for byte, so the image ID (config digest) is kept.

use serde::Deserialize;

use super::store::{Store, Wrapping};
use super::{
    Blob, ConfigSummary, ImageManifest, ImageNode, Layer, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES,
    ManifestSource, OCI_CONFIG, Selection, SourceError, name_matches,
};
use crate::blob::{self, BlobSource};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

impl Entry {
    fn tags(&self) -> &[String] {
        self.repo_tags.as_deref().unwrap_or_default()
    }

    fn describe(&self) -> String {
        self.tags()
            .first()
            .cloned()
            .unwrap_or_else(|| format!("(untagged) {}", self.config))
    }
}

pub fn read(
    store: &Store,
    selection: &Selection,
) -> Result<(Option<String>, ImageNode), SourceError> {
    let bytes = store.read_document("manifest.json", MAX_MANIFEST_BYTES)?;
    let entries = parse_manifest_json(&bytes)?;
    let entry = choose(&entries, selection.image.as_deref())?;
    let name = entry.tags().first().cloned();
    Ok((name, ImageNode::Manifest(Box::new(image(store, entry)?))))
}

/// Parses `manifest.json`: one entry per image.
pub(super) fn parse_manifest_json(bytes: &[u8]) -> Result<Vec<Entry>, SourceError> {
    serde_json::from_slice(bytes).map_err(|e| {
        SourceError::Invalid(format!("manifest.json is not a docker save manifest: {e}"))
    })
}

fn choose<'a>(entries: &'a [Entry], wanted: Option<&str>) -> Result<&'a Entry, SourceError> {
    let all = || {
        entries
            .iter()
            .map(Entry::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let matching: Vec<&Entry> = match wanted {
        Some(wanted) => entries
            .iter()
            .filter(|e| e.tags().iter().any(|tag| name_matches(tag, wanted)))
            .collect(),
        None => entries.iter().collect(),
    };
    match (matching.as_slice(), wanted) {
        ([one], _) => Ok(one),
        ([], None) => Err(SourceError::Invalid("manifest.json lists no images".into())),
        ([], Some(wanted)) => Err(SourceError::Selection(format!(
            "--image {wanted} is not in the archive; it holds: {}",
            all()
        ))),
        (_, _) => Err(SourceError::Selection(format!(
            "the archive holds {} images; choose one with --image <name:tag>: {}",
            matching.len(),
            all()
        ))),
    }
}

fn image(store: &Store, entry: &Entry) -> Result<ImageManifest, SourceError> {
    let config_bytes = store
        .read_document(&entry.config, MAX_CONFIG_BYTES)
        .map_err(|e| match e {
            SourceError::Missing(_) => SourceError::Missing(format!("config {}", entry.config)),
            other => other,
        })?;
    let digest = blob::sha256_digest(&config_bytes);
    if let Some(named) = hex_in_name(&entry.config)
        && named != digest.digest()
    {
        return Err(SourceError::DigestMismatch {
            what: format!("config {}", entry.config),
            expected: format!("sha256:{named}"),
            found: digest.to_string(),
        });
    }
    let summary = ConfigSummary::parse(&config_bytes, &entry.config)?;
    let diff_ids = summary.diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(SourceError::Invalid(format!(
            "the config lists {} layers (rootfs.diff_ids) but manifest.json lists {}",
            diff_ids.len(),
            entry.layers.len()
        )));
    }

    let layers = entry
        .layers
        .iter()
        .zip(&diff_ids)
        .map(|(path, diff_id)| layer(store, path, diff_id))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(ImageManifest {
        manifest: ManifestSource::Generated,
        config: Blob {
            size: config_bytes.len() as u64,
            digest,
            media_type: OCI_CONFIG.to_owned(),
            source: BlobSource::Memory(config_bytes),
        },
        layers,
        platform: summary.platform(),
        diff_ids,
    })
}

fn layer(
    store: &Store,
    path: &str,
    diff_id: &oci_spec::image::Digest,
) -> Result<Layer, SourceError> {
    let source = store.source(path).map_err(|e| match e {
        SourceError::Missing(_) => SourceError::Missing(format!("layer {path}")),
        other => other,
    })?;
    let head = source
        .peek(4)
        .map_err(|e| SourceError::Invalid(format!("cannot read layer {path}: {e}")))?;
    let media_type = match Wrapping::of(&head) {
        Wrapping::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Wrapping::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        Wrapping::None => {
            return Ok(Layer::Uncompressed {
                source,
                diff_id: diff_id.clone(),
            });
        }
    };
    // Already compressed (Docker 29 saves): pushed as is. Its digest is in its path when the
    // archive uses blob paths; otherwise it has to be hashed once up front.
    let (digest, size) = if let Some(hex) = hex_in_name(path) {
        let digest = format!("sha256:{hex}")
            .parse()
            .map_err(|_| SourceError::Invalid(format!("{path} is not a valid blob path")))?;
        (digest, source.len())
    } else {
        let measured = blob::measure(&source)
            .map_err(|e| SourceError::Invalid(format!("cannot read layer {path}: {e}")))?;
        (measured.digest, measured.size)
    };
    Ok(Layer::Stored(Blob {
        digest,
        size,
        media_type: media_type.to_owned(),
        source,
    }))
}

/// The sha256 hex a docker save file name carries (`<hex>.json`, `blobs/sha256/<hex>`), if any.
fn hex_in_name(path: &str) -> Option<&str> {
    let file = path.rsplit('/').next()?;
    let stem = file.strip_suffix(".json").unwrap_or(file);
    (stem.len() == 64
        && stem
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_found_in_docker_file_names() {
        let hex = "a".repeat(64);
        assert_eq!(hex_in_name(&format!("{hex}.json")), Some(hex.as_str()));
        assert_eq!(
            hex_in_name(&format!("blobs/sha256/{hex}")),
            Some(hex.as_str())
        );
        assert_eq!(hex_in_name("abc/layer.tar"), None);
        assert_eq!(hex_in_name(&format!("{}.json", "A".repeat(64))), None);
    }
}
