//! A bounded in-memory cache of small static responses, in the spirit of nginx's
//! `open_file_cache`: a hit costs no file-system call and no blocking-pool hand-off.
//!
//! Only plain `GET`s are cached (no `Range` and no conditional headers, which `ServeDir` answers
//! itself), keyed by path and `Accept-Encoding` because the precompressed variant depends on it.
//! An entry is trusted for `--static-cache-valid`; after that the file is served and read again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::buffer::{ProxyBody, full};

/// Files larger than this are always streamed from disk.
const MAX_ENTRY: u64 = 1 << 20;

/// Request headers that make `ServeDir` answer something other than the whole file.
const BYPASS: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// What a cached answer depends on: the path, and the `Accept-Encoding` that chose its variant.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    path: String,
    accept_encoding: Option<HeaderValue>,
}

struct Entry {
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
}

#[derive(Clone)]
struct Size;

impl Weighter<Key, Arc<Entry>> for Size {
    fn weight(&self, key: &Key, val: &Arc<Entry>) -> u64 {
        // Headers and bookkeeping are counted roughly, so that many tiny files stay bounded too.
        (key.path.len() + val.body.len() + 512) as u64
    }
}

/// The cache; disabled when its size is zero.
pub struct StaticCache {
    cache: Option<Cache<Key, Arc<Entry>, Size>>,
    valid: Duration,
    max_entry: u64,
}

impl StaticCache {
    /// A cache holding at most `size` bytes, trusting each entry for `valid`.
    pub fn new(size: u64, valid: Duration) -> Self {
        let cache = (size > 0 && !valid.is_zero()).then(|| {
            // The item estimate only sizes the initial tables; the weight bounds the memory.
            let items = (size / 16_384).clamp(16, 65_536) as usize;
            Cache::with_weighter(items, size, Size)
        });
        Self {
            cache,
            valid,
            // One file may take at most an eighth of the cache.
            max_entry: MAX_ENTRY.min(size / 8),
        }
    }

    /// The key under which `req` may be answered from the cache, if it may.
    pub fn key<B>(&self, req: &Request<B>) -> Option<Key> {
        self.cache.as_ref()?;
        let h = req.headers();
        if req.method() != Method::GET || BYPASS.iter().any(|n| h.contains_key(n)) {
            return None;
        }
        let mut ae = h.get_all(header::ACCEPT_ENCODING).iter();
        let accept_encoding = ae.next().cloned();
        if ae.next().is_some() {
            return None;
        }
        Some(Key {
            path: req.uri().path().to_owned(),
            accept_encoding,
        })
    }

    /// A fresh cached response for `key`.
    pub fn get(&self, key: &Key) -> Option<Response<ProxyBody>> {
        let e = self.cache.as_ref()?.get(key)?;
        (e.stored.elapsed() < self.valid).then(|| {
            let mut r = Response::new(full(e.body.clone()));
            *r.headers_mut() = e.headers.clone();
            r
        })
    }

    /// True when a response with these parts is worth keeping.
    pub fn wants(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        self.cache.is_some()
            && status == StatusCode::OK
            && headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|len| len <= self.max_entry)
    }

    /// Keeps a whole response read by the caller.
    pub fn insert(&self, key: Key, headers: HeaderMap, body: Bytes) {
        if let Some(c) = &self.cache {
            let stored = Instant::now();
            c.insert(
                key,
                Arc::new(Entry {
                    headers,
                    body,
                    stored,
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(extra: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/static/a.css");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_plain_gets_are_keyed() {
        let c = StaticCache::new(1 << 20, Duration::from_secs(1));
        assert!(c.key(&req(&[])).is_some());
        assert!(c.key(&req(&[("range", "bytes=0-1")])).is_none());
        assert!(c.key(&req(&[("if-none-match", "\"x\"")])).is_none());
        let head = Request::head("/static/a.css").body(()).unwrap();
        assert!(c.key(&head).is_none());
        let gz = c.key(&req(&[("accept-encoding", "gzip")])).unwrap();
        assert!(gz != c.key(&req(&[])).unwrap(), "variants differ");
        let off = StaticCache::new(0, Duration::from_secs(1));
        assert!(off.key(&req(&[])).is_none());
    }

    #[test]
    fn entries_expire_and_large_files_are_not_kept() {
        let c = StaticCache::new(1 << 20, Duration::from_millis(50));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert!(c.wants(StatusCode::OK, &h));
        assert!(!c.wants(StatusCode::NOT_FOUND, &h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("200000"));
        assert!(!c.wants(StatusCode::OK, &h), "more than an eighth");
        let key = c.key(&req(&[])).unwrap();
        c.insert(key.clone(), h, Bytes::from_static(b"abc"));
        assert!(c.get(&key).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(&key).is_none(), "expired");
    }
}
