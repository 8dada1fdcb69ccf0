//! Finds compressed layers the registry already has for uncompressed layers of the source, so a
//! re-push neither compresses nor uploads them again.
//!
//! An uncompressed layer is known by its `diff_id`; its compressed digest is not known until it
//! is compressed. But an image already in the repository lists, in its config, the `diff_ids` of
//! its layers, in the same order as the compressed layer descriptors of its manifest. Reading
//! the manifests (and configs) of a few likely images gives `diff_id → compressed blob`.

use std::collections::HashMap;

use oci_spec::image::{Digest, ImageIndex as OciIndex, ImageManifest as OciManifest};

use crate::blob::Compression;
use crate::push::PushedBlob;
use crate::registry::{Client, RegistryError};
use crate::source::{ConfigSummary, DOCKER_MANIFEST_LIST, MAX_CONFIG_BYTES, OCI_INDEX};

/// Media types of layers that `compression` would produce (Docker's gzip type included).
fn acceptable_media_types(compression: Compression) -> &'static [&'static str] {
    match compression {
        Compression::Gzip { .. } => &[
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ],
        Compression::Zstd { .. } => &["application/vnd.oci.image.layer.v1.tar+zstd"],
    }
}

/// `diff_id → compressed blob` learned from images in one repository.
#[derive(Debug, Default)]
pub struct KnownLayers {
    layers: HashMap<Digest, PushedBlob>,
}

impl KnownLayers {
    pub fn get(&self, diff_id: &Digest) -> Option<&PushedBlob> {
        self.layers.get(diff_id)
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Reads the images at `references` (tags or digests; missing ones are skipped) and
    /// remembers their layers compressed the way `compression` would.
    pub async fn learn(
        &mut self,
        client: &Client,
        repository: &str,
        references: &[String],
        compression: Compression,
    ) -> Result<(), RegistryError> {
        for reference in references {
            let Some((bytes, media_type)) = client.get_manifest(repository, reference).await?
            else {
                continue;
            };
            if media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST {
                let Ok(index) = OciIndex::from_reader(&bytes[..]) else {
                    continue;
                };
                for child in index.manifests() {
                    if let Some((child_bytes, _)) = client
                        .get_manifest(repository, child.digest().as_ref())
                        .await?
                    {
                        self.learn_manifest(client, repository, &child_bytes, compression)
                            .await?;
                    }
                }
            } else {
                self.learn_manifest(client, repository, &bytes, compression)
                    .await?;
            }
        }
        Ok(())
    }

    async fn learn_manifest(
        &mut self,
        client: &Client,
        repository: &str,
        bytes: &[u8],
        compression: Compression,
    ) -> Result<(), RegistryError> {
        let Ok(manifest) = OciManifest::from_reader(bytes) else {
            return Ok(());
        };
        let config = manifest.config();
        if config.size() > MAX_CONFIG_BYTES {
            return Ok(());
        }
        let Some(config_bytes) = client
            .get_small_blob(repository, config.digest(), MAX_CONFIG_BYTES)
            .await?
        else {
            return Ok(());
        };
        // Only trust a config whose bytes match the digest the manifest gives.
        if &crate::blob::sha256_digest(&config_bytes) != config.digest() {
            return Ok(());
        }
        let Ok(summary) = serde_json::from_slice::<ConfigSummary>(&config_bytes) else {
            return Ok(());
        };
        let diff_ids = summary.diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Ok(());
        }
        let acceptable = acceptable_media_types(compression);
        for (diff_id, layer) in diff_ids.into_iter().zip(manifest.layers()) {
            let media_type = layer.media_type().to_string();
            if acceptable.contains(&media_type.as_str()) {
                self.layers.entry(diff_id).or_insert_with(|| PushedBlob {
                    digest: layer.digest().clone(),
                    size: layer.size(),
                    media_type,
                    foreign: false,
                });
            }
        }
        Ok(())
    }
}
