//! Keep-alive HTTP/1.1 connections to the worker server, over its Unix socket or TCP.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
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

/// A connection to the worker server.
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
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
    /// The response head arrived but could not be taken (over hyper's 100 headers or ~400 KB):
    /// the app ran, so the request is not tried again.
    Invalid,
}

impl Failure {
    /// Label for `kubewsgi_upstream_errors_total{kind}`.
    pub fn kind(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Reset => "reset",
            Failure::Invalid => "invalid",
        }
    }
}

/// How long a connection may sit idle before it is closed instead of reused: well before the
/// worker server's keep-alive timeout would close it under a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Keep-alive HTTP/1.1 connections to the worker server, reused last-in first-out.
///
/// hyper's connection API with a plain stack of idle connections: admission already bounds how
/// many requests are at the worker server, so the pool needs no limits, keys or waiting of its
/// own, and a connection goes back on the stack without a task per request.
pub struct Upstream {
    target: Target,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// A connection lent to one request; [`Upstream::release`] it once the response body has been
/// read to its end, drop it otherwise (the connection is then closed).
pub struct Lease(SendRequest<ProxyBody>);

impl Upstream {
    /// A pool for `target`; connections are opened on demand.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The request target the worker server gets: origin form, the path and query only.
    pub fn uri(pq: Option<&PathAndQuery>) -> Uri {
        Uri::from(
            pq.cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
    }

    /// Sends a request; `fresh` forces a new connection (for the one retry).
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        fresh: bool,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        let mut sender = match (!fresh).then(|| self.checkout()) {
            Some(fut) => match fut.await {
                Some(s) => s,
                None => self.connect().await?,
            },
            None => self.connect().await?,
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, Lease(sender))),
            Err(e) => {
                let err = e.error();
                tracing::debug!(error = %err, source = ?std::error::Error::source(err), "upstream request failed");
                // The connection closed before the request went out: as safe to retry as a
                // failed connect.
                Err(if e.message().is_some() {
                    Failure::Connect
                } else if err.is_parse() {
                    tracing::error!(error = %err, "the app's response head cannot be passed on; answering 502");
                    Failure::Invalid
                } else {
                    Failure::Reset
                })
            }
        }
    }

    /// The worker server's address.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Closes every idle connection, so that the next requests connect anew and only workers
    /// still accepting take them: called when workers retire (a reload, a recycle, fewer workers),
    /// which would otherwise answer on their old connections until those time out.
    pub fn forget_idle(&self) {
        let idle = std::mem::take(&mut *self.lock());
        if !idle.is_empty() {
            tracing::debug!(
                connections = idle.len(),
                "closing idle upstream connections"
            );
        }
    }

    /// Puts a connection whose response was read whole back for the next request.
    pub fn release(&self, lease: Lease) {
        if lease.0.is_closed() {
            return;
        }
        self.lock().push(Idle {
            sender: lease.0,
            since: Instant::now(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live connection, if any; stale ones are dropped (and so closed).
    async fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        loop {
            let Idle { mut sender, since } = self.lock().pop()?;
            if since.elapsed() >= IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            // Ready at once unless its connection task has not yet seen the last response end.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, Failure> {
        let stream = match &self.target {
            Target::Unix(p) => UnixStream::connect(p).await.map(Stream::Unix),
            Target::Tcp(a) => TcpStream::connect(a.as_str()).await.and_then(|s| {
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }),
        }
        .map_err(|e| {
            tracing::debug!(error = %e, "cannot connect to the worker server");
            Failure::Connect
        })?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| {
            tracing::debug!(error = %e, "upstream handshake failed");
            Failure::Connect
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A raw HTTP/1.1 server on a Unix socket counting its connections; it answers `ok` and
    /// closes after one response when `close_after_one`.
    fn server(path: &std::path::Path, close_after_one: bool) -> Arc<AtomicUsize> {
        let listener = UnixListener::bind(path).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let close = if close_after_one {
                                "Connection: close\r\n"
                            } else {
                                ""
                            };
                            let answer =
                                format!("HTTP/1.1 200 OK\r\n{close}Content-Length: 2\r\n\r\nok");
                            if s.write_all(answer.as_bytes()).await.is_err() || close_after_one {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        accepted
    }

    async fn get(up: &Upstream, fresh: bool, release: bool) -> Vec<u8> {
        let mut req = Request::new(super::super::buffer::full(""));
        *req.uri_mut() = Upstream::uri(None);
        let (resp, lease) = up.send(req, fresh).await.expect("answered");
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        if release {
            up.release(lease);
        }
        body
    }

    #[tokio::test]
    async fn connections_are_reused_only_when_released_and_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let accepted = server(&path, false);
        let up = Upstream::new(Target::Unix(path));
        assert_eq!(get(&up, false, true).await, b"ok");
        assert_eq!(get(&up, false, true).await, b"ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "released connection reused"
        );
        assert_eq!(get(&up, true, true).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "fresh opens a new one");
        // Two idle now; one is taken and not released, the other serves the next request.
        assert_eq!(get(&up, false, false).await, b"ok");
        assert_eq!(get(&up, false, true).await, b"ok");
        assert_eq!(get(&up, false, true).await, b"ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the unreleased connection is dropped, the other reused"
        );
        assert_eq!(get(&up, false, false).await, b"ok");
        assert_eq!(get(&up, false, true).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_the_server_closed_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let accepted = server(&path, true);
        let up = Upstream::new(Target::Unix(path));
        for i in 1..=3 {
            assert_eq!(get(&up, false, true).await, b"ok");
            assert_eq!(accepted.load(Ordering::SeqCst), i);
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_failure() {
        let dir = tempfile::tempdir().unwrap();
        let up = Upstream::new(Target::Unix(dir.path().join("none.sock")));
        let mut req = Request::new(super::super::buffer::full(""));
        *req.uri_mut() = Upstream::uri(None);
        assert_eq!(up.send(req, false).await.err(), Some(Failure::Connect));
    }

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
        assert_eq!(u.to_string(), "/a?b=1");
        assert_eq!(Upstream::uri(None).to_string(), "/");
    }
}
