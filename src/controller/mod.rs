//! The operator: reconciles `WsgiApp` resources into Deployments, Services and PodDisruptionBudgets.

use std::net::SocketAddr;

use clap::Args;

/// `kubewsgi controller`.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Address of the controller's `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "KUBEWSGI_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Watch only this namespace (default: all).
    #[arg(long, env = "KUBEWSGI_NAMESPACE")]
    pub namespace: Option<String>,

    /// Take a `coordination.k8s.io` Lease so only one replica reconciles.
    #[arg(long, env = "KUBEWSGI_LEADER_ELECT")]
    pub leader_elect: bool,
}

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
}

/// Result alias of the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the operator until SIGTERM.
pub fn main(_args: ControllerArgs) -> Result<()> {
    Err(Error::Config("controller not built yet".into()))
}
