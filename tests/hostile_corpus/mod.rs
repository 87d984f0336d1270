//! The hostile HTTP/1.x corpus (RFC 9110, RFC 9112): malformed, ambiguous and oversized requests
//! that must be refused whatever port or transport carries them, and the recorder app that shows
//! whether any of them reached the app.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The recorder app copied into a private directory, so its request log is this test's own.
pub fn recorder_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/recorder/recorder.py"),
        d.path().join("recorder.py"),
    )
    .unwrap();
    d
}

pub fn app_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("requests.log")).unwrap_or_default()
}

/// Sends `req` on a fresh plain connection and reads the answer (see [`exchange_on`]).
pub fn exchange(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    exchange_on(s, req)
}

/// Sends `req` and reads until the server closes or goes quiet for a while; a reset after a
/// complete answer still leaves what was read.
pub fn exchange_on<S: Read + Write>(mut s: S, req: &[u8]) -> Vec<u8> {
    // A refused request may be answered (and the socket closed) before all of it was written.
    let _ = s.write_all(req).and_then(|()| s.flush());
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Status codes of every response found in `raw` (pipelined answers included).
pub fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| {
            let rest = &text[i..];
            let code = rest.get(9..12)?;
            (rest.as_bytes().get(8) == Some(&b' ')).then(|| code.parse().ok())?
        })
        .collect()
}

pub fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&'static str, Vec<u8>)> = vec![
        // Host (RFC 9112 §3.2, RFC 9110 §7.2)
        ("missing Host on HTTP/1.1", b"GET /h HTTP/1.1\r\n\r\n".to_vec()),
        ("duplicate Host", b"GET /h HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n".to_vec()),
        ("duplicate identical Host", b"GET /h HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n".to_vec()),
        ("empty Host", b"GET /h HTTP/1.1\r\nHost:\r\n\r\n".to_vec()),
        ("Host with userinfo", b"GET /h HTTP/1.1\r\nHost: u@a.test\r\n\r\n".to_vec()),
        ("Host with path", b"GET /h HTTP/1.1\r\nHost: a.test/x\r\n\r\n".to_vec()),
        ("Host with space", b"GET /h HTTP/1.1\r\nHost: a test\r\n\r\n".to_vec()),
        ("Host with bad port", b"GET /h HTTP/1.1\r\nHost: a.test:8o\r\n\r\n".to_vec()),
        ("Host with two ports", b"GET /h HTTP/1.1\r\nHost: a.test:1:2\r\n\r\n".to_vec()),
        ("Host with NUL", b"GET /h HTTP/1.1\r\nHost: a\0.test\r\n\r\n".to_vec()),
        ("Host with obs-text", b"GET /h HTTP/1.1\r\nHost: a\xff.test\r\n\r\n".to_vec()),
        ("absolute-form naming another host", b"GET http://evil.test/h HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec()),
        ("absolute-form with a non-http scheme", b"GET ftp://a.test/h HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec()),
        ("authority-form GET", b"GET a.test:80 HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec()),
        ("CONNECT", b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n".to_vec()),
        // Content-Length (RFC 9112 §6.3, RFC 9110 §8.6)
        ("two different Content-Length", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec()),
        ("Content-Length list with different values", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd".to_vec()),
        ("non-decimal Content-Length", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc".to_vec()),
        ("negative Content-Length", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc".to_vec()),
        ("plus-signed Content-Length", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc".to_vec()),
        ("Content-Length with a fraction", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 3.0\r\n\r\nabc".to_vec()),
        ("empty Content-Length", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\nabc".to_vec()),
        ("Content-Length overflowing u64", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nabc".to_vec()),
        ("huge Content-Length", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\nabc".to_vec()),
        ("Content-Length with inner space", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nabc".to_vec()),
        // Content-Length with Transfer-Encoding: request smuggling classics
        ("CL.TE", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("TE.CL", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n2c\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n\r\n0\r\n\r\n".to_vec()),
        ("CL with TE chunked, identity", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE chunked, identity", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE gzip, chunked", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("TE identity", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n".to_vec()),
        ("TE xchunked", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE chunked twice", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE chunked then a second TE header", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE with a vertical tab", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE on HTTP/1.0", b"POST /h HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("TE on HTTP/1.0 with CL", b"POST /h HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        ("TE with whitespace before colon", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE folded", b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n".to_vec()),
        // Chunked bodies (RFC 9112 §7.1)
        ("chunk size hex overflow", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("chunk size 0x", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("negative chunk size", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("chunk size not hex", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("chunk without CRLF after data", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n".to_vec()),
        ("chunk size line with bare LF", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n".to_vec()),
        ("chunk longer than declared", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n".to_vec()),
        ("chunk extension with bare CR", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("chunk size with space inside", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1 0\r\nabc\r\n0\r\n\r\n".to_vec()),
        ("chunked body cut short then close", b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc".to_vec()),
        // Field syntax (RFC 9110 §5, RFC 9112 §5)
        ("obs-fold", b"GET /h HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n".to_vec()),
        ("whitespace before colon", b"GET /h HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n".to_vec()),
        ("header without colon", b"GET /h HTTP/1.1\r\nHost: a\r\nX-A b\r\n\r\n".to_vec()),
        ("empty header name", b"GET /h HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n".to_vec()),
        ("NUL in header name", b"GET /h HTTP/1.1\r\nHost: a\r\nX-\0A: b\r\n\r\n".to_vec()),
        ("NUL in header value", b"GET /h HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n".to_vec()),
        ("bare CR in header value", b"GET /h HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n".to_vec()),
        ("DEL in header value", b"GET /h HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n".to_vec()),
        ("DEL in header name", b"GET /h HTTP/1.1\r\nHost: a\r\nX-\x7fA: b\r\n\r\n".to_vec()),
        ("space in header name", b"GET /h HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n".to_vec()),
        ("first header line folded", b"GET /h HTTP/1.1\r\n Host: a\r\n\r\n".to_vec()),
        // Request line (RFC 9112 §3)
        ("NUL in target", b"GET /h\0x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("bare CR in target", b"GET /h\rx HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("DEL in target", b"GET /h\x7fx HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("space in target", b"GET /h x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("obs-text in target", b"GET /h\xffx HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("tab in target", b"GET /h\tx HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("empty target", b"GET  HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("relative target", b"GET h HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("asterisk target on GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("method with slash", b"GE/T /h HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("method with NUL", b"GE\0T /h HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("method with colon", b"GE:T /h HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("empty method", b" /h HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("method with obs-text", b"G\xc9T /h HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("HTTP/1.2", b"GET /h HTTP/1.2\r\nHost: a\r\n\r\n".to_vec()),
        ("HTTP/2.0 on HTTP/1", b"GET /h HTTP/2.0\r\nHost: a\r\n\r\n".to_vec()),
        ("HTTP/0.9 style", b"GET /h\r\n\r\n".to_vec()),
        ("lowercase http/1.1", b"GET /h http/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("HTTP/1.1 with trailing junk", b"GET /h HTTP/1.1x\r\nHost: a\r\n\r\n".to_vec()),
        ("HTTP/11", b"GET /h HTTP/11\r\nHost: a\r\n\r\n".to_vec()),
        ("two spaces after method", b"GET  /h HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("bare LF line ends with bare CR", b"GET /h HTTP/1.1\rHost: a\r\r".to_vec()),
        // Garbage
        ("plain garbage", b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec()),
        ("only CRLFs", b"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n".to_vec()),
        ("TLS ClientHello on the plain port", tls_client_hello()),
        ("HTTP/2 preface then junk", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x99\x99\x99\x99\x99\x99junk".to_vec()),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()),
    ];
    // Oversized heads (RFC 9110 §15.5.15, RFC 6585 §5).
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200_000));
    v.push(("huge target", long_target.into_bytes()));
    let mut many = b"GET /h HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..500 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    v.push(("too many headers", many));
    let long_header = format!(
        "GET /h HTTP/1.1\r\nHost: a\r\nX-A: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    v.push(("header too long", long_header.into_bytes()));
    let long_name = format!(
        "GET /h HTTP/1.1\r\nHost: a\r\n{}: b\r\n\r\n",
        "N".repeat(100_000)
    );
    v.push(("header name too long", long_name.into_bytes()));
    let long_method = format!("{} /h HTTP/1.1\r\nHost: a\r\n\r\n", "M".repeat(100_000));
    v.push(("method too long", long_method.into_bytes()));
    v
}

/// The start of a real TLS 1.2/1.3 ClientHello record.
pub fn tls_client_hello() -> Vec<u8> {
    let mut v = vec![
        0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
    ];
    v.extend(std::iter::repeat_n(0x5a, 32));
    v.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    v
}
