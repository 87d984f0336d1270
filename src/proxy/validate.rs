//! Request checks hyper leaves to the application: the `Host` header rules of RFC 9112 §3.2,
//! the request-target forms of §3.2.1–3.2.4 and the transfer codings of §6.1.

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Version};

/// Why a request is refused with 400.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("request without Host")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid Host header")]
    BadHost,
    #[error("request target must be an absolute path")]
    BadTarget,
    #[error("request target names another host than Host")]
    ForeignAuthority,
    #[error("invalid Transfer-Encoding")]
    BadTransferEncoding,
    #[error("unsupported transfer coding (only chunked is accepted)")]
    UnsupportedTransferCoding,
}

impl Invalid {
    /// The answer's status: 501 for a transfer coding the proxy cannot decode (RFC 9112 §6.1),
    /// 400 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Invalid::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// All checks of this module in order; the request's host on success.
pub fn request<B>(req: &Request<B>) -> Result<Option<HeaderValue>, Invalid> {
    let host = host(req)?;
    target(req, host.as_ref())?;
    transfer_coding(req)?;
    Ok(host)
}

/// The request target: origin-form, `*` for OPTIONS only, or an http(s) absolute-form (HTTP/2:
/// `:scheme` and `:authority`) naming the same authority as Host, so the app never sees a host
/// it was not asked for.
pub fn target<B>(req: &Request<B>, host: Option<&HeaderValue>) -> Result<(), Invalid> {
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        return Ok(());
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let form_ok = if path == "*" {
        req.method() == Method::OPTIONS
    } else {
        path.starts_with('/')
    };
    if !form_ok {
        return Err(Invalid::BadTarget);
    }
    // HTTP/2 always carries the scheme and `:authority`; a Host field naming another entity is
    // malformed there too (RFC 9113 §8.3.1).
    match (uri.scheme_str(), uri.authority()) {
        (None, None) => Ok(()),
        (Some("http" | "https"), Some(a)) => match host {
            Some(h) if h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => Ok(()),
            _ => Err(Invalid::ForeignAuthority),
        },
        _ => Err(Invalid::BadTarget),
    }
}

/// HTTP/1 `Transfer-Encoding`: exactly `chunked` once; other codings are not decoded by the
/// proxy and would reach the app as if they were the body.
pub fn transfer_coding<B>(req: &Request<B>) -> Result<(), Invalid> {
    if req.version() >= Version::HTTP_2 {
        return Ok(());
    }
    let mut chunked = 0;
    for value in req.headers().get_all(header::TRANSFER_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Err(Invalid::BadTransferEncoding);
        };
        for coding in text.split(',').map(str::trim) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else if coding.is_empty() {
                return Err(Invalid::BadTransferEncoding);
            } else {
                return Err(Invalid::UnsupportedTransferCoding);
            }
        }
    }
    if chunked > 1 || (chunked == 1 && req.version() == Version::HTTP_10) {
        return Err(Invalid::BadTransferEncoding);
    }
    Ok(())
}

/// The request's host (Host header, or the HTTP/2 `:authority`), checked.
pub fn host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, Invalid> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Invalid::DuplicateHost);
    }
    let value = match (first, req.uri().authority()) {
        (Some(v), _) => v.clone(),
        (None, Some(a)) if req.version() >= Version::HTTP_2 => {
            HeaderValue::from_str(a.as_str()).map_err(|_| Invalid::BadHost)?
        }
        // HTTP/2 without `:authority` nor Host is as malformed as HTTP/1.1 without Host.
        (None, _) if req.version() >= Version::HTTP_11 => return Err(Invalid::MissingHost),
        (None, _) => return Ok(None),
    };
    if !valid_host(value.as_bytes()) {
        return Err(Invalid::BadHost);
    }
    Ok(Some(value))
}

/// `uri-host [ ":" port ]` with uri-host a reg-name or a bracketed IP literal (no userinfo).
fn valid_host(v: &[u8]) -> bool {
    if v.is_empty() || v.len() > 255 {
        return false;
    }
    let (host, port) = if v[0] == b'[' {
        let Some(end) = v.iter().position(|&c| c == b']') else {
            return false;
        };
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'))
        {
            return false;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match v.iter().position(|&c| c == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    let reg_name_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host.iter().all(|&c| {
                c.is_ascii_alphanumeric()
                    || matches!(
                        c,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'%'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                    )
            }));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    reg_name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&[u8]]) -> Request<()> {
        let mut r = Request::builder().version(version).uri(uri);
        for h in hosts {
            r = r.header(header::HOST, HeaderValue::from_bytes(h).unwrap());
        }
        r.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            host(&req(Version::HTTP_11, "/", &[])),
            Err(Invalid::MissingHost)
        );
        assert_eq!(
            host(&req(Version::HTTP_11, "/", &[b"a", b"b"])),
            Err(Invalid::DuplicateHost)
        );
        assert_eq!(host(&req(Version::HTTP_10, "/", &[])), Ok(None));
        assert_eq!(
            host(&req(Version::HTTP_2, "/", &[])),
            Err(Invalid::MissingHost)
        );
        assert_eq!(
            host(&req(Version::HTTP_2, "http://h2.example:81/", &[]))
                .unwrap()
                .unwrap(),
            "h2.example:81"
        );
        for ok in [
            &b"example.com"[..],
            b"example.com:8080",
            b"127.0.0.1:1",
            b"[::1]:80",
            b"[::1]",
            b"a_b",
        ] {
            assert!(
                host(&req(Version::HTTP_11, "/", &[ok])).is_ok(),
                "{}",
                String::from_utf8_lossy(ok)
            );
        }
        for bad in [
            &b"user@example.com"[..],
            b"ex ample",
            b"a:b",
            b"a:123456",
            b"[zz]",
            b"/x",
            b"a/b",
            b":80",
            b"\xffx",
        ] {
            assert_eq!(
                host(&req(Version::HTTP_11, "/", &[bad])),
                Err(Invalid::BadHost),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn with(version: Version, method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().version(version).method(method).uri(uri);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn target_forms() {
        let h = HeaderValue::from_static("a.test");
        let t = |m: Method, uri: &str| target(&with(Version::HTTP_11, m, uri, &[]), Some(&h));
        assert_eq!(t(Method::GET, "/x?y"), Ok(()));
        assert_eq!(t(Method::OPTIONS, "*"), Ok(()));
        assert_eq!(t(Method::GET, "http://A.test/x"), Ok(()));
        assert_eq!(t(Method::GET, "*"), Err(Invalid::BadTarget));
        assert_eq!(t(Method::GET, "a.test:80"), Err(Invalid::BadTarget));
        assert_eq!(t(Method::GET, "ftp://a.test/x"), Err(Invalid::BadTarget));
        assert_eq!(
            t(Method::GET, "http://b.test/x"),
            Err(Invalid::ForeignAuthority)
        );
        assert_eq!(
            t(Method::GET, "http://a.test:81/x"),
            Err(Invalid::ForeignAuthority)
        );
        let h2 = |uri: &str, host: &[(&str, &str)]| {
            let r = with(Version::HTTP_2, Method::GET, uri, host);
            let h = super::host(&r).unwrap();
            target(&r, h.as_ref())
        };
        assert_eq!(h2("https://a.test/x", &[]), Ok(()));
        assert_eq!(h2("https://a.test/x", &[("host", "a.test")]), Ok(()));
        assert_eq!(
            h2("https://a.test/x", &[("host", "b.test")]),
            Err(Invalid::ForeignAuthority)
        );
    }

    #[test]
    fn transfer_codings() {
        let te = |v: Version, values: &[&str]| {
            let hs: Vec<(&str, &str)> = values.iter().map(|x| ("transfer-encoding", *x)).collect();
            transfer_coding(&with(v, Method::POST, "/", &hs))
        };
        assert_eq!(te(Version::HTTP_11, &[]), Ok(()));
        assert_eq!(te(Version::HTTP_11, &["Chunked"]), Ok(()));
        assert_eq!(
            te(Version::HTTP_11, &["chunked", "chunked"]),
            Err(Invalid::BadTransferEncoding)
        );
        assert_eq!(
            te(Version::HTTP_11, &["chunked, chunked"]),
            Err(Invalid::BadTransferEncoding)
        );
        assert_eq!(
            te(Version::HTTP_11, &["gzip, chunked"]),
            Err(Invalid::UnsupportedTransferCoding)
        );
        assert_eq!(
            te(Version::HTTP_11, &["chunked, identity"]),
            Err(Invalid::UnsupportedTransferCoding)
        );
        assert_eq!(
            te(Version::HTTP_11, &[",chunked"]),
            Err(Invalid::BadTransferEncoding)
        );
        assert_eq!(
            te(Version::HTTP_10, &["chunked"]),
            Err(Invalid::BadTransferEncoding)
        );
        assert_eq!(
            Invalid::UnsupportedTransferCoding.status(),
            StatusCode::NOT_IMPLEMENTED
        );
    }
}
