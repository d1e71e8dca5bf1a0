#![no_main]
// See pyproxy_core::fuzz::snapshot for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pyproxy_core::fuzz::snapshot(data));
