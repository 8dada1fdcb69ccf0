//! Image generators: realistic test images (text-like files that compress like real ones,
//! several layers, a proper config with `diff_ids`) written in every input format ecr-push
//! reads. Deterministic for a given seed: tar headers carry fixed times and owners, gzip
//! carries no timestamp, JSON is written once as bytes and hashed as written.
//!
//! Each writer returns [`Facts`]: what a correct push must preserve.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::sha256;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A small deterministic PRNG (xorshift64*): no dependency, same bytes on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
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

/// Text that compresses like source code (about 4:1 with gzip).
fn text(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 80);
    while out.len() < bytes {
        let indent = rng.below(4) * 4;
        out.extend(std::iter::repeat_n(b' ', indent));
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

/// A tar written with fixed metadata, so the same inputs give the same bytes.
pub struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for TarWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TarWriter {
    pub fn new() -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        Self { builder }
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Directory, 0, 0o755);
        self.builder
            .append_data(&mut header, path, std::io::empty())
            .expect("tar dir");
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Regular, data.len() as u64, 0o644);
        self.builder
            .append_data(&mut header, path, data)
            .expect("tar file");
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
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

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// One uncompressed layer tar and its `diff_id`.
#[derive(Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub diff_id: String,
}

/// What an image looks like.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub name: String,
    pub tag: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub layers: usize,
    pub layer_bytes: usize,
    pub seed: u64,
}

impl ImageSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            tag: "v1".to_owned(),
            architecture: "amd64".to_owned(),
            variant: None,
            layers: 3,
            layer_bytes: 150_000,
            seed: 1,
        }
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn layers(mut self, layers: usize) -> Self {
        self.layers = layers;
        self
    }

    pub fn tag(mut self, tag: &str) -> Self {
        tag.clone_into(&mut self.tag);
        self
    }

    /// `os/arch[/variant]`, e.g. `linux/arm/v7`.
    pub fn platform(mut self, platform: &str) -> Self {
        let parts: Vec<&str> = platform.split('/').collect();
        parts[1].clone_into(&mut self.architecture);
        self.variant = parts.get(2).map(|v| (*v).to_owned());
        self
    }

    pub fn platform_string(&self) -> String {
        match &self.variant {
            Some(variant) => format!("linux/{}/{variant}", self.architecture),
            None => format!("linux/{}", self.architecture),
        }
    }

    /// Layers and config. Layer 0 depends only on the seed (a shared base, as real images
    /// have); the others also on the name and platform.
    pub fn build(&self) -> Built {
        let layers: Vec<Layer> = (0..self.layers)
            .map(|i| {
                let salt = if i == 0 {
                    String::new()
                } else {
                    format!("{}{}", self.name, self.platform_string())
                };
                make_layer(self.seed * 100 + i as u64, &salt, i, self.layer_bytes)
            })
            .collect();
        let mut config = json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/usr/local/bin/app"],
                "WorkingDir": "/srv",
                "Labels": {"org.opencontainers.image.title": self.name}
            },
            "created": "2024-01-01T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
            "history": (0..self.layers).map(|i| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("COPY layer-{i} /")})).collect::<Vec<_>>()
        });
        if let Some(variant) = &self.variant {
            config["variant"] = json!(variant);
        }
        let config = serde_json::to_vec(&config).expect("config JSON");
        Built {
            spec: self.clone(),
            config_digest: sha256(&config),
            config,
            layers,
        }
    }
}

fn make_layer(seed: u64, salt: &str, index: usize, bytes: usize) -> Layer {
    let mut rng = Rng::new(
        seed ^ salt
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
    );
    let mut tar = TarWriter::new();
    let dir = format!("srv/layer{index}");
    tar.dir("srv/").dir(&format!("{dir}/"));
    let files = 4 + rng.below(4);
    for f in 0..files {
        let size = bytes / files;
        tar.file(&format!("{dir}/module_{f}.rs"), &text(&mut rng, size));
    }
    let tar = tar.finish();
    Layer {
        diff_id: sha256(&tar),
        tar,
    }
}

/// An image's config and layers.
#[derive(Clone)]
pub struct Built {
    pub spec: ImageSpec,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Layer>,
}

/// What a correct push of a written image must preserve.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Digest of the manifest or index that is pushed (for OCI inputs the pushed digest must be
    /// this one; empty for legacy docker save, whose manifest is generated by the pusher).
    pub digest: String,
    pub media_type: String,
    /// Config digest of a single image.
    pub config_digest: String,
    pub diff_ids: Vec<String>,
    /// Per platform: (`os/arch[/variant]`, manifest digest, config digest).
    pub platforms: Vec<(String, String, String)>,
    /// Digest of a layer blob as written (the first, compressed or not).
    pub layer_digests: Vec<String>,
}

/// Blobs of an OCI layout, by digest.
#[derive(Default)]
pub struct Blobs(BTreeMap<String, Vec<u8>>);

impl Blobs {
    fn add(&mut self, bytes: Vec<u8>) -> (String, usize) {
        let digest = sha256(&bytes);
        let size = bytes.len();
        self.0.insert(digest.clone(), bytes);
        (digest, size)
    }
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// How a manifest is written.
#[derive(Clone, Copy)]
pub struct ManifestStyle {
    pub gzip_layers: bool,
    /// umoci leaves the top-level `mediaType` out.
    pub top_level_media_type: bool,
}

impl Default for ManifestStyle {
    fn default() -> Self {
        Self {
            gzip_layers: true,
            top_level_media_type: true,
        }
    }
}

/// Adds an image's blobs and manifest; returns the manifest descriptor (with platform).
pub fn add_manifest(
    blobs: &mut Blobs,
    built: &Built,
    style: ManifestStyle,
) -> (Value, Vec<String>) {
    let (config_digest, config_size) = blobs.add(built.config.clone());
    let mut layer_digests = Vec::new();
    let layers: Vec<Value> = built
        .layers
        .iter()
        .map(|layer| {
            let (bytes, media_type) = if style.gzip_layers {
                (gzip(&layer.tar), LAYER_GZIP)
            } else {
                (layer.tar.clone(), LAYER_TAR)
            };
            let (digest, size) = blobs.add(bytes);
            layer_digests.push(digest.clone());
            descriptor(media_type, &digest, size)
        })
        .collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "config": descriptor(OCI_CONFIG, &config_digest, config_size),
        "layers": layers,
    });
    if style.top_level_media_type {
        manifest["mediaType"] = json!(OCI_MANIFEST);
    }
    let (digest, size) = blobs.add(serde_json::to_vec(&manifest).expect("manifest JSON"));
    let mut desc = descriptor(OCI_MANIFEST, &digest, size);
    desc["platform"] = platform_json(&built.spec);
    (desc, layer_digests)
}

fn platform_json(spec: &ImageSpec) -> Value {
    let mut platform = json!({"architecture": spec.architecture, "os": "linux"});
    if let Some(variant) = &spec.variant {
        platform["variant"] = json!(variant);
    }
    platform
}

/// Adds an index over `children`; returns its descriptor.
pub fn add_index(blobs: &mut Blobs, children: &[Value]) -> Value {
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children});
    let (digest, size) = blobs.add(serde_json::to_vec(&index).expect("index JSON"));
    descriptor(OCI_INDEX, &digest, size)
}

/// Adds a Docker-style attestation manifest for the manifest `subject`.
fn add_attestation(blobs: &mut Blobs, subject: &Value) -> Value {
    let statement = json!({"_type": "https://in-toto.io/Statement/v0.1", "subject": [{"digest": {"sha256": subject["digest"].as_str().unwrap().trim_start_matches("sha256:")}}], "predicateType": "https://slsa.dev/provenance/v0.2"});
    let (statement_digest, statement_size) = blobs.add(serde_json::to_vec(&statement).unwrap());
    let config = json!({"architecture": "unknown", "os": "unknown", "config": {}, "rootfs": {"type": "layers", "diff_ids": [statement_digest]}});
    let (config_digest, config_size) = blobs.add(serde_json::to_vec(&config).unwrap());
    let mut layer = descriptor(
        "application/vnd.in-toto+json",
        &statement_digest,
        statement_size,
    );
    layer["annotations"] = json!({"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"});
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, &config_digest, config_size), "layers": [layer]});
    let (digest, size) = blobs.add(serde_json::to_vec(&manifest).unwrap());
    let mut desc = descriptor(OCI_MANIFEST, &digest, size);
    desc["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    desc["annotations"] = json!({"vnd.docker.reference.digest": subject["digest"], "vnd.docker.reference.type": "attestation-manifest"});
    desc
}

/// An OCI layout in memory: blobs, `index.json` entries, and extra files (docker's
/// `manifest.json`).
#[derive(Default)]
pub struct Layout {
    pub blobs: Blobs,
    pub entries: Vec<Value>,
    pub extra: Vec<(String, Vec<u8>)>,
}

impl Layout {
    fn index_json(&self) -> Vec<u8> {
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}),
        )
        .unwrap()
    }

    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut files = vec![
            (
                "oci-layout".to_owned(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            ("index.json".to_owned(), self.index_json()),
        ];
        for (digest, bytes) in &self.blobs.0 {
            files.push((
                format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
                bytes.clone(),
            ));
        }
        files.extend(self.extra.iter().cloned());
        files
    }

    pub fn write_dir(&self, dir: &Path) {
        for (path, bytes) in self.files() {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }

    pub fn write_tar(&self, path: &Path) {
        let mut tar = TarWriter::new();
        tar.dir("blobs/").dir("blobs/sha256/");
        for (name, bytes) in self.files() {
            tar.file(&name, &bytes);
        }
        std::fs::write(path, tar.finish()).unwrap();
    }
}

fn single_image_layout(spec: &ImageSpec, style: ManifestStyle) -> (Layout, Facts) {
    let built = spec.build();
    let mut layout = Layout::default();
    let (mut desc, layer_digests) = add_manifest(&mut layout.blobs, &built, style);
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": spec.tag});
    let facts = Facts {
        digest: desc["digest"].as_str().unwrap().to_owned(),
        media_type: OCI_MANIFEST.to_owned(),
        config_digest: built.config_digest.clone(),
        diff_ids: built.layers.iter().map(|l| l.diff_id.clone()).collect(),
        platforms: Vec::new(),
        layer_digests,
    };
    layout.entries.push(desc);
    (layout, facts)
}

/// An OCI image layout directory (gzip layers).
pub fn oci_layout(dir: &Path, spec: &ImageSpec) -> Facts {
    let (layout, facts) = single_image_layout(spec, ManifestStyle::default());
    layout.write_dir(dir);
    facts
}

/// An OCI layout whose manifest has no top-level `mediaType`, as umoci writes.
pub fn oci_layout_without_media_type(dir: &Path, spec: &ImageSpec) -> Facts {
    let style = ManifestStyle {
        top_level_media_type: false,
        ..ManifestStyle::default()
    };
    let (layout, facts) = single_image_layout(spec, style);
    layout.write_dir(dir);
    facts
}

/// The same as a tar (oci-archive).
pub fn oci_archive(path: &Path, spec: &ImageSpec) -> Facts {
    let (layout, facts) = single_image_layout(spec, ManifestStyle::default());
    layout.write_tar(path);
    facts
}

/// A multi-platform OCI layout: `index.json` → image index → one manifest per platform.
pub fn oci_layout_multi(dir: &Path, specs: &[ImageSpec]) -> Facts {
    let (layout, facts) = multi_platform_layout(specs, specs, false);
    layout.write_dir(dir);
    facts
}

fn multi_platform_layout(
    specs: &[ImageSpec],
    present: &[ImageSpec],
    attestations: bool,
) -> (Layout, Facts) {
    let mut layout = Layout::default();
    let mut children = Vec::new();
    let mut platforms = Vec::new();
    let mut missing = Blobs::default();
    for spec in specs {
        let built = spec.build();
        let is_present = present
            .iter()
            .any(|p| p.platform_string() == spec.platform_string());
        let blobs = if is_present {
            &mut layout.blobs
        } else {
            &mut missing
        };
        let (desc, _) = add_manifest(blobs, &built, ManifestStyle::default());
        platforms.push((
            spec.platform_string(),
            desc["digest"].as_str().unwrap().to_owned(),
            built.config_digest.clone(),
        ));
        children.push(desc.clone());
        if attestations {
            children.push(add_attestation(blobs, &desc));
        }
    }
    let mut index = add_index(&mut layout.blobs, &children);
    index["annotations"] = json!({
        "io.containerd.image.name": format!("docker.io/library/{}:{}", specs[0].name, specs[0].tag),
        "org.opencontainers.image.ref.name": specs[0].tag,
    });
    let facts = Facts {
        digest: index["digest"].as_str().unwrap().to_owned(),
        media_type: OCI_INDEX.to_owned(),
        platforms,
        ..Facts::default()
    };
    layout.entries.push(index);
    (layout, facts)
}

/// Docker ≥ 25 `docker save`: an OCI layout with uncompressed layers plus the legacy
/// `manifest.json` pointing into `blobs/`.
pub fn docker_save_25(path: &Path, spec: &ImageSpec) -> Facts {
    let style = ManifestStyle {
        gzip_layers: false,
        top_level_media_type: true,
    };
    let (mut layout, facts) = single_image_layout(spec, style);
    layout.entries[0]["annotations"] = json!({
        "io.containerd.image.name": format!("docker.io/library/{}:{}", spec.name, spec.tag),
        "org.opencontainers.image.ref.name": spec.tag,
    });
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let manifest_json = json!([{
        "Config": blob(&facts.config_digest),
        "RepoTags": [format!("{}:{}", spec.name, spec.tag)],
        "Layers": facts.layer_digests.iter().map(|d| blob(d)).collect::<Vec<_>>(),
    }]);
    layout.extra.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest_json).unwrap(),
    ));
    layout.extra.push((
        "repositories".into(),
        serde_json::to_vec(&json!({spec.name.clone(): {spec.tag.clone(): facts.digest.trim_start_matches("sha256:")}})).unwrap(),
    ));
    layout.write_tar(path);
    facts
}

/// Docker 29 (containerd image store) `docker save`: `index.json` → image index listing every
/// platform and its attestation manifest, gzip layers; only the platforms in `present` have
/// their blobs in the archive, as when a single platform was pulled.
pub fn docker_save_29(path: &Path, specs: &[ImageSpec], present: &[ImageSpec]) -> Facts {
    let (mut layout, facts) = multi_platform_layout(specs, present, true);
    if let Some(first) = present.first() {
        let built = first.build();
        let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        let manifest_json = json!([{
            "Config": blob(&built.config_digest),
            "RepoTags": [format!("{}:{}", first.name, first.tag)],
            "Layers": built.layers.iter().map(|l| blob(&sha256(&gzip(&l.tar)))).collect::<Vec<_>>(),
        }]);
        layout.extra.push((
            "manifest.json".into(),
            serde_json::to_vec(&manifest_json).unwrap(),
        ));
    }
    layout.write_tar(path);
    facts
}

/// Legacy `docker save` (Docker < 25) of one or more images: `manifest.json` (written last,
/// as docker does), `<id>/layer.tar` uncompressed, and a symlink where a layer repeats.
pub fn docker_save_legacy(path: &Path, specs: &[ImageSpec]) -> Vec<Facts> {
    let mut tar = TarWriter::new();
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut entries = Vec::new();
    let mut all_facts = Vec::new();
    for spec in specs {
        let built = spec.build();
        let mut layer_paths = Vec::new();
        for (i, layer) in built.layers.iter().enumerate() {
            let id = sha256(format!("{}:{}:{i}:{}", spec.name, spec.tag, layer.diff_id).as_bytes());
            let id = id.trim_start_matches("sha256:").to_owned();
            tar.dir(&format!("{id}/"));
            tar.file(&format!("{id}/VERSION"), b"1.0");
            tar.file(
                &format!("{id}/json"),
                format!(r#"{{"id":"{id}"}}"#).as_bytes(),
            );
            if let Some(first) = written.get(&layer.diff_id) {
                // docker save links a layer it already wrote under another id.
                tar.symlink(&format!("{id}/layer.tar"), &format!("../{first}/layer.tar"));
            } else {
                tar.file(&format!("{id}/layer.tar"), &layer.tar);
                written.insert(layer.diff_id.clone(), id.clone());
            }
            layer_paths.push(format!("{id}/layer.tar"));
        }
        let config_name = format!("{}.json", built.config_digest.trim_start_matches("sha256:"));
        tar.file(&config_name, &built.config);
        entries.push(json!({"Config": config_name, "RepoTags": [format!("{}:{}", spec.name, spec.tag)], "Layers": layer_paths}));
        all_facts.push(Facts {
            config_digest: built.config_digest.clone(),
            diff_ids: built.layers.iter().map(|l| l.diff_id.clone()).collect(),
            ..Facts::default()
        });
    }
    tar.file("manifest.json", &serde_json::to_vec(&entries).unwrap());
    std::fs::write(path, tar.finish()).unwrap();
    all_facts
}

pub fn gzip_file(source: &Path, destination: &Path) {
    std::fs::write(destination, gzip(&std::fs::read(source).unwrap())).unwrap();
}

pub fn zstd_file(source: &Path, destination: &Path) {
    let data = std::fs::read(source).unwrap();
    std::fs::write(destination, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
}
