//! The scaling policy of one `WsgiApp` (its `spec.autoscaling`), with Knative-like defaults.

use std::time::Duration;

use super::{Error, Result};
use crate::crd::Autoscaling;

/// How an app scales; every field has the default the CRD documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Lower bound of the replica count (default 1).
    pub min_replicas: u32,
    /// Upper bound of the replica count (default 10).
    pub max_replicas: u32,
    /// Share of a pod's worker slots the scaler aims to keep busy, in (0, 1] (default 0.7).
    pub target_utilization: f64,
    /// When set, the demand (queued + in-flight requests) each pod should carry; replaces
    /// `max capacity × target_utilization` as the per-pod target.
    pub target_queue_depth: Option<f64>,
    /// Averaging window of the normal (stable) estimate (default 60 s).
    pub stable_window: Duration,
    /// Averaging window of the burst (panic) estimate (default 6 s); used as at most
    /// `stable_window`, so shortening only the stable window stays a valid policy.
    pub panic_window: Duration,
    /// How long a lower recommendation must persist before replicas go down (default 0).
    pub scale_down_delay: Duration,
    /// Scale-up bound: at most `ceil(rate × ready pods)` replicas (default 1000, unbounded in practice).
    pub max_scale_up_rate: f64,
    /// Panic starts when the panic estimate reaches this multiple of the ready pods (default 2).
    pub panic_threshold: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_replicas: 1,
            max_replicas: 10,
            target_utilization: 0.7,
            target_queue_depth: None,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            scale_down_delay: Duration::ZERO,
            max_scale_up_rate: 1000.0,
            panic_threshold: 2.0,
        }
    }
}

impl Policy {
    /// Refuses values the arithmetic cannot use, naming the CRD field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| Err(Error::Policy(format!("{field} {why}")));
        // Without an activator holding requests, an app at zero pods could never come back.
        if self.min_replicas == 0 {
            return bad("minReplicas", "must be at least 1");
        }
        if self.min_replicas > self.max_replicas {
            return Err(Error::Policy(format!(
                "minReplicas ({}) must not exceed maxReplicas ({})",
                self.min_replicas, self.max_replicas
            )));
        }
        if !(self.target_utilization > 0.0 && self.target_utilization <= 1.0) {
            return bad("targetUtilization", "must be in (0, 1]");
        }
        if let Some(q) = self.target_queue_depth
            && !(q.is_finite() && q > 0.0)
        {
            return bad("targetQueueDepth", "must be a positive number");
        }
        if self.stable_window.is_zero() {
            return bad("stableWindowSeconds", "must be at least 1");
        }
        if self.panic_window.is_zero() {
            return bad("panicWindowSeconds", "must be at least 1");
        }
        // Knative refuses rates at or below 1: such a rate could never add a pod.
        if !(self.max_scale_up_rate.is_finite() && self.max_scale_up_rate > 1.0) {
            return bad("maxScaleUpRate", "must be a number greater than 1");
        }
        if !(self.panic_threshold.is_finite() && self.panic_threshold > 1.0) {
            return bad("panic threshold", "must be a number greater than 1");
        }
        Ok(())
    }

    /// The panic window actually used: never longer than the stable window.
    pub fn effective_panic_window(&self) -> Duration {
        self.panic_window.min(self.stable_window)
    }

    /// Per-pod demand target given the pods' average maximum worker capacity.
    pub fn per_pod_target(&self, max_capacity: f64) -> f64 {
        match self.target_queue_depth {
            Some(q) => q,
            None => max_capacity * self.target_utilization,
        }
    }
}

impl TryFrom<&Autoscaling> for Policy {
    type Error = Error;

    /// The policy of a `WsgiApp`'s `spec.autoscaling`, validated.
    fn try_from(spec: &Autoscaling) -> Result<Self> {
        let count = |field: &str, v: i32| {
            u32::try_from(v).map_err(|_| Error::Policy(format!("{field} must not be negative")))
        };
        let secs = |field: &str, v: i32| count(field, v).map(|s| Duration::from_secs(s.into()));
        let policy = Self {
            min_replicas: count("minReplicas", spec.min_replicas)?,
            max_replicas: count("maxReplicas", spec.max_replicas)?,
            target_utilization: spec.target_utilization,
            target_queue_depth: spec.target_queue_depth,
            stable_window: secs("stableWindowSeconds", spec.stable_window_seconds)?,
            panic_window: secs("panicWindowSeconds", spec.panic_window_seconds)?,
            scale_down_delay: secs("scaleDownDelaySeconds", spec.scale_down_delay_seconds)?,
            max_scale_up_rate: spec.max_scale_up_rate,
            ..Self::default()
        };
        policy.validate()?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_knative_like() {
        let p = Policy::default();
        p.validate().unwrap();
        assert_eq!((p.min_replicas, p.max_replicas), (1, 10));
        assert_eq!(p.stable_window, Duration::from_secs(60));
        assert_eq!(p.panic_window, Duration::from_secs(6));
        assert_eq!(p.per_pod_target(4.0), 4.0 * 0.7);
    }

    #[test]
    fn refuses_unusable_values_naming_the_field() {
        let cases: Vec<(Policy, &str)> = vec![
            (
                Policy {
                    min_replicas: 5,
                    max_replicas: 2,
                    ..Policy::default()
                },
                "minReplicas",
            ),
            (
                Policy {
                    min_replicas: 0,
                    ..Policy::default()
                },
                "minReplicas",
            ),
            (
                Policy {
                    target_utilization: 0.0,
                    ..Policy::default()
                },
                "targetUtilization",
            ),
            (
                Policy {
                    target_utilization: 1.5,
                    ..Policy::default()
                },
                "targetUtilization",
            ),
            (
                Policy {
                    target_utilization: f64::NAN,
                    ..Policy::default()
                },
                "targetUtilization",
            ),
            (
                Policy {
                    target_queue_depth: Some(0.0),
                    ..Policy::default()
                },
                "targetQueueDepth",
            ),
            (
                Policy {
                    stable_window: Duration::ZERO,
                    ..Policy::default()
                },
                "stableWindowSeconds",
            ),
            (
                Policy {
                    panic_window: Duration::ZERO,
                    ..Policy::default()
                },
                "panicWindowSeconds",
            ),
            (
                Policy {
                    max_scale_up_rate: 1.0,
                    ..Policy::default()
                },
                "maxScaleUpRate",
            ),
        ];
        for (policy, field) in cases {
            let err = policy.validate().expect_err(field).to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }

    #[test]
    fn queue_depth_target_replaces_utilization() {
        let p = Policy {
            target_queue_depth: Some(3.0),
            ..Policy::default()
        };
        assert_eq!(p.per_pod_target(100.0), 3.0);
    }

    #[test]
    fn crd_defaults_give_the_default_policy() {
        assert_eq!(
            Policy::try_from(&Autoscaling::default()).unwrap(),
            Policy::default()
        );
        let spec = Autoscaling {
            stable_window_seconds: 10,
            scale_down_delay_seconds: 3,
            max_replicas: 6,
            ..Autoscaling::default()
        };
        let p = Policy::try_from(&spec).unwrap();
        assert_eq!(p.stable_window, Duration::from_secs(10));
        assert_eq!(p.scale_down_delay, Duration::from_secs(3));
        assert_eq!(p.max_replicas, 6);
        let negative = Autoscaling {
            scale_down_delay_seconds: -1,
            ..Autoscaling::default()
        };
        let err = Policy::try_from(&negative).unwrap_err().to_string();
        assert!(err.contains("scaleDownDelaySeconds"), "{err}");
    }

    #[test]
    fn panic_window_never_exceeds_stable_window() {
        let p = Policy {
            stable_window: Duration::from_secs(4),
            ..Policy::default()
        };
        p.validate().unwrap();
        assert_eq!(p.effective_panic_window(), Duration::from_secs(4));
    }
}
