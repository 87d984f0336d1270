//! The local control plane behaves like a real cluster: kube-rs and kubectl see the same API,
//! Pod Security admission enforces namespace labels, RBAC denies what is not granted, service
//! account tokens authenticate, and several control planes run side by side.

#[path = "support_cp/mod.rs"]
mod support_cp;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support_cp::ControlPlane;

const DEADLINE: Duration = Duration::from_secs(120);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits until the service account controller has created `default` in `ns`; pods are only
/// admitted once it exists.
async fn wait_for_default_sa(client: &kube::Client, ns: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    while api
        .get_opt("default")
        .await
        .expect("get serviceaccount")
        .is_none()
    {
        assert!(
            start.elapsed() < DEADLINE,
            "no default service account in {ns}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels }
    }))
    .expect("namespace")
}

fn pod(name: &str, security: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "containers": [{
            "name": "app",
            "image": "example/app:1",
            "securityContext": security,
        }]}
    }))
    .expect("pod")
}

fn restricted_security() -> serde_json::Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

#[test]
fn control_plane_serves_kube_rs_and_kubectl_and_enforces_policy() {
    let mut cp = ControlPlane::start();
    let rt = runtime();
    let client = rt.block_on(cp.kube_client());

    // kube-rs writes, kubectl reads: both talk to the same API server.
    rt.block_on(async {
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &namespace("made-by-kube-rs", json!({})),
        )
        .await
        .expect("create namespace with kube-rs");
    });
    let listed = cp.kubectl_ok(["get", "namespaces", "-o", "name"]);
    assert!(
        listed.lines().any(|l| l == "namespace/made-by-kube-rs"),
        "kubectl does not list the namespace: {listed}"
    );
    let version = cp.kubectl_ok(["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_str(&version).expect("version json");
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("");
    let client_version = version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("");
    assert!(server.starts_with("v1.36."), "server version {version}");
    assert_eq!(
        server, client_version,
        "kubectl is built at the server's version"
    );

    // Pod Security admission: a restricted namespace refuses a privileged pod and admits a
    // compliant one (so the refusal is the policy, not a missing service account).
    rt.block_on(async {
        let ns = "restricted";
        let labels = json!({ "pod-security.kubernetes.io/enforce": "restricted" });
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace(ns, labels))
            .await
            .expect("create restricted namespace");
        wait_for_default_sa(&client, ns).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let err = pods
            .create(
                &PostParams::default(),
                &pod("privileged", json!({ "privileged": true })),
            )
            .await
            .expect_err("a privileged pod must be refused in a restricted namespace");
        let kube::Error::Api(status) = &err else {
            panic!("unexpected error: {err}");
        };
        assert_eq!(status.code, 403, "{status:?}");
        assert!(
            status.message.contains("violates PodSecurity \"restricted"),
            "refused for another reason: {}",
            status.message
        );
        pods.create(
            &PostParams::default(),
            &pod("compliant", restricted_security()),
        )
        .await
        .expect("a restricted-compliant pod is admitted");
    });

    // RBAC: a fresh service account may do nothing until a Role grants it something, and its
    // own token (signed by the control plane's service account key) is authenticated.
    rt.block_on(async {
        let ns = "rbac";
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace(ns, json!({})))
            .await
            .expect("create rbac namespace");
        let sa: ServiceAccount =
            serde_json::from_value(json!({ "metadata": { "name": "reader" } }))
                .expect("service account");
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &sa)
            .await
            .expect("create service account");
    });
    let who = "--as=system:serviceaccount:rbac:reader";
    let denied = cp.kubectl(["auth", "can-i", "list", "pods", "-n", "rbac", who]);
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "no");
    assert!(
        !denied.status.success(),
        "can-i answers no with a failure code"
    );
    cp.kubectl_ok([
        "create",
        "role",
        "pod-reader",
        "-n",
        "rbac",
        "--verb=get,list",
        "--resource=pods",
    ]);
    cp.kubectl_ok([
        "create",
        "rolebinding",
        "reader",
        "-n",
        "rbac",
        "--role=pod-reader",
        "--serviceaccount=rbac:reader",
    ]);
    // The authorizer sees new bindings through its informer, a moment after the write.
    let start = Instant::now();
    loop {
        let allowed = cp.kubectl(["auth", "can-i", "list", "pods", "-n", "rbac", who]);
        if String::from_utf8_lossy(&allowed.stdout).trim() == "yes" {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the RoleBinding never granted list pods: {}{}",
            String::from_utf8_lossy(&allowed.stdout),
            String::from_utf8_lossy(&allowed.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let token = cp.kubectl_ok(["create", "token", "reader", "-n", "rbac"]);
    let token = format!("--token={}", token.trim());
    // A kubeconfig user with a token of its own overrides the admin token for these calls.
    cp.kubectl_ok(["get", "pods", "-n", "rbac", &token]);
    let forbidden = cp.kubectl(["get", "secrets", "-n", "rbac", &token]);
    assert!(!forbidden.status.success(), "secrets must be forbidden");
    let stderr = String::from_utf8_lossy(&forbidden.stderr);
    assert!(
        stderr.contains("forbidden") && stderr.contains("system:serviceaccount:rbac:reader"),
        "{stderr}"
    );

    // Component identities: the scheduler may bind pods, the node may not.
    let can_bind = |identity: &str| {
        let kubeconfig = cp.dir.join("pki").join(format!("{identity}.kubeconfig"));
        let out = cp
            .command("kubectl")
            .env("KUBECONFIG", kubeconfig)
            .args(["auth", "can-i", "create", "pods", "--subresource=binding"])
            .output()
            .expect("run kubectl");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(can_bind("scheduler"), "yes");
    assert_eq!(can_bind("node"), "no");

    // Namespace deletion completes: the namespace controller empties and removes it.
    rt.block_on(async {
        let api: Api<Namespace> = Api::all(client.clone());
        api.delete("restricted", &DeleteParams::default())
            .await
            .expect("delete namespace");
        let start = Instant::now();
        while api.get_opt("restricted").await.expect("get").is_some() {
            assert!(start.elapsed() < DEADLINE, "namespace never went away");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });

    let helm = cp.helm(["list", "--all-namespaces", "-o", "json"]);
    assert!(
        helm.status.success(),
        "helm cannot reach the API server: {}",
        String::from_utf8_lossy(&helm.stderr)
    );

    // `env` prints what a shell needs to use this control plane with the built tools.
    let env = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane"),
    )
    .arg("env")
    .arg(&cp.dir)
    .output()
    .expect("run scripts/control-plane env");
    let env = String::from_utf8_lossy(&env.stdout);
    assert!(
        env.contains(&format!("export KUBECONFIG={}", cp.kubeconfig.display())),
        "{env}"
    );
    assert!(
        env.contains(&format!("export PATH={}:", support_cp::bin_dir().display())),
        "{env}"
    );

    let pid: i32 = std::fs::read_to_string(cp.dir.join("pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    cp.stop();
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "the control plane process {pid} still runs after down"
    );
    let after = cp.kubectl(["get", "namespaces", "--request-timeout=5s"]);
    assert!(!after.status.success(), "the API still answers after down");
}

#[test]
fn two_control_planes_run_side_by_side() {
    let a = ControlPlane::start();
    let b = ControlPlane::start();
    let server = |cp: &ControlPlane| {
        cp.kubectl_ok([
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])
    };
    assert_ne!(
        server(&a),
        server(&b),
        "each control plane has its own port"
    );
    a.kubectl_ok(["create", "namespace", "only-in-a"]);
    let in_b = b.kubectl(["get", "namespace", "only-in-a"]);
    assert!(!in_b.status.success(), "the control planes share state");
    a.kubectl_ok(["get", "namespace", "only-in-a"]);
}

/// Polls `check` every 250ms until it returns true; panics with `what` after the deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn full_control_plane_runs_workload_controllers() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::ListParams;

    let cp = ControlPlane::start_full();
    let manifest = cp.dir.join("web.yaml");
    std::fs::write(
        &manifest,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: default }
spec:
  replicas: 2
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec: { containers: [{ name: app, image: "example/app:1" }] }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec:
  selector: { app: web }
  ports: [{ port: 80, targetPort: 8080 }]
"#,
    )
    .expect("write manifest");
    cp.kubectl_ok(["apply", "-f", manifest.to_str().expect("path")]);

    let rt = runtime();
    rt.block_on(async {
        let client = cp.kube_client().await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let web = ListParams::default().labels("app=web");

        // Deployment → ReplicaSet → Pods: the deployment and replicaset controllers run.
        eventually("a ReplicaSet owned by the Deployment", || async {
            sets.list(&web)
                .await
                .expect("list replicasets")
                .items
                .iter()
                .any(|rs| {
                    rs.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.kind == "Deployment" && o.name == "web")
                })
        })
        .await;
        eventually("two pods from the ReplicaSet", || async {
            pods.list(&web).await.expect("list pods").items.len() == 2
        })
        .await;
        // The endpointslice controller writes a slice for the Service.
        let by_service = ListParams::default().labels("kubernetes.io/service-name=web");
        eventually("an EndpointSlice for the Service", || async {
            !slices
                .list(&by_service)
                .await
                .expect("list slices")
                .items
                .is_empty()
        })
        .await;

        // Deleting the Deployment lets the garbage collector remove its ReplicaSet and pods.
        cp.kubectl_ok(["delete", "deployment", "web", "--wait=false"]);
        eventually("the ReplicaSet and pods to be collected", || async {
            sets.list(&web).await.expect("list").items.is_empty()
                && pods.list(&web).await.expect("list").items.is_empty()
        })
        .await;
    });
}
