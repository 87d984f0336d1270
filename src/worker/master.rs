//! The master process: binds the sockets, starts worker processes by re-executing this binary,
//! supervises them and turns signals into pool decisions. It never loads Python.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::listen::{self, Listener};
use super::pool::{Action, Pool, PoolConfig, Stats};
use super::protocol::{CHILD_ENV, LISTEN_FD, REPORT_FD, Report};
use super::{Error, Result, WorkerArgs, control};

/// Exit status of a master that gave up because the app cannot be imported.
pub const EXIT_BOOT_FAILED: i32 = 3;

enum Event {
    Report(u64, Report),
    Exited(u64),
    SourceChanged,
}

/// Runs the master until SIGTERM/SIGINT has drained every worker; returns the process exit status.
pub fn run(args: WorkerArgs) -> Result<i32> {
    let cfg = pool_config(&args)?;
    let listener = listen::bind(args.socket.as_deref(), args.bind.as_deref())?;
    let control = match &args.control_socket {
        Some(p) => Some(listen::bind_unix(p)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(supervise(args.clone(), cfg, listener, control))?;
    for p in [&args.socket, &args.control_socket].into_iter().flatten() {
        let _ = std::fs::remove_file(p);
    }
    Ok(status)
}

/// Validates the options and derives the pool's sizing; bad config is refused before anything is bound.
pub fn pool_config(args: &WorkerArgs) -> Result<PoolConfig> {
    let o = &args.opts;
    super::config::validate(o)?;
    let autoscale = o.min_workers.is_some() || o.max_workers.is_some();
    let (min, max) = if autoscale {
        (
            o.min_workers.unwrap_or(1),
            o.max_workers
                .unwrap_or(o.workers.max(o.min_workers.unwrap_or(1))),
        )
    } else {
        (1, 1024)
    };
    if !(min..=max).contains(&o.workers) {
        tracing::warn!(
            workers = o.workers,
            min_workers = min,
            max_workers = max,
            starting = o.workers.clamp(min, max),
            "--workers is outside --min-workers..--max-workers; starting within them"
        );
    }
    Ok(PoolConfig {
        workers: o.workers,
        threads: o.threads,
        min_workers: min,
        max_workers: max,
        autoscale,
        graceful_timeout: o.graceful_timeout,
        heartbeat_timeout: o.timeout.max(Duration::from_secs(10)),
        max_boot_failures: o
            .max_boot_failures
            .unwrap_or(super::config::MAX_BOOT_FAILURES),
        scale_up_after: o.scale_up_after,
        scale_down_after: o.scale_down_after,
    })
}

async fn supervise(
    args: WorkerArgs,
    cfg: PoolConfig,
    listener: Listener,
    control: Option<std::os::unix::net::UnixListener>,
) -> Result<i32> {
    let mut pool = Pool::new(cfg);
    let stats = Arc::new(Mutex::new(pool.stats()));
    if let Some(c) = control {
        control::serve(c, stats.clone())?;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _watcher = if args.opts.reload {
        Some(watch_sources(&args, tx.clone())?)
    } else {
        None
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut ttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut reload_at: Option<Instant> = None;
    // /proc/self/exe is the master's own binary even after the file was replaced on disk, so
    // workers always run the same build as their master; elsewhere fall back to the path.
    let proc_exe = PathBuf::from("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe
    } else {
        std::env::current_exe()?
    };
    let child_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    tracing::info!(listen = %listener.describe, workers = args.opts.workers, threads = args.opts.threads, app = %args.opts.app, "master started");
    let mut listener = Some(listener);
    loop {
        let now = Instant::now();
        let actions = tokio::select! {
            Some(ev) = rx.recv() => match ev {
                Event::Report(id, r) => pool.report(id, r, now),
                Event::Exited(id) => pool.exited(id, now),
                Event::SourceChanged => { reload_at = Some(now + Duration::from_millis(300)); Vec::new() }
            },
            _ = tick.tick() => {
                let mut a = pool.tick(now);
                if reload_at.is_some_and(|t| now >= t) {
                    reload_at = None;
                    tracing::info!("python source changed, reloading workers");
                    a.extend(pool.reload(now));
                }
                a
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                stop_listening(&mut listener, &args);
                pool.stop(now)
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: draining");
                stop_listening(&mut listener, &args);
                pool.stop(now)
            }
            _ = hup.recv() => { tracing::info!("SIGHUP: replacing workers"); pool.reload(now) }
            _ = ttin.recv() => pool.resize(1, now),
            _ = ttou.recv() => pool.resize(-1, now),
        };
        for a in actions {
            match a {
                Action::Spawn(id) => match listener
                    .as_ref()
                    .ok_or_else(|| std::io::Error::other("no longer listening"))
                    .and_then(|l| spawn(&exe, &child_args, id, l, tx.clone()))
                {
                    Ok(pid) => {
                        tracing::info!(worker = id, pid, "worker started");
                        pool.set_pid(id, pid);
                    }
                    Err(e) => {
                        tracing::error!(worker = id, error = %e, "cannot start worker process");
                        let _ = tx.send(Event::Exited(id));
                    }
                },
                Action::Term(id) => signal_worker(&pool, id, Signal::SIGTERM),
                Action::Kill(id) => signal_worker(&pool, id, Signal::SIGKILL),
                Action::GiveUp => return Ok(give_up(&args, &mut pool, &mut rx).await),
            }
        }
        *stats.lock().unwrap_or_else(|e| e.into_inner()) = pool.stats();
        if pool.stopping() && pool.is_empty() {
            tracing::info!("all workers stopped");
            return Ok(0);
        }
    }
}

/// Draining: new connections are refused at once (the socket file is gone, and the listening
/// socket closes as the workers stop accepting) instead of waiting in the backlog for the whole
/// drain and then being reset; a client or proxy can go elsewhere right away.
fn stop_listening(listener: &mut Option<Listener>, args: &WorkerArgs) {
    if listener.take().is_some()
        && let Some(p) = &args.socket
    {
        let _ = std::fs::remove_file(p);
    }
}

fn signal_worker(pool: &Pool, id: u64, sig: Signal) {
    if let Some(pid) = pool.pid(id) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// The app cannot be imported: stop everything, leave the traceback where Kubernetes shows it.
async fn give_up(
    args: &WorkerArgs,
    pool: &mut Pool,
    rx: &mut mpsc::UnboundedReceiver<Event>,
) -> i32 {
    let tb = pool
        .last_boot_error()
        .unwrap_or("the app could not be loaded")
        .to_string();
    tracing::error!(
        failures = args
            .opts
            .max_boot_failures
            .unwrap_or(super::config::MAX_BOOT_FAILURES),
        "the app failed to boot too often, giving up:\n{tb}"
    );
    if let Some(path) = termination_log(args)
        && let Err(e) = std::fs::write(&path, &tb)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination log");
    }
    let now = Instant::now();
    for a in pool.stop(now) {
        if let Action::Term(id) = a {
            signal_worker(pool, id, Signal::SIGKILL);
        }
    }
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    while !pool.is_empty() {
        tokio::select! {
            Some(ev) = rx.recv() => if let Event::Exited(id) = ev { pool.exited(id, now); },
            _ = &mut deadline => break,
        }
    }
    EXIT_BOOT_FAILED
}

fn termination_log(args: &WorkerArgs) -> Option<PathBuf> {
    if let Some(p) = &args.termination_log {
        return Some(p.clone());
    }
    // Kubernetes mounts this file into every container; elsewhere there is nothing to write.
    let default = PathBuf::from("/dev/termination-log");
    default.exists().then_some(default)
}

/// Re-executes this binary as worker `id` with the listener on fd 3 and a report socket on fd 4.
fn spawn(
    exe: &PathBuf,
    args: &[OsString],
    id: u64,
    listener: &Listener,
    tx: mpsc::UnboundedSender<Event>,
) -> std::io::Result<i32> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let (lfd, rfd) = (listener.raw(), theirs.as_raw_fd());
    let mut cmd = std::process::Command::new(exe);
    if let Some(argv0) = std::env::args_os().next() {
        cmd.arg0(argv0);
    }
    cmd.args(args).env(CHILD_ENV, id.to_string());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. Duplicating above
    // fd 10 first keeps one dup2 from overwriting the other's source; dup2 clears close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            let a = libc::fcntl(lfd, libc::F_DUPFD, 10);
            let b = libc::fcntl(rfd, libc::F_DUPFD, 10);
            if a < 0 || b < 0 || libc::dup2(a, LISTEN_FD) < 0 || libc::dup2(b, REPORT_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(a);
            libc::close(b);
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd).spawn()?;
    drop(theirs);
    let pid = child.id().unwrap_or(0) as i32;
    ours.set_nonblocking(true)?;
    let ours = tokio::net::UnixStream::from_std(ours)?;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(ours).lines();
        let mut exited = false;
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(l)) => forward(&tx, id, &l),
                    _ => break,
                },
                _ = child.wait() => {
                    exited = true;
                    // Reports written just before exit (a boot traceback) are still in the socket.
                    while let Ok(Ok(Some(l))) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
                        forward(&tx, id, &l);
                    }
                    break;
                }
            }
        }
        if !exited {
            let _ = child.wait().await;
        }
        let _ = tx.send(Event::Exited(id));
    });
    Ok(pid)
}

fn forward(tx: &mpsc::UnboundedSender<Event>, id: u64, line: &str) {
    match serde_json::from_str::<Report>(line) {
        Ok(r) => {
            let _ = tx.send(Event::Report(id, r));
        }
        Err(e) => tracing::warn!(worker = id, error = %e, "unreadable worker report"),
    }
}

/// Watches the app directory and reports changed `.py` files (for `--reload`).
fn watch_sources(
    args: &WorkerArgs,
    tx: mpsc::UnboundedSender<Event>,
) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let dir = match &args.opts.chdir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        let relevant = !ev.kind.is_access()
            && ev
                .paths
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "py"));
        if relevant {
            let _ = tx.send(Event::SourceChanged);
        }
    })
    .map_err(|e| Error::Config(format!("--reload: cannot watch {}: {e}", dir.display())))?;
    w.watch(&dir, notify::RecursiveMode::Recursive)
        .map_err(|e| Error::Config(format!("--reload: cannot watch {}: {e}", dir.display())))?;
    Ok(w)
}

/// A stats snapshot shared with the control socket.
pub type SharedStats = Arc<Mutex<Stats>>;
