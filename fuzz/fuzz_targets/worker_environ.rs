//! The worker's request path up to the app: raw HTTP/1.x bytes parsed by hyper as the worker
//! server configures it, every request turned into a PEP 3333 environ by the real builder inside
//! the embedded interpreter, then checked by the standard library's `wsgiref.validate` and
//! against the request it came from.
//!
//! Input: the first byte picks the peer (bit 0: `X-Forwarded-*` trusted; bit 1: a TCP peer instead
//! of the Unix socket), the rest is what the client sends.
#![no_main]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kubewsgi::worker::child::job::{Input as Source, Job, Peer};
use kubewsgi::worker::child::reply::ReplyTx;
use kubewsgi::worker::python::environ::{Consts, EnvBuilder, forwarded, split_host};
use kubewsgi::worker::python::input::Input;
use kubewsgi::worker::python::interp;
use kubewsgi::worker::python::streams::{Errors, FileWrapper};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyModule, PyString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// PEP 3333 checks that need Python: the standard validator, native strings, and `wsgi.input`.
const CHECK: &std::ffi::CStr = cr#"
import warnings
from wsgiref.validate import check_environ

def check(environ, body):
    with warnings.catch_warnings():
        # Unusual methods are a warning there, not an error.
        warnings.simplefilter("ignore")
        if environ.get("PATH_INFO") == "*":
            # OPTIONS * has no path: PATH_INFO "*" as gunicorn and wsgiref.simple_server give it.
            check_environ(dict(environ, PATH_INFO=""))
        else:
            check_environ(environ)
    out = {}
    for k, v in environ.items():
        assert type(k) is str, repr(k)
        # Header names may hold "." (a token character): HTTP_X.Y is still a CGI variable.
        if "." not in k or k.startswith("HTTP_"):
            assert type(v) is str, (k, v)
            # Native strings: one code point per byte.
            out[k] = v.encode("latin-1")
    got = environ["wsgi.input"].read()
    assert got == body, (len(got), len(body))
    return out
"#;

struct Harness {
    rt: tokio::runtime::Runtime,
    consts: Consts,
    builder: Mutex<EnvBuilder>,
    check: Py<PyAny>,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        interp::initialize(None).expect("the embedded interpreter starts");
        Python::attach(|py| {
            let errors = Py::new(py, Errors::default()).unwrap().into_any();
            let wrapper = py.get_type::<FileWrapper>().into_any().unbind();
            let m = PyModule::from_code(py, CHECK, c"fuzz_check.py", c"fuzz_check").unwrap();
            Harness {
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
                consts: Consts::new(py, errors, wrapper, true, true).unwrap(),
                // One builder for all inputs, as one per Python thread serves every request.
                builder: Mutex::new(EnvBuilder::new()),
                check: m.getattr("check").unwrap().unbind(),
            }
        })
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, wire)) = data.split_first() else {
        return;
    };
    let peer = Peer {
        remote: (ctl & 2 != 0).then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 40000 + ctl as u16))),
        local: (ctl & 2 != 0).then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 8000))),
        trust_forwarded: ctl & 1 != 0,
    };
    let h = harness();
    h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let svc = service_fn(move |req: Request<Incoming>| async move {
            let (parts, body) = req.into_parts();
            // A body cut short by the end of input is refused by the worker before any environ.
            if let Ok(body) = body.collect().await {
                let req = Request::from_parts(parts, ());
                environ(h, req, body.to_bytes(), peer);
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
        // The worker server's HTTP/1.1 settings (src/worker/child/server.rs).
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(1 << 20)
            .serve_connection(TokioIo::new(server), svc);
        let send = async {
            let _ = client.write_all(wire).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
        };
        let both = async { tokio::join!(conn, send) };
        if tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .is_err()
        {
            panic!("the connection did not end after the client closed its side");
        }
    });
});

/// Builds the environ of one request and checks it.
fn environ(h: &Harness, req: Request<()>, body: Bytes, peer: Peer) {
    let (parts, ()) = req.into_parts();
    let job = Job {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        peer,
        input: Source::Full(Bytes::new()),
        reply: ReplyTx::detached(),
        picked_at: Arc::new(AtomicU64::new(0)),
    };
    Python::attach(|py| {
        let input = Py::new(py, Input::new(Source::Full(body.clone())))
            .unwrap()
            .into_bound(py)
            .into_any();
        let env = h
            .builder
            .lock()
            .unwrap()
            .build(py, &h.consts, &job, input)
            .expect("the environ builds");
        let cgi = h
            .check
            .call1(py, (&env, PyBytes::new(py, &body)))
            .unwrap_or_else(|e| panic!("{}\n{job:?}", interp::traceback(py, &e)));
        let cgi = cgi.bind(py).cast::<PyDict>().unwrap();
        against_request(&job, &env, cgi);
    });
}

fn get(cgi: &Bound<'_, PyDict>, key: &str) -> Option<Vec<u8>> {
    cgi.get_item(key).unwrap().map(|v| v.extract().unwrap())
}

/// The environ describes the request: method, path, query, protocol, every header, the host.
fn against_request(job: &Job, env: &Bound<'_, PyDict>, cgi: &Bound<'_, PyDict>) {
    let must = |k: &str| get(cgi, k).unwrap_or_else(|| panic!("no {k} in {env}"));
    assert_eq!(must("REQUEST_METHOD"), job.method.as_str().as_bytes());
    assert_eq!(must("SCRIPT_NAME"), b"");
    let path: Vec<u8> = percent_encoding::percent_decode(job.uri.path().as_bytes()).collect();
    assert_eq!(must("PATH_INFO"), path);
    assert_eq!(
        must("QUERY_STRING"),
        job.uri.query().unwrap_or("").as_bytes()
    );
    let proto: &[u8] = if job.version == Version::HTTP_10 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    };
    assert_eq!(must("SERVER_PROTOCOL"), proto);
    let port = must("SERVER_PORT");
    assert!(
        !port.is_empty() && port.iter().all(u8::is_ascii_digit),
        "SERVER_PORT {port:?}"
    );
    let none = HeaderMap::new();
    let fwd = forwarded(if job.peer.trust_forwarded {
        &job.headers
    } else {
        &none
    });
    let host = fwd
        .host
        .or_else(|| job.headers.get(header::HOST).map(|v| v.as_bytes()));
    if let Some(host) = host {
        let (name, _) = split_host(host, "80");
        if !name.is_empty() {
            assert_eq!(must("SERVER_NAME"), name);
        }
    }
    // PEP 3333: never empty, even for a Host that names no host.
    assert!(!must("SERVER_NAME").is_empty(), "empty SERVER_NAME");

    // Every header without "_" under its CGI name, repeats joined; nothing else named HTTP_*.
    let mut expected = 0;
    for name in job.headers.keys() {
        if name.as_str().contains('_') {
            continue;
        }
        let key = match name.as_str() {
            "content-type" => "CONTENT_TYPE".to_string(),
            "content-length" => "CONTENT_LENGTH".to_string(),
            n => format!("HTTP_{}", n.to_ascii_uppercase().replace('-', "_")),
        };
        expected += usize::from(key.starts_with("HTTP_"));
        if name == header::HOST
            && let Some(fh) = fwd.host
        {
            assert_eq!(must("HTTP_HOST"), fh);
            continue;
        }
        let sep: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
        let joined = job
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(sep);
        assert_eq!(must(&key), joined, "{key}");
    }
    if fwd.host.is_some() && !job.headers.contains_key(header::HOST) {
        expected += 1;
        assert_eq!(must("HTTP_HOST"), fwd.host.unwrap());
    }
    let http_keys = cgi
        .keys()
        .iter()
        .filter(|k| {
            k.cast::<PyString>()
                .is_ok_and(|s| s.to_str().is_ok_and(|s| s.starts_with("HTTP_")))
        })
        .count();
    assert_eq!(http_keys, expected, "HTTP_* keys of {env}");
    let scheme: String = env
        .get_item("wsgi.url_scheme")
        .unwrap()
        .unwrap()
        .extract()
        .unwrap();
    let https = fwd.scheme_https == Some(true);
    assert_eq!(scheme, if https { "https" } else { "http" });
}
