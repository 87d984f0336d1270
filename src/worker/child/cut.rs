//! Cutting a connection only once what the app sent has left the process.
//!
//! A response that must end early (less than its Content-Length, an app error mid-stream, the
//! request deadline) ends by closing the connection, so the client can tell it is incomplete.
//! hyper throws its write buffer away when a body fails, which would lose the app's last bytes
//! (all of them for a whole-buffer body), so the body pauses instead and asks for a cut; the
//! connection task closes the connection once hyper has flushed, which it signals by flushing
//! the socket only after writing out its whole buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// How long a cut waits for a client that does not read what is left to send.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// One connection's pending cut.
#[derive(Default)]
pub struct Cut {
    requested: AtomicBool,
    flushed: Notify,
}

impl Cut {
    /// Asks for the connection to be closed once everything written so far is flushed.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// Resolves once a requested cut may happen.
    pub async fn ready(&self) {
        self.flushed.notified().await
    }
}

/// The connection's stream, telling its [`Cut`] when hyper's buffer has been written out.
pub struct FlushWatch<I> {
    io: I,
    cut: Arc<Cut>,
}

impl<I> FlushWatch<I> {
    pub fn new(io: I, cut: Arc<Cut>) -> Self {
        Self { io, cut }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FlushWatch<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FlushWatch<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if r.is_ready() && self.cut.requested.load(Ordering::Acquire) {
            self.cut.flushed.notify_one();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn ready_only_after_a_flush_that_follows_the_request() {
        let cut = Arc::new(Cut::default());
        let mut io = FlushWatch::new(tokio::io::sink(), cut.clone());
        io.write_all(b"before").await.unwrap();
        io.flush().await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(50), cut.ready()).await;
        assert!(early.is_err(), "a flush before the request does not count");
        cut.request();
        io.write_all(b"last bytes").await.unwrap();
        io.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), cut.ready())
            .await
            .expect("ready after the flush");
    }
}
