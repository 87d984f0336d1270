//! The proxy's whole request path from the wire: the input is what a client sends on one TCP
//! connection to the real proxy (`kubewsgi::proxy::start`: protocol detection, hyper, the checks,
//! body buffering and spooling, admission, forwarding), with a recording app server behind it on
//! the Unix socket. Whatever reaches the app must be well formed; whatever the client gets must be
//! HTTP; the proxy must end the connection once the client has closed its side, and keep serving.
#![no_main]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, FromArgMatches};
use http::{HeaderMap, Method, Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kubewsgi::proxy::{self, ProxyOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};

/// One request as the app received it.
struct Seen {
    method: Method,
    target: String,
    version: http::Version,
    headers: HeaderMap,
    /// `None` when the body stream broke.
    body: Option<Bytes>,
}

struct Harness {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // libFuzzer's main leaves SIGPIPE fatal; a proxy closing early must be an EPIPE instead.
        // SAFETY: setting a disposition to SIG_IGN, before any thread of this harness exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = rt.block_on(start(dir.path(), seen.clone()));
        Harness {
            rt,
            addr,
            seen,
            _dir: dir,
        }
    })
}

/// The app server and its control socket, then the proxy in front; returns the proxy's address.
async fn start(dir: &std::path::Path, seen: Arc<Mutex<Vec<Seen>>>) -> SocketAddr {
    let app = UnixListener::bind(dir.join("app.sock")).unwrap();
    tokio::spawn(serve(app, move |req: Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let (p, body) = req.into_parts();
            // Broken when the client went away mid-forward (hyper drops the request on its EOF);
            // the worker server then refuses the request before the app sees it.
            let body = body.collect().await.map(|c| c.to_bytes()).ok();
            seen.lock().unwrap().push(Seen {
                method: p.method,
                target: p.uri.to_string(),
                version: p.version,
                headers: p.headers,
                body,
            });
            Response::builder()
                .header("x-app", "1")
                .body(Full::new(Bytes::from_static(b"app\n")))
                .unwrap()
        }
    }));
    let control = UnixListener::bind(dir.join("control.sock")).unwrap();
    tokio::spawn(serve(control, |_req| async {
        Response::new(Full::new(Bytes::from_static(
            br#"{"workers":1,"threads":8,"busy":0,"idle":8,"ready":true}"#,
        )))
    }));
    let spool = dir.join("spool");
    std::fs::create_dir(&spool).unwrap();
    let args = [
        "proxy",
        "--access-log=off",
        "--client-timeout=2",
        "--upstream-timeout=5",
        "--queue-timeout=5",
        "--drain-timeout=1",
        "--max-body-size=64k",
        "--max-header-size=8k",
        // Small, so bodies of a few KiB take the spooling path too.
        "--body-buffer-size=1k",
        "--response-buffer-size=1k",
    ];
    let matches = ProxyOpts::augment_args(clap::Command::new("proxy"))
        .try_get_matches_from(
            args.iter()
                .copied()
                .chain(["--spool-dir", spool.to_str().unwrap()]),
        )
        .unwrap();
    let opts = ProxyOpts::from_arg_matches(&matches).unwrap();
    let mut running = proxy::start(proxy::Config {
        opts,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: None,
        upstream: format!("unix:{}", dir.join("app.sock").display()),
        control_socket: dir.join("control.sock"),
    })
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        running.worker.wait_for(|w| w.ready),
    )
    .await
    .expect("the proxy sees the app server ready")
    .unwrap();
    let addr = running.local_addr;
    // Runs for the whole fuzzing session.
    std::mem::forget(running);
    addr
}

async fn serve<F, Fut>(listener: UnixListener, f: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let f = f.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let fut = f(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let h = harness();
    h.seen.lock().unwrap().clear();
    let answer = h.rt.block_on(async {
        let mut s = TcpStream::connect(h.addr)
            .await
            .expect("the proxy still accepts connections");
        let exchange = async {
            let _ = s.write_all(data).await;
            let _ = s.shutdown().await;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            answer
        };
        // Far above the 2 s client timeout: a connection that outlives it is a hang.
        tokio::time::timeout(Duration::from_secs(8), exchange)
            .await
            .unwrap_or_else(|_| {
                panic!("the proxy kept the connection open after the client closed")
            })
    });
    let seen = std::mem::take(&mut *h.seen.lock().unwrap());
    for r in &seen {
        well_formed(r);
    }
    if !answer.is_empty() && !data.starts_with(b"PRI") {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head = resp.parse(&answer);
        assert!(
            matches!(head, Ok(httparse::Status::Complete(_))) && resp.code.is_some(),
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        // Answers marked by the app never outnumber the requests it received.
        let from_app = answer
            .windows(10)
            .filter(|w| w.eq_ignore_ascii_case(b"\r\nx-app: 1"))
            .count();
        assert!(
            from_app <= seen.len(),
            "{from_app} app answers, {} requests",
            seen.len()
        );
    }
});

/// What the proxy forwards: origin-form target, one valid Host, a Content-Length that matches the
/// body, no framing or hop-by-hop header of the client's, the client last in X-Forwarded-For.
fn well_formed(r: &Seen) {
    let ctx = || format!("{} {} {:?}", r.method, r.target, r.headers);
    assert_ne!(r.method, Method::CONNECT, "CONNECT forwarded: {}", ctx());
    assert!(
        r.target.starts_with('/') || (r.target == "*" && r.method == Method::OPTIONS),
        "target {}",
        ctx()
    );
    assert_eq!(r.version, http::Version::HTTP_11);
    let hosts: Vec<_> = r.headers.get_all(header::HOST).iter().collect();
    assert!(hosts.len() <= 1, "Host twice: {}", ctx());
    if let Some(h) = hosts.first() {
        let b = h.as_bytes();
        assert!(
            !b.is_empty()
                && b.len() <= 255
                && b.iter()
                    .all(|c| c.is_ascii_graphic() && !b"/@?#\\".contains(c)),
            "forwarded Host: {}",
            ctx()
        );
    }
    for n in [
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::TE,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::EXPECT,
    ] {
        assert!(!r.headers.contains_key(&n), "{n} forwarded: {}", ctx());
    }
    let lengths: Vec<_> = r.headers.get_all(header::CONTENT_LENGTH).iter().collect();
    assert!(lengths.len() <= 1, "Content-Length twice: {}", ctx());
    let declared = lengths.first().map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("Content-Length not decimal: {}", ctx()))
    });
    if let Some(body) = &r.body {
        assert_eq!(
            declared.unwrap_or(0),
            body.len(),
            "Content-Length against the body: {}",
            ctx()
        );
    }
    let xff = r
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .last()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Forwarded-For: {}", ctx()));
    assert!(
        xff.rsplit(',').next().map(str::trim) == Some("127.0.0.1"),
        "X-Forwarded-For {xff:?}"
    );
}
