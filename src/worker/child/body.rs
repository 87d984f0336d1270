//! The response body handed to hyper: a whole buffer or a stream fed by a Python thread,
//! with the request deadline enforced while it streams. A body that ends early does not fail
//! at once: it waits for a [`super::cut`] so the bytes before the break reach the client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::cut::FLUSH_LIMIT;
use super::job::{BodyBroken, Chunk};
use super::server::{ConnGuard, Shared};

enum Kind {
    Full(Option<Bytes>, bool),
    Stream(mpsc::Receiver<Chunk>, Option<Pin<Box<Sleep>>>),
}

/// Response body; dropping it marks the request finished on its connection.
pub struct RespBody {
    kind: Kind,
    shared: Option<Arc<Shared>>,
    guard: Option<ConnGuard>,
    /// Set once the body broke: how long it still waits for its connection to be cut.
    cutting: Option<Pin<Box<Sleep>>>,
}

impl RespBody {
    pub fn full(data: Bytes, guard: Option<ConnGuard>) -> Self {
        RespBody {
            kind: Kind::Full(Some(data), false),
            shared: None,
            guard,
            cutting: None,
        }
    }

    /// A whole body that must be followed by a cut connection (the app sent less than promised).
    pub fn short(data: Bytes, guard: Option<ConnGuard>) -> Self {
        RespBody {
            kind: Kind::Full(Some(data), true),
            shared: None,
            guard,
            cutting: None,
        }
    }

    pub fn stream(
        rx: mpsc::Receiver<Chunk>,
        deadline: Option<Sleep>,
        shared: Arc<Shared>,
        guard: Option<ConnGuard>,
    ) -> Self {
        RespBody {
            kind: Kind::Stream(rx, deadline.map(Box::pin)),
            shared: Some(shared),
            guard,
            cutting: None,
        }
    }

    /// Ends the body early: pauses until the connection is cut after its last bytes are flushed,
    /// failing (which drops what hyper still buffers) only if that takes [`FLUSH_LIMIT`].
    fn cut(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyBroken>>> {
        let Some(guard) = &self.guard else {
            return Poll::Ready(Some(Err(BodyBroken)));
        };
        guard.cut();
        let limit = self
            .cutting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_LIMIT)));
        match limit.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyBroken))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyBroken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyBroken>>> {
        let this = self.get_mut();
        if this.cutting.is_some() {
            return this.cut(cx);
        }
        match &mut this.kind {
            Kind::Full(data, short) => match data.take() {
                Some(d) if !d.is_empty() => Poll::Ready(Some(Ok(Frame::data(d)))),
                _ if *short => this.cut(cx),
                _ => Poll::Ready(None),
            },
            Kind::Stream(rx, deadline) => {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(Ok(d))) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Poll::Ready(Some(Err(BodyBroken))) => return this.cut(cx),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
                if let Some(d) = deadline
                    && d.as_mut().poll(cx).is_ready()
                {
                    *deadline = None;
                    if let Some(s) = &this.shared {
                        tracing::error!(
                            "request timed out while streaming its response, cutting the connection"
                        );
                        s.retire("timeout");
                    }
                    return this.cut(cx);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.kind, Kind::Full(d, false) if d.as_ref().is_none_or(|d| d.is_empty()))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(d, false) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}
