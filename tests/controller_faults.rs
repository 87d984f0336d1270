//! The operator under faults against a real kube-apiserver: it rides out a restart of the API
//! server and etcd by itself (new apps, spec changes and deleted children are handled after it),
//! and the proxy's TLS private key reaches the pod only through a read-only Secret volume.

#[path = "support_cp/mod.rs"]
mod support_cp;

#[path = "controller_support/mod.rs"]
mod controller_support;

use controller_support::{Operator, eventually, install_crd, namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kubewsgi::crd::WsgiApp;
use serde_json::json;
use support_cp::ControlPlane;

const NS: &str = "faults";

fn app(ns: &str, name: &str, image: &str, tls: Option<&str>) -> WsgiApp {
    let mut spec = json!({"image": image, "app": "web:app"});
    if let Some(secret) = tls {
        spec["tls"] = json!({"secretName": secret});
    }
    serde_json::from_value(json!({
        "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap()
}

fn containers(dep: &Deployment) -> &[Container] {
    &dep.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
}

fn container<'a>(dep: &'a Deployment, name: &str) -> &'a Container {
    containers(dep)
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Image of the app container, read back from the API server.
async fn app_image(deps: &Api<Deployment>, name: &str) -> Option<String> {
    let dep = deps.get_opt(name).await.ok()??;
    container(&dep, "app").image.clone()
}

/// What an operator must still do after the restart in `ns`, where it reconciled the WsgiApp
/// `before` (image `example.test/a:1`) before it: a new app gets its Deployment and Service, a spec
/// change reaches the Deployment, a deleted Deployment is recreated.
async fn resumes(client: &Client, ns: &str) {
    let apps = Api::<WsgiApp>::namespaced(client.clone(), ns);
    let deps = Api::<Deployment>::namespaced(client.clone(), ns);
    let svcs = Api::<Service>::namespaced(client.clone(), ns);

    apps.create(
        &PostParams::default(),
        &app(ns, "after", "example.test/b:1", None),
    )
    .await
    .unwrap();
    eventually(
        &format!("{ns}: the Deployment of an app made after the restart"),
        || app_image(&deps, "after"),
    )
    .await;
    eventually(
        &format!("{ns}: the Service of an app made after the restart"),
        || async { svcs.get_opt("after").await.ok().flatten() },
    )
    .await;

    apps.patch(
        "before",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": "example.test/a:2"}})),
    )
    .await
    .unwrap();
    eventually(
        &format!("{ns}: the changed image in the Deployment"),
        || async {
            app_image(&deps, "before")
                .await
                .filter(|i| i == "example.test/a:2")
        },
    )
    .await;

    // Recreated means a new object, not the old one seen before its deletion completed.
    let old_uid = deps.get("after").await.unwrap().uid().unwrap();
    deps.delete("after", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        &format!("{ns}: the deleted Deployment recreated"),
        || async {
            deps.get_opt("after")
                .await
                .ok()
                .flatten()
                .filter(|d| d.uid().as_deref() != Some(old_uid.as_str()))
        },
    )
    .await;
}

/// The API server and etcd go away for longer than the leader Lease lasts and come back on the
/// same address. Two operators run through it: one without leader election (its watches must
/// reconnect by themselves) and one with it (it gives up the Lease during the outage, which must not
/// end the process, and takes it again afterwards). Default resync (minutes): everything after the
/// restart comes through the watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_recovers_from_an_api_server_restart() {
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1?} {what}", t0.elapsed());
    let mut cp = ControlPlane::start();
    phase("control plane up");
    install_crd(&cp);
    let client: Client = cp.kube_client().await;
    namespace(&client, "plain", &[]).await;
    namespace(&client, "elected", &[]).await;
    let image = ["--proxy-image", "example.test/kubewsgi:1"];
    let mut plain = Operator::start(&cp, &[&["--namespace", "plain"][..], &image].concat());
    let mut elected = Operator::start(
        &cp,
        &[
            &[
                "--namespace",
                "elected",
                "--leader-elect",
                "--lease-namespace",
                "elected",
            ][..],
            &image,
        ]
        .concat(),
    );
    for ns in ["plain", "elected"] {
        let apps = Api::<WsgiApp>::namespaced(client.clone(), ns);
        let deps = Api::<Deployment>::namespaced(client.clone(), ns);
        apps.create(
            &PostParams::default(),
            &app(ns, "before", "example.test/a:1", None),
        )
        .await
        .unwrap();
        eventually(
            &format!("{ns}: the Deployment made before the restart"),
            || app_image(&deps, "before"),
        )
        .await;
    }
    assert_eq!(elected.metric("kubewsgi_controller_leader"), Some(1.0));
    phase("both operators reconciled");

    tokio::task::block_in_place(|| cp.stop_for_restart());
    phase("control plane down");
    // The outage lasts until the elected operator has given up its Lease.
    eventually(
        "the elected operator to step down during the outage",
        || async { (elected.metric("kubewsgi_controller_leader") == Some(0.0)).then_some(()) },
    )
    .await;
    // Same ports, keys and data: the test's client and the operators reconnect by themselves.
    phase("the elected operator stepped down");
    tokio::task::block_in_place(|| cp.restart());
    phase("control plane restarted");

    tokio::join!(resumes(&client, "plain"), resumes(&client, "elected"));
    phase("both operators resumed");

    for (name, op) in [("plain", &mut plain), ("elected", &mut elected)] {
        assert_eq!(op.http_get("/readyz").0, 200, "{name}: {}", op.logs());
        assert_eq!(op.metric("kubewsgi_controller_leader"), Some(1.0), "{name}");
        let status = op.terminate();
        assert!(
            status.success(),
            "{name}: the operator did not run to a clean exit: {status:?}\n{}",
            op.logs()
        );
    }
}

/// The proxy's private key comes only from the Secret named in `spec.tls.secretName`, mounted
/// read-only into the proxy container: never through the environment, never into the app container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_key_only_from_a_read_only_secret_volume() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    let client: Client = cp.kube_client().await;
    namespace(&client, NS, &[]).await;
    let op = Operator::start(&cp, &["--namespace", NS]);
    let apps = Api::<WsgiApp>::namespaced(client.clone(), NS);
    let deps = Api::<Deployment>::namespaced(client.clone(), NS);
    apps.create(
        &PostParams::default(),
        &app(NS, "secure", "example.test/s:1", Some("secure-tls")),
    )
    .await
    .unwrap();
    let dep = eventually("the Deployment", || async {
        deps.get_opt("secure").await.ok().flatten()
    })
    .await;
    let pod = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();

    let secret_volumes: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.secret.is_some())
        .collect();
    assert_eq!(secret_volumes.len(), 1, "{:?}", pod.volumes);
    let volume = secret_volumes[0];
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("secure-tls")
    );

    let proxy = container(&dep, "proxy");
    let mounts: Vec<_> = proxy
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name == volume.name)
        .collect();
    assert_eq!(mounts.len(), 1, "{:?}", proxy.volume_mounts);
    assert_eq!(mounts[0].read_only, Some(true), "{:?}", mounts[0]);
    let dir = mounts[0].mount_path.trim_end_matches('/');
    let args: Vec<String> = proxy
        .command
        .iter()
        .flatten()
        .chain(proxy.args.iter().flatten())
        .cloned()
        .collect();
    let key = args
        .iter()
        .position(|a| a == "--tls-key")
        .map(|i| args[i + 1].clone())
        .unwrap_or_else(|| panic!("the proxy gets no --tls-key: {args:?}"));
    assert!(
        key.starts_with(&format!("{dir}/")),
        "--tls-key {key} is not in the Secret volume at {dir}"
    );

    for c in containers(&dep) {
        if c.name != "proxy" {
            assert!(
                !c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == volume.name),
                "container {} mounts the TLS Secret",
                c.name
            );
        }
        for e in c.env.iter().flatten() {
            let from_secret = e
                .value_from
                .as_ref()
                .is_some_and(|v| v.secret_key_ref.is_some());
            assert!(
                !from_secret,
                "container {} reads a Secret into env {}",
                c.name, e.name
            );
            let value = e.value.as_deref().unwrap_or_default();
            assert!(
                !value.contains("PRIVATE KEY") && !value.contains("secure-tls"),
                "container {} env {} carries key material",
                c.name,
                e.name
            );
        }
        assert!(
            !c.env_from.iter().flatten().any(|e| e.secret_ref.is_some()),
            "container {} takes env from a Secret",
            c.name
        );
    }
    drop(op);
}

/// A spec the WsgiApp schema admits but the API server refuses for the Deployment (a pod label
/// value with spaces): the refusal shows in the WsgiApp's status, and fixing the spec clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_apply_is_reported_in_the_status_until_the_spec_is_fixed() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    let client: Client = cp.kube_client().await;
    let ns = "refused";
    namespace(&client, ns, &[]).await;
    let _op = Operator::start(&cp, &["--namespace", ns]);
    let apps = Api::<WsgiApp>::namespaced(client.clone(), ns);
    let deps = Api::<Deployment>::namespaced(client.clone(), ns);
    let mut bad = app(ns, "labelled", "example.test/l:1", None);
    bad.spec.pod_template.labels = [("tier".to_string(), "front end!".to_string())].into();
    apps.create(&PostParams::default(), &bad).await.unwrap();

    let c = eventually("Degraded: ReconcileFailed", || async {
        let app = apps.get("labelled").await.ok()?;
        let c = app.status?.condition("Degraded")?.clone();
        (c.reason == "ReconcileFailed").then_some(c)
    })
    .await;
    assert_eq!(c.status, "True");
    assert!(
        c.message.contains("labels") && c.message.contains("front end!"),
        "the message does not say what was refused: {}",
        c.message
    );
    assert!(deps.get_opt("labelled").await.unwrap().is_none());

    apps.patch(
        "labelled",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"podTemplate": {"labels": {"tier": "front-end"}}}})),
    )
    .await
    .unwrap();
    eventually("the Deployment", || async {
        deps.get_opt("labelled").await.ok().flatten()
    })
    .await;
    let c = eventually("Degraded recomputed", || async {
        let app = apps.get("labelled").await.ok()?;
        let c = app.status?.condition("Degraded")?.clone();
        (c.reason != "ReconcileFailed").then_some(c)
    })
    .await;
    assert_eq!(c.status, "False", "{c:?}");
}
