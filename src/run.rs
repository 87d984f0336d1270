//! `kubewsgi run`: the local default, proxy and worker server wired exactly as in a pod.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use clap::{Args, ValueEnum};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::proxy::{self, ProxyOpts};
use crate::telemetry::LogFormat;
use crate::worker::WorkerOpts;

/// How long `run` waits for the app to import before it announces itself anyway.
const READY_WAIT: Duration = Duration::from_secs(120);

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

/// Errors of `kubewsgi run`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Proxy(#[from] proxy::Error),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
    /// A worker server flag is wrong.
    #[error(transparent)]
    Worker(crate::worker::Error),
    /// The worker server stopped on its own (e.g. the app cannot be imported).
    #[error("the worker server exited ({0}); the app could not be served, see its output above")]
    WorkerExited(ExitStatus),
}

/// Result alias of `kubewsgi run`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Runs proxy and worker server until SIGTERM/SIGINT has drained both; the worker server logs
/// in `log_format` too.
pub fn main(args: RunArgs, log_format: LogFormat) -> Result<()> {
    // The worker server's own checks, so a bad worker flag is refused before any port is bound.
    crate::worker::config::validate(&args.worker).map_err(Error::Worker)?;
    proxy::runtime(args.proxy.io_threads)
        .map_err(io("starting the runtime"))?
        .block_on(run(args, log_format))
}

async fn run(args: RunArgs, log_format: LogFormat) -> Result<()> {
    // Private to this user whatever the umask: whoever reaches the worker's socket bypasses the
    // proxy's limits and sets X-Forwarded-* at will. Removed on exit.
    let dir = tempfile::Builder::new()
        .prefix("kubewsgi-run-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(io("creating the socket directory"))?;
    let app_sock = dir.path().join("app.sock");
    let control_sock = dir.path().join("control.sock");
    let tls = args.proxy.tls_cert.is_some();
    let running = proxy::start(proxy::Config {
        opts: args.proxy.clone(),
        listen: args.bind,
        admin: args.admin,
        upstream: format!("unix:{}", app_sock.display()),
        control_socket: control_sock.clone(),
    })
    .await?;

    let mut child = spawn_worker(&args.worker, log_format, &app_sock, &control_sock)?;
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    let mut hup = signal(SignalKind::hangup()).map_err(io("installing signal handlers"))?;

    let mut worker = running.worker.clone();
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(io("waiting for the worker server"))?;
            running.drain().await;
            return Err(Error::WorkerExited(status));
        }
        ready = tokio::time::timeout(READY_WAIT, worker.wait_for(|w| w.ready)) => {
            if ready.is_err() {
                tracing::warn!("the app is not ready after {}s; serving anyway", READY_WAIT.as_secs());
            }
        }
    }
    let scheme = if tls { "https" } else { "http" };
    let admin = match running.admin_addr {
        Some(a) => format!("admin http://{a}"),
        None => "no admin listener".into(),
    };
    println!(
        "kubewsgi: serving {} on {scheme}://{} ({admin})",
        args.worker.app, running.local_addr
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let exited = loop {
        tokio::select! {
            status = child.wait() => break Some(status.map_err(io("waiting for the worker server"))?),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the worker server");
                if let Some(pid) = pid {
                    let _ = kill(pid, Signal::SIGHUP);
                }
            }
            r = proxy::terminated() => {
                r.map_err(io("installing signal handlers"))?;
                break None;
            }
        }
    };
    if let Some(status) = exited {
        running.drain().await;
        return Err(Error::WorkerExited(status));
    }
    tracing::info!("shutting down: draining the proxy, then the worker server");
    running.drain().await;
    if let Some(pid) = pid {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let grace = args.worker.graceful_timeout + Duration::from_secs(5);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!("the worker server did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
    Ok(())
}

fn spawn_worker(
    opts: &WorkerOpts,
    log_format: LogFormat,
    app_sock: &Path,
    control_sock: &Path,
) -> Result<Child> {
    let exe = std::env::current_exe().map_err(io("finding the kubewsgi executable"))?;
    // Locally a broken import should end `run` at once with the traceback, not be retried.
    let mut opts = opts.clone();
    opts.max_boot_failures.get_or_insert(1);
    let mut cmd = Command::new(exe);
    // Everything the worker server needs is passed as flags below; `run`'s own KUBEWSGI_*
    // variables (KUBEWSGI_BIND is the proxy's address) must not become the child's.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("KUBEWSGI_") {
            cmd.env_remove(k);
        }
    }
    let format = log_format
        .to_possible_value()
        .expect("every format has a name");
    cmd.arg("--log-format")
        .arg(format.get_name())
        .arg("worker")
        .args(opts.to_args())
        .arg("--socket")
        .arg(app_sock)
        .arg("--control-socket")
        .arg(control_sock)
        .kill_on_drop(true)
        // Its own process group: a terminal's Ctrl-C reaches `run` only, which drains the proxy
        // before stopping the worker server.
        .process_group(0);
    // SAFETY: prctl(2) is async-signal-safe; it only asks the kernel to SIGTERM the child
    // should this process die without stopping it (e.g. SIGKILL).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io("starting the worker server"))
}
