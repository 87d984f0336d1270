//! The builtin autoscaler end to end: a real `kubewsgi run` plays the WsgiApp's pod on 127.0.0.2
//! (a Pod object whose status says Ready at that IP), slow requests queue in its proxy, and the
//! operator scales the Deployment up, reports the queue in the status, and scales back down.

#[path = "support_cp/mod.rs"]
mod support_cp;

#[path = "controller_support/mod.rs"]
mod controller_support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use controller_support::{Operator, eventually, install_crd, namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubewsgi::crd::WsgiApp;
use serde_json::json;
use support_cp::ControlPlane;

const NS: &str = "scale";

/// Requests wait for the gate file, so the test decides how long the queue stays full.
const APP: &str = r#"
import os, time

def app(environ, start_response):
    deadline = time.monotonic() + 120
    while not os.path.exists(os.environ["GATE_FILE"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"#;

/// Child processes killed (as process groups) on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: killpg(2) on a process group this test created for its own child.
            unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

fn free_addr(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

fn spawn(cmd: &mut Command) -> Child {
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    cmd.stdin(Stdio::null()).spawn().expect("spawn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_autoscaler_follows_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gated.py"), APP).unwrap();
    let gate = dir.path().join("open");
    let (bind, admin) = (free_addr("127.0.0.2"), free_addr("127.0.0.2"));
    let log = std::fs::File::create(dir.path().join("pod.log")).unwrap();
    let mut procs = Procs(vec![spawn(
        Command::new(env!("CARGO_BIN_EXE_kubewsgi"))
            .args([
                "run",
                "gated:app",
                "--workers",
                "1",
                "--threads",
                "1",
                "--access-log",
                "off",
            ])
            .args(["--bind", &bind.to_string(), "--admin", &admin.to_string()])
            .arg("--chdir")
            .arg(dir.path())
            .env_remove("VIRTUAL_ENV")
            .env("GATE_FILE", &gate)
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )]);

    let cp = ControlPlane::start();
    install_crd(&cp);
    let client = cp.kube_client().await;
    namespace(&client, NS, &[]).await;
    let _op = Operator::start(&cp, &["--resync-seconds", "5"]);

    let apps = Api::<WsgiApp>::namespaced(client.clone(), NS);
    let app: WsgiApp = serde_json::from_value(json!({
        "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp", "metadata": {"name": "gated"},
        "spec": {"image": "example.test/gated:1", "app": "gated:app", "workers": {"processes": 1, "threads": 1},
                 "autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 1,
                                 "stableWindowSeconds": 6, "scaleDownDelaySeconds": 0}}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let deps = Api::<Deployment>::namespaced(client.clone(), NS);
    let dep = eventually("the Deployment", || async {
        deps.get_opt("gated").await.unwrap()
    })
    .await;
    assert_eq!(
        dep.spec.as_ref().unwrap().replicas,
        Some(1),
        "starts at minReplicas"
    );

    // The Pod object of the `kubewsgi run` process: the operator's template, Ready at 127.0.0.2 with
    // the admin port the process listens on.
    let template = dep.spec.unwrap().template;
    let mut pod = Pod {
        metadata: template.metadata.unwrap(),
        spec: template.spec,
        status: None,
    };
    pod.metadata.name = Some("gated-0".into());
    for c in &mut pod.spec.as_mut().unwrap().containers {
        for p in c.ports.iter_mut().flatten() {
            if p.name.as_deref() == Some("admin") {
                p.container_port = admin.port().into();
            }
        }
    }
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.2", "podIPs": [{"ip": "127.0.0.2"}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("gated-0", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    // Eight slow requests on one worker thread: one in flight, seven queued.
    let url = format!("http://{bind}/");
    eventually("the pod to serve", || async {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "5",
                &format!("http://{admin}/healthz"),
            ])
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
    })
    .await;
    for _ in 0..8 {
        procs.0.push(spawn(
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-m", "120", &url])
                .stdout(Stdio::null()),
        ));
    }
    let scaled = eventually("a scale-up", || async {
        let r = deps.get("gated").await.unwrap().spec?.replicas?;
        (r > 1).then_some(r)
    })
    .await;
    assert!(scaled <= 4, "above maxReplicas: {scaled}");
    let st = eventually("the queue in the status", || async {
        apps.get("gated")
            .await
            .unwrap()
            .status
            .filter(|s| s.queue_depth.unwrap_or(0.0) >= 1.0)
    })
    .await;
    assert!(
        st.desired_replicas.unwrap() > 1 && st.last_scale_time.is_some(),
        "{st:?}"
    );

    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let scaled_up = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("ScaledUp"))
        .expect("a ScaledUp event");
    assert!(
        scaled_up
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("1 → "),
        "{:?}",
        scaled_up.note
    );

    // Demand ends: back to minReplicas after the stable window.
    std::fs::write(&gate, b"").unwrap();
    eventually("the scale-down to minReplicas", || async {
        (deps.get("gated").await.unwrap().spec?.replicas? == 1).then_some(())
    })
    .await;

    // Autoscaling turned off: the autoscaler's status fields do not linger.
    apps.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaling": {"enabled": false}}})),
    )
    .await
    .unwrap();
    eventually("the autoscaler's status fields cleared", || async {
        let st = apps.get("gated").await.unwrap().status?;
        (st.desired_replicas.is_none()
            && st.queue_depth.is_none()
            && st.concurrency.is_none()
            && st.last_scale_time.is_none())
        .then_some(())
    })
    .await;
}
