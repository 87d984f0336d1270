//! Client connections: accept with a connection limit, optional TLS, HTTP/1.1 or HTTP/2 (h2c by
//! prior knowledge, h2 by ALPN), and a bounded graceful drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::config::ProxyOpts;
use super::handler::{self, Peer, Shared};

/// The hyper connection builder with the proxy's limits.
fn builder(opts: &ProxyOpts) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper answers 431 itself when the head outgrows its read buffer (8 KiB at least).
    let head_limit = usize::try_from(opts.max_header_size)
        .unwrap_or(usize::MAX)
        .max(8192);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.client_timeout)
        .max_buf_size(head_limit)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Serves clients on `listener` until `shutdown` turns true, then stops accepting and gives open
/// connections `--drain-timeout` to finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&shared.opts));
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
        let (builder, shared, tls, watcher) = (
            builder.clone(),
            shared.clone(),
            tls.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            shared.metrics.connections.inc();
            let peer = Peer { addr, scheme };
            match tls {
                None => connection(&builder, stream, shared.clone(), peer, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(shared.opts.client_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => connection(&builder, s, shared.clone(), peer, watcher).await,
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
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

async fn connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    shared: Arc<Shared>,
    peer: Peer,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handler::handle(shared.clone(), peer, req));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(addr = %peer.addr, error = %e, "connection ended with an error");
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
