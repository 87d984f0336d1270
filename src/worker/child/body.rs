//! The response body handed to hyper: a whole buffer or a stream fed by a Python thread,
//! with the request deadline enforced while it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tokio::time::Sleep;

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
    _guard: Option<ConnGuard>,
}

impl RespBody {
    pub fn full(data: Bytes, guard: Option<ConnGuard>) -> Self {
        RespBody {
            kind: Kind::Full(Some(data), false),
            shared: None,
            _guard: guard,
        }
    }

    /// A whole body that must be followed by a cut connection (the app sent less than promised).
    pub fn short(data: Bytes, guard: Option<ConnGuard>) -> Self {
        RespBody {
            kind: Kind::Full(Some(data), true),
            shared: None,
            _guard: guard,
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
            _guard: guard,
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
        match &mut this.kind {
            Kind::Full(data, short) => match data.take() {
                Some(d) if !d.is_empty() => Poll::Ready(Some(Ok(Frame::data(d)))),
                _ if *short => {
                    *short = false;
                    Poll::Ready(Some(Err(BodyBroken)))
                }
                _ => Poll::Ready(None),
            },
            Kind::Stream(rx, deadline) => {
                if let Poll::Ready(item) = rx.poll_recv(cx) {
                    return Poll::Ready(item.map(|c| c.map(Frame::data)));
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
                    return Poll::Ready(Some(Err(BodyBroken)));
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
