//! Malformed, ambiguous and oversized HTTP/1.x requests (RFC 9110, RFC 9112) sent raw through
//! `kubewsgi run` to an app that records every request it sees: each one is refused (a 4xx/5xx
//! answer, or a close without any 2xx), none reaches the app, and the server keeps serving.

mod hostile_corpus;
mod run_support;

use std::net::SocketAddr;

use hostile_corpus::*;
use run_support::*;

/// An ordinary request is still served, and the app logs it.
fn still_served(addr: SocketAddr, n: usize) {
    let resp = raw(
        addr,
        b"GET /ok HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&resp), 200, "normal request {n}: {resp}");
}

#[test]
fn hostile_requests_never_reach_the_app() {
    let dir = recorder_dir();
    let r = Run::start(
        "recorder:app",
        dir.path(),
        &[
            "--workers",
            "2",
            "--threads",
            "4",
            "--max-body-size",
            "1m",
            "--client-timeout",
            "5",
        ],
    );
    still_served(r.addr, 0);
    let mut failures = Vec::new();
    for (i, (name, req)) in cases().iter().enumerate() {
        let before = app_log(dir.path());
        let out = exchange(r.addr, req);
        let codes = statuses(&out);
        let after = app_log(dir.path());
        let reached = &after[before.len()..];
        if codes.iter().any(|c| (200..400).contains(c)) || !reached.is_empty() {
            failures.push(format!(
                "{name}: answers {codes:?}, app saw {reached:?}, response {:?}",
                String::from_utf8_lossy(&out[..out.len().min(300)])
            ));
        }
        still_served(r.addr, i + 1);
    }
    let log = app_log(dir.path());
    let stray: Vec<&str> = log.lines().filter(|l| !l.starts_with("GET /ok ")).collect();
    assert!(
        failures.is_empty() && stray.is_empty(),
        "let through:\n{}\napp log lines not from normal requests: {stray:?}",
        failures.join("\n")
    );
    assert_eq!(log.lines().count(), cases().len() + 1, "{log}");
}

/// Chunk extensions are dropped by the chunk decoder whatever bytes they hold (as nginx does):
/// the app gets exactly the decoded body, re-framed with a Content-Length, and nothing smuggled.
#[test]
fn chunk_extension_bytes_are_dropped_not_forwarded() {
    let dir = recorder_dir();
    let r = Run::start(
        "recorder:app",
        dir.path(),
        &["--workers", "1", "--threads", "2"],
    );
    let out = exchange(
        r.addr,
        b"POST /ext HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3;\0\x01=GET /smuggled\r\nabc\r\n0;x\r\n\r\n",
    );
    assert_eq!(
        statuses(&out),
        vec![200],
        "{}",
        String::from_utf8_lossy(&out)
    );
    let log = app_log(dir.path());
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].starts_with("POST /ext - 3 "), "{log}");
}

/// Each refusal names a reason the client can read, and answers with a 4xx/5xx status line rather
/// than only closing, where a status line can be written.
#[test]
fn refusals_answer_with_a_status() {
    let dir = recorder_dir();
    let r = Run::start(
        "recorder:app",
        dir.path(),
        &["--workers", "1", "--threads", "2"],
    );
    for (req, want) in [
        (&b"GET /h HTTP/1.1\r\n\r\n"[..], 400),
        (b"GET http://evil.test/h HTTP/1.1\r\nHost: a.test\r\n\r\n", 400),
        (b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /h HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /h HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /h HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
        (b"GET /h HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    ] {
        let out = exchange(r.addr, req);
        let codes = statuses(&out);
        assert_eq!(
            codes.first().copied(),
            Some(want),
            "{:?} -> {:?}",
            String::from_utf8_lossy(req),
            String::from_utf8_lossy(&out)
        );
    }
    assert_eq!(app_log(dir.path()), "", "nothing reached the app");
}

/// HTTP/2 (h2c by prior knowledge): a Host naming another entity than `:authority`, and neither
/// of them, are refused with 400 on their stream; an ordinary stream on the same connection is
/// served, and only it reaches the app.
#[test]
fn h2_host_conflicts_are_refused() {
    let dir = recorder_dir();
    let r = Run::start(
        "recorder:app",
        dir.path(),
        &["--workers", "1", "--threads", "2"],
    );
    let out = python(
        r#"
import socket, sys
import h2.config, h2.connection, h2.events
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60)
cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False)
c = h2.connection.H2Connection(config=cfg)
c.initiate_connection()
streams = {
    1: [(":method", "GET"), (":path", "/conflict"), (":scheme", "http"), (":authority", "a.test"), ("host", "b.test")],
    3: [(":method", "GET"), (":path", "/nohost"), (":scheme", "http")],
    5: [(":method", "GET"), (":path", "/ok"), (":scheme", "http"), (":authority", "a.test")],
}
for sid, headers in streams.items():
    c.send_headers(sid, headers, end_stream=True)
s.sendall(c.data_to_send())
status, done = {}, set()
while len(done) < len(streams):
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            status[e.stream_id] = dict(e.headers)[b":status"].decode()
        elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
            done.add(e.stream_id)
    s.sendall(c.data_to_send())
print(" ".join(f"{k}={status.get(k, 'reset')}" for k in sorted(streams)))
"#,
        &[&r.addr.port().to_string()],
    );
    let out = out.trim();
    eprintln!("h2 streams: {out}");
    let codes: Vec<&str> = out.split(' ').collect();
    assert_eq!(codes.len(), 3, "{out}");
    assert_eq!(codes[2], "5=200", "{out}");
    for c in &codes[..2] {
        let code = c.split('=').nth(1).unwrap();
        assert!(code == "reset" || code.starts_with('4'), "{out}");
    }
    let log = app_log(dir.path());
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.starts_with("GET /ok "), "{log}");
}
