//! Pushes through a proxy that injects faults (see `harness::proxy`): every transient fault is
//! survived and the result verified by the registry and skopeo; corruption in transit is never
//! committed or tagged; a fault that does not end fails the push within its time bound, with a
//! message that says what failed; permanent refusals are not retried; hostile `Location`s and
//! redirects are not followed.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::images::{self, Facts, ImageSpec};
use crate::harness::proxy::{Action, Fault, Faults, Kind, Modify, Proxy, When};
use crate::harness::{Registry, Run, ecr_push, skopeo};

/// An OCI layout of three gzip layers (the sizes the generator picks, ~50-70 KB each).
fn layout(name: &str, seed: u64) -> (tempfile::TempDir, Facts) {
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new(name).seed(seed));
    (dir, facts)
}

/// Pushes `source` to `registry_url` (a proxy) as `repository:v1`.
fn push(source: &Path, registry_url: &str, repository: &str, extra: &[&str]) -> Run {
    let source = source.to_str().unwrap();
    let mut args = vec![
        "push",
        source,
        "--registry",
        registry_url,
        "--repository",
        repository,
        "--tag",
        "v1",
        "--json",
    ];
    args.extend_from_slice(extra);
    ecr_push(&args, &[])
}

/// The push succeeded and the registry holds the image intact: the tag serves the expected
/// manifest, and skopeo downloads every blob and checks its digest.
#[track_caller]
fn assert_pushed(run: &Run, registry: &Registry, repository: &str, facts: &Facts) {
    run.success();
    if !facts.digest.is_empty() {
        assert_eq!(run.field("digest"), facts.digest);
    }
    let digest = run.field("digest");
    assert_eq!(
        registry.manifest_digest(repository, "v1").as_deref(),
        Some(digest.as_str())
    );
    let copy = tempfile::tempdir().unwrap();
    skopeo::copy_to_oci(
        &format!("{}/{repository}:v1", registry.host()),
        None,
        copy.path(),
    );
}

/// Nothing was tagged and no manifest was put for `repository`.
#[track_caller]
fn assert_nothing_tagged(registry: &Registry, proxy: &Proxy, repository: &str, facts: &Facts) {
    assert!(registry.tags(repository).is_empty(), "no tag may exist");
    assert_eq!(registry.manifest_digest(repository, "v1"), None);
    if !facts.digest.is_empty() {
        assert_eq!(registry.manifest_digest(repository, &facts.digest), None);
    }
    assert_eq!(proxy.count(Kind::PutManifest), 0, "no manifest was put");
}

/// Runs one push through `faults` and checks it completed and verified.
fn survives(name: &str, faults: Faults, extra: &[&str]) -> Proxy {
    let registry = Registry::start();
    let proxy = Proxy::with_faults(&registry.url(), faults);
    let (dir, facts) = layout(name, 7);
    let repository = format!("faults/{name}");
    let run = push(dir.path(), &proxy.url(), &repository, extra);
    assert_pushed(&run, &registry, &repository, &facts);
    assert!(
        proxy.fired().iter().all(|&n| n > 0),
        "every fault rule fired at least once: {:?}",
        proxy.fired()
    );
    proxy
}

#[test]
fn server_errors_on_every_request_kind_are_retried() {
    // The first two requests of every kind fail: HEAD blob, POST, PATCH, commit, manifest PUT,
    // and verification's manifest GETs.
    let mut faults = Faults::new(1);
    for (kind, status) in [
        (Kind::HeadBlob, 503),
        (Kind::StartUpload, 502),
        (Kind::PatchUpload, 500),
        (Kind::CommitUpload, 504),
        (Kind::PutManifest, 503),
        (Kind::GetManifest, 503),
    ] {
        faults = faults.on(&[kind], When::First(2), Fault::status(status));
    }
    let proxy = survives("server-errors", faults, &["--jobs", "1"]);
    assert!(proxy.count(Kind::PutManifest) >= 3);
}

#[test]
fn throttling_429_honours_retry_after_on_manifest_puts() {
    let faults = Faults::new(2).on(
        &[Kind::PutManifest],
        When::First(1),
        Fault::Status {
            status: 429,
            code: "TOOMANYREQUESTS",
            retry_after: Some(2),
        },
    );
    let proxy = survives("throttled", faults, &[]);
    let puts: Vec<Instant> = proxy
        .seen()
        .iter()
        .filter(|s| s.kind == Kind::PutManifest)
        .map(|s| s.at)
        .collect();
    assert_eq!(puts.len(), 2, "one refused, one accepted");
    let waited = puts[1] - puts[0];
    assert!(
        waited >= Duration::from_millis(1900),
        "Retry-After: 2 was honoured (waited {waited:?})"
    );
}

#[test]
fn connection_reset_in_the_middle_of_an_upload_reopens_the_source() {
    // Every PATCH breaks once after 16 KiB: each upload starts again from its source.
    let faults = Faults::new(3).on(
        &[Kind::PatchUpload],
        When::First(3),
        Fault::ResetMidBody(16 * 1024),
    );
    let proxy = survives("reset-mid-body", faults, &["--jobs", "1"]);
    assert!(proxy.count(Kind::PatchUpload) >= 6);
}

#[test]
fn legacy_layers_compressed_on_the_fly_survive_a_reset_mid_body() {
    // The body has no known length (compressed while sent); a retry compresses again, and the
    // result must be the same bytes.
    let registry = Registry::start();
    let proxy = Proxy::with_faults(
        &registry.url(),
        Faults::new(4).on(
            &[Kind::PatchUpload],
            When::First(2),
            Fault::ResetMidBody(8 * 1024),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    let facts = images::docker_save_legacy(&tar, &[ImageSpec::new("legacy-reset")]).remove(0);
    let run = push(&tar, &proxy.url(), "faults/legacy", &["--jobs", "1"]);
    assert_pushed(&run, &registry, "faults/legacy", &facts);
    assert_eq!(run.field("config_digest"), facts.config_digest);
}

#[test]
fn resets_before_and_after_the_registry_answers() {
    // Reset before answering: the registry never saw the request. Reset after: it acted (the
    // blob is committed, the manifest is put) but the answer was lost; doing it again is safe.
    let faults = Faults::new(5)
        .on(&[Kind::HeadBlob], When::First(1), Fault::Reset)
        .on(&[Kind::StartUpload], When::First(1), Fault::Reset)
        .on(
            &[Kind::CommitUpload],
            When::First(2),
            Fault::ForwardThenReset,
        )
        .on(
            &[Kind::PutManifest],
            When::First(1),
            Fault::ForwardThenReset,
        )
        .on(&[Kind::GetManifest], When::First(1), Fault::Reset);
    survives("resets", faults, &[]);
}

#[test]
fn stalls_are_cut_off_by_the_stall_timeout_and_retried() {
    // --timeout 8 gives a stall timeout of 4 s; each stalled request is abandoned and retried.
    let stall = Duration::from_secs(60);
    let faults = Faults::new(6)
        .on(&[Kind::HeadBlob], When::First(1), Fault::Stall(stall))
        .on(
            &[Kind::PatchUpload],
            When::First(1),
            Fault::StallMidBody(8 * 1024, stall),
        )
        .on(&[Kind::PutManifest], When::First(1), Fault::Stall(stall));
    let started = Instant::now();
    survives("stalls", faults, &["--timeout", "8", "--jobs", "1"]);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_slow_upload_that_keeps_moving_is_not_cut_off() {
    // The stall timeout (here 5 s, from --timeout 10) bounds silence, not the length of an
    // upload: a 24 MB layer read at 3 MB/s takes 8 s and must go through at the first try.
    // (reqwest's own read timeout runs from the start of a request to its answer, so it
    // would cut such an upload off; the PATCH is watched for progress instead.)
    let registry = Registry::start();
    let proxy = Proxy::start(&registry.url(), |seen| {
        if seen.kind == Kind::PatchUpload {
            Action::ForwardModified(Modify {
                throttle: Some(3_000_000),
                ..Modify::default()
            })
        } else {
            Action::Forward
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let layer: Vec<u8> = (0..24_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let digest = crate::bad_input::layout_with_layer(dir.path(), layer);
    let started = Instant::now();
    let run = push(
        dir.path(),
        &proxy.url(),
        "faults/slow",
        &["--timeout", "10", "--jobs", "1"],
    );
    let took = started.elapsed();
    let facts = Facts {
        digest,
        ..Facts::default()
    };
    assert_pushed(&run, &registry, "faults/slow", &facts);
    assert!(took > Duration::from_secs(7), "the link was slow: {took:?}");
    assert_eq!(
        proxy.count(Kind::PatchUpload),
        2,
        "config and layer, each uploaded once (took {took:?})"
    );
}

#[test]
fn bytes_flipped_once_in_transit_are_refused_by_the_registry_and_uploaded_again() {
    let faults = Faults::new(9).on(
        &[Kind::PatchUpload],
        When::First(1),
        Fault::Modify(Modify::flip_byte(1000)),
    );
    let proxy = survives("flip-once", faults, &["--jobs", "1"]);
    assert_eq!(proxy.count(Kind::PatchUpload), 4, "one upload was repeated");
}

#[test]
fn bytes_flipped_every_time_are_never_committed_or_tagged() {
    let registry = Registry::start();
    let proxy = Proxy::with_faults(
        &registry.url(),
        Faults::new(10).on(
            &[Kind::PatchUpload],
            When::Always,
            Fault::Modify(Modify::flip_byte(100)),
        ),
    );
    let (dir, facts) = layout("flip-always", 10);
    let run = push(
        dir.path(),
        &proxy.url(),
        "faults/flip",
        &["--timeout", "10", "--jobs", "1"],
    );
    run.failure(1);
    assert!(run.stderr.contains("DIGEST_INVALID"), "{}", run.stderr);
    assert!(run.stderr.contains("gave up after"), "{}", run.stderr);
    assert_nothing_tagged(&registry, &proxy, "faults/flip", &facts);
    for digest in &facts.layer_digests {
        assert!(
            !registry.blob_exists("faults/flip", digest),
            "layer {digest} must not be committed"
        );
    }
}

#[test]
fn full_verification_downloads_a_layer_again_when_its_body_is_cut_short() {
    let faults = Faults::new(18).on(
        &[Kind::GetBlob],
        When::First(2),
        Fault::Modify(Modify {
            truncate_response: Some(1000),
            ..Modify::default()
        }),
    );
    let proxy = survives("cut-download", faults, &["--verify", "full", "--jobs", "1"]);
    assert!(
        proxy.count(Kind::GetBlob) >= 5,
        "3 layers, 2 downloads repeated"
    );
}

#[test]
fn missing_digest_headers_and_relative_locations() {
    let mut without_digest = Modify::without_header("docker-content-digest");
    without_digest.relative_location = true;
    let faults = Faults::new(11).on(&[], When::Always, Fault::Modify(without_digest));
    survives("no-digest-header", faults, &[]);
}

#[test]
fn ecr_style_answers() {
    // 201 on PATCH with no Location and a stale Range, relative upload Locations, no
    // Docker-Content-Digest on manifest GET, no Location on manifest PUT.
    let registry = Registry::start();
    let proxy = Proxy::start_ecr_style(&registry.url(), |_| Action::Forward);
    let (dir, facts) = layout("ecr-style", 12);
    let run = push(dir.path(), &proxy.url(), "faults/ecr", &[]);
    assert_pushed(&run, &registry, "faults/ecr", &facts);
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    let facts = images::docker_save_legacy(&tar, &[ImageSpec::new("ecr-legacy")]).remove(0);
    let run = push(&tar, &proxy.url(), "faults/ecr-legacy", &[]);
    assert_pushed(&run, &registry, "faults/ecr-legacy", &facts);
}

#[test]
fn a_mix_of_faults_on_30_percent_of_requests() {
    // Reproducible: the seed fixes which requests fail, and --jobs 1 fixes their order.
    let registry = Registry::start();
    let faults = Faults::new(42)
        .on(&[], When::Chance(0.10), Fault::status(503))
        .on(
            &[],
            When::Chance(0.05),
            Fault::Status {
                status: 429,
                code: "TOOMANYREQUESTS",
                retry_after: Some(1),
            },
        )
        .on(&[], When::Chance(0.05), Fault::Reset)
        .on(
            &[Kind::PatchUpload],
            When::Chance(0.2),
            Fault::ResetMidBody(4096),
        )
        .on(&[], When::Chance(0.05), Fault::ForwardThenReset);
    let proxy = Proxy::with_faults(&registry.url(), faults);
    let (dir, facts) = layout("mix", 13);
    let run = push(dir.path(), &proxy.url(), "faults/mix", &["--jobs", "1"]);
    assert_pushed(&run, &registry, "faults/mix", &facts);
    let fired: usize = proxy.fired().iter().sum();
    let seen = proxy.seen().len();
    assert!(
        fired * 100 >= seen * 15,
        "a good share of requests failed ({fired} of {seen}): {:?}",
        proxy.fired()
    );
    // The same image again through the same kind of weather: nothing new to upload.
    let again = push(dir.path(), &proxy.url(), "faults/mix", &["--jobs", "1"]);
    again.success();
    assert_eq!(again.json()["blobs_uploaded"], 0);
}

/// A push against a registry that never recovers must fail with exit code 1, soon after
/// `--timeout`, naming what failed.
fn fails_in_time(name: &str, fault: Fault, needles: &[&str]) {
    let registry = Registry::start();
    let proxy = Proxy::with_faults(&registry.url(), Faults::new(0).on(&[], When::Always, fault));
    let (dir, facts) = layout(name, 14);
    let repository = format!("faults/{name}");
    let started = Instant::now();
    let run = push(dir.path(), &proxy.url(), &repository, &["--timeout", "10"]);
    let took = started.elapsed();
    run.failure(1);
    assert!(
        took < Duration::from_secs(25),
        "--timeout 10 must end the push well before 30 s; it took {took:?}"
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} in:\n{}",
            run.stderr
        );
    }
    assert_nothing_tagged(&registry, &proxy, &repository, &facts);
}

#[test]
fn a_registry_that_stays_down_fails_the_push_within_the_timeout() {
    fails_in_time("down", Fault::status(503), &["HTTP 503", "gave up after"]);
}

#[test]
fn a_registry_that_always_stalls_fails_the_push_within_the_timeout() {
    fails_in_time(
        "stalled",
        Fault::Stall(Duration::from_secs(600)),
        &["cannot reach the registry", "gave up after"],
    );
}

#[test]
fn a_registry_that_resets_every_connection_fails_the_push_within_the_timeout() {
    fails_in_time(
        "resets",
        Fault::Reset,
        &["cannot reach the registry", "gave up after"],
    );
}

#[test]
fn permanent_refusals_are_not_retried() {
    // (request kind, status, OCI error code): refusals that another attempt cannot change.
    let cases = [
        (Kind::HeadBlob, 403, "DENIED"),
        (Kind::StartUpload, 400, "NAME_INVALID"),
        (Kind::StartUpload, 404, "NAME_UNKNOWN"),
        (Kind::PatchUpload, 403, "DENIED"),
        (Kind::PutManifest, 400, "MANIFEST_INVALID"),
        (Kind::PutManifest, 400, "MANIFEST_BLOB_UNKNOWN"),
        (Kind::PutManifest, 400, "TAG_INVALID"),
    ];
    let registry = Registry::start();
    for (index, (kind, status, code)) in cases.into_iter().enumerate() {
        let proxy = Proxy::start(&registry.url(), move |seen| {
            if seen.kind == kind {
                Action::error(status, code, "refused by the test proxy")
            } else {
                Action::Forward
            }
        });
        let (dir, _facts) = layout("refused", 15);
        let repository = format!("faults/refused{index}");
        let run = push(dir.path(), &proxy.url(), &repository, &["--jobs", "1"]);
        let case = format!("{kind:?} answered {status} {code}");
        run.failure(1);
        // HEAD answers have no body, so no error code.
        let named = if kind == Kind::HeadBlob {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status} {code}")
        };
        assert!(
            run.stderr.contains(&named),
            "{case}: the message names the refusal:\n{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("gave up after"),
            "{case}: {}",
            run.stderr
        );
        assert_eq!(
            proxy.count(kind),
            1,
            "{case}: a refusal that will not change is not retried"
        );
        assert!(
            registry.tags(&repository).is_empty(),
            "{case}: nothing tagged"
        );
    }
}

#[test]
fn unauthorized_after_re_authentication_is_not_retried_again() {
    let registry = Registry::start_with_basic_auth("AWS", "right-password");
    let proxy = Proxy::start(&registry.url(), |seen| {
        if seen.kind == Kind::PutManifest {
            Action::Respond {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), r#"Basic realm="ecr""#.into())],
                body: r#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired."}]}"#.into(),
            }
        } else {
            Action::Forward
        }
    });
    let (dir, _facts) = layout("unauthorized", 16);
    let run = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &proxy.url(),
            "--repository",
            "faults/unauthorized",
            "--tag",
            "v1",
            "--username",
            "AWS",
        ],
        &[("ECR_PUSH_PASSWORD", "right-password")],
    );
    run.failure(1);
    assert!(
        run.stderr.contains("refused the credentials (HTTP 401)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("right-password"), "{}", run.stderr);
    assert_eq!(
        proxy.count(Kind::PutManifest),
        2,
        "one retry with renewed credentials, then stop"
    );
}

#[test]
fn hostile_upload_locations_and_redirects_are_not_followed() {
    // A listener standing for "the runner's own network": it must never get a request.
    let hostile = Proxy::start("http://127.0.0.1:9", |_| Action::status(500));
    let targets = [
        format!(
            "http://127.0.0.1:{}/v2/x/blobs/uploads/steal",
            hostile.port()
        ),
        format!(
            "https://127.0.0.1:{}/v2/x/blobs/uploads/steal",
            hostile.port()
        ),
        format!("https://localhost:{}/steal", hostile.port()),
        "https://[::1]:9/steal".to_owned(),
    ];
    let registry = Registry::start_with_basic_auth("AWS", "secret-pw");
    for (index, target) in targets.iter().enumerate() {
        for kind in [Kind::StartUpload, Kind::HeadBlob, Kind::CommitUpload] {
            let location = target.clone();
            let proxy = Proxy::start(&registry.url(), move |seen| {
                if seen.kind != kind {
                    return Action::Forward;
                }
                // An upload session elsewhere, or a redirect for a blob check or a commit.
                let status = if kind == Kind::StartUpload { 202 } else { 307 };
                Action::Respond {
                    status,
                    headers: vec![("Location".into(), location.clone())],
                    body: String::new(),
                }
            });
            let (dir, _facts) = layout("hostile", 17);
            let repository = format!("faults/hostile{index}");
            let run = ecr_push(
                [
                    "push",
                    dir.path().to_str().unwrap(),
                    "--registry",
                    &proxy.url(),
                    "--repository",
                    &repository,
                    "--tag",
                    "v1",
                    "--username",
                    "AWS",
                    "--timeout",
                    "10",
                    "--jobs",
                    "1",
                ],
                &[("ECR_PUSH_PASSWORD", "secret-pw")],
            );
            run.failure(1);
            assert!(
                run.stderr.contains("refusing"),
                "{target} ({kind:?}): {}",
                run.stderr
            );
            assert_eq!(
                proxy.count(kind),
                1,
                "{target} ({kind:?}): a refused Location is not retried"
            );
            if kind != Kind::CommitUpload {
                assert_eq!(proxy.count(Kind::PatchUpload), 0, "no upload to elsewhere");
            }
            assert!(registry.tags(&repository).is_empty());
        }
    }
    assert!(
        hostile.seen().is_empty(),
        "nothing reached the hostile address: {:?}",
        hostile.seen()
    );
}
