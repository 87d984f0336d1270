//! The operator against a real kube-apiserver: a WsgiApp becomes a Deployment, Service and PDB with
//! the right pod; updates roll; `kubectl scale` works; status follows the Deployment and the pods;
//! idle resyncs write nothing; deleted children come back; the pod passes the restricted profile.

#[path = "support_cp/mod.rs"]
mod support_cp;

#[path = "controller_support/mod.rs"]
mod controller_support;

use controller_support::{Operator, eventually, install_crd, namespace};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kubewsgi::crd::WsgiApp;
use serde_json::json;
use support_cp::ControlPlane;

const NS: &str = "apps";

fn container<'a>(dep: &'a Deployment, name: &str) -> &'a Container {
    let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn command(c: &Container) -> String {
    c.command.clone().unwrap_or_default().join(" ")
}

fn config_hash(dep: &Deployment) -> String {
    dep.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["kubewsgi.io/config-hash"]
        .clone()
}

async fn condition(
    apps: &Api<WsgiApp>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let app = apps.get(name).await.ok()?;
    let st = app.status?;
    let c = st.condition(type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_condition(
    apps: &Api<WsgiApp>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    eventually(&format!("{name} {type_}={status} ({reason})"), || async {
        condition(apps, name, type_)
            .await
            .filter(|(s, r, _)| s == status && r == reason)
            .map(|(_, _, m)| m)
    })
    .await
}

/// Plays the Deployment controller: reports `ready` of the desired pods as updated and available.
async fn set_rollout(deps: &Api<Deployment>, name: &str, ready: i32) {
    let dep = deps.get(name).await.unwrap();
    let status = json!({"status": {
        "observedGeneration": dep.metadata.generation,
        "replicas": ready, "updatedReplicas": ready, "readyReplicas": ready, "availableReplicas": ready,
    }});
    deps.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_wsgiapps() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    let client: Client = cp.kube_client().await;
    namespace(&client, NS, &[]).await;
    let op = Operator::start(
        &cp,
        &[
            "--resync-seconds",
            "2",
            "--proxy-image",
            "example.test/kubewsgi:1",
        ],
    );

    let apps = Api::<WsgiApp>::namespaced(client.clone(), NS);
    let deps = Api::<Deployment>::namespaced(client.clone(), NS);
    let svcs = Api::<Service>::namespaced(client.clone(), NS);
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), NS);
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), NS);

    let app: WsgiApp = serde_json::from_value(json!({
        "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp",
        "metadata": {"name": "shop", "namespace": NS},
        "spec": {
            "image": "example.test/shop:1", "app": "shop.wsgi:application",
            "workers": {"processes": 3, "threads": 2, "timeoutSeconds": 20},
            "static": [{"urlPath": "/static", "dir": "staticfiles"}],
            "proxy": {"maxBodySize": "20m", "queueTimeoutSeconds": 9},
            "env": [{"name": "DJANGO_SETTINGS_MODULE", "value": "shop.settings"}],
            "service": {"port": 8000}
        }
    }))
    .unwrap();
    let app = apps.create(&PostParams::default(), &app).await.unwrap();

    // --- Deployment, Service, pod template
    let dep = eventually("the Deployment", || async {
        deps.get_opt("shop").await.unwrap()
    })
    .await;
    let owner = &dep.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("WsgiApp", app.uid().unwrap().as_str(), Some(true))
    );
    let spec = dep.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.selector.match_labels.as_ref().unwrap()["kubewsgi.io/app"],
        "shop"
    );
    let pod = spec.template.spec.clone().unwrap();
    let proxy = container(&dep, "proxy");
    assert_eq!(proxy.image.as_deref(), Some("example.test/kubewsgi:1"));
    let pc = command(proxy);
    for part in [
        "kubewsgi proxy --listen 0.0.0.0:8080 --admin 0.0.0.0:9090 --upstream unix:/run/kubewsgi/app.sock --control-socket /run/kubewsgi/control.sock",
        "--static /static=/run/kubewsgi/static/0",
        "--max-body-size 20m",
        "--queue-timeout 9",
    ] {
        assert!(pc.contains(part), "proxy command `{pc}` lacks `{part}`");
    }
    let ports: Vec<(String, i32)> = proxy
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [("http".to_string(), 8080), ("admin".to_string(), 9090)]
    );
    let ready = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (ready.path.as_deref(), &ready.port),
        (
            Some("/readyz"),
            &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("admin".into())
        )
    );
    assert_eq!(
        proxy
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert!(
        proxy
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .is_some(),
        "proxy preStop drain"
    );

    let worker = container(&dep, "app");
    assert_eq!(worker.image.as_deref(), Some("example.test/shop:1"));
    assert_eq!(
        command(worker),
        "kubewsgi worker shop.wsgi:application --socket /run/kubewsgi/app.sock --control-socket /run/kubewsgi/control.sock --workers 3 --threads 2 --timeout 20"
    );
    assert_eq!(
        worker.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    let env: Vec<(String, Option<String>)> = worker
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    assert!(
        env.contains(&(
            "DJANGO_SETTINGS_MODULE".into(),
            Some("shop.settings".into())
        )),
        "{env:?}"
    );
    assert!(
        env.contains(&("TMPDIR".into(), Some("/var/tmp".into()))),
        "{env:?}"
    );
    for c in [proxy, worker] {
        let mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(
            mounts.contains(&"/run/kubewsgi"),
            "{} mounts {mounts:?}",
            c.name
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
    }
    let run = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "run")
        .expect("the shared volume");
    assert!(run.empty_dir.is_some());
    let init = &pod
        .init_containers
        .as_ref()
        .expect("the static-files init container")[0];
    assert_eq!(init.image.as_deref(), Some("example.test/shop:1"));
    let ic = command(init);
    assert!(
        ic.ends_with("staticfiles /run/kubewsgi/static/0"),
        "init command {ic}"
    );
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(
        (
            psc.run_as_non_root,
            psc.seccomp_profile.as_ref().unwrap().type_.as_str()
        ),
        (Some(true), "RuntimeDefault")
    );

    let svc = eventually("the Service", || async {
        svcs.get_opt("shop").await.unwrap()
    })
    .await;
    let sp = svc.spec.unwrap();
    let ports = sp.ports.unwrap();
    assert_eq!(ports.len(), 1, "only the http port is on the Service");
    assert_eq!(ports[0].port, 8000);
    assert_eq!(
        ports[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()))
    );
    assert_eq!(sp.selector.unwrap()["kubewsgi.io/app"], "shop");
    assert!(
        pdbs.get_opt("shop").await.unwrap().is_none(),
        "no PDB for one replica"
    );

    // --- status before any pod is ready
    wait_condition(&apps, "shop", "Ready", "False", "PodsNotReady").await;
    wait_condition(&apps, "shop", "Progressing", "True", "RollingOut").await;
    wait_condition(&apps, "shop", "Degraded", "False", "AsExpected").await;
    let st = apps.get("shop").await.unwrap().status.unwrap();
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.selector.as_deref(), Some("kubewsgi.io/app=shop"));
    assert_eq!(
        st.url.as_deref(),
        Some("http://shop.apps.svc.cluster.local:8000")
    );

    // --- the rollout completes
    set_rollout(&deps, "shop", 1).await;
    wait_condition(&apps, "shop", "Ready", "True", "AllPodsReady").await;
    wait_condition(&apps, "shop", "Progressing", "False", "RolloutComplete").await;
    assert_eq!(
        apps.get("shop")
            .await
            .unwrap()
            .status
            .unwrap()
            .ready_replicas,
        Some(1)
    );

    // --- idle resyncs write nothing
    let rvs = || async {
        (
            deps.get("shop").await.unwrap().resource_version(),
            svcs.get("shop").await.unwrap().resource_version(),
            apps.get("shop").await.unwrap().resource_version(),
        )
    };
    let before = rvs().await;
    let reconciles = || {
        op.metric("kubewsgi_controller_reconciles_total{result=\"ok\"}")
            .unwrap_or(0.0)
    };
    let start = reconciles();
    eventually("three more reconciles", || async {
        (reconciles() >= start + 3.0).then_some(())
    })
    .await;
    assert_eq!(rvs().await, before, "an idle resync changed an object");

    // --- a spec update propagates and rolls the pods
    let hash = config_hash(&deps.get("shop").await.unwrap());
    let patch = json!({"spec": {"workers": {"processes": 5}}});
    apps.patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let dep = eventually("the Deployment to follow the new spec", || async {
        let d = deps.get("shop").await.unwrap();
        command(container(&d, "app"))
            .contains("--workers 5")
            .then_some(d)
    })
    .await;
    assert_ne!(
        config_hash(&dep),
        hash,
        "the pod template hash changes with the spec"
    );
    wait_condition(&apps, "shop", "Progressing", "True", "RollingOut").await;
    eventually("observedGeneration 2", || async {
        (apps.get("shop").await.unwrap().status?.observed_generation == Some(2)).then_some(())
    })
    .await;

    // --- kubectl scale through the scale subresource: Deployment replicas and a PDB follow
    cp.kubectl_ok(["scale", "-n", NS, "wsgiapp/shop", "--replicas=3"]);
    eventually("3 Deployment replicas", || async {
        (deps.get("shop").await.unwrap().spec?.replicas == Some(3)).then_some(())
    })
    .await;
    let pdb = eventually("the PDB", || async { pdbs.get_opt("shop").await.unwrap() }).await;
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    set_rollout(&deps, "shop", 3).await;
    eventually(
        "status.replicas 3 through the scale subresource",
        || async {
            let out = cp.kubectl_ok([
                "get",
                "-n",
                NS,
                "--raw",
                "/apis/kubewsgi.io/v1alpha1/namespaces/apps/wsgiapps/shop/scale",
            ]);
            let scale: serde_json::Value = serde_json::from_str(&out).unwrap();
            (scale["status"]["replicas"] == 3
                && scale["status"]["selector"] == "kubewsgi.io/app=shop")
                .then_some(())
        },
    )
    .await;
    cp.kubectl_ok(["scale", "-n", NS, "wsgiapp/shop", "--replicas=1"]);
    eventually("the PDB to go at one replica", || async {
        pdbs.get_opt("shop").await.unwrap().is_none().then_some(())
    })
    .await;

    // --- a failed rollout is Degraded
    let status = json!({"status": {"conditions": [{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"shop-1\" has timed out progressing."
    }]}});
    deps.patch_status("shop", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let msg = wait_condition(
        &apps,
        "shop",
        "Degraded",
        "True",
        "ProgressDeadlineExceeded",
    )
    .await;
    assert!(msg.contains("timed out progressing"), "{msg}");
    wait_condition(
        &apps,
        "shop",
        "Progressing",
        "False",
        "ProgressDeadlineExceeded",
    )
    .await;

    // --- a crash-looping pod is Degraded with the app's termination message (its import traceback)
    let template = deps.get("shop").await.unwrap().spec.unwrap().template;
    let mut pod: Pod = Pod {
        metadata: template.metadata.unwrap(),
        spec: template.spec,
        status: None,
    };
    pod.metadata.name = Some("shop-crashing".into());
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let traceback = "Traceback (most recent call last):\n  File \"shop/wsgi.py\", line 1\nModuleNotFoundError: No module named 'shop.settingz'";
    let status = json!({"status": {"containerStatuses": [
        {"name": "proxy", "image": "example.test/kubewsgi:1", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
        {"name": "app", "image": "example.test/shop:1", "imageID": "", "ready": false, "restartCount": 4,
         "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
         "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "message": traceback}}}
    ]}});
    Api::<Pod>::namespaced(client.clone(), NS)
        .patch_status(
            "shop-crashing",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    let msg = wait_condition(&apps, "shop", "Degraded", "True", "CrashLoopBackOff").await;
    assert!(
        msg.contains("container app")
            && msg.contains("exit code 3")
            && msg.contains("No module named 'shop.settingz'"),
        "{msg}"
    );
    Api::<Pod>::namespaced(client.clone(), NS)
        .delete("shop-crashing", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let status = json!({"status": {"conditions": null}});
    deps.patch_status("shop", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    set_rollout(&deps, "shop", 1).await;
    wait_condition(&apps, "shop", "Degraded", "False", "AsExpected").await;
    wait_condition(&apps, "shop", "Ready", "True", "AllPodsReady").await;

    // --- a deleted Deployment is recreated; a foreign edit of an owned field is undone
    let old_uid = deps.get("shop").await.unwrap().uid();
    deps.delete("shop", &DeleteParams::default()).await.unwrap();
    eventually("the Deployment to be recreated", || async {
        deps.get_opt("shop")
            .await
            .unwrap()
            .filter(|d| d.uid() != old_uid)
            .map(|_| ())
    })
    .await;
    let edit = json!({"spec": {"type": "NodePort"}});
    svcs.patch("shop", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    eventually("the Service type to be restored", || async {
        (svcs.get("shop").await.unwrap().spec?.type_.as_deref() == Some("ClusterIP")).then_some(())
    })
    .await;

    // --- HPA mode: an autoscaling/v2 HPA on the WsgiApp's scale subresource
    let patch = json!({"spec": {"autoscaling": {"enabled": true, "mode": "hpa", "minReplicas": 2, "maxReplicas": 5, "targetQueueDepth": 3}}});
    apps.patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let hpa = eventually("the HPA", || async { hpas.get_opt("shop").await.unwrap() }).await;
    let hs = hpa.spec;
    assert_eq!(
        (
            hs.scale_target_ref.kind.as_str(),
            hs.scale_target_ref.name.as_str()
        ),
        ("WsgiApp", "shop")
    );
    assert_eq!((hs.min_replicas, hs.max_replicas), (Some(2), 5));
    let pods_metric = hs.metrics.unwrap()[0].pods.clone().unwrap();
    assert_eq!(pods_metric.metric.name, "kubewsgi_queue_depth");
    assert_eq!(pods_metric.target.average_value.unwrap().0, "3");
    eventually("a PDB while up to 5 pods may run", || async {
        pdbs.get_opt("shop").await.unwrap()
    })
    .await;

    // The HPA scales through the scale subresource, like kubectl scale.
    cp.kubectl_ok(["scale", "-n", NS, "wsgiapp/shop", "--replicas=3"]);
    eventually("3 Deployment replicas in hpa mode", || async {
        (deps.get("shop").await.unwrap().spec?.replicas == Some(3)).then_some(())
    })
    .await;

    // --- builtin mode: the HPA goes; the autoscaler takes the replicas over at their current
    // count, and the operator stops applying them
    let patch = json!({"spec": {"autoscaling": {"mode": "builtin"}}});
    apps.patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("the HPA to go", || async {
        hpas.get_opt("shop").await.unwrap().is_none().then_some(())
    })
    .await;
    let dep = eventually("the operator to stop owning the replicas", || async {
        let d = deps.get("shop").await.unwrap();
        (!kubewsgi::controller::scale::owns_replicas(&d, "kubewsgi")).then_some(d)
    })
    .await;
    assert!(
        kubewsgi::controller::scale::owns_replicas(&dep, "kubewsgi-autoscaler"),
        "{:?}",
        dep.metadata.managed_fields
    );
    assert_eq!(
        dep.spec.unwrap().replicas,
        Some(3),
        "switching to the builtin autoscaler reset the replicas"
    );
    let autoscaler = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"}, "spec": {"replicas": 4}});
    eventually(
        "the autoscaler's replicas to be accepted without conflict",
        || async {
            deps.patch(
                "shop",
                &PatchParams::apply("kubewsgi-autoscaler"),
                &Patch::Apply(&autoscaler),
            )
            .await
            .ok()
        },
    )
    .await;
    let start = reconciles();
    eventually("two more reconciles", || async {
        (reconciles() >= start + 2.0).then_some(())
    })
    .await;
    assert_eq!(
        deps.get("shop").await.unwrap().spec.unwrap().replicas,
        Some(4),
        "the operator fought the autoscaler"
    );

    // --- Events and metrics
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("shop"))
        .filter_map(|e| e.reason.clone())
        .collect();
    for r in [
        "DeploymentCreated",
        "ServiceCreated",
        "DeploymentUpdated",
        "PodDisruptionBudgetCreated",
        "PodDisruptionBudgetDeleted",
        "HorizontalPodAutoscalerCreated",
        "CrashLoopBackOff",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
    assert_eq!(op.http_get("/healthz").0, 200);
    assert_eq!(op.http_get("/readyz").0, 200);
    let (_, metrics) = op.http_get("/metrics");
    assert!(
        metrics.contains("kubewsgi_controller_reconcile_duration_seconds_count"),
        "{metrics}"
    );
    assert_eq!(op.metric("kubewsgi_controller_leader"), Some(1.0));
}

/// A pod made from the operator's template is admitted in a namespace enforcing the restricted Pod
/// Security Standard (and a plain pod is not, so the check is really on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_pass_the_restricted_pod_security_standard() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    let client: Client = cp.kube_client().await;
    namespace(
        &client,
        "locked",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let op = Operator::start(&cp, &["--namespace", "locked"]);
    let apps = Api::<WsgiApp>::namespaced(client.clone(), "locked");
    let app: WsgiApp = serde_json::from_value(json!({
        "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp", "metadata": {"name": "web"},
        "spec": {"image": "example.test/web:1", "app": "web:app", "static": [{"urlPath": "/s", "dir": "/srv/static"}],
                 "tls": {"secretName": "web-tls"}}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let deps = Api::<Deployment>::namespaced(client.clone(), "locked");
    let dep = eventually("the Deployment", || async {
        deps.get_opt("web").await.unwrap()
    })
    .await;
    let template = dep.spec.unwrap().template;
    let pods = Api::<Pod>::namespaced(client.clone(), "locked");
    let mut pod = Pod {
        metadata: template.metadata.unwrap(),
        spec: template.spec,
        status: None,
    };
    pod.metadata.name = Some("web-probe".into());
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("restricted namespace refused the pod: {e}"));

    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "example.test/x:1"}]}
    }))
    .unwrap();
    let err = pods
        .create(&PostParams::default(), &plain)
        .await
        .expect_err("a pod without a security context is refused");
    assert!(err.to_string().contains("restricted"), "{err}");
    drop(op);
}
