//! Running `kubewsgi controller` against a local control plane, and polling the API until a condition holds.
//!
//! Include with `#[path = "controller_support/mod.rs"] mod controller_support;` next to `support_cp`.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};

use crate::support_cp::ControlPlane;

/// Generous: the machine is small and shared.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A running operator process; SIGTERM then kill on drop.
pub struct Operator {
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    /// Address of its `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: String,
}

impl Operator {
    /// Starts `kubewsgi controller` with the control plane's kubeconfig and `args`, and waits until
    /// its metrics listener is up.
    pub fn start(cp: &ControlPlane, args: &[&str]) -> Operator {
        Self::start_with_kubeconfig(&cp.kubeconfig, args)
    }

    /// Starts `kubewsgi controller` with the given kubeconfig (e.g. one impersonating its ServiceAccount).
    pub fn start_with_kubeconfig(kubeconfig: &Path, args: &[&str]) -> Operator {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubewsgi"))
            .args([
                "--log-format",
                "json",
                "controller",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube_runtime=warn,kube_client=warn")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubewsgi controller");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(addr) = v.get("addr").and_then(|a| a.as_str())
                {
                    let _ = tx.send(addr.to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let metrics_addr = match rx.recv_timeout(TIMEOUT) {
            Ok(a) => a,
            Err(_) => {
                let status = child.try_wait();
                let _ = child.kill();
                panic!(
                    "the operator did not start listening ({status:?}):\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Operator {
            child,
            logs,
            metrics_addr,
        }
    }

    /// Everything the operator logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// `GET path` on the metrics address with curl: (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "10",
                "-w",
                "\n%{http_code}",
                &format!("http://{}{path}", self.metrics_addr),
            ])
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The value of an unlabelled or labelled sample line in `/metrics`, e.g. `kubewsgi_controller_leader`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics");
        body.lines().find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse().unwrap())
        })
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the operator did not exit on SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- operator log -----\n{}", self.logs());
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            for _ in 0..50 {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Applies `crds/wsgiapp.yaml` and waits until the API server serves it.
pub fn install_crd(cp: &ControlPlane) {
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/wsgiapp.yaml");
    cp.kubectl_ok(["apply", "-f", crd.to_str().unwrap()]);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = cp.kubectl(["get", "wsgiapps", "-A"]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the WsgiApp CRD was not served: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Creates a namespace with `labels` and waits for its `default` ServiceAccount (pods need it).
pub async fn namespace(client: &kube::Client, name: &str, labels: &[(&str, &str)]) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>()}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), name);
    eventually(&format!("the default ServiceAccount of {name}"), || async {
        sas.get_opt("default").await.ok().flatten()
    })
    .await;
}

/// Polls `f` every 200 ms until it returns `Some`, panicking with `what` after [`TIMEOUT`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
