//! Resource bounds through `kubewsgi run`: no file descriptor leaks in the proxy or the worker
//! processes after thousands of requests (aborted ones included), and resident memory that stays
//! flat once warm. `scripts/soak` is the long version.

mod run_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use run_support::*;

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        for p in children(all[i]) {
            if !all.contains(&p) {
                all.push(p);
            }
        }
        i += 1;
    }
    all
}

fn fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn snapshot(pid: u32) -> BTreeMap<u32, usize> {
    tree(pid)
        .into_iter()
        .filter_map(|p| Some((p, fds(p)?)))
        .collect()
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
fn read_response(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let code = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    code
}

/// `n` keep-alive requests on each of `conns` parallel connections, with a body every third.
fn load(addr: SocketAddr, conns: usize, n: usize) {
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                for i in 0..n {
                    if i % 3 == 0 {
                        let body = vec![b'b'; 20_000];
                        write!(
                            w,
                            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .unwrap();
                        w.write_all(&body).unwrap();
                    } else {
                        w.write_all(b"GET /g HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
                    }
                    assert_eq!(read_response(&mut r), 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Connections that give up midway: before the head ends, mid-body, right after a full request
/// to a slow app, and without sending anything.
fn aborted(addr: SocketAddr, n: usize) {
    for i in 0..n {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = match i % 4 {
            0 => s.write_all(b"GET /half HTTP/1.1\r\nHost: a\r\nX-"),
            1 => s.write_all(b"POST /half HTTP/1.1\r\nHost: a\r\nContent-Length: 50000\r\n\r\nabc"),
            2 => s.write_all(b"GET /slow?sleep=0.05 HTTP/1.1\r\nHost: a\r\n\r\n"),
            _ => Ok(()),
        };
        drop(s);
    }
}

fn start() -> (tempfile::TempDir, Run) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("tests/apps/recorder/recorder.py"),
        dir.path().join("recorder.py"),
    )
    .unwrap();
    let r = Run::start(
        "recorder:app",
        dir.path(),
        &[
            "--workers",
            "2",
            "--threads",
            "4",
            "--body-buffer-size",
            "8k",
            "--access-log",
            "off",
        ],
    );
    (dir, r)
}

#[test]
fn no_descriptor_leak_after_thousands_of_requests() {
    let (_dir, r) = start();
    let pid = r.child.id();
    load(r.addr, 8, 30);
    aborted(r.addr, 40);
    // Let the warm-up's aborted connections settle before the baseline.
    std::thread::sleep(Duration::from_secs(3));
    let before = snapshot(pid);
    assert!(
        before.len() >= 4,
        "run, worker server and two workers: {before:?}"
    );
    for _ in 0..4 {
        load(r.addr, 8, 60);
        aborted(r.addr, 100);
    }
    // Aborted connections are closed after at most the linger time; wait for the counts.
    let end = Instant::now() + Duration::from_secs(60);
    let slack = 12;
    loop {
        let after = snapshot(pid);
        let leaks: Vec<String> = before
            .iter()
            .filter_map(|(p, b)| {
                let a = *after.get(p)?;
                (a > b + slack).then(|| format!("pid {p}: {b} -> {a}"))
            })
            .collect();
        if leaks.is_empty() {
            break;
        }
        assert!(Instant::now() < end, "descriptors leaked: {leaks:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let resp = r.get("/still");
    assert_eq!(status(&resp), 200, "{resp}");
}

#[test]
fn memory_stays_flat_under_load() {
    let (_dir, r) = start();
    let pid = r.child.id();
    load(r.addr, 8, 100);
    let warm: BTreeMap<u32, u64> = tree(pid)
        .into_iter()
        .filter_map(|p| Some((p, rss_kib(p)?)))
        .collect();
    for _ in 0..5 {
        load(r.addr, 8, 100);
    }
    for (p, w) in &warm {
        let Some(now) = rss_kib(*p) else { continue };
        // Generous: allocator growth and Python caches, never growth per request.
        assert!(
            now <= w + w / 2 + 32 * 1024,
            "pid {p}: RSS {w} KiB after warm-up, {now} KiB after 4000 more requests"
        );
    }
}
