//! What travels between the HTTP side (tokio) and the Python threads: requests in, replies out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use tokio::sync::mpsc;

use super::reply::ReplyTx;

/// A chunk of a streamed body; `Err` means the stream broke (client gone, or cut the connection).
pub type Chunk = Result<Bytes, BodyBroken>;

/// The body stream broke before its end.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("body stream broken")]
pub struct BodyBroken;

/// The request body as the Python side reads it.
#[derive(Debug)]
pub enum Input {
    /// Read completely before dispatch (small bodies with a Content-Length, or none).
    Full(Bytes),
    /// Streamed from the connection while the app reads.
    Stream(mpsc::Receiver<Chunk>),
}

/// Where the request came from, as the server sees it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Peer address on TCP; `None` on the Unix socket.
    pub remote: Option<SocketAddr>,
    /// Local address on TCP.
    pub local: Option<SocketAddr>,
    /// Whether `X-Forwarded-*` headers come from a trusted proxy.
    pub trust_forwarded: bool,
}

/// One request handed to a Python thread.
#[derive(Debug)]
pub struct Job {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub peer: Peer,
    pub input: Input,
    pub reply: ReplyTx,
    /// Milliseconds since the worker's epoch when a Python thread picked the job up (0 = still queued).
    pub picked_at: Arc<AtomicU64>,
}

/// The response the app produced.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// Reason phrase when it differs from the standard one.
    pub reason: Option<Bytes>,
    pub headers: HeaderMap,
    pub body: ReplyBody,
}

/// The response body.
#[derive(Debug)]
pub enum ReplyBody {
    /// The whole body; `short` means the app sent less than its Content-Length (cut after it).
    Full { data: Bytes, short: bool },
    /// Chunks as the app produces them.
    Stream(mpsc::Receiver<Chunk>),
}
