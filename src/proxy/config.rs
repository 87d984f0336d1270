//! Command-line options of the front proxy, shared by `kubewsgi proxy` and `kubewsgi run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::worker::config::parse_seconds;

/// Limits, static files, TLS and logging: the nginx-like options.
#[derive(Args, Debug, Clone)]
pub struct ProxyOpts {
    /// Serve the files of DIR under URL, e.g. `/static=./static` (repeatable).
    #[arg(long = "static", env = "KUBEWSGI_STATIC", value_name = "URL=DIR", value_delimiter = ',', value_parser = StaticMount::parse)]
    pub static_mounts: Vec<StaticMount>,

    /// Memory for whole small static files (each at most an eighth of it and 1 MiB); `0` turns
    /// the cache off.
    #[arg(long, env = "KUBEWSGI_STATIC_CACHE_SIZE", default_value = "16m", value_parser = parse_size)]
    pub static_cache_size: u64,

    /// Seconds a cached static file is served before it is read from disk again.
    #[arg(long, env = "KUBEWSGI_STATIC_CACHE_VALID", default_value = "1", value_parser = parse_seconds)]
    pub static_cache_valid: Duration,

    /// Largest request body accepted (`1m`, `512k`, bytes); larger gets 413.
    #[arg(long, env = "KUBEWSGI_MAX_BODY_SIZE", default_value = "10m", value_parser = parse_size)]
    pub max_body_size: u64,

    /// Largest request head (request line and headers) accepted; larger gets 431.
    #[arg(long, env = "KUBEWSGI_MAX_HEADER_SIZE", default_value = "32k", value_parser = parse_size)]
    pub max_header_size: u64,

    /// Request bodies larger than this are spooled to a temporary file instead of memory.
    #[arg(long, env = "KUBEWSGI_BODY_BUFFER_SIZE", default_value = "64k", value_parser = parse_size)]
    pub body_buffer_size: u64,

    /// Directory for spooled request bodies (default: the system temp dir).
    #[arg(long, env = "KUBEWSGI_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Upstream responses larger than this are spooled to a temporary file instead of memory.
    #[arg(long, env = "KUBEWSGI_RESPONSE_BUFFER_SIZE", default_value = "1m", value_parser = parse_size)]
    pub response_buffer_size: u64,

    /// Seconds a client may take to send its request head or body; slower gets 408.
    #[arg(long, env = "KUBEWSGI_CLIENT_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub client_timeout: Duration,

    /// Seconds the worker may take to answer; longer gets 504.
    #[arg(long, env = "KUBEWSGI_UPSTREAM_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub upstream_timeout: Duration,

    /// Seconds a request may wait in the admission queue for a free worker thread; longer gets 503.
    #[arg(long, env = "KUBEWSGI_QUEUE_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub queue_timeout: Duration,

    /// Seconds in-flight requests get to finish after SIGTERM before connections are closed.
    #[arg(long, env = "KUBEWSGI_DRAIN_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub drain_timeout: Duration,

    /// Most client connections held open at once; further ones wait in the listen backlog.
    #[arg(long, env = "KUBEWSGI_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Threads serving client and upstream connections (default: one per four CPU cores, at
    /// least one; one thread runs without cross-thread wake-ups).
    #[arg(long, env = "KUBEWSGI_IO_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub io_threads: Option<u16>,

    /// PEM certificate chain; with `--tls-key`, clients speak TLS (HTTP/2 and HTTP/1.1 by ALPN).
    #[arg(
        long,
        env = "KUBEWSGI_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(
        long,
        env = "KUBEWSGI_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Access log format: `combined`, `json` or `off`.
    #[arg(long, env = "KUBEWSGI_ACCESS_LOG", default_value = "combined")]
    pub access_log: AccessLog,

    /// Peers (IP or CIDR, comma-separated) whose own `X-Forwarded-*` headers are kept and extended.
    #[arg(long, env = "KUBEWSGI_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
}

/// `--static URL=DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMount {
    /// URL prefix, always starting with `/` and without a trailing `/`.
    pub url: String,
    /// Directory whose files are served.
    pub dir: PathBuf,
}

impl StaticMount {
    /// Parses `URL=DIR`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (url, dir) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not URL=DIR"))?;
        if !url.starts_with('/') {
            return Err(format!("static URL `{url}` must start with `/`"));
        }
        if dir.is_empty() {
            return Err(format!("static mount `{s}` has no directory"));
        }
        let url = url.trim_end_matches('/');
        Ok(Self {
            url: if url.is_empty() {
                "/".into()
            } else {
                url.into()
            },
            dir: PathBuf::from(dir),
        })
    }
}

/// Access log formats.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// Apache/nginx combined log format.
    Combined,
    /// One JSON object per request.
    Json,
    /// No access log.
    Off,
}

/// Parses a byte size: `1048576`, `512k`, `1m`, `2g` (powers of 1024, as nginx).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 1048576, 512k or 1m"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999999g").is_err());
        // The largest sizes the WsgiApp schema admits (`crd::SIZE_PATTERN`) all parse.
        for s in [
            "999999999999999999",
            "999999999999999k",
            "999999999999999KB",
            "999999999999m",
            "999999999g",
            "999999999Gb",
        ] {
            assert!(parse_size(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn static_mounts() {
        let m = StaticMount::parse("/static/=./s").unwrap();
        assert_eq!(m.url, "/static");
        assert_eq!(m.dir, PathBuf::from("./s"));
        assert!(StaticMount::parse("static=./s").is_err());
        assert!(StaticMount::parse("/static").is_err());
    }
}
