//! The Deployment, Service and PodDisruptionBudget a WsgiApp is reconciled into.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::{labels, pod, scale};
use crate::crd::WsgiApp;

/// Metadata of an object named like the WsgiApp, controlled by it.
pub fn meta(app: &WsgiApp) -> ObjectMeta {
    ObjectMeta {
        name: Some(app.name_any()),
        namespace: app.namespace(),
        labels: Some(labels::common(&app.name_any())),
        owner_references: app.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// The Deployment; `replicas` is left out when the builtin autoscaler owns it.
pub fn deployment(app: &WsgiApp, proxy_image: &str) -> Deployment {
    Deployment {
        metadata: meta(app),
        spec: Some(DeploymentSpec {
            replicas: scale::deployment_replicas(app),
            selector: LabelSelector {
                match_labels: Some(labels::selector(&app.name_any())),
                ..Default::default()
            },
            template: pod::template(app, proxy_image),
            // Surge before removing an old pod, so a rollout never lowers the serving capacity.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(5),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service: `spec.service.port` to the proxy's `http` port; the admin port stays off it.
pub fn service(app: &WsgiApp) -> Service {
    let s = &app.spec.service;
    Service {
        metadata: meta(app),
        spec: Some(ServiceSpec {
            type_: Some(s.type_.as_str().into()),
            selector: Some(labels::selector(&app.name_any())),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: s.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some(
                    if app.spec.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    }
                    .into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A PodDisruptionBudget allowing one pod down at a time, when the app may run more than one pod.
pub fn pdb(app: &WsgiApp) -> Option<PodDisruptionBudget> {
    (scale::max_replicas(app) > 1).then(|| PodDisruptionBudget {
        metadata: meta(app),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&app.name_any())),
                ..Default::default()
            }),
            // A crash-looping pod must not block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The in-cluster URL of the Service.
pub fn url(app: &WsgiApp) -> String {
    let scheme = if app.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let ns = app.namespace().unwrap_or_else(|| "default".into());
    format!(
        "{scheme}://{}.{ns}.svc.cluster.local:{}",
        app.name_any(),
        app.spec.service.port
    )
}
