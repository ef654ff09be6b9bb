//! libFuzzer entry point of [`fedfuzz::receiver`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedfuzz::receiver(data));
