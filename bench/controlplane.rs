//! Control-plane benchmark: the operator (`kubewsgi controller`) against a real local
//! kube-apiserver + etcd (`scripts/control-plane`). Measures the reconcile latency of one WsgiApp
//! (create → its Deployment exists, and → `status.observedGeneration` catches up), the time to
//! reconcile a burst of WsgiApps created at once, and the operator's memory meanwhile.
//!
//! Run through `bench/controlplane` (full, release build) or `bench/controlplane --smoke`.
//! Under `cargo test --all-targets` it does nothing: benchmarks are not tests.

#[path = "../tests/support_cp/mod.rs"]
mod support_cp;

#[path = "../tests/controller_support/mod.rs"]
mod controller_support;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controller_support::{Operator, install_crd, namespace};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kubewsgi::crd::WsgiApp;
use support_cp::ControlPlane;
use tokio::sync::watch;

/// Longest wait for any one thing the operator should do; far above anything expected.
const DEADLINE: Duration = Duration::from_secs(300);

struct Plan {
    mode: &'static str,
    sequential: usize,
    burst: usize,
    settle: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plan = if args.iter().any(|a| a == "--smoke") {
        Plan {
            mode: "smoke",
            sequential: 5,
            burst: 20,
            settle: Duration::from_secs(1),
        }
    } else if args.iter().any(|a| a == "--bench" || a == "--full") {
        Plan {
            mode: "full",
            sequential: 50,
            burst: 1000,
            settle: Duration::from_secs(10),
        }
    } else {
        eprintln!("controlplane: a benchmark; run bench/controlplane [--smoke]");
        return;
    };
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run(&plan));
    std::fs::create_dir_all(&out).expect("create the results directory");
    let suffix = if plan.mode == "smoke" { "-smoke" } else { "" };
    let path = out.join(format!(
        "{}-controlplane{suffix}.md",
        chrono::Utc::now().format("%Y%m%d-%H%M")
    ));
    std::fs::write(&path, &report).expect("write the report");
    println!("{report}");
    eprintln!("controlplane: wrote {}", path.display());
}

/// First time each object (`namespace/name`) was seen in a given state, and a tick per sighting.
#[derive(Clone)]
struct Seen {
    at: Arc<Mutex<HashMap<String, Instant>>>,
    tick: watch::Sender<u64>,
}

impl Seen {
    fn new() -> Self {
        Seen {
            at: Arc::default(),
            tick: watch::channel(0).0,
        }
    }

    fn mark(&self, key: String) {
        let fresh = match self.at.lock().unwrap().entry(key) {
            Entry::Vacant(e) => {
                e.insert(Instant::now());
                true
            }
            Entry::Occupied(_) => false,
        };
        if fresh {
            self.tick.send_modify(|t| *t += 1);
        }
    }

    fn count_in(&self, ns: &str) -> usize {
        let prefix = format!("{ns}/");
        let m = self.at.lock().unwrap();
        m.keys().filter(|k| k.starts_with(&prefix)).count()
    }

    fn get(&self, key: &str) -> Option<Instant> {
        self.at.lock().unwrap().get(key).copied()
    }

    /// Waits until `done` holds or nothing new was seen for `stall`; true when `done` holds.
    async fn until_or_stalled(&self, done: impl Fn(&Self) -> bool, stall: Duration) -> bool {
        let mut rx = self.tick.subscribe();
        loop {
            rx.borrow_and_update();
            if done(self) {
                return true;
            }
            if tokio::time::timeout(stall, rx.changed()).await.is_err() {
                return false;
            }
        }
    }

    /// Waits until `done` holds; panics with `what` after [`DEADLINE`].
    async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let mut rx = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            rx.borrow_and_update();
            if done(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!("timed out waiting for {what}");
            }
        }
    }
}

/// Records when each Deployment first exists and when each WsgiApp's status first describes its
/// current generation; returns once both watches have listed.
async fn follow(client: &Client, deps: Seen, synced: Seen) {
    let (ready_tx, mut ready_rx) = watch::channel(0u8);
    let dep_api = Api::<Deployment>::all(client.clone());
    let dep_ready = ready_tx.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(dep_api, watcher::Config::default()));
        while let Ok(Some(ev)) = s.try_next().await {
            match ev {
                watcher::Event::Apply(d) | watcher::Event::InitApply(d) => deps.mark(format!(
                    "{}/{}",
                    d.namespace().unwrap_or_default(),
                    d.name_any()
                )),
                watcher::Event::InitDone => dep_ready.send_modify(|n| *n += 1),
                _ => {}
            }
        }
    });
    let app_api = Api::<WsgiApp>::all(client.clone());
    tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(app_api, watcher::Config::default()));
        while let Ok(Some(ev)) = s.try_next().await {
            match ev {
                watcher::Event::Apply(a) | watcher::Event::InitApply(a) => {
                    let observed = a.status.as_ref().and_then(|s| s.observed_generation);
                    if observed.is_some() && observed >= a.metadata.generation {
                        synced.mark(format!(
                            "{}/{}",
                            a.namespace().unwrap_or_default(),
                            a.name_any()
                        ));
                    }
                }
                watcher::Event::InitDone => ready_tx.send_modify(|n| *n += 1),
                _ => {}
            }
        }
    });
    tokio::time::timeout(DEADLINE, ready_rx.wait_for(|n| *n >= 2))
        .await
        .expect("the watches list in time")
        .expect("the watches run");
}

fn wsgiapp(ns: &str, name: &str) -> WsgiApp {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubewsgi.io/v1alpha1", "kind": "WsgiApp",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"image": "bench.test/app:1", "app": "app:app"}
    }))
    .expect("a valid WsgiApp")
}

/// The operator's resident memory, sampled every 50 ms while it runs.
struct Memory {
    pid: u32,
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Memory {
    fn follow(pid: u32) -> Memory {
        let (peak_kib, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (p, s) = (peak_kib.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = status_kib(pid, "VmRSS:") {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Memory {
            pid,
            peak_kib,
            stop,
        }
    }

    fn now_kib(&self) -> u64 {
        status_kib(self.pid, "VmRSS:").unwrap_or(0)
    }

    /// The kernel's high-water mark (exact) and the highest 50 ms sample.
    fn peak_kib(&self) -> (u64, u64) {
        (
            status_kib(self.pid, "VmHWM:").unwrap_or(0),
            self.peak_kib.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The operator started by this process: the child whose command line has `controller`.
fn operator_pid() -> u32 {
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(me) && cmdline.split(|&b| b == 0).any(|a| a == b"controller") {
            return pid;
        }
    }
    panic!("the operator process is not a child of this one");
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

async fn run(plan: &Plan) -> String {
    let load_before = loadavg();
    let started = chrono::Utc::now();
    let cp = ControlPlane::start();
    install_crd(&cp);
    let client = cp.kube_client().await;
    namespace(&client, "seq", &[]).await;
    namespace(&client, "burst", &[]).await;
    let (deps, synced) = (Seen::new(), Seen::new());
    follow(&client, deps.clone(), synced.clone()).await;

    let op = Operator::start(&cp, &[]);
    let mem = Memory::follow(operator_pid());
    // At rest: started, caches listed, nothing to do yet.
    tokio::time::sleep(plan.settle.max(Duration::from_secs(2))).await;
    let rest_before = mem.now_kib();

    // (1) One WsgiApp at a time.
    let seq = Api::<WsgiApp>::namespaced(client.clone(), "seq");
    let (mut to_dep, mut to_status) = (Vec::new(), Vec::new());
    for i in 0..plan.sequential {
        let name = format!("app-{i}");
        let key = format!("seq/{name}");
        let t0 = Instant::now();
        seq.create(&PostParams::default(), &wsgiapp("seq", &name))
            .await
            .expect("create a WsgiApp");
        deps.until(&format!("Deployment {key}"), |s| s.get(&key).is_some())
            .await;
        synced
            .until(&format!("status of {key}"), |s| s.get(&key).is_some())
            .await;
        to_dep.push(deps.get(&key).unwrap() - t0);
        to_status.push(synced.get(&key).unwrap() - t0);
    }
    to_dep.sort();
    to_status.sort();

    // (2) A burst created at once (16 requests in flight, as a `kubectl apply` of many would not
    // be any faster against this API server).
    let burst = Api::<WsgiApp>::namespaced(client.clone(), "burst");
    let t0 = Instant::now();
    futures_util::stream::iter(0..plan.burst)
        .map(|i| {
            let burst = burst.clone();
            async move {
                burst
                    .create(
                        &PostParams::default(),
                        &wsgiapp("burst", &format!("app-{i}")),
                    )
                    .await
                    .expect("create a WsgiApp")
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let created = t0.elapsed();
    let n = plan.burst;
    deps.until("every Deployment of the burst", |s| {
        s.count_in("burst") >= n
    })
    .await;
    let all_deps = t0.elapsed();
    // The control plane's Service range is a /24: past about 250 Services the API server refuses
    // them ("range is full"), so those WsgiApps keep failing after their Deployment and their
    // status never catches up. Count what did, stopping once nothing moved for 20 s.
    let stall = Duration::from_secs(20);
    synced
        .until_or_stalled(|s| s.count_in("burst") >= n, stall)
        .await;
    let statused = synced.count_in("burst");
    let last_status = synced
        .at
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("burst/"))
        .map(|(_, t)| *t - t0)
        .max()
        .unwrap_or_default();
    let (hwm, sampled_peak) = mem.peak_kib();
    tokio::time::sleep(plan.settle).await;
    let rest_after = mem.now_kib();
    let load_after = loadavg();
    drop(mem);
    drop(op);
    drop(cp);

    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Control plane: operator reconcile latency and memory\n"
    );
    let _ = writeln!(
        r,
        "{} · mode `{}` · `kubewsgi controller` ({} build) against kube-apiserver + etcd from \
         `scripts/control-plane up` · load average before `{load_before}`, after `{load_after}`\n",
        started.format("%Y-%m-%d %H:%M UTC"),
        plan.mode,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    let _ = writeln!(
        r,
        "| measurement | n | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|"
    );
    for (what, v) in [
        ("create WsgiApp → Deployment exists", &to_dep),
        ("create WsgiApp → status.observedGeneration", &to_status),
    ] {
        let _ = writeln!(
            r,
            "| {what} (one at a time) | {} | {} | {} | {} |",
            v.len(),
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(*v.last().unwrap()),
        );
    }
    let _ = writeln!(
        r,
        "\n| burst of {n} WsgiApps | seconds |\n|---|---:|\n\
         | all created (16 requests in flight) | {:.2} |\n\
         | all Deployments exist | {:.2} |\n\
         | statuses at observedGeneration: {statused} of {n}, the last at | {:.2} |\n\
         | WsgiApps reconciled per second (to Deployment) | {:.0} |",
        created.as_secs_f64(),
        all_deps.as_secs_f64(),
        last_status.as_secs_f64(),
        n as f64 / all_deps.as_secs_f64(),
    );
    let _ = writeln!(
        r,
        "\n| operator memory (RSS) | MiB |\n|---|---:|\n\
         | at rest, before | {} |\n\
         | peak (kernel high-water mark) | {} |\n\
         | peak (50 ms samples) | {} |\n\
         | at rest, after (the {} WsgiApps still exist) | {} |",
        mib(rest_before),
        mib(hwm),
        mib(sampled_peak),
        n + plan.sequential,
        mib(rest_after),
    );
    if statused < n {
        let _ = writeln!(
            r,
            "\nThe local control plane allocates Service IPs from a /24: the WsgiApps past it get their \
             Deployment, then their Service is refused (\"range is full\") and their status stays behind."
        );
    }
    let _ = writeln!(
        r,
        "\nLatencies run from sending the create to this process's watch event (a watch adds a few \
         ms; the operator sees the WsgiApp through its own watch)."
    );
    r
}
