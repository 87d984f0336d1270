//! Worker server (the gunicorn role): a master supervising worker processes that embed CPython.
//!
//! - [`master`]: binds the sockets, re-executes this binary once per worker, supervises them.
//! - [`pool`]: the master's decisions (respawn, backoff, rolling reload, autoscaling) as pure logic.
//! - [`control`]: the `GET /stats` control socket.
//! - `child` (feature `python`): a worker process, the HTTP server and the embedded interpreter.

pub mod config;
pub mod control;
pub mod listen;
pub mod master;
pub mod pool;
pub mod protocol;
#[cfg(feature = "python")]
pub mod python;

#[cfg(feature = "python")]
pub mod child;

use std::path::PathBuf;

use clap::Args;

pub use config::WorkerOpts;

/// `kubewsgi worker APP`.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub opts: WorkerOpts,

    /// Listen on this Unix socket (the pod's shared volume).
    #[arg(
        long,
        env = "KUBEWSGI_SOCKET",
        value_name = "PATH",
        conflicts_with = "bind"
    )]
    pub socket: Option<PathBuf>,

    /// Listen on this TCP address instead of a Unix socket.
    #[arg(long, env = "KUBEWSGI_BIND", value_name = "HOST:PORT")]
    pub bind: Option<String>,

    /// Serve `GET /stats` JSON on this Unix socket.
    #[arg(long, env = "KUBEWSGI_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Where to write the import traceback when giving up (default: `/dev/termination-log` if present).
    #[arg(long, env = "KUBEWSGI_TERMINATION_LOG", value_name = "PATH")]
    pub termination_log: Option<PathBuf>,

    /// On `--bind`, trust `X-Forwarded-*` from these peer IPs (comma-separated, `*` = any). The Unix socket always trusts them.
    #[arg(
        long,
        env = "KUBEWSGI_FORWARDED_ALLOW_IPS",
        value_name = "IPS",
        value_delimiter = ','
    )]
    pub forwarded_allow_ips: Vec<String>,
}

/// Errors of the worker server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("python: {0}")]
    Python(String),
}

/// Result alias of the worker server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `kubewsgi worker` until it is told to stop: the master, or a worker process when re-executed by one.
pub fn main(args: WorkerArgs) -> Result<()> {
    if let Some(id) = std::env::var_os(protocol::CHILD_ENV) {
        let id: u64 = id
            .to_string_lossy()
            .parse()
            .map_err(|_| Error::Config("bad worker id".into()))?;
        // SAFETY: no other thread exists yet in a freshly started worker process; the app and its
        // subprocesses must not see the marker (a `kubewsgi worker` they start is a master again).
        unsafe { std::env::remove_var(protocol::CHILD_ENV) };
        return run_child(id, args);
    }
    let status = master::run(args)?;
    if status != 0 {
        std::process::exit(status);
    }
    Ok(())
}

#[cfg(feature = "python")]
fn run_child(id: u64, args: WorkerArgs) -> Result<()> {
    child::run(id, args)
}

#[cfg(not(feature = "python"))]
fn run_child(_id: u64, _args: WorkerArgs) -> Result<()> {
    use std::io::Write as _;
    let r = protocol::Report::BootError {
        traceback: "this kubewsgi was built without Python support".into(),
    };
    // SAFETY: fd 4 is the report socket the master passed; ManuallyDrop keeps it open for the process.
    let mut f = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(protocol::REPORT_FD)
    });
    let _ = f.write_all(&r.to_line());
    Err(Error::Config(
        "this kubewsgi was built without Python support".into(),
    ))
}
