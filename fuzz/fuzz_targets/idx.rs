//! libFuzzer entry point of [`fedfuzz::idx`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedfuzz::idx(data));
