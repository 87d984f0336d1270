//! Request checks hyper leaves to the application: the `Host` header rules of RFC 9112 §3.2.

use http::header::{self, HeaderValue};
use http::{Request, Version};

/// Why a request is refused with 400.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid Host header")]
    BadHost,
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
        (None, _) if req.version() == Version::HTTP_11 => return Err(Invalid::MissingHost),
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
}
