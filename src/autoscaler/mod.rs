//! Request-queue-depth autoscaler: pure decision arithmetic and the pod metrics scraper.
