//! Shared support for the integration tests: start `kubewsgi` with a real app, talk to it with a
//! real HTTP client (hyper) over its Unix socket or TCP port, read its log, kill it on drop.
#![allow(dead_code)]

#[path = "../wire/mod.rs"]
mod wire;
#[allow(unused_imports)]
pub use wire::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Directory of the test apps.
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// The project's virtualenv (Flask, Django).
pub fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv")
}

/// Where a server listens.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

/// A running `kubewsgi worker` master, killed (with its process group) on drop.
pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub target: Target,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl Server {
    /// Starts `kubewsgi worker APP --socket DIR/app.sock --control-socket DIR/ctl.sock EXTRA…`.
    pub fn start(app: &str, extra: &[&str]) -> Server {
        Self::start_with(app, extra, |_| {})
    }

    pub fn start_with(app: &str, extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("app.sock");
        let control = dir.path().join("ctl.sock");
        let log = dir.path().join("server.log");
        let tcp = extra
            .iter()
            .position(|a| *a == "--bind")
            .map(|i| extra[i + 1].to_string());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubewsgi"));
        cmd.arg("worker").arg(app);
        if tcp.is_none() {
            cmd.arg("--socket").arg(&sock);
        }
        cmd.arg("--control-socket").arg(&control).args(extra);
        cmd.env_remove("VIRTUAL_ENV")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        tweak(&mut cmd);
        let child = cmd.spawn().expect("start kubewsgi");
        let target = match tcp {
            Some(a) => Target::Tcp(a),
            None => Target::Unix(sock),
        };
        Server {
            child,
            dir,
            target,
            control,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /stats` from the control socket, `None` while it does not answer.
    pub async fn stats(&self) -> Option<serde_json::Value> {
        let r = request(
            &Target::Unix(self.control.clone()),
            "GET",
            "/stats",
            &[],
            Bytes::new(),
        )
        .await
        .ok()?;
        serde_json::from_slice(&r.body).ok()
    }

    /// Waits until `cond(stats)` holds (deadline 60 s: CI machines are slow).
    pub async fn wait_stats(
        &self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.stats().await {
                if cond(&s) {
                    return s;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {what}; last stats {s}\nlog:\n{}",
                        self.log()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; no stats\nlog:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `n` workers serve.
    pub async fn ready(&self, n: u64) -> serde_json::Value {
        self.wait_stats(&format!("{n} ready workers"), |s| {
            s["workers"] == n && s["ready"] == true
        })
        .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        request(&self.target, "GET", path, &[], Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nlog:\n{}", self.log()))
    }

    /// Waits for the master to exit (deadline `secs`), returning its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signal the process group this test started (the master and its workers).
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A response as the client saw it; `body_error` is set when the body was cut.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub body_error: Option<String>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 connection (keep-alive) driven by hyper's client.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(t: &Target) -> std::io::Result<Conn> {
        let sender = match t {
            Target::Unix(p) => handshake(tokio::net::UnixStream::connect(p).await?).await?,
            Target::Tcp(a) => handshake(tokio::net::TcpStream::connect(a).await?).await?,
        };
        Ok(Conn { sender })
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Resp, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test.local");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, mut body) = resp.into_parts();
        let mut data = Vec::new();
        let mut body_error = None;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        data.extend_from_slice(&d);
                    }
                }
                Err(e) => {
                    body_error = Some(e.to_string());
                    break;
                }
            }
        }
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: data.into(),
            body_error,
        })
    }

    /// True once the server closed this connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

async fn handshake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    s: S,
) -> std::io::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request on a fresh connection.
pub async fn request(
    t: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String> {
    let mut c = Conn::open(t).await.map_err(|e| e.to_string())?;
    c.send(method, path, headers, body).await
}

/// Raw bytes over a fresh connection, for what a well-behaved client cannot send; returns all it read until close or `secs`.
pub async fn raw(t: &Target, bytes: &[u8], secs: u64) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Vec::new();
    let run = async {
        match t {
            Target::Unix(p) => {
                let mut s = tokio::net::UnixStream::connect(p).await.unwrap();
                s.write_all(bytes).await.unwrap();
                let _ = s.read_to_end(&mut out).await;
            }
            Target::Tcp(a) => {
                let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
                s.write_all(bytes).await.unwrap();
                let _ = s.read_to_end(&mut out).await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(secs), run).await;
    out
}
