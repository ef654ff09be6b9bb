//! libFuzzer entry point of [`fedfuzz::frame`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedfuzz::frame(data));
