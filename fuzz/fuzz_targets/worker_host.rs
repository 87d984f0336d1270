//! The worker's pure environ helpers: `Host` splitting and the last `X-Forwarded-*` hop.
#![no_main]

use kubewsgi::worker::python::environ::{forwarded, split_host};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (name, port) = split_host(data, "80");
    let trimmed = data.trim_ascii();
    if port != "80" || name.len() != trimmed.len() {
        assert!(!port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()));
        assert_eq!([&name[..], b":", port.as_bytes()].concat(), trimmed);
    } else {
        assert_eq!(name, trimmed);
    }
    let mut map = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        for n in ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"] {
            map.append(n, v.clone());
        }
    }
    let f = forwarded(&map);
    for part in [f.host, f.remote].into_iter().flatten() {
        assert!(!part.contains(&b',') && !part.is_empty());
    }
});
