//! Client connections: accept with a connection limit, optional TLS, HTTP/1.1 or HTTP/2 (h2c by
//! prior knowledge, h2 by ALPN), and a bounded graceful drain on shutdown.
//!
//! The protocol is chosen here rather than by hyper-util's auto builder, whose detection read has
//! no timeout: a client that connects and sends nothing (or two bytes) must not hold a
//! connection slot forever.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::config::ProxyOpts;
use super::handler::{self, Peer, Shared};
use super::raw_head::{self, Progress, Watched};

/// hyper connection builders with the proxy's limits.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(opts: &ProxyOpts) -> Self {
        let mut h1 = http1::Builder::new();
        // hyper answers 431 itself for a head over `max_header_size`; its read buffer must hold
        // such a head whole (and is at least 8 KiB).
        let head_limit = usize::try_from(opts.max_header_size).unwrap_or(usize::MAX);
        h1.timer(TokioTimer::new())
            .header_read_timeout(opts.client_timeout)
            .max_header_size(head_limit)
            .max_buf_size(head_limit.saturating_add(8192).max(8192))
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(opts.max_header_size).unwrap_or(u32::MAX))
            .max_concurrent_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Self { h1, h2 }
    }
}

/// Serves clients on `listener` until `shutdown` turns true, then stops accepting and gives open
/// connections `--drain-timeout` to finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builders = Arc::new(Builders::new(&shared.opts));
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(shared.opts.max_connections.max(1)));
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        // Past the connection limit, new clients wait in the kernel's listen backlog.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = until_true(&mut shutdown) => break,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = until_true(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let (builders, shared, tls, watcher) = (
            builders.clone(),
            shared.clone(),
            tls.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            shared.metrics.connections.inc();
            let peer = Peer { addr, scheme };
            match tls {
                None => plain(&builders, stream, shared.clone(), peer, watcher).await,
                Some(acceptor) => {
                    secure(&builders, &acceptor, stream, shared.clone(), peer, watcher).await
                }
            }
            shared.metrics.connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(shared.opts.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// Outcome of looking at the first bytes of a plaintext connection.
enum Detected {
    H1,
    H2,
    /// Closed, or silent until the timeout: close without a word.
    Nothing,
    /// Some bytes, then silence: 408.
    Stalled,
}

/// Peeks at the first bytes: the HTTP/2 preface starts with `PRI`, which no HTTP/1 request does.
async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 3];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Detected::Nothing,
            Ok(Ok(n)) => n,
            Err(_) => return Detected::Nothing,
        };
        if buf[..n] != b"PRI"[..n] {
            return Detected::H1;
        }
        if n == 3 {
            return Detected::H2;
        }
        // `P` or `PR` so far: peek would return the same bytes at once, so wait a little.
        if tokio::time::Instant::now() >= deadline {
            return Detected::Stalled;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn plain(b: &Builders, stream: TcpStream, shared: Arc<Shared>, peer: Peer, watcher: Watcher) {
    match detect(&stream, shared.opts.client_timeout).await {
        Detected::Nothing => {}
        Detected::Stalled => {
            if let Ok(s) = stream.into_std() {
                raw_head::send_408(&s);
                raw_head::linger(s).await;
            }
        }
        Detected::H2 => h2(b, stream, shared, peer, watcher).await,
        Detected::H1 => {
            let dup = raw_head::duplicate(&stream);
            let (io, progress) = Watched::new(stream);
            let head_timeout = h1(b, io, shared, peer, watcher, progress.clone()).await;
            if let Ok(dup) = dup {
                if head_timeout && progress.mid_request() {
                    raw_head::send_408(&dup);
                }
                raw_head::linger(dup).await;
            }
        }
    }
}

async fn secure(
    b: &Builders,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    shared: Arc<Shared>,
    peer: Peer,
    watcher: Watcher,
) {
    let tls = match tokio::time::timeout(shared.opts.client_timeout, acceptor.accept(stream)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(addr = %peer.addr, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(addr = %peer.addr, "TLS handshake timed out"),
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        h2(b, tls, shared, peer, watcher).await;
    } else {
        // No 408 over TLS: it would have to be encrypted by the stream hyper owns.
        let (io, progress) = Watched::new(tls);
        h1(b, io, shared, peer, watcher, progress).await;
    }
}

/// The request service; over HTTP/1.1 it also refuses heads with both Content-Length and
/// Transfer-Encoding (marked for the handler) and tracks progress for the 408.
fn service(
    shared: Arc<Shared>,
    peer: Peer,
    progress: Option<Arc<Progress>>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<super::buffer::ProxyBody>,
    Error = std::convert::Infallible,
    Future = impl Future<
        Output = Result<http::Response<super::buffer::ProxyBody>, std::convert::Infallible>,
    > + Send,
> + Clone {
    service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let (shared, progress) = (shared.clone(), progress.clone());
        async move {
            if let Some(p) = &progress
                && req.headers().contains_key(http::header::TRANSFER_ENCODING)
                && p.length_and_chunked()
            {
                req.extensions_mut().insert(handler::ConflictingFraming);
            }
            let resp = handler::handle(shared, peer, req).await;
            if let Some(p) = progress {
                p.answered();
            }
            resp
        }
    })
}

/// Serves HTTP/1.1; true when the connection ended because a request head did not arrive in time.
async fn h1<I>(
    b: &Builders,
    io: I,
    shared: Arc<Shared>,
    peer: Peer,
    watcher: Watcher,
    progress: Arc<Progress>,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn =
        b.h1.serve_connection(TokioIo::new(io), service(shared, peer, Some(progress)));
    match watcher.watch(conn).await {
        Ok(()) => false,
        Err(e) => {
            tracing::debug!(addr = %peer.addr, error = %e, "connection ended with an error");
            e.is_timeout()
        }
    }
}

async fn h2<I>(b: &Builders, io: I, shared: Arc<Shared>, peer: Peer, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn =
        b.h2.serve_connection(TokioIo::new(io), service(shared, peer, None));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(addr = %peer.addr, error = %e, "h2 connection ended with an error");
    }
}

/// Binds a listener with a large backlog (bursts of connections wait there, not in SYN retries).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Resolves once the flag turns true (or its sender is gone).
pub(crate) async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|&d| d).await;
}
