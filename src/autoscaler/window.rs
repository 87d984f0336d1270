//! Time-stamped observations and the window averages the decisions read.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What one scrape tick saw, already extrapolated to all ready pods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// When the tick's scrapes completed.
    pub at: Instant,
    /// Queued + in-flight requests of the whole app (per answering pod × ready pods).
    pub demand: f64,
    /// Sum of the answering pods' queue depths (not extrapolated; for status).
    pub queue_depth: f64,
    /// Sum of the answering pods' in-flight requests (not extrapolated; for status).
    pub inflight: f64,
    /// Average maximum worker capacity of the answering pods.
    pub max_capacity: f64,
    /// Pods whose scrape answered.
    pub answered: u32,
}

/// Observations younger than a horizon, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Window {
    items: VecDeque<Observation>,
}

impl Window {
    /// Appends an observation; they must come in time order.
    pub fn push(&mut self, obs: Observation) {
        self.items.push_back(obs);
    }

    /// Forgets observations at least `horizon` old at `now`.
    pub fn prune(&mut self, now: Instant, horizon: Duration) {
        while let Some(first) = self.items.front() {
            if now.saturating_duration_since(first.at) >= horizon {
                self.items.pop_front();
            } else {
                break;
            }
        }
    }

    /// Mean demand of the observations younger than `window` at `now`; `None` when there are none.
    ///
    /// Like Knative's window average it divides by the ticks seen, not by the window length, so
    /// a young autoscaler or a window with failed ticks is not dragged towards zero.
    pub fn average_demand(&self, now: Instant, window: Duration) -> Option<f64> {
        let (sum, n) = self
            .items
            .iter()
            .filter(|o| now.saturating_duration_since(o.at) < window)
            .fold((0.0, 0u32), |(s, n), o| (s + o.demand, n + 1));
        (n > 0).then(|| sum / f64::from(n))
    }

    /// The newest observation younger than `window`.
    pub fn latest_within(&self, now: Instant, window: Duration) -> Option<&Observation> {
        self.items
            .back()
            .filter(|o| now.saturating_duration_since(o.at) < window)
    }
}

/// Recent recommendations, so a scale-down never goes below any of them within the delay.
#[derive(Debug, Default, Clone)]
pub struct MaxWindow {
    items: VecDeque<(Instant, u32)>,
}

impl MaxWindow {
    /// Records a recommendation and returns the highest one at most `delay` old (inclusive).
    pub fn record(&mut self, now: Instant, value: u32, delay: Duration) -> u32 {
        while let Some(&(at, _)) = self.items.front() {
            if now.saturating_duration_since(at) > delay {
                self.items.pop_front();
            } else {
                break;
            }
        }
        self.items.push_back((now, value));
        self.items.iter().map(|&(_, v)| v).max().unwrap_or(value)
    }

    /// True before the first recommendation was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at: Instant, demand: f64) -> Observation {
        Observation {
            at,
            demand,
            queue_depth: demand,
            inflight: 0.0,
            max_capacity: 1.0,
            answered: 1,
        }
    }

    #[test]
    fn average_counts_only_observations_inside_the_window() {
        let t0 = Instant::now();
        let mut w = Window::default();
        for (i, d) in [10.0, 20.0, 30.0, 40.0].into_iter().enumerate() {
            w.push(obs(t0 + Duration::from_secs(2 * i as u64), d));
        }
        let now = t0 + Duration::from_secs(6);
        // Ages 6, 4, 2, 0: a 6 s window holds the last three.
        assert_eq!(w.average_demand(now, Duration::from_secs(6)), Some(30.0));
        assert_eq!(w.average_demand(now, Duration::from_secs(60)), Some(25.0));
        assert_eq!(
            w.average_demand(now + Duration::from_secs(60), Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn prune_drops_what_no_window_can_see() {
        let t0 = Instant::now();
        let mut w = Window::default();
        w.push(obs(t0, 1.0));
        w.push(obs(t0 + Duration::from_secs(5), 3.0));
        w.prune(t0 + Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(
            w.average_demand(t0 + Duration::from_secs(10), Duration::from_secs(100)),
            Some(3.0)
        );
    }

    #[test]
    fn max_window_remembers_the_delay_inclusively() {
        let t0 = Instant::now();
        let d = Duration::from_secs(10);
        let mut m = MaxWindow::default();
        assert!(m.is_empty());
        assert_eq!(m.record(t0, 5, d), 5);
        assert_eq!(m.record(t0 + Duration::from_secs(4), 2, d), 5);
        assert_eq!(m.record(t0 + Duration::from_secs(10), 2, d), 5);
        assert_eq!(m.record(t0 + Duration::from_secs(11), 3, d), 3);
    }
}
