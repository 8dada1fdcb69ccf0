//! Pushes through a proxy that injects faults (see `harness::proxy`): every transient fault is
//! survived and the result verified by the registry and skopeo; corruption in transit is never
//! committed or tagged; a fault that does not end fails the push within its time bound, with a
//! message that says what failed; permanent refusals are not retried; hostile `Location`s and
//! redirects are not followed; a registry that lies (other bytes, sizes or digests than what was
//! pushed) fails the push or its verification with expected and found values.
//!
//! Every test checks that its faults had their effect, not only that they fired: a cut meant
//! for a layer must cut a layer body before its end (the config blob, uploaded first with
//! `--jobs 1`, is under 1 KB, so body faults aim at bodies of at least [`LAYER_BODY`] bytes),
//! a flip must land inside the body, and the retried blob must show up again whole.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::images::{self, Facts, ImageSpec};
use crate::harness::proxy::{Action, Fault, Faults, Kind, Modify, Outcome, Proxy, Seen, When};
use crate::harness::{Registry, Run, ecr_push, skopeo};

/// Bodies at least this long are layers, not the config blob (under 1 KB).
const LAYER_BODY: u64 = 8 * 1024;

/// An OCI layout of three gzip layers (the sizes the generator picks, ~50-70 KB each).
fn layout(name: &str, seed: u64) -> (tempfile::TempDir, Facts) {
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(dir.path(), &ImageSpec::new(name).seed(seed));
    (dir, facts)
}

/// Like [`layout`], with layers of about 2 MB (uncompressed): every layer body is larger than
/// what the proxy may read in one go (hyper buffers up to ~400 KB), so a cut after a few KiB
/// is always a cut in the middle.
fn big_layout(name: &str, seed: u64) -> (tempfile::TempDir, Facts) {
    let dir = tempfile::tempdir().unwrap();
    let facts = images::oci_layout(
        dir.path(),
        &ImageSpec::new(name).seed(seed).layer_bytes(2_000_000),
    );
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

/// Runs one push through `faults` and checks it completed and verified, and that every fault
/// rule had its effect at least once (see [`Proxy::effective`]).
fn survives(name: &str, faults: Faults, extra: &[&str]) -> (Proxy, Facts) {
    survives_with(layout(name, 7), name, faults, extra)
}

/// [`survives`], pushing `(dir, facts)`.
fn survives_with(
    (dir, facts): (tempfile::TempDir, Facts),
    name: &str,
    faults: Faults,
    extra: &[&str],
) -> (Proxy, Facts) {
    let registry = Registry::start();
    let proxy = Proxy::with_faults(&registry.url(), faults);
    let repository = format!("faults/{name}");
    let run = push(dir.path(), &proxy.url(), &repository, extra);
    assert_pushed(&run, &registry, &repository, &facts);
    assert_effective(&proxy);
    (proxy, facts)
}

/// Every fault rule had its effect on at least one request.
#[track_caller]
fn assert_effective(proxy: &Proxy) {
    let (fired, effective) = (proxy.fired(), proxy.effective());
    assert!(
        effective.iter().all(|&n| n > 0),
        "every fault rule must have had its effect at least once: fired {fired:?}, took effect \
         {effective:?}"
    );
}

/// PATCH requests, in order, with what the proxy did with them.
fn patches(proxy: &Proxy) -> Vec<(Seen, Outcome)> {
    proxy
        .records()
        .into_iter()
        .filter(|(seen, _)| seen.kind == Kind::PatchUpload)
        .collect()
}

/// Each cut upload (`cut`) was sent again later, whole: a complete PATCH of the same length
/// (if known) whose digest a commit then named. Returns those digests.
#[track_caller]
fn assert_sent_again_whole(proxy: &Proxy, cut: &[(Seen, Outcome)]) -> Vec<String> {
    let records = proxy.records();
    cut.iter()
        .map(|(seen, outcome)| {
            assert!(
                !outcome.body_complete,
                "request {} was cut before the end of its body (read {} of {:?} bytes)",
                seen.number, outcome.body_read, seen.content_length
            );
            let again = records
                .iter()
                .find(|(later, done)| {
                    later.number > seen.number
                        && later.kind == Kind::PatchUpload
                        && done.body_complete
                        && later.content_length == seen.content_length
                })
                .unwrap_or_else(|| {
                    panic!("the upload cut at request {} was sent again", seen.number)
                });
            let digest = again
                .1
                .body_digest
                .clone()
                .expect("a complete body has a digest");
            assert!(
                again.1.body_read > outcome.body_read,
                "the retry carried the whole blob ({} bytes), more than the cut one ({})",
                again.1.body_read,
                outcome.body_read
            );
            assert!(
                records
                    .iter()
                    .any(|(commit, _)| commit.kind == Kind::CommitUpload
                        && commit.number > again.0.number
                        && commit
                            .target
                            .contains(&format!("digest={}", digest.replace(':', "%3A")))),
                "the blob sent again ({digest}) was committed"
            );
            digest
        })
        .collect()
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
    let (proxy, _) = survives("server-errors", faults, &["--jobs", "1"]);
    assert_eq!(
        proxy.effective(),
        vec![2; 6],
        "each rule failed two requests"
    );
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
    let (proxy, _) = survives("throttled", faults, &[]);
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
    // The first three layer uploads break after 16 KiB of their 50-70 KB: each starts again
    // from its source.
    let faults = Faults::new(3).on_bodies(
        &[Kind::PatchUpload],
        LAYER_BODY,
        When::First(3),
        Fault::ResetMidBody(16 * 1024),
    );
    let (proxy, facts) = survives_with(
        big_layout("reset-mid-body", 7),
        "reset-mid-body",
        faults,
        &["--jobs", "1"],
    );
    let cut = proxy.fired_on(0);
    assert_eq!(cut.len(), 3);
    for digest in assert_sent_again_whole(&proxy, &cut) {
        assert!(facts.layer_digests.contains(&digest), "{digest} is a layer");
    }
    assert_eq!(
        patches(&proxy).len(),
        4 + 3,
        "config and 3 layers, and one more upload per cut"
    );
}

#[test]
fn legacy_layers_compressed_on_the_fly_survive_a_reset_mid_body() {
    // The body has no known length (compressed while sent, so no Content-Length); a retry
    // compresses again, and the result must be the same bytes: the ones the manifest names.
    let registry = Registry::start();
    let proxy = Proxy::with_faults(
        &registry.url(),
        Faults::new(4).on_bodies(
            &[Kind::PatchUpload],
            LAYER_BODY,
            When::First(2),
            Fault::ResetMidBody(8 * 1024),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("legacy.tar");
    let facts = images::docker_save_legacy(
        &tar,
        &[ImageSpec::new("legacy-reset").layer_bytes(2_000_000)],
    )
    .remove(0);
    let run = push(&tar, &proxy.url(), "faults/legacy", &["--jobs", "1"]);
    assert_pushed(&run, &registry, "faults/legacy", &facts);
    assert_eq!(run.field("config_digest"), facts.config_digest);
    assert_effective(&proxy);
    let cut = proxy.fired_on(0);
    assert_eq!(cut.len(), 2);
    assert!(
        cut.iter().all(|(seen, _)| seen.content_length.is_none()),
        "the cut bodies were layers compressed on the fly"
    );
    let layers = registry.manifest_layers("faults/legacy", "v1");
    for digest in assert_sent_again_whole(&proxy, &cut) {
        assert!(
            layers.contains(&digest),
            "the layer compressed again ({digest}) is the one the manifest names: {layers:?}"
        );
    }
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
    let (proxy, _) = survives("resets", faults, &[]);
    // The commits whose answers were lost had been carried out by the registry.
    for (seen, _) in proxy.fired_on(2) {
        let digest = seen
            .target
            .split("digest=")
            .nth(1)
            .unwrap()
            .replace("%3A", ":");
        assert!(
            proxy
                .records()
                .iter()
                .any(|(other, _)| other.number > seen.number
                    && other.kind == Kind::HeadBlob
                    && other.target.ends_with(&digest)),
            "a lost commit answer is checked with a HEAD of {digest}"
        );
    }
}

#[test]
fn stalls_are_cut_off_by_the_stall_timeout_and_retried() {
    // --timeout 8 gives a stall timeout of 4 s; each stalled request is abandoned and retried.
    let stall = Duration::from_secs(60);
    let faults = Faults::new(6)
        .on(&[Kind::HeadBlob], When::First(1), Fault::Stall(stall))
        .on_bodies(
            &[Kind::PatchUpload],
            LAYER_BODY,
            When::First(1),
            Fault::StallMidBody(8 * 1024, stall),
        )
        .on(&[Kind::PutManifest], When::First(1), Fault::Stall(stall));
    // The clock starts after the image is made: making it (gzip in a debug build) can take
    // longer than the push, and is no part of what is bounded here.
    let image = big_layout("stalls", 7);
    let started = Instant::now();
    let (proxy, _) = survives_with(image, "stalls", faults, &["--timeout", "8", "--jobs", "1"]);
    let took = started.elapsed();
    assert_sent_again_whole(&proxy, &proxy.fired_on(1));
    // Three stalls cut after 4 s each, plus the push and skopeo's read-back.
    assert!(took < Duration::from_secs(40), "took {took:?}");
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
    let faults = Faults::new(9).on_bodies(
        &[Kind::PatchUpload],
        LAYER_BODY,
        When::First(1),
        Fault::Modify(Modify::flip_byte(1000)),
    );
    let (proxy, facts) = survives("flip-once", faults, &["--jobs", "1"]);
    let [(flipped, changed)] = proxy.fired_on(0).try_into().unwrap();
    assert_eq!(
        changed.flipped,
        Some(1000),
        "byte 1000 of a layer body was flipped"
    );
    let sent = changed.body_digest.clone().expect("the body arrived whole");
    assert!(facts.layer_digests.contains(&sent), "{sent} is a layer");
    let records = proxy.records();
    // The registry hashed what it got and refused the commit …
    let (_, refused) = records
        .iter()
        .find(|(seen, _)| seen.kind == Kind::CommitUpload && seen.number > flipped.number)
        .expect("a commit after the flipped upload");
    assert_eq!(refused.status, Some(400));
    let answer = String::from_utf8_lossy(&refused.response_body);
    assert!(answer.contains("DIGEST_INVALID"), "{answer}");
    // … and the same blob went up again, unchanged, once.
    let again: Vec<_> = patches(&proxy)
        .into_iter()
        .filter(|(seen, outcome)| {
            seen.number > flipped.number && outcome.body_digest.as_ref() == Some(&sent)
        })
        .collect();
    assert_eq!(again.len(), 1, "the refused blob was uploaded again once");
    assert_eq!(again[0].1.flipped, None);
    assert_eq!(
        patches(&proxy).len(),
        4 + 1,
        "config, 3 layers, one repeated"
    );
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
    let flips = proxy.fired_on(0);
    assert!(
        !flips.is_empty()
            && flips
                .iter()
                .all(|(_, outcome)| outcome.flipped == Some(100)),
        "every upload had a byte flipped"
    );
    assert!(
        proxy
            .records()
            .iter()
            .filter(|(seen, _)| seen.kind == Kind::CommitUpload)
            .all(|(_, outcome)| outcome.status == Some(400)),
        "every commit was refused"
    );
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
    let (proxy, _) = survives("cut-download", faults, &["--verify", "full", "--jobs", "1"]);
    assert_eq!(proxy.effective(), vec![2], "two downloads were cut short");
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
    let (proxy, _) = survives("no-digest-header", faults, &[]);
    let changed = |kind: Kind| {
        proxy
            .fired_on(0)
            .iter()
            .any(|(seen, outcome)| seen.kind == kind && outcome.headers_changed)
    };
    assert!(
        changed(Kind::StartUpload),
        "upload Locations were made relative"
    );
    assert!(
        changed(Kind::PutManifest),
        "manifest PUT answers lost their digest"
    );
    assert!(
        changed(Kind::GetManifest),
        "manifest GET answers lost their digest"
    );
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
        .on_bodies(
            &[Kind::PatchUpload],
            LAYER_BODY,
            When::Chance(0.2),
            Fault::ResetMidBody(4096),
        )
        .on(&[], When::Chance(0.05), Fault::ForwardThenReset);
    let proxy = Proxy::with_faults(&registry.url(), faults);
    let (dir, facts) = big_layout("mix", 13);
    let run = push(dir.path(), &proxy.url(), "faults/mix", &["--jobs", "1"]);
    assert_pushed(&run, &registry, "faults/mix", &facts);
    // Every kind of fault in the mix happened (503, 429, reset, a layer cut mid-body, a lost
    // answer), and together they hit a good share of the requests.
    assert_effective(&proxy);
    assert_sent_again_whole(&proxy, &proxy.fired_on(3));
    let fired: usize = proxy.effective().iter().sum();
    let seen = proxy.seen().len();
    assert!(
        fired * 100 >= seen * 15,
        "a good share of requests failed ({fired} of {seen}): {:?}",
        proxy.effective()
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
    fails_in_time(
        "down",
        Fault::status(503),
        &[
            "HTTP 503",
            "gave up after",
            "allow more with --retries or --timeout",
        ],
    );
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
        &[
            "cannot reach the registry",
            "gave up after",
            "allow more with --retries or --timeout",
        ],
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

// ---------------------------------------------------------------------------------------------
// A registry that lies: each lie fails the push or its verification (exit 1) with a message that
// names the expected and the found value and says what to do next.
// ---------------------------------------------------------------------------------------------

/// Pushes the layout `dir` through a proxy run by `hook` in front of a fresh registry; the push
/// must fail with exit code 1 and say each of `needles`.
fn lied_to(
    dir: &Path,
    repository: &str,
    hook: impl Fn(&Seen) -> Action + Send + Sync + 'static,
    extra: &[&str],
    needles: &[String],
) -> (Registry, Proxy) {
    let registry = Registry::start();
    let proxy = Proxy::start(&registry.url(), hook);
    let run = push(dir, &proxy.url(), repository, extra);
    run.failure(1);
    for needle in needles {
        assert!(
            run.stderr.contains(needle.as_str()),
            "{needle:?} in:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stdout.is_empty(),
        "no result is printed: {}",
        run.stdout
    );
    (registry, proxy)
}

/// An answer changed by `modify` for requests of `kind`, forwarded untouched otherwise.
fn lie_on(kind: Kind, modify: Modify) -> impl Fn(&Seen) -> Action + Send + Sync + 'static {
    move |seen| {
        if seen.kind == kind {
            Action::ForwardModified(modify.clone())
        } else {
            Action::Forward
        }
    }
}

const FORGED: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn verification_catches_a_manifest_served_with_other_bytes() {
    let (dir, facts) = layout("lie-manifest", 20);
    let other = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    let (_, proxy) = lied_to(
        dir.path(),
        "faults/lie-manifest",
        lie_on(
            Kind::GetManifest,
            Modify {
                response_body: Some(bytes::Bytes::from_static(other)),
                ..Modify::default()
            },
        ),
        &[],
        &[
            "verification failed: manifest faults/lie-manifest:v1 digest".into(),
            format!("expected {}", facts.digest),
            format!("found {}", crate::harness::sha256(other)),
            "push again".into(),
        ],
    );
    assert!(proxy.count(Kind::GetManifest) >= 1);
}

#[test]
fn verification_catches_a_blob_whose_size_differs() {
    // Honest while pushing; once the manifest is put, blob checks name a size of 12345.
    let (dir, facts) = layout("lie-size", 21);
    let put = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (_, proxy) = lied_to(
        dir.path(),
        "faults/lie-size",
        move |seen| {
            use std::sync::atomic::Ordering::SeqCst;
            if seen.kind == Kind::PutManifest {
                put.store(true, SeqCst);
            }
            if seen.kind == Kind::HeadBlob && put.load(SeqCst) {
                Action::ForwardModified(Modify::with_header("content-length", "12345"))
            } else {
                Action::Forward
            }
        },
        &["--jobs", "1"],
        &[
            format!("verification failed: size of blob {}", facts.config_digest),
            "found 12345".into(),
            "push again".into(),
        ],
    );
    let lied = proxy
        .records()
        .into_iter()
        .filter(|(seen, outcome)| seen.kind == Kind::HeadBlob && outcome.headers_changed)
        .count();
    assert_eq!(
        lied, 1,
        "the first blob check after the push lied, and that ended it"
    );
}

#[test]
fn a_commit_answer_naming_another_digest_fails_the_push() {
    let (dir, facts) = layout("lie-commit", 22);
    let (registry, proxy) = lied_to(
        dir.path(),
        "faults/lie-commit",
        lie_on(
            Kind::CommitUpload,
            Modify::with_header("docker-content-digest", FORGED),
        ),
        &["--jobs", "1"],
        &[
            format!("the registry answered that it stored digest {FORGED}, not sha256:"),
            "push again".into(),
        ],
    );
    assert_eq!(proxy.count(Kind::CommitUpload), 1, "a lie is not retried");
    assert_nothing_tagged(&registry, &proxy, "faults/lie-commit", &facts);
}

#[test]
fn a_manifest_put_answer_naming_another_digest_fails_the_push() {
    let (dir, facts) = layout("lie-put", 23);
    lied_to(
        dir.path(),
        "faults/lie-put",
        lie_on(
            Kind::PutManifest,
            Modify::with_header("docker-content-digest", FORGED),
        ),
        &[],
        &[
            format!("put manifest {} as faults/lie-put:v1", facts.digest),
            format!("stored it as {FORGED}"),
            format!("expected {}", facts.digest),
        ],
    );
}

#[test]
fn full_verification_catches_layer_bytes_changed_on_the_way_back() {
    // Standard verification does not download layers; full verification does, and hashes them.
    let (dir, facts) = layout("lie-download", 24);
    let (_, proxy) = lied_to(
        dir.path(),
        "faults/lie-download",
        lie_on(
            Kind::GetBlob,
            Modify {
                flip_response_byte: Some(100),
                ..Modify::default()
            },
        ),
        &["--verify", "full", "--jobs", "1"],
        &[
            format!(
                "verification failed: downloaded bytes of layer {}",
                facts.layer_digests[0]
            ),
            format!("expected {}", facts.layer_digests[0]),
            "found sha256:".into(),
            "push again".into(),
        ],
    );
    let flipped = proxy
        .records()
        .into_iter()
        .filter(|(_, outcome)| outcome.response_flipped == Some(100))
        .count();
    assert_eq!(flipped, 1, "one layer came back changed, and that ended it");
}

#[test]
fn full_verification_catches_a_layer_that_does_not_match_its_diff_id() {
    // A build tool wrote a config whose diff_id is not the layer's: the registry serves the
    // pushed bytes faithfully, and only --verify full can tell the image is broken.
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let broken = crate::bad_input::layout_with_wrong_diff_id(dir.path());
    let run = push(dir.path(), &registry.url(), "faults/diff-id", &[]);
    run.success();
    let run = push(
        dir.path(),
        &registry.url(),
        "faults/diff-id",
        &["--verify", "full"],
    );
    run.failure(1);
    for needle in [
        format!(
            "verification failed: uncompressed digest (diff_id) of layer {}",
            broken.layer
        ),
        format!("expected {}", broken.claimed_diff_id),
        format!("found {}", broken.true_diff_id),
        "rebuild it".to_owned(),
    ] {
        assert!(
            run.stderr.contains(&needle),
            "{needle:?} in:\n{}",
            run.stderr
        );
    }
}

#[test]
fn blob_checks_without_a_length_are_not_mismatches() {
    // A HEAD answer without Content-Length says "present", not "0 bytes": the size is asked
    // with a one-byte range GET, and when even that says nothing, it stays unknown.
    let registry = Registry::start();
    let (dir, facts) = layout("no-length", 25);
    let lengthless = Proxy::start(
        &registry.url(),
        lie_on(Kind::HeadBlob, Modify::without_header("content-length")),
    );
    let first = push(
        dir.path(),
        &lengthless.url(),
        "faults/no-length",
        &["--jobs", "1"],
    );
    assert_pushed(&first, &registry, "faults/no-length", &facts);
    let stripped = lengthless
        .records()
        .into_iter()
        .filter(|(seen, outcome)| seen.kind == Kind::HeadBlob && outcome.headers_changed)
        .count();
    assert!(stripped >= 4, "blob checks lost their length ({stripped})");
    let ranges = lengthless
        .seen()
        .into_iter()
        .filter(|seen| seen.kind == Kind::GetBlob && seen.range.as_deref() == Some("bytes=0-0"))
        .count();
    assert!(
        ranges >= 4,
        "each size was asked with a range GET ({ranges})"
    );
    // Known sizes: a second push skips every blob.
    let again = push(
        dir.path(),
        &lengthless.url(),
        "faults/no-length",
        &["--jobs", "1"],
    );
    again.success();
    assert_eq!(again.json()["blobs_uploaded"], 0);

    // A registry that tells no size at all: verification passes with a note; a push uploads
    // rather than trust an unknown size.
    let silent = Proxy::start(&registry.url(), |seen| match seen.kind {
        Kind::HeadBlob => Action::ForwardModified(Modify::without_header("content-length")),
        Kind::GetBlob => Action::ForwardModified(Modify {
            remove_headers: vec!["content-length".into(), "content-range".into()],
            ..Modify::default()
        }),
        _ => Action::Forward,
    });
    let unknown = push(
        dir.path(),
        &silent.url(),
        "faults/no-length",
        &["--jobs", "1"],
    );
    unknown.success();
    assert!(
        unknown.stderr.contains("its size was not checked"),
        "{}",
        unknown.stderr
    );
    assert_eq!(
        unknown.json()["blobs_uploaded"],
        4,
        "config and 3 layers uploaded again"
    );
}

/// A registry behind a token service (as ghcr.io or Docker Hub): tokens `token-<n>`, the n-th
/// one minted; `refuse` decides which token requests fail (by their number, from 1) and which
/// registry requests are refused as unauthorized (by kind and how many of that kind came before).
fn bearer_gate(
    registry: &Registry,
    token_fails: impl Fn(usize) -> Option<u16> + Send + Sync + 'static,
    refuse: impl Fn(Kind, usize) -> bool + Send + Sync + 'static,
) -> Proxy {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    let realm: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let realm_in_hook = Arc::clone(&realm);
    let counts: Mutex<HashMap<Option<Kind>, usize>> = Mutex::new(HashMap::new());
    let proxy = Proxy::start(&registry.url(), move |seen| {
        let challenge = || Action::Respond {
            status: 401,
            headers: vec![(
                "WWW-Authenticate".into(),
                format!(
                    r#"Bearer realm="{}",service="test",scope="repository:faults/bearer:pull,push""#,
                    realm_in_hook.get().unwrap()
                ),
            )],
            body: r#"{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}"#.into(),
        };
        if seen.target.starts_with("/token") {
            let n = {
                let mut counts = counts.lock().unwrap();
                let n = counts.entry(None).or_default();
                *n += 1;
                *n
            };
            return match token_fails(n) {
                Some(status) => Action::status(status),
                None => Action::Respond {
                    status: 200,
                    headers: vec![],
                    body: format!(r#"{{"token":"token-{n}"}}"#),
                },
            };
        }
        if !seen
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer token-"))
        {
            return challenge();
        }
        let before = {
            let mut counts = counts.lock().unwrap();
            let n = counts.entry(Some(seen.kind)).or_default();
            *n += 1;
            *n - 1
        };
        if refuse(seen.kind, before) {
            challenge()
        } else {
            Action::Forward
        }
    });
    realm.set(format!("{}/token", proxy.url())).unwrap();
    proxy
}

fn token_requests(proxy: &Proxy) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|seen| seen.target.starts_with("/token"))
        .count()
}

#[test]
fn an_expired_token_at_the_commit_is_renewed_and_the_commit_sent_again() {
    let registry = Registry::start();
    let proxy = bearer_gate(
        &registry,
        |_| None,
        |kind, before| kind == Kind::CommitUpload && before == 0,
    );
    let (dir, facts) = layout("bearer", 26);
    let run = push(dir.path(), &proxy.url(), "faults/bearer", &["--jobs", "1"]);
    assert_pushed(&run, &registry, "faults/bearer", &facts);
    assert_eq!(token_requests(&proxy), 2, "one token, then one renewal");
    assert_eq!(
        proxy.count(Kind::PatchUpload),
        4,
        "nothing was uploaded twice: the commit alone was sent again"
    );
    assert_eq!(proxy.count(Kind::CommitUpload), 4 + 1);
}

#[test]
fn token_service_failures_are_retried() {
    let registry = Registry::start();
    let proxy = bearer_gate(&registry, |n| (n <= 2).then_some(503), |_, _| false);
    let (dir, facts) = layout("bearer-503", 27);
    let run = push(dir.path(), &proxy.url(), "faults/bearer", &[]);
    assert_pushed(&run, &registry, "faults/bearer", &facts);
    assert_eq!(token_requests(&proxy), 3, "two failures, then a token");
}

#[test]
fn a_token_service_that_would_take_credentials_elsewhere_is_refused() {
    // A plain-http token service on another host than the (plain-http) registry: our password
    // would cross the network in the clear to a host the user never named.
    let registry = Registry::start();
    let proxy = Proxy::start(&registry.url(), |_| Action::Respond {
        status: 401,
        headers: vec![(
            "WWW-Authenticate".into(),
            r#"Bearer realm="http://auth.example.invalid/token",service="x""#.into(),
        )],
        body: String::new(),
    });
    let (dir, _) = layout("realm", 28);
    let run = ecr_push(
        [
            "push",
            dir.path().to_str().unwrap(),
            "--registry",
            &proxy.url(),
            "--repository",
            "faults/realm",
            "--tag",
            "v1",
            "--username",
            "robot",
        ],
        &[("ECR_PUSH_PASSWORD", "realm-secret-pw")],
    );
    run.failure(1);
    assert!(
        run.stderr
            .contains("named the token service http://auth.example.invalid/token (plain http"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("refusing to send credentials"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("realm-secret-pw"));
}
