//! The hostile corpus through the TLS port (HTTP/1.1 by ALPN, a real rustls client, certificates
//! made here), answered as on the plain port and never reaching the app; and clients that stall
//! over TLS or HTTP/2 (no handshake, half a ClientHello, half a head, half a preface, a header
//! block never finished) bounded by `--client-timeout` instead of holding a connection forever.

mod hostile_corpus;
mod run_support;
mod tls_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostile_corpus::*;
use run_support::*;
use rustls::ClientConfig;
use tls_support::*;

fn start(dir: &Path, tls: &[String], extra: &[&str]) -> Run {
    let mut args: Vec<&str> = vec!["--workers", "1", "--threads", "4"];
    args.extend(tls.iter().map(String::as_str));
    args.extend(extra);
    Run::start("recorder:app", dir, &args)
}

/// An ordinary request over TLS is served.
fn still_served_tls(addr: SocketAddr, cfg: &Arc<ClientConfig>, n: usize) {
    let s = connect(addr, cfg, Duration::from_secs(60));
    let out = exchange_on(
        s,
        b"GET /ok HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        statuses(&out).first(),
        Some(&200),
        "normal request {n}: {}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn hostile_requests_over_tls_are_answered_as_on_the_plain_port() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(certs.path());
    let cfg = client(&[&cert], b"http/1.1");
    let (plain_dir, tls_dir) = (recorder_dir(), recorder_dir());
    let flags = ["--max-body-size", "1m", "--client-timeout", "5"];
    let plain = start(plain_dir.path(), &[], &flags);
    let tls = start(tls_dir.path(), &tls_flags(&cert, &key), &flags);
    still_served_tls(tls.addr, &cfg, 0);
    let mut failures = Vec::new();
    for (i, (name, req)) in cases().into_iter().enumerate() {
        let before = app_log(tls_dir.path());
        // Both at once: some cases wait for the client timeout.
        let on_plain = std::thread::spawn({
            let (addr, req) = (plain.addr, req.clone());
            move || statuses(&exchange(addr, &req))
        });
        let out = exchange_on(connect(tls.addr, &cfg, Duration::from_secs(20)), &req);
        let codes = statuses(&out);
        let plain_codes = on_plain.join().unwrap();
        let reached = app_log(tls_dir.path())[before.len()..].to_string();
        if codes.iter().any(|c| (200..400).contains(c))
            || !reached.is_empty()
            || codes.first() != plain_codes.first()
        {
            failures.push(format!(
                "{name}: TLS answers {codes:?}, plain {plain_codes:?}, app saw {reached:?}, \
                 response {:?}",
                String::from_utf8_lossy(&out[..out.len().min(300)])
            ));
        }
        still_served_tls(tls.addr, &cfg, i + 1);
    }
    let log = app_log(tls_dir.path());
    let stray: Vec<&str> = log.lines().filter(|l| !l.starts_with("GET /ok ")).collect();
    assert!(
        failures.is_empty() && stray.is_empty(),
        "over TLS:\n{}\napp log lines not from normal requests: {stray:?}",
        failures.join("\n")
    );
    assert_eq!(log.lines().count(), cases().len() + 1, "{log}");
}

/// Reads until the server closes the connection (EOF, reset or TLS error); `None` while it is
/// still open after the socket's read timeout.
fn until_closed<S: Read>(mut s: S) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(out),
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];
/// A HEADERS frame on stream 1 without END_HEADERS (GET http /): the header block never ends.
const OPEN_HEADERS: &[u8] = &[0, 0, 3, 0x1, 0, 0, 0, 0, 1, 0x82, 0x86, 0x84];

/// Far above the 2 s client timeout, so only a missing bound fails.
const BOUND: Duration = Duration::from_secs(30);

/// What one stalling client saw: its name, whether the server closed within [`BOUND`], the
/// bytes it got, and the client's end, kept open.
type Stalled = (&'static str, Option<Vec<u8>>, Box<dyn Send>);

fn stall_tcp(name: &'static str, addr: SocketAddr, send: &'static [u8]) -> Stalled {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(send).unwrap();
    let seen = until_closed(&s);
    (name, seen, Box::new(s))
}

fn stall_tls(
    name: &'static str,
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    send: &'static [u8],
) -> Stalled {
    let mut s = connect(addr, &cfg, BOUND);
    s.write_all(send).unwrap();
    s.flush().unwrap();
    let seen = until_closed(&mut s);
    (name, seen, Box::new(s))
}

/// Waits until the proxy holds no client connection (the admin listener is not counted).
fn connections_released(r: &Run) {
    let end = Instant::now() + BOUND;
    loop {
        let (_, m) = r.admin_get("/metrics");
        let n = metric(&m, "kubewsgi_connections").expect("kubewsgi_connections");
        if n == 0.0 {
            return;
        }
        assert!(Instant::now() < end, "{n} connections still held:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn stalled_tls_clients_are_bounded_by_the_client_timeout() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(certs.path());
    let dir = recorder_dir();
    let r = start(
        dir.path(),
        &tls_flags(&cert, &key),
        &["--client-timeout", "2"],
    );
    let (h1, h2) = (client(&[&cert], b"http/1.1"), client(&[&cert], b"h2"));
    let a = r.addr;
    let hello = &*Box::leak(tls_client_hello().into_boxed_slice());
    let clients: Vec<std::thread::JoinHandle<Stalled>> = vec![
        std::thread::spawn(move || stall_tcp("no handshake", a, b"")),
        std::thread::spawn(move || stall_tcp("half a ClientHello", a, &hello[..20])),
        std::thread::spawn({
            let c = h1.clone();
            move || stall_tls("half a head", a, c, b"GET /half HTTP/1.1\r\nHost: a\r\nX-A")
        }),
        std::thread::spawn({
            let c = h1.clone();
            move || stall_tls("silent after the handshake", a, c, b"")
        }),
        std::thread::spawn({
            let c = h2.clone();
            move || stall_tls("h2, silent", a, c, b"")
        }),
        std::thread::spawn({
            let c = h2.clone();
            move || stall_tls("h2, half a preface", a, c, &PREFACE[..10])
        }),
        std::thread::spawn({
            let c = h2.clone();
            let frames: &'static [u8] =
                Box::leak([PREFACE, SETTINGS, OPEN_HEADERS].concat().into());
            move || stall_tls("h2, header block never ends", a, c, frames)
        }),
    ];
    let done: Vec<Stalled> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    for (name, seen, _) in &done {
        let Some(bytes) = seen else {
            panic!("{name}: still open after {BOUND:?} with --client-timeout 2");
        };
        let codes = statuses(bytes);
        if *name == "half a head" {
            assert_eq!(
                codes,
                vec![408],
                "{name}: {:?}",
                String::from_utf8_lossy(bytes)
            );
        } else if !name.starts_with("h2") {
            assert!(bytes.is_empty(), "{name}: closed with {bytes:?}");
        }
    }
    // The slots are free while every client still holds its end open.
    connections_released(&r);
    drop(done);
    still_served_tls(r.addr, &h1, 1);
    assert_eq!(
        app_log(dir.path()).lines().count(),
        1,
        "only the normal request reached the app"
    );
}

#[test]
fn stalled_h2c_clients_are_bounded_by_the_client_timeout() {
    let dir = recorder_dir();
    let r = start(dir.path(), &[], &["--client-timeout", "2"]);
    let a = r.addr;
    let frames: &'static [u8] = Box::leak([PREFACE, SETTINGS, OPEN_HEADERS].concat().into());
    let clients = vec![
        std::thread::spawn(move || stall_tcp("h2c, preface only", a, PREFACE)),
        std::thread::spawn(move || stall_tcp("h2c, half a preface", a, &PREFACE[..10])),
        std::thread::spawn(move || stall_tcp("h2c, header block never ends", a, frames)),
    ];
    let done: Vec<Stalled> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    for (name, seen, _) in &done {
        assert!(
            seen.is_some(),
            "{name}: still open after {BOUND:?} with --client-timeout 2"
        );
    }
    connections_released(&r);
    drop(done);
    assert_eq!(status(&r.get("/ok")), 200);
    // A stream open longer than the client timeout is not idleness: it is answered.
    let url = format!("http://{}/slow?sleep=4", r.addr);
    let (out, ok) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_code} %{http_version}",
        &url,
    ]);
    assert!(ok && out.ends_with("\n200 2"), "{out}");
    assert_eq!(app_log(dir.path()).lines().count(), 2);
}
