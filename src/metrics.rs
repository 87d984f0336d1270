//! Prometheus metrics of the data plane (exported by the proxy's admin listener).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `kubewsgi_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP status code sent to the client.
    pub code: u16,
    /// Request method; unusual methods are folded into `OTHER` to bound cardinality.
    pub method: &'static str,
}

/// Every `kind` of `kubewsgi_upstream_errors_total`. Each series exists from start-up, at 0, so
/// that `rate()` and alerts have something to read before the first failure.
pub const UPSTREAM_ERROR_KINDS: [&str; 5] = ["connect", "reset", "invalid", "timeout", "body"];

/// Labels of `kubewsgi_upstream_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// One of [`UPSTREAM_ERROR_KINDS`].
    pub kind: &'static str,
}

/// Every metric the proxy exports, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Responses sent, by status code and method.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request head to response head, proxy-side.
    pub duration: Histogram,
    /// Requests waiting for a worker thread (the autoscaling signal).
    pub queue_depth: Gauge,
    /// Requests holding a worker thread.
    pub inflight: Gauge,
    /// Worker threads available now (workers × threads).
    pub worker_capacity: Gauge,
    /// Worker threads available at the worker server's `--max-workers`.
    pub worker_max_capacity: Gauge,
    /// Failures talking to the worker server, by kind.
    pub upstream_errors: Family<ErrorLabels, Counter>,
    /// Worker process restarts reported by the worker server.
    pub worker_restarts: Counter,
    /// Open client connections.
    pub connections: Gauge,
    last_restarts: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ]);
        let m = Self {
            requests,
            duration,
            queue_depth: Gauge::default(),
            inflight: Gauge::default(),
            worker_capacity: Gauge::default(),
            worker_max_capacity: Gauge::default(),
            upstream_errors: Family::default(),
            worker_restarts: Counter::default(),
            connections: Gauge::default(),
            last_restarts: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "kubewsgi_requests",
            "HTTP responses sent to clients",
            m.requests.clone(),
        );
        registry.register(
            "kubewsgi_request_duration_seconds",
            "Seconds from request head to response head",
            m.duration.clone(),
        );
        registry.register(
            "kubewsgi_queue_depth",
            "Requests waiting for a worker thread",
            m.queue_depth.clone(),
        );
        registry.register(
            "kubewsgi_inflight_requests",
            "Requests holding a worker thread",
            m.inflight.clone(),
        );
        registry.register(
            "kubewsgi_worker_capacity",
            "Worker threads (workers x threads)",
            m.worker_capacity.clone(),
        );
        registry.register(
            "kubewsgi_worker_max_capacity",
            "Worker threads at the worker server's maximum process count",
            m.worker_max_capacity.clone(),
        );
        registry.register(
            "kubewsgi_upstream_errors",
            "Failures talking to the worker server, by kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "kubewsgi_worker_restarts",
            "Worker process restarts",
            m.worker_restarts.clone(),
        );
        registry.register(
            "kubewsgi_connections",
            "Open client connections",
            m.connections.clone(),
        );
        for kind in UPSTREAM_ERROR_KINDS {
            let _ = m.upstream_errors.get_or_create(&ErrorLabels { kind });
        }
        Self { registry, ..m }
    }

    /// Counts one response.
    pub fn observe(&self, method: &http::Method, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                code,
                method: method_label(method),
            })
            .inc();
        self.duration.observe(seconds);
    }

    /// Counts one failure talking to the worker server.
    pub fn upstream_error(&self, kind: &'static str) {
        debug_assert!(UPSTREAM_ERROR_KINDS.contains(&kind), "unknown kind {kind}");
        self.upstream_errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }

    /// Follows the worker server's own restart count; a lower value (its master restarted) restarts the baseline.
    pub fn set_worker_restarts(&self, total: u64) {
        let last = self.last_restarts.swap(total, Ordering::Relaxed);
        if total > last {
            self.worker_restarts.inc_by(total - last);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_error_kinds_are_exported_before_any_failure() {
        let text = Metrics::new().encode();
        for kind in UPSTREAM_ERROR_KINDS {
            let series = format!("kubewsgi_upstream_errors_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&series), "{series} missing from\n{text}");
        }
    }

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.observe(&http::Method::GET, 200, 0.01);
        m.observe(&http::Method::from_bytes(b"PROPFIND").unwrap(), 405, 0.01);
        m.upstream_error("connect");
        m.set_worker_restarts(3);
        m.set_worker_restarts(1);
        m.set_worker_restarts(2);
        m.worker_capacity.set(8);
        let text = m.encode();
        assert!(
            text.contains("kubewsgi_requests_total{code=\"200\",method=\"GET\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubewsgi_requests_total{code=\"405\",method=\"OTHER\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubewsgi_upstream_errors_total{kind=\"connect\"} 1"),
            "{text}"
        );
        assert!(text.contains("kubewsgi_worker_restarts_total 4"), "{text}");
        assert!(text.contains("kubewsgi_worker_capacity 8"), "{text}");
        assert!(
            text.contains("kubewsgi_request_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("kubewsgi_queue_depth 0"), "{text}");
    }
}
