//! Front proxy (the nginx role): buffering, static files, TLS, limits, admission queue, metrics.

pub mod config;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

pub use config::ProxyOpts;

/// `kubewsgi proxy`.
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub opts: ProxyOpts,

    /// Address clients connect to.
    #[arg(long, env = "KUBEWSGI_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// The worker server: `unix:/path.sock` or `http://host:port`.
    #[arg(long, env = "KUBEWSGI_UPSTREAM", default_value = "unix:/run/kubewsgi/app.sock")]
    pub upstream: String,

    /// The worker server's control socket, read for capacity and readiness.
    #[arg(long, env = "KUBEWSGI_CONTROL_SOCKET", default_value = "/run/kubewsgi/control.sock")]
    pub control_socket: PathBuf,

    /// Admin listener: `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "KUBEWSGI_ADMIN", default_value = "0.0.0.0:9090")]
    pub admin: SocketAddr,
}

/// Errors of the front proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result alias of the front proxy.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `kubewsgi proxy` until SIGTERM has drained it.
pub fn main(_args: ProxyArgs) -> Result<()> {
    Err(Error::Config("proxy not built yet".into()))
}
