//! One client request: checks, static files, body buffering, admission, forwarding, response
//! buffering, metrics and access log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::sync::watch;

use super::access_log::{AccessLogger, Entry};
use super::admission::Admission;
use super::buffer::{self, BufferError, Buffered, ProxyBody, full};
use super::config::ProxyOpts;
use super::control::WorkerStatus;
use super::forwarded::{self, TrustedProxies};
use super::passthrough;
use super::statics::Statics;
use super::upstream::{Failure, Lease, Upstream};
use super::validate;
use crate::metrics::Metrics;

/// Everything requests share.
pub struct Shared {
    pub opts: ProxyOpts,
    pub statics: Statics,
    pub upstream: Arc<Upstream>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub trusted: TrustedProxies,
    pub access_log: Option<AccessLogger>,
    pub worker: watch::Receiver<WorkerStatus>,
    /// Set on SIGTERM: `/readyz` answers 503.
    pub draining: AtomicBool,
}

impl Shared {
    /// True while the proxy should receive traffic.
    pub fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        let w = self.worker.borrow();
        match (&w.error, w.reachable, w.ready) {
            (_, true, true) => Ok(()),
            (_, true, false) => Err(
                match w
                    .error
                    .clone()
                    .or_else(|| w.stats.as_ref().and_then(|s| s.boot_error.clone()))
                {
                    Some(e) => format!("worker server not ready: {e}"),
                    None => "worker server not ready".into(),
                },
            ),
            (Some(e), false, _) => Err(format!("worker server unreachable: {e}")),
            (None, false, _) => Err("worker server not seen yet".into()),
        }
    }
}

/// Request marker: the raw head had both Content-Length and Transfer-Encoding.
#[derive(Clone, Copy, Debug)]
pub struct ConflictingFraming;

/// The client side of one connection.
#[derive(Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub scheme: &'static str,
}

/// Serves one request; never fails (errors become HTTP answers).
pub async fn handle(
    shared: Arc<Shared>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let version = req.version();
    // What the log needs of the request, kept before the request is consumed (cheap clones of
    // shared bytes, not a copy of the header map).
    let log = shared.access_log.as_ref().map(|_| {
        let h = req.headers();
        (
            req.uri().clone(),
            [header::REFERER, header::USER_AGENT, header::HOST].map(|n| h.get(n).cloned()),
        )
    });
    let resp = route(&shared, peer, req).await;
    let elapsed = start.elapsed();
    shared
        .metrics
        .observe(&method, resp.status().as_u16(), elapsed.as_secs_f64());
    if let (Some(logger), Some((uri, [referer, user_agent, host]))) = (&shared.access_log, log) {
        let bytes = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| http_body::Body::size_hint(resp.body()).exact())
            .unwrap_or(0);
        logger.log(&Entry {
            peer: peer.addr.ip(),
            method: &method,
            target: uri.path_and_query().map_or("/", |p| p.as_str()),
            version,
            status: resp.status().as_u16(),
            bytes,
            referer: referer.as_ref(),
            user_agent: user_agent.as_ref(),
            host: host.as_ref(),
            duration: elapsed,
        });
    }
    Ok(resp)
}

async fn route(shared: &Shared, peer: Peer, req: Request<Incoming>) -> Response<ProxyBody> {
    let opts = &shared.opts;
    let host = match validate::request(&req) {
        Ok(h) => h,
        Err(e) => return error(e.status(), &e.to_string(), req.version()),
    };
    if req.method() == Method::CONNECT {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
            req.version(),
        );
    }
    if req.extensions().get::<ConflictingFraming>().is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "both Content-Length and Transfer-Encoding",
            req.version(),
        );
    }
    if shared.statics.matches(req.uri().path()) {
        return shared.statics.serve(&req).await;
    }
    let (mut parts, body) = req.into_parts();
    let declared = match parts
        .headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()))
    {
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid Content-Length",
                parts.version,
            );
        }
        Some(Some(n)) => Some(n),
        None => None,
    };
    if declared.is_some_and(|n| n > opts.max_body_size) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            parts.version,
        );
    }
    // Whether the client announced a body; the app then sees a Content-Length even for an empty one.
    let framed = declared.is_some() || parts.headers.contains_key(header::TRANSFER_ENCODING);
    // Most requests have no body: no timer, no collecting.
    let collected = if http_body::Body::is_end_stream(&body) {
        Ok(Ok(Buffered::Memory(bytes::Bytes::new())))
    } else {
        tokio::time::timeout(
            opts.client_timeout,
            buffer::collect(
                body,
                Some(opts.max_body_size),
                opts.body_buffer_size as usize,
                opts.spool_dir.as_deref(),
            ),
        )
        .await
    };
    let body = match collected {
        Ok(Ok(b)) => b,
        Ok(Err(BufferError::TooLarge(_))) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                parts.version,
            );
        }
        Ok(Err(BufferError::Read(e))) => {
            tracing::debug!(error = %e, "bad request body");
            return error(
                StatusCode::BAD_REQUEST,
                "malformed or incomplete request body",
                parts.version,
            );
        }
        Ok(Err(BufferError::Spool(e))) => {
            tracing::error!(error = %e, "cannot spool request body");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot buffer request body",
                parts.version,
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
                parts.version,
            );
        }
    };

    let Ok(slot) = shared.admission.acquire(opts.queue_timeout).await else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no worker became free in time",
            parts.version,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };

    forwarded::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    let trusted = shared.trusted.contains(peer.addr.ip());
    forwarded::set_forwarded(
        &mut parts.headers,
        peer.addr.ip(),
        trusted,
        peer.scheme,
        host.as_ref(),
    );
    if let Some(h) = host {
        parts.headers.insert(header::HOST, h);
    }
    if framed || !body.is_empty() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let client_version = parts.version;
    let head_only = parts.method == Method::HEAD;
    let deadline = tokio::time::Instant::now() + opts.upstream_timeout;
    let exchange = exchange(shared, &parts, &body);
    let result = tokio::time::timeout_at(deadline, exchange).await;
    drop(body);
    match result {
        Ok(Ok(Answer::Buffered(head, buffered))) => {
            drop(slot);
            respond(head, buffered, head_only)
        }
        Ok(Ok(Answer::Passed(mut head, incoming, lease))) => {
            forwarded::strip_hop_by_hop(&mut head.headers);
            head.headers.remove(passthrough::ACCEL_BUFFERING);
            head.version = Version::default();
            Response::from_parts(head, passthrough::body(incoming, slot, lease))
        }
        Ok(Err(kind)) => {
            shared.metrics.upstream_error(kind);
            error(
                StatusCode::BAD_GATEWAY,
                "the app server is unavailable",
                client_version,
            )
        }
        Err(_) => {
            shared.metrics.upstream_error("timeout");
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "the app server did not answer in time",
                client_version,
            )
        }
    }
}

/// The worker server's answer: read whole, or (when the app asks for it) passed on as it comes.
enum Answer {
    Buffered(http::response::Parts, Buffered),
    Passed(http::response::Parts, Incoming, Lease),
}

/// Sends the request and reads the whole response unless it is passed through; one retry on a
/// fresh connection when nothing was sent (connect failure) or the method is idempotent and no
/// response byte arrived.
async fn exchange(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &Buffered,
) -> Result<Answer, &'static str> {
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let mut fresh = false;
    let (resp, lease) = loop {
        let mut req = Request::new(body.to_body().map_err(|_| "spool")?);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = Upstream::uri(parts.uri.path_and_query());
        *req.headers_mut() = parts.headers.clone();
        match shared.upstream.send(req, fresh).await {
            Ok(r) => break r,
            Err(f) if !fresh && (f == Failure::Connect || (f == Failure::Reset && idempotent)) => {
                tracing::debug!(kind = f.kind(), "retrying on a fresh upstream connection");
                fresh = true;
            }
            Err(f) => return Err(f.kind()),
        }
    };
    let (head, incoming) = resp.into_parts();
    if passthrough::wanted(&head.headers) {
        return Ok(Answer::Passed(head, incoming, lease));
    }
    let opts = &shared.opts;
    let buffered = buffer::collect(
        incoming,
        None,
        opts.response_buffer_size as usize,
        opts.spool_dir.as_deref(),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "reading the app server's response failed");
        "body"
    })?;
    shared.upstream.release(lease);
    Ok(Answer::Buffered(head, buffered))
}

fn respond(
    mut head: http::response::Parts,
    body: Buffered,
    head_only: bool,
) -> Response<ProxyBody> {
    forwarded::strip_hop_by_hop(&mut head.headers);
    let bodiless = head_only
        || head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    if !bodiless {
        head.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    head.version = Version::default();
    let body = match body.to_body() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot reopen spooled response");
            return error(
                StatusCode::BAD_GATEWAY,
                "cannot read buffered response",
                Version::HTTP_11,
            );
        }
    };
    Response::from_parts(head, body)
}

/// A short plain-text answer from the proxy itself.
pub fn error(code: StatusCode, msg: &str, version: Version) -> Response<ProxyBody> {
    let text = format!(
        "{} {}: {msg}\n",
        code.as_u16(),
        code.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(full(text));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // The rest of a refused request may still be on the wire: do not read it as a next request.
    if version < Version::HTTP_2 && matches!(code.as_u16(), 400 | 405 | 408 | 413 | 501) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}
