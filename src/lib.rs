//! kubewsgi: run Python WSGI apps on Kubernetes.
//!
//! Layout:
//! - [`worker`]: the worker server (gunicorn role). A master process supervises worker processes
//!   that embed CPython and serve HTTP/1.1 on one Unix socket.
//! - [`proxy`]: the front proxy (nginx role) in the same pod: buffering, static files, TLS, limits,
//!   the admission queue whose depth drives autoscaling, and the admin listener.
//! - [`metrics`]: the data plane's Prometheus metrics.
//! - [`run`]: `kubewsgi run`, proxy + worker server on one machine exactly as in a pod.
//! - [`crd`]: the `WsgiApp` custom resource types; the CRD YAML is generated from them.
//! - [`controller`]: the operator reconciling `WsgiApp`s into Deployments, Services and PDBs.
//! - [`autoscaler`]: queue-depth autoscaling: pure decision arithmetic and the pod scraper.
//! - [`telemetry`]: logging setup shared by every subcommand.

pub mod autoscaler;
pub mod controller;
pub mod crd;
pub mod metrics;
pub mod proxy;
pub mod run;
pub mod telemetry;
pub mod worker;
