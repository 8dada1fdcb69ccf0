//! Tests of the harness itself, against the real tools. Every end-to-end test trusts what the
//! generators report (digests, `diff_ids`) and what the registry helpers read back; if those were
//! wrong, the end-to-end tests would prove nothing. So: skopeo must read every generated format
//! and agree on every digest, and skopeo copies (which check every blob, and for docker
//! archives every `diff_id`) must succeed.

use std::io::Read as _;
use std::path::Path;

use serde_json::Value;

use crate::harness::images::{
    self, CONTAINERD_NAME, LAYER_GZIP, LAYER_TAR, OCI_INDEX, OCI_MANIFEST, REF_NAME,
};
use crate::harness::{Facts, Registry, TestImage, sha256, skopeo};

/// sha256 of nothing, as every sha256 tool prints it.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const PLATFORMS: [&str; 3] = ["linux/amd64", "linux/arm64", "linux/arm/v7"];

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// One tar entry, read back with the `tar` crate.
struct TarEntry {
    path: String,
    kind: tar::EntryType,
    link: Option<String>,
    mtime: u64,
    uid: u64,
    data: Vec<u8>,
}

fn read_tar(path: &Path) -> Vec<TarEntry> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).expect("open tar"));
    archive
        .entries()
        .expect("tar entries")
        .map(|entry| {
            let mut entry = entry.expect("tar entry");
            let header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("tar entry body");
            TarEntry {
                path: entry.path().expect("path").display().to_string(),
                kind: header.entry_type(),
                link: entry
                    .link_name()
                    .expect("link name")
                    .map(|l| l.display().to_string()),
                mtime: header.mtime().expect("mtime"),
                uid: header.uid().expect("uid"),
                data,
            }
        })
        .collect()
}

fn entry<'a>(entries: &'a [TarEntry], path: &str) -> &'a TarEntry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the tar"))
}

fn has_blob(entries: &[TarEntry], digest: &str) -> bool {
    let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    entries.iter().any(|e| e.path == path)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// The facts' layer list against the blobs themselves: each blob decompresses to a tar of the
/// reported size whose sha256 is the reported `diff_id`. Returns the total compressed size.
fn check_layer_blobs(facts: &Facts, blob: impl Fn(&str) -> Vec<u8>, gzip: bool) -> usize {
    assert!(facts.layer_digests.len() >= 3, "{facts:?}");
    assert_eq!(facts.layer_digests.len(), facts.diff_ids.len());
    let mut compressed = 0;
    for (i, digest) in facts.layer_digests.iter().enumerate() {
        let bytes = blob(digest);
        assert_eq!(
            &sha256(&bytes),
            digest,
            "blob {digest} is named by its digest"
        );
        compressed += bytes.len();
        let tar = if gzip { gunzip(&bytes) } else { bytes };
        assert_eq!(sha256(&tar), facts.diff_ids[i], "diff_id of layer {i}");
        assert_eq!(tar.len() as u64, facts.layer_sizes[i], "size of layer {i}");
    }
    compressed
}

fn layout_blob(dir: &Path) -> impl Fn(&str) -> Vec<u8> {
    move |digest| {
        std::fs::read(
            dir.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .expect("blob file")
    }
}

#[test]
fn anonymous_registry_reports_what_is_stored() {
    let registry = Registry::start();
    assert_eq!(registry.status_of("GET", "/v2/", None), 200);
    assert!(registry.catalog().is_empty());
    assert!(registry.tags("team/app").is_empty(), "no repository yet");
    assert!(!registry.manifest_exists("team/app", "v1"));
    assert_eq!(registry.manifest_digest("team/app", "v1"), None);

    let dir = tempfile::tempdir().unwrap();
    let facts = TestImage::new("app").write_oci_layout(dir.path());
    let image_ref = format!("{}/team/app:v1", registry.host());
    skopeo::copy(
        &format!("oci:{}:v1", dir.path().display()),
        &format!("docker://{image_ref}"),
        None,
    );

    assert_eq!(registry.catalog(), ["team/app"]);
    assert_eq!(registry.tags("team/app"), ["v1"]);
    assert!(registry.manifest_exists("team/app", "v1"));
    assert!(registry.manifest_exists("team/app", &facts.digest));
    assert!(!registry.manifest_exists("team/app", "v2"));
    assert_eq!(
        registry.manifest_digest("team/app", "v1").as_deref(),
        Some(facts.digest.as_str()),
        "skopeo pushed the layout's manifest byte for byte"
    );
    assert!(registry.blob_exists("team/app", &facts.config_digest));
    for layer in &facts.layer_digests {
        assert!(registry.blob_exists("team/app", layer));
    }
    assert!(!registry.blob_exists("team/app", &sha256(b"never pushed")));
    assert!(registry.log_path().is_file());
}

#[test]
fn basic_auth_registry_wants_credentials() {
    let registry = Registry::start_with_basic_auth("AWS", "123456789012-auth-token");
    assert_eq!(registry.status_of("GET", "/v2/", None), 401);
    assert_eq!(
        registry.status_of("GET", "/v2/", Some(("AWS", "123456789012-auth-token"))),
        200
    );
    assert_eq!(
        registry.status_of("GET", "/v2/", Some(("AWS", "wrong"))),
        401
    );

    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    let facts = TestImage::new("auth").seed(3).write_oci_archive(&archive);
    let image_ref = format!("{}/team/auth:v1", registry.host());
    skopeo::copy(
        &format!("oci-archive:{}", archive.display()),
        &format!("docker://{image_ref}"),
        registry.skopeo_creds(),
    );
    assert_eq!(
        skopeo::remote_digest(&image_ref, registry.skopeo_creds()),
        facts.digest
    );
    assert_eq!(
        registry.tags("team/auth"),
        ["v1"],
        "the helpers authenticate"
    );
    assert_eq!(
        registry.status_of("GET", "/v2/team/auth/tags/list", None),
        401
    );
}

#[test]
fn oci_layout_agrees_with_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let facts = TestImage::new("app").write_oci_layout(dir.path());
    assert_eq!(
        std::fs::read(dir.path().join("oci-layout")).unwrap(),
        br#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = json(&std::fs::read(dir.path().join("index.json")).unwrap());
    assert_eq!(index["manifests"][0]["annotations"][REF_NAME], "v1");
    assert_eq!(index["manifests"][0]["digest"], facts.digest.as_str());

    let source = format!("oci:{}:v1", dir.path().display());
    let manifest = skopeo::inspect_raw_local(&source);
    assert_eq!(sha256(&manifest), facts.digest);
    let manifest = json(&manifest);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(facts.media_type, OCI_MANIFEST);
    let layers = manifest["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["mediaType"] == LAYER_GZIP));
    assert_eq!(
        layers
            .iter()
            .map(|l| l["digest"].clone())
            .collect::<Vec<_>>(),
        facts.layer_digests
    );

    let config = skopeo::inspect_config_local(&source);
    assert_eq!(sha256(&config), facts.config_digest);
    let config = json(&config);
    assert_eq!(strings(&config["rootfs"]["diff_ids"]), facts.diff_ids);
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        (config["architecture"].as_str(), config["os"].as_str()),
        (Some("amd64"), Some("linux"))
    );
    assert_eq!(config["config"]["Cmd"][0], "/srv/bin/app");
    assert!(config["config"]["Env"].as_array().unwrap().len() >= 2);

    // Realistic: layers of different sizes (a few hundred KB) that gzip shrinks to 15–50%.
    let compressed = check_layer_blobs(&facts, layout_blob(dir.path()), true);
    let uncompressed: u64 = facts.layer_sizes.iter().sum();
    let percent = compressed as u64 * 100 / uncompressed;
    assert!((15..50).contains(&percent), "gzip to {percent}%");
    let mut sizes = facts.layer_sizes.clone();
    sizes.dedup();
    assert_eq!(
        sizes.len(),
        3,
        "layers differ in size: {:?}",
        facts.layer_sizes
    );
    assert!(facts.layer_sizes.iter().all(|&s| s > 100_000));

    let copy = tempfile::tempdir().unwrap();
    skopeo::copy_to_oci_dir(&source, copy.path(), None);
}

#[test]
fn manifest_without_media_type_is_read_by_skopeo() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = TestImage::new("umoci")
        .without_manifest_media_type()
        .write_oci_layout(dir.path());
    let source = format!("oci:{}:v1", dir.path().display());
    let manifest = skopeo::inspect_raw_local(&source);
    assert_eq!(sha256(&manifest), facts.digest);
    assert!(json(&manifest).get("mediaType").is_none(), "umoci style");
    let index = json(&std::fs::read(dir.path().join("index.json")).unwrap());
    assert_eq!(index["manifests"][0]["mediaType"], OCI_MANIFEST);

    let image_ref = format!("{}/team/umoci:v1", registry.host());
    skopeo::copy(&source, &format!("docker://{image_ref}"), None);
    assert_eq!(skopeo::remote_digest(&image_ref, None), facts.digest);
}

#[test]
fn oci_archive_round_trips_through_the_registry() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    let facts = TestImage::new("archive")
        .seed(2)
        .write_oci_archive(&archive);
    let source = format!("oci-archive:{}", archive.display());
    assert_eq!(sha256(&skopeo::inspect_raw_local(&source)), facts.digest);

    let image_ref = format!("{}/team/archive:v1", registry.host());
    skopeo::copy(&source, &format!("docker://{image_ref}"), None);
    assert_eq!(skopeo::remote_digest(&image_ref, None), facts.digest);
    assert_eq!(
        skopeo::remote_config_digest(&image_ref, None),
        facts.config_digest
    );

    let entries = read_tar(&archive);
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted, "entries are sorted");
    assert!(paths.contains(&"blobs/sha256/") && paths.contains(&"oci-layout"));
    let blob = |digest: &str| {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        entry(&entries, &path).data.clone()
    };
    check_layer_blobs(&facts, blob, true);
}

#[test]
fn gzip_and_zstd_wrappers_hold_the_same_tar() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    TestImage::new("wrapped").layers(2).write_oci_archive(&tar);
    let (gz, zst) = (
        dir.path().join("image.tar.gz"),
        dir.path().join("image.tar.zst"),
    );
    images::gzip_file(&tar, &gz);
    images::zstd_file(&tar, &zst);
    let original = std::fs::read(&tar).unwrap();
    let gz = std::fs::read(gz).unwrap();
    assert_eq!(&gz[..2], b"\x1f\x8b");
    assert_eq!(&gz[4..8], b"\0\0\0\0", "gzip mtime 0");
    assert_eq!(gunzip(&gz), original);
    let zst = std::fs::read(zst).unwrap();
    assert_eq!(&zst[..4], b"\x28\xb5\x2f\xfd");
    assert_eq!(zstd::decode_all(&zst[..]).unwrap(), original);
}

/// Follows each `Layers` path of a `manifest.json` entry — through docker's relative symlink
/// if it is one — to a regular file whose sha256 is the `diff_id` at that position. skopeo alone
/// would not catch a wrong link on a repeated layer: it reads each `diff_id` once, from the
/// first path that claims it. Returns how many layers were links.
fn assert_layers_resolve(entries: &[TarEntry], image: &Value, facts: &Facts) -> usize {
    let paths = strings(&image["Layers"]);
    assert_eq!(paths.len(), facts.diff_ids.len());
    let mut links = 0;
    for (path, diff_id) in paths.iter().zip(&facts.diff_ids) {
        let mut layer = entry(entries, path);
        if layer.kind == tar::EntryType::Symlink {
            links += 1;
            let target = layer.link.as_deref().unwrap();
            let target = target
                .strip_prefix("../")
                .expect("relative link, as docker writes");
            layer = entry(entries, target);
        }
        assert_eq!(layer.kind, tar::EntryType::Regular, "{path}");
        assert_eq!(&sha256(&layer.data), diff_id, "{path}");
    }
    links
}

#[test]
fn legacy_docker_save_is_valid_for_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    let facts = TestImage::new("legacy")
        .repeat_base_layer()
        .write_docker_save_legacy(&tar);
    assert_eq!(facts.diff_ids.len(), 4);
    assert_eq!(facts.diff_ids[3], facts.diff_ids[0], "the repeated layer");
    assert!(facts.digest.is_empty() && facts.layer_digests.is_empty());

    let entries = read_tar(&tar);
    assert_eq!(
        entries.last().unwrap().path,
        "manifest.json",
        "docker writes it last"
    );
    let files: Vec<&TarEntry> = entries
        .iter()
        .filter(|e| e.path.ends_with("/layer.tar") && e.kind == tar::EntryType::Regular)
        .collect();
    assert_eq!(files.len(), 3, "each distinct layer is written once");
    for file in files {
        assert_eq!(
            &file.data[257..262],
            b"ustar",
            "{} is an uncompressed tar",
            file.path
        );
    }
    let manifest = json(&entry(&entries, "manifest.json").data);
    assert_eq!(
        assert_layers_resolve(&entries, &manifest[0], &facts),
        1,
        "the repeated layer is a link"
    );
    assert_eq!(manifest[0]["RepoTags"][0], "legacy:v1");
    assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 4);
    let config_name = manifest[0]["Config"].as_str().unwrap();
    assert_eq!(
        sha256(&entry(&entries, config_name).data),
        facts.config_digest
    );
    assert!(json(&entry(&entries, "repositories").data)["legacy"]["v1"].is_string());

    let source = format!("docker-archive:{}", tar.display());
    assert_eq!(
        sha256(&skopeo::inspect_config_local(&source)),
        facts.config_digest
    );
    // skopeo makes a manifest whose layer digests are the diff_ids, then checks each layer
    // against it while copying: this proves the tar, the link and the diff_ids.
    let generated = json(&skopeo::inspect_raw_local(&source));
    let layers: Vec<String> = generated["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(layers, facts.diff_ids);
    let copy = tempfile::tempdir().unwrap();
    skopeo::copy_to_oci_dir(&source, copy.path(), None);
    // Converting to OCI, skopeo re-serialises the config (its digest changes), keeping the
    // diff_ids.
    let copied = json(&skopeo::inspect_config_local(&format!(
        "oci:{}:copy",
        copy.path().display()
    )));
    assert_eq!(strings(&copied["rootfs"]["diff_ids"]), facts.diff_ids);
}

#[test]
fn legacy_save_of_two_images_shares_the_base_layer() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("two.tar");
    let facts = images::write_docker_save_legacy_multi(
        &tar,
        &[TestImage::new("first"), TestImage::new("second").tag("v2")],
    );
    assert_eq!(
        facts[0].diff_ids[0], facts[1].diff_ids[0],
        "same seed, same base"
    );
    assert_ne!(facts[0].config_digest, facts[1].config_digest);

    let entries = read_tar(&tar);
    let manifest = json(&entry(&entries, "manifest.json").data);
    assert_eq!(manifest.as_array().unwrap().len(), 2);
    let links: usize = (0..2)
        .map(|i| assert_layers_resolve(&entries, &manifest[i], &facts[i]))
        .sum();
    assert_eq!(links, 1, "the shared base is written once, then linked");

    for facts in &facts {
        let source = format!("docker-archive:{}:{}", tar.display(), facts.repo_tag());
        assert_eq!(
            sha256(&skopeo::inspect_config_local(&source)),
            facts.config_digest,
            "{source}"
        );
        let copy = tempfile::tempdir().unwrap();
        skopeo::copy_to_oci_dir(&source, copy.path(), None);
    }
}

#[test]
fn docker_25_save_is_a_docker_archive_and_an_oci_archive() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("docker25.tar");
    let facts = TestImage::new("modern").write_docker_save_25(&tar);
    assert_eq!(
        facts.layer_digests, facts.diff_ids,
        "layers are uncompressed"
    );

    let entries = read_tar(&tar);
    assert_eq!(entries.last().unwrap().path, "manifest.json");
    let index = json(&entry(&entries, "index.json").data);
    let annotations = &index["manifests"][0]["annotations"];
    assert_eq!(annotations[CONTAINERD_NAME], "docker.io/library/modern:v1");
    assert_eq!(annotations[REF_NAME], "v1");
    let manifest = json(&entry(&entries, "manifest.json").data);
    assert_eq!(
        manifest[0]["Layers"][0],
        format!(
            "blobs/sha256/{}",
            facts.diff_ids[0].trim_start_matches("sha256:")
        )
    );
    let blob = |digest: &str| {
        entry(
            &entries,
            &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
        )
        .data
        .clone()
    };
    check_layer_blobs(&facts, blob, false);
    let oci_manifest = json(&blob(&facts.digest));
    assert!(
        oci_manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] == LAYER_TAR)
    );

    let as_docker = format!("docker-archive:{}", tar.display());
    assert_eq!(
        sha256(&skopeo::inspect_config_local(&as_docker)),
        facts.config_digest
    );
    skopeo::copy_to_oci_dir(&as_docker, tempfile::tempdir().unwrap().path(), None);

    let as_oci = format!("oci-archive:{}", tar.display());
    assert_eq!(sha256(&skopeo::inspect_raw_local(&as_oci)), facts.digest);
    // skopeo gzips uncompressed layers on the way to a registry, so the manifest changes; the
    // config must not.
    let image_ref = format!("{}/team/docker25:v1", registry.host());
    skopeo::copy(&as_oci, &format!("docker://{image_ref}"), None);
    assert_eq!(
        skopeo::remote_config_digest(&image_ref, None),
        facts.config_digest
    );
    let pushed = json(&skopeo::inspect_raw(&image_ref, None));
    assert!(
        pushed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] == LAYER_GZIP)
    );
}

#[test]
fn docker_29_save_references_absent_platforms() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("docker29.tar");
    let facts =
        TestImage::new("cd").write_docker_save_29_containerd(&tar, &PLATFORMS, &PLATFORMS[..1]);
    assert_eq!(facts.media_type, OCI_INDEX);
    assert_eq!(facts.platforms.len(), 3);

    let entries = read_tar(&tar);
    let outer = json(&entry(&entries, "index.json").data);
    assert_eq!(outer["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(outer["manifests"][0]["mediaType"], OCI_INDEX);
    assert_eq!(outer["manifests"][0]["digest"], facts.digest.as_str());
    assert_eq!(
        outer["manifests"][0]["annotations"][CONTAINERD_NAME],
        "docker.io/library/cd:v1"
    );
    let index_path = format!(
        "blobs/sha256/{}",
        facts.digest.trim_start_matches("sha256:")
    );
    let index_bytes = &entry(&entries, &index_path).data;
    assert_eq!(sha256(index_bytes), facts.digest);
    let children = json(index_bytes)["manifests"].as_array().unwrap().clone();
    assert_eq!(
        children.len(),
        6,
        "a manifest and an attestation per platform"
    );
    for (i, (platform, digest, config)) in facts.platforms.iter().enumerate() {
        let (image, attestation) = (&children[2 * i], &children[2 * i + 1]);
        assert_eq!(image["digest"], digest.as_str());
        assert_eq!(attestation["platform"]["os"], "unknown");
        assert_eq!(
            attestation["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        assert_eq!(
            attestation["annotations"]["vnd.docker.reference.digest"],
            digest.as_str()
        );
        let present = i == 0;
        assert_eq!(has_blob(&entries, digest), present, "{platform} manifest");
        assert_eq!(has_blob(&entries, config), present, "{platform} config");
    }

    // The present platform is a complete docker archive, with gzip layers.
    let source = format!("docker-archive:{}", tar.display());
    assert_eq!(
        sha256(&skopeo::inspect_config_local(&source)),
        facts.platforms[0].2
    );
    skopeo::copy_to_oci_dir(&source, tempfile::tempdir().unwrap().path(), None);
}

#[test]
fn multi_platform_layout_round_trips_through_the_registry() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let facts = TestImage::new("multi").write_oci_layout_multi(dir.path(), &PLATFORMS);
    assert_eq!(facts.media_type, OCI_INDEX);
    let source = format!("oci:{}:v1", dir.path().display());
    assert_eq!(sha256(&skopeo::inspect_raw_local(&source)), facts.digest);

    let repository = format!("{}/team/multi", registry.host());
    skopeo::copy(&source, &format!("docker://{repository}:v1"), None);
    assert_eq!(
        skopeo::remote_digest(&format!("{repository}:v1"), None),
        facts.digest
    );
    for (platform, digest, config) in &facts.platforms {
        let by_digest = format!("{repository}@{digest}");
        assert_eq!(
            &skopeo::remote_digest(&by_digest, None),
            digest,
            "{platform}"
        );
        let config_bytes = skopeo::inspect_config(&by_digest, None);
        assert_eq!(&sha256(&config_bytes), config);
        let config = json(&config_bytes);
        let expected: Vec<&str> = platform.split('/').collect();
        assert_eq!(config["architecture"], expected[1], "{platform}");
        assert_eq!(
            config.get("variant").and_then(Value::as_str),
            expected.get(2).copied()
        );
    }
    // One index, a manifest and a config per platform, two own layers per platform, and the
    // base layer, the same for every platform, stored once.
    let blobs = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1 + 3 * 2 + 3 * 2 + 1);
}

#[test]
fn generators_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, image: &TestImage| {
        let path = dir.path().join(name);
        let facts = image.write_docker_save_legacy(&path);
        (std::fs::read(path).unwrap(), facts)
    };
    let image = TestImage::new("same").layer_sizes(&[50_000, 120_000]);
    let (first, first_facts) = write("a.tar", &image);
    let (second, _) = write("b.tar", &image);
    assert!(first == second, "same image, same bytes");
    assert_eq!(skopeo::sha256_digest(b""), format!("sha256:{EMPTY_SHA256}"));
    let (_, other) = write("c.tar", &image.clone().seed(9).layer_bytes(60_000));
    assert_ne!(other.config_digest, first_facts.config_digest);
    assert_ne!(other.diff_ids[0], first_facts.diff_ids[0]);
    assert!(
        other
            .layer_sizes
            .iter()
            .all(|&s| (40_000..100_000).contains(&s))
    );

    let archive = dir.path().join("oci.tar");
    let facts = image.write_oci_archive(&archive);
    let again = dir.path().join("oci-again.tar");
    assert_eq!(facts, image.write_oci_archive(&again));
    assert!(std::fs::read(&archive).unwrap() == std::fs::read(&again).unwrap());
    let entries = read_tar(&archive);
    for entry in read_tar(&dir.path().join("a.tar")).iter().chain(&entries) {
        assert_eq!((entry.mtime, entry.uid), (0, 0), "{}", entry.path);
    }
    // Inside a layer too.
    let layer_path = format!(
        "blobs/sha256/{}",
        facts.layer_digests[0].trim_start_matches("sha256:")
    );
    let layer = gunzip(&entry(&entries, &layer_path).data);
    let mut files = 0;
    for entry in tar::Archive::new(&layer[..]).entries().unwrap() {
        let header = entry.unwrap().header().clone();
        assert_eq!((header.mtime().unwrap(), header.uid().unwrap()), (0, 0));
        files += usize::from(header.entry_type() == tar::EntryType::Regular);
    }
    assert!(files >= 5, "sources, a binary and a README: {files}");
}

#[test]
fn mirror_puts_what_the_registry_accepted_into_the_ecr_api() {
    use crate::harness::mirror::Mirror;
    use crate::harness::moto::Moto;
    const ACCOUNT: &str = "123456789012";
    let moto = Moto::start();
    let registry = Registry::start();
    moto.ecr(
        ACCOUNT,
        "CreateRepository",
        &serde_json::json!({"repositoryName": "team/mirror"}),
    );
    let mirror = Mirror::start(&registry.url(), &moto.url(), ACCOUNT, "eu-west-1");
    let dir = tempfile::tempdir().unwrap();
    // skopeo cannot copy nested indexes; a flat one with attestations, as buildx writes it.
    let facts = TestImage::new("mirror")
        .write_oci_layout_attested(dir.path(), &["linux/amd64", "linux/arm64"]);
    assert_eq!(facts.attestations.len(), 2);

    // skopeo, an independent client, pushes the index (checking every blob) through the
    // mirror; the registry keeps its digest.
    let mirror_host = mirror.url().trim_start_matches("http://").to_owned();
    skopeo::copy(
        &format!("oci:{}:v1", dir.path().display()),
        &format!("docker://{mirror_host}/team/mirror:v1"),
        None,
    );
    mirror.assert_no_errors();
    assert_eq!(
        registry.manifest_digest("team/mirror", "v1").as_deref(),
        Some(facts.digest.as_str())
    );

    let described = moto.ecr(
        ACCOUNT,
        "DescribeImages",
        &serde_json::json!({"repositoryName": "team/mirror"}),
    );
    let details = described["imageDetails"].as_array().unwrap();
    let find = |digest: &str| {
        details
            .iter()
            .find(|d| d["imageDigest"] == digest)
            .unwrap_or_else(|| panic!("{digest} is not in the ECR API: {described}"))
    };
    let root = find(&facts.digest);
    assert_eq!(root["imageTags"], serde_json::json!(["v1"]));
    assert_eq!(root["imageManifestMediaType"], OCI_INDEX);
    let parts: Vec<&String> = facts
        .attestations
        .iter()
        .chain(facts.platforms.iter().map(|p| &p.1))
        .collect();
    for digest in &parts {
        let image = find(digest);
        assert!(
            image["imageTags"].as_array().is_none_or(Vec::is_empty),
            "{digest} was put by digest, untagged: {image}"
        );
    }
    assert_eq!(details.len(), 1 + parts.len());

    // The exact bytes: what the ECR API returns hashes to the digest the registry has.
    let got = moto.ecr(
        ACCOUNT,
        "BatchGetImage",
        &serde_json::json!({"repositoryName": "team/mirror", "imageIds": [{"imageTag": "v1"}]}),
    );
    let manifest = got["images"][0]["imageManifest"].as_str().unwrap();
    assert_eq!(sha256(manifest.as_bytes()), facts.digest);
    assert_eq!(mirror.mirrored().len(), 1 + parts.len());
}
