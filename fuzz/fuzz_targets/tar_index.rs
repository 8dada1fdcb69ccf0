//! The tar index: any bytes as an image file (plain, gzip or zstd tar).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ecr_push::source::fuzzing::tar_index(data);
});
