//! The WSGI `environ` builder (PEP 3333): one dict per request from interned keys,
//! header names cached per thread, every value a native (latin-1) string.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, Method, Version, header};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple};

use crate::worker::child::job::Job;

macro_rules! keys {
    ($($field:ident = $name:literal),* $(,)?) => {
        /// Interned environ keys.
        pub struct Keys { $(pub $field: Py<PyString>,)* }
        impl Keys {
            fn new(py: Python<'_>) -> Self {
                Keys { $($field: PyString::intern(py, $name).unbind(),)* }
            }
        }
    };
}

keys! {
    request_method = "REQUEST_METHOD", script_name = "SCRIPT_NAME", path_info = "PATH_INFO",
    query_string = "QUERY_STRING", content_type = "CONTENT_TYPE", content_length = "CONTENT_LENGTH",
    server_name = "SERVER_NAME", server_port = "SERVER_PORT", server_protocol = "SERVER_PROTOCOL",
    remote_addr = "REMOTE_ADDR", remote_port = "REMOTE_PORT", raw_uri = "RAW_URI", request_uri = "REQUEST_URI",
    http_host = "HTTP_HOST", wsgi_version = "wsgi.version", wsgi_url_scheme = "wsgi.url_scheme",
    wsgi_input = "wsgi.input", wsgi_errors = "wsgi.errors", wsgi_multithread = "wsgi.multithread",
    wsgi_multiprocess = "wsgi.multiprocess", wsgi_run_once = "wsgi.run_once",
    wsgi_input_terminated = "wsgi.input_terminated", wsgi_file_wrapper = "wsgi.file_wrapper",
}

/// Values that are the same for every request of this process.
pub struct Consts {
    pub keys: Keys,
    version: Py<PyTuple>,
    errors: Py<PyAny>,
    file_wrapper: Py<PyAny>,
    multithread: bool,
    multiprocess: bool,
    empty: Py<PyString>,
    http: Py<PyString>,
    https: Py<PyString>,
    http11: Py<PyString>,
    http10: Py<PyString>,
}

impl Consts {
    pub fn new(
        py: Python<'_>,
        errors: Py<PyAny>,
        file_wrapper: Py<PyAny>,
        multithread: bool,
        multiprocess: bool,
    ) -> PyResult<Self> {
        Ok(Consts {
            keys: Keys::new(py),
            version: PyTuple::new(py, [1, 0])?.unbind(),
            errors,
            file_wrapper,
            multithread,
            multiprocess,
            empty: PyString::intern(py, "").unbind(),
            http: PyString::intern(py, "http").unbind(),
            https: PyString::intern(py, "https").unbind(),
            http11: PyString::intern(py, "HTTP/1.1").unbind(),
            http10: PyString::intern(py, "HTTP/1.0").unbind(),
        })
    }
}

/// A Python str from raw bytes, decoded as latin-1 (PEP 3333 "native strings": bytes map 1:1 to code points).
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    if let Ok(s) = std::str::from_utf8(b)
        .map_err(|_| ())
        .and_then(|s| if s.is_ascii() { Ok(s) } else { Err(()) })
    {
        return PyString::new(py, s);
    }
    // SAFETY: PyUnicode_DecodeLatin1 reads exactly `len` bytes and cannot fail on any input
    // except memory exhaustion, which from_owned_ptr turns into a panic like any allocation.
    unsafe {
        let p = ffi::PyUnicode_DecodeLatin1(
            b.as_ptr().cast(),
            b.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        );
        Bound::from_owned_ptr(py, p).cast_into_unchecked()
    }
}

/// Per-thread builder: caches the `HTTP_*` key of each header name it has seen.
pub struct EnvBuilder {
    header_keys: HashMap<HeaderName, Py<PyString>>,
}

/// What the builder needs from a request besides its headers.
pub struct Forwarded<'a> {
    pub host: Option<&'a [u8]>,
    pub scheme_https: Option<bool>,
    pub remote: Option<&'a [u8]>,
}

impl Default for EnvBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvBuilder {
    pub fn new() -> Self {
        EnvBuilder {
            header_keys: HashMap::new(),
        }
    }

    fn header_key<'py>(&mut self, py: Python<'py>, name: &HeaderName) -> Bound<'py, PyString> {
        if let Some(k) = self.header_keys.get(name) {
            return k.bind(py).clone();
        }
        let mut key = String::with_capacity(5 + name.as_str().len());
        key.push_str("HTTP_");
        key.extend(name.as_str().chars().map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        }));
        let k = PyString::intern(py, &key);
        // Unbounded header names from clients must not grow the cache forever.
        if self.header_keys.len() < 512 {
            self.header_keys.insert(name.clone(), k.clone().unbind());
        }
        k
    }

    /// Builds the environ of `job`; `input` becomes `wsgi.input`.
    pub fn build<'py>(
        &mut self,
        py: Python<'py>,
        c: &Consts,
        job: &Job,
        input: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let k = &c.keys;
        let d = PyDict::new(py);
        let h = &job.headers;
        d.set_item(&k.request_method, method_str(py, &job.method))?;
        // SCRIPT_NAME is empty: the app is mounted at the root; a path prefix is the app's business.
        d.set_item(&k.script_name, &c.empty)?;
        // PATH_INFO is the percent-decoded path as bytes, decoded latin-1 (not UTF-8): apps re-encode it.
        let path = job.uri.path();
        let decoded: std::borrow::Cow<'_, [u8]> =
            percent_encoding::percent_decode(path.as_bytes()).into();
        d.set_item(&k.path_info, latin1(py, &decoded))?;
        // QUERY_STRING stays percent-encoded, as received.
        d.set_item(
            &k.query_string,
            latin1(py, job.uri.query().unwrap_or("").as_bytes()),
        )?;
        let raw_uri = job.uri.path_and_query().map_or(path, |pq| pq.as_str());
        let raw = latin1(py, raw_uri.as_bytes());
        d.set_item(&k.raw_uri, &raw)?;
        d.set_item(&k.request_uri, &raw)?;
        d.set_item(
            &k.server_protocol,
            if job.version == Version::HTTP_10 {
                &c.http10
            } else {
                &c.http11
            },
        )?;

        let fwd = if job.peer.trust_forwarded {
            forwarded(h)
        } else {
            Forwarded {
                host: None,
                scheme_https: None,
                remote: None,
            }
        };
        // REMOTE_ADDR: the hop the trusted proxy appended to X-Forwarded-For, else the TCP peer ("" on the Unix socket).
        match (fwd.remote, job.peer.remote) {
            (Some(r), _) => d.set_item(&k.remote_addr, latin1(py, r))?,
            (None, Some(a)) => {
                d.set_item(&k.remote_addr, a.ip().to_string())?;
                d.set_item(&k.remote_port, a.port().to_string())?;
            }
            (None, None) => d.set_item(&k.remote_addr, &c.empty)?,
        }
        let https = fwd.scheme_https.unwrap_or(false);
        d.set_item(&k.wsgi_url_scheme, if https { &c.https } else { &c.http })?;

        // Headers: CONTENT_TYPE/CONTENT_LENGTH without the HTTP_ prefix; repeats joined with ", "
        // (cookies with "; "); names with "_" dropped because they would alias the "-" spelling.
        let mut host_seen = false;
        for name in h.keys() {
            let n = name.as_str();
            if n.contains('_') {
                continue;
            }
            let key = if name == header::CONTENT_TYPE {
                k.content_type.bind(py).clone()
            } else if name == header::CONTENT_LENGTH {
                k.content_length.bind(py).clone()
            } else if name == header::HOST {
                host_seen = true;
                if let Some(fh) = fwd.host {
                    d.set_item(&k.http_host, latin1(py, fh))?;
                    continue;
                }
                k.http_host.bind(py).clone()
            } else {
                self.header_key(py, name)
            };
            let mut values = h.get_all(name).iter();
            let first = values.next().map(|v| v.as_bytes()).unwrap_or_default();
            match values.next() {
                None => d.set_item(key, latin1(py, first))?,
                Some(second) => {
                    let sep: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
                    let mut joined = Vec::with_capacity(first.len() + second.len() + 16);
                    joined.extend_from_slice(first);
                    for v in std::iter::once(second).chain(values) {
                        joined.extend_from_slice(sep);
                        joined.extend_from_slice(v.as_bytes());
                    }
                    d.set_item(key, latin1(py, &joined))?;
                }
            }
        }
        if !host_seen && let Some(fh) = fwd.host {
            d.set_item(&k.http_host, latin1(py, fh))?;
        }
        // SERVER_NAME/SERVER_PORT: from the (forwarded) Host, else the listening address.
        let host = fwd
            .host
            .or_else(|| h.get(header::HOST).map(|v| v.as_bytes()));
        let default_port = if https { "443" } else { "80" };
        let (name, port) = match host {
            Some(hv) => split_host(hv, default_port),
            None => match job.peer.local {
                Some(a) => (a.ip().to_string().into_bytes(), a.port().to_string()),
                None => (b"localhost".to_vec(), default_port.to_string()),
            },
        };
        d.set_item(&k.server_name, latin1(py, &name))?;
        d.set_item(&k.server_port, port)?;

        d.set_item(&k.wsgi_version, &c.version)?;
        d.set_item(&k.wsgi_input, input)?;
        d.set_item(&k.wsgi_errors, &c.errors)?;
        d.set_item(&k.wsgi_multithread, PyBool::new(py, c.multithread))?;
        d.set_item(&k.wsgi_multiprocess, PyBool::new(py, c.multiprocess))?;
        d.set_item(&k.wsgi_run_once, PyBool::new(py, false))?;
        // The input stream ends at the end of the body (also for chunked requests): apps may read to EOF.
        d.set_item(&k.wsgi_input_terminated, PyBool::new(py, true))?;
        d.set_item(&k.wsgi_file_wrapper, &c.file_wrapper)?;
        Ok(d)
    }
}

fn method_str<'py>(py: Python<'py>, m: &Method) -> Bound<'py, PyString> {
    PyString::intern(py, m.as_str())
}

/// Reads `X-Forwarded-Host`, `-Proto` and the last `X-Forwarded-For` hop.
pub fn forwarded(h: &HeaderMap) -> Forwarded<'_> {
    let last = |name: &str| {
        h.get_all(name).iter().next_back().map(|v| {
            let b = v.as_bytes();
            let start = b.iter().rposition(|&c| c == b',').map_or(0, |i| i + 1);
            b[start..].trim_ascii()
        })
    };
    Forwarded {
        host: last("x-forwarded-host").filter(|b| !b.is_empty()),
        scheme_https: last("x-forwarded-proto").and_then(|p| {
            match p.to_ascii_lowercase().as_slice() {
                b"https" => Some(true),
                b"http" => Some(false),
                _ => None,
            }
        }),
        remote: last("x-forwarded-for").filter(|b| !b.is_empty()),
    }
}

/// `host[:port]` / `[v6]:port` into name and port.
pub fn split_host(h: &[u8], default_port: &str) -> (Vec<u8>, String) {
    let h = h.trim_ascii();
    let colon = if h.first() == Some(&b'[') {
        h.iter()
            .position(|&c| c == b']')
            .and_then(|i| (h.get(i + 1) == Some(&b':')).then_some(i + 1))
    } else {
        h.iter().rposition(|&c| c == b':')
    };
    match colon {
        Some(i) if h[i + 1..].iter().all(u8::is_ascii_digit) && i + 1 < h.len() => (
            h[..i].to_vec(),
            String::from_utf8_lossy(&h[i + 1..]).into_owned(),
        ),
        _ => (h.to_vec(), default_port.to_string()),
    }
}
