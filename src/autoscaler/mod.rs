//! Request-queue-depth autoscaler: pure decision arithmetic and the pod metrics scraper.
//!
//! The arithmetic follows Knative's KPA: a stable window (60 s) and a panic window (6 s) of
//! scraped demand, panic mode for bursts, a scale-down delay, a scale-up rate bound and min/max
//! clamping. It does no I/O and reads no clock: the caller passes `now`, so it is tested by
//! feeding instants.
//!
//! Wiring, once per `WsgiApp`, every tick (2 s):
//! ```no_run
//! # async fn tick() -> Result<(), kubewsgi::autoscaler::Error> {
//! use std::time::{Duration, Instant};
//! use kubewsgi::autoscaler::{Autoscaler, Policy, ScrapeTarget, Scraper};
//!
//! let scraper = Scraper::new(); // shared by all apps; reuses connections
//! let spec = kubewsgi::crd::Autoscaling::default(); // app.spec.autoscaling
//! let mut scaler = Autoscaler::new(Policy::try_from(&spec)?)?; // kept across ticks
//! // Each tick: the ready pods' admin addresses (pod IP + the port named in the template).
//! let targets = vec![ScrapeTarget { pod: "web-1".into(), addr: "10.0.0.7:9090".parse().unwrap() }];
//! let samples = scraper.scrape_pods(&targets, Duration::from_secs(1)).await;
//! let now = Instant::now();
//! scaler.observe(now, targets.len() as u32, &samples); // ready pods, answers
//! let decision = scaler.decide(now, /* deployment replicas */ 1, /* ready pods */ 1);
//! if decision.changes_replicas() {
//!     // write decision.desired to the Deployment; emit an Event with decision.reason
//! }
//! # Ok(()) }
//! ```
//! `decision.queue_depth` / `decision.inflight` feed the status fields `queueDepth` and
//! `concurrency`; `Autoscaler::set_policy` applies a changed spec without losing history.

mod decide;
mod exposition;
mod policy;
mod scrape;
mod window;

pub use decide::{Autoscaler, Decision, PodSample};
pub use exposition::{CAPACITY, Gauges, INFLIGHT, MAX_CAPACITY, QUEUE_DEPTH, parse_gauges};
pub use policy::Policy;
pub use scrape::{ScrapeTarget, Scraper, scrape_pods};

use std::time::Duration;

/// Errors of the autoscaler: refused policies and failed scrapes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid autoscaling policy: {0}")]
    Policy(String),
    #[error("metrics scrape timed out after {0:?}")]
    Timeout(Duration),
    #[error("metrics scrape failed: {0}")]
    Http(String),
    #[error("metrics endpoint answered HTTP {0}")]
    Status(u16),
    #[error("metrics line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("metrics page lacks {0}")]
    MissingMetric(&'static str),
}

/// Result alias of the autoscaler.
pub type Result<T, E = Error> = std::result::Result<T, E>;
