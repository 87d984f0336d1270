//! The proxy's request checks, raw-head framing scan and forwarded-header rewrite.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kubewsgi::proxy::fuzz_checks::request_bytes(data);
});
