//! Static files for `--static URL=DIR`, served by tower-http's `ServeDir` (ETag, Last-Modified,
//! 304, Range, precompressed `.gz`/`.br`, content types).
//!
//! `ServeDir` refuses `..` (also percent-encoded) but follows symlinks; a canonical-path check
//! here keeps every served file inside DIR. Small whole-file answers are kept in a
//! [`StaticCache`].

use std::path::{Component, Path, PathBuf};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use percent_encoding::percent_decode_str;
use tower::ServiceExt;
use tower_http::services::ServeDir;
use tower_http::services::fs::ServeFileSystemResponseBody;

use super::buffer::{ProxyBody, full};
use super::config::StaticMount;
use super::static_cache::StaticCache;

const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("accept-encoding");

struct Mount {
    url: String,
    root: PathBuf,
    serve: ServeDir,
}

impl Mount {
    /// `ServeDir`'s answer for `uri` (inside this mount) with the client's headers; `None` when
    /// `uri` is not a valid request target.
    async fn serve(
        &self,
        method: &Method,
        uri: &str,
        headers: HeaderMap,
    ) -> Option<Response<ServeFileSystemResponseBody>> {
        let mut inner = Request::builder().method(method.clone()).uri(uri);
        if let Some(h) = inner.headers_mut() {
            *h = headers;
        }
        let inner = inner
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let Ok(resp) = self.serve.clone().oneshot(inner).await;
        Some(resp)
    }
}

/// All static mounts, longest URL prefix first, and the cache in front of them.
pub struct Statics {
    mounts: Vec<Mount>,
    cache: StaticCache,
}

impl Statics {
    /// Checks every DIR exists and is a directory.
    pub fn new(mounts: &[StaticMount], cache: StaticCache) -> Result<Self, String> {
        let mut out = Vec::new();
        for m in mounts {
            let root = std::fs::canonicalize(&m.dir)
                .map_err(|e| format!("static directory {} for {}: {e}", m.dir.display(), m.url))?;
            if !root.is_dir() {
                return Err(format!(
                    "static directory {} for {} is not a directory",
                    m.dir.display(),
                    m.url
                ));
            }
            let prefix = if m.url == "/" {
                String::new()
            } else {
                m.url.clone()
            };
            // Several ranges get the whole file (200), as RFC 9110 §14.2 allows, rather than 416.
            let serve = ServeDir::new(&root)
                .ignore_multi_range_requests(true)
                .precompressed_br()
                .precompressed_gzip()
                .redirect_path_prefix(prefix.clone());
            out.push(Mount {
                url: prefix,
                root,
                serve,
            });
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.url.len()));
        Ok(Self { mounts: out, cache })
    }

    /// The mount serving `path` and the path inside it, if any.
    fn find<'a>(&self, path: &'a str) -> Option<(&Mount, &'a str)> {
        self.mounts.iter().find_map(|m| {
            let rest = path.strip_prefix(m.url.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((m, rest))
        })
    }

    /// True when `path` belongs to a static mount.
    pub fn matches(&self, path: &str) -> bool {
        self.find(path).is_some()
    }

    /// Serves a request whose path [`Statics::matches`].
    pub async fn serve<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        let key = self.cache.key(req);
        if let Some(hit) = key.as_ref().and_then(|k| self.cache.get(k)) {
            return hit;
        }
        let Some((mount, rest)) = self.find(req.uri().path()) else {
            return status(StatusCode::NOT_FOUND);
        };
        if escapes(&mount.root, rest).await {
            return status(StatusCode::NOT_FOUND);
        }
        let uri = match req.uri().query() {
            Some(q) => format!("/{}?{q}", rest.trim_start_matches('/')),
            None => format!("/{}", rest.trim_start_matches('/')),
        };
        let mut headers = req.headers().clone();
        // A range in another unit is ignored, as RFC 9110 §14.2 asks; `ServeDir` would say 416.
        if headers
            .get(header::RANGE)
            .is_some_and(|r| !r.as_bytes().starts_with(b"bytes="))
        {
            headers.remove(header::RANGE);
        }
        // `ServeDir` ignores If-Range: the range is served first, then dropped when the validator
        // no longer names this file's version (RFC 9110 §13.1.5), so a resumed download never
        // splices two versions.
        let if_range = headers.remove(header::IF_RANGE);
        // Only a request that may need a second answer keeps a copy of its headers.
        let whole_file = if_range.as_ref().map(|_| headers.clone());
        let Some(mut resp) = mount.serve(req.method(), &uri, headers).await else {
            return status(StatusCode::BAD_REQUEST);
        };
        if let (Some(v), Some(mut headers)) = (if_range, whole_file)
            && resp.status() == StatusCode::PARTIAL_CONTENT
            && !if_range_matches(&v, resp.headers())
        {
            headers.remove(header::RANGE);
            let Some(whole) = mount.serve(req.method(), &uri, headers).await else {
                return status(StatusCode::BAD_REQUEST);
            };
            resp = whole;
        }
        let hashed = resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED;
        let (mut parts, body) = resp.into_parts();
        if hashed && is_hashed_name(rest) {
            parts.headers.insert(header::CACHE_CONTROL, IMMUTABLE);
        }
        if parts.status == StatusCode::NOT_MODIFIED {
            // A 304 carries the Vary its 200 would have (RFC 9110 §15.4.5); every mount has
            // precompressed variants, so the answer always depends on Accept-Encoding.
            parts.headers.insert(header::VARY, ACCEPT_ENCODING);
        }
        match key {
            Some(key) if self.cache.wants(parts.status, &parts.headers) => {
                // Read whole now (it is small) so the next request needs no file at all.
                let Ok(body) = body.collect().await.map(|c| c.to_bytes()) else {
                    return status(StatusCode::INTERNAL_SERVER_ERROR);
                };
                self.cache.insert(key, parts.headers.clone(), body.clone());
                Response::from_parts(parts, full(body))
            }
            _ => Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()),
        }
    }
}

fn status(code: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(full(code.canonical_reason().unwrap_or("")));
    *r.status_mut() = code;
    r
}

/// True when an `If-Range` validator names the version `headers` describe: a strong ETag equal
/// to its ETag, or exactly its Last-Modified date. A weak ETag never matches.
fn if_range_matches(v: &HeaderValue, headers: &HeaderMap) -> bool {
    let v = v.as_bytes();
    if v.starts_with(b"\"") {
        return headers
            .get(header::ETAG)
            .is_some_and(|e| !e.as_bytes().starts_with(b"W/") && e.as_bytes() == v);
    }
    let date = |b: &[u8]| httpdate::parse_http_date(std::str::from_utf8(b).ok()?).ok();
    match (date(v), headers.get(header::LAST_MODIFIED)) {
        (Some(d), Some(lm)) => date(lm.as_bytes()) == Some(d),
        _ => false,
    }
}

/// True when the file (or a precompressed variant) resolves outside `root`, e.g. through a symlink.
async fn escapes(root: &Path, rest: &str) -> bool {
    let Ok(decoded) = percent_decode_str(rest.trim_start_matches('/')).decode_utf8() else {
        return false;
    };
    let mut path = root.to_path_buf();
    for c in Path::new(&*decoded).components() {
        match c {
            Component::Normal(n) => path.push(n),
            // ServeDir refuses these itself.
            _ => return false,
        }
    }
    let mut candidates = vec![path.clone()];
    for ext in ["gz", "br"] {
        let mut p = path.clone().into_os_string();
        p.push(".");
        p.push(ext);
        candidates.push(p.into());
    }
    candidates.push(path.join("index.html"));
    // One blocking hand-off for all candidates rather than one each.
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        candidates
            .iter()
            .any(|c| std::fs::canonicalize(c).is_ok_and(|real| !real.starts_with(&root)))
    })
    .await
    .unwrap_or(true)
}

/// File names carrying a content hash (`app.3f2a9c1b.js`, Django's `app.3f2a9c1b0e12.css`,
/// `chunk-3f2a9c1b.js`): safe to cache for a year.
fn is_hashed_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = match name.rsplit_once('.') {
        Some((s, _ext)) => s,
        None => return false,
    };
    stem.split(['.', '-', '_']).skip(1).any(|seg| {
        (8..=64).contains(&seg.len())
            && seg.bytes().all(|c| c.is_ascii_hexdigit())
            && seg.bytes().any(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hashed_names() {
        assert!(is_hashed_name("/js/app.3f2a9c1b.js"));
        assert!(is_hashed_name("/css/site.1a2b3c4d5e6f.css"));
        assert!(is_hashed_name("/chunk-0123abcd.js"));
        assert!(is_hashed_name("/app.3f2a9c1b.js.gz"));
        assert!(!is_hashed_name("/app.js"));
        assert!(!is_hashed_name("/3f2a9c1b.js"));
        assert!(!is_hashed_name("/deadbeefcafe/app.js"));
        assert!(!is_hashed_name("/jquery.min.js"));
        assert!(
            !is_hashed_name("/app.abcdefab.js"),
            "all letters: a word, not a hash"
        );
    }

    #[test]
    fn mount_matching() {
        let dir = tempfile::tempdir().unwrap();
        let s = Statics::new(
            &[
                StaticMount::parse(&format!("/static={}", dir.path().display())).unwrap(),
                StaticMount::parse(&format!("/static/deep={}", dir.path().display())).unwrap(),
            ],
            StaticCache::new(0, Duration::ZERO),
        )
        .unwrap();
        assert!(s.matches("/static"));
        assert!(s.matches("/static/a.css"));
        assert!(!s.matches("/staticky"));
        assert!(!s.matches("/"));
        assert_eq!(s.find("/static/deep/x").unwrap().0.url, "/static/deep");
        let missing = [StaticMount::parse("/s=/nonexistent/dir").unwrap()];
        assert!(Statics::new(&missing, StaticCache::new(0, Duration::ZERO)).is_err());
    }
}
