//! The OCI layout reader (oci-archive, Docker ≥ 25 `docker save`), on archives described by the
//! input (see `src/lib.rs`); then the whole source detection as `push` runs it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let archive = ecr_push_fuzz::archive(data);
    ecr_push::source::fuzzing::oci_layout(&archive);
    let _ = ecr_push::source::fuzzing::any_source(&archive);
});
