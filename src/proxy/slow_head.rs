//! 408 for a request head that does not arrive within `--client-timeout`.
//!
//! hyper enforces the head timeout but closes the connection without a word. Counting the bytes
//! read tells a half-sent head (answer 408) from an idle keep-alive connection (close quietly,
//! as nginx does); the answer is written through a duplicate of the socket because hyper owns
//! the stream until it gives up.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read on a connection, and how many had been read when the last response was produced.
#[derive(Default)]
pub struct Progress {
    read: AtomicU64,
    answered: AtomicU64,
}

impl Progress {
    /// Called when a response is ready: everything read so far belonged to answered requests.
    pub fn answered(&self) {
        self.answered
            .store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// True when bytes of an unanswered request have arrived.
    pub fn mid_request(&self) -> bool {
        self.read.load(Ordering::Relaxed) > self.answered.load(Ordering::Relaxed)
    }
}

/// A TCP stream counting the bytes it reads.
pub struct Counted {
    inner: TcpStream,
    progress: Arc<Progress>,
}

impl Counted {
    /// Wraps `inner`; also returns the shared progress and a duplicate socket for the 408.
    pub fn new(inner: TcpStream) -> io::Result<(Self, Arc<Progress>, std::net::TcpStream)> {
        let dup = std::net::TcpStream::from(inner.as_fd().try_clone_to_owned()?);
        let progress = Arc::new(Progress::default());
        Ok((
            Self {
                inner,
                progress: progress.clone(),
            },
            progress,
            dup,
        ))
    }
}

/// Writes a 408 on the duplicate socket; best effort, never blocks (the socket is non-blocking).
pub fn send_408(mut dup: std::net::TcpStream) {
    const BODY: &str = "408 Request Timeout: request head not received in time\n";
    let resp = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = dup.write_all(resp.as_bytes());
    let _ = dup.shutdown(std::net::Shutdown::Write);
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.progress.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        res
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
