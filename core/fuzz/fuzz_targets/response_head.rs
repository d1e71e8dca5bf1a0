#![no_main]
// See pyproxy_core::fuzz::response_head for the input's layout and the properties checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| pyproxy_core::fuzz::response_head(data));
