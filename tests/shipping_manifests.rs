//! The Helm chart and the plain manifests against a real API server: `helm lint` clean, the rendered
//! chart and `deploy/` accepted by a server-side dry run, the examples valid WsgiApps, and the
//! operator's RBAC both sufficient (an operator running as its ServiceAccount reconciles) and narrow.

#[path = "support_cp/mod.rs"]
mod support_cp;

#[path = "controller_support/mod.rs"]
mod controller_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use controller_support::{Operator, eventually, install_crd};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use kubewsgi::crd::WsgiApp;
use serde::Deserialize;
use serde_json::json;
use support_cp::ControlPlane;

const SA: &str = "system:serviceaccount:kubewsgi-system:kubewsgi";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl_stdin(cp: &ControlPlane, args: &[&str], input: &[u8]) -> Output {
    let mut child = cp
        .command("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_and_manifests_install_and_grant_just_enough() {
    let cp = ControlPlane::start();
    let chart = repo("charts/kubewsgi");
    let chart = chart.to_str().unwrap();

    let lint = cp.helm(["lint", "--strict", chart]);
    assert!(lint.status.success(), "helm lint: {}", text(&lint));
    let bad = cp.helm(["template", "x", chart, "--set", "replicaCount=0"]);
    assert!(
        !bad.status.success(),
        "values.schema.json let replicaCount=0 through"
    );
    let racing = cp.helm([
        "template",
        "x",
        chart,
        "--set",
        "replicaCount=3",
        "--set",
        "leaderElect=false",
    ]);
    assert!(
        !racing.status.success(),
        "values.schema.json let several replicas reconcile without leader election"
    );
    // Watching one namespace, the rights are granted in that namespace only.
    let one_ns = cp.helm(["template", "x", chart, "--set", "watchNamespace=apps"]);
    let one_ns = text(&one_ns);
    assert!(!one_ns.contains("kind: ClusterRole"), "{one_ns}");
    assert!(
        one_ns.contains("kind: Role\nmetadata:\n  name: x-kubewsgi\n  namespace: apps"),
        "{one_ns}"
    );
    let monitor = cp.helm([
        "template",
        "x",
        chart,
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ]);
    assert!(
        text(&monitor).contains("kind: ServiceMonitor"),
        "{}",
        text(&monitor)
    );

    cp.kubectl_ok(["create", "namespace", "kubewsgi-system"]);
    let rendered = cp.helm([
        "template",
        "kubewsgi",
        chart,
        "--namespace",
        "kubewsgi-system",
        "--include-crds",
    ]);
    assert!(
        rendered.status.success(),
        "helm template: {}",
        text(&rendered)
    );
    let dry = kubectl_stdin(
        &cp,
        &["apply", "--dry-run=server", "-f", "-"],
        &rendered.stdout,
    );
    assert!(
        dry.status.success(),
        "the rendered chart was refused: {}",
        text(&dry)
    );
    assert!(text(&dry).contains("customresourcedefinition.apiextensions.k8s.io/wsgiapps.kubewsgi.io created (server dry run)"));

    // The chart and deploy/ grant the operator the same rights.
    let rules = |yaml: &str| -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .map(|d| d["rules"].clone())
            .collect()
    };
    let from_chart = rules(&String::from_utf8_lossy(&rendered.stdout));
    let from_deploy = rules(&std::fs::read_to_string(repo("deploy/02-rbac.yaml")).unwrap());
    assert_eq!(
        from_chart.len(),
        2,
        "a ClusterRole and a leader-election Role"
    );
    assert_eq!(
        from_chart, from_deploy,
        "the chart's RBAC and deploy/02-rbac.yaml differ"
    );

    let deploy = repo("deploy");
    let dry = cp.kubectl(["apply", "--dry-run=server", "-f", deploy.to_str().unwrap()]);
    assert!(dry.status.success(), "deploy/ was refused: {}", text(&dry));

    // Installed for real, the examples are valid WsgiApps.
    cp.kubectl_ok(["apply", "-f", deploy.to_str().unwrap()]);
    install_crd(&cp);
    let dry = cp.kubectl([
        "apply",
        "--dry-run=server",
        "-n",
        "default",
        "-f",
        repo("deploy/examples").to_str().unwrap(),
    ]);
    assert!(
        dry.status.success(),
        "deploy/examples was refused: {}",
        text(&dry)
    );

    // Narrow: the operator's ServiceAccount has what it uses and nothing more. The allowed checks
    // come first and are polled, since a new binding reaches the authorizer's cache asynchronously.
    let can_i = |verb: &str, resource: &str, sub: &str, ns: &str| {
        let mut args = vec!["auth", "can-i", verb, resource, "-n", ns, "--as", SA];
        if !sub.is_empty() {
            args.extend(["--subresource", sub]);
        }
        let out = cp.kubectl(&args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, resource, sub, ns) in [
        ("patch", "deployments.apps", "", "default"),
        ("patch", "wsgiapps.kubewsgi.io", "status", "default"),
        ("watch", "pods", "", "default"),
        ("create", "events.events.k8s.io", "", "default"),
        (
            "update",
            "leases.coordination.k8s.io",
            "",
            "kubewsgi-system",
        ),
    ] {
        eventually(&format!("{SA} may {verb} {resource} {sub}"), || async {
            can_i(verb, resource, sub, ns).then_some(())
        })
        .await;
    }
    for (verb, resource, sub) in [
        ("delete", "deployments.apps", ""),
        ("update", "wsgiapps.kubewsgi.io", ""),
        ("patch", "wsgiapps.kubewsgi.io", ""),
        ("get", "secrets", ""),
        ("create", "pods", ""),
        ("create", "pods", "exec"),
        ("delete", "services", ""),
    ] {
        assert!(
            !can_i(verb, resource, sub, "default"),
            "{SA} may {verb} {resource} {sub}"
        );
    }
    assert!(
        !can_i("update", "leases.coordination.k8s.io", "", "default"),
        "Lease rights outside its namespace"
    );

    // Sufficient: an operator authenticated as that ServiceAccount leads and reconciles.
    let kubeconfig = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&kubeconfig).unwrap();
    for user in doc["users"].as_sequence_mut().unwrap() {
        user["user"]["as"] = serde_yaml::Value::from(SA);
    }
    let as_sa = cp.dir.join("kubeconfig-operator");
    std::fs::write(&as_sa, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let op = Operator::start_with_kubeconfig(
        &as_sa,
        &["--leader-elect", "--lease-namespace", "kubewsgi-system"],
    );
    let client = cp.kube_client().await;
    let apps = Api::<WsgiApp>::namespaced(client.clone(), "default");
    let app: WsgiApp = serde_json::from_value(json!({
        "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp", "metadata": {"name": "rbac"},
        "spec": {"image": "example.test/a:1", "app": "a:app", "replicas": 2}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let deps = Api::<Deployment>::namespaced(client.clone(), "default");
    eventually("the Deployment made under the operator's RBAC", || async {
        deps.get_opt("rbac").await.unwrap()
    })
    .await;
    eventually("status written under the operator's RBAC", || async {
        apps.get("rbac")
            .await
            .unwrap()
            .status?
            .observed_generation
            .map(|_| ())
    })
    .await;
    assert_eq!(
        op.metric("kubewsgi_controller_reconcile_errors_total"),
        Some(0.0),
        "{}",
        op.logs()
    );
}
