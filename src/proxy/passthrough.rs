//! Responses passed to the client as they arrive instead of buffered whole: server-sent events
//! (`text/event-stream`) and any response that says `X-Accel-Buffering: no`, as with nginx.
//!
//! Such a response keeps its worker slot and its upstream connection until its last byte is
//! read or the client goes away: the app is still producing it, and a slow reader now holds a
//! worker thread, which is what the app asked for.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderName};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use super::admission::Slot;
use super::buffer::ProxyBody;
use super::upstream::Lease;

/// The header with which an app turns buffering off for one response (nginx's name for it).
pub const ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Whether a response with these headers is passed through rather than buffered.
pub fn wanted(headers: &HeaderMap) -> bool {
    let off = headers
        .get(&ACCEL_BUFFERING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no"));
    let events = headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 17 && v[..17].eq_ignore_ascii_case(b"text/event-stream")
    });
    off || events
}

/// The upstream body, holding the worker slot and the upstream connection until it is dropped.
pub fn body(incoming: Incoming, slot: Slot, lease: Lease) -> ProxyBody {
    UnsyncBoxBody::new(
        Held {
            incoming,
            _slot: slot,
            _lease: lease,
        }
        .map_err(|e| Box::new(e) as super::buffer::BoxError),
    )
}

struct Held {
    incoming: Incoming,
    // Dropping the lease closes the connection: whether the app finished its answer is not
    // known when the client goes away first, so it is never reused.
    _slot: Slot,
    _lease: Lease,
}

impl Body for Held {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.incoming).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_and_buffering_off_pass_through() {
        let mut h = HeaderMap::new();
        assert!(!wanted(&h));
        h.insert(CONTENT_TYPE, "text/html".parse().unwrap());
        assert!(!wanted(&h));
        h.insert(
            CONTENT_TYPE,
            "Text/Event-Stream; charset=utf-8".parse().unwrap(),
        );
        assert!(wanted(&h));
        let mut h = HeaderMap::new();
        h.insert(ACCEL_BUFFERING, "yes".parse().unwrap());
        assert!(!wanted(&h));
        h.insert(ACCEL_BUFFERING, "No".parse().unwrap());
        assert!(wanted(&h));
    }
}
