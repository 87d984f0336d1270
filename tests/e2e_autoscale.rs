//! End to end on the full local control plane: slow requests queue in the pods' proxies, the
//! operator's builtin autoscaler scrapes the queue depth and scales the Deployment up; the new pods
//! join the Service and serve; once idle it scales back down.

#[path = "support_cp/mod.rs"]
mod support_cp;

#[path = "controller_support/mod.rs"]
mod controller_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use controller_support::{Operator, install_crd};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use support_cp::{ControlPlane, is_ready, pod_get};

const TIMEOUT: Duration = Duration::from_secs(150);

fn ready_ips(list: &[Pod]) -> Vec<String> {
    list.iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect()
}

#[test]
fn queued_slow_requests_scale_the_deployment_up_and_idle_scales_it_down() {
    let cp = ControlPlane::start_full();
    let app_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/e2e_slow");
    cp.write_images(&[("example/slow:1", &app_dir)]);
    install_crd(&cp);
    let _operator = Operator::start(&cp, &[]);
    let manifest = cp.dir.join("slow.yaml");
    std::fs::write(
        &manifest,
        r#"
apiVersion: kubewsgi.io/v1alpha1
kind: WsgiApp
metadata: {name: slow, namespace: default}
spec:
  image: example/slow:1
  app: "app:app"
  workers: {processes: 1, threads: 1}
  proxy: {queueTimeoutSeconds: 60, upstreamTimeoutSeconds: 60}
  autoscaling:
    enabled: true
    minReplicas: 1
    maxReplicas: 3
    targetQueueDepth: 1
    stableWindowSeconds: 10
    scaleDownDelaySeconds: 0
"#,
    )
    .unwrap();
    cp.kubectl_ok(["apply", "-f", manifest.to_str().unwrap()]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = cp.kube_client().await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
        let lp = ListParams::default().labels("kubewsgi.io/app=slow");
        let first = cp
            .wait("the first pod to be ready", TIMEOUT, || async {
                let ips = ready_ips(&pods.list(&lp).await.ok()?.items);
                (ips.len() == 1).then(|| ips[0].clone())
            })
            .await;

        // Six clients, each holding a 2 s request against a pod with one worker thread: about five
        // requests wait in the proxy's queue at any time.
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..6 {
            let (stop, addr) = (stop.clone(), format!("{first}:8080"));
            clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = pod_get(&addr, "/?s=2", Duration::from_secs(90)).await;
                }
            }));
        }
        let replicas = |d: Option<Deployment>| d?.spec?.replicas;
        cp.wait(
            "the autoscaler to scale the Deployment up",
            TIMEOUT,
            || async {
                let r = replicas(deployments.get_opt("slow").await.ok()?)?;
                (r > 1).then_some(r)
            },
        )
        .await;
        // The new pods become ready and serve.
        let ips = cp
            .wait("more than one ready pod", TIMEOUT, || async {
                let ips = ready_ips(&pods.list(&lp).await.ok()?.items);
                (ips.len() > 1).then_some(ips)
            })
            .await;
        for ip in ips.iter().filter(|ip| **ip != first) {
            let r = pod_get(&format!("{ip}:8080"), "/?s=0", Duration::from_secs(60))
                .await
                .expect("a new pod answers");
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let max = replicas(deployments.get_opt("slow").await.unwrap()).unwrap();
        assert!(max <= 3, "bounded by maxReplicas, got {max}");

        // Idle: back to minReplicas after the stable window.
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
        cp.wait(
            "the autoscaler to scale back down to 1",
            TIMEOUT,
            || async { (replicas(deployments.get_opt("slow").await.ok()?)? == 1).then_some(()) },
        )
        .await;
    });
}
