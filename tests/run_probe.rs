//! `kubewsgi run` end to end with the plain WSGI probe app: the proxy and the worker server
//! together, through curl, Python's http.client and raw sockets.

mod run_support;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use run_support::*;

fn static_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("hello.txt"), "static hello\n").unwrap();
    std::fs::write(d.path().join("app.0123abcd.js"), "var x = 1;\n").unwrap();
    d
}

/// The flag set of the outside check: `--static /static=D --max-body-size 1m --workers 1 --threads 2 --timeout 3`.
fn probe(d: &Path) -> Run {
    let mount = format!("/static={}", d.display());
    Run::start(
        "probe:app",
        &probe_dir(),
        &[
            "--static",
            &mount,
            "--max-body-size",
            "1m",
            "--workers",
            "1",
            "--threads",
            "2",
            "--timeout",
            "3",
        ],
    )
}

use std::path::Path;

#[test]
fn forwarding_bodies_static_and_h2c() {
    let d = static_dir();
    let r = probe(d.path());
    let resp = r.get("/hello?x=1");
    assert_eq!(status(&resp), 200, "{resp}");
    let j = json(&resp);
    assert_eq!(j["path"], "/hello");
    assert_eq!(j["remote_addr"], "127.0.0.1");
    assert_eq!(j["scheme"], "http");
    assert_eq!(j["host"], "example.test");
    // Bodies through Python's http.client: 300 KB (spooled by the proxy) and a chunked one.
    let out = python(
        r#"
import http.client, json, sys
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
data = bytes(i % 256 for i in range(300_000))
c.request("POST", "/upload", body=data, headers={"Content-Type": "application/octet-stream"})
r = c.getresponse(); j = json.loads(r.read())
assert r.status == 200 and j["body_len"] == len(data) and j["body_sum"] == sum(data) % 1000003, j
c.request("POST", "/chunked", body=iter([b"abc", b"defg"]), encode_chunked=True)
r = c.getresponse(); j = json.loads(r.read())
assert r.status == 200 and j["body_len"] == 7 and j["content_length"] == "7", j
c.request("POST", "/too-big", body=b"x" * (1024 * 1024 + 1))
r = c.getresponse(); r.read()
assert r.status == 413, r.status
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
c.request("POST", "/too-big-chunked", body=iter([b"y" * 65536] * 20), encode_chunked=True)
r = c.getresponse(); r.read()
assert r.status == 413, r.status
print("ok")
"#,
        &[&r.addr.port().to_string()],
    );
    assert_eq!(out.trim(), "ok");
    // Large response, read whole by the proxy.
    let (out, ok) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        &format!("http://{}/big?n=3000000", r.addr),
    ]);
    assert!(ok && out == "200 3000000", "{out}");
    // Static files with validators and the long cache for hashed names.
    let s = r.get("/static/hello.txt");
    assert_eq!(body(&s), "static hello\n");
    let etag = header(&s, "etag").unwrap().to_string();
    let again = raw(r.addr, format!("GET /static/hello.txt HTTP/1.1\r\nHost: h\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n").as_bytes());
    assert_eq!(status(&again), 304);
    assert_eq!(
        header(&r.get("/static/app.0123abcd.js"), "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    // HTTP/2 by prior knowledge.
    let (out, ok) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version}",
        &format!("http://{}/h2", r.addr),
    ]);
    assert!(ok && out.ends_with("\n2"), "{out}");
    // Malformed and oversized heads never reach the app.
    assert_eq!(
        status(&raw(r.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")),
        400
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(status(&raw(r.addr, big.as_bytes())), 431);
    // Access log lines on stdout.
    let end = Instant::now() + Duration::from_secs(10);
    while !r.stdout().contains("\"GET /hello?x=1 HTTP/1.1\" 200") {
        assert!(Instant::now() < end, "no access log line:\n{}", r.stdout());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn capacity_queue_timeouts_and_metrics() {
    let d = static_dir();
    let r = probe(d.path());
    let (code, body) = r.admin_get("/readyz");
    assert_eq!(code, 200, "{body}");
    let m = r.admin_get("/metrics").1;
    assert_eq!(metric(&m, "kubewsgi_worker_capacity"), Some(2.0), "{m}");
    // Four 1 s requests on 2 threads: never more than 2 in the app at once.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let a = r.addr;
            std::thread::spawn(move || {
                raw(
                    a,
                    format!("GET /c{i}?sleep=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
            })
        })
        .collect();
    let mut saw_queue = false;
    while handles.iter().any(|h| !h.is_finished()) {
        saw_queue |=
            metric(&r.admin_get("/metrics").1, "kubewsgi_queue_depth").unwrap_or(0.0) >= 1.0;
    }
    for h in handles {
        let resp = h.join().unwrap();
        assert_eq!(status(&resp), 200, "{resp}");
        assert!(json(&resp)["max_active"].as_u64().unwrap() <= 2, "{resp}");
    }
    assert!(saw_queue, "queue depth never showed in /metrics");
    // A request stuck past --timeout 3: the worker server answers 504 and replaces the process.
    let t = Instant::now();
    let resp = r.get("/stuck?sleep=30");
    assert_eq!(status(&resp), 504, "{resp}");
    assert!(t.elapsed() < Duration::from_secs(25), "{:?}", t.elapsed());
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = r.get("/after");
        if status(&resp) == 200 {
            break;
        }
        assert!(Instant::now() < end, "never recovered: {resp}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = r.admin_get("/metrics").1;
    assert!(
        metric(&m, "kubewsgi_requests_total{code=\"200\",method=\"GET\"}").unwrap() >= 5.0,
        "{m}"
    );
    assert!(
        metric(&m, "kubewsgi_requests_total{code=\"504\",method=\"GET\"}").unwrap() >= 1.0,
        "{m}"
    );
    let end = Instant::now() + Duration::from_secs(30);
    while metric(&r.admin_get("/metrics").1, "kubewsgi_worker_restarts_total").unwrap_or(0.0) < 1.0
    {
        assert!(Instant::now() < end, "worker restart not counted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends a request that keeps the app's only thread for `secs`, and returns once it is in flight.
fn hold_the_only_thread(r: &Run, secs: u32) -> std::thread::JoinHandle<String> {
    let a = r.addr;
    let req = format!("GET /hold?sleep={secs} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let slow = std::thread::spawn(move || raw(a, req.as_bytes()));
    let end = Instant::now() + Duration::from_secs(10);
    while metric(&r.admin_get("/metrics").1, "kubewsgi_inflight_requests") != Some(1.0) {
        assert!(Instant::now() < end, "the slow request never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    slow
}

#[test]
fn queue_timeout_answers_503() {
    let r = Run::start(
        "probe:app",
        &probe_dir(),
        &["--threads", "1", "--queue-timeout", "1", "--timeout", "20"],
    );
    let slow = hold_the_only_thread(&r, 4);
    let resp = r.get("/waits");
    assert_eq!(status(&resp), 503, "{resp}");
    assert_eq!(status(&slow.join().unwrap()), 200);
}

#[test]
fn a_client_that_leaves_the_queue_is_no_longer_counted() {
    let r = Run::start(
        "probe:app",
        &probe_dir(),
        &["--threads", "1", "--queue-timeout", "60", "--timeout", "20"],
    );
    let slow = hold_the_only_thread(&r, 6);
    let depth = || metric(&r.admin_get("/metrics").1, "kubewsgi_queue_depth");
    let end = Instant::now() + Duration::from_secs(10);
    let mut queued = TcpStream::connect(r.addr).unwrap();
    queued
        .write_all(b"GET /leaves HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    while depth() != Some(1.0) {
        assert!(Instant::now() < end, "the request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client gives up while it waits: the autoscaling signal must not keep counting it.
    drop(queued);
    while depth() != Some(0.0) {
        assert!(
            !slow.is_finished(),
            "a request that left the queue was still counted as waiting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status(&slow.join().unwrap()), 200);
    assert_eq!(depth(), Some(0.0));
}

#[test]
fn slow_clients_through_run() {
    let r = Run::start("probe:app", &probe_dir(), &["--threads", "1"]);
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut c = TcpStream::connect(r.addr).expect("connect");
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
        assert_eq!(status(&r.get("/fast")), 200);
    }
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    drop(idle);
}

#[test]
fn sighup_reloads_and_sigterm_drains() {
    let mut r = Run::start(
        "probe:app",
        &probe_dir(),
        &["--workers", "1", "--threads", "2"],
    );
    let pid = json(&r.get("/pid"))["pid"].as_u64().unwrap();
    r.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = r.get("/pid");
        assert_eq!(
            status(&resp),
            200,
            "no request fails during a reload: {resp}"
        );
        if json(&resp)["pid"].as_u64().unwrap() != pid {
            break;
        }
        assert!(Instant::now() < end, "workers never replaced after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGTERM with a request in flight: it finishes, readyz turns 503, run exits 0.
    let a = r.addr;
    let slow = std::thread::spawn(move || {
        raw(
            a,
            b"GET /inflight?sleep=2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
    });
    let end = Instant::now() + Duration::from_secs(10);
    while metric(&r.admin_get("/metrics").1, "kubewsgi_inflight_requests") != Some(1.0) {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    }
    r.signal(libc::SIGTERM);
    let end = Instant::now() + Duration::from_secs(10);
    while r.admin_get("/readyz").0 != 503 {
        assert!(Instant::now() < end, "readyz stayed 200 while draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status(&slow.join().unwrap()),
        200,
        "in-flight request completed"
    );
    let st = r
        .wait_exit(Duration::from_secs(60))
        .expect("run exits after draining");
    assert!(st.success(), "{st} {}", r.stderr());
}

#[test]
fn after_a_reload_no_request_reaches_a_retired_worker() {
    let r = Run::start(
        "probe:app",
        &probe_dir(),
        &["--workers", "2", "--threads", "4"],
    );
    let pid = |resp: &str| json(resp)["pid"].as_u64().unwrap();
    // Eight requests at once leave eight idle upstream connections in the proxy.
    let a = r.addr;
    let old: std::collections::HashSet<u64> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                raw(
                    a,
                    b"GET /pid?sleep=0.3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| pid(&t.join().unwrap()))
        .collect();
    let logged = r.stderr().len();
    r.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(60);
    while r.stderr()[logged..].matches("draining").count() < 2 {
        assert!(
            Instant::now() < end,
            "old workers never drained: {}",
            r.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The proxy reads the serving set every 250 ms; its pooled connections to the old workers
    // would otherwise carry requests to old code for their whole idle time (3 s).
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..10 {
        let resp = r.get("/pid");
        assert_eq!(status(&resp), 200, "{resp}");
        assert!(
            !old.contains(&pid(&resp)),
            "answered by a retired worker after the reload: {resp}"
        );
    }
}

#[test]
fn run_keeps_its_environment_and_its_sockets_to_itself() {
    use std::os::unix::process::CommandExt;
    let logs = tempfile::tempdir().unwrap();
    let (out, err) = (logs.path().join("out"), logs.path().join("err"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = command("probe:app", &probe_dir());
    cmd.args(["--log-format", "json", "--scale-up-after", "0.5"])
        // The address from the environment is `run`'s own: the worker server must not read it.
        .env("KUBEWSGI_BIND", addr.to_string())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    // SAFETY: umask(2) only, between fork and exec. A careless umask must not open the worker's
    // socket to other users.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let end = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&out)
        .unwrap()
        .contains("kubewsgi: serving")
    {
        assert!(
            child.try_wait().unwrap().is_none() && Instant::now() < end,
            "no serving line: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        status(&raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )),
        200
    );
    let log = std::fs::read_to_string(&err).unwrap();
    let dir = log
        .split('"')
        .find_map(|s| s.strip_prefix("unix:")?.strip_suffix("/app.sock"))
        .unwrap_or_else(|| panic!("no socket path in the log: {log}"));
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{dir}");
    // The worker server logs in the format `run` was given, so every line parses.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_bad_worker_flag_is_refused_before_any_port_is_bound() {
    let out = command("probe:app", &probe_dir())
        .args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .args(["--min-workers", "3", "--max-workers", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--min-workers 3 is above --max-workers 1"),
        "{err}"
    );
    assert!(
        !err.contains("proxy listening"),
        "bound before refusing: {err}"
    );
}

#[test]
fn bad_app_exits_non_zero_with_the_traceback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.py"),
        "import module_that_does_not_exist_42\n",
    )
    .unwrap();
    let mut r = Run::spawn("broken:app", dir.path(), &[]);
    let st = r.wait_exit(Duration::from_secs(60)).expect("run exits");
    assert!(!st.success());
    let err = r.stderr();
    assert!(
        err.contains("module_that_does_not_exist_42") && err.contains("Traceback"),
        "{err}"
    );
    assert!(err.contains("worker server exited"), "{err}");
    assert!(!r.stdout().contains("kubewsgi: serving"));
}

#[test]
fn tls_h2_with_python_h2_client() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let r = Run::start(
        "probe:app",
        &probe_dir(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        r.stdout().contains(&format!("on https://{}", r.addr)),
        "{}",
        r.stdout()
    );
    // The h2 package over an ssl socket that offers only h2 by ALPN.
    let out = python(
        r#"
import json, socket, ssl, sys
import h2.connection, h2.events
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=60), server_hostname="localhost")
assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
c = h2.connection.H2Connection()
c.initiate_connection()
c.send_headers(1, [(":method", "POST"), (":path", "/tls?x=1"), (":scheme", "https"), (":authority", "localhost"), ("content-length", "5")])
c.send_data(1, b"hello", end_stream=True)
s.sendall(c.data_to_send())
status, body, done = None, b"", False
while not done:
    data = s.recv(65536)
    if not data:
        break
    for ev in c.receive_data(data):
        if isinstance(ev, h2.events.ResponseReceived):
            status = dict(ev.headers)[b":status"]
        elif isinstance(ev, h2.events.DataReceived):
            body += ev.data
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            done = True
    s.sendall(c.data_to_send())
j = json.loads(body)
print(status.decode(), j["scheme"], j["host"], j["body_len"], j["method"])
"#,
        &[&r.addr.port().to_string(), cert.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "200 https localhost 5 POST");
}

#[test]
fn ctrl_c_drains_and_a_killed_run_takes_the_workers_along() {
    // SIGINT (a terminal's Ctrl-C) is a clean shutdown, not a worker failure.
    let mut r = Run::start("probe:app", &probe_dir(), &[]);
    assert_eq!(status(&r.get("/before")), 200);
    r.signal_group(libc::SIGINT);
    let st = r
        .wait_exit(Duration::from_secs(60))
        .expect("exits on SIGINT");
    assert!(st.success(), "{st}: {}", r.stderr());
    // SIGKILL leaves no time to clean up; the worker processes still go.
    let r = Run::start("probe:app", &probe_dir(), &[]);
    let pid = json(&r.get("/pid"))["pid"].as_u64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    r.signal(libc::SIGKILL);
    let end = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < end, "worker {pid} outlived a killed run");
        std::thread::sleep(Duration::from_millis(50));
    }
}
