//! The status the controller owns: conditions from the Deployment's rollout and the pods' containers.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use super::{labels, objects};
use crate::crd::{DEGRADED, PROGRESSING, READY, WsgiApp};

/// Container waiting reasons that mean the pod will not become ready by itself.
const FAILING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];
/// Condition messages keep the end of a long termination message: a traceback's last lines name the error.
const MAX_MESSAGE: usize = 4000;

/// The status fields the controller writes (the autoscaler writes the others), as a merge patch body.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OwnedStatus {
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub selector: String,
    pub url: String,
}

impl OwnedStatus {
    /// Whether the WsgiApp's current status already says this.
    pub fn matches(&self, app: &WsgiApp) -> bool {
        let Some(s) = &app.status else { return false };
        s.observed_generation == self.observed_generation
            && s.conditions == self.conditions
            && s.replicas == Some(self.replicas)
            && s.ready_replicas == Some(self.ready_replicas)
            && s.selector.as_deref() == Some(&self.selector)
            && s.url.as_deref() == Some(&self.url)
    }
}

/// Status fields only the builtin autoscaler writes.
pub const AUTOSCALER_FIELDS: [&str; 4] = [
    "desiredReplicas",
    "queueDepth",
    "concurrency",
    "lastScaleTime",
];

/// Whether the status still holds fields of the builtin autoscaler.
pub fn has_autoscaler_fields(app: &WsgiApp) -> bool {
    app.status.as_ref().is_some_and(|s| {
        s.desired_replicas.is_some()
            || s.queue_depth.is_some()
            || s.concurrency.is_some()
            || s.last_scale_time.is_some()
    })
}

/// Reason of `Degraded` while the API server refuses what the controller applies.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// The conditions of `app` with `Degraded` saying the reconcile failed with `message`; `None`
/// when they already say so (a retry writes nothing). The next successful reconcile recomputes
/// `Degraded` and clears it.
pub fn reconcile_failed(app: &WsgiApp, message: &str, now: Timestamp) -> Option<Vec<Condition>> {
    let message = tail(message.to_string());
    let old = app.status.clone().unwrap_or_default();
    let before = old.condition(DEGRADED);
    if before
        .is_some_and(|c| c.status == "True" && c.reason == RECONCILE_FAILED && c.message == message)
    {
        return None;
    }
    let degraded = Condition {
        type_: DEGRADED.into(),
        status: "True".into(),
        reason: RECONCILE_FAILED.into(),
        message,
        observed_generation: app.metadata.generation,
        last_transition_time: before
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now)),
    };
    let mut conditions: Vec<Condition> = old
        .conditions
        .into_iter()
        .filter(|c| c.type_ != DEGRADED)
        .collect();
    conditions.push(degraded);
    Some(conditions)
}

/// One condition before its transition time is settled.
struct Cond {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

/// Computes the controller's status of `app` from its Deployment and pods; condition transition
/// times carry over from the current status when a condition's status did not change.
pub fn compute(
    app: &WsgiApp,
    deployment: &Deployment,
    pods: &[Pod],
    now: Timestamp,
) -> OwnedStatus {
    let generation = app.metadata.generation;
    let conds = conditions(deployment, pods);
    let old = app.status.clone().unwrap_or_default();
    let conditions = conds
        .into_iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let last_transition_time = old
                .condition(c.type_)
                .filter(|o| o.status == status)
                .map(|o| o.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: c.type_.into(),
                status: status.into(),
                reason: c.reason.into(),
                message: c.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    let st = deployment.status.clone().unwrap_or_default();
    OwnedStatus {
        observed_generation: generation,
        conditions,
        replicas: st.replicas.unwrap_or(0),
        ready_replicas: st.ready_replicas.unwrap_or(0),
        selector: labels::selector_string(&app.name_any()),
        url: objects::url(app),
    }
}

fn conditions(deployment: &Deployment, pods: &[Pod]) -> Vec<Cond> {
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let st = deployment.status.clone().unwrap_or_default();
    let observed =
        st.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
    let (total, updated) = (st.replicas.unwrap_or(0), st.updated_replicas.unwrap_or(0));
    let (ready, available) = (
        st.ready_replicas.unwrap_or(0),
        st.available_replicas.unwrap_or(0),
    );
    let dep_cond = |t: &str| st.conditions.iter().flatten().find(|c| c.type_ == t);
    let deadline = dep_cond("Progressing")
        .filter(|c| c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    let replica_failure = dep_cond("ReplicaFailure").filter(|c| c.status == "True");
    let complete = observed && updated >= desired && total == updated && available >= desired;

    let ready_cond = if desired == 0 {
        Cond {
            type_: READY,
            status: false,
            reason: "ScaledToZero",
            message: "0 pods desired".into(),
        }
    } else if complete {
        Cond {
            type_: READY,
            status: true,
            reason: "AllPodsReady",
            message: format!("{ready}/{desired} pods ready"),
        }
    } else {
        Cond {
            type_: READY,
            status: false,
            reason: "PodsNotReady",
            message: format!(
                "{available}/{desired} pods available, {updated} updated to the current spec"
            ),
        }
    };

    let progressing = if let Some(c) = deadline {
        Cond {
            type_: PROGRESSING,
            status: false,
            reason: "ProgressDeadlineExceeded",
            message: c.message.clone().unwrap_or_default(),
        }
    } else if complete {
        Cond {
            type_: PROGRESSING,
            status: false,
            reason: "RolloutComplete",
            message: format!("{desired} pods run the current spec"),
        }
    } else if !observed || updated < desired || total > updated {
        Cond {
            type_: PROGRESSING,
            status: true,
            reason: "RollingOut",
            message: format!(
                "{updated}/{desired} pods updated, {} old pods remaining",
                (total - updated).max(0)
            ),
        }
    } else {
        Cond {
            type_: PROGRESSING,
            status: true,
            reason: "WaitingForPods",
            message: format!("{available}/{desired} pods available"),
        }
    };

    let degraded = if let Some(f) = pod_failure(pods) {
        Cond {
            type_: DEGRADED,
            status: true,
            reason: f.reason,
            message: f.message,
        }
    } else if let Some(c) = deadline {
        Cond {
            type_: DEGRADED,
            status: true,
            reason: "ProgressDeadlineExceeded",
            message: c.message.clone().unwrap_or_default(),
        }
    } else if let Some(c) = replica_failure {
        Cond {
            type_: DEGRADED,
            status: true,
            reason: "ReplicaFailure",
            message: c.message.clone().unwrap_or_default(),
        }
    } else {
        Cond {
            type_: DEGRADED,
            status: false,
            reason: "AsExpected",
            message: String::new(),
        }
    };
    vec![ready_cond, progressing, degraded]
}

struct PodFailure {
    reason: &'static str,
    message: String,
}

/// The first failing container among the pods (by pod name, for a stable message), with its
/// termination message: for the app container, the import traceback the worker wrote.
fn pod_failure(pods: &[Pod]) -> Option<PodFailure> {
    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    pods.into_iter().find_map(|p| {
        let st = p.status.as_ref()?;
        let all = st
            .init_container_statuses
            .iter()
            .flatten()
            .chain(st.container_statuses.iter().flatten());
        all.into_iter()
            .find_map(|cs| container_failure(&p.name_any(), cs))
    })
}

fn container_failure(pod: &str, cs: &ContainerStatus) -> Option<PodFailure> {
    let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
    let waiting_reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or("");
    let terminated = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
    let reason = match FAILING_REASONS
        .iter()
        .copied()
        .find(|r| *r == waiting_reason)
    {
        Some(r) => r,
        // Between two back-offs a crash-looping container runs, not yet ready, for a few seconds:
        // still the same failure, with the same message, so the condition neither flips nor
        // rewrites the status each cycle.
        None if running
            && !cs.ready
            && cs.restart_count > 0
            && terminated.is_some_and(|t| t.exit_code != 0) =>
        {
            "CrashLoopBackOff"
        }
        None => return None,
    };
    let mut message = format!("pod {pod} container {}: {reason}", cs.name);
    if let Some(t) = terminated {
        message.push_str(&format!(" (exit code {})", t.exit_code));
        if let Some(m) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
            message.push_str(": ");
            message.push_str(m.trim_end());
        }
    } else if let Some(m) = waiting.and_then(|w| w.message.as_deref()) {
        message.push_str(": ");
        message.push_str(m);
    }
    Some(PodFailure {
        reason,
        message: tail(message),
    })
}

fn tail(s: String) -> String {
    if s.len() <= MAX_MESSAGE {
        return s;
    }
    let mut cut = s.len() - MAX_MESSAGE;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &s[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crashed(state: serde_json::Value, ready: bool) -> ContainerStatus {
        serde_json::from_value(serde_json::json!({
            "name": "app", "image": "i", "imageID": "", "ready": ready, "restartCount": 14,
            "state": state,
            "lastState": {"terminated": {"exitCode": 3, "message": "ImportError: no module x"}},
        }))
        .unwrap()
    }

    #[test]
    fn a_crash_loop_stays_failing_while_the_container_runs_between_restarts() {
        let waiting = crashed(
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            false,
        );
        let running = crashed(
            serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
            false,
        );
        let a = container_failure("p", &waiting).expect("waiting in back-off fails");
        let b = container_failure("p", &running).expect("running again, not ready, fails");
        assert_eq!(
            (a.reason, b.reason),
            ("CrashLoopBackOff", "CrashLoopBackOff")
        );
        assert_eq!(a.message, b.message);
        assert!(
            a.message
                .ends_with("(exit code 3): ImportError: no module x"),
            "{}",
            a.message
        );
        // Once it serves again, the earlier crash no longer counts.
        let recovered = crashed(
            serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}),
            true,
        );
        assert!(container_failure("p", &recovered).is_none());
    }

    #[test]
    fn a_failed_reconcile_is_said_once_in_degraded() {
        let mut app: WsgiApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp",
            "metadata": {"name": "a", "namespace": "n", "generation": 2},
            "spec": {"image": "i", "app": "m:app"},
            "status": {"conditions": [
                {"type": "Ready", "status": "False", "reason": "PodsNotReady", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        let now = Timestamp::now();
        let conds = reconcile_failed(&app, "refused: env duplicate", now).expect("a change");
        assert_eq!(conds.len(), 2);
        assert_eq!(conds[0].type_, READY, "other conditions are kept");
        let d = &conds[1];
        assert_eq!(
            (d.type_.as_str(), d.status.as_str(), d.reason.as_str()),
            (DEGRADED, "True", RECONCILE_FAILED)
        );
        assert_eq!(d.message, "refused: env duplicate");
        assert_eq!(d.last_transition_time, Time(now));
        assert_eq!(d.observed_generation, Some(2));
        app.status.as_mut().unwrap().conditions = conds;
        assert!(
            reconcile_failed(&app, "refused: env duplicate", now).is_none(),
            "the same failure again writes nothing"
        );
    }

    #[test]
    fn long_messages_keep_their_end() {
        let s = format!("{}Error: the end", "é".repeat(3000));
        let t = tail(s);
        assert!(t.len() <= MAX_MESSAGE + 3);
        assert!(t.ends_with("Error: the end"));
    }
}
