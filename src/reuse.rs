//! Finds compressed layers the registry already has for uncompressed layers of the source, so a
//! re-push neither compresses nor uploads them again.
//!
//! An uncompressed layer is known by its `diff_id`; its compressed digest is not known until it
//! is compressed. But an image already in the repository lists, in its config, the `diff_ids` of
//! its layers, in the same order as the compressed layer descriptors of its manifest. Reading
//! the manifests (and configs) of a few likely images gives `diff_id → compressed blob`.
//! Likely images, in order: the tags being pushed (a re-run), `--cache-from`, the most recently
//! pushed images (ECR, by push time; in CI every push has a new SHA tag, so the previous
//! commit's image is the one that shares layers), and a bounded look at `tags/list`.
//!
//! A local cache (`--cache-dir`, e.g. kept by `actions/cache`) remembers the same mapping from
//! earlier runs. Whatever the source, a blob is reused only after a HEAD shows the registry has
//! it with the expected size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

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

    /// Learns from the images at `references` (tags or digests, most likely first; missing ones
    /// are skipped) until every `wanted` `diff_id` is known.
    pub async fn learn(
        &mut self,
        client: &Client,
        repository: &str,
        references: &[String],
        wanted: &HashSet<Digest>,
        compression: Compression,
    ) -> Result<(), RegistryError> {
        for reference in references {
            if self.knows_all(wanted) {
                break;
            }
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

    pub fn knows_all(&self, wanted: &HashSet<Digest>) -> bool {
        wanted
            .iter()
            .all(|diff_id| self.layers.contains_key(diff_id))
    }

    /// Forgets the layers the repository does not have (HEAD, size checked): what the local
    /// cache or another image's manifest says is a claim, and deciding what to compress for
    /// several destinations must not rest on a stale one.
    pub async fn confirm(
        &mut self,
        client: &Client,
        repository: &str,
    ) -> Result<(), RegistryError> {
        let mut missing = Vec::new();
        for (diff_id, blob) in &self.layers {
            if client.blob_size(repository, &blob.digest).await? != Some(blob.size) {
                missing.push(diff_id.clone());
            }
        }
        for diff_id in missing {
            self.layers.remove(&diff_id);
        }
        Ok(())
    }

    /// Remembers a blob found elsewhere (the local cache).
    pub fn insert(&mut self, diff_id: Digest, blob: PushedBlob) {
        self.layers.entry(diff_id).or_insert(blob);
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

/// How many tags of `tags/list` are looked at when nothing better named the layers.
pub const TAG_LIST_LOOKUPS: usize = 10;

/// Candidates from a `tags/list` answer, most likely first: `latest`-like names, then the rest
/// from the end of the (lexically sorted) list.
pub fn likely_tags(mut tags: Vec<String>, already: &[String], limit: usize) -> Vec<String> {
    tags.retain(|t| !already.contains(t));
    tags.reverse();
    tags.sort_by_key(|t| {
        !matches!(
            t.as_str(),
            "latest" | "main" | "master" | "edge" | "develop"
        )
    });
    tags.truncate(limit);
    tags
}

/// `diff_id` + compression settings → compressed blob, from earlier runs, in one JSON file.
#[derive(Debug)]
pub struct LayerCache {
    path: PathBuf,
    entries: BTreeMap<String, CachedBlob>,
    changed: bool,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct CachedBlob {
    digest: Digest,
    size: u64,
}

impl LayerCache {
    /// Opens the cache in `dir`. An unreadable or corrupt cache is treated as empty: it only
    /// ever saves work, and every entry is checked against the registry before use.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join("ecr-push-layers.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            path,
            entries,
            changed: false,
        }
    }

    /// The key includes everything that decides the compressed bytes.
    fn key(diff_id: &Digest, compression: Compression) -> String {
        match compression {
            Compression::Gzip { level } => format!("{diff_id} gzip-libdeflate-{level} chunked-v1"),
            Compression::Zstd { level } => format!("{diff_id} zstd-{level} chunked-v1"),
        }
    }

    /// Adds what the cache knows about `wanted` to `known`.
    pub fn fill(
        &self,
        known: &mut KnownLayers,
        wanted: &HashSet<Digest>,
        compression: Compression,
    ) {
        for diff_id in wanted {
            if let Some(cached) = self.entries.get(&Self::key(diff_id, compression)) {
                known.insert(
                    diff_id.clone(),
                    PushedBlob {
                        digest: cached.digest.clone(),
                        size: cached.size,
                        media_type: compression.layer_media_type().to_owned(),
                        foreign: false,
                    },
                );
            }
        }
    }

    pub fn record(&mut self, diff_id: &Digest, blob: &PushedBlob, compression: Compression) {
        let key = Self::key(diff_id, compression);
        if self
            .entries
            .get(&key)
            .is_none_or(|c| c.digest != blob.digest)
        {
            self.entries.insert(
                key,
                CachedBlob {
                    digest: blob.digest.clone(),
                    size: blob.size,
                },
            );
            self.changed = true;
        }
    }

    /// Writes the cache (atomically) if anything was recorded.
    pub fn save(&self) -> std::io::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(&mut temp, &self.entries)?;
        temp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn likely_tags_prefer_well_known_names_then_the_end_of_the_list() {
        let tags = ["a1", "b2", "latest", "c3", "v1"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(
            likely_tags(tags, &["v1".to_owned()], 3),
            vec!["latest", "c3", "b2"]
        );
    }

    #[test]
    fn cache_round_trips_and_keys_on_compression() {
        let dir = tempfile::tempdir().unwrap();
        let diff_id: Digest = crate::blob::sha256_digest(b"layer");
        let blob = PushedBlob {
            digest: crate::blob::sha256_digest(b"compressed"),
            size: 10,
            media_type: String::new(),
            foreign: false,
        };
        let gzip = Compression::Gzip { level: 1 };
        let mut cache = LayerCache::open(dir.path());
        cache.record(&diff_id, &blob, gzip);
        cache.save().unwrap();

        let wanted = HashSet::from([diff_id.clone()]);
        let reopened = LayerCache::open(dir.path());
        let mut known = KnownLayers::default();
        reopened.fill(&mut known, &wanted, Compression::Gzip { level: 6 });
        assert!(known.is_empty(), "another level gives other bytes");
        reopened.fill(&mut known, &wanted, gzip);
        assert_eq!(known.get(&diff_id).unwrap().digest, blob.digest);
    }

    #[test]
    fn corrupt_cache_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ecr-push-layers.json"), "{not json").unwrap();
        let cache = LayerCache::open(dir.path());
        let mut known = KnownLayers::default();
        cache.fill(
            &mut known,
            &HashSet::from([crate::blob::sha256_digest(b"x")]),
            Compression::Gzip { level: 1 },
        );
        assert!(known.is_empty());
    }
}
