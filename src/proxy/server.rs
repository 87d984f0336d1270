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

mod nofile;

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
    let limit = Arc::new(Semaphore::new(
        nofile::cap(shared.opts.max_connections).max(1),
    ));
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
        let conn = Conn {
            b: builders.clone(),
            shared: shared.clone(),
            peer: Peer { addr, scheme },
            watcher: graceful.watcher(),
            shutdown: shutdown.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let shared = conn.shared.clone();
            shared.metrics.connections.inc();
            match tls {
                None => plain(conn, stream).await,
                Some(acceptor) => secure(conn, &acceptor, stream).await,
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

/// What serving one client connection needs.
struct Conn {
    b: Arc<Builders>,
    shared: Arc<Shared>,
    peer: Peer,
    /// Held until the connection is done, so the drain waits for it.
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
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

async fn plain(conn: Conn, mut stream: TcpStream) {
    match detect(&stream, conn.shared.opts.client_timeout).await {
        Detected::Nothing => {}
        Detected::Stalled => {
            raw_head::send_408(&mut stream).await;
            raw_head::linger(stream).await;
        }
        // Boxed: a connection still being looked at (most idle ones) then holds a small task
        // rather than one sized for a whole hyper connection.
        Detected::H2 => Box::pin(h2(conn, stream)).await,
        Detected::H1 => Box::pin(h1(conn, stream)).await,
    }
}

/// TLS: the handshake is bounded by `--client-timeout` like a request head, so a client that
/// connects and never finishes it does not hold a connection slot.
async fn secure(conn: Conn, acceptor: &TlsAcceptor, stream: TcpStream) {
    let addr = conn.peer.addr;
    let timeout = conn.shared.opts.client_timeout;
    let tls = match tokio::time::timeout(timeout, Box::pin(acceptor.accept(stream))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(%addr, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%addr, "TLS handshake timed out"),
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        Box::pin(h2(conn, tls)).await;
    } else {
        Box::pin(h1(conn, tls)).await;
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

/// Serves HTTP/1.1. A request head that stopped arriving gets 408 on the stream hyper hands back
/// (encrypted over TLS); every connection ends with a lingering close.
async fn h1<I>(c: Conn, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = c.peer.addr;
    let (io, progress, reclaim) = Watched::new(io);
    let svc = service(c.shared, c.peer, Some(progress.clone()));
    let conn = c.b.h1.serve_connection(TokioIo::new(io), svc);
    // Bound to a name so the connection, and with it the stream, is dropped here.
    let ended = c.watcher.watch(conn).await;
    let head_timeout = match ended {
        Ok(()) => false,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "connection ended with an error");
            e.is_timeout()
        }
    };
    if let Some(mut stream) = reclaim.take() {
        if head_timeout && progress.mid_request() {
            raw_head::send_408(&mut stream).await;
        }
        raw_head::linger(stream).await;
    }
}

/// Serves HTTP/2. hyper bounds nothing on an HTTP/2 connection without streams (a silent client,
/// half a preface, a header block never finished), so one with no stream open for
/// `--client-timeout` is sent GOAWAY, and closed if it does not end within a short grace while
/// still without streams.
async fn h2<I>(c: Conn, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        b,
        shared,
        peer,
        watcher,
        mut shutdown,
    } = c;
    let timeout = shared.opts.client_timeout;
    let streams = Arc::new(watch::Sender::new(0usize));
    let svc = {
        let streams = streams.clone();
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (shared, open) = (shared.clone(), OpenStream::new(&streams));
            async move {
                let resp = handler::handle(shared, peer, req).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked { body, _open: open }))
            }
        })
    };
    let conn = b.h2.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let mut idle_rx = streams.subscribe();
    let mut closing: Option<tokio::time::Instant> = None;
    let ended = loop {
        let grace = closing.unwrap_or_else(far_future);
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = until_true(&mut shutdown), if closing.is_none() => {
                // The drain bounds this connection with `--drain-timeout`.
                conn.as_mut().graceful_shutdown();
                closing = Some(far_future());
            }
            _ = idle(&mut idle_rx, timeout), if closing.is_none() => {
                tracing::debug!(addr = %peer.addr, "h2 connection idle; closing");
                conn.as_mut().graceful_shutdown();
                closing = Some(tokio::time::Instant::now() + H2_CLOSE_GRACE);
            }
            _ = tokio::time::sleep_until(grace), if closing.is_some() => {
                // A stream that slipped in before GOAWAY arrived is still served to its end.
                if *streams.borrow() == 0 {
                    break Ok(());
                }
                closing = Some(far_future());
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(addr = %peer.addr, error = %e, "h2 connection ended with an error");
    }
    drop(watcher);
}

/// How long an idle HTTP/2 connection gets to end after GOAWAY (its client answers a PING).
const H2_CLOSE_GRACE: Duration = Duration::from_secs(2);

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
}

/// Resolves once no stream has been open for `timeout`.
async fn idle(rx: &mut watch::Receiver<usize>, timeout: Duration) {
    loop {
        if rx.wait_for(|&n| n == 0).await.is_err() {
            return;
        }
        if tokio::time::timeout(timeout, rx.changed()).await.is_err() {
            return;
        }
    }
}

/// One HTTP/2 stream being served: counted from its request until its response body is gone.
struct OpenStream(Arc<watch::Sender<usize>>);

impl OpenStream {
    fn new(streams: &Arc<watch::Sender<usize>>) -> Self {
        streams.send_modify(|n| *n += 1);
        Self(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its stream counted as open.
struct Tracked<B> {
    body: B,
    _open: OpenStream,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Binds a listener with a large backlog (bursts of connections wait there, not in SYN retries).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(nofile::raise);
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
