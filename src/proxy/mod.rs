//! Front proxy (the nginx role): buffering, static files, TLS, limits, admission queue, metrics.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod buffer;
pub mod config;
pub mod control;
pub mod forwarded;
pub mod fuzz_checks;
pub mod handler;
pub mod passthrough;
pub mod raw_head;
pub mod server;
pub mod static_cache;
pub mod statics;
pub mod tls;
pub mod upstream;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::Args;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::ProxyOpts;
pub use control::WorkerStatus;

use crate::metrics::Metrics;

/// `kubewsgi proxy`.
#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub opts: ProxyOpts,

    /// Address clients connect to.
    #[arg(long, env = "KUBEWSGI_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// The worker server: `unix:/path.sock` or `http://host:port`.
    #[arg(
        long,
        env = "KUBEWSGI_UPSTREAM",
        default_value = "unix:/run/kubewsgi/app.sock"
    )]
    pub upstream: String,

    /// The worker server's control socket, read for capacity and readiness.
    #[arg(
        long,
        env = "KUBEWSGI_CONTROL_SOCKET",
        default_value = "/run/kubewsgi/control.sock"
    )]
    pub control_socket: PathBuf,

    /// Admin listener: `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "KUBEWSGI_ADMIN", default_value = "0.0.0.0:9090")]
    pub admin: SocketAddr,
}

/// Errors of the front proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag is wrong; nothing was bound.
    #[error("{0}")]
    Config(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result alias of the front proxy.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything needed to start a proxy.
#[derive(Debug, Clone)]
pub struct Config {
    pub opts: ProxyOpts,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub upstream: String,
    pub control_socket: PathBuf,
}

/// A started proxy.
pub struct Running {
    /// Where clients connect.
    pub local_addr: SocketAddr,
    /// Where the admin listener is, if any.
    pub admin_addr: Option<SocketAddr>,
    /// The worker server as seen through its control socket.
    pub worker: watch::Receiver<WorkerStatus>,
    shared: Arc<handler::Shared>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    control: JoinHandle<()>,
}

/// Checks the configuration, binds the listeners, and starts serving. Bad configuration is
/// refused before any port is bound.
pub async fn start(cfg: Config) -> Result<Running> {
    let opts = cfg.opts;
    let target = upstream::Target::parse(&cfg.upstream).map_err(Error::Config)?;
    let cache = static_cache::StaticCache::new(opts.static_cache_size, opts.static_cache_valid);
    let statics = statics::Statics::new(&opts.static_mounts, cache).map_err(Error::Config)?;
    let trusted = forwarded::TrustedProxies::parse(&opts.trusted_proxies).map_err(Error::Config)?;
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => Some(tls::acceptor(c, k).map_err(Error::Config)?),
        (None, None) => None,
        _ => return Err(Error::Config("--tls-cert and --tls-key go together".into())),
    };
    if let Some(d) = &opts.spool_dir
        && !d.is_dir()
    {
        return Err(Error::Config(format!(
            "--spool-dir {} is not a directory",
            d.display()
        )));
    }

    let listener = server::bind(cfg.listen).map_err(|source| Error::Bind {
        addr: cfg.listen,
        source,
    })?;
    let admin_listener = match cfg.admin {
        Some(a) => Some(server::bind(a).map_err(|source| Error::Bind { addr: a, source })?),
        None => None,
    };
    let local_addr = listener.local_addr()?;
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    let metrics = Arc::new(Metrics::new());
    let admission = admission::Admission::new(metrics.clone());
    let (status_tx, status_rx) = watch::channel(WorkerStatus::default());
    let upstream = Arc::new(upstream::Upstream::new(target));
    let control = tokio::spawn(control::follow(
        cfg.control_socket.clone(),
        upstream.clone(),
        status_tx,
        admission.clone(),
        metrics.clone(),
    ));
    let access_log = access_log::AccessLogger::start(opts.access_log);
    let shared = Arc::new(handler::Shared {
        opts,
        statics,
        upstream,
        admission,
        metrics,
        trusted,
        access_log,
        worker: status_rx.clone(),
        draining: Default::default(),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let server = tokio::spawn(server::serve(
        listener,
        tls,
        shared.clone(),
        shutdown_rx.clone(),
    ));
    let admin = admin_listener.map(|l| tokio::spawn(admin::serve(l, shared.clone())));
    tracing::info!(%local_addr, admin = ?admin_addr, upstream = %cfg.upstream, "proxy listening");
    Ok(Running {
        local_addr,
        admin_addr,
        worker: status_rx,
        shared,
        shutdown,
        server,
        admin,
        control,
    })
}

impl Running {
    /// Marks the proxy not ready (`/readyz` 503) without closing anything yet.
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// Stops accepting, lets in-flight requests finish (bounded by `--drain-timeout`), then stops
    /// the admin listener and the control socket poller.
    pub async fn drain(self) {
        self.set_draining();
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        if let Some(log) = &self.shared.access_log {
            log.flush();
        }
        if let Some(a) = self.admin {
            a.abort();
        }
        self.control.abort();
    }
}

/// The proxy's runtime: `threads` worker threads, by default one per four cores.
///
/// One thread per core made two-core machines slower: the proxy's threads wake each other and
/// compete with the worker processes and the client for the same cores. One thread spends about
/// 17 µs of CPU on a small request, so it keeps up with the Python workers of several cores.
pub fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = threads
        .map(usize::from)
        .unwrap_or_else(|| default_threads(cores));
    if threads == 1 {
        // One thread: no cross-thread wake-ups at all.
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

fn default_threads(cores: usize) -> usize {
    cores.div_ceil(4).max(1)
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn terminated() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

/// Runs `kubewsgi proxy` until SIGTERM has drained it.
pub fn main(args: ProxyArgs) -> Result<()> {
    runtime(args.opts.io_threads)?.block_on(async move {
        let running = start(Config {
            opts: args.opts,
            listen: args.listen,
            admin: Some(args.admin),
            upstream: args.upstream,
            control_socket: args.control_socket,
        })
        .await?;
        terminated().await?;
        tracing::info!("SIGTERM: draining");
        running.drain().await;
        Ok(())
    })
}
