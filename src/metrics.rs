//! Prometheus metrics of the data plane (exported by the proxy's admin listener).
