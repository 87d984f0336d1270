//! Worker server (the gunicorn role): a master supervising worker processes that embed CPython.

pub mod config;

use std::path::PathBuf;

use clap::Args;

pub use config::WorkerOpts;

/// `kubewsgi worker APP`.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub opts: WorkerOpts,

    /// Listen on this Unix socket (the pod's shared volume).
    #[arg(long, env = "KUBEWSGI_SOCKET", value_name = "PATH", conflicts_with = "bind")]
    pub socket: Option<PathBuf>,

    /// Listen on this TCP address instead of a Unix socket.
    #[arg(long, env = "KUBEWSGI_BIND", value_name = "HOST:PORT")]
    pub bind: Option<String>,

    /// Serve `GET /stats` JSON on this Unix socket.
    #[arg(long, env = "KUBEWSGI_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
}

/// Errors of the worker server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result alias of the worker server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `kubewsgi worker` until it is told to stop.
pub fn main(_args: WorkerArgs) -> Result<()> {
    Err(Error::Config("worker server not built yet".into()))
}
