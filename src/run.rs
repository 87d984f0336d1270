//! `kubewsgi run`: the local default, proxy and worker server wired exactly as in a pod.

use std::net::SocketAddr;

use clap::Args;

use crate::proxy::ProxyOpts;
use crate::worker::WorkerOpts;

/// `kubewsgi run APP`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub worker: WorkerOpts,

    #[command(flatten)]
    pub proxy: ProxyOpts,

    /// Address clients connect to.
    #[arg(long, env = "KUBEWSGI_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// Admin listener (`/metrics`, `/healthz`, `/readyz`); none when not given.
    #[arg(long, env = "KUBEWSGI_ADMIN")]
    pub admin: Option<SocketAddr>,
}

/// Runs proxy and worker server until SIGTERM/SIGINT has drained both.
pub fn main(_args: RunArgs) -> anyhow_free::Result<()> {
    Err(anyhow_free::Error::NotBuilt)
}

mod anyhow_free {
    #[derive(Debug, thiserror::Error)]
    pub enum Error {
        #[error("kubewsgi run is not built yet")]
        NotBuilt,
    }
    pub type Result<T> = std::result::Result<T, Error>;
}
