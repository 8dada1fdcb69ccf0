//! Manifest, index, config, `manifest.json` and `oci-layout` parsing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ecr_push::source::fuzzing::documents(data);
});
