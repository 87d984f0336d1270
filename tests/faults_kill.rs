//! kill -9 of one worker process under load through `kubewsgi run`: at most the requests in
//! flight on it fail, idempotent ones that failed before any response byte are retried by the
//! proxy, the worker is replaced and everything after is served.

mod run_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use run_support::*;

/// One request on a keep-alive connection; the status, or None when the connection failed.
fn request(r: &mut BufReader<TcpStream>, w: &mut TcpStream, req: &[u8]) -> Option<u16> {
    w.write_all(req).ok()?;
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let code = line.split(' ').nth(1)?.parse().ok()?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(code)
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    get_failed: AtomicUsize,
    post_failed: AtomicUsize,
}

fn client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let Ok(s) = TcpStream::connect(addr) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let post = (id + i).is_multiple_of(4);
            let req: &[u8] = if post {
                b"POST /p?sleep=0.05 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            } else {
                b"GET /g?sleep=0.05 HTTP/1.1\r\nHost: a\r\n\r\n"
            };
            match request(&mut r, &mut w, req) {
                Some(200) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    let t = if post {
                        &tally.post_failed
                    } else {
                        &tally.get_failed
                    };
                    t.fetch_add(1, Ordering::Relaxed);
                    // A failed exchange may leave the connection unusable: start a new one.
                    if other.is_none() {
                        break;
                    }
                }
            }
        }
    }
}

#[test]
fn kill_9_of_a_worker_under_load_loses_at_most_its_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("tests/apps/recorder/recorder.py"),
        dir.path().join("recorder.py"),
    )
    .unwrap();
    let threads = 4;
    let r = Run::start(
        "recorder:app",
        dir.path(),
        &[
            "--workers",
            "2",
            "--threads",
            &threads.to_string(),
            "--access-log",
            "off",
        ],
    );
    let server = children(r.child.id());
    assert_eq!(server.len(), 1, "run has one child, the worker server");
    let end = Instant::now() + Duration::from_secs(60);
    let workers = loop {
        let w = children(server[0]);
        if w.len() >= 2 {
            break w;
        }
        assert!(Instant::now() < end, "worker processes not found: {w:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..12)
        .map(|id| {
            let (stop, tally) = (stop.clone(), tally.clone());
            let addr = r.addr;
            std::thread::spawn(move || client(addr, id, stop, tally))
        })
        .collect();
    // Under load: wait until requests flow, then kill one worker outright.
    let end = Instant::now() + Duration::from_secs(60);
    while tally.ok.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < end, "load did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on a worker process of the server this test started.
    unsafe { libc::kill(workers[0] as i32, libc::SIGKILL) };
    let before = tally.ok.load(Ordering::Relaxed);
    let end = Instant::now() + Duration::from_secs(60);
    while tally.ok.load(Ordering::Relaxed) < before + 300 {
        assert!(Instant::now() < end, "serving did not go on after the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (gets, posts) = (
        tally.get_failed.load(Ordering::Relaxed),
        tally.post_failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "kill -9 under load: {} ok, {gets} GET and {posts} POST failed",
        tally.ok.load(Ordering::Relaxed)
    );
    assert!(
        gets + posts <= threads,
        "more failures ({gets} GET, {posts} POST) than requests in flight on one worker ({threads})"
    );
    // A GET reset before any response byte is retried on a fresh connection (the other worker).
    assert_eq!(
        gets, 0,
        "a GET failed although the proxy retries idempotent requests"
    );
    // The killed worker is replaced: the server has two workers again, and a new one among them.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let now = children(server[0]);
        if now.len() >= 2 && !now.contains(&workers[0]) {
            break;
        }
        assert!(Instant::now() < end, "worker not replaced: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&r.get("/after")), 200);
}
