//! The operator: reconciles `WsgiApp` resources into Deployments, Services and PodDisruptionBudgets.
//!
//! - [`reconcile`]: one reconcile (server-side apply, status, events) and the error backoff.
//! - [`pod`], [`objects`], [`labels`]: the objects a WsgiApp becomes.
//! - [`scale`]: who owns the replicas (spec, builtin autoscaler, HPA); [`autoscale`]: the builtin autoscaler loop.
//! - [`status`]: conditions from the Deployment and the pods.
//! - [`leader`]: leader election on a Lease.
//! - [`http`], [`metrics`]: the operator's `/metrics`, `/healthz`, `/readyz`.

pub mod autoscale;
pub mod http;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod pod;
pub mod reconcile;
pub mod scale;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::crd::WsgiApp;

/// Proxy image used when a WsgiApp does not name one.
pub const DEFAULT_PROXY_IMAGE: &str = concat!("kubewsgi/kubewsgi:", env!("CARGO_PKG_VERSION"));

/// Longest wait for running reconciles at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Ceiling of the wait between failed watch attempts (jitter adds up to as much again).
/// kube-runtime applies one backoff to the merged stream of all six watches: while it waits no watch
/// is read, and after an API server restart each watch fails once more with 410 Expired before it
/// relists, so the waits add up per watch. With client-go's 30 s ceiling a restart left the
/// controller deaf for minutes; at 1 s it relists within seconds, and a failing watch still costs
/// the API server no more than a request a second.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// `kubewsgi controller`.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Address of the controller's `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "KUBEWSGI_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,

    /// Watch only this namespace (default: all).
    #[arg(long, env = "KUBEWSGI_NAMESPACE")]
    pub namespace: Option<String>,

    /// Take a `coordination.k8s.io` Lease so only one replica reconciles.
    #[arg(long, env = "KUBEWSGI_LEADER_ELECT", value_parser = clap::builder::BoolishValueParser::new())]
    pub leader_elect: bool,

    /// Namespace of the leader Lease (default: `POD_NAMESPACE`, else the kubeconfig's namespace).
    #[arg(long, env = "KUBEWSGI_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "KUBEWSGI_LEASE_NAME",
        default_value = "kubewsgi-controller"
    )]
    pub lease_name: String,

    /// Image of the pods' proxy container unless a WsgiApp sets `spec.proxy.image`.
    #[arg(long, env = "KUBEWSGI_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,

    /// Seconds between reconciles of an unchanged WsgiApp.
    #[arg(long, env = "KUBEWSGI_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_seconds: u64,

    /// WsgiApps reconciled at once; the others wait their turn (a burst of thousands would
    /// otherwise hold thousands of requests and their buffers at the same time).
    #[arg(long, env = "KUBEWSGI_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
}

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line configuration.
    #[error("{0}")]
    Config(String),
    /// A WsgiApp the controller cannot act on.
    #[error("invalid WsgiApp: {0}")]
    Invalid(String),
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Reading the kubeconfig or in-cluster config failed.
    #[error("Kubernetes client configuration: {0}")]
    Client(String),
    /// The metrics listener or the runtime failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The autoscaling policy or a metrics scrape failed.
    #[error("autoscaler: {0}")]
    Autoscaler(#[from] crate::autoscaler::Error),
}

/// Result alias of the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the operator until SIGTERM or SIGINT.
pub fn main(args: ControllerArgs) -> Result<()> {
    if args.proxy_image.trim().is_empty() {
        return Err(Error::Config("--proxy-image must not be empty".into()));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: ControllerArgs) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let health = Arc::new(http::Health {
        ready: Default::default(),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| {
            Error::Config(format!(
                "cannot listen on --metrics-addr {}: {e}",
                args.metrics_addr
            ))
        })?;
    info!(addr = %listener.local_addr()?, "metrics and health endpoints listening");
    let server = tokio::spawn(http::serve(listener, health.clone()));

    let client = Client::try_default()
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    let version = client.apiserver_version().await?;
    info!(version = %version.git_version, "connected to the API server");
    health.ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let identity = std::env::var("POD_NAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "kubewsgi".into());
    let identity = format!("{identity}_{}", std::process::id());

    let mut elector = None;
    if args.leader_elect {
        let ns = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_string());
        elector = Some(leader::LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &ns),
            args.lease_name.clone(),
            identity.clone(),
        ));
    }

    let ctx = Arc::new(reconcile::Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kubewsgi".into(),
                instance: Some(identity),
            },
        ),
        proxy_image: args.proxy_image.clone(),
        resync: Duration::from_secs(args.resync_seconds),
        metrics: metrics.clone(),
        failures: Default::default(),
    });

    // A replica that loses the Lease (e.g. the API server was away longer than the lease) stops
    // reconciling and becomes a candidate again instead of exiting: it recovers by itself.
    loop {
        if let Some(e) = elector.as_mut() {
            let mut stop = stop_rx.clone();
            tokio::select! {
                r = e.acquire() => r?,
                _ = wait_true(&mut stop) => break,
            }
        }
        let (returned, lost) = lead(&args, &client, &ctx, &stop_rx, elector.take()).await;
        elector = returned;
        if !lost || elector.is_none() || *stop_rx.borrow() {
            break;
        }
        warn!("lost the leader lease: standing by until it can be taken again");
    }
    server.abort();
    Ok(())
}

/// Runs the controller and the autoscaler while this replica leads: until a signal, or until the
/// Lease held by `elector` is lost. Returns the elector and whether the Lease was lost.
async fn lead(
    args: &ControllerArgs,
    client: &Client,
    ctx: &Arc<reconcile::Context>,
    stop_rx: &watch::Receiver<bool>,
    elector: Option<leader::LeaderElector>,
) -> (Option<leader::LeaderElector>, bool) {
    let metrics = ctx.metrics.clone();
    metrics.leader.set(1);
    let (lost_tx, lost_rx) = watch::channel(false);
    let holder = elector.map(|mut e| {
        let lost_tx = lost_tx.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = e.hold() => { let _ = lost_tx.send(true); }
                _ = wait_true(&mut stop) => {
                    if let Err(err) = e.release().await { warn!(error = %err, "releasing the lease failed"); }
                }
            }
            e
        })
    });
    let shutdown = {
        let (mut stop, mut lost) = (stop_rx.clone(), lost_rx.clone());
        async move {
            tokio::select! {
                _ = wait_true(&mut stop) => {}
                _ = wait_true(&mut lost) => {}
            }
        }
        .boxed()
        .shared()
    };
    // In-flight reconciles get a bounded time to finish; they are idempotent, so cutting one short
    // only means the next leader redoes it.
    let deadline = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            info!("stopping: waiting for running reconciles");
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        }
    };

    let ns = args.namespace.as_deref();
    let managed = watcher::Config::default().labels(&labels::managed_filter());
    let pods = watcher::Config::default().labels(labels::APP);
    info!(
        namespace = ns.unwrap_or("<all>"),
        "starting the WsgiApp controller"
    );
    // Deployments and pods are watched once and kept in stores the autoscaler reads every tick,
    // so a tick costs the API server nothing but the writes it decides on.
    let (deployments, deployment_stream) = reflected(
        api::<Deployment>(client, ns),
        managed.clone(),
        trim_deployment,
    );
    let (pod_store, pod_stream) = reflected(api::<Pod>(client, ns), pods, trim_pod);
    let controller = Controller::new(api::<WsgiApp>(client, ns), watcher::Config::default())
        .owns_stream(deployment_stream)
        .owns(api::<Service>(client, ns), managed.clone())
        .owns(api::<PodDisruptionBudget>(client, ns), managed.clone())
        .owns(api::<HorizontalPodAutoscaler>(client, ns), managed)
        .watches_stream(pod_stream, |pod| {
            let app = pod.labels().get(labels::APP)?;
            Some(ObjectRef::<WsgiApp>::new(app).within(&pod.namespace()?))
        })
        .trigger_backoff(watch_backoff())
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(shutdown.clone());
    let stores = autoscale::Stores {
        apps: controller.store(),
        deployments,
        pods: pod_store,
    };
    let autoscaler = tokio::spawn(autoscale::run(
        client.clone(),
        stores,
        ctx.recorder.clone(),
        shutdown,
    ));
    let controller = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller stream error");
            }
        });
    tokio::select! {
        _ = controller => {}
        _ = deadline => warn!("reconciles still running at the shutdown deadline"),
    }
    autoscaler.abort();
    info!("controller stopped");
    metrics.leader.set(0);
    let elector = match holder {
        Some(h) => h.await.ok(),
        None => None,
    };
    let lost = *lost_rx.borrow();
    (elector, lost)
}

/// A watch of `api` kept in a store, and the stream of touched objects that drives both the store
/// and the controller's triggers. Objects are trimmed by `trim` before they are stored: the store
/// holds one per pod and per app, and only the autoscaler reads it.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> (
    Store<K>,
    impl futures_util::Stream<Item = std::result::Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .backoff(watch_backoff())
        .modify(move |o| {
            // Nothing reads them, and they are often the larger part of an object.
            o.managed_fields_mut().clear();
            o.annotations_mut().clear();
            trim(o);
        })
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// What the autoscaler reads of a Deployment: metadata, `spec.replicas` and status. The pod
/// template is most of the object, and reconciles read Deployments from the API server.
fn trim_deployment(d: &mut Deployment) {
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// What the autoscaler reads of a pod: metadata, status, and the containers' names and ports.
fn trim_pod(p: &mut Pod) {
    if let Some(spec) = p.spec.as_mut() {
        *spec = k8s_openapi::api::core::v1::PodSpec {
            containers: std::mem::take(&mut spec.containers)
                .into_iter()
                .map(|c| k8s_openapi::api::core::v1::Container {
                    name: c.name,
                    ports: c.ports,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Exponential from 200 ms with jitter, capped at [`WATCH_BACKOFF_MAX`];
/// the controller resets it on every event.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(WATCH_BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// Resolves once the flag is true (or its sender is gone).
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
}
