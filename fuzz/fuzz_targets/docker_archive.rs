//! The legacy `docker save` reader, on archives described by the input (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ecr_push::source::fuzzing::docker_archive(&ecr_push_fuzz::archive(data));
});
