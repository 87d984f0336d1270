//! The autoscaler's decision rules, driven tick by tick with synthetic instants.

use std::time::{Duration, Instant};

use kubewsgi::autoscaler::{Autoscaler, Decision, PodSample, Policy};

const TICK: Duration = Duration::from_secs(2);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn pod(i: usize, queue: f64, inflight: f64, capacity: f64) -> PodSample {
    PodSample {
        pod: format!("app-{i}"),
        queue_depth: queue,
        inflight,
        capacity,
        max_capacity: capacity,
    }
}

/// `ready` pods sharing `demand` evenly (half queued, half in flight), `capacity` slots each.
fn spread(demand: f64, ready: u32, capacity: f64) -> Vec<PodSample> {
    let each = demand / f64::from(ready);
    (0..ready as usize)
        .map(|i| pod(i, each / 2.0, each / 2.0, capacity))
        .collect()
}

/// An app whose Deployment follows every decision and whose new pods are ready at once.
struct Sim {
    scaler: Autoscaler,
    now: Instant,
    replicas: u32,
    capacity: f64,
}

impl Sim {
    fn new(policy: Policy, replicas: u32, capacity: f64) -> Self {
        Self {
            scaler: Autoscaler::new(policy).unwrap(),
            now: Instant::now(),
            replicas,
            capacity,
        }
    }

    /// One 2 s tick under `demand` total queued + in-flight requests.
    fn tick(&mut self, demand: f64) -> Decision {
        self.now += TICK;
        let samples = spread(demand, self.replicas, self.capacity);
        self.scaler.observe(self.now, self.replicas, &samples);
        let d = self.scaler.decide(self.now, self.replicas, self.replicas);
        self.replicas = d.desired;
        d
    }

    fn ticks(&mut self, n: usize, demand: f64) -> Decision {
        let mut last = None;
        for _ in 0..n {
            last = Some(self.tick(demand));
        }
        last.unwrap()
    }
}

#[test]
fn steady_demand_asks_for_ceil_demand_over_utilization_target() {
    // 2 slots × 0.7 = 1.4 per pod; 4.2 in total needs 3 pods.
    let mut sim = Sim::new(Policy::default(), 2, 2.0);
    let d = sim.ticks(30, 4.2);
    assert_eq!(d.desired, 3, "{d:?}");
    assert_eq!(d.stable_desired, Some(3));
    assert!(!d.panic);
    assert!((d.per_pod_target.unwrap() - 1.4).abs() < 1e-9);
    assert!((d.observed_demand.unwrap() - 4.2).abs() < 1e-9);
}

#[test]
fn target_queue_depth_replaces_the_utilization_target() {
    let policy = Policy {
        target_queue_depth: Some(1.0),
        ..Policy::default()
    };
    let mut sim = Sim::new(policy, 2, 2.0);
    let d = sim.ticks(30, 4.2);
    assert_eq!(d.desired, 5, "{d:?}");
    assert_eq!(d.per_pod_target, Some(1.0));
}

#[test]
fn max_capacity_sets_the_target_when_workers_scale_in_pod() {
    let mut a = Autoscaler::new(Policy::default()).unwrap();
    let t = Instant::now();
    // Two worker slots now, eight at the in-pod maximum: 11.2 / (8 × 0.7) = 2 pods, not 8.
    let s = PodSample {
        pod: "a".into(),
        queue_depth: 9.2,
        inflight: 2.0,
        capacity: 2.0,
        max_capacity: 8.0,
    };
    a.observe(t, 1, &[s]);
    let d = a.decide(t, 2, 1);
    assert_eq!(d.stable_desired, Some(2), "{d:?}");
}

#[test]
fn scale_down_follows_the_stable_window_average() {
    // 7 per pod (10 slots × 0.7); 28 in total holds 4 pods.
    let mut sim = Sim::new(Policy::default(), 4, 10.0);
    assert_eq!(sim.ticks(30, 28.0).desired, 4);
    // Two idle ticks barely move a 60 s average: still 4.
    assert_eq!(sim.ticks(2, 0.0).desired, 4);
    // 15 idle ticks: 15 of the 30 observations in the window are 28 → 14 → 2 pods.
    let d = sim.ticks(13, 0.0);
    assert_eq!(d.stable_desired, Some(2), "{d:?}");
    assert_eq!(d.desired, 2);
    // A full window of idleness reaches minReplicas.
    let d = sim.ticks(15, 0.0);
    assert_eq!(d.stable_desired, Some(0));
    assert_eq!(d.desired, 1);
    assert!(d.reason.contains("raised to minReplicas 1"), "{}", d.reason);
}

#[test]
fn a_burst_enters_panic_and_scales_up_within_seconds() {
    let mut sim = Sim::new(Policy::default(), 1, 2.0);
    sim.ticks(20, 0.5);
    // 20 slow requests arrive: the 6 s window sees them at once, the 60 s window barely.
    let d = sim.tick(20.0);
    assert!(d.panic, "{d:?}");
    assert!(d.desired >= 2, "{d:?}");
    assert!(d.panic_desired.unwrap() > d.stable_desired.unwrap());
    assert!(d.reason.contains("entering panic"), "{}", d.reason);
    let mut seen = vec![d.desired];
    for _ in 0..3 {
        seen.push(sim.tick(20.0).desired);
    }
    // ceil(20 / 1.4) = 15 pods, reached once the panic window is full of the burst.
    assert_eq!(
        *seen.last().unwrap(),
        10,
        "clamped to maxReplicas 10: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
}

#[test]
fn panic_never_scales_down_and_ends_one_stable_window_after_the_last_burst() {
    let policy = Policy {
        max_replicas: 50,
        ..Policy::default()
    };
    let mut sim = Sim::new(policy, 1, 2.0);
    sim.ticks(5, 0.0);
    let mut t = Duration::ZERO;
    let mut last_trigger: Option<Duration> = None;
    let mut high = 0;
    let mut left_panic = false;
    while !left_panic {
        // Three ticks of burst, then idle.
        let demand = if t < secs(6) { 30.0 } else { 0.0 };
        let d = sim.tick(demand);
        t += TICK;
        if d.panic_desired.unwrap() >= 2 * d.ready.max(1) {
            last_trigger = Some(t);
        }
        let since = t - last_trigger.expect("the burst triggers panic on its first tick");
        if since < secs(60) {
            assert!(
                d.panic,
                "left panic {since:?} after the last trigger: {d:?}"
            );
            assert!(d.desired >= high, "scaled down in panic: {d:?}");
            high = d.desired;
        } else {
            assert!(
                !d.panic,
                "still in panic {since:?} after the last trigger: {d:?}"
            );
            assert!(d.reason.contains("leaving panic"), "{}", d.reason);
            left_panic = true;
        }
    }
    assert!(high >= 10, "{high}");
    // Out of panic the stable window, now idle, brings it down to minReplicas.
    assert_eq!(sim.ticks(30, 0.0).desired, 1);
}

#[test]
fn new_bursts_extend_panic() {
    let policy = Policy {
        max_replicas: 3,
        ..Policy::default()
    };
    let mut sim = Sim::new(policy, 1, 2.0);
    assert!(sim.tick(30.0).panic);
    // With maxReplicas 3 the app stays overloaded (≥ 2 × 3 pods' worth), so each tick
    // re-triggers panic and it outlasts the stable window.
    for _ in 0..40 {
        let d = sim.tick(30.0);
        assert!(d.panic, "{d:?}");
        assert_eq!(d.desired, 3);
    }
}

#[test]
fn scale_down_waits_for_the_delay_then_goes_to_the_highest_recent_recommendation() {
    let policy = Policy {
        stable_window: secs(10),
        scale_down_delay: secs(10),
        ..Policy::default()
    };
    let mut sim = Sim::new(policy, 4, 2.0);
    assert_eq!(sim.ticks(10, 5.6).desired, 4);
    let mut recs: Vec<(Duration, u32, u32)> = Vec::new(); // (time since drop, stable rec, desired)
    let mut t = Duration::ZERO;
    let mut first_low: Option<Duration> = None;
    while t < secs(40) {
        let d = sim.tick(1.4);
        t += TICK;
        let rec = d.stable_desired.unwrap();
        if rec < 4 && first_low.is_none() {
            first_low = Some(t);
        }
        recs.push((t, rec, d.desired));
    }
    let first_low = first_low.expect("the stable recommendation fell");
    for &(t, _, desired) in &recs {
        if t < first_low + secs(10) {
            assert_eq!(
                desired,
                4,
                "scaled down {:?} after the lower recommendation",
                t - first_low
            );
        }
    }
    let (_, _, at_delay) = recs.iter().find(|r| r.0 == first_low + secs(10)).unwrap();
    let highest: u32 = recs
        .iter()
        .filter(|r| r.0 >= first_low && r.0 <= first_low + secs(10))
        .map(|r| r.1)
        .max()
        .unwrap();
    assert!(*at_delay < 4 && *at_delay == highest, "{recs:?}");
    assert_eq!(recs.last().unwrap().2, 1, "{recs:?}");
}

#[test]
fn without_delay_scale_down_is_immediate() {
    let policy = Policy {
        stable_window: secs(10),
        ..Policy::default()
    };
    let mut sim = Sim::new(policy, 4, 2.0);
    sim.ticks(10, 5.6);
    loop {
        let d = sim.tick(1.4);
        if d.stable_desired.unwrap() < 4 {
            assert_eq!(d.desired, d.stable_desired.unwrap().max(1), "{d:?}");
            break;
        }
    }
}

#[test]
fn a_fresh_autoscaler_counts_current_replicas_as_its_first_recommendation() {
    let policy = Policy {
        scale_down_delay: secs(10),
        ..Policy::default()
    };
    let mut sim = Sim::new(policy, 5, 2.0);
    let first = sim.tick(0.0);
    assert_eq!(first.desired, 5, "{first:?}");
    assert!(first.reason.contains("waits"), "{}", first.reason);
    // Still 5 at 10 s after the first decision (inclusive), 1 at the tick after.
    assert_eq!(sim.ticks(5, 0.0).desired, 5);
    assert_eq!(sim.tick(0.0).desired, 1);
}

#[test]
fn scale_up_is_bounded_by_rate_times_ready_pods() {
    let policy = Policy {
        max_scale_up_rate: 2.0,
        max_replicas: 100,
        ..Policy::default()
    };
    let mut a = Autoscaler::new(policy).unwrap();
    let t = Instant::now();
    a.observe(t, 1, &spread(50.0, 1, 2.0));
    let d = a.decide(t, 1, 1);
    assert_eq!(d.desired, 2, "{d:?}");
    assert!(d.reason.contains("maxScaleUpRate"), "{}", d.reason);
    let t = t + TICK;
    a.observe(t, 3, &spread(50.0, 3, 2.0));
    assert_eq!(a.decide(t, 3, 3).desired, 6);
}

#[test]
fn the_rate_bound_never_shrinks_replicas_that_are_still_starting() {
    let policy = Policy {
        max_scale_up_rate: 2.0,
        ..Policy::default()
    };
    let mut a = Autoscaler::new(policy).unwrap();
    let t = Instant::now();
    a.observe(t, 1, &spread(50.0, 1, 2.0));
    // 8 replicas requested earlier, 1 ready so far: the bound of 2 must not undo the others.
    assert_eq!(a.decide(t, 8, 1).desired, 8);
}

#[test]
fn pods_that_did_not_answer_are_left_out_not_counted_as_idle() {
    // 4 ready pods, 2 answer with 3.5 each (target 3.5 per pod): the app still needs 4.
    let mut a = Autoscaler::new(Policy::default()).unwrap();
    let t = Instant::now();
    let answered = vec![pod(0, 1.5, 2.0, 5.0), pod(1, 1.5, 2.0, 5.0)];
    a.observe(t, 4, &answered);
    let d = a.decide(t, 4, 4);
    assert_eq!(d.desired, 4, "{d:?}");
    assert!((d.observed_demand.unwrap() - 14.0).abs() < 1e-9);
    assert_eq!(d.queue_depth, Some(3.0), "status shows what was scraped");
    assert_eq!(d.inflight, Some(4.0));
}

#[test]
fn no_answer_at_all_holds_the_current_replicas() {
    let mut a = Autoscaler::new(Policy::default()).unwrap();
    let t = Instant::now();
    a.observe(t, 3, &[]);
    let d = a.decide(t, 3, 3);
    assert_eq!(d.desired, 3);
    assert!(!d.changes_replicas());
    assert_eq!(d.stable_desired, None);
    assert!(d.reason.contains("no pod answered"), "{}", d.reason);
}

#[test]
fn stale_data_outside_the_panic_window_holds_instead_of_guessing() {
    let mut a = Autoscaler::new(Policy::default()).unwrap();
    let t = Instant::now();
    a.observe(t, 3, &spread(0.0, 3, 2.0));
    assert_eq!(a.decide(t, 3, 3).desired, 1);
    // 10 s later with no answer since: the 6 s window is empty, so hold.
    let d = a.decide(t + secs(10), 3, 3);
    assert_eq!(d.desired, 3, "{d:?}");
}

#[test]
fn result_is_clamped_to_min_and_max() {
    let policy = Policy {
        min_replicas: 2,
        max_replicas: 3,
        ..Policy::default()
    };
    let mut sim = Sim::new(policy.clone(), 2, 2.0);
    let d = sim.ticks(30, 11.2);
    assert_eq!(d.desired, 3);
    assert_eq!(d.stable_desired, Some(8));
    assert!(d.reason.contains("capped at maxReplicas 3"), "{}", d.reason);
    let mut sim = Sim::new(policy, 3, 2.0);
    assert_eq!(sim.ticks(40, 0.0).desired, 2);
}

#[test]
fn pods_without_worker_capacity_hold() {
    let mut a = Autoscaler::new(Policy::default()).unwrap();
    let t = Instant::now();
    a.observe(t, 2, &spread(8.0, 2, 0.0));
    let d = a.decide(t, 2, 2);
    assert_eq!(d.desired, 2);
    assert!(d.reason.contains("no worker capacity"), "{}", d.reason);
}

#[test]
fn policies_are_validated_and_a_new_policy_keeps_the_history() {
    assert!(
        Autoscaler::new(Policy {
            min_replicas: 4,
            max_replicas: 2,
            ..Policy::default()
        })
        .is_err()
    );
    let mut sim = Sim::new(Policy::default(), 2, 2.0);
    sim.ticks(30, 4.2);
    assert!(
        sim.scaler
            .set_policy(Policy {
                target_utilization: 2.0,
                ..Policy::default()
            })
            .is_err()
    );
    sim.scaler
        .set_policy(Policy {
            target_queue_depth: Some(0.5),
            ..Policy::default()
        })
        .unwrap();
    // The averaged 4.2 is still there: 4.2 / 0.5 = 9 pods on the very next tick.
    let d = sim.tick(4.2);
    assert_eq!(d.stable_desired, Some(9), "{d:?}");
}

#[test]
fn reasons_say_what_happened() {
    let mut sim = Sim::new(Policy::default(), 1, 2.0);
    let up = sim.tick(20.0);
    assert!(up.reason.starts_with("scale up from 1 to"), "{}", up.reason);
    let mut sim = Sim::new(Policy::default(), 2, 2.0);
    let hold = sim.tick(2.8);
    assert!(
        hold.reason.starts_with("hold at 2: demand 2.8"),
        "{}",
        hold.reason
    );
    let down = Sim::new(Policy::default(), 3, 2.0).tick(0.0);
    assert!(
        down.reason.starts_with("scale down from 3 to 1"),
        "{}",
        down.reason
    );
}
