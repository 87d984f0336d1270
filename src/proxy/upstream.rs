//! The pooled keep-alive HTTP/1.1 client to the worker server, over its Unix socket or TCP.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::buffer::ProxyBody;

/// Where the worker server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `unix:/path.sock`
    Unix(PathBuf),
    /// `http://host:port`
    Tcp(String),
}

impl Target {
    /// Parses `unix:PATH` or `http://HOST:PORT`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(format!("upstream `{s}` has no socket path"));
            }
            return Ok(Target::Unix(p.into()));
        }
        if let Some(hp) = s.strip_prefix("http://") {
            let hp = hp.trim_end_matches('/');
            let auth: http::uri::Authority = hp
                .parse()
                .map_err(|_| format!("upstream `{s}` is not http://HOST:PORT"))?;
            if auth.port_u16().is_none() || hp.contains('/') {
                return Err(format!("upstream `{s}` is not http://HOST:PORT"));
            }
            return Ok(Target::Tcp(hp.to_string()));
        }
        Err(format!(
            "upstream `{s}` must be unix:PATH or http://HOST:PORT"
        ))
    }
}

/// Connects to the [`Target`] whatever URI the client asks for.
#[derive(Clone)]
pub struct Connector(Arc<Target>);

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = self.0.clone();
        Box::pin(async move {
            let s = match &*target {
                Target::Unix(p) => Stream::Unix(UnixStream::connect(p).await?),
                Target::Tcp(a) => {
                    let s = TcpStream::connect(a.as_str()).await?;
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
            };
            Ok(TokioIo::new(s))
        })
    }
}

/// A connection to the worker server.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How a call to the worker server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (socket missing, refused): nothing was sent.
    Connect,
    /// The connection broke before a response head arrived.
    Reset,
}

impl Failure {
    /// Label for `kubewsgi_upstream_errors_total{kind}`.
    pub fn kind(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Reset => "reset",
        }
    }
}

/// Pooled client to the worker server.
pub struct Upstream {
    pooled: Client<Connector, ProxyBody>,
    /// Never reuses a connection: the retry after a pooled connection turned out dead.
    fresh: Client<Connector, ProxyBody>,
}

impl Upstream {
    /// A client for `target`. Idle pooled connections are closed well before the worker server's
    /// keep-alive timeout would close them under us.
    pub fn new(target: Target) -> Self {
        let conn = Connector(Arc::new(target));
        let build = |idle: usize| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(3))
                .pool_max_idle_per_host(idle)
                .set_host(false)
                .build(conn.clone())
        };
        Self {
            pooled: build(usize::MAX),
            fresh: build(0),
        }
    }

    /// The absolute URI the pooled client wants; only its path reaches the worker server.
    pub fn uri(pq: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(http::uri::Authority::from_static("upstream"));
        parts.path_and_query = Some(
            pq.cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://upstream/"))
    }

    /// Sends a request; `fresh` forces a new connection (for the one retry).
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        fresh: bool,
    ) -> Result<Response<Incoming>, Failure> {
        let client = if fresh { &self.fresh } else { &self.pooled };
        client.request(req).await.map_err(|e| {
            tracing::debug!(error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
            if e.is_connect() { Failure::Connect } else { Failure::Reset }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("unix:/run/a.sock"),
            Ok(Target::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            Target::parse("http://127.0.0.1:8001"),
            Ok(Target::Tcp("127.0.0.1:8001".into()))
        );
        assert!(Target::parse("unix:").is_err());
        assert!(Target::parse("http://127.0.0.1").is_err());
        assert!(Target::parse("/run/a.sock").is_err());
        let u = Upstream::uri(Some(&PathAndQuery::from_static("/a?b=1")));
        assert_eq!(u.to_string(), "http://upstream/a?b=1");
    }
}
