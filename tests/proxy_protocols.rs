//! HTTP/2 by prior knowledge (h2c), TLS with ALPN h2 and http/1.1, keep-alive, and many
//! slow clients not slowing down normal requests.

mod proxy_support;
mod tls_support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use proxy_support::*;

#[test]
fn h2c_prior_knowledge_and_keep_alive() {
    let s = Stack::start(1, 4, &[]);
    let url = format!("http://{}/echo", s.addr);
    let (out, ok) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]);
    assert!(ok, "{out}");
    let (json, version) = out.rsplit_once('\n').unwrap();
    assert_eq!(version, "2");
    let j: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        j["headers"]["host"][0],
        s.addr.to_string(),
        "h2 :authority becomes Host"
    );
    assert_eq!(j["headers"]["x-forwarded-proto"][0], "http");
    // A POST body over h2 arrives with its length.
    let (out, ok) = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        "0123456789",
        &url,
    ]);
    assert!(ok, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["body_len"],
        10
    );
    // Two requests on one HTTP/1.1 connection.
    let (out, ok) = curl(&[
        "-w",
        "%{num_connects}\n",
        "-o",
        "/dev/null",
        &url,
        "-o",
        "/dev/null",
        &url,
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "1\n0\n", "the second request reused the connection");
}

#[test]
fn tls_with_alpn_h2_and_http11() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_support::make_cert(dir.path());
    let s = Stack::start(
        1,
        4,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://localhost:{}/echo", s.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", s.addr.port());
    let cacert = cert.to_str().unwrap();
    let (out, ok) = curl(&[
        "--cacert",
        cacert,
        "--resolve",
        &resolve,
        "--http2",
        "-w",
        "\n%{http_version}",
        &url,
    ]);
    assert!(ok, "{out}");
    let (json, version) = out.rsplit_once('\n').unwrap();
    assert_eq!(version, "2", "ALPN chose h2");
    let j: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(j["headers"]["x-forwarded-proto"][0], "https");
    let (out, ok) = curl(&[
        "--cacert",
        cacert,
        "--resolve",
        &resolve,
        "--http1.1",
        "-w",
        "\n%{http_version}",
        &url,
    ]);
    assert!(ok, "{out}");
    assert!(out.ends_with("\n1.1"), "{out}");
    // Plain HTTP on the TLS port gets nowhere near the app.
    let r = try_raw(
        s.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap_or_default();
    assert!(!r.contains("x-app"), "{r}");
}

#[test]
fn slow_clients_do_not_hold_workers() {
    // One worker thread only: any slow client holding it would stall everything.
    let s = Stack::start(1, 1, &["--client-timeout", "60", "--max-body-size", "1m"]);
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut c = TcpStream::connect(s.addr).expect("connect");
        // Half send an unfinished head, half an unfinished body.
        if i % 2 == 0 {
            c.write_all(b"GET /slowloris HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n")
                .unwrap();
        } else {
            c.write_all(b"POST /slowbody HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\nabc")
                .unwrap();
        }
        idle.push(c);
    }
    let t = Instant::now();
    for _ in 0..50 {
        let r = raw(
            s.addr,
            b"GET /fast HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status(&r), 200, "{r}");
    }
    // Generous: 50 requests on a loaded 2-core machine, not a benchmark.
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    let m = s.metrics();
    assert!(metric(&m, "kubewsgi_connections").unwrap() >= 1000.0, "{m}");
    drop(idle);
}

#[test]
fn max_connections_holds_extra_clients_in_the_backlog() {
    let s = Stack::start(1, 4, &["--max-connections", "2"]);
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET /keep HTTP/1.1\r\nHost: h\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    // Both answered and kept open: the limit is reached.
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(c, &mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    // A third client connects (kernel backlog) but is not served while the two stay open.
    let third = std::thread::spawn({
        let a = s.addr;
        move || {
            raw(
                a,
                b"GET /third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            )
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!third.is_finished(), "served past --max-connections");
    drop(held);
    assert_eq!(status(&third.join().unwrap()), 200);
}
