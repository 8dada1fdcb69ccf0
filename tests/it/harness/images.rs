//! Image generators: realistic test images written, in the test process, in every input format
//! ecr-push reads — OCI layout, oci-archive, legacy `docker save`, Docker 25 and Docker 29
//! (containerd store) `docker save`, each optionally wrapped in gzip or zstd.
//!
//! "Realistic" matters because the pusher compresses, deduplicates and verifies: layers hold
//! source-like text and executable-like bytes that compress the way real files do (random bytes
//! would not), layers differ in size, and the config carries true `rootfs.diff_ids`.
//!
//! Deterministic for a given [`TestImage`]: tar headers carry mtime 0 and uid/gid 0, entries
//! are sorted, gzip carries no timestamp, and every JSON document is serialised exactly once;
//! its digest is computed over those bytes, which are the bytes written. Each writer returns
//! [`Facts`]: what a correct push must preserve.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::sha256;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The annotation OCI tools (skopeo `oci:<dir>:<tag>`, umoci) look images up by.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation Docker ≥ 25 adds with the full image name.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

// ---------------------------------------------------------------------------------------------
// What a test asserts
// ---------------------------------------------------------------------------------------------

/// What a correct push of a written image must preserve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub name: String,
    pub tag: String,
    /// Digest of the manifest or index as written in the source, which an OCI input must keep
    /// when pushed. Empty for legacy `docker save`: it has no manifest, the pusher makes one.
    pub digest: String,
    /// Media type of `digest` (empty for legacy `docker save`).
    pub media_type: String,
    /// Config digest of a single image; every input must keep it. Empty when `digest` is an
    /// index (see `platforms`).
    pub config_digest: String,
    /// `rootfs.diff_ids`: sha256 of each uncompressed layer tar, in order (a repeated layer
    /// appears twice). Empty for an index.
    pub diff_ids: Vec<String>,
    /// Size of each uncompressed layer tar, in the order of `diff_ids`.
    pub layer_sizes: Vec<u64>,
    /// Digest of each layer blob as written (gzip for OCI, uncompressed for Docker 25). Empty
    /// for legacy `docker save`, whose layers the pusher compresses itself.
    pub layer_digests: Vec<String>,
    /// For an index, per platform: (`os/arch[/variant]`, manifest digest, config digest).
    pub platforms: Vec<(String, String, String)>,
    /// Digests of the attestation manifests an index lists (`BuildKit` provenance).
    pub attestations: Vec<String>,
    /// Digests of the indexes nested in the root index (outermost first).
    pub nested_indexes: Vec<String>,
}

impl Facts {
    /// `name:tag`, as `RepoTags` and `docker-archive:<tar>:<name>:<tag>` spell it.
    pub fn repo_tag(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

// ---------------------------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------------------------

/// What an image looks like; a builder, then one `write_*` call per format.
///
/// Layer 0 depends only on the seed and its size: images built with the same seed share a base
/// layer, as real images do, which exercises blob dedup and docker's layer symlinks.
#[derive(Clone, Debug)]
pub struct TestImage {
    name: String,
    tag: String,
    os: String,
    architecture: String,
    variant: Option<String>,
    layer_sizes: Vec<usize>,
    seed: u64,
    manifest_media_type: bool,
    repeat_base_layer: bool,
}

/// Per-layer size pattern relative to `layer_bytes`, in thirds: layers of different sizes.
const SIZE_PATTERN: [usize; 3] = [3, 2, 4];
const DEFAULT_LAYER_BYTES: usize = 200_000;

fn layer_sizes(count: usize, bytes: usize) -> Vec<usize> {
    (0..count)
        .map(|i| bytes * SIZE_PATTERN[i % SIZE_PATTERN.len()] / 3)
        .collect()
}

impl TestImage {
    /// Three layers of about 200, 133 and 267 KB, linux/amd64, tag `v1`, seed 1.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            tag: "v1".to_owned(),
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            variant: None,
            layer_sizes: layer_sizes(3, DEFAULT_LAYER_BYTES),
            seed: 1,
            manifest_media_type: true,
            repeat_base_layer: false,
        }
    }

    #[must_use]
    pub fn tag(mut self, tag: &str) -> Self {
        tag.clone_into(&mut self.tag);
        self
    }

    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// `count` distinct layers of varied sizes around the current mean.
    #[must_use]
    pub fn layers(mut self, count: usize) -> Self {
        self.layer_sizes = layer_sizes(count, self.mean_layer_bytes());
        self
    }

    /// Rescales the layers (same count) around `bytes` of file content each.
    #[must_use]
    pub fn layer_bytes(mut self, bytes: usize) -> Self {
        self.layer_sizes = layer_sizes(self.layer_sizes.len(), bytes);
        self
    }

    /// Exact file-content bytes per layer (the tar adds headers on top).
    #[must_use]
    pub fn layer_sizes(mut self, sizes: &[usize]) -> Self {
        self.layer_sizes = sizes.to_vec();
        self
    }

    /// `os/arch[/variant]`, e.g. `linux/arm/v7`.
    #[must_use]
    pub fn platform(mut self, platform: &str) -> Self {
        let mut parts = platform.split('/');
        let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
            panic!("platform {platform:?} is not os/arch[/variant]");
        };
        os.clone_into(&mut self.os);
        architecture.clone_into(&mut self.architecture);
        self.variant = parts.next().map(str::to_owned);
        self
    }

    /// Leaves the top-level `mediaType` out of the manifest, as umoci does: the media type is
    /// then only on the `index.json` descriptor, and the manifest must be pushed with it.
    #[must_use]
    pub fn without_manifest_media_type(mut self) -> Self {
        self.manifest_media_type = false;
        self
    }

    /// Appends a copy of the base layer on top (a Dockerfile that copies the same files twice):
    /// the same `diff_id` twice in one image, which legacy `docker save` writes once and links.
    #[must_use]
    pub fn repeat_base_layer(mut self) -> Self {
        self.repeat_base_layer = true;
        self
    }

    pub fn platform_string(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    pub fn repo_tag(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }

    fn mean_layer_bytes(&self) -> usize {
        match self.layer_sizes.len() {
            0 => DEFAULT_LAYER_BYTES,
            n => self.layer_sizes.iter().sum::<usize>() / n,
        }
    }

    fn platform_json(&self) -> Value {
        let mut platform = json!({"architecture": self.architecture, "os": self.os});
        if let Some(variant) = &self.variant {
            platform["variant"] = json!(variant);
        }
        platform
    }

    /// The layers and the config, serialised once.
    fn build(&self) -> Built {
        let mut layers: Vec<Layer> = self
            .layer_sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| self.make_layer(i, bytes))
            .collect();
        let mut history: Vec<Value> = (0..layers.len()).map(copy_step).collect();
        if self.repeat_base_layer
            && let Some(base) = layers.first().cloned()
        {
            layers.push(base);
            history.push(copy_step(0));
        }
        // An instruction that changes no files: real configs carry these too.
        history.push(json!({
            "created": CREATED,
            "created_by": "CMD [\"/srv/bin/app\"]",
            "empty_layer": true,
        }));
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let mut config = json!({
            "architecture": self.architecture,
            "os": self.os,
            "created": CREATED,
            "config": {
                "Env": [
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    format!("APP_NAME={}", self.name),
                ],
                "Cmd": ["/srv/bin/app"],
                "WorkingDir": "/srv",
                "Labels": {"org.opencontainers.image.title": self.name},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(variant) = &self.variant {
            config["variant"] = json!(variant);
        }
        let config = to_json(&config);
        Built {
            image: self.clone(),
            config_digest: sha256(&config),
            config,
            layers,
        }
    }

    /// One layer: source files, an executable-like file and a text document under
    /// `srv/layer<i>/`. The base layer's content depends on the seed only.
    fn make_layer(&self, index: usize, bytes: usize) -> Layer {
        let salt = if index == 0 {
            String::new()
        } else {
            format!("{}/{}", self.name, self.platform_string())
        };
        let mut rng = Rng::new(self.seed.wrapping_mul(1000) + index as u64, &salt);
        let root = format!("srv/layer{index}");
        let mut tar = TarWriter::new();
        // About 60% source code, 30% executable-like bytes, the rest documentation.
        let sources = 3 + rng.below(4);
        let (source_bytes, binary_bytes) = (bytes * 6 / 10 / sources, bytes * 3 / 10);
        for f in 0..sources {
            let text = source_text(&mut rng, source_bytes);
            tar.file(&format!("{root}/src/module_{f}.rs"), &text);
        }
        tar.executable(
            &format!("{root}/bin/tool"),
            &binary_like(&mut rng, binary_bytes),
        );
        let readme_bytes = bytes.saturating_sub(source_bytes * sources + binary_bytes);
        tar.file(
            &format!("{root}/share/doc/README"),
            &source_text(&mut rng, readme_bytes),
        );
        let tar = tar.finish();
        Layer {
            diff_id: sha256(&tar),
            tar,
        }
    }
}

const CREATED: &str = "2024-01-01T00:00:00Z";

/// The `history` entry of the step that made layer `index`.
fn copy_step(index: usize) -> Value {
    json!({"created": CREATED, "created_by": format!("COPY layer{index}/ /srv/layer{index}/")})
}

/// An image's config bytes and uncompressed layers.
struct Built {
    image: TestImage,
    config: Vec<u8>,
    config_digest: String,
    layers: Vec<Layer>,
}

#[derive(Clone)]
struct Layer {
    tar: Vec<u8>,
    diff_id: String,
}

impl Built {
    /// Facts about the image itself; the writer adds what its format adds.
    fn facts(&self) -> Facts {
        Facts {
            name: self.image.name.clone(),
            tag: self.image.tag.clone(),
            config_digest: self.config_digest.clone(),
            diff_ids: self.layers.iter().map(|l| l.diff_id.clone()).collect(),
            layer_sizes: self.layers.iter().map(|l| l.tar.len() as u64).collect(),
            ..Facts::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Content that compresses like real files
// ---------------------------------------------------------------------------------------------

/// A small deterministic PRNG (xorshift64*): no dependency, same bytes on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, salt: &str) -> Self {
        let salt = salt
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        Self((seed ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "let", "fn", "return", "if", "else", "match", "config", "layer", "digest", "manifest",
    "registry", "upload", "stream", "buffer", "error", "result", "value", "index", "image",
    "platform", "push", "verify", "the", "of", "and", "to", "in", "is", "for", "with", "self",
    "struct", "impl", "pub", "use", "mod", "async", "await", "String", "Vec", "Option", "Some",
    "None", "Ok", "Err", "u64",
];

/// Lines that look like source code: gzip shrinks them about 3–4:1, as it does real code.
fn source_text(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 80);
    while out.len() < bytes {
        out.extend(std::iter::repeat_n(b' ', rng.below(4) * 4));
        for word in 0..(3 + rng.below(9)) {
            if word > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS[rng.below(WORDS.len())].as_bytes());
            if rng.below(7) == 0 {
                out.extend_from_slice(format!("_{}", rng.below(1000)).as_bytes());
            }
        }
        out.extend_from_slice(if rng.below(3) == 0 { b";\n" } else { b"\n" });
    }
    out.truncate(bytes);
    out
}

/// A handful of common x86-64 opcode bytes: machine code reuses few byte values.
const OPCODES: &[u8] = &[
    0x48, 0x89, 0x8b, 0xe8, 0xc3, 0x0f, 0x1f, 0x44, 0x00, 0xff, 0x55, 0x5d,
];

/// Bytes shaped like an executable: an ELF magic, then records of a growing little-endian
/// address and a few opcodes, with runs of zero padding. Not text, far from random.
fn binary_like(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 64);
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let mut address: u32 = 0x0040_1000;
    while out.len() < bytes {
        address = address.wrapping_add(4 * (1 + rng.below(8) as u32));
        out.extend_from_slice(&address.to_le_bytes());
        for _ in 0..rng.below(12) {
            out.push(OPCODES[rng.below(OPCODES.len())]);
        }
        if rng.below(5) == 0 {
            out.extend(std::iter::repeat_n(0, 8 + rng.below(24)));
        }
    }
    out.truncate(bytes);
    out
}

// ---------------------------------------------------------------------------------------------
// Bytes: tar and gzip
// ---------------------------------------------------------------------------------------------

/// A tar with fixed metadata (mtime 0, uid/gid 0) and a directory entry before the first entry
/// under each directory, so the same inputs give the same bytes.
pub struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
    dirs: BTreeSet<String>,
}

impl Default for TarWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TarWriter {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
            dirs: BTreeSet::new(),
        }
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    /// Adds `a/`, `a/b/` … for the parents of `path` not written yet.
    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash + 1;
            let dir = &path[..end];
            if self.dirs.insert(dir.to_owned()) {
                let mut header = Self::header(tar::EntryType::Directory, 0, 0o755);
                self.builder
                    .append_data(&mut header, dir, std::io::empty())
                    .expect("tar dir");
            }
        }
    }

    fn regular(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.parents(path);
        let mut header = Self::header(tar::EntryType::Regular, data.len() as u64, mode);
        self.builder
            .append_data(&mut header, path, data)
            .expect("tar file");
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.regular(path, data, 0o644)
    }

    pub fn executable(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.regular(path, data, 0o755)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.parents(path);
        let mut header = Self::header(tar::EntryType::Symlink, 0, 0o777);
        self.builder
            .append_link(&mut header, path, target)
            .expect("tar symlink");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish tar")
    }
}

/// gzip at level 6 with mtime 0 in the header, so the bytes depend on the input only.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Wraps any file in gzip (e.g. `image.tar` → `image.tar.gz`).
pub fn gzip_file(source: &Path, destination: &Path) {
    let data = std::fs::read(source).expect("read file to gzip");
    std::fs::write(destination, gzip(&data)).expect("write gzip file");
}

/// Wraps any file in zstd at level 3 (the zstd CLI's default).
pub fn zstd_file(source: &Path, destination: &Path) {
    let data = std::fs::read(source).expect("read file to zstd");
    let compressed = zstd::encode_all(&data[..], 3).expect("zstd");
    std::fs::write(destination, compressed).expect("write zstd file");
}

// ---------------------------------------------------------------------------------------------
// Archives: a file tree written as a directory or a tar
// ---------------------------------------------------------------------------------------------

enum Entry {
    File(Vec<u8>),
    Symlink(String),
}

/// The files of an image source. Entries are written sorted by path (as `docker save`, which
/// tars a directory, does), then the `trailer` in insertion order: docker writes
/// `manifest.json` last, so a reader only learns what it needs after passing every layer.
#[derive(Default)]
struct Archive {
    entries: BTreeMap<String, Entry>,
    trailer: Vec<(String, Entry)>,
}

impl Archive {
    fn file(&mut self, path: impl Into<String>, bytes: Vec<u8>) {
        self.entries.insert(path.into(), Entry::File(bytes));
    }

    fn symlink(&mut self, path: impl Into<String>, target: impl Into<String>) {
        self.entries
            .insert(path.into(), Entry::Symlink(target.into()));
    }

    fn file_last(&mut self, path: impl Into<String>, bytes: Vec<u8>) {
        self.trailer.push((path.into(), Entry::File(bytes)));
    }

    fn in_order(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries
            .iter()
            .chain(self.trailer.iter().map(|(path, entry)| (path, entry)))
    }

    fn write_tar(&self, path: &Path) {
        let mut tar = TarWriter::new();
        for (name, entry) in self.in_order() {
            match entry {
                Entry::File(bytes) => tar.file(name, bytes),
                Entry::Symlink(target) => tar.symlink(name, target),
            };
        }
        std::fs::write(path, tar.finish())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn write_dir(&self, dir: &Path) {
        for (name, entry) in self.in_order() {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("entry has a parent"))
                .expect("create layout directory");
            match entry {
                Entry::File(bytes) => std::fs::write(&path, bytes),
                Entry::Symlink(target) => std::os::unix::fs::symlink(target, &path),
            }
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", hex_of(digest))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialise JSON")
}

// ---------------------------------------------------------------------------------------------
// OCI: blobs, descriptors, manifests, indexes
// ---------------------------------------------------------------------------------------------

/// Content-addressed blobs, by digest.
#[derive(Default)]
struct Blobs(BTreeMap<String, Vec<u8>>);

impl Blobs {
    /// Stores `bytes`; returns their descriptor.
    fn add(&mut self, media_type: &str, bytes: Vec<u8>) -> Value {
        let digest = sha256(&bytes);
        let descriptor = json!({"mediaType": media_type, "digest": digest, "size": bytes.len()});
        self.0.insert(digest, bytes);
        descriptor
    }

    /// Stores a JSON document, serialised here once.
    fn add_json(&mut self, media_type: &str, document: &Value) -> Value {
        self.add(media_type, to_json(document))
    }
}

fn digest_of(descriptor: &Value) -> String {
    descriptor["digest"]
        .as_str()
        .expect("descriptor digest")
        .to_owned()
}

#[derive(Clone, Copy, PartialEq)]
enum LayerCompression {
    Gzip,
    None,
}

/// A manifest written into [`Blobs`].
struct Written {
    /// The manifest's descriptor, with its platform.
    descriptor: Value,
    layer_digests: Vec<String>,
}

/// Adds an image's config, layers and OCI manifest to `blobs`.
fn add_manifest(blobs: &mut Blobs, built: &Built, compression: LayerCompression) -> Written {
    let config = blobs.add(OCI_CONFIG, built.config.clone());
    let layers: Vec<Value> = built
        .layers
        .iter()
        .map(|layer| match compression {
            LayerCompression::Gzip => blobs.add(LAYER_GZIP, gzip(&layer.tar)),
            LayerCompression::None => blobs.add(LAYER_TAR, layer.tar.clone()),
        })
        .collect();
    let layer_digests = layers.iter().map(digest_of).collect();
    let mut manifest = json!({"schemaVersion": 2, "config": config, "layers": layers});
    if built.image.manifest_media_type {
        manifest["mediaType"] = json!(OCI_MANIFEST);
    }
    let mut descriptor = blobs.add_json(OCI_MANIFEST, &manifest);
    descriptor["platform"] = built.image.platform_json();
    Written {
        descriptor,
        layer_digests,
    }
}

/// Adds a BuildKit-style attestation manifest (an in-toto provenance statement) for `subject`,
/// as Docker lists one beside each platform; returns its descriptor.
fn add_attestation(blobs: &mut Blobs, subject: &Value) -> Value {
    let subject_digest = digest_of(subject);
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "_", "digest": {"sha256": hex_of(&subject_digest)}}],
        "predicate": {"buildType": "https://mobyproject.org/buildkit@v1"},
    });
    let mut layer = blobs.add_json("application/vnd.in-toto+json", &statement);
    layer["annotations"] = json!({"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"});
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    });
    let config = blobs.add_json(OCI_CONFIG, &config);
    let manifest =
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]});
    let mut descriptor = blobs.add_json(OCI_MANIFEST, &manifest);
    descriptor["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    descriptor["annotations"] = json!({
        "vnd.docker.reference.digest": subject_digest,
        "vnd.docker.reference.type": "attestation-manifest",
    });
    descriptor
}

/// An OCI image layout in memory: blobs and the `index.json` entries.
#[derive(Default)]
struct Layout {
    blobs: Blobs,
    entries: Vec<Value>,
}

impl Layout {
    fn archive(&self) -> Archive {
        let mut archive = Archive::default();
        archive.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries});
        archive.file("index.json", to_json(&index));
        for (digest, bytes) in &self.blobs.0 {
            archive.file(blob_path(digest), bytes.clone());
        }
        archive
    }
}

/// Docker's legacy `manifest.json` for one image whose blobs are in `blobs/sha256/`, as Docker
/// ≥ 25 writes it beside `index.json`.
fn docker_manifest_json(repo_tag: &str, config_digest: &str, layer_digests: &[String]) -> Vec<u8> {
    to_json(&json!([{
        "Config": blob_path(config_digest),
        "RepoTags": [repo_tag],
        "Layers": layer_digests.iter().map(|d| blob_path(d)).collect::<Vec<_>>(),
    }]))
}

/// `repositories`: docker's pre-1.10 name → tag → id map, still written by `docker save`.
fn repositories_json(images: &[(String, String, String)]) -> Vec<u8> {
    let mut map: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for (name, tag, id) in images {
        map.entry(name).or_default().insert(tag, id);
    }
    serde_json::to_vec(&map).expect("repositories JSON")
}

impl TestImage {
    /// A layout holding this one image, its `index.json` entry annotated with the tag.
    fn single_layout(&self, compression: LayerCompression) -> (Layout, Facts) {
        let built = self.build();
        let mut layout = Layout::default();
        let Written {
            mut descriptor,
            layer_digests,
        } = add_manifest(&mut layout.blobs, &built, compression);
        descriptor["annotations"] = json!({REF_NAME: self.tag});
        let facts = Facts {
            digest: digest_of(&descriptor),
            media_type: OCI_MANIFEST.to_owned(),
            layer_digests,
            ..built.facts()
        };
        layout.entries.push(descriptor);
        (layout, facts)
    }

    /// A layout whose one `index.json` entry is an image index over `platforms` (with Docker's
    /// attestation manifests if asked); only the platforms in `present` keep their blobs.
    fn multi_layout(
        &self,
        platforms: &[&str],
        present: &[&str],
        attestations: bool,
    ) -> (Layout, Facts) {
        for platform in present {
            assert!(
                platforms.contains(platform),
                "present platform {platform} is not one of {platforms:?}"
            );
        }
        let mut layout = Layout::default();
        let mut children = Vec::new();
        let mut facts = Facts {
            name: self.name.clone(),
            tag: self.tag.clone(),
            media_type: OCI_INDEX.to_owned(),
            ..Facts::default()
        };
        for platform in platforms {
            let built = self.clone().platform(platform).build();
            let mut blobs = Blobs::default();
            let written = add_manifest(&mut blobs, &built, LayerCompression::Gzip);
            facts.platforms.push((
                (*platform).to_owned(),
                digest_of(&written.descriptor),
                built.config_digest.clone(),
            ));
            if attestations {
                let attestation = add_attestation(&mut blobs, &written.descriptor);
                facts.attestations.push(digest_of(&attestation));
                children.extend([written.descriptor, attestation]);
            } else {
                children.push(written.descriptor);
            }
            if present.contains(platform) {
                layout.blobs.0.append(&mut blobs.0);
            }
        }
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children});
        let mut descriptor = layout.blobs.add_json(OCI_INDEX, &index);
        descriptor["annotations"] = json!({REF_NAME: self.tag});
        facts.digest = digest_of(&descriptor);
        layout.entries.push(descriptor);
        (layout, facts)
    }

    // -----------------------------------------------------------------------------------------
    // Writers, one per input format
    // -----------------------------------------------------------------------------------------

    /// An OCI image layout directory with gzip layers.
    pub fn write_oci_layout(&self, dir: &Path) -> Facts {
        let (layout, facts) = self.single_layout(LayerCompression::Gzip);
        layout.archive().write_dir(dir);
        facts
    }

    /// The same layout as a tar (`oci-archive`).
    pub fn write_oci_archive(&self, path: &Path) -> Facts {
        let (layout, facts) = self.single_layout(LayerCompression::Gzip);
        layout.archive().write_tar(path);
        facts
    }

    /// A multi-platform OCI layout directory: `index.json` → image index → one manifest per
    /// platform, every blob present.
    pub fn write_oci_layout_multi(&self, dir: &Path, platforms: &[&str]) -> Facts {
        let (layout, facts) = self.multi_layout(platforms, platforms, false);
        layout.archive().write_dir(dir);
        facts
    }

    /// A multi-platform OCI layout as `docker buildx build --output type=oci` writes it:
    /// an image index listing each platform's manifest and its attestation manifest
    /// (`vnd.docker.reference.type: attestation-manifest`, platform `unknown/unknown`).
    pub fn write_oci_layout_attested(&self, dir: &Path, platforms: &[&str]) -> Facts {
        let (layout, facts) = self.multi_layout(platforms, platforms, true);
        layout.archive().write_dir(dir);
        facts
    }

    /// Like [`TestImage::write_oci_layout_attested`], with the index inside another index
    /// (`index.json` → index → index → manifests): nesting the OCI image spec allows, which a
    /// push keeps as it is, so a registry then holds an index whose children are indexes.
    pub fn write_oci_layout_nested(&self, dir: &Path, platforms: &[&str]) -> Facts {
        let (mut layout, mut facts) = self.multi_layout(platforms, platforms, true);
        let mut inner = layout.entries.remove(0);
        // The name annotations belong on index.json's entry, the outer index.
        if let Some(descriptor) = inner.as_object_mut() {
            descriptor.remove("annotations");
        }
        let outer = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [inner]});
        let mut descriptor = layout.blobs.add_json(OCI_INDEX, &outer);
        descriptor["annotations"] = json!({REF_NAME: self.tag});
        facts.nested_indexes.push(facts.digest.clone());
        facts.digest = digest_of(&descriptor);
        layout.entries.push(descriptor);
        layout.archive().write_dir(dir);
        facts
    }

    /// Legacy `docker save` (Docker < 25) of this image; see
    /// [`write_docker_save_legacy_multi`].
    pub fn write_docker_save_legacy(&self, path: &Path) -> Facts {
        write_docker_save_legacy_multi(path, std::slice::from_ref(self)).remove(0)
    }

    /// Docker ≥ 25 `docker save` (classic image store): an OCI layout with UNCOMPRESSED layers
    /// whose `index.json` entry carries both name annotations, plus the legacy `manifest.json`
    /// pointing into `blobs/` and `repositories`.
    pub fn write_docker_save_25(&self, path: &Path) -> Facts {
        let (mut layout, facts) = self.single_layout(LayerCompression::None);
        layout.entries[0]["annotations"] = json!({
            CONTAINERD_NAME: format!("docker.io/library/{}", self.repo_tag()),
            REF_NAME: self.tag,
        });
        let mut archive = layout.archive();
        archive.file_last(
            "repositories",
            repositories_json(&[(
                self.name.clone(),
                self.tag.clone(),
                hex_of(&facts.config_digest).to_owned(),
            )]),
        );
        archive.file_last(
            "manifest.json",
            docker_manifest_json(&self.repo_tag(), &facts.config_digest, &facts.layer_digests),
        );
        archive.write_tar(path);
        facts
    }

    /// Docker 29 `docker save` (containerd image store): `index.json` → one image index listing
    /// every platform's manifest and its attestation manifest, gzip layers. Only the platforms
    /// in `present` have their manifest, config and layers in the tar — the others are
    /// referenced but absent, as after pulling one platform. `manifest.json` describes the first
    /// present platform.
    pub fn write_docker_save_29_containerd(
        &self,
        path: &Path,
        platforms: &[&str],
        present: &[&str],
    ) -> Facts {
        let (mut layout, facts) = self.multi_layout(platforms, present, true);
        layout.entries[0]["annotations"] = json!({
            CONTAINERD_NAME: format!("docker.io/library/{}", self.repo_tag()),
            REF_NAME: self.tag,
        });
        let mut archive = layout.archive();
        if let Some(first) = present.first() {
            let built = self.clone().platform(first).build();
            let layers: Vec<String> = built.layers.iter().map(|l| sha256(&gzip(&l.tar))).collect();
            archive.file_last(
                "manifest.json",
                docker_manifest_json(&self.repo_tag(), &built.config_digest, &layers),
            );
        }
        archive.write_tar(path);
        facts
    }
}

/// Legacy `docker save` (Docker < 25) of several images in one tar, as
/// `docker save a:1 b:2` writes it: per layer a `<id>/` directory with `VERSION`, `json` and an
/// UNCOMPRESSED `layer.tar`; `<config hex>.json`; `repositories`; and `manifest.json` last.
/// A layer whose `diff_id` was already written (a shared base, a repeated layer) becomes a
/// symlink `<id>/layer.tar` → `../<first id>/layer.tar`, as docker writes it; with sorted
/// entries the link may come before its target.
pub fn write_docker_save_legacy_multi(path: &Path, images: &[TestImage]) -> Vec<Facts> {
    let mut archive = Archive::default();
    let mut first_copy: BTreeMap<String, String> = BTreeMap::new();
    let mut manifest = Vec::new();
    let mut repositories = Vec::new();
    let mut all_facts = Vec::new();
    for image in images {
        let built = image.build();
        let mut parent: Option<String> = None;
        let mut layer_paths = Vec::new();
        for layer in &built.layers {
            let id = legacy_layer_id(&image.repo_tag(), parent.as_deref(), &layer.diff_id);
            let layer_path = format!("{id}/layer.tar");
            archive.file(format!("{id}/VERSION"), b"1.0".to_vec());
            archive.file(
                format!("{id}/json"),
                legacy_layer_json(&id, parent.as_deref()),
            );
            if let Some(first) = first_copy.get(&layer.diff_id) {
                archive.symlink(&layer_path, format!("../{first}"));
            } else {
                archive.file(&layer_path, layer.tar.clone());
                first_copy.insert(layer.diff_id.clone(), layer_path.clone());
            }
            layer_paths.push(layer_path);
            parent = Some(id);
        }
        let config_path = format!("{}.json", hex_of(&built.config_digest));
        archive.file(&config_path, built.config.clone());
        manifest.push(
            json!({"Config": config_path, "RepoTags": [image.repo_tag()], "Layers": layer_paths}),
        );
        repositories.push((
            image.name.clone(),
            image.tag.clone(),
            parent.unwrap_or_default(),
        ));
        all_facts.push(built.facts());
    }
    archive.file_last("repositories", repositories_json(&repositories));
    archive.file_last("manifest.json", to_json(&Value::Array(manifest)));
    archive.write_tar(path);
    all_facts
}

/// A v1 layer id: unique per image and position (docker derives it from the layer chain).
fn legacy_layer_id(repo_tag: &str, parent: Option<&str>, diff_id: &str) -> String {
    let digest = sha256(format!("{repo_tag}\n{}\n{diff_id}", parent.unwrap_or("")).as_bytes());
    hex_of(&digest).to_owned()
}

fn legacy_layer_json(id: &str, parent: Option<&str>) -> Vec<u8> {
    let mut json = json!({
        "id": id,
        "created": "1970-01-01T00:00:00Z",
        "os": "linux",
        "container_config": {"Cmd": null},
    });
    if let Some(parent) = parent {
        json["parent"] = json!(parent);
    }
    to_json(&json)
}

// ---------------------------------------------------------------------------------------------
// Entry points the end-to-end tests were first written against; thin wrappers.
// ---------------------------------------------------------------------------------------------

pub type ImageSpec = TestImage;

pub fn oci_layout(dir: &Path, image: &TestImage) -> Facts {
    image.write_oci_layout(dir)
}

pub fn oci_layout_without_media_type(dir: &Path, image: &TestImage) -> Facts {
    image
        .clone()
        .without_manifest_media_type()
        .write_oci_layout(dir)
}

pub fn oci_archive(path: &Path, image: &TestImage) -> Facts {
    image.write_oci_archive(path)
}

fn platforms_of(images: &[TestImage]) -> Vec<String> {
    images.iter().map(TestImage::platform_string).collect()
}

fn as_strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

/// `images` are one image per platform (they differ only by platform).
pub fn oci_layout_multi(dir: &Path, images: &[TestImage]) -> Facts {
    let platforms = platforms_of(images);
    images[0].write_oci_layout_multi(dir, &as_strs(&platforms))
}

pub fn docker_save_25(path: &Path, image: &TestImage) -> Facts {
    image.write_docker_save_25(path)
}

pub fn docker_save_29(path: &Path, images: &[TestImage], present: &[TestImage]) -> Facts {
    let (platforms, present) = (platforms_of(images), platforms_of(present));
    images[0].write_docker_save_29_containerd(path, &as_strs(&platforms), &as_strs(&present))
}

pub fn docker_save_legacy(path: &Path, images: &[TestImage]) -> Vec<Facts> {
    write_docker_save_legacy_multi(path, images)
}
