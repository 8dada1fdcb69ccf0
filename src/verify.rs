//! Checks, after the push, that the registry serves exactly what was built.
//!
//! For every tag the manifest is fetched with every manifest media type in `Accept` (a registry
//! converts a manifest whose stored type is not accepted, which changes its digest) and its bytes
//! are hashed; every manifest of an index is fetched by digest; the remote manifest must name the
//! local config; every blob must exist with its size. `--verify full` also downloads every layer
//! and compares its uncompressed digest with the config's `diff_ids`.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use oci_spec::image::{Digest, ImageManifest as OciManifest};
use tokio::sync::mpsc;

use crate::blob::{self, HashingReader};
use crate::push::{PushedBlob, PushedManifest, PushedNode};
use crate::registry::{BlobStatus, Client, RegistryError};
use crate::report::{Event, Reporter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyMode {
    /// Skip verification (not recommended).
    Off,
    /// Manifests by tag and digest, config digest, every blob's presence and size.
    Standard,
    /// Standard, plus download every layer and check its uncompressed digest.
    Full,
}

impl VerifyMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Standard => "standard",
            Self::Full => "full",
        }
    }
}

/// What to do when the registry does not serve what was pushed.
const PUSH_AGAIN: &str = "the registry does not serve what was pushed, so do not use this \
    image from it; push again, and if this repeats, check the registry and anything between it \
    and this machine (a proxy or mirror that rewrites content)";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The registry serves something else than what was pushed.
    #[error("verification failed: {what}: expected {expected}, found {found}; {PUSH_AGAIN}")]
    Mismatch {
        what: String,
        expected: String,
        found: String,
    },
    /// The registry serves what was pushed, but the image itself is inconsistent (its config
    /// does not describe its layers): only `--verify full` can see this.
    #[error(
        "verification failed: {what}: expected {expected}, found {found}; the image is broken \
         at its source (its config does not describe its layers): rebuild it, and do not use \
         this push"
    )]
    BrokenImage {
        what: String,
        expected: String,
        found: String,
    },
    #[error(
        "verification failed: {0}; the registry lost it or never stored it: push again, and if \
         this repeats, check the registry's storage"
    )]
    Missing(String),
    #[error("verification failed: {0}")]
    Registry(#[from] RegistryError),
}

pub struct Verifier<'a> {
    pub client: &'a Client,
    pub repository: &'a str,
    pub reporter: Arc<dyn Reporter>,
    pub mode: VerifyMode,
}

impl Verifier<'_> {
    pub async fn verify(&self, root: &PushedNode, tags: &[String]) -> Result<(), VerifyError> {
        if self.mode == VerifyMode::Off {
            return Ok(());
        }
        let expected = &root.document().digest;
        for tag in tags {
            self.check_manifest(tag, expected).await?;
            self.reporter.event(&Event::Verified {
                what: &format!("{}:{tag} is {expected}", self.repository),
            });
        }
        let mut seen = HashSet::new();
        self.check_node(root, &mut seen).await
    }

    /// Fetches `reference` and requires its bytes to hash to `expected`.
    async fn check_manifest(
        &self,
        reference: &str,
        expected: &Digest,
    ) -> Result<Bytes, VerifyError> {
        let what = format!("manifest {}:{reference}", self.repository);
        let (bytes, _media_type) = self
            .client
            .get_manifest(self.repository, reference)
            .await?
            .ok_or_else(|| VerifyError::Missing(format!("{what} is not in the registry")))?;
        let found = blob::sha256_digest(&bytes);
        if &found != expected {
            return Err(VerifyError::Mismatch {
                what: format!("{what} digest"),
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
        Ok(bytes)
    }

    async fn check_node(
        &self,
        node: &PushedNode,
        seen: &mut HashSet<Digest>,
    ) -> Result<(), VerifyError> {
        let digest = &node.document().digest;
        let bytes = self.check_manifest(digest.as_ref(), digest).await?;
        match node {
            PushedNode::Index { children, .. } => {
                for child in children {
                    Box::pin(self.check_node(child, seen)).await?;
                }
            }
            PushedNode::Manifest(manifest) => {
                self.check_config_reference(&bytes, manifest)?;
                for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                    if !blob.foreign && seen.insert(blob.digest.clone()) {
                        self.check_blob(blob).await?;
                    }
                }
                if self.mode == VerifyMode::Full {
                    self.check_layer_contents(manifest).await?;
                }
                self.reporter.event(&Event::Verified {
                    what: &format!(
                        "{digest}{}: config and {} layers present",
                        manifest
                            .platform
                            .as_ref()
                            .map(|p| format!(" ({p})"))
                            .unwrap_or_default(),
                        manifest.layers.len()
                    ),
                });
            }
        }
        Ok(())
    }

    fn check_config_reference(
        &self,
        remote: &[u8],
        manifest: &PushedManifest,
    ) -> Result<(), VerifyError> {
        let parsed = OciManifest::from_reader(remote).map_err(|e| VerifyError::Mismatch {
            what: format!(
                "manifest {} in {}",
                manifest.document.digest, self.repository
            ),
            expected: "a valid image manifest".into(),
            found: e.to_string(),
        })?;
        let found = parsed.config().digest();
        if found != &manifest.config.digest {
            return Err(VerifyError::Mismatch {
                what: "config digest".into(),
                expected: manifest.config.digest.to_string(),
                found: found.to_string(),
            });
        }
        Ok(())
    }

    async fn check_blob(&self, blob: &PushedBlob) -> Result<(), VerifyError> {
        match self
            .client
            .blob_status(self.repository, &blob.digest)
            .await?
        {
            BlobStatus::Missing => Err(VerifyError::Missing(format!(
                "blob {} is not in {}",
                blob.digest, self.repository
            ))),
            BlobStatus::Present(Some(size)) if size != blob.size => Err(VerifyError::Mismatch {
                what: format!("size of blob {}", blob.digest),
                expected: blob.size.to_string(),
                found: size.to_string(),
            }),
            BlobStatus::Present(Some(_)) => Ok(()),
            // A registry that will not say how large a blob is has not said it is wrong: the
            // blob is there under its digest (and `--verify full` downloads it).
            BlobStatus::Present(None) => {
                self.reporter.event(&Event::Note {
                    message: &format!(
                        "the registry does not tell the size of blob {}; it is present, its size \
                         was not checked",
                        blob.digest
                    ),
                });
                Ok(())
            }
        }
    }

    /// Downloads each layer, hashing it compressed (must equal its digest) and uncompressed
    /// (must equal the config's `diff_id`).
    async fn check_layer_contents(&self, manifest: &PushedManifest) -> Result<(), VerifyError> {
        for (index, layer) in manifest.layers.iter().enumerate() {
            if layer.foreign {
                continue;
            }
            let (compressed, uncompressed) =
                self.download_and_hash(&layer.digest).await?.map_err(|e| {
                    VerifyError::Mismatch {
                        what: format!("downloaded bytes of layer {}", layer.digest),
                        expected: layer.digest.to_string(),
                        found: format!("a download that could not be read ({e})"),
                    }
                })?;
            // Checked first: bytes other than the pushed ones are the registry's fault, whether
            // or not they still decompress.
            if compressed.digest != layer.digest {
                return Err(VerifyError::Mismatch {
                    what: format!("downloaded bytes of layer {}", layer.digest),
                    expected: layer.digest.to_string(),
                    found: compressed.digest.to_string(),
                });
            }
            // The pushed bytes: if they do not read as a layer, the image was built that way.
            let uncompressed = uncompressed.map_err(|e| VerifyError::BrokenImage {
                what: format!("layer {}", layer.digest),
                expected: "a readable (gzip, zstd or plain) tar".into(),
                found: e.to_string(),
            })?;
            if let Some(diff_id) = manifest.diff_ids.get(index)
                && &uncompressed.digest != diff_id
            {
                return Err(VerifyError::BrokenImage {
                    what: format!("uncompressed digest (diff_id) of layer {}", layer.digest),
                    expected: diff_id.to_string(),
                    found: uncompressed.digest.to_string(),
                });
            }
            self.reporter.event(&Event::Verified {
                what: &format!("layer {} content matches diff_id", layer.digest),
            });
        }
        Ok(())
    }
}

impl Verifier<'_> {
    /// Downloads a layer and hashes it (as sent, and uncompressed). A download that breaks in
    /// the middle starts again, within the client's retry bounds: the request itself is
    /// retried by the client, but a body cut short after the answer began is seen only here.
    async fn download_and_hash(
        &self,
        digest: &Digest,
    ) -> Result<io::Result<(blob::Measured, io::Result<blob::Measured>)>, VerifyError> {
        let policy = self.client.retry_policy();
        let mut attempts = policy.start();
        loop {
            let response = self.client.get_blob(self.repository, digest).await?;
            let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(4);
            let hashing =
                tokio::task::spawn_blocking(move || hash_layer(ChannelReader::new(receiver)));
            let mut response = response;
            let mut download_error = None;
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if sender.send(Ok(chunk)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        download_error = Some(RegistryError::transport(
                            &format!("download layer {digest}"),
                            &error,
                        ));
                        let _ = sender.send(Err(io::Error::other("download failed"))).await;
                        break;
                    }
                }
            }
            drop(sender);
            let hashed = hashing
                .await
                .map_err(|e| VerifyError::Missing(format!("hashing failed: {e}")))?;
            let Some(error) = download_error else {
                return Ok(hashed);
            };
            match attempts.next_delay(None) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(error.into()),
            }
        }
    }
}

/// Hashes a layer as downloaded and, after decompression (chosen by magic bytes), as a tar.
/// Bytes that do not decompress still get their download digest (the rest is read anyway), so
/// the caller can tell bytes changed on the way from a layer that was built broken.
fn hash_layer(reader: impl Read) -> io::Result<(blob::Measured, io::Result<blob::Measured>)> {
    let mut compressed = HashingReader::new(reader);
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < head.len() {
        match compressed.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    let uncompressed = {
        let chained = io::Cursor::new(head[..filled].to_vec()).chain(&mut compressed);
        let decoder: io::Result<Box<dyn Read + '_>> = if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Box::new(flate2::read::MultiGzDecoder::new(chained)))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            zstd::Decoder::new(chained).map(|d| Box::new(d) as Box<dyn Read + '_>)
        } else {
            Ok(Box::new(chained))
        };
        decoder.and_then(|decoder| {
            let mut uncompressed = HashingReader::new(decoder);
            io::copy(&mut uncompressed, &mut io::sink())?;
            Ok(uncompressed.finish())
        })
    };
    // Anything after the compressed stream (or after the point where it broke) still belongs
    // to the blob's digest.
    io::copy(&mut compressed, &mut io::sink())?;
    Ok((compressed.finish(), uncompressed))
}

/// A blocking `Read` over chunks arriving on a channel.
struct ChannelReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(receiver: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            receiver,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
