//! 10,000 idle connections to `kubewsgi run`: other clients are still answered, the memory per
//! idle connection stays small, `--max-connections` holds with the rest waiting in the listen
//! backlog (served once slots free, none dropped), idle connections are closed after the client
//! timeout, and the proxy's descriptors return to their baseline. The proxy raises its own soft
//! open file limit, so it is started here with a low one.

mod run_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use run_support::*;

const IDLE: usize = 10_000;
/// Far above the client timeouts used here, so only a missing bound fails.
const BOUND: Duration = Duration::from_secs(60);

/// The tests each need 10,000 descriptors of this process's own: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn nofile() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    (l.rlim_cur, l.rlim_max)
}

fn set_soft_nofile(soft: u64) {
    let l = libc::rlimit {
        rlim_cur: soft,
        rlim_max: nofile().1,
    };
    // SAFETY: setrlimit(2) with a valid struct; lowering or raising up to the hard limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
}

/// Starts `kubewsgi run` with a soft open file limit of 1024 (the usual default), then raises
/// this process's own soft limit to its hard one for the clients.
fn start(dir: &Path, extra: &[&str]) -> Run {
    let hard = nofile().1;
    assert!(
        hard >= IDLE as u64 + 1000,
        "these tests need a hard open file limit of at least {} (it is {hard})",
        IDLE + 1000
    );
    std::fs::create_dir_all(dir.join("static")).unwrap();
    std::fs::write(dir.join("static/f.txt"), "static file\n").unwrap();
    std::fs::copy(
        root().join("tests/apps/recorder/recorder.py"),
        dir.join("recorder.py"),
    )
    .unwrap();
    let statics = format!("/s={}", dir.join("static").display());
    let mut args = vec![
        "--workers",
        "1",
        "--threads",
        "4",
        "--access-log",
        "off",
        "--static",
        &statics,
    ];
    args.extend(extra);
    set_soft_nofile(1024);
    let r = Run::start("recorder:app", dir, &args);
    set_soft_nofile(hard);
    // The proxy raised its own limit and said so.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", r.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(v[3], v[4], "soft limit not raised to the hard one: {line}");
    assert!(
        r.stderr().contains("open file limit"),
        "the limit is logged:\n{}",
        r.stderr()
    );
    r
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn connections(r: &Run) -> f64 {
    let (code, m) = r.admin_get("/metrics");
    assert_eq!(code, 200, "{m}");
    metric(&m, "kubewsgi_connections").expect("kubewsgi_connections")
}

/// Polls until the proxy holds `n` client connections.
fn wait_connections(r: &Run, n: usize) {
    let end = Instant::now() + BOUND;
    loop {
        let now = connections(r);
        if now >= n as f64 {
            return;
        }
        assert!(Instant::now() < end, "{now} of {n} connections accepted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Opens `n` connections that send nothing.
fn open_silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect()
}

/// A keep-alive connection left idle after one answered request.
fn open_kept_alive(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(b"GET /s/f.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"static file\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    s
}

/// Reads until the server closes; the bytes it sent, or `None` if still open at `deadline`.
fn closed_by(mut s: &TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(out),
        }
    }
}

/// True when the server has sent something or closed, without waiting.
fn has_news(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let news = !matches!(s.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    news
}

#[test]
fn ten_thousand_idle_connections_are_cheap_and_released() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), &["--client-timeout", "15"]);
    let pid = r.child.id();
    for _ in 0..20 {
        assert_eq!(status(&r.get("/warm")), 200);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (fds0, rss0) = (fds(pid), rss_kib(pid));

    // One in ten has had a request answered and idles on keep-alive; the rest never send a byte.
    let opened = Instant::now();
    let kept: Vec<TcpStream> = (0..IDLE / 10).map(|_| open_kept_alive(r.addr)).collect();
    let rss_kept = rss_kib(pid);
    let silent = open_silent(r.addr, IDLE - kept.len());
    wait_connections(&r, IDLE);
    let took = opened.elapsed();
    let (fds1, rss1) = (fds(pid), rss_kib(pid));
    let per_conn = (rss1.saturating_sub(rss0) * 1024) / IDLE as u64;
    let per_kept = (rss_kept.saturating_sub(rss0) * 1024) / kept.len() as u64;
    let per_silent = (rss1.saturating_sub(rss_kept) * 1024) / silent.len() as u64;
    eprintln!(
        "{IDLE} idle connections opened in {took:?}: proxy descriptors {fds0} -> {fds1}, \
         RSS {rss0} -> {rss1} KiB, {per_conn} bytes per connection \
         ({per_kept} kept alive, {per_silent} silent)"
    );
    assert!(fds1 >= IDLE, "each connection holds a descriptor: {fds1}");
    // Generous: a task, a socket and an idle HTTP/1.1 connection's state, not buffers per byte.
    assert!(
        per_conn <= 16 * 1024,
        "{per_conn} bytes of RSS per idle connection"
    );

    // Other clients are answered meanwhile, by the app and by the static files.
    for i in 0..20 {
        let resp = r.get(&format!("/other{i}"));
        assert_eq!(status(&resp), 200, "{resp}");
        assert_eq!(status(&r.get("/s/f.txt")), 200);
    }

    // All are closed by the proxy after the client timeout, without a word.
    let deadline = Instant::now() + BOUND;
    for (i, s) in kept.iter().chain(&silent).enumerate() {
        match closed_by(s, deadline) {
            Some(b) => assert!(b.is_empty(), "connection {i} got {b:?}"),
            None => panic!("connection {i} still open {BOUND:?} after --client-timeout 15"),
        }
    }
    let end = Instant::now() + BOUND;
    let slack = 12;
    loop {
        let now = fds(pid);
        if now <= fds0 + slack {
            eprintln!(
                "descriptors back to {now} (baseline {fds0}); RSS now {} KiB",
                rss_kib(pid)
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "descriptors {fds0} before, {now} after all idle connections were closed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(connections(&r), 0.0);
    assert_eq!(status(&r.get("/after")), 200);
}

#[test]
fn max_connections_queues_the_rest_in_the_backlog_and_drops_none() {
    const LIMIT: usize = 6_000;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let limit = LIMIT.to_string();
    let r = start(
        dir.path(),
        &["--client-timeout", "10", "--max-connections", &limit],
    );
    // Silent clients take every slot.
    let holders = open_silent(r.addr, LIMIT);
    wait_connections(&r, LIMIT);
    // The rest (within the kernel's backlog of 4096) send a whole request and wait.
    let waiting: Vec<TcpStream> = (0..IDLE - LIMIT)
        .map(|_| {
            let mut s = TcpStream::connect(r.addr).unwrap();
            s.write_all(b"GET /s/f.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = connections(&r);
    assert!(held <= LIMIT as f64, "{held} connections past the limit");
    // While every slot is held, none of the waiting is served: checked in this order so that an
    // answer seen first implies a slot freed before it.
    let served_early = waiting.iter().filter(|s| has_news(s)).count();
    let slot_freed = holders.iter().any(has_news);
    assert!(
        served_early == 0 || slot_freed,
        "{served_early} served with all {LIMIT} slots held"
    );
    if slot_freed {
        eprintln!("a held connection timed out before the check; the early check says nothing");
    }

    // The holders time out; every waiting client is then served, none dropped.
    let deadline = Instant::now() + BOUND;
    for (i, s) in holders.iter().enumerate() {
        assert!(
            closed_by(s, deadline).is_some(),
            "holder {i} still open {BOUND:?} after --client-timeout 10"
        );
    }
    let mut failed = Vec::new();
    for (i, s) in waiting.iter().enumerate() {
        let resp = closed_by(s, deadline).unwrap_or_default();
        let resp = String::from_utf8_lossy(&resp);
        if status(&resp) != 200 || !resp.ends_with("static file\n") {
            failed.push(format!("{i}: {resp:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} waiting clients not served: {:?}",
        failed.len(),
        waiting.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(status(&r.get("/after")), 200);
}
