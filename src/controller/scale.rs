//! Who owns the number of pods: the spec (and `kubectl scale`), the builtin autoscaler, or an HPA.
//!
//! With `autoscaling.enabled` and mode `builtin`, the applied Deployment carries no `replicas`; the
//! autoscaler writes them with server-side apply under [`AUTOSCALER_FIELD_MANAGER`], and fills the
//! status fields `desiredReplicas`, `queueDepth`, `concurrency` and `lastScaleTime` with a merge patch.
//! With mode `hpa`, an HPA scales the WsgiApp's scale subresource (`spec.replicas`), which the
//! controller copies to the Deployment like a manual `kubectl scale`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::{Result, objects};
use crate::crd::{AutoscalingMode, WsgiApp};

/// Field manager of the builtin autoscaler's writes to a Deployment's `spec.replicas`.
pub const AUTOSCALER_FIELD_MANAGER: &str = "kubewsgi-autoscaler";
/// The pod metric an HPA scales on (exported by every proxy).
pub const QUEUE_DEPTH_METRIC: &str = "kubewsgi_queue_depth";

/// Whether the builtin autoscaler owns the Deployment's replicas.
pub fn builtin_owns_replicas(app: &WsgiApp) -> bool {
    app.spec.autoscaling.enabled && app.spec.autoscaling.mode == AutoscalingMode::Builtin
}

/// The `replicas` the controller applies to the Deployment; `None` leaves them to the autoscaler.
pub fn deployment_replicas(app: &WsgiApp) -> Option<i32> {
    (!builtin_owns_replicas(app)).then_some(app.spec.replicas)
}

/// The most pods the app may run, which decides whether it gets a PodDisruptionBudget.
pub fn max_replicas(app: &WsgiApp) -> i32 {
    if app.spec.autoscaling.enabled {
        app.spec.autoscaling.max_replicas
    } else {
        app.spec.replicas
    }
}

/// The HPA of mode `hpa`: the WsgiApp's scale subresource on the average `kubewsgi_queue_depth`.
pub fn hpa(app: &WsgiApp) -> Option<HorizontalPodAutoscaler> {
    let a = &app.spec.autoscaling;
    if !(a.enabled && a.mode == AutoscalingMode::Hpa) {
        return None;
    }
    let target = a.target_queue_depth.unwrap_or(1.0);
    Some(HorizontalPodAutoscaler {
        metadata: objects::meta(app),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("kubewsgi.io/v1alpha1".into()),
                kind: "WsgiApp".into(),
                name: app.name_any(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Pods".into(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier {
                        name: QUEUE_DEPTH_METRIC.into(),
                        selector: None,
                    },
                    target: MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: Some(Quantity(format_quantity(target))),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(
                        (a.stable_window_seconds + a.scale_down_delay_seconds).min(3600),
                    ),
                    ..Default::default()
                }),
                scale_up: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(0),
                    ..Default::default()
                }),
            }),
        },
        ..Default::default()
    })
}

/// Before the controller stops applying `replicas` (autoscaling switched to builtin), the
/// autoscaler's field manager takes them over at the current count clamped to min..max; otherwise
/// dropping the controller's ownership would reset the Deployment to one pod.
pub async fn hand_over_replicas(api: &Api<Deployment>, app: &WsgiApp) -> Result<()> {
    let Some(dep) = api.get_opt(&app.name_any()).await? else {
        return Ok(());
    };
    if owns_replicas(&dep, AUTOSCALER_FIELD_MANAGER) {
        return Ok(());
    }
    let a = &app.spec.autoscaling;
    let current = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let replicas = current.clamp(a.min_replicas, a.max_replicas.max(a.min_replicas));
    let patch = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app.name_any()}, "spec": {"replicas": replicas}
    });
    api.patch(
        &app.name_any(),
        &PatchParams::apply(AUTOSCALER_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    tracing::info!(
        replicas,
        "the autoscaler took over the Deployment's replicas"
    );
    Ok(())
}

/// Whether `manager` owns `spec.replicas` of the Deployment, according to its managedFields.
pub fn owns_replicas(dep: &Deployment, manager: &str) -> bool {
    dep.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:spec")
                    .and_then(|s| s.get("f:replicas"))
                    .is_some()
            })
    })
}

/// A decimal Kubernetes quantity; millis keep fractional targets exact enough and always valid.
fn format_quantity(v: f64) -> String {
    let millis = (v * 1000.0).round() as i64;
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

#[cfg(test)]
mod tests {
    use super::format_quantity;

    #[test]
    fn quantities() {
        assert_eq!(format_quantity(1.0), "1");
        assert_eq!(format_quantity(2.5), "2500m");
        assert_eq!(format_quantity(0.01), "10m");
    }
}
