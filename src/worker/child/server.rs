//! The worker's HTTP side: hyper HTTP/1.1 on the shared listener, keep-alive idle timeout,
//! graceful drain, request deadline (504) and hand-off of requests to the Python threads.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, watch};

use super::body::RespBody;
use super::cut::{Cut, FlushWatch};
use super::job::{Input, Job, Peer, Reply, ReplyBody};
use super::reply::{ReplyRx, Wakes};
use super::report::Reporter;

/// How long a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an accepted connection without a request counts as load.
const FRESH_SLOT: Duration = Duration::from_millis(100);

/// Bodies up to this size with a Content-Length are read before the app runs (no GIL round trips).
const PRELOAD_LIMIT: u64 = 64 * 1024;

/// State shared by the HTTP side of one worker process.
pub struct Shared {
    pub jobs: Arc<super::queue::JobQueue>,
    /// Wake-ups of connection tasks by the Python threads, deferred while this thread is busy.
    pub wakes: Arc<Wakes>,
    pub busy: AtomicU32,
    pub requests: AtomicU64,
    pub max_requests: u64,
    pub timeout: Duration,
    pub keep_alive: Duration,
    pub epoch: Instant,
    pub draining: AtomicBool,
    pub drain: watch::Sender<bool>,
    /// When the drain began; `--graceful-timeout` counts from here.
    pub drain_started: std::sync::OnceLock<Instant>,
    pub conns: AtomicUsize,
    /// Requests in flight plus accepted connections that have not sent one yet.
    pub load: AtomicU32,
    /// Signalled when `load` drops.
    pub freed: Notify,
    pub threads: u32,
    pub conns_gone: Notify,
    pub forwarded_allow: Vec<IpAddr>,
    pub forwarded_any: bool,
    pub reporter: Reporter,
}

impl Shared {
    /// Milliseconds since this worker started (the clock of `Job::picked_at`).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Stop accepting and drain (SIGTERM, master gone).
    pub fn start_drain(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            let _ = self.drain_started.set(Instant::now());
            self.drain.send_replace(true);
        }
    }

    /// Tell the master this worker goes away (a replacement starts at once), then drain.
    pub fn retire(&self, reason: &str) {
        if !self.draining.load(Ordering::SeqCst) {
            self.reporter
                .send(&crate::worker::protocol::Report::Retire {
                    reason: reason.into(),
                });
        }
        self.start_drain();
    }

    fn trusts(&self, peer: Option<SocketAddr>) -> bool {
        match peer {
            None => true,
            Some(a) => self.forwarded_any || self.forwarded_allow.contains(&a.ip()),
        }
    }
}

/// Marks a request in flight on its connection until its response body is dropped.
pub struct ConnGuard {
    conn: Arc<ConnState>,
    shared: Arc<Shared>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.load.fetch_sub(1, Ordering::AcqRel);
        self.shared.freed.notify_one();
        self.conn.last_done_ms.store(
            self.conn.epoch.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
        self.conn.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnGuard {
    /// Closes the connection once what was written so far is flushed (see [`super::cut`]).
    pub fn cut(&self) {
        self.conn.cut.request();
    }
}

struct ConnState {
    /// Set by a response that must end the connection early.
    cut: Arc<Cut>,
    /// No request seen yet: the connection still holds the load slot it took when accepted.
    fresh: AtomicBool,
    inflight: AtomicU32,
    last_done_ms: AtomicU64,
    epoch: Instant,
    peer: Peer,
}

/// Accepts connections until the worker drains, then waits for them to finish (bounded by `grace`).
pub async fn serve<L: Accept>(listener: L, shared: Arc<Shared>, grace: Duration) {
    let mut drain = shared.drain.subscribe();
    loop {
        // Accept only while a Python thread is free, so new connections go to a process that can
        // serve them now instead of queueing behind a busy one (the kernel hands them to another).
        while shared.load.load(Ordering::Acquire) >= shared.threads && !*drain.borrow() {
            tokio::select! {
                _ = shared.freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = drain.changed() => {}
            }
        }
        // Biased: once draining, a connection waiting in the backlog is left to the other workers.
        let accepted = tokio::select! {
            biased;
            _ = drain.wait_for(|d| *d) => break,
            a = listener.accept() => a,
        };
        // A connection accepted just as the drain began is still served; its response says `Connection: close`.
        match accepted {
            Ok((io, peer)) => {
                let peer = Peer {
                    trust_forwarded: shared.trusts(peer.remote),
                    ..peer
                };
                shared.conns.fetch_add(1, Ordering::SeqCst);
                shared.load.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(connection(io, peer, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    while shared.conns.load(Ordering::SeqCst) > 0 {
        tokio::select! {
            _ = shared.conns_gone.notified() => {}
            _ = &mut deadline => {
                tracing::warn!(connections = shared.conns.load(Ordering::SeqCst), "graceful timeout, closing remaining connections");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Listeners the worker can serve on.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Peer)>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((
            s,
            Peer {
                remote: None,
                local: None,
                trust_forwarded: true,
            },
        ))
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Peer)> {
        let (s, remote) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        let local = s.local_addr().ok();
        Ok((
            s,
            Peer {
                remote: Some(remote),
                local,
                trust_forwarded: false,
            },
        ))
    }
}

async fn connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    peer: Peer,
    shared: Arc<Shared>,
) {
    let cut = Arc::new(Cut::default());
    let state = Arc::new(ConnState {
        cut: cut.clone(),
        fresh: AtomicBool::new(true),
        inflight: AtomicU32::new(0),
        last_done_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        peer,
    });
    let svc = {
        let (state, shared) = (state.clone(), shared.clone());
        service_fn(move |req| handle(req, state.clone(), shared.clone()))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(1 << 20)
        // A head that stops half-way is dropped (behind the proxy it never happens; on `--bind`
        // it would hold a connection for good). The idle keep-alive limit below comes first.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT.max(shared.keep_alive + Duration::from_secs(1)))
        .serve_connection(TokioIo::new(FlushWatch::new(io, cut.clone())), svc);
    tokio::pin!(conn);
    let keep_alive = shared.keep_alive.max(Duration::from_millis(10));
    let mut closing = false;
    loop {
        let idle_for = || {
            let last = state.last_done_ms.load(Ordering::Relaxed);
            Duration::from_millis(state.epoch.elapsed().as_millis() as u64 - last)
        };
        let fresh = state.fresh.load(Ordering::Acquire);
        let wait = if fresh {
            FRESH_SLOT
        } else {
            keep_alive
                .saturating_sub(idle_for())
                .max(Duration::from_millis(10))
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            // A response ended early and its last bytes are out: closing tells the client.
            _ = cut.ready() => break,
            _ = tokio::time::sleep(wait), if !closing => {
                // A connection opened ahead of use (a client's pool warming up) gives its slot
                // back soon, so it cannot keep the worker from accepting others for long.
                if fresh && state.fresh.swap(false, Ordering::AcqRel) {
                    shared.load.fetch_sub(1, Ordering::AcqRel);
                    shared.freed.notify_one();
                    continue;
                }
                // Idle past the keep-alive timeout (also while draining: a client that reuses a
                // connection within its own shorter idle timeout never races this close).
                if state.inflight.load(Ordering::Acquire) == 0 && idle_for() >= keep_alive {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
    if state.fresh.swap(false, Ordering::AcqRel) {
        shared.load.fetch_sub(1, Ordering::AcqRel);
        shared.freed.notify_one();
    }
    if shared.conns.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.conns_gone.notify_waiters();
    }
}

fn plain(status: StatusCode, msg: &'static str, guard: Option<ConnGuard>) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(Bytes::from_static(msg.as_bytes()), guard));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::SERVER, HeaderValue::from_static("kubewsgi"));
    r
}

async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnState>,
    shared: Arc<Shared>,
) -> Result<Response<RespBody>, Infallible> {
    conn.inflight.fetch_add(1, Ordering::AcqRel);
    // The first request takes over the slot its connection took at accept time.
    if !conn.fresh.swap(false, Ordering::AcqRel) {
        shared.load.fetch_add(1, Ordering::AcqRel);
    }
    let guard = ConnGuard {
        conn: conn.clone(),
        shared: shared.clone(),
    };
    let (parts, body) = req.into_parts();
    let input = match read_input(body, &parts.headers).await {
        Ok(i) => i,
        Err(_) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "bad request body\n",
                Some(guard),
            ));
        }
    };
    let (tx, rx) = super::reply::channel(shared.wakes.clone());
    let picked_at = Arc::new(AtomicU64::new(0));
    let job = Job {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        peer: conn.peer,
        input,
        reply: tx,
        picked_at: picked_at.clone(),
    };
    shared.jobs.push(job);
    let reply = match wait_reply(rx, &picked_at, &shared).await {
        Waited::Reply(r) => r,
        Waited::Lost => {
            return Ok(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error\n",
                Some(guard),
            ));
        }
        Waited::TimedOut => {
            tracing::error!(timeout = ?shared.timeout, "request timed out, answering 504 and retiring this worker");
            shared.retire("timeout");
            let mut r = plain(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the app did not answer in time\n",
                Some(guard),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(r);
        }
    };
    let n = shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if shared.max_requests > 0 && n == shared.max_requests {
        tracing::info!(requests = n, "max requests reached, recycling this worker");
        shared.retire("max_requests");
    }
    Ok(respond(reply, &picked_at, shared, guard))
}

enum Waited {
    Reply(Reply),
    Lost,
    TimedOut,
}

/// Waits for the app's reply; the deadline runs from when a Python thread picked the request up.
async fn wait_reply(mut rx: ReplyRx, picked_at: &AtomicU64, shared: &Shared) -> Waited {
    if shared.timeout.is_zero() {
        return rx.await.map_or(Waited::Lost, Waited::Reply);
    }
    let mut wait = shared.timeout;
    loop {
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(r) => return r.map_or(Waited::Lost, Waited::Reply),
            Err(_) => {
                let picked = picked_at.load(Ordering::Acquire);
                if picked == 0 {
                    // Still queued a whole timeout later while this worker drains: its threads
                    // are stuck, and the request would only be cut when the process exits.
                    if shared.draining.load(Ordering::Acquire) {
                        return Waited::TimedOut;
                    }
                    wait = shared.timeout;
                    continue;
                }
                let ran = Duration::from_millis(shared.now_ms().saturating_sub(picked));
                if ran >= shared.timeout {
                    return Waited::TimedOut;
                }
                wait = shared.timeout - ran;
            }
        }
    }
}

fn respond(
    reply: Reply,
    picked_at: &AtomicU64,
    shared: Arc<Shared>,
    guard: ConnGuard,
) -> Response<RespBody> {
    let Reply {
        status,
        reason,
        mut headers,
        body,
    } = reply;
    if !headers.contains_key(header::SERVER) {
        headers.insert(header::SERVER, HeaderValue::from_static("kubewsgi"));
    }
    if shared.draining.load(Ordering::Relaxed) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let body = match body {
        ReplyBody::Full { data, short: false } => RespBody::full(data, Some(guard)),
        ReplyBody::Full { data, short: true } => RespBody::short(data, Some(guard)),
        ReplyBody::Stream(rx) => {
            let deadline = (!shared.timeout.is_zero()).then(|| {
                let ran = Duration::from_millis(
                    shared
                        .now_ms()
                        .saturating_sub(picked_at.load(Ordering::Acquire)),
                );
                tokio::time::sleep(shared.timeout.saturating_sub(ran))
            });
            RespBody::stream(rx, deadline, shared, Some(guard))
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    if let Some(reason) = reason
        && let Ok(rp) = hyper::ext::ReasonPhrase::try_from(reason)
    {
        r.extensions_mut().insert(rp);
    }
    r
}

/// Small bodies of known length are read now; others stream to the app as it reads.
async fn read_input(mut body: Incoming, headers: &http::HeaderMap) -> Result<Input, hyper::Error> {
    if body.is_end_stream() {
        return Ok(Input::Full(Bytes::new()));
    }
    let known = body.size_hint().exact();
    let chunked = headers.get(header::TRANSFER_ENCODING).is_some();
    if !chunked && known.is_some_and(|n| n <= PRELOAD_LIMIT) {
        return Ok(Input::Full(body.collect().await?.to_bytes()));
    }
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data()
                        && !data.is_empty()
                        && tx.send(Ok(data)).await.is_err()
                    {
                        return;
                    }
                }
                Some(Err(_)) => {
                    let _ = tx.send(Err(super::job::BodyBroken)).await;
                    return;
                }
                None => return,
            }
        }
    });
    Ok(Input::Stream(rx))
}
