//! The scraper and the decision rules against real `kubewsgi run` processes playing two pods,
//! each on its own loopback address, with a real app whose requests wait on a gate file.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kubewsgi::autoscaler::{Autoscaler, PodSample, Policy, ScrapeTarget, Scraper};

/// Requests block until the gate file exists (at most 120 s), so the queue is under test control.
const APP: &str = r#"
import os, time

GATE = os.environ["GATE_FILE"]

def app(environ, start_response):
    deadline = time.monotonic() + 120
    while not os.path.exists(GATE) and time.monotonic() < deadline:
        time.sleep(0.01)
    body = b"released"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

const DEADLINE: Duration = Duration::from_secs(90);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One `kubewsgi run` and its worker processes, killed as a process group on drop.
struct Pod {
    name: String,
    child: Child,
    bind: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Pod {
    fn start(name: &str, ip: &str, dir: &Path, gate: &Path) -> Pod {
        let bind = free_addr(ip);
        let admin = free_addr(ip);
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubewsgi"));
        cmd.args([
            "run",
            "gated:app",
            "--workers",
            "1",
            "--threads",
            "2",
            "--access-log",
            "off",
        ])
        .arg("--bind")
        .arg(bind.to_string())
        .arg("--admin")
        .arg(admin.to_string())
        .arg("--chdir")
        .arg(dir)
        .env_remove("VIRTUAL_ENV")
        .env("GATE_FILE", gate)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start kubewsgi run");
        Pod {
            name: name.into(),
            child,
            bind,
            admin,
            log,
        }
    }

    fn target(&self) -> ScrapeTarget {
        ScrapeTarget {
            pod: self.name.clone(),
            addr: self.admin,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        // SAFETY: killpg(2) on the process group this test created for its own child.
        unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_addr(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

async fn get(url: String) -> Result<(u16, Bytes), String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Scrapes `pods` until `cond` holds on the samples (generous deadline for loaded machines).
async fn scrape_until(
    scraper: &Scraper,
    pods: &[&Pod],
    what: &str,
    cond: impl Fn(&[PodSample]) -> bool,
) -> Vec<PodSample> {
    let targets: Vec<_> = pods.iter().map(|p| p.target()).collect();
    let end = Instant::now() + DEADLINE;
    loop {
        let mut samples = scraper.scrape_pods(&targets, SCRAPE_TIMEOUT).await;
        samples.sort_by(|a, b| a.pod.cmp(&b.pod));
        if cond(&samples) {
            return samples;
        }
        if Instant::now() > end {
            let logs: Vec<String> = pods.iter().map(|p| p.log()).collect();
            panic!(
                "timed out waiting for {what}; last samples {samples:?}\nlogs:\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_real_pods_and_scales_on_their_queue() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gated.py"), APP).unwrap();
    let gate = dir.path().join("gate");
    let a = Pod::start("pod-a", "127.0.0.2", dir.path(), &gate);
    let mut b = Pod::start("pod-b", "127.0.0.3", dir.path(), &gate);
    let scraper = Scraper::new();

    // Both pods idle and ready: 1 process × 2 threads = 2 slots each.
    let idle = scrape_until(&scraper, &[&a, &b], "both pods to report capacity 2", |s| {
        s.len() == 2 && s.iter().all(|p| p.capacity == 2.0)
    })
    .await;
    for p in &idle {
        assert_eq!(
            (p.queue_depth, p.inflight, p.max_capacity),
            (0.0, 0.0, 2.0),
            "{p:?}"
        );
    }

    // Six requests held by the gate on pod A: two run, four queue in its proxy.
    let requests: Vec<_> = (0..6)
        .map(|_| tokio::spawn(get(format!("http://{}/", a.bind))))
        .collect();
    let busy = scrape_until(
        &scraper,
        &[&a, &b],
        "pod A to hold 2 running and 4 queued",
        |s| s.len() == 2 && s[0].inflight == 2.0 && s[0].queue_depth == 4.0,
    )
    .await;
    assert_eq!(
        (busy[1].queue_depth, busy[1].inflight),
        (0.0, 0.0),
        "pod B stays idle"
    );

    // The decision rules on that real tick: demand 6 over 1.4 per pod asks for 5 pods at once.
    let mut scaler = Autoscaler::new(Policy::default()).unwrap();
    let now = Instant::now();
    scaler.observe(now, 2, &busy);
    let d = scaler.decide(now, 2, 2);
    assert!(d.panic, "{d:?}");
    assert_eq!(d.desired, 5, "{d:?}");
    assert_eq!(d.queue_depth, Some(4.0));
    assert_eq!(d.inflight, Some(2.0));

    std::fs::write(&gate, b"open").unwrap();
    for r in requests {
        let (status, body) = r.await.unwrap().expect("gated request");
        assert_eq!((status, &body[..]), (200, &b"released"[..]));
    }
    scrape_until(&scraper, &[&a], "pod A to drain", |s| {
        s.len() == 1 && s[0].queue_depth == 0.0 && s[0].inflight == 0.0
    })
    .await;

    // A pod that stops answering is left out, not counted as idle.
    b.kill();
    let samples = scraper
        .scrape_pods(&[a.target(), b.target()], SCRAPE_TIMEOUT)
        .await;
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].pod, "pod-a");
}
