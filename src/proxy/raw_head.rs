//! What only the raw bytes of an HTTP/1.1 request head reveal.
//!
//! - A head that stops arriving: hyper enforces `--client-timeout` but closes without a word.
//!   Counting bytes tells a half-sent head (answer 408) from an idle keep-alive connection
//!   (close quietly, as nginx does). hyper owns the stream until it gives up, then drops it; the
//!   wrapper hands the stream back on drop, so the 408 can be written on it, encrypted over TLS.
//! - Both `Content-Length` and `Transfer-Encoding`: hyper follows RFC 9112 (chunked wins, the
//!   connection closes) and drops the Content-Length before the service sees the request. Such
//!   requests are refused instead, so they never reach the app; the head bytes are kept for that.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Longest lingering close, and longest silence during it (nginx's defaults are 30 s and 5 s).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(10);
const LINGER_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes of a head kept for inspection; hyper refuses longer heads with 431 anyway.
const HEAD_CAPTURE: usize = 64 * 1024;

/// A connection's reading progress, shared between the stream and the service.
#[derive(Default)]
pub struct Progress {
    read: AtomicU64,
    answered: AtomicU64,
    /// Bytes read since the last answer: the start of the current request.
    head: Mutex<Vec<u8>>,
}

impl Progress {
    /// Called when a response is ready: everything read so far belonged to answered requests.
    pub fn answered(&self) {
        self.answered
            .store(self.read.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Ok(mut h) = self.head.lock() {
            h.clear();
        }
    }

    /// True when bytes of an unanswered request have arrived.
    pub fn mid_request(&self) -> bool {
        self.read.load(Ordering::Relaxed) > self.answered.load(Ordering::Relaxed)
    }

    /// True when the current request's head carries both Content-Length and Transfer-Encoding.
    pub fn length_and_chunked(&self) -> bool {
        let Ok(h) = self.head.lock() else {
            return false;
        };
        length_and_chunked(&h)
    }

    fn record(&self, bytes: &[u8]) {
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Ok(mut h) = self.head.lock()
            && h.len() < HEAD_CAPTURE
        {
            let take = bytes.len().min(HEAD_CAPTURE - h.len());
            h.extend_from_slice(&bytes[..take]);
        }
    }
}

/// True when the head at the start of `bytes` (up to its blank line) has both a Content-Length
/// and a Transfer-Encoding field.
pub fn length_and_chunked(bytes: &[u8]) -> bool {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let (mut cl, mut te) = (false, false);
    for line in bytes[..end].split(|&b| b == b'\n').skip(1) {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        cl |= name.eq_ignore_ascii_case(b"content-length");
        te |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    cl && te
}

/// A stream recording what it reads into a [`Progress`], and handing itself back to a
/// [`Reclaim`] when dropped.
pub struct Watched<T> {
    inner: Option<T>,
    progress: Arc<Progress>,
    back: Arc<Mutex<Option<T>>>,
}

/// Where a dropped [`Watched`] leaves its stream.
pub struct Reclaim<T>(Arc<Mutex<Option<T>>>);

impl<T> Reclaim<T> {
    /// The stream, once its [`Watched`] wrapper is gone.
    pub fn take(&self) -> Option<T> {
        self.0.lock().ok()?.take()
    }
}

impl<T> Watched<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> (Self, Arc<Progress>, Reclaim<T>) {
        let progress = Arc::new(Progress::default());
        let back = Arc::new(Mutex::new(None));
        let w = Self {
            inner: Some(inner),
            progress: progress.clone(),
            back: back.clone(),
        };
        (w, progress, Reclaim(back))
    }

    fn inner(&mut self) -> io::Result<&mut T> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        if let (Some(s), Ok(mut back)) = (self.inner.take(), self.back.lock()) {
            *back = Some(s);
        }
    }
}

/// Answers 408 on a stream whose request head stopped arriving; best effort, bounded.
pub async fn send_408<S: AsyncWrite + Unpin>(s: &mut S) {
    const BODY: &str = "408 Request Timeout: request head not received in time\n";
    let resp = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        s.write_all(resp.as_bytes()).await?;
        s.flush().await
    };
    let _ = tokio::time::timeout(LINGER_IDLE, write).await;
}

/// Closes like nginx's lingering close: FIN (after TLS close_notify) first, then read and discard
/// what the client still sends (a refused body) for a few seconds, so the kernel does not answer
/// it with a reset that could destroy the response before the client has read it.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    if !matches!(
        tokio::time::timeout(LINGER_IDLE, s.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let until = deadline.min(tokio::time::Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(this.inner()?).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.progress.record(&buf.filled()[before..]);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()?).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_both_framing_headers_in_the_head_only() {
        let p = Progress::default();
        p.record(b"POST / HTTP/1.1\r\nHost: h\r\ncontent-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(p.length_and_chunked());
        p.answered();
        assert!(!p.mid_request());
        p.record(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nContent-Length: 3\r\n");
        assert!(!p.length_and_chunked(), "body bytes are not headers");
        assert!(p.mid_request());
    }
}
