//! Test harness for the front proxy: a real hyper app server on a Unix socket, a real control
//! socket, and the real `kubewsgi proxy` binary in between.
#![allow(dead_code)]

#[path = "../capture/mod.rs"]
mod capture;
#[path = "../wire/mod.rs"]
mod wire;
pub use wire::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

/// What the fake app server saw and how it behaves.
#[derive(Default)]
pub struct AppState {
    pub requests: AtomicUsize,
    pub active: AtomicUsize,
    pub max_active: AtomicUsize,
    /// Paths whose first request is answered by closing the connection.
    pub drop_once: Mutex<Vec<String>>,
}

/// A real hyper HTTP/1.1 server on a Unix socket standing in for the worker server.
pub struct App {
    pub state: Arc<AppState>,
    pub stats: Arc<Mutex<serde_json::Value>>,
    rt: tokio::runtime::Runtime,
}

impl App {
    /// Starts the app server on `dir/app.sock` and the control socket on `dir/control.sock`.
    pub fn start(dir: &Path, workers: u64, threads: u64) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(AppState::default());
        let stats = Arc::new(Mutex::new(serde_json::json!({
            "workers": workers, "threads": threads, "busy": 0, "idle": workers * threads,
            "restarts": 0, "requests": 0, "ready": true, "max_workers": workers * 2, "boot_error": null
        })));
        let app = Self { state, stats, rt };
        app.serve_app(&dir.join("app.sock"));
        app.serve_control(&dir.join("control.sock"));
        app
    }

    /// (Re)starts the app server on `path`, e.g. after a test removed its socket.
    pub fn serve_app(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
        let state = self.state.clone();
        let listener = self
            .rt
            .block_on(async { UnixListener::bind(path).unwrap() });
        self.rt.spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| app_route(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }

    fn serve_control(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
        let stats = self.stats.clone();
        let listener = self
            .rt
            .block_on(async { UnixListener::bind(path).unwrap() });
        self.rt.spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let stats = stats.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let body = stats.lock().unwrap().to_string();
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }

    /// Changes a field of the control socket's stats.
    pub fn set_stat(&self, key: &str, v: serde_json::Value) {
        self.stats.lock().unwrap()[key] = v;
    }
}

async fn app_route(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_active.fetch_max(now, Ordering::SeqCst);
    let _done = Defer(|| {
        state.active.fetch_sub(1, Ordering::SeqCst);
    });
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    {
        let mut drops = state.drop_once.lock().unwrap();
        if let Some(i) = drops.iter().position(|p| *p == path) {
            drops.remove(i);
            return Err(std::io::Error::other("dropping connection on purpose"));
        }
    }
    if let Some(ms) = query.get("sleep").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let mut headers = BTreeMap::<String, Vec<String>>::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if let Some(n) = query.get("big").and_then(|v| v.parse::<usize>().ok()) {
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        return Ok(Response::new(Full::new(Bytes::from(data))));
    }
    if let Some(n) = query.get("cookies").and_then(|v| v.parse::<usize>().ok()) {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"many headers")));
        for i in 0..n {
            resp.headers_mut()
                .append("set-cookie", format!("c{i}=v").parse().unwrap());
        }
        return Ok(resp);
    }
    let digest = body
        .iter()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64));
    let json = serde_json::json!({
        "method": method, "uri": uri, "headers": headers, "body_len": body.len(), "body_digest": digest,
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut()
        .insert("connection", "keep-alive".parse().unwrap());
    resp.headers_mut().insert("x-app", "fake".parse().unwrap());
    Ok(resp)
}

struct Defer<F: FnMut()>(F);
impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Same digest as the fake app.
pub fn digest(b: &[u8]) -> u64 {
    b.iter()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64))
}

/// A child process killed (and reaped) on drop; its stdout is collected in `out`.
pub struct Proc {
    pub child: Child,
    pub out: Arc<Mutex<String>>,
    pub err: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `kubewsgi ARGS...`, collecting stdout and stderr.
    pub fn spawn(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubewsgi"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kubewsgi");
        let (out, err) = capture::capture(&mut child);
        Self { child, out, err }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `kubewsgi proxy` in front of a fake [`App`].
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub app: App,
    pub proxy: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Stack {
    /// Starts app (capacity workers × threads) and proxy with extra proxy flags. A port taken
    /// between choosing and binding it means another try on new ports.
    pub fn start(workers: u64, threads: u64, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = App::start(dir.path(), workers, threads);
        let mut attempt = 0;
        loop {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut args: Vec<String> = vec![
                "proxy".into(),
                "--listen".into(),
                addr.to_string(),
                "--admin".into(),
                admin.to_string(),
                "--upstream".into(),
                format!("unix:{}", dir.path().join("app.sock").display()),
                "--control-socket".into(),
                dir.path().join("control.sock").display().to_string(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut proxy = Proc::spawn(&args);
            let end = Instant::now() + Duration::from_secs(30);
            while Instant::now() < end {
                if let Ok(r) = try_raw(
                    admin,
                    b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(2),
                ) && r.starts_with("HTTP/1.1 200")
                {
                    return Self {
                        dir,
                        app,
                        proxy,
                        addr,
                        admin,
                    };
                }
                if let Ok(Some(st)) = proxy.child.try_wait() {
                    let err = proxy.stderr();
                    assert!(
                        attempt < 3 && err.contains("cannot listen"),
                        "proxy exited ({st}):\n{err}"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                proxy.child.try_wait().ok().flatten().is_some(),
                "proxy not ready:\n{}",
                proxy.stderr()
            );
            attempt += 1;
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(r) = try_raw(
                self.admin,
                b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                Duration::from_secs(2),
            ) && r.starts_with("HTTP/1.1 200")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("proxy not ready; stderr:\n{}", self.proxy.stderr());
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("app.sock")
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        raw(
            self.admin,
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
    }
}
