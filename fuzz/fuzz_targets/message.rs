//! libFuzzer entry point of [`fedfuzz::message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedfuzz::message(data));
