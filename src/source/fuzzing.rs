//! Entry points for the fuzz targets in `fuzz/` (not part of the tool's API): each takes
//! untrusted bytes, runs one reader on them, and must return (an image or an error) without
//! panicking, hanging or reading outside the input.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use oci_spec::image::{ImageIndex as OciIndex, ImageManifest as OciManifest};

use super::store::{Store, Wrapping};
use super::{ConfigSummary, ImageNode, Layer, Selection, SourceError, SourceImage};

/// Bytes in an anonymous temporary file, as the readers want a file.
fn temp_file(data: &[u8]) -> std::io::Result<std::fs::File> {
    let mut file = tempfile::tempfile()?;
    file.write_all(data)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

fn open_tar(data: &[u8]) -> Result<(Store, Wrapping), SourceError> {
    let path = Path::new("<fuzz input>");
    let file = temp_file(data).map_err(|e| SourceError::io(path, e))?;
    Store::from_file(file, path, &std::env::temp_dir(), None)
}

/// The tar index: sniffing, decompression, indexing, then every name resolved (links
/// followed) and read.
pub fn tar_index(data: &[u8]) {
    let Ok((store, _)) = open_tar(data) else {
        return;
    };
    for name in store.names() {
        if let Ok(source) = store.source(&name) {
            let mut bytes = Vec::new();
            // An entry's range was checked against the file size when indexed.
            let _ = source.open().read_to_end(&mut bytes);
            assert_eq!(bytes.len() as u64, source.len(), "{name}: short read");
        }
    }
}

/// A tar holding a legacy `docker save`.
pub fn docker_archive(data: &[u8]) {
    if let Ok((store, _)) = open_tar(data) {
        let result = super::docker_archive::read(&store, &Selection::default());
        if let Ok((_, root)) = result {
            check_blobs(&root);
        }
    }
}

/// A tar holding an OCI layout (oci-archive, Docker ≥ 25 `docker save`).
pub fn oci_layout(data: &[u8]) {
    if let Ok((store, _)) = open_tar(data) {
        let result =
            super::oci_layout::read(&store, Path::new("<fuzz input>"), &Selection::default());
        if let Ok((_, root)) = result {
            check_blobs(&root);
        }
    }
}

/// Any source, as `ecr-push push` reads it.
pub fn any_source(data: &[u8]) -> Option<SourceImage> {
    let (store, wrapping) = open_tar(data).ok()?;
    let image = super::read_store(
        &store,
        wrapping,
        Path::new("<fuzz input>"),
        &Selection::default(),
    )
    .ok()?;
    check_blobs(&image.root);
    Some(image)
}

/// Manifest-level parsing: image manifests and indexes (as oci-spec reads them), image
/// configs, docker `manifest.json`, and `oci-layout`.
pub fn documents(data: &[u8]) {
    let _ = OciManifest::from_reader(data);
    let _ = OciIndex::from_reader(data);
    if let Ok(config) = ConfigSummary::parse(data, "config") {
        let _ = config.platform();
        let _ = config.diff_ids();
    }
    let _ = super::docker_archive::parse_manifest_json(data);
    let _ = super::oci_layout::parse_layout_header(data);
}

/// Reads every stored blob the readers handed out, as a push would (the ranges must be
/// readable to their end).
fn check_blobs(node: &ImageNode) {
    match node {
        ImageNode::Manifest(manifest) => {
            let _ = crate::blob::measure(&manifest.config.source);
            for layer in &manifest.layers {
                match layer {
                    Layer::Stored(blob) => {
                        let _ = crate::blob::measure(&blob.source);
                    }
                    Layer::Uncompressed { source, .. } => {
                        let _ = crate::blob::measure(source);
                    }
                    Layer::Foreign { .. } => {}
                }
            }
        }
        ImageNode::Index(index) => index.children.iter().for_each(check_blobs),
    }
}
