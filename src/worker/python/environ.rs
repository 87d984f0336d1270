//! The WSGI `environ` builder (PEP 3333): one dict per request, copied from a per-process
//! template of interned keys and constant values; header names cached per thread, every value a
//! native (latin-1) string.

use std::collections::HashMap;
use std::net::IpAddr;

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
    /// Every key that does not depend on the request, plus a default for each key every request
    /// sets: one `dict.copy()` per request replaces two dozen inserts and the table's resizes.
    template: Py<PyDict>,
    methods: [Py<PyString>; 9],
    https: Py<PyString>,
    http10: Py<PyString>,
    localhost: Py<PyString>,
}

const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::HEAD,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

impl Consts {
    pub fn new(
        py: Python<'_>,
        errors: Py<PyAny>,
        file_wrapper: Py<PyAny>,
        multithread: bool,
        multiprocess: bool,
    ) -> PyResult<Self> {
        let keys = Keys::new(py);
        let k = &keys;
        let empty = PyString::intern(py, "");
        let t = PyDict::new(py);
        // Request-dependent keys first, with placeholder values, so a copy keeps their slots.
        for key in [
            &k.request_method,
            &k.path_info,
            &k.query_string,
            &k.raw_uri,
            &k.request_uri,
            &k.server_name,
            &k.server_port,
            &k.remote_addr,
            &k.wsgi_input,
        ] {
            t.set_item(key, &empty)?;
        }
        t.set_item(&k.script_name, &empty)?;
        t.set_item(&k.server_protocol, PyString::intern(py, "HTTP/1.1"))?;
        t.set_item(&k.wsgi_url_scheme, PyString::intern(py, "http"))?;
        t.set_item(&k.wsgi_version, PyTuple::new(py, [1, 0])?)?;
        t.set_item(&k.wsgi_errors, errors)?;
        t.set_item(&k.wsgi_multithread, PyBool::new(py, multithread))?;
        t.set_item(&k.wsgi_multiprocess, PyBool::new(py, multiprocess))?;
        t.set_item(&k.wsgi_run_once, PyBool::new(py, false))?;
        // The input stream ends at the end of the body (also for chunked requests): apps may read to EOF.
        t.set_item(&k.wsgi_input_terminated, PyBool::new(py, true))?;
        t.set_item(&k.wsgi_file_wrapper, file_wrapper)?;
        Ok(Consts {
            methods: METHODS.map(|m| PyString::intern(py, m.as_str()).unbind()),
            keys,
            template: t.unbind(),
            https: PyString::intern(py, "https").unbind(),
            http10: PyString::intern(py, "HTTP/1.0").unbind(),
            localhost: PyString::intern(py, "localhost").unbind(),
        })
    }

    fn method<'py>(&self, py: Python<'py>, m: &Method) -> Bound<'py, PyString> {
        match METHODS.iter().position(|x| x == m) {
            Some(i) => self.methods[i].bind(py).clone(),
            None => PyString::intern(py, m.as_str()),
        }
    }
}

/// A Python str from raw bytes, decoded as latin-1 (PEP 3333 "native strings": bytes map 1:1 to code points).
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    // SAFETY: PyUnicode_DecodeLatin1 reads exactly `len` bytes and cannot fail on any input
    // except memory exhaustion, which from_owned_ptr turns into a panic like any allocation.
    // It copies ASCII input with a plain memcpy, so there is no faster way to build the str.
    unsafe {
        let p = ffi::PyUnicode_DecodeLatin1(
            b.as_ptr().cast(),
            b.len() as ffi::Py_ssize_t,
            std::ptr::null(),
        );
        Bound::from_owned_ptr(py, p).cast_into_unchecked()
    }
}

/// The strings derived from the last `Host` a thread saw: clients repeat it on every request.
struct HostStrs {
    raw: Vec<u8>,
    https: bool,
    value: Py<PyString>,
    /// None when the Host names no host (`Host:` or `Host: :8080`).
    name: Option<Py<PyString>>,
    port: Py<PyString>,
}

/// Per-thread builder: caches the `HTTP_*` key of each header name it has seen and the
/// strings of the last `Host` and peer address.
pub struct EnvBuilder {
    header_keys: HashMap<HeaderName, Py<PyString>>,
    host: Option<HostStrs>,
    remote_ip: Option<(IpAddr, Py<PyString>)>,
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
            host: None,
            remote_ip: None,
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

    /// `HTTP_HOST`, `SERVER_NAME` and `SERVER_PORT` for a single `Host` value.
    fn host_strs(&mut self, py: Python<'_>, raw: &[u8], https: bool) -> &HostStrs {
        let hit = self
            .host
            .as_ref()
            .is_some_and(|h| h.https == https && h.raw == raw);
        if !hit {
            let (name, port) = split_host(raw, if https { "443" } else { "80" });
            self.host = Some(HostStrs {
                raw: raw.to_vec(),
                https,
                value: latin1(py, raw).unbind(),
                name: (!name.is_empty()).then(|| latin1(py, &name).unbind()),
                port: PyString::new(py, &port).unbind(),
            });
        }
        self.host.as_ref().expect("set above")
    }

    fn remote_ip<'py>(&mut self, py: Python<'py>, ip: IpAddr) -> Bound<'py, PyString> {
        match &self.remote_ip {
            Some((last, s)) if *last == ip => s.bind(py).clone(),
            _ => {
                let s = PyString::new(py, &ip.to_string());
                self.remote_ip = Some((ip, s.clone().unbind()));
                s
            }
        }
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
        let d = c.template.bind(py).copy()?;
        let h = &job.headers;
        d.set_item(&k.request_method, c.method(py, &job.method))?;
        // PATH_INFO is the percent-decoded path as bytes, decoded latin-1 (not UTF-8): apps re-encode it.
        let path = job.uri.path();
        let decoded: std::borrow::Cow<'_, [u8]> =
            percent_encoding::percent_decode(path.as_bytes()).into();
        let path_info = latin1(py, &decoded);
        d.set_item(&k.path_info, &path_info)?;
        // QUERY_STRING stays percent-encoded, as received.
        let query = job.uri.query();
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            d.set_item(&k.query_string, latin1(py, q.as_bytes()))?;
        }
        let raw = match job.uri.path_and_query() {
            // Without a query or escapes the raw URI is PATH_INFO itself.
            _ if query.is_none() && matches!(decoded, std::borrow::Cow::Borrowed(_)) => path_info,
            Some(pq) => latin1(py, pq.as_str().as_bytes()),
            None => latin1(py, path.as_bytes()),
        };
        d.set_item(&k.raw_uri, &raw)?;
        d.set_item(&k.request_uri, &raw)?;
        if job.version == Version::HTTP_10 {
            d.set_item(&k.server_protocol, &c.http10)?;
        }

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
                d.set_item(&k.remote_addr, self.remote_ip(py, a.ip()))?;
                d.set_item(&k.remote_port, port_str(py, a.port()))?;
            }
            (None, None) => {}
        }
        let https = fwd.scheme_https.unwrap_or(false);
        if https {
            d.set_item(&k.wsgi_url_scheme, &c.https)?;
        }

        // Headers: CONTENT_TYPE/CONTENT_LENGTH without the HTTP_ prefix; repeats joined with ", "
        // (cookies with "; "); names with "_" dropped because they would alias the "-" spelling.
        let mut host_values = h.get_all(header::HOST).iter();
        let single_host = match (fwd.host, host_values.next(), host_values.next()) {
            (Some(fh), _, _) => Some(fh),
            (None, Some(v), None) => Some(v.as_bytes()),
            _ => None,
        };
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
                if single_host.is_some() {
                    continue; // set below with SERVER_NAME
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
        // SERVER_NAME/SERVER_PORT: from the (forwarded) Host, else the listening address.
        let host = fwd
            .host
            .or_else(|| h.get(header::HOST).map(|v| v.as_bytes()));
        // PEP 3333 wants a non-empty SERVER_NAME; an empty Host (RFC 9110 allows one) names no
        // host, so the listening address stands in for it.
        let listening = || match job.peer.local {
            Some(a) => PyString::new(py, &a.ip().to_string()),
            None => c.localhost.bind(py).clone(),
        };
        if let Some(raw) = single_host {
            let hs = self.host_strs(py, raw, https);
            d.set_item(&k.http_host, hs.value.bind(py))?;
            match &hs.name {
                Some(name) => d.set_item(&k.server_name, name.bind(py))?,
                None => d.set_item(&k.server_name, listening())?,
            }
            d.set_item(&k.server_port, hs.port.bind(py))?;
        } else {
            let default_port = if https { "443" } else { "80" };
            let (name, port) = match host {
                Some(hv) => {
                    let (n, p) = split_host(hv, default_port);
                    let name = if n.is_empty() {
                        listening()
                    } else {
                        latin1(py, &n)
                    };
                    (name, PyString::new(py, &p))
                }
                None => match job.peer.local {
                    Some(a) => (
                        PyString::new(py, &a.ip().to_string()),
                        PyString::new(py, &a.port().to_string()),
                    ),
                    None => (
                        c.localhost.bind(py).clone(),
                        PyString::new(py, default_port),
                    ),
                },
            };
            d.set_item(&k.server_name, name)?;
            d.set_item(&k.server_port, port)?;
        }
        d.set_item(&k.wsgi_input, input)?;
        Ok(d)
    }
}

/// A port number as a Python str, without the formatting machinery.
fn port_str(py: Python<'_>, port: u16) -> Bound<'_, PyString> {
    let mut buf = [0u8; 5];
    let mut i = buf.len();
    let mut n = port;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    latin1(py, &buf[i..])
}

/// Reads `X-Forwarded-Host`, `-Proto` and the last `X-Forwarded-For` hop.
pub fn forwarded(h: &HeaderMap) -> Forwarded<'_> {
    const HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    let last = |name: HeaderName| {
        h.get_all(name).iter().next_back().map(|v| {
            let b = v.as_bytes();
            let start = b.iter().rposition(|&c| c == b',').map_or(0, |i| i + 1);
            b[start..].trim_ascii()
        })
    };
    Forwarded {
        host: last(HOST).filter(|b| !b.is_empty()),
        scheme_https: last(PROTO).and_then(|p| match p.to_ascii_lowercase().as_slice() {
            b"https" => Some(true),
            b"http" => Some(false),
            _ => None,
        }),
        remote: last(FOR).filter(|b| !b.is_empty()),
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
