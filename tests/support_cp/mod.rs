//! A real local Kubernetes control plane for integration tests, run by `scripts/control-plane`.
//!
//! Include it with `#[path = "support_cp/mod.rs"] mod support_cp;`. Every [`ControlPlane`] has
//! its own directory, ports and etcd data, so tests may start several in parallel. A control plane
//! that cannot start panics with its log tail: tests never skip.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// One running etcd + kube-apiserver + kube-controller-manager; stopped on drop.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    tmp: Option<tempfile::TempDir>,
    running: bool,
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo_root().join("scripts/control-plane")
}

/// Directory holding the built `kubectl`, `helm`, `kube-apiserver` and `kube-controller-manager`;
/// builds them on first use.
pub fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(script())
            .arg("bin")
            .output()
            .expect("run scripts/control-plane bin");
        assert!(
            out.status.success(),
            "scripts/control-plane bin failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

impl ControlPlane {
    /// Starts API server, etcd and the controllers that keep a bare API server usable
    /// (service accounts, namespace deletion, garbage collection).
    pub fn start() -> ControlPlane {
        Self::start_with(&[])
    }

    /// Starts with every controller-manager controller (Deployments → ReplicaSets → Pods,
    /// EndpointSlices, garbage collection, ...).
    pub fn start_full() -> ControlPlane {
        Self::start_with(&["--full"])
    }

    fn start_with(flags: &[&str]) -> ControlPlane {
        let tmp = tempfile::Builder::new()
            .prefix("kubewsgi-cp-")
            .tempdir()
            .expect("create control plane directory");
        let dir = tmp.path().to_path_buf();
        // The owner pid stops the control plane even if this test process is killed before
        // its drop runs.
        // The node agent of `--full` runs the kubewsgi image as the binary this test build made.
        let out = Command::new(script())
            .env("KUBEWSGI_BINARY", kubewsgi_binary())
            .arg("up")
            .args(flags)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .arg(&dir)
            .output()
            .expect("run scripts/control-plane up");
        if !out.status.success() {
            // Keep the directory: its logs are what explains the failure.
            let kept = keep_logs(tmp);
            panic!(
                "the local control plane did not start (logs kept in {}):\n{}{}",
                kept.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            tmp: Some(tmp),
            running: true,
        }
    }

    /// Runs the built kubectl (same version as the server) against this control plane.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.tool("kubectl", args)
    }

    /// Runs kubectl and returns its stdout, panicking with its stderr when it fails.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.kubectl(&args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the built helm against this control plane.
    pub fn helm<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.tool("helm", args)
    }

    /// A `Command` for a built tool with `KUBECONFIG` and `PATH` set for this control plane.
    pub fn command(&self, tool: &str) -> Command {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin_dir().to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        let mut cmd = Command::new(bin_dir().join(tool));
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", std::env::join_paths(paths).expect("PATH"))
            // kubectl's discovery cache and helm's caches and config default to HOME; keep
            // them per control plane so runs never share or pile up state.
            .env("KUBECACHEDIR", self.dir.join("kube-cache"))
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        cmd
    }

    fn tool<I, S>(&self, tool: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"))
    }

    /// A kube-rs client authenticated as the cluster admin (`system:masters`).
    pub async fn kube_client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kube config from kubeconfig");
        kube::Client::try_from(config).expect("kube client")
    }

    /// Last lines of every log of this control plane, for assertion messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return text;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension() != Some(OsStr::new("log")) {
                continue;
            }
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text += &format!("----- {} -----\n", path.display());
            text += &lines[lines.len().saturating_sub(40)..].join("\n");
            text.push('\n');
        }
        text
    }

    /// Polls `f` every 250 ms until it returns `Some`; after `limit` panics naming `what`, with
    /// the control plane's log tails.
    pub async fn wait<T, F, Fut>(&self, what: &str, limit: std::time::Duration, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            if std::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.log_tail());
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Stops etcd, the API server and the controllers (unless [`ControlPlane::stop_for_restart`]
    /// did) and starts them again on the same ports, keys and etcd data
    /// (`scripts/control-plane restart`): running clients reconnect to the same address. Returns
    /// once the restarted control plane is ready.
    pub fn restart(&mut self) {
        assert!(self.running, "restart of a stopped control plane");
        let out = Command::new(script())
            .env("KUBEWSGI_BINARY", kubewsgi_binary())
            .arg("restart")
            .arg(&self.dir)
            .output()
            .expect("run scripts/control-plane restart");
        assert!(
            out.status.success(),
            "the local control plane did not restart:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// Stops etcd, the API server and the controllers but keeps ports, keys and data for
    /// [`ControlPlane::restart`]: an outage as long as the caller wants.
    pub fn stop_for_restart(&mut self) {
        assert!(self.running, "stop of a stopped control plane");
        let out = Command::new(script())
            .arg("down")
            .arg(&self.dir)
            .output()
            .expect("run scripts/control-plane down");
        assert!(
            out.status.success(),
            "scripts/control-plane down failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the control plane now (drop does it too); idempotent.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let out = Command::new(script()).arg("down").arg(&self.dir).output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "scripts/control-plane down {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("run scripts/control-plane down: {e}"),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking()
            && let Some(tmp) = self.tmp.take()
        {
            eprintln!("control plane logs kept in {}", keep_logs(tmp).display());
        }
    }
}

/// Keeps a control plane directory for its logs, dropping the etcd data (tens of MiB of
/// preallocated WAL that explain nothing).
fn keep_logs(tmp: tempfile::TempDir) -> PathBuf {
    let dir = tmp.keep();
    let _ = std::fs::remove_dir_all(dir.join("etcd"));
    dir
}

/// The kubewsgi binary cargo built for these tests; the node agent runs it for the kubewsgi image.
pub fn kubewsgi_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubewsgi"))
}

impl ControlPlane {
    /// Maps image references to app directories for the node agent (`DIR/images.yaml`); it reads
    /// the file whenever a container starts.
    pub fn write_images(&self, images: &[(&str, &Path)]) {
        let map: std::collections::BTreeMap<&str, String> = images
            .iter()
            .map(|(image, dir)| (*image, dir.display().to_string()))
            .collect();
        let text = serde_yaml::to_string(&map).expect("images map as YAML");
        std::fs::write(self.dir.join("images.yaml"), text).expect("write images.yaml");
    }

    /// The node agent's log (`--full` only).
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nodeagent.log")).unwrap_or_default()
    }

    /// Output and termination log of one container of a pod run by the node agent.
    pub fn container_log(&self, pod: &str, container: &str) -> String {
        let Ok(entries) = std::fs::read_dir(self.dir.join("nodeagent")) else {
            return String::new();
        };
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.split('_').nth(1) == Some(pod)
            })
            .map(|e| {
                std::fs::read_to_string(e.path().join(format!("containers/{container}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// A response from a pod, read whole.
pub struct PodResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl PodResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET path` on a pod address (`IP:PORT`) over a fresh HTTP/1.1 connection (hyper), bounded by
/// `timeout`; errors come back as text for assertion messages.
pub async fn pod_get(
    addr: &str,
    path: &str,
    timeout: std::time::Duration,
) -> Result<PodResponse, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let run = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", addr)
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {addr}{path}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body of {addr}{path}: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(PodResponse {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, run)
        .await
        .unwrap_or_else(|_| Err(format!("GET {addr}{path}: no answer in {timeout:?}")))
}

/// Processes whose environment holds `KEY=VALUE` (e.g. `HOSTNAME=<pod>`, which the node agent sets
/// in every container of a pod).
pub fn pids_with_env(key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Names of the network namespaces on this machine (`ip netns list`).
pub fn netns_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Whether a pod is Ready and not terminating.
pub fn is_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
