//! Unit tests of the environ builder and the status/header validation, against the real interpreter.

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Version};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::environ::{Consts, EnvBuilder, split_host};
use super::response::validate;
use super::streams::{Errors, FileWrapper};
use crate::worker::child::job::{Input, Job, Peer};

fn python() {
    static INIT: Once = Once::new();
    INIT.call_once(|| super::interp::initialize(None).expect("python starts"));
}

fn job(req: Request<()>, peer: Peer) -> Job {
    let (parts, ()) = req.into_parts();
    Job {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        peer,
        input: Input::Full(Bytes::new()),
        reply: crate::worker::child::reply::ReplyTx::detached(),
        picked_at: Arc::new(AtomicU64::new(0)),
    }
}

fn build<'py>(py: Python<'py>, j: &Job) -> Bound<'py, PyDict> {
    let errors = Py::new(py, Errors::default()).unwrap().into_any();
    let wrapper = py.get_type::<FileWrapper>().into_any().unbind();
    let c = Consts::new(py, errors, wrapper, true, true).unwrap();
    EnvBuilder::new()
        .build(py, &c, j, py.None().into_bound(py))
        .unwrap()
}

fn get(d: &Bound<'_, PyDict>, k: &str) -> Option<String> {
    d.get_item(k)
        .unwrap()
        .map(|v| v.extract::<String>().unwrap())
}

const UNIX: Peer = Peer {
    remote: None,
    local: None,
    trust_forwarded: true,
};

#[test]
fn environ_from_a_request() {
    python();
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/a%2Fb/%E9t%C3%A9?x=%41&y")
        .version(Version::HTTP_10)
        .header("host", "example.org:8080")
        .header("content-type", "text/plain")
        .header("content-length", "0")
        .header("accept", "a")
        .header("accept", "b")
        .header("cookie", "x=1")
        .header("cookie", "y=2")
        .header("x_smuggled", "no")
        .header("x-latin", HeaderValue::from_bytes(b"caf\xe9").unwrap())
        .body(())
        .unwrap();
    Python::attach(|py| {
        let d = build(py, &job(req, UNIX));
        assert_eq!(get(&d, "REQUEST_METHOD").as_deref(), Some("PUT"));
        // %2F decodes to "/" too (PATH_INFO is decoded); %E9 is one latin-1 byte, %C3%A9 two.
        assert_eq!(
            get(&d, "PATH_INFO").as_deref(),
            Some("/a/b/\u{e9}t\u{c3}\u{a9}")
        );
        assert_eq!(get(&d, "QUERY_STRING").as_deref(), Some("x=%41&y"));
        assert_eq!(
            get(&d, "RAW_URI").as_deref(),
            Some("/a%2Fb/%E9t%C3%A9?x=%41&y")
        );
        assert_eq!(get(&d, "SERVER_PROTOCOL").as_deref(), Some("HTTP/1.0"));
        assert_eq!(get(&d, "SERVER_NAME").as_deref(), Some("example.org"));
        assert_eq!(get(&d, "SERVER_PORT").as_deref(), Some("8080"));
        assert_eq!(get(&d, "CONTENT_TYPE").as_deref(), Some("text/plain"));
        assert_eq!(get(&d, "CONTENT_LENGTH").as_deref(), Some("0"));
        assert_eq!(get(&d, "HTTP_ACCEPT").as_deref(), Some("a, b"));
        assert_eq!(get(&d, "HTTP_COOKIE").as_deref(), Some("x=1; y=2"));
        assert_eq!(get(&d, "HTTP_X_LATIN").as_deref(), Some("caf\u{e9}"));
        assert_eq!(get(&d, "HTTP_X_SMUGGLED"), None);
        assert_eq!(get(&d, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(get(&d, "REMOTE_ADDR").as_deref(), Some(""));
        assert_eq!(get(&d, "wsgi.url_scheme").as_deref(), Some("http"));
        let version: (i32, i32) = d
            .get_item("wsgi.version")
            .unwrap()
            .unwrap()
            .extract()
            .unwrap();
        assert_eq!(version, (1, 0));
        for k in [
            "wsgi.multithread",
            "wsgi.multiprocess",
            "wsgi.input_terminated",
        ] {
            assert!(
                d.get_item(k).unwrap().unwrap().extract::<bool>().unwrap(),
                "{k}"
            );
        }
        assert!(
            !d.get_item("wsgi.run_once")
                .unwrap()
                .unwrap()
                .extract::<bool>()
                .unwrap()
        );
    });
}

#[test]
fn forwarded_headers_only_when_trusted() {
    python();
    let req = || {
        Request::builder()
            .uri("/")
            .header("host", "internal")
            .header("x-forwarded-for", "1.1.1.1, 10.0.0.1")
            .header("x-forwarded-for", "198.51.100.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "public.example")
            .body(())
            .unwrap()
    };
    Python::attach(|py| {
        let d = build(py, &job(req(), UNIX));
        assert_eq!(get(&d, "REMOTE_ADDR").as_deref(), Some("198.51.100.9"));
        assert_eq!(get(&d, "wsgi.url_scheme").as_deref(), Some("https"));
        assert_eq!(get(&d, "HTTP_HOST").as_deref(), Some("public.example"));
        assert_eq!(
            (
                get(&d, "SERVER_NAME").as_deref(),
                get(&d, "SERVER_PORT").as_deref()
            ),
            (Some("public.example"), Some("443"))
        );
        let tcp = Peer {
            remote: Some("127.0.0.9:5000".parse().unwrap()),
            local: Some("127.0.0.1:80".parse().unwrap()),
            trust_forwarded: false,
        };
        let d = build(py, &job(req(), tcp));
        assert_eq!(get(&d, "REMOTE_ADDR").as_deref(), Some("127.0.0.9"));
        assert_eq!(get(&d, "REMOTE_PORT").as_deref(), Some("5000"));
        assert_eq!(get(&d, "wsgi.url_scheme").as_deref(), Some("http"));
        assert_eq!(get(&d, "HTTP_HOST").as_deref(), Some("internal"));
    });
}

/// One builder serves many requests: what it caches (template, Host, peer address) must never
/// carry a value, or an app's change to its environ, over to the next request.
#[test]
fn one_builder_many_requests() {
    python();
    Python::attach(|py| {
        let errors = Py::new(py, Errors::default()).unwrap().into_any();
        let wrapper = py.get_type::<FileWrapper>().into_any().unbind();
        let c = Consts::new(py, errors, wrapper, false, false).unwrap();
        let mut b = EnvBuilder::new();
        let mut env = |req: Request<()>, peer: Peer| {
            b.build(py, &c, &job(req, peer), py.None().into_bound(py))
                .unwrap()
        };
        let tcp = |addr: &str| Peer {
            remote: Some(addr.parse().unwrap()),
            local: Some("127.0.0.1:8000".parse().unwrap()),
            trust_forwarded: false,
        };
        let get_req = |uri: &str, host: &str| {
            Request::builder()
                .uri(uri)
                .header("host", host)
                .body(())
                .unwrap()
        };

        let d = env(get_req("/a", "a.example:81"), tcp("127.0.0.2:4000"));
        assert_eq!(get(&d, "RAW_URI").as_deref(), Some("/a"));
        assert_eq!(get(&d, "QUERY_STRING").as_deref(), Some(""));
        assert_eq!(get(&d, "SERVER_NAME").as_deref(), Some("a.example"));
        assert_eq!(get(&d, "SERVER_PORT").as_deref(), Some("81"));
        assert_eq!(get(&d, "REMOTE_ADDR").as_deref(), Some("127.0.0.2"));
        assert_eq!(get(&d, "REMOTE_PORT").as_deref(), Some("4000"));
        // The app changes its environ; the next request must not see it.
        d.set_item("SCRIPT_NAME", "/mounted").unwrap();
        d.set_item("wsgi.url_scheme", "https").unwrap();
        d.set_item("app.added", 1).unwrap();
        d.del_item("wsgi.version").unwrap();

        let purge = Request::builder()
            .method(Method::from_bytes(b"PURGE").unwrap())
            .uri("/b%20c?q=1")
            .header("host", "b.example")
            .body(())
            .unwrap();
        let d = env(purge, tcp("[::1]:65535"));
        assert_eq!(get(&d, "REQUEST_METHOD").as_deref(), Some("PURGE"));
        assert_eq!(get(&d, "PATH_INFO").as_deref(), Some("/b c"));
        assert_eq!(get(&d, "RAW_URI").as_deref(), Some("/b%20c?q=1"));
        assert_eq!(get(&d, "QUERY_STRING").as_deref(), Some("q=1"));
        assert_eq!(get(&d, "SCRIPT_NAME").as_deref(), Some(""));
        assert_eq!(get(&d, "wsgi.url_scheme").as_deref(), Some("http"));
        assert!(d.get_item("app.added").unwrap().is_none());
        assert!(d.get_item("wsgi.version").unwrap().is_some());
        assert_eq!(get(&d, "SERVER_NAME").as_deref(), Some("b.example"));
        assert_eq!(get(&d, "SERVER_PORT").as_deref(), Some("80"));
        assert_eq!(get(&d, "HTTP_HOST").as_deref(), Some("b.example"));
        assert_eq!(get(&d, "REMOTE_ADDR").as_deref(), Some("::1"));
        assert_eq!(get(&d, "REMOTE_PORT").as_deref(), Some("65535"));

        // The same Host behind a proxy that says https: another default port.
        let proxied = Request::builder()
            .uri("/%7e")
            .header("host", "b.example")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        let d = env(proxied, UNIX);
        assert_eq!(get(&d, "SERVER_PORT").as_deref(), Some("443"));
        assert_eq!(get(&d, "RAW_URI").as_deref(), Some("/%7e"));
        assert_eq!(get(&d, "PATH_INFO").as_deref(), Some("/~"));
        assert_eq!(get(&d, "REMOTE_ADDR").as_deref(), Some(""));
        assert!(d.get_item("REMOTE_PORT").unwrap().is_none());

        // Two Host headers: HTTP_HOST joins them, SERVER_NAME comes from the first.
        let two = Request::builder()
            .uri("/")
            .header("host", "x.example:1")
            .header("host", "y.example")
            .body(())
            .unwrap();
        let d = env(two, UNIX);
        assert_eq!(
            get(&d, "HTTP_HOST").as_deref(),
            Some("x.example:1, y.example")
        );
        assert_eq!(get(&d, "SERVER_NAME").as_deref(), Some("x.example"));
        assert_eq!(get(&d, "SERVER_PORT").as_deref(), Some("1"));

        // No Host at all: the listening address, and no HTTP_HOST left over from before.
        let none = Request::builder().uri("/").body(()).unwrap();
        let d = env(none, tcp("127.0.0.2:4001"));
        assert!(d.get_item("HTTP_HOST").unwrap().is_none());
        assert_eq!(get(&d, "SERVER_NAME").as_deref(), Some("127.0.0.1"));
        assert_eq!(get(&d, "SERVER_PORT").as_deref(), Some("8000"));
        assert_eq!(get(&d, "REMOTE_PORT").as_deref(), Some("4001"));

        // A Host that names no host (`Host:`, `Host: :8080`): SERVER_NAME is never empty, the
        // listening address stands in; the port still comes from the Host when it has one.
        for (raw, port) in [("", "80"), (":8080", "8080")] {
            let r = Request::builder()
                .uri("/")
                .header("host", raw)
                .body(())
                .unwrap();
            let d = env(r, tcp("127.0.0.2:4001"));
            assert_eq!(get(&d, "HTTP_HOST").as_deref(), Some(raw));
            assert_eq!(
                get(&d, "SERVER_NAME").as_deref(),
                Some("127.0.0.1"),
                "{raw:?}"
            );
            assert_eq!(get(&d, "SERVER_PORT").as_deref(), Some(port), "{raw:?}");
        }
    });
}

#[test]
fn hosts_split() {
    assert_eq!(split_host(b"a.b:81", "80"), (b"a.b".to_vec(), "81".into()));
    assert_eq!(split_host(b"a.b", "443"), (b"a.b".to_vec(), "443".into()));
    assert_eq!(
        split_host(b"[::1]:9", "80"),
        (b"[::1]".to_vec(), "9".into())
    );
    assert_eq!(split_host(b"[::1]", "80"), (b"[::1]".to_vec(), "80".into()));
}

#[test]
fn status_and_header_validation() {
    python();
    Python::attach(|py| {
        let check = |status: &str, headers: &str| -> Result<super::response::Head, String> {
            let s = py
                .eval(&std::ffi::CString::new(status).unwrap(), None, None)
                .unwrap();
            let h = py
                .eval(&std::ffi::CString::new(headers).unwrap(), None, None)
                .unwrap();
            validate(&s, &h).map_err(|e| e.to_string())
        };
        let ok = check(
            "'200 OK'",
            "[('Content-Type', 'text/plain'), ('X-A', '1'), ('X-A', '2'), ('Content-Length', '5')]",
        )
        .unwrap();
        assert_eq!(ok.status, 200);
        assert!(ok.reason.is_none());
        assert_eq!(ok.content_length, Some(5));
        assert_eq!(ok.headers.get_all("x-a").iter().count(), 2);
        let custom = check("'299 Fine Thanks'", "[]").unwrap();
        assert_eq!(custom.reason.as_deref(), Some(&b"Fine Thanks"[..]));
        let latin = check("'200 OK'", "[('X-L', 'caf\\xe9')]").unwrap();
        assert_eq!(latin.headers["x-l"].as_bytes(), b"caf\xe9");
        let hop = check(
            "'200 OK'",
            "[('Connection', 'close'), ('Transfer-Encoding', 'chunked'), ('Keep-Alive', '5')]",
        )
        .unwrap();
        assert_eq!(
            hop.headers.len(),
            1,
            "only Connection: close survives: {:?}",
            hop.headers
        );
        for (status, headers, msg) in [
            ("b'200 OK'", "[]", "status must be a str"),
            ("'200'", "[]", "invalid status"),
            ("'2000 OK'", "[]", "invalid status"),
            ("'100 Continue'", "[]", "invalid status"),
            ("'200 OK\\r\\nX: y'", "[]", "invalid status"),
            ("'200 OK'", "{'a': 'b'}", "headers must be a list"),
            ("'200 OK'", "[('a', 'b', 'c')]", "tuple"),
            ("'200 OK'", "[('a', 1)]", "must be str"),
            ("'200 OK'", "[('Bad Name', 'v')]", "invalid header name"),
            ("'200 OK'", "[('X', 'a\\nb')]", "invalid value"),
            ("'200 OK'", "[('X', '\\u20ac')]", "not latin-1"),
            (
                "'200 OK'",
                "[('Content-Length', 'ten')]",
                "invalid Content-Length",
            ),
            (
                "'200 OK'",
                "[('Content-Length', '1'), ('Content-Length', '2')]",
                "conflicting",
            ),
        ] {
            let err = check(status, headers).expect_err(status);
            assert!(err.contains(msg), "{status} {headers}: {err}");
        }
    });
    let _ = HeaderMap::new();
}
