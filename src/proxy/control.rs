//! Follows the worker server through its control socket (`GET /stats`): admission capacity,
//! readiness and the worker metrics the proxy re-exports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::admission::Admission;
use super::upstream::{Target, Upstream};
use crate::metrics::Metrics;

/// How often the control socket is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// `GET /stats` of the worker server.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub workers: u64,
    pub threads: u64,
    #[serde(default)]
    pub busy: u64,
    #[serde(default)]
    pub idle: u64,
    #[serde(default)]
    pub restarts: u64,
    #[serde(default)]
    pub requests: u64,
    /// Absent in older answers: then ready means "has workers and no boot error".
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(default)]
    pub max_workers: Option<u64>,
    #[serde(default)]
    pub boot_error: Option<String>,
    /// Process ids of the workers serving now (retiring ones are left out).
    #[serde(default)]
    pub pids: Vec<i32>,
}

/// What the proxy knows about the worker server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The last poll of the control socket succeeded.
    pub reachable: bool,
    /// The last answer said the app is imported and workers serve.
    pub ready: bool,
    /// The last answer, if any.
    pub stats: Option<Stats>,
    /// Why the last poll failed.
    pub error: Option<String>,
}

impl Stats {
    fn is_ready(&self) -> bool {
        self.ready
            .unwrap_or(self.workers > 0 && self.boot_error.is_none())
    }
}

/// Polls `path` forever, publishing [`WorkerStatus`] and following capacity. A worker server
/// whose app socket is gone is not ready, however well its control socket answers. When a worker
/// leaves the serving set for another, idle upstream connections are closed so none reaches a
/// retiring one.
pub async fn follow(
    path: PathBuf,
    upstream: Arc<Upstream>,
    status: watch::Sender<WorkerStatus>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
) {
    let mut serving: Vec<i32> = Vec::new();
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let next = match tokio::time::timeout(Duration::from_secs(2), fetch(&path)).await {
            Ok(Ok(stats)) => {
                let cap = stats.workers.saturating_mul(stats.threads);
                admission.set_capacity(cap as usize);
                let max = stats
                    .max_workers
                    .unwrap_or(stats.workers)
                    .max(stats.workers);
                metrics
                    .worker_max_capacity
                    .set(max.saturating_mul(stats.threads) as i64);
                metrics.set_worker_restarts(stats.restarts);
                // Only when others serve in their place: while the whole worker server stops,
                // its draining workers still answer on the connections they have.
                if !stats.pids.is_empty() && serving.iter().any(|p| !stats.pids.contains(p)) {
                    upstream.forget_idle();
                }
                serving.clone_from(&stats.pids);
                let app_socket = app_socket_present(upstream.target()).await.err();
                WorkerStatus {
                    reachable: true,
                    ready: stats.is_ready() && app_socket.is_none(),
                    stats: Some(stats),
                    error: app_socket,
                }
            }
            Ok(Err(e)) => WorkerStatus {
                error: Some(e),
                ..Default::default()
            },
            Err(_) => WorkerStatus {
                error: Some("control socket did not answer within 2s".into()),
                ..Default::default()
            },
        };
        status.send_if_modified(|cur| {
            if cur.reachable != next.reachable || cur.ready != next.ready {
                tracing::info!(reachable = next.reachable, ready = next.ready, error = ?next.error, "worker server status");
            }
            let changed = *cur != next;
            *cur = next;
            changed
        });
    }
}

/// Whether requests could reach the worker server: its Unix socket exists (a file check, so a
/// full accept backlog under load does not count as absence).
async fn app_socket_present(target: &Target) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match target {
        Target::Unix(p) => match tokio::fs::metadata(p).await {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            Ok(_) => Err(format!("app socket {} is not a socket", p.display())),
            Err(e) => Err(format!("app socket {}: {e}", p.display())),
        },
        // A TCP probe would wait on a full backlog and fail a busy server; the control socket
        // and the 502s of real requests speak for a TCP upstream.
        Target::Tcp(_) => Ok(()),
    }
}

/// One `GET /stats` over the control socket.
pub async fn fetch(path: &Path) -> Result<Stats, String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("control socket: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get("/stats")
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("control socket: {e}"))?;
    let ok = resp.status().is_success();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("control socket: {e}"))?
        .to_bytes();
    drop(sender);
    conn.abort();
    if !ok {
        return Err(format!(
            "control socket answered: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("control socket stats: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json() {
        let s: Stats = serde_json::from_str(
            r#"{"workers":2,"threads":4,"busy":1,"idle":7,"restarts":3,"requests":10,"ready":true,"max_workers":5,"boot_error":null,"extra":1}"#,
        )
        .unwrap();
        assert!(s.is_ready());
        assert_eq!(s.max_workers, Some(5));
        let old: Stats = serde_json::from_str(
            r#"{"workers":2,"threads":4,"busy":0,"idle":8,"restarts":0,"requests":0}"#,
        )
        .unwrap();
        assert!(old.is_ready());
        let failed: Stats = serde_json::from_str(
            r#"{"workers":0,"threads":4,"ready":false,"boot_error":"ImportError"}"#,
        )
        .unwrap();
        assert!(!failed.is_ready());
    }
}
