//! The worker server's process model with real processes: respawn, timeout, reload, drain,
//! scaling, recycling, boot failures and the control socket.
// These tests start worker processes that embed CPython.
#![cfg(feature = "python")]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Conn, Server, request};
use serde_json::Value;

fn start(extra: &[&str]) -> Server {
    let state = tempfile::tempdir().unwrap().keep();
    let mut args = vec![
        "--chdir",
        common::apps_dir().to_str().unwrap().to_owned().leak(),
    ];
    args.extend_from_slice(extra);
    Server::start_with("pep3333:app", &args, |c| {
        c.env("PEP3333_STATE", &state);
    })
}

fn pids(s: &Value) -> Vec<i64> {
    let mut v: Vec<i64> = s["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_replaced_and_service_continues() {
    let s = start(&["--workers", "2", "--threads", "2"]);
    let st = s.ready(2).await;
    assert_eq!(
        (
            st["threads"].as_u64(),
            st["idle"].as_u64(),
            st["restarts"].as_u64()
        ),
        (Some(2), Some(4), Some(0))
    );
    let victim = pids(&st)[0];
    // SAFETY: SIGKILL to a worker process of the server this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    for _ in 0..20 {
        assert_eq!(
            s.get("/pid").await.status,
            200,
            "the other worker keeps serving"
        );
    }
    let st = s
        .wait_stats("replacement", |st| {
            st["workers"] == 2 && st["restarts"] == 1 && !pids(st).contains(&victim)
        })
        .await;
    assert_eq!(st["ready"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_request_gets_504_and_its_worker_is_replaced() {
    let s = start(&[
        "--workers",
        "1",
        "--threads",
        "4",
        "--timeout",
        "2",
        "--graceful-timeout",
        "10",
    ]);
    let st = s.ready(1).await;
    let old = pids(&st);
    let t = s.target.clone();
    let stuck =
        tokio::spawn(async move { request(&t, "GET", "/sleep?s=60", &[], Bytes::new()).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Another request on the same worker, running while the stuck one times out: it must finish normally.
    let t = s.target.clone();
    let other =
        tokio::spawn(async move { request(&t, "GET", "/sleep?s=1.2", &[], Bytes::new()).await });
    let r = tokio::time::timeout(Duration::from_secs(30), stuck)
        .await
        .expect("504 in time")
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    let o = tokio::time::timeout(Duration::from_secs(30), other)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        o.status,
        200,
        "the other in-flight request finishes: {}",
        o.text()
    );
    let st = s
        .wait_stats("replacement worker", |st| {
            st["workers"] == 1 && pids(st) != old
        })
        .await;
    assert!(st["restarts"].as_u64().unwrap() >= 1);
    assert_eq!(s.get("/pid").await.status, 200);
    assert!(s.log().contains("request timed out"), "{}", s.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_all_workers_without_failing_a_request() {
    let s = start(&["--workers", "2", "--threads", "2", "--keep-alive", "2"]);
    let st = s.ready(2).await;
    let old = pids(&st);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (t, stop) = (s.target.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // Half the clients reuse one keep-alive connection (reopened when the server closes it), half connect per request.
            let mut conn: Option<Conn> = None;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = if i % 2 == 0 {
                    if conn.as_ref().is_none_or(|c| c.is_closed()) {
                        conn = Some(Conn::open(&t).await.unwrap());
                    }
                    conn.as_mut()
                        .unwrap()
                        .send("GET", "/sleep?s=0.05", &[], Bytes::new())
                        .await
                } else {
                    request(&t, "GET", "/sleep?s=0.05", &[], Bytes::new()).await
                };
                match r {
                    Ok(r) if r.status == 200 && r.body_error.is_none() => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                // A keep-alive client waits well under the server's idle timeout between requests.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.signal(libc::SIGHUP);
    s.wait_stats("new generation", |st| {
        let p = pids(st);
        st["workers"] == 2 && st["retiring"] == 0 && p.iter().all(|x| !old.contains(x))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}\n{}",
        failed.len(),
        ok + failed.len() as u32,
        &failed[..failed.len().min(5)],
        s.log()
    );
    assert!(ok > 20, "load ran: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish() {
    let state = tempfile::tempdir().unwrap();
    let mut s = Server::start_with(
        "pep3333:app",
        &[
            "--chdir",
            common::apps_dir().to_str().unwrap(),
            "--workers",
            "1",
            "--threads",
            "2",
            "--graceful-timeout",
            "20",
        ],
        |c| {
            c.env("PEP3333_STATE", state.path());
        },
    );
    let pid = pids(&s.ready(1).await)[0];
    let t = s.target.clone();
    let inflight =
        tokio::spawn(async move { request(&t, "GET", "/sleep?s=2", &[], Bytes::new()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.signal(libc::SIGTERM);
    // New connections are refused at once rather than held until the drain ends.
    let sock = s.dir.path().join("app.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the socket stayed open for new connections while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tokio::net::UnixStream::connect(&sock).await.is_err());
    assert!(
        !inflight.is_finished(),
        "checked while the request was in flight"
    );
    let r = inflight.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("slept"));
    let code = tokio::task::block_in_place(|| s.wait_exit(30));
    assert_eq!(code, Some(0), "{}", s.log());
    assert!(!s.dir.path().join("app.sock").exists(), "socket removed");
    assert!(
        state.path().join(format!("atexit-{pid}")).exists(),
        "the drained worker ran the app's atexit handlers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttin_ttou_change_the_worker_count() {
    let s = start(&["--workers", "1", "--threads", "2"]);
    s.ready(1).await;
    s.signal(libc::SIGTTIN);
    let st = s.ready(2).await;
    assert_eq!(st["idle"], 4);
    assert_eq!(st["max_workers"], 2);
    s.signal(libc::SIGTTOU);
    s.wait_stats("one worker after TTOU", |st| {
        st["workers"] == 1 && st["retiring"] == 0 && st["pids"].as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(s.get("/pid").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_the_worker() {
    let s = start(&["--workers", "1", "--threads", "1", "--max-requests", "5"]);
    let first = pids(&s.ready(1).await);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let r = s.get("/pid").await;
        assert_eq!(r.status, 200);
        seen.insert(r.text());
    }
    assert!(
        seen.len() >= 2,
        "requests were served by a recycled worker: {seen:?}"
    );
    let st = s
        .wait_stats("recycled", |st| st["workers"] == 1 && pids(st) != first)
        .await;
    assert!(st["restarts"].as_u64().unwrap() >= 1);
    assert!(st["requests"].as_u64().unwrap() >= 10, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_busy_threads() {
    let s = start(&["--workers", "2", "--threads", "2"]);
    s.ready(2).await;
    let mut reqs = Vec::new();
    for _ in 0..3 {
        let t = s.target.clone();
        reqs.push(tokio::spawn(async move {
            request(&t, "GET", "/sleep?s=3", &[], Bytes::new()).await
        }));
    }
    let st = s.wait_stats("3 busy", |st| st["busy"] == 3).await;
    assert_eq!(st["idle"], 1);
    for r in reqs {
        assert_eq!(r.await.unwrap().unwrap().status, 200);
    }
    let st = s.wait_stats("idle again", |st| st["busy"] == 0).await;
    assert!(st["requests"].as_u64().unwrap() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_failure_backs_off_then_exits_3_with_the_traceback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.py"),
        "import json\nraise KeyError('missing-setting-XYZ')\n",
    )
    .unwrap();
    let tlog = dir.path().join("termination-log");
    let start = Instant::now();
    let mut s = Server::start(
        "broken:app",
        &[
            "--chdir",
            dir.path().to_str().unwrap(),
            "--max-boot-failures",
            "3",
            "--termination-log",
            tlog.to_str().unwrap(),
        ],
    );
    let st = s
        .wait_stats("boot error", |st| st["boot_error"].is_string())
        .await;
    assert_eq!(st["ready"], false);
    let code = tokio::task::block_in_place(|| s.wait_exit(60));
    assert_eq!(code, Some(3), "{}", s.log());
    // Three attempts with 0.5 s and 1 s of backoff between them.
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "backoff: {:?}",
        start.elapsed()
    );
    let tb = std::fs::read_to_string(&tlog).unwrap();
    assert!(
        tb.contains("Traceback (most recent call last)")
            && tb.contains("KeyError: 'missing-setting-XYZ'"),
        "{tb}"
    );
    assert!(tb.contains("broken.py\", line 2"), "{tb}");
    let log = s.log();
    assert_eq!(log.matches("cannot load the app").count(), 3, "{log}");
    assert!(log.contains("KeyError: 'missing-setting-XYZ'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("x.sock");
    for (args, msg) in [
        (
            vec!["nomodule:", "--socket", sock.to_str().unwrap()],
            "expected module:callable",
        ),
        (
            vec![
                "m:app",
                "--socket",
                sock.to_str().unwrap(),
                "--min-workers",
                "3",
                "--max-workers",
                "2",
            ],
            "--min-workers",
        ),
        (
            vec![
                "m:app",
                "--socket",
                sock.to_str().unwrap(),
                "--chdir",
                "/nonexistent",
            ],
            "not a directory",
        ),
        (vec!["m:app"], "--socket PATH or --bind"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubewsgi"))
            .arg("worker")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(!sock.exists(), "nothing bound for {args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_adds_workers_under_load_and_retires_idle_ones() {
    let s = start(&[
        "--workers",
        "1",
        "--min-workers",
        "1",
        "--max-workers",
        "3",
        "--threads",
        "1",
        "--scale-down-after",
        "3",
    ]);
    let st = s.ready(1).await;
    assert_eq!(st["max_workers"], 3);
    let mut reqs = Vec::new();
    for _ in 0..4 {
        let t = s.target.clone();
        reqs.push(tokio::spawn(async move {
            request(&t, "GET", "/sleep?s=6", &[], Bytes::new()).await
        }));
    }
    s.wait_stats("scaled up", |st| st["workers"].as_u64() >= Some(2))
        .await;
    for r in reqs {
        assert_eq!(r.await.unwrap().unwrap().status, 200);
    }
    s.wait_stats("scaled back down to min", |st| {
        st["workers"] == 1 && st["target_workers"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_replaces_workers_when_python_source_changes() {
    let dir = tempfile::tempdir().unwrap();
    let src = |v: &str| {
        format!(
            "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'{v}']\n"
        )
    };
    std::fs::write(dir.path().join("live.py"), src("v1")).unwrap();
    let s = Server::start(
        "live:app",
        &["--chdir", dir.path().to_str().unwrap(), "--reload"],
    );
    s.ready(1).await;
    assert_eq!(s.get("/").await.text(), "v1");
    std::fs::write(dir.path().join("live.py"), src("v2")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if s.get("/").await.text() == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "no reload\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Non-Python files do not trigger a reload.
    let before = s.stats().await.unwrap()["restarts"].clone();
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.stats().await.unwrap()["restarts"], before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_behind_a_stuck_thread_are_answered_too() {
    let s = start(&["--workers", "1", "--threads", "1", "--timeout", "2"]);
    let old = pids(&s.ready(1).await);
    // A keep-alive connection the worker already serves.
    let mut c2 = Conn::open(&s.target).await.unwrap();
    assert_eq!(
        c2.send("GET", "/pid", &[], Bytes::new())
            .await
            .unwrap()
            .status,
        200
    );
    let mut c1 = Conn::open(&s.target).await.unwrap();
    let stuck = tokio::spawn(async move { c1.send("GET", "/sleep?s=60", &[], Bytes::new()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Queued behind the stuck request inside the same worker.
    let queued = tokio::spawn(async move { c2.send("GET", "/pid", &[], Bytes::new()).await });
    // A new connection: the busy worker does not accept it, so its replacement serves it.
    let t = s.target.clone();
    let fresh = tokio::spawn(async move { request(&t, "GET", "/pid", &[], Bytes::new()).await });
    let a = tokio::time::timeout(Duration::from_secs(30), stuck)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(a.status, 504);
    let b = tokio::time::timeout(Duration::from_secs(30), queued)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.map(|r| r.status).unwrap_or(0),
        504,
        "the queued request is not left hanging"
    );
    let c = tokio::time::timeout(Duration::from_secs(60), fresh)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(c.status, 200);
    assert!(
        !old.contains(&c.text().parse::<i64>().unwrap()),
        "served by the replacement"
    );
    s.wait_stats("replacement", |st| st["workers"] == 1 && pids(st) != old)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_opened_ahead_do_not_block_accepting() {
    // One thread, long keep-alive: connections a client pool opens before use must not hold the
    // worker's only slot until they idle out.
    let s = start(&["--workers", "1", "--threads", "1", "--keep-alive", "60"]);
    s.ready(1).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Conn::open(&s.target).await.unwrap());
    }
    let last = conns.last_mut().unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        last.send("GET", "/pid", &[], Bytes::new()),
    )
    .await
    .expect("the request on the last pre-opened connection is served")
    .unwrap();
    assert_eq!(r.status, 200);
    for c in conns.iter_mut().take(3) {
        assert_eq!(
            c.send("GET", "/pid", &[], Bytes::new())
                .await
                .unwrap()
                .status,
            200
        );
    }
}
