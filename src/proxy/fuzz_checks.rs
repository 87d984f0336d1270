//! Invariants of the proxy's pure request checks, driven by arbitrary bytes: the fuzz targets in
//! `fuzz/` and the property tests call [`request_bytes`]; it panics when an invariant breaks.

use std::net::{IpAddr, Ipv4Addr};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use super::{forwarded, raw_head, validate};

/// Builds a request from `data` (first byte: version and trust; first line: method and target;
/// other lines: `name:value`), runs the checks and the forwarded-header rewrite, and asserts that
/// whatever they accept is well formed.
pub fn request_bytes(data: &[u8]) {
    let _ = raw_head::length_and_chunked(data);
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let version = match ctl % 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let trusted = ctl & 0x80 != 0;
    let mut lines = rest.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.splitn(2, |&b| b == b' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let mut b = Request::builder()
        .version(version)
        .method(method)
        .uri(target);
    for line in lines {
        let Some(i) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(&line[i + 1..]),
        ) else {
            continue;
        };
        b = b.header(n, v);
    }
    let Ok(req) = b.body(()) else {
        return;
    };
    let Ok(host) = validate::request(&req) else {
        return;
    };
    check_accepted(&req, host.as_ref(), trusted);
}

fn check_accepted(req: &Request<()>, host: Option<&HeaderValue>, trusted: bool) {
    if let Some(h) = host {
        let b = h.as_bytes();
        assert!(!b.is_empty() && b.len() <= 255, "host length {b:?}");
        assert!(
            !b.iter()
                .any(|c| matches!(c, b'/' | b'@' | b'?' | b'#' | b'\\') || !c.is_ascii_graphic()),
            "accepted host {b:?}"
        );
    } else {
        assert!(
            req.version() == Version::HTTP_10,
            "only HTTP/1.0 may lack a host"
        );
    }
    if req.method() != Method::CONNECT {
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
        assert!(
            path.starts_with('/') || (path == "*" && req.method() == Method::OPTIONS),
            "accepted target {path:?}"
        );
    }
    if req.version() < Version::HTTP_2 {
        let codings: Vec<&[u8]> = req
            .headers()
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert!(
            codings.is_empty()
                || (req.version() == Version::HTTP_11
                    && codings.len() == 1
                    && codings[0].trim_ascii().eq_ignore_ascii_case(b"chunked")),
            "accepted Transfer-Encoding {codings:?}"
        );
    }
    let mut h = req.headers().clone();
    let named = forwarded::connection_named(&h);
    forwarded::strip_hop_by_hop(&mut h);
    for n in named.iter().chain(&[
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ]) {
        assert!(!h.contains_key(n), "hop-by-hop {n} kept");
    }
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    forwarded::set_forwarded(&mut h, peer, trusted, "http", host);
    let xff = h.get("x-forwarded-for").expect("X-Forwarded-For is set");
    let xff = xff.to_str().unwrap_or_default();
    assert!(xff.ends_with("127.0.0.1"), "client address last: {xff:?}");
    if !trusted {
        assert_eq!(xff, "127.0.0.1", "an untrusted peer's For is replaced");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host"), host);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepts_an_ordinary_request_and_survives_junk() {
        super::request_bytes(b"\x01GET /x?y=1\nhost:a.test\nconnection: keep-alive, x-a\nx-a:1");
        super::request_bytes(b"\x01GET http://b.test/\nhost:a.test");
        super::request_bytes(b"");
        super::request_bytes(b"\xff\xff\xff");
    }
}
