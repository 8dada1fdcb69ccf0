//! Several destinations in one run, against real registries: every destination is asked which
//! layers it already has before anything is compressed, and what some destination still needs
//! is compressed once (`layers_compressed` in the report counts compressions). Also the bounded
//! `tags/list` look for reusable layers, across pages.

use crate::harness::images::{self, ImageSpec};
use crate::harness::proxy::{Action, Kind, Proxy};
use crate::harness::{Registry, Run, ecr_push, skopeo};

/// `ecr-push push <tar> --registry <each> --repository team/fan --tag <tag> --json <extra>`.
fn push(tar: &std::path::Path, registries: &[&str], tag: &str, extra: &[&str]) -> Run {
    let mut args = vec!["push", tar.to_str().unwrap()];
    for url in registries {
        args.extend(["--registry", url]);
    }
    args.extend(["--repository", "team/fan", "--tag", tag, "--json"]);
    args.extend_from_slice(extra);
    let run = ecr_push(args, &[]);
    run.success();
    run
}

#[test]
fn each_layer_is_compressed_once_and_only_when_a_destination_lacks_it() {
    let (first, second) = (Registry::start(), Registry::start());
    let (a, b) = (first.url(), second.url());
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    let facts = images::docker_save_legacy(&tar, &[ImageSpec::new("fan").layers(4)]).remove(0);
    let cache = dir.path().join("cache");
    let cache_arg = cache.to_str().unwrap();

    // Cold: four layers, compressed once for both registries.
    let cold = push(&tar, &[&a, &b], "v1", &["--cache-dir", cache_arg]).json();
    assert_eq!(cold["layers_compressed"], 4, "{cold}");
    assert_eq!(cold["blobs_uploaded"], 5, "config and four layers: {cold}");
    for registry in [&first, &second] {
        let reference = format!("{}/team/fan:v1", registry.host());
        assert_eq!(skopeo::remote_digest(&reference, None), cold["digest"]);
        assert_eq!(
            skopeo::remote_config_digest(&reference, None),
            facts.config_digest
        );
    }

    // Warm, a new tag: both registries have every layer (found through their tags); nothing
    // is compressed, nothing uploaded, the same image.
    let warm = push(&tar, &[&a, &b], "v2", &[]).json();
    assert_eq!(warm["layers_compressed"], 0, "{warm}");
    assert_eq!(warm["blobs_uploaded"], 0, "{warm}");
    assert_eq!(warm["digest"], cold["digest"]);

    // Warm through the local cache alone: it names the compressed blobs, the registry confirms.
    let cached = push(&tar, &[&a, &b], "v3", &["--cache-dir", cache_arg]).json();
    assert_eq!(cached["layers_compressed"], 0, "{cached}");

    // The cache claims the layers, but these two new registries do not have them: the claim is
    // checked, and each layer is compressed once for both.
    let (third, fourth) = (Registry::start(), Registry::start());
    let fresh = push(
        &tar,
        &[&third.url(), &fourth.url()],
        "v1",
        &["--cache-dir", cache_arg],
    )
    .json();
    assert_eq!(fresh["layers_compressed"], 4, "{fresh}");
    assert_eq!(fresh["digest"], cold["digest"]);

    // One registry has the image, the other not: compressed once, for the one that lacks it;
    // the other uploads nothing.
    let fifth = Registry::start();
    let mixed = push(&tar, &[&a, &fifth.url()], "v4", &[]).json();
    assert_eq!(mixed["layers_compressed"], 4, "{mixed}");
    assert_eq!(
        mixed["blobs_uploaded"], 0,
        "the first destination (which had it): {mixed}"
    );
    let reference = format!("{}/team/fan:v4", fifth.host());
    assert_eq!(skopeo::remote_digest(&reference, None), cold["digest"]);
}

#[test]
fn layers_are_found_on_a_later_page_of_the_tag_list() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    images::docker_save_legacy(&tar, &[ImageSpec::new("pages")]);
    push(&tar, &[&registry.url()], "old", &[]);

    // The first page of tags/list names only a tag that does not exist and links to the next
    // page, which the registry itself serves (tags after "aaa": "old").
    let proxy = Proxy::start(&registry.url(), |seen| {
        if seen.kind == Kind::Tags && !seen.target.contains("last=") {
            Action::Respond {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), "application/json".into()),
                    (
                        "Link".into(),
                        r#"</v2/team/fan/tags/list?n=1000&last=aaa>; rel="next""#.into(),
                    ),
                ],
                body: r#"{"name":"team/fan","tags":["aaa"]}"#.into(),
            }
        } else {
            Action::Forward
        }
    });
    let run = push(&tar, &[&proxy.url()], "new", &[]).json();
    assert_eq!(proxy.count(Kind::Tags), 2, "both pages were read");
    assert_eq!(
        run["layers_compressed"], 0,
        "the layers of `old`, on page 2, were reused: {run}"
    );
    assert_eq!(run["blobs_uploaded"], 0, "{run}");
}
