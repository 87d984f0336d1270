//! Leader election: of two operators with `--leader-elect`, one holds the Lease and reconciles; on
//! SIGTERM it hands the Lease over and exits cleanly, and the standby takes over.

#[path = "support_cp/mod.rs"]
mod support_cp;

#[path = "controller_support/mod.rs"]
mod controller_support;

use std::time::Duration;

use controller_support::{Operator, eventually, install_crd};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kubewsgi::crd::WsgiApp;
use serde_json::json;
use support_cp::ControlPlane;

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("kubewsgi-controller")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_clean_handover() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    let client = cp.kube_client().await;
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let args = ["--leader-elect", "--lease-namespace", "default"];

    let mut first = Operator::start(&cp, &args);
    eventually("the first operator to lead", || async {
        (first.metric("kubewsgi_controller_leader") == Some(1.0)).then_some(())
    })
    .await;
    let first_identity = holder(&leases).await.expect("a holder in the Lease");

    let second = Operator::start(&cp, &args);
    // The standby serves health but neither leads nor reconciles while the Lease is renewed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(second.http_get("/healthz").0, 200);
    assert_ne!(
        second.metric("kubewsgi_controller_leader"),
        Some(1.0),
        "two leaders"
    );
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some(first_identity.as_str())
    );

    let status = first.terminate();
    assert!(
        status.success(),
        "the leader did not exit cleanly on SIGTERM: {status:?}\n{}",
        first.logs()
    );
    eventually("the standby to take over", || async {
        (second.metric("kubewsgi_controller_leader") == Some(1.0)).then_some(())
    })
    .await;
    let new_identity = holder(&leases).await.unwrap();
    assert_ne!(new_identity, first_identity);

    // The new leader reconciles.
    let apps = Api::<WsgiApp>::namespaced(client.clone(), "default");
    let app: WsgiApp = serde_json::from_value(json!({
        "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp", "metadata": {"name": "after-handover"},
        "spec": {"image": "example.test/a:1", "app": "a:app"}
    }))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();
    let deps = Api::<Deployment>::namespaced(client.clone(), "default");
    eventually("the new leader's Deployment", || async {
        deps.get_opt("after-handover").await.unwrap()
    })
    .await;
}
