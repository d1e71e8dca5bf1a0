#![no_main]
// See pyproxy_core::fuzz::path for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pyproxy_core::fuzz::path(data));
