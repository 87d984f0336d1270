//! Server-sent events and `X-Accel-Buffering: no` through `kubewsgi run`: the proxy passes each
//! chunk on as the app yields it (the app waits for the client to have seen the first event
//! before it sends the second), while an ordinary response is still buffered whole; the worker
//! slot held by a stream is freed when the client goes away.

mod run_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use run_support::*;

const APP: &str = r#"
import os, time

def gate(name):
    # The test creates the file once it has seen the first chunk: a buffering proxy never
    # lets it see that chunk, and the app would wait here until the test fails.
    path = os.path.join(os.path.dirname(__file__), name)
    end = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.02)

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/events":
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        def events():
            yield b"data: first\n\n"
            gate("events.go")
            yield b"data: second\n\n"
        return events()
    if path == "/unbuffered":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        def chunks():
            yield b"one\n"
            gate("unbuffered.go")
            yield b"two\n"
        return chunks()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain\n"]
"#;

/// Reads from `s` until `needle` has arrived; panics after `limit`.
fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, needle: &str, limit: Duration) {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(got).contains(needle) {
        assert!(
            Instant::now() < end,
            "{needle:?} did not arrive within {limit:?}; got {:?}",
            String::from_utf8_lossy(got)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "closed before {needle:?}: {:?}",
                String::from_utf8_lossy(got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn open(run: &Run, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(run.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

fn streams(run: &Run, dir: &Path, path: &str, first: &str, gate: &str, second: &str) {
    let mut s = open(run, path);
    let mut got = Vec::new();
    read_until(&mut s, &mut got, first, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains(second), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("x-accel-buffering"),
        "the proxy's own header is not passed to the client: {text}"
    );
    std::fs::write(dir.join(gate), b"").unwrap();
    read_until(&mut s, &mut got, second, Duration::from_secs(30));
}

#[test]
fn event_streams_and_unbuffered_responses_arrive_as_they_are_yielded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("streaming.py"), APP).unwrap();
    // One thread: a stream that kept its slot after the client left would block the rest.
    let run = Run::start(
        "streaming:app",
        dir.path(),
        &["--workers", "1", "--threads", "1", "--access-log", "off"],
    );
    streams(
        &run,
        dir.path(),
        "/events",
        "data: first",
        "events.go",
        "data: second",
    );
    streams(
        &run,
        dir.path(),
        "/unbuffered",
        "one\n",
        "unbuffered.go",
        "two\n",
    );

    // A client that leaves in the middle of a stream gives its worker slot back.
    std::fs::remove_file(dir.path().join("events.go")).unwrap();
    let mut s = open(&run, "/events");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, "data: first", Duration::from_secs(30));
    drop(s);
    std::fs::write(dir.path().join("events.go"), b"").unwrap();
    let out = raw(
        run.addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&out), 200, "{out}");
    assert_eq!(body(&out), "plain\n");
    assert!(
        header(&out, "content-length").is_some(),
        "an ordinary response is still buffered and sent with its length: {out}"
    );
}
