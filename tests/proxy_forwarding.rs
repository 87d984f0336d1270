//! The proxy in front of a real hyper app server on a Unix socket: forwarding, headers, bodies,
//! limits, malformed requests, errors, queueing, metrics, access log and drain.

mod proxy_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proxy_support::*;

#[test]
fn forwards_with_forwarded_headers_and_without_hop_by_hop() {
    let s = Stack::start(1, 4, &[]);
    let r = raw(
        s.addr,
        b"GET /echo?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
          Connection: close, x-hop\r\nX-Hop: secret\r\nKeep-Alive: 5\r\nX-Keep: yes\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("x-app: fake"), "{r}");
    let j = json(&r);
    let h = &j["headers"];
    assert_eq!(j["uri"], "/echo?x=1");
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "example.com:8080");
    assert_eq!(h["host"][0], "example.com:8080");
    assert_eq!(h["x-keep"][0], "yes");
    assert!(
        h.get("x-hop").is_none() && h.get("keep-alive").is_none(),
        "{h}"
    );
    // Hop-by-hop headers of the app's response are not passed on either.
    assert!(
        !r.to_ascii_lowercase().contains("connection: keep-alive"),
        "{r}"
    );
}

#[test]
fn trusted_proxies_extend_forwarded_for() {
    let s = Stack::start(1, 4, &["--trusted-proxies", "127.0.0.0/8"]);
    let r = raw(s.addr, b"GET /e HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n");
    let h = &json(&r)["headers"];
    assert_eq!(h["x-forwarded-for"][0], "1.2.3.4, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
}

#[test]
fn bodies_are_buffered_reframed_and_spooled() {
    let spool = tempfile::tempdir().unwrap();
    let s = Stack::start(
        1,
        4,
        &[
            "--body-buffer-size",
            "16k",
            "--spool-dir",
            spool.path().to_str().unwrap(),
            "--max-body-size",
            "2m",
        ],
    );
    // Chunked from the client arrives with a Content-Length at the app.
    let r = raw(s.addr, b"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let j = json(&r);
    assert_eq!(j["body_len"], 11);
    assert_eq!(j["headers"]["content-length"][0], "11");
    assert!(j["headers"].get("transfer-encoding").is_none());
    // 1.5 MB: spooled to a file on the way in, intact at the app.
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut req = format!(
        "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let r = raw(s.addr, &req);
    let j = json(&r);
    assert_eq!(j["body_len"], big.len());
    assert_eq!(j["body_digest"], digest(&big));
    // Large responses (5 MB, beyond the response buffer) come back whole.
    let (out, ok) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        &format!("http://{}/big?big=5000000", s.addr),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "200 5000000");
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "spool files are removed"
    );
}

#[test]
fn limits_answer_413_431_and_400() {
    let s = Stack::start(1, 4, &["--max-body-size", "1k", "--max-header-size", "8k"]);
    let before = s.app.state.requests.load(Ordering::SeqCst);
    // 413 by Content-Length, before the body is read.
    let r = raw(
        s.addr,
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(status(&r), 413, "{r}");
    // 413 for a chunked body that grows past the limit.
    let mut req = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'a'; 512]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status(&raw(s.addr, &req)), 413);
    // 431 for heads just over the limit (8 KiB) and far over it; just under is fine.
    for (len, code) in [(8 * 1024 + 1, 431), (20 * 1024, 431), (7 * 1024, 200)] {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(len)
        );
        assert_eq!(status(&raw(s.addr, big.as_bytes())), code, "{len}");
    }
    // 400 for the Host rules and broken framing.
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    ] {
        let r = raw(s.addr, bad);
        let code = status(&r);
        assert!(
            code == 400 || (bad.starts_with(b"CONNECT") && code == 405),
            "{}\n=> {r}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        s.app.state.requests.load(Ordering::SeqCst),
        before + 1,
        "no refused request reached the app"
    );
}

#[test]
fn conflicting_length_and_chunked_are_refused() {
    let s = Stack::start(1, 4, &[]);
    for req in [
        &b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let r = raw(s.addr, req);
        assert_eq!(status(&r), 400, "{r}");
        assert!(!r.contains("/smuggled"), "{r}");
        assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "{r}");
    }
    // Chunked alone, and a later request on the same connection, are fine.
    let r = raw(
        s.addr,
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
    assert_eq!(s.app.state.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn slow_body_and_slow_head_get_408() {
    let s = Stack::start(1, 4, &["--client-timeout", "1"]);
    let t = Instant::now();
    let r = raw(
        s.addr,
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
    );
    assert_eq!(status(&r), 408, "{r}");
    assert!(t.elapsed() < Duration::from_secs(20));
    let t = Instant::now();
    let r = raw(s.addr, b"GET /x HTTP/1.1\r\nHost: h\r\nX-Slow");
    assert_eq!(status(&r), 408, "{r}");
    assert!(r.ends_with("not received in time\n"), "{r}");
    // Two bytes that could begin the HTTP/2 preface, then silence.
    let r = raw(s.addr, b"PO");
    assert_eq!(status(&r), 408, "{r}");
    // An idle connection that never started a request is closed without a word.
    let r = raw(s.addr, b"");
    assert_eq!(r, "");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(s.app.state.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn upstream_errors_502_504_and_retry() {
    let s = Stack::start(1, 4, &["--upstream-timeout", "1"]);
    // 504 when the app takes longer than --upstream-timeout.
    let r = raw(
        s.addr,
        b"GET /slow?sleep=3000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 504, "{r}");
    // A GET whose connection breaks before any response byte is retried once.
    s.app.state.drop_once.lock().unwrap().push("/flaky".into());
    let r = raw(
        s.addr,
        b"GET /flaky HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    // A complete answer the proxy cannot take (over 100 headers): 502, and the GET is not run
    // again, since the app has already acted on it.
    let before = s.app.state.requests.load(Ordering::SeqCst);
    let r = raw(
        s.addr,
        b"GET /many?cookies=150 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 502, "{r}");
    assert_eq!(s.app.state.requests.load(Ordering::SeqCst), before + 1);
    let r = raw(
        s.addr,
        b"GET /many?cookies=50 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    // A POST is not (the app may have acted on it).
    s.app
        .state
        .drop_once
        .lock()
        .unwrap()
        .push("/flaky-post".into());
    let r = raw(
        s.addr,
        b"POST /flaky-post HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    );
    assert_eq!(status(&r), 502, "{r}");
    // 502 when the socket is gone; back when it returns.
    std::fs::remove_file(s.sock()).unwrap();
    let r = raw(
        s.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 502, "{r}");
    s.app.serve_app(&s.sock());
    let r = raw(
        s.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    let m = s.metrics();
    assert_eq!(
        metric(&m, "kubewsgi_upstream_errors_total{kind=\"timeout\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(&m, "kubewsgi_upstream_errors_total{kind=\"connect\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "kubewsgi_requests_total{code=\"504\",method=\"GET\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "kubewsgi_upstream_errors_total{kind=\"invalid\"}"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn queue_holds_requests_to_capacity_and_times_out_with_503() {
    let s = Stack::start(1, 2, &["--queue-timeout", "1"]);
    let m = s.metrics();
    assert_eq!(metric(&m, "kubewsgi_worker_capacity"), Some(2.0), "{m}");
    assert_eq!(metric(&m, "kubewsgi_worker_max_capacity"), Some(4.0), "{m}");
    // Five requests of 3 s against 2 slots with a 1 s queue timeout: the app never sees more
    // than 2 at once and at least one waits too long.
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let a = s.addr;
            std::thread::spawn(move || {
                status(&raw(
                    a,
                    b"GET /q?sleep=3000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                ))
            })
        })
        .collect();
    // The queue shows in the metrics while they wait.
    let end = Instant::now() + Duration::from_secs(10);
    let mut seen_depth = 0.0f64;
    while Instant::now() < end && seen_depth < 1.0 {
        seen_depth = seen_depth.max(metric(&s.metrics(), "kubewsgi_queue_depth").unwrap_or(0.0));
    }
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(seen_depth >= 1.0);
    assert_eq!(
        s.app.state.max_active.load(Ordering::SeqCst),
        2,
        "{codes:?}"
    );
    assert!(
        codes.contains(&503) && codes.iter().filter(|&&c| c == 200).count() >= 2,
        "{codes:?}"
    );
    // Capacity follows the control socket.
    s.app.set_stat("workers", 3.into());
    let end = Instant::now() + Duration::from_secs(10);
    while metric(&s.metrics(), "kubewsgi_worker_capacity") != Some(6.0) {
        assert!(Instant::now() < end, "capacity never followed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn readyz_follows_the_worker_and_access_log_is_written() {
    let s = Stack::start(1, 2, &["--access-log", "json"]);
    let r = raw(
        s.addr,
        b"GET /logged?a=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: tester/1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 200);
    s.app.set_stat("ready", false.into());
    let readyz = || {
        status(&raw(
            s.admin,
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ))
    };
    let end = Instant::now() + Duration::from_secs(10);
    while readyz() != 503 {
        assert!(Instant::now() < end, "readyz never turned 503");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        status(&raw(
            s.admin,
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )),
        200
    );
    s.app.set_stat("ready", true.into());
    s.wait_ready();
    let end = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = s
            .proxy
            .stdout()
            .lines()
            .find(|l| l.contains("/logged"))
            .map(str::to_string)
        {
            break l;
        }
        assert!(
            Instant::now() < end,
            "no access log line: {}",
            s.proxy.stdout()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["status"], 200);
    assert_eq!(j["uri"], "/logged?a=1");
    assert_eq!(j["user_agent"], "tester/1");
    assert_eq!(j["remote_addr"], "127.0.0.1");
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let mut s = Stack::start(1, 2, &[]);
    let a = s.addr;
    let slow = std::thread::spawn(move || {
        raw(
            a,
            b"GET /slow?sleep=2000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
    });
    let end = Instant::now() + Duration::from_secs(10);
    while s.app.state.active.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(10));
    }
    s.proxy.signal(libc::SIGTERM);
    // New connections are refused once the listener is closed.
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(a).is_ok() {
        assert!(Instant::now() < end, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The admin listener still answers while draining, and says not ready.
    let r = raw(
        s.admin,
        b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&r), 503, "{r}");
    assert!(body(&r).contains("draining"), "{r}");
    let r = slow.join().unwrap();
    assert_eq!(status(&r), 200, "in-flight request finished: {r}");
    let st = s
        .proxy
        .wait_exit(Duration::from_secs(30))
        .expect("proxy exits after draining");
    assert!(st.success(), "{st:?} {}", s.proxy.stderr());
}

#[test]
fn bad_config_is_refused_before_binding() {
    let port = free_port();
    for bad in [
        vec!["--static", "/s=/nonexistent/dir"],
        vec![
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ],
        vec!["--upstream", "tcp:nothing"],
        vec!["--trusted-proxies", "not-an-ip"],
    ] {
        let mut args: Vec<String> = vec![
            "proxy".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        args.extend(bad.iter().map(|s| s.to_string()));
        let mut p = Proc::spawn(&args);
        let st = p.wait_exit(Duration::from_secs(20)).expect("exits");
        assert!(!st.success());
        assert!(!p.stderr().is_empty());
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port stayed free for {bad:?}"
        );
    }
}

#[test]
fn refused_bodies_do_not_reset_the_answer() {
    // The client is still sending when the 413 is written; the proxy reads and discards the rest
    // (lingering close) so the client reads the 413 instead of a connection reset.
    let s = Stack::start(1, 4, &["--max-body-size", "1k"]);
    let code = r#"
import http.client, sys
for i in range(5):
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
    c.request("POST", "/big", body=b"z" * (4 << 20))
    r = c.getresponse()
    assert r.status == 413, r.status
    r.read()
    c.close()
print("ok")
"#;
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let out = std::process::Command::new(python)
        .args(["-c", code, &s.addr.port().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
