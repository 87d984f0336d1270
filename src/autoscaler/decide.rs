//! The per-app autoscaler state and its Knative-KPA-like decision rules.

use std::fmt::Write as _;
use std::time::Instant;

use super::Result;
use super::policy::Policy;
use super::window::{MaxWindow, Observation, Window};

/// One pod's answer to a metrics scrape (the proxy's admin `/metrics` gauges).
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    /// Pod name, for logs.
    pub pod: String,
    /// `kubewsgi_queue_depth`: requests waiting for a worker slot.
    pub queue_depth: f64,
    /// `kubewsgi_inflight_requests`: requests holding a worker slot.
    pub inflight: f64,
    /// `kubewsgi_worker_capacity`: worker slots now (processes × threads).
    pub capacity: f64,
    /// `kubewsgi_worker_max_capacity`, or `capacity` when the pod does not export it.
    pub max_capacity: f64,
}

impl PodSample {
    fn is_sane(&self) -> bool {
        [
            self.queue_depth,
            self.inflight,
            self.capacity,
            self.max_capacity,
        ]
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0)
    }
}

/// The outcome of one decision tick; `desired` is what the Deployment's replicas should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replica count to write (clamped to `min_replicas..=max_replicas`).
    pub desired: u32,
    /// Replica count the decision started from.
    pub current: u32,
    /// Ready pods the decision started from.
    pub ready: u32,
    /// True while in panic mode (no scale-down).
    pub panic: bool,
    /// Human-readable explanation, suitable for an Event.
    pub reason: String,
    /// Pods the stable-window average asks for (before rate limit, delay and clamp).
    pub stable_desired: Option<u32>,
    /// Pods the panic-window average asks for (before rate limit, delay and clamp).
    pub panic_desired: Option<u32>,
    /// Stable-window average of the app's total demand (queued + in-flight).
    pub observed_demand: Option<f64>,
    /// Panic-window average of the app's total demand.
    pub panic_demand: Option<f64>,
    /// Demand one pod is meant to carry.
    pub per_pod_target: Option<f64>,
    /// Latest tick's summed queue depth over answering pods.
    pub queue_depth: Option<f64>,
    /// Latest tick's summed in-flight requests over answering pods.
    pub inflight: Option<f64>,
}

impl Decision {
    /// True when the Deployment's replicas must change.
    pub fn changes_replicas(&self) -> bool {
        self.desired != self.current
    }
}

#[derive(Debug, Clone, Copy)]
struct Panic {
    last_trigger: Instant,
    high_water: u32,
}

/// Autoscaling state of one `WsgiApp`: recent observations, panic mode, recent recommendations.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: Policy,
    observations: Window,
    panic: Option<Panic>,
    recommendations: MaxWindow,
}

impl Autoscaler {
    /// A fresh autoscaler; refuses a policy it cannot apply.
    pub fn new(policy: Policy) -> Result<Self> {
        policy.validate()?;
        Ok(Self {
            policy,
            observations: Window::default(),
            panic: None,
            recommendations: MaxWindow::default(),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (the spec changed) and keeps what was observed.
    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        policy.validate()?;
        self.policy = policy;
        Ok(())
    }

    /// True while in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic.is_some()
    }

    /// Records one scrape tick: the samples of the pods that answered, out of `ready` ready pods.
    ///
    /// Pods that did not answer are left out rather than counted as idle; the answering pods'
    /// average is extrapolated to all ready pods, as Knative does. A tick with no usable sample
    /// records nothing, so it cannot pull the averages down.
    pub fn observe(&mut self, now: Instant, ready: u32, samples: &[PodSample]) {
        let usable: Vec<&PodSample> = samples.iter().filter(|s| s.is_sane()).collect();
        if usable.is_empty() {
            return;
        }
        let answered = u32::try_from(usable.len()).unwrap_or(u32::MAX);
        let n = f64::from(answered);
        let queue_depth: f64 = usable.iter().map(|s| s.queue_depth).sum();
        let inflight: f64 = usable.iter().map(|s| s.inflight).sum();
        let max_capacity = usable.iter().map(|s| s.max_capacity).sum::<f64>() / n;
        let pods = f64::from(ready.max(answered));
        self.observations.push(Observation {
            at: now,
            demand: (queue_depth + inflight) / n * pods,
            queue_depth,
            inflight,
            max_capacity,
            answered,
        });
        self.observations.prune(now, self.policy.stable_window);
    }

    /// Decides the replica count at `now` for a Deployment at `current` replicas, `ready` of them ready.
    ///
    /// Rules, in order:
    /// 1. No observation within the panic window (no pod answered lately): hold `current`.
    /// 2. Per-pod target = `targetQueueDepth`, else max capacity × `targetUtilization`;
    ///    each window asks for `ceil(average demand / target)` pods.
    /// 3. Scale-up is bounded by `ceil(maxScaleUpRate × ready)` (never below `current`, so the
    ///    bound cannot itself shrink the app while new pods start).
    /// 4. Panic starts when the panic window asks for ≥ threshold × ready pods, is extended by
    ///    every further such tick, and ends one stable window after the last; in panic the
    ///    panic window decides and replicas never go down.
    /// 5. Outside panic the stable window decides; a lower count takes effect only once it is
    ///    the highest recommendation of the last `scaleDownDelay` (a fresh autoscaler counts
    ///    `current` as its first recommendation).
    /// 6. The result is clamped to `minReplicas..=maxReplicas`.
    pub fn decide(&mut self, now: Instant, current: u32, ready: u32) -> Decision {
        let p = &self.policy;
        let stable_w = p.stable_window;
        let panic_w = p.effective_panic_window();
        self.observations.prune(now, stable_w);

        let Some(latest) = self.observations.latest_within(now, panic_w).copied() else {
            return self.hold(
                current,
                ready,
                format!("no pod answered its metrics scrape in the last {panic_w:?}"),
            );
        };
        let per_pod = p.per_pod_target(latest.max_capacity);
        if per_pod.is_nan() || per_pod <= 0.0 {
            return self.hold(
                current,
                ready,
                "the pods report no worker capacity".to_string(),
            );
        }
        // The latest observation lies in both windows, so both averages exist.
        let stable_demand = self
            .observations
            .average_demand(now, stable_w)
            .unwrap_or(0.0);
        let panic_demand = self
            .observations
            .average_demand(now, panic_w)
            .unwrap_or(0.0);
        let raw_stable = pods_for(stable_demand, per_pod);
        let raw_panic = pods_for(panic_demand, per_pod);

        let ready_pods = ready.max(1);
        let max_up =
            ((p.max_scale_up_rate * f64::from(ready_pods)).ceil()).min(f64::from(u32::MAX)) as u32;
        let max_up = max_up.max(current);
        let over_threshold = f64::from(raw_panic) >= p.panic_threshold * f64::from(ready_pods);

        let mut notes = String::new();
        match (&mut self.panic, over_threshold) {
            (None, true) => {
                self.panic = Some(Panic {
                    last_trigger: now,
                    high_water: current,
                });
                notes.push_str("; entering panic mode");
            }
            (Some(state), true) => state.last_trigger = now,
            (Some(state), false)
                if now.saturating_duration_since(state.last_trigger) >= stable_w =>
            {
                self.panic = None;
                let _ = write!(notes, "; leaving panic mode, no burst for {stable_w:?}");
            }
            _ => {}
        }

        let (basis, raw, mut desired) = match &mut self.panic {
            Some(state) => {
                let wanted = raw_panic.min(max_up);
                let desired = wanted.max(current).max(state.high_water);
                state.high_water = desired;
                let basis = format!(
                    "panic mode: demand {panic_demand:.1} over the last {panic_w:?} needs {raw_panic} \
                     pod(s) at {per_pod:.2} per pod (≥ {}× the {ready_pods} ready); no scale-down \
                     until {stable_w:?} after the last burst",
                    p.panic_threshold
                );
                (basis, raw_panic, desired)
            }
            None => {
                let basis = format!(
                    "demand {stable_demand:.1} averaged over {stable_w:?} needs {raw_stable} \
                     pod(s) at {per_pod:.2} per pod"
                );
                (basis, raw_stable, raw_stable.min(max_up))
            }
        };
        if raw > max_up {
            let _ = write!(notes, "; limited by maxScaleUpRate to {max_up}");
        }

        let delay = p.scale_down_delay;
        if !delay.is_zero() {
            if self.recommendations.is_empty() {
                self.recommendations.record(now, current, delay);
            }
            let held = self.recommendations.record(now, desired, delay);
            if held > desired {
                let _ = write!(
                    notes,
                    "; scale-down to {desired} waits: {held} was recommended within the last {delay:?}"
                );
                desired = held;
            }
        }

        let clamped = desired.clamp(p.min_replicas, p.max_replicas);
        if clamped < desired {
            let _ = write!(notes, "; capped at maxReplicas {}", p.max_replicas);
        } else if clamped > desired {
            let _ = write!(notes, "; raised to minReplicas {}", p.min_replicas);
        }

        Decision {
            desired: clamped,
            current,
            ready,
            panic: self.panic.is_some(),
            reason: format!("{}: {basis}{notes}", verb(current, clamped)),
            stable_desired: Some(raw_stable),
            panic_desired: Some(raw_panic),
            observed_demand: Some(stable_demand),
            panic_demand: Some(panic_demand),
            per_pod_target: Some(per_pod),
            queue_depth: Some(latest.queue_depth),
            inflight: Some(latest.inflight),
        }
    }

    /// Keeps `current` (within the bounds, which need no data) when there is nothing to decide on.
    fn hold(&self, current: u32, ready: u32, why: String) -> Decision {
        let desired = current.clamp(self.policy.min_replicas, self.policy.max_replicas);
        let bound = if desired == current {
            String::new()
        } else {
            "; within minReplicas..maxReplicas".into()
        };
        Decision {
            desired,
            current,
            ready,
            panic: self.panic.is_some(),
            reason: format!("{}: {why}{bound}", verb(current, desired)),
            stable_desired: None,
            panic_desired: None,
            observed_demand: None,
            panic_demand: None,
            per_pod_target: None,
            queue_depth: None,
            inflight: None,
        }
    }
}

/// Pods needed for `demand` at `per_pod` each.
fn pods_for(demand: f64, per_pod: f64) -> u32 {
    // 2.8 / 1.4 is 2.0000000000000004 in binary floating point: that is two pods, not three.
    let pods = (demand / per_pod - 1e-9).ceil();
    pods.clamp(0.0, f64::from(u32::MAX)) as u32
}

fn verb(current: u32, desired: u32) -> String {
    match desired.cmp(&current) {
        std::cmp::Ordering::Greater => format!("scale up from {current} to {desired}"),
        std::cmp::Ordering::Less => format!("scale down from {current} to {desired}"),
        std::cmp::Ordering::Equal => format!("hold at {current}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pods_for_rounds_up_but_not_on_float_noise() {
        assert_eq!(pods_for(2.8, 2.0 * 0.7), 2);
        assert_eq!(pods_for(2.81, 1.4), 3);
        assert_eq!(pods_for(0.0, 1.4), 0);
        assert_eq!(pods_for(0.1, 1.4), 1);
        assert_eq!(pods_for(1e30, 0.7), u32::MAX);
    }

    #[test]
    fn insane_samples_count_as_not_answered() {
        let mut a = Autoscaler::new(Policy::default()).unwrap();
        let t0 = Instant::now();
        let bad = PodSample {
            pod: "p".into(),
            queue_depth: f64::NAN,
            inflight: 0.0,
            capacity: 1.0,
            max_capacity: 1.0,
        };
        a.observe(t0, 1, &[bad]);
        let d = a.decide(t0, 3, 3);
        assert_eq!((d.desired, d.stable_desired), (3, None));
    }

    #[test]
    fn hold_respects_bounds_without_data() {
        let policy = Policy {
            min_replicas: 2,
            max_replicas: 4,
            ..Policy::default()
        };
        let mut a = Autoscaler::new(policy).unwrap();
        let t0 = Instant::now() + Duration::from_secs(1);
        assert_eq!(a.decide(t0, 9, 9).desired, 4);
        assert_eq!(a.decide(t0, 0, 0).desired, 2);
        assert_eq!(a.decide(t0, 3, 3).desired, 3);
    }
}
