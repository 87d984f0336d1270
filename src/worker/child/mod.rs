//! A worker process: embeds CPython, imports the app once, serves HTTP/1.1 on the listener
//! inherited from the master, runs the app on `--threads` Python threads.

pub mod body;
pub mod cut;
pub mod job;
pub mod queue;
pub mod reply;
pub mod report;
pub mod server;

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};

use self::report::Reporter;
use self::server::Shared;
use super::protocol::{BEAT_EVERY, LISTEN_FD, Report};
use super::{Error, Result, WorkerArgs, python};

/// How long the app's `atexit` handlers get once the worker has drained (Sentry's default flush
/// takes up to 2 s).
const EXIT_HANDLERS_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long requests still in the app after the drain (a response cut at the deadline, a
/// client gone) get to notice and run their iterable's `close()`, as PEP 3333 requires.
const APP_FINISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs worker process `id` until it has drained; never returns normally (the process exits).
pub fn run(id: u64, args: WorkerArgs) -> Result<()> {
    let span = tracing::info_span!("worker", id, pid = std::process::id());
    let _enter = span.enter();
    // Terminal signals reach the whole process group; only the master acts on them.
    // SAFETY: setting a signal disposition to SIG_IGN before any thread is started.
    unsafe {
        for s in [libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU] {
            libc::signal(s, libc::SIG_IGN);
        }
        libc::fcntl(LISTEN_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    let reporter = Reporter::from_inherited_fd();
    let opts = &args.opts;
    let jobs = Arc::new(queue::JobQueue::default());
    let (drain_tx, _) = watch::channel(false);
    let mut allow: Vec<IpAddr> = Vec::new();
    let mut any = false;
    for ip in &args.forwarded_allow_ips {
        match ip.trim() {
            "*" => any = true,
            "" => {}
            s => allow.push(s.parse().map_err(|_| {
                Error::Config(format!("--forwarded-allow-ips: `{s}` is not an IP address"))
            })?),
        }
    }
    let jitter = if opts.max_requests_jitter > 0 {
        RandomState::new().hash_one(id) % (opts.max_requests_jitter + 1)
    } else {
        0
    };
    let shared = Arc::new(Shared {
        jobs: jobs.clone(),
        wakes: Arc::new(reply::Wakes::default()),
        busy: AtomicU32::new(0),
        requests: AtomicU64::new(0),
        max_requests: if opts.max_requests > 0 {
            opts.max_requests + jitter
        } else {
            0
        },
        timeout: opts.timeout,
        keep_alive: opts.keep_alive,
        epoch: Instant::now(),
        draining: AtomicBool::new(false),
        drain_started: std::sync::OnceLock::new(),
        drain: drain_tx,
        conns: AtomicUsize::new(0),
        load: AtomicU32::new(0),
        freed: tokio::sync::Notify::new(),
        threads: opts.threads,
        conns_gone: tokio::sync::Notify::new(),
        forwarded_allow: allow,
        forwarded_any: any,
        reporter,
    });

    let (start_tx, start_rx) = oneshot::channel::<()>();
    let io = {
        let shared = shared.clone();
        let grace = opts.graceful_timeout;
        std::thread::Builder::new()
            .name("kubewsgi-http".into())
            .spawn({
                let span = span.clone();
                move || span.in_scope(|| io_thread(shared, start_rx, grace))
            })?
    };

    let multiprocess = opts.workers > 1 || opts.max_workers.is_some_and(|m| m > 1);
    let app = match python::boot(opts, multiprocess) {
        Ok(app) => app,
        Err(traceback) => {
            tracing::error!("cannot load the app {}:\n{traceback}", opts.app);
            shared.reporter.send(&Report::BootError { traceback });
            python::flush_stdio();
            // SAFETY: exiting without running Python finalizers on a half-initialised app.
            unsafe { libc::_exit(3) };
        }
    };
    python::spawn_threads(app, opts.threads, jobs, shared.clone())?;
    shared.reporter.send(&Report::Ready {
        threads: opts.threads,
    });
    tracing::info!(threads = opts.threads, "worker ready");
    let _ = start_tx.send(());
    let _ = io.join();
    // Within what is left of --graceful-timeout: a drain that used it all does not overrun it.
    let grace_left = shared
        .drain_started
        .get()
        .map_or(std::time::Duration::ZERO, |t| {
            opts.graceful_timeout.saturating_sub(t.elapsed())
        });
    let finish_by = Instant::now() + APP_FINISH_LIMIT.min(grace_left);
    while shared.busy.load(Ordering::Relaxed) > 0 && Instant::now() < finish_by {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    shared.reporter.send(&Report::Beat {
        busy: shared.busy.load(Ordering::Relaxed),
        requests: shared.requests.load(Ordering::Relaxed),
    });
    tracing::info!(
        requests = shared.requests.load(Ordering::Relaxed),
        "worker stopped"
    );
    python::exit_handlers(EXIT_HANDLERS_LIMIT);
    // Python threads may be stuck in the app; the process ends without joining them.
    // SAFETY: _exit ends the process; nothing after it runs.
    unsafe { libc::_exit(0) }
}

fn io_thread(shared: Arc<Shared>, start: oneshot::Receiver<()>, grace: std::time::Duration) {
    let (park, unpark) = (shared.wakes.clone(), shared.wakes.clone());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || park.before_park())
        .on_thread_unpark(move || unpark.after_unpark())
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return;
        }
    };
    // The worker's span stays entered on this thread, so every task of this runtime logs inside it.
    rt.block_on(async move {
        tokio::spawn(heartbeat(shared.clone()));
        tokio::spawn(on_signals(shared.clone()));
        let mut drain = shared.drain.subscribe();
        tokio::select! {
            r = start => if r.is_err() { return },
            _ = drain.wait_for(|d| *d) => return,
        }
        if let Err(e) = listen(shared, grace).await {
            tracing::error!(error = %e, "cannot serve on the inherited listener");
        }
    });
}

async fn listen(shared: Arc<Shared>, grace: std::time::Duration) -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockaddrLike as _, SockaddrStorage, getsockname};
    let family = getsockname::<SockaddrStorage>(LISTEN_FD)
        .map_err(std::io::Error::from)?
        .family();
    if family == Some(AddressFamily::Unix) {
        // SAFETY: fd 3 is the listening Unix socket the master passed; this is its only owner.
        let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTEN_FD) };
        l.set_nonblocking(true)?;
        server::serve(tokio::net::UnixListener::from_std(l)?, shared, grace).await;
    } else {
        // SAFETY: fd 3 is the listening TCP socket the master passed; this is its only owner.
        let l = unsafe { std::net::TcpListener::from_raw_fd(LISTEN_FD) };
        l.set_nonblocking(true)?;
        server::serve(tokio::net::TcpListener::from_std(l)?, shared, grace).await;
    }
    Ok(())
}

async fn heartbeat(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(BEAT_EVERY);
    loop {
        every.tick().await;
        shared.reporter.send(&Report::Beat {
            busy: shared.busy.load(Ordering::Relaxed),
            requests: shared.requests.load(Ordering::Relaxed),
        });
        if shared.reporter.master_gone() {
            tracing::warn!("master gone, draining");
            shared.start_drain();
            return;
        }
    }
}

async fn on_signals(shared: Arc<Shared>) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("draining");
    shared.start_drain();
}
