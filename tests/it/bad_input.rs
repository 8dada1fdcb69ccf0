//! Broken and hostile inputs, each its own test: each is refused with exit code 2 and a message
//! that says what is wrong, and nothing is written to the registry: no tag, no manifest, and
//! (for everything found before uploading) not a single request. The cases share one registry
//! (see [`shared_registry`]), so many tests cost no more than one.
//!
//! The inputs are built here from raw parts (raw tar headers where the `tar` crate refuses to
//! write what a hostile archive holds), starting from a valid image and breaking one thing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde_json::{Value, json};

use crate::harness::images::{TarWriter, gzip};
use crate::harness::proxy::{Action, Kind, Proxy};
use crate::harness::{Registry, ecr_push, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

// ---------------------------------------------------------------------------------------------
// Raw tar
// ---------------------------------------------------------------------------------------------

/// One entry of a hand-written tar.
enum Raw<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}", width = field.len() - 1);
    field[..text.len()].copy_from_slice(text.as_bytes());
}

/// A ustar header with whatever name it is given (`../x`, `/etc/x`): the `tar` crate refuses
/// to write those, hostile archives have them.
fn raw_header(name: &str, kind: u8, size: u64, link: &str) -> [u8; 512] {
    let mut header = [0u8; 512];
    assert!(name.len() <= 100 && link.len() <= 100);
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], size);
    octal(&mut header[136..148], 0);
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    header
}

fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let (name, kind, data, link): (&str, u8, &[u8], &str) = match entry {
            Raw::File(name, data) => (name, b'0', data, ""),
            Raw::Symlink(name, target) => (name, b'2', b"", target),
            Raw::HardLink(name, target) => (name, b'1', b"", target),
        };
        out.extend_from_slice(&raw_header(name, kind, data.len() as u64, link));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Files of an image source, by path.
#[derive(Clone, Default)]
struct Files(BTreeMap<String, Vec<u8>>);

impl Files {
    fn set(&mut self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.0.insert(path.to_owned(), bytes.into());
    }

    fn tar(&self) -> Vec<u8> {
        let entries: Vec<Raw<'_>> = self
            .0
            .iter()
            .map(|(path, bytes)| Raw::File(path, bytes))
            .collect();
        raw_tar(&entries)
    }

    /// The files plus `extra` raw entries (links, hostile names), as a tar.
    fn tar_with(&self, extra: &[Raw<'_>]) -> Vec<u8> {
        let mut entries: Vec<Raw<'_>> = self
            .0
            .iter()
            .map(|(path, bytes)| Raw::File(path, bytes))
            .collect();
        let end = entries.len();
        entries.splice(
            end..end,
            extra.iter().map(|e| match e {
                Raw::File(a, b) => Raw::File(a, b),
                Raw::Symlink(a, b) => Raw::Symlink(a, b),
                Raw::HardLink(a, b) => Raw::HardLink(a, b),
            }),
        );
        raw_tar(&entries)
    }

    fn write_dir(&self, dir: &Path) {
        for (path, bytes) in &self.0 {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A valid OCI layout, to break
// ---------------------------------------------------------------------------------------------

fn layer_tar(seed: u8) -> Vec<u8> {
    let text: Vec<u8> = (0..40_000u32)
        .map(|i| b"abcdefghij\n"[((i * 7 + u32::from(seed)) % 11) as usize])
        .collect();
    let mut tar = TarWriter::new();
    tar.file(&format!("srv/file-{seed}.txt"), &text);
    tar.finish()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()})
}

fn blob_path(digest: &Value) -> String {
    format!(
        "blobs/sha256/{}",
        digest.as_str().unwrap().trim_start_matches("sha256:")
    )
}

/// One image: a gzip layer, its config, its manifest; the parts a case changes.
struct Oci {
    files: Files,
    layer: Value,
    config: Value,
    diff_id: String,
}

impl Oci {
    fn new() -> Self {
        let mut oci = Self {
            files: Files::default(),
            layer: Value::Null,
            config: Value::Null,
            diff_id: String::new(),
        };
        oci.files
            .set("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
        let tar = layer_tar(1);
        oci.diff_id = sha256(&tar);
        oci.layer = oci.put(LAYER_GZIP, gzip(&tar));
        let config = json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [oci.diff_id]}});
        oci.config = oci.put(OCI_CONFIG, serde_json::to_vec(&config).unwrap());
        oci
    }

    /// Stores a blob; returns its descriptor.
    fn put(&mut self, media_type: &str, bytes: Vec<u8>) -> Value {
        let descriptor = descriptor(media_type, &bytes);
        self.files.set(&blob_path(&descriptor["digest"]), bytes);
        descriptor
    }

    fn manifest_json(&self) -> Value {
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": self.config, "layers": [self.layer]})
    }

    /// Stores the manifest (as `edit` leaves it); returns its descriptor.
    fn put_manifest(&mut self, edit: impl FnOnce(&mut Value)) -> Value {
        let mut manifest = self.manifest_json();
        edit(&mut manifest);
        self.put(OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap())
    }

    fn index(&mut self, entries: &[Value]) {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        self.files
            .set("index.json", serde_json::to_vec(&index).unwrap());
    }

    /// The valid layout: index.json → manifest.
    fn valid() -> Self {
        let mut oci = Self::new();
        let manifest = oci.put_manifest(|_| {});
        oci.index(&[manifest]);
        oci
    }

    /// Flips a byte of the blob `descriptor` names, keeping its size and name.
    fn corrupt(&mut self, descriptor: &Value) {
        let path = blob_path(&descriptor["digest"]);
        let bytes = self.files.0.get_mut(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
    }
}

/// Writes an OCI layout directory of one image whose only layer is `layer` (any bytes, e.g.
/// incompressible ones for transfer tests); returns the manifest digest.
pub fn layout_with_layer(dir: &Path, layer: Vec<u8>) -> String {
    let mut oci = Oci::new();
    oci.layer = oci.put("application/vnd.oci.image.layer.v1.tar", layer);
    let manifest = oci.put_manifest(|_| {});
    oci.index(std::slice::from_ref(&manifest));
    oci.files.write_dir(dir);
    manifest["digest"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// A valid legacy docker save, to break
// ---------------------------------------------------------------------------------------------

struct Legacy {
    files: Files,
    config_name: String,
    layers: Vec<String>,
}

impl Legacy {
    /// Two layers; `config_edit` may change the config before it is named by its digest.
    fn new(config_edit: impl FnOnce(&mut Value)) -> Self {
        let mut files = Files::default();
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for seed in [1, 2] {
            let tar = layer_tar(seed);
            diff_ids.push(sha256(&tar));
            let path = format!("layer{seed}/layer.tar");
            files.set(&path, tar);
            files.set(&format!("layer{seed}/VERSION"), b"1.0".to_vec());
            layers.push(path);
        }
        let mut config = json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        config_edit(&mut config);
        let config = serde_json::to_vec(&config).unwrap();
        let config_name = format!("{}.json", sha256(&config).trim_start_matches("sha256:"));
        files.set(&config_name, config);
        Self {
            files,
            config_name,
            layers,
        }
    }

    fn manifest(&mut self, config: &str, layers: &[String]) {
        let manifest = json!([{"Config": config, "RepoTags": ["app:v1"], "Layers": layers}]);
        self.files
            .set("manifest.json", serde_json::to_vec(&manifest).unwrap());
    }

    fn valid() -> Self {
        let mut legacy = Self::new(|_| {});
        let (config, layers) = (legacy.config_name.clone(), legacy.layers.clone());
        legacy.manifest(&config, &layers);
        legacy
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

/// When the problem can be found: before anything is sent (reading the source), or only while
/// a layer streams (its digest is known only once every byte went by).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Found {
    BeforeUpload,
    WhileStreaming,
}

struct Case {
    name: &'static str,
    /// Writes the input into the directory; returns the path to push.
    input: fn(&Path) -> PathBuf,
    /// Extra arguments (an invalid tag, …).
    args: &'static [&'static str],
    /// What the error message must say.
    needles: &'static [&'static str],
    found: Found,
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn oci_archive(dir: &Path, oci: &Oci) -> PathBuf {
    write(dir, "image.tar", &oci.files.tar())
}

fn oci_dir(dir: &Path, oci: &Oci) -> PathBuf {
    let path = dir.join("layout");
    oci.files.write_dir(&path);
    path
}

fn legacy_tar(dir: &Path, legacy: &Legacy) -> PathBuf {
    write(dir, "legacy.tar", &legacy.files.tar())
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

use Found::{BeforeUpload, WhileStreaming};

/// One `#[test]` per case, named after it: `name => Case { .. },`. The cases stay one table,
/// where each reads best next to the others.
macro_rules! corpus {
    ($($test:ident => $case:expr,)+) => {
        $(
            #[test]
            fn $test() {
                refused(stringify!($test), &$case);
            }
        )+

        /// The name of every case.
        const CORPUS: &[&str] = &[$(stringify!($test)),+];
    };
}

corpus! {
    empty_file => Case {
        name: "empty file",
        input: |dir| write(dir, "empty.tar", b""),
        args: &[],
        needles: &["the file is empty"],
        found: BeforeUpload,
    },
    not_a_tar => Case {
        name: "not a tar",
        input: |dir| {
            write(
                dir,
                "notes.txt",
                &b"just some text, not an image\n".repeat(40),
            )
        },
        args: &[],
        needles: &["neither a tar archive"],
        found: BeforeUpload,
    },
    truncated_tar_inside_a_blob => Case {
        name: "truncated tar (inside a blob)",
        input: |dir| {
            let tar = Oci::valid().files.tar();
            write(dir, "cut.tar", &tar[..tar.len() / 2])
        },
        args: &[],
        needles: &["truncated"],
        found: BeforeUpload,
    },
    truncated_tar_inside_a_header => Case {
        name: "truncated tar (inside a header)",
        input: |dir| {
            let tar = Oci::valid().files.tar();
            write(dir, "cut.tar", &tar[..512 * 3 + 100])
        },
        args: &[],
        needles: &["truncated"],
        found: BeforeUpload,
    },
    truncated_tar_at_a_block_boundary_no_end_of_archive_marker => Case {
        name: "truncated tar (at a block boundary, no end-of-archive marker)",
        input: |dir| {
            let tar = Oci::valid().files.tar();
            // Cut just after the first entry: everything left is whole, but the archive
            // simply stops.
            let first_body =
                u64::from_str_radix(std::str::from_utf8(&tar[124..135]).unwrap(), 8).unwrap();
            let end = 512 + (first_body as usize).next_multiple_of(512);
            write(dir, "cut.tar", &tar[..end])
        },
        args: &[],
        needles: &["end-of-archive", "truncated"],
        found: BeforeUpload,
    },
    truncated_gzip => Case {
        name: "truncated gzip",
        input: |dir| {
            let gz = gzip(&Oci::valid().files.tar());
            write(dir, "cut.tar.gz", &gz[..gz.len() * 2 / 3])
        },
        args: &[],
        needles: &["gzip-compressed tar", "cannot be decompressed", "truncated"],
        found: BeforeUpload,
    },
    truncated_zstd => Case {
        name: "truncated zstd",
        input: |dir| {
            let zst = zstd(&Oci::valid().files.tar());
            write(dir, "cut.tar.zst", &zst[..zst.len() * 2 / 3])
        },
        args: &[],
        needles: &["zstd-compressed tar", "cannot be decompressed", "truncated"],
        found: BeforeUpload,
    },
    gzip_of_something_that_is_not_a_tar => Case {
        name: "gzip of something that is not a tar",
        input: |dir| write(dir, "x.tar.gz", &gzip(&b"hello\n".repeat(300))),
        args: &[],
        needles: &["not a tar archive"],
        found: BeforeUpload,
    },
    entry_climbing_out_with_dotdot => Case {
        name: "entry climbing out with ..",
        input: |dir| {
            let tar = Oci::valid()
                .files
                .tar_with(&[Raw::File("../../escaped", b"x")]);
            write(dir, "dotdot.tar", &tar)
        },
        args: &[],
        needles: &["\"../../escaped\"", "climbs out"],
        found: BeforeUpload,
    },
    entry_with_an_absolute_path => Case {
        name: "entry with an absolute path",
        input: |dir| {
            let tar = Oci::valid()
                .files
                .tar_with(&[Raw::File("/etc/cron.d/evil", b"x")]);
            write(dir, "absolute.tar", &tar)
        },
        args: &[],
        needles: &["\"/etc/cron.d/evil\"", "absolute path"],
        found: BeforeUpload,
    },
    symlink_pointing_outside_the_archive => Case {
        name: "symlink pointing outside the archive",
        input: |dir| {
            let mut legacy = Legacy::valid();
            legacy.files.0.remove("layer2/layer.tar");
            let tar = legacy
                .files
                .tar_with(&[Raw::Symlink("layer2/layer.tar", "../../../etc/passwd")]);
            write(dir, "escape.tar", &tar)
        },
        args: &[],
        needles: &["layer2/layer.tar", "outside the archive"],
        found: BeforeUpload,
    },
    symlink_to_an_absolute_path => Case {
        name: "symlink to an absolute path",
        input: |dir| {
            let tar = Oci::valid()
                .files
                .tar_with(&[Raw::Symlink("blobs/sha256/evil", "/etc/shadow")]);
            write(dir, "absolute-link.tar", &tar)
        },
        args: &[],
        needles: &["blobs/sha256/evil", "outside the archive"],
        found: BeforeUpload,
    },
    hard_link_pointing_outside_the_archive => Case {
        name: "hard link pointing outside the archive",
        input: |dir| {
            let tar = Oci::valid()
                .files
                .tar_with(&[Raw::HardLink("blobs/sha256/evil", "../outside")]);
            write(dir, "hardlink.tar", &tar)
        },
        args: &[],
        needles: &["outside the archive"],
        found: BeforeUpload,
    },
    symlink_loop => Case {
        name: "symlink loop",
        input: |dir| {
            let mut legacy = Legacy::valid();
            legacy.files.0.remove("layer2/layer.tar");
            let tar = legacy.files.tar_with(&[
                Raw::Symlink("layer2/layer.tar", "../layer3/layer.tar"),
                Raw::Symlink("layer3/layer.tar", "../layer2/layer.tar"),
            ]);
            write(dir, "loop.tar", &tar)
        },
        args: &[],
        needles: &["layer2/layer.tar", "link loop"],
        found: BeforeUpload,
    },
    symlink_in_a_layout_directory_pointing_outside_it => Case {
        name: "symlink in a layout directory pointing outside it",
        input: |dir| {
            let mut oci = Oci::new();
            let manifest = oci.put_manifest(|_| {});
            oci.index(&[manifest]);
            let path = oci_dir(dir, &oci);
            // The layer blob becomes a link to a file outside the layout.
            let layer = path.join(blob_path(&oci.layer["digest"]));
            let outside = dir.join("outside-secret");
            std::fs::write(&outside, std::fs::read(&layer).unwrap()).unwrap();
            std::fs::remove_file(&layer).unwrap();
            std::os::unix::fs::symlink(&outside, &layer).unwrap();
            path
        },
        args: &[],
        needles: &["outside the layout"],
        found: BeforeUpload,
    },
    manifest_json_naming_a_missing_layer => Case {
        name: "manifest.json naming a missing layer",
        input: |dir| {
            let mut legacy = Legacy::valid();
            legacy.files.0.remove("layer2/layer.tar");
            legacy_tar(dir, &legacy)
        },
        args: &[],
        needles: &["layer layer2/layer.tar", "not in it"],
        found: BeforeUpload,
    },
    manifest_json_naming_a_config_outside_the_archive => Case {
        name: "manifest.json naming a config outside the archive",
        input: |dir| {
            let mut legacy = Legacy::valid();
            let layers = legacy.layers.clone();
            legacy.manifest("../../etc/passwd", &layers);
            legacy_tar(dir, &legacy)
        },
        args: &[],
        needles: &["../../etc/passwd", "not a path inside the image"],
        found: BeforeUpload,
    },
    manifest_json_that_lists_no_images => Case {
        name: "manifest.json that lists no images",
        input: |dir| {
            let mut legacy = Legacy::valid();
            legacy.files.set("manifest.json", b"[]".to_vec());
            legacy_tar(dir, &legacy)
        },
        args: &[],
        needles: &["lists no images"],
        found: BeforeUpload,
    },
    layer_bytes_that_do_not_match_their_digest_layout_directory => Case {
        name: "layer bytes that do not match their digest (layout directory)",
        input: |dir| {
            let mut oci = Oci::valid();
            let layer = oci.layer.clone();
            oci.corrupt(&layer);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["does not match its digest", "corrupt"],
        found: WhileStreaming,
    },
    layer_bytes_that_do_not_match_their_digest_oci_archive => Case {
        name: "layer bytes that do not match their digest (oci-archive)",
        input: |dir| {
            let mut oci = Oci::valid();
            let layer = oci.layer.clone();
            oci.corrupt(&layer);
            oci_archive(dir, &oci)
        },
        args: &[],
        needles: &["does not match its digest"],
        found: WhileStreaming,
    },
    manifest_bytes_that_do_not_match_their_digest => Case {
        name: "manifest bytes that do not match their digest",
        input: |dir| {
            let mut oci = Oci::new();
            let manifest = oci.put_manifest(|_| {});
            oci.index(std::slice::from_ref(&manifest));
            oci.corrupt(&manifest);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["manifest", "does not match its digest"],
        found: BeforeUpload,
    },
    config_bytes_that_do_not_match_their_digest => Case {
        name: "config bytes that do not match their digest",
        input: |dir| {
            let mut oci = Oci::valid();
            let config = oci.config.clone();
            oci.corrupt(&config);
            oci_archive(dir, &oci)
        },
        args: &[],
        needles: &["image config", "does not match its digest"],
        found: BeforeUpload,
    },
    legacy_config_whose_name_is_not_its_digest => Case {
        name: "legacy config whose name is not its digest",
        input: |dir| {
            let mut legacy = Legacy::valid();
            let name = legacy.config_name.clone();
            let mut config = legacy.files.0.remove(&name).unwrap();
            config.extend_from_slice(b" ");
            legacy.files.set(&name, config);
            legacy_tar(dir, &legacy)
        },
        args: &[],
        needles: &["config", "does not match its digest"],
        found: BeforeUpload,
    },
    layer_size_that_does_not_match_its_descriptor => Case {
        name: "layer size that does not match its descriptor",
        input: |dir| {
            let mut oci = Oci::new();
            let manifest = oci.put_manifest(|m| {
                let size = m["layers"][0]["size"].as_u64().unwrap();
                m["layers"][0]["size"] = json!(size + 1);
            });
            oci.index(&[manifest]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["bytes in the source but its descriptor says"],
        found: BeforeUpload,
    },
    manifest_size_that_does_not_match_the_index => Case {
        name: "manifest size that does not match the index",
        input: |dir| {
            let mut oci = Oci::new();
            let mut manifest = oci.put_manifest(|_| {});
            manifest["size"] = json!(manifest["size"].as_u64().unwrap() - 1);
            oci.index(&[manifest]);
            oci_archive(dir, &oci)
        },
        args: &[],
        needles: &["its descriptor says"],
        found: BeforeUpload,
    },
    index_naming_a_missing_manifest => Case {
        name: "index naming a missing manifest",
        input: |dir| {
            let mut oci = Oci::new();
            let manifest = oci.put_manifest(|_| {});
            oci.files.0.remove(&blob_path(&manifest["digest"]));
            oci.index(&[manifest]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["manifest sha256:", "not in it"],
        found: BeforeUpload,
    },
    nested_index_naming_a_missing_manifest => Case {
        name: "nested index naming a missing manifest",
        input: |dir| {
            let mut oci = Oci::new();
            let mut manifest = oci.put_manifest(|_| {});
            manifest["platform"] = json!({"os": "linux", "architecture": "amd64"});
            let mut missing = manifest.clone();
            missing["digest"] = json!(sha256(b"not here"));
            missing["platform"] = json!({"os": "linux", "architecture": "arm64"});
            let nested = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest, missing]});
            let nested = oci.put(OCI_INDEX, serde_json::to_vec(&nested).unwrap());
            oci.index(&[nested]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["linux/arm64", "not in the source"],
        found: BeforeUpload,
    },
    index_entry_of_an_unknown_media_type => Case {
        name: "index entry of an unknown media type",
        input: |dir| {
            let mut oci = Oci::new();
            let mut manifest = oci.put_manifest(|_| {});
            manifest["mediaType"] = json!("application/vnd.example.unknown+json");
            oci.index(&[manifest]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &[
            "application/vnd.example.unknown+json",
            "neither an image manifest nor an index",
        ],
        found: BeforeUpload,
    },
    manifest_whose_own_media_type_contradicts_its_descriptor => Case {
        name: "manifest whose own media type contradicts its descriptor",
        input: |dir| {
            let mut oci = Oci::new();
            let manifest = oci.put_manifest(|m| m["mediaType"] = json!(OCI_INDEX));
            oci.index(&[manifest]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["media type"],
        found: BeforeUpload,
    },
    digest_algorithm_other_than_sha256 => Case {
        name: "digest algorithm other than sha256",
        input: |dir| {
            let mut oci = Oci::new();
            let mut manifest = oci.put_manifest(|_| {});
            manifest["digest"] = json!(format!("sha512:{}", "ab".repeat(64)));
            oci.index(&[manifest]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["other than sha256"],
        found: BeforeUpload,
    },
    manifest_over_4_mib => Case {
        name: "manifest over 4 MiB",
        input: |dir| {
            let mut oci = Oci::new();
            let manifest = oci.put_manifest(|m| {
                m["annotations"] = json!({"padding": "x".repeat(4 * 1024 * 1024)});
            });
            oci.index(&[manifest]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["more than the 4194304 bytes"],
        found: BeforeUpload,
    },
    index_json_that_is_not_json => Case {
        name: "index.json that is not JSON",
        input: |dir| {
            let mut oci = Oci::valid();
            oci.files.set(
                "index.json",
                b"{\"schemaVersion\": 2, \"manifests\": [".to_vec(),
            );
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["index.json is not a valid image index"],
        found: BeforeUpload,
    },
    index_json_that_lists_no_images => Case {
        name: "index.json that lists no images",
        input: |dir| {
            let mut oci = Oci::new();
            oci.index(&[]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["lists no images"],
        found: BeforeUpload,
    },
    manifest_that_is_not_json => Case {
        name: "manifest that is not JSON",
        input: |dir| {
            let mut oci = Oci::new();
            let manifest = oci.put(
                OCI_MANIFEST,
                b"{\"schemaVersion\": 2, \"config\": ".to_vec(),
            );
            oci.index(&[manifest]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["manifest sha256:", "is not valid"],
        found: BeforeUpload,
    },
    config_that_is_not_json_oci => Case {
        name: "config that is not JSON (OCI)",
        input: |dir| {
            let mut oci = Oci::new();
            oci.config = oci.put(OCI_CONFIG, b"{\"architecture\": \"amd64\", ".to_vec());
            let manifest = oci.put_manifest(|_| {});
            oci.index(&[manifest]);
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["image config", "not a valid image config"],
        found: BeforeUpload,
    },
    config_that_is_not_json_legacy_docker_save => Case {
        name: "config that is not JSON (legacy docker save)",
        input: |dir| {
            let mut legacy = Legacy::valid();
            let config = b"{\"rootfs\": [".to_vec();
            let name = format!("{}.json", sha256(&config).trim_start_matches("sha256:"));
            legacy.files.set(&name, config);
            let layers = legacy.layers.clone();
            legacy.manifest(&name, &layers);
            legacy_tar(dir, &legacy)
        },
        args: &[],
        needles: &["not a valid image config"],
        found: BeforeUpload,
    },
    manifest_json_that_is_not_json => Case {
        name: "manifest.json that is not JSON",
        input: |dir| {
            let mut legacy = Legacy::valid();
            legacy
                .files
                .set("manifest.json", b"[{\"Config\": ".to_vec());
            legacy_tar(dir, &legacy)
        },
        args: &[],
        needles: &["manifest.json is not a docker save manifest"],
        found: BeforeUpload,
    },
    oci_layout_that_is_not_json => Case {
        name: "oci-layout that is not JSON",
        input: |dir| {
            let mut oci = Oci::valid();
            oci.files
                .set("oci-layout", b"imageLayoutVersion=1".to_vec());
            oci_archive(dir, &oci)
        },
        args: &[],
        needles: &["oci-layout file is not valid JSON"],
        found: BeforeUpload,
    },
    directory_that_is_not_an_oci_layout => Case {
        name: "directory that is not an OCI layout",
        input: |dir| {
            let path = dir.join("not-a-layout");
            std::fs::create_dir_all(path.join("blobs")).unwrap();
            std::fs::write(path.join("README"), "hello").unwrap();
            path
        },
        args: &[],
        needles: &["the directory is not an OCI image layout"],
        found: BeforeUpload,
    },
    index_json_without_an_oci_layout_file => Case {
        name: "index.json without an oci-layout file",
        input: |dir| {
            let mut oci = Oci::valid();
            oci.files.0.remove("oci-layout");
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["no oci-layout file"],
        found: BeforeUpload,
    },
    unsupported_oci_layout_version => Case {
        name: "unsupported oci-layout version",
        input: |dir| {
            let mut oci = Oci::valid();
            oci.files
                .set("oci-layout", br#"{"imageLayoutVersion":"2.0.0"}"#.to_vec());
            oci_dir(dir, &oci)
        },
        args: &[],
        needles: &["imageLayoutVersion \"2.0.0\"", "only \"1.0.0\""],
        found: BeforeUpload,
    },
    duplicate_entries => Case {
        name: "duplicate entries",
        input: |dir| {
            let oci = Oci::valid();
            let index = oci.files.0["index.json"].clone();
            let tar = oci.files.tar_with(&[Raw::File("./index.json", &index)]);
            write(dir, "duplicate.tar", &tar)
        },
        args: &[],
        needles: &["index.json twice"],
        found: BeforeUpload,
    },
    diff_ids_count_that_does_not_match_the_layers_legacy => Case {
        name: "diff_ids count that does not match the layers (legacy)",
        input: |dir| {
            let mut legacy = Legacy::new(|config| {
                config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
            });
            let (config, layers) = (legacy.config_name.clone(), legacy.layers.clone());
            legacy.manifest(&config, &layers);
            legacy_tar(dir, &legacy)
        },
        args: &[],
        needles: &["lists 1 layers (rootfs.diff_ids) but manifest.json lists 2"],
        found: BeforeUpload,
    },
    diff_ids_that_do_not_match_the_layers_legacy => Case {
        name: "diff_ids that do not match the layers (legacy)",
        input: |dir| {
            let mut legacy = Legacy::new(|config| {
                config["rootfs"]["diff_ids"][1] = json!(sha256(b"another layer"));
            });
            let (config, layers) = (legacy.config_name.clone(), legacy.layers.clone());
            legacy.manifest(&config, &layers);
            legacy_tar(dir, &legacy)
        },
        args: &[],
        needles: &["diff_ids", "does not match its digest"],
        found: WhileStreaming,
    },
    invalid_tag => Case {
        name: "invalid tag",
        input: |dir| oci_dir(dir, &Oci::valid()),
        args: &["--tag=-starts-with-a-dash"],
        needles: &["invalid tag"],
        found: BeforeUpload,
    },
    invalid_tag_too_long => Case {
        name: "invalid tag (too long)",
        input: |dir| oci_dir(dir, &Oci::valid()),
        args: &[
            "--tag=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ],
        needles: &["invalid tag"],
        found: BeforeUpload,
    },
    invalid_repository_name => Case {
        name: "invalid repository name",
        input: |dir| oci_dir(dir, &Oci::valid()),
        args: &["--repository", "Team/App"],
        needles: &["invalid repository name"],
        found: BeforeUpload,
    },
    invalid_repository_name_path_traversal => Case {
        name: "invalid repository name (path traversal)",
        input: |dir| oci_dir(dir, &Oci::valid()),
        args: &["--repository", "team/../admin"],
        needles: &["invalid repository name"],
        found: BeforeUpload,
    },
}

#[test]
fn the_corpus_has_at_least_20_broken_inputs() {
    assert!(CORPUS.len() >= 20, "{} cases", CORPUS.len());
}

/// One registry for every case of this binary's run (each case pushes to its own repository,
/// through its own proxy so that it counts only its own requests): started by the first case
/// that needs it, stopped when the last one running lets go of it.
fn shared_registry() -> Arc<Registry> {
    static SHARED: Mutex<Weak<Registry>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(registry) = shared.upgrade() {
        return registry;
    }
    let registry = Arc::new(Registry::start());
    *shared = Arc::downgrade(&registry);
    registry
}

/// Pushes the broken input of `case`: exit code 2, a message that says what is wrong, and
/// nothing written to the registry (no tag, no manifest; no request at all when the problem
/// can be found before uploading).
fn refused(test: &str, case: &Case) {
    let registry = shared_registry();
    let proxy = Proxy::start(&registry.url(), |_| Action::Forward);
    let dir = tempfile::tempdir().unwrap();
    let input = (case.input)(dir.path());
    // A case may name its own (invalid) repository.
    let repository = match case.args {
        ["--repository", name] => (*name).to_owned(),
        _ => format!("bad/{}", test.replace('_', "-")),
    };
    let mut args = vec![
        "push".to_owned(),
        input.to_str().unwrap().to_owned(),
        "--registry".to_owned(),
        proxy.url(),
        "--tag".to_owned(),
        "v1".to_owned(),
        "--jobs".to_owned(),
        "1".to_owned(),
    ];
    if !case.args.contains(&"--repository") {
        args.extend(["--repository".to_owned(), repository.clone()]);
    }
    args.extend(case.args.iter().map(|a| (*a).to_owned()));
    let run = ecr_push(&args, &[]);
    let mut problems = Vec::new();
    if run.code != 2 {
        problems.push(format!("exit code {} instead of 2", run.code));
    }
    for needle in case.needles {
        if !run.stderr.contains(needle) {
            problems.push(format!("the message does not say {needle:?}"));
        }
    }
    let requests = proxy.seen();
    if case.found == Found::BeforeUpload && !requests.is_empty() {
        problems.push(format!(
            "{} requests reached the registry: {:?}",
            requests.len(),
            requests
                .iter()
                .map(|r| format!("{} {}", r.method, r.target))
                .collect::<Vec<_>>()
        ));
    }
    if requests.iter().any(|r| r.kind == Kind::PutManifest) {
        problems.push("a manifest was put".into());
    }
    let valid_name = !repository.contains("..") && repository == repository.to_lowercase();
    if valid_name && !registry.tags(&repository).is_empty() {
        problems.push(format!("tags exist: {:?}", registry.tags(&repository)));
    }
    if valid_name && registry.manifest_digest(&repository, "v1").is_some() {
        problems.push("a manifest is tagged v1".into());
    }
    if case.found == Found::BeforeUpload && registry.catalog().contains(&repository) {
        problems.push("the repository exists in the registry".into());
    }
    assert!(
        problems.is_empty(),
        "\"{}\" was not refused cleanly: {}\n  stderr: {}",
        case.name,
        problems.join("; "),
        run.stderr.trim().replace('\n', "\n          ")
    );
}

/// A layout whose config names a `diff_id` that is not its layer's (as a broken build tool
/// would write it): every digest the push checks is right, only the uncompressed one is not.
pub struct WrongDiffId {
    /// The layer's digest.
    pub layer: String,
    /// What the config says the layer uncompresses to.
    pub claimed_diff_id: String,
    /// What it does uncompress to.
    pub true_diff_id: String,
}

pub fn layout_with_wrong_diff_id(dir: &Path) -> WrongDiffId {
    let mut oci = Oci::new();
    let claimed = sha256(b"another layer");
    let config = json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [claimed]}});
    oci.config = oci.put(OCI_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = oci.put_manifest(|_| {});
    oci.index(&[manifest]);
    oci.files.write_dir(dir);
    WrongDiffId {
        layer: oci.layer["digest"].as_str().unwrap().to_owned(),
        claimed_diff_id: claimed,
        true_diff_id: oci.diff_id.clone(),
    }
}

#[test]
fn a_corrupt_layer_is_invalid_input_even_where_another_destination_succeeded() {
    // Registry `a` already has the layer (pushed from the intact layout), so it never reads the
    // corrupt bytes and succeeds; `b` streams them and refuses them. The input is still broken,
    // and it is the user's to fix: exit code 2, with the report of both destinations.
    let (a, b) = (Registry::start(), Registry::start());
    let dir = tempfile::tempdir().unwrap();
    let oci = Oci::valid();
    let layout = oci_dir(dir.path(), &oci);
    let source = layout.to_str().unwrap();
    let args = |registries: &[&str]| {
        let mut args = vec![
            "push",
            source,
            "--repository",
            "bad/two",
            "--tag",
            "v1",
            "--json",
        ];
        for registry in registries {
            args.extend(["--registry", registry]);
        }
        args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>()
    };
    ecr_push(args(&[&a.url()]), &[]).success();

    let layer = layout.join(blob_path(&oci.layer["digest"]));
    let mut bytes = std::fs::read(&layer).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();

    let run = ecr_push(args(&[&a.url(), &b.url()]), &[]);
    run.failure(2);
    assert!(
        run.stderr.contains("does not match its digest"),
        "{}",
        run.stderr
    );
    let report = run.json();
    let destinations = report["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 2);
    assert_eq!(destinations[0]["verified"], true, "{report}");
    assert!(
        destinations[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match its digest")),
        "{report}"
    );
    assert!(b.tags("bad/two").is_empty(), "nothing tagged at b");
    assert_eq!(b.manifest_digest("bad/two", "v1"), None);
}
