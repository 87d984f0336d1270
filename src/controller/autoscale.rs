//! The builtin autoscaler loop: every tick, scrape the ready pods of each WsgiApp whose
//! `autoscaling` is enabled in mode `builtin` (apps side by side, pods and Deployments read from the
//! controller's watch stores), feed [`crate::autoscaler::Autoscaler`], and write the
//! Deployment's replicas (field manager [`scale::AUTOSCALER_FIELD_MANAGER`]) and the status fields
//! `desiredReplicas`, `queueDepth`, `concurrency`, `lastScaleTime`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::future::Future;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Result, labels, pod, scale};
use crate::autoscaler::{Autoscaler, Policy, ScrapeTarget, Scraper};
use crate::crd::WsgiApp;

/// Decision interval, as Knative's autoscaler.
const TICK: Duration = Duration::from_secs(2);
/// A pod that does not answer its scrape within this is left out of the tick.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the loop reads each tick, kept current by the controller's watches.
pub struct Stores {
    pub apps: Store<WsgiApp>,
    pub deployments: Store<Deployment>,
    /// Pods carrying the [`labels::APP`] label.
    pub pods: Store<Pod>,
}

/// Apps ticked at once: a tick mostly waits on its pods' scrapes, so many fit in one 2 s tick.
const CONCURRENT_APPS: usize = 32;

/// Runs the loop over the WsgiApps in `stores` until `stop` turns true.
pub async fn run(
    client: Client,
    stores: Stores,
    recorder: Recorder,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    // Before its first list a store is empty, which would read as "no pods ready". The WsgiApp
    // store needs no wait (an app not yet listed is just not ticked), and the controller's store
    // was seen never to report ready under kube-runtime 5, which would stall the loop.
    let ready = async {
        let _ = futures_util::join!(
            stores.deployments.wait_until_ready(),
            stores.pods.wait_until_ready()
        );
    };
    tokio::select! {
        _ = ready => debug!("watch stores ready"),
        _ = &mut stop => return,
    }
    let scraper = Scraper::new();
    let mut states: HashMap<String, Autoscaler> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut stop => return,
        }
        let apps: Vec<Arc<WsgiApp>> = stores
            .apps
            .state()
            .into_iter()
            .filter(|a| scale::builtin_owns_replicas(a))
            .collect();
        let mut pods_of: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in stores.pods.state() {
            if let Some(app) = p.labels().get(labels::APP) {
                let k = format!("{}/{app}", p.namespace().unwrap_or_default());
                pods_of.entry(k).or_default().push(p);
            }
        }
        let jobs: Vec<_> = apps
            .into_iter()
            .map(|app| {
                let k = key(&app);
                let deployment = stores.deployments.get(
                    &ObjectRef::new(&app.name_any()).within(&app.namespace().unwrap_or_default()),
                );
                let pods = pods_of.remove(&k).unwrap_or_default();
                let scaler = states.remove(&k);
                (app, k, deployment, pods, scaler)
            })
            .collect();
        let (client, scraper, recorder) = (&client, &scraper, &recorder);
        let done: Vec<(String, Option<Autoscaler>)> = futures_util::stream::iter(jobs)
            .map(|(app, k, deployment, pods, mut scaler)| {
                let span = info_span!("autoscale", namespace = app.namespace().unwrap_or_default(), name = %app.name_any());
                async move {
                    let seen = Seen { deployment, pods };
                    if let Err(e) = tick(client, scraper, recorder, &mut scaler, &app, seen).await {
                        warn!(error = %e, "autoscaling tick failed");
                    }
                    (k, scaler)
                }
                .instrument(span)
            })
            .buffer_unordered(CONCURRENT_APPS)
            .collect()
            .await;
        // What was not taken out above belongs to apps that are gone or no longer autoscaled.
        states = done
            .into_iter()
            .filter_map(|(k, s)| Some((k, s?)))
            .collect();
    }
}

fn key(app: &WsgiApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// An app's Deployment and pods as the stores hold them at the start of a tick.
struct Seen {
    deployment: Option<Arc<Deployment>>,
    pods: Vec<Arc<Pod>>,
}

async fn tick(
    client: &Client,
    scraper: &Scraper,
    recorder: &Recorder,
    slot: &mut Option<Autoscaler>,
    app: &WsgiApp,
    seen: Seen,
) -> Result<()> {
    let ns = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let policy = Policy::try_from(&app.spec.autoscaling)?;
    let scaler = match slot {
        Some(s) => s,
        None => slot.insert(Autoscaler::new(policy.clone())?),
    };
    if *scaler.policy() != policy {
        scaler.set_policy(policy)?;
    }

    let Some(deployment) = seen.deployment else {
        debug!("no Deployment yet");
        return Ok(());
    };
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let current = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as u32;
    let targets: Vec<ScrapeTarget> = seen.pods.iter().filter_map(|p| scrape_target(p)).collect();
    let samples = scraper.scrape_pods(&targets, SCRAPE_TIMEOUT).await;
    let now = Instant::now();
    let ready = targets.len() as u32;
    scaler.observe(now, ready, &samples);
    let decision = scaler.decide(now, current, ready);
    debug!(
        current,
        ready,
        answered = samples.len(),
        desired = decision.desired,
        panic = decision.panic,
        "decision"
    );

    let old = app.status.clone().unwrap_or_default();
    let mut last_scale_time = old.last_scale_time.clone();
    if decision.changes_replicas() {
        let patch = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {"replicas": decision.desired}});
        deployments
            .patch(
                &name,
                &PatchParams::apply(scale::AUTOSCALER_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        last_scale_time = Some(Time(Timestamp::now()));
        let (reason, verb) = if decision.desired > current {
            ("ScaledUp", "up")
        } else {
            ("ScaledDown", "down")
        };
        info!(from = current, to = decision.desired, reason = %decision.reason, "scaled {verb}");
        let ev = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(
                format!("{current} → {} pods: {}", decision.desired, decision.reason)
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &app.object_ref(&())).await {
            warn!(error = %e, "publishing an event failed");
        }
    }

    let desired = i32::try_from(decision.desired).unwrap_or(i32::MAX);
    let (queue, concurrency) = match (decision.queue_depth, decision.inflight) {
        (Some(q), Some(i)) => (Some(q), Some(q + i)),
        _ => (old.queue_depth, old.concurrency),
    };
    let changed = old.desired_replicas != Some(desired)
        || old.queue_depth != queue
        || old.concurrency != concurrency
        || old.last_scale_time != last_scale_time;
    if changed {
        let patch = json!({"status": {
            "desiredReplicas": desired, "queueDepth": queue, "concurrency": concurrency, "lastScaleTime": last_scale_time,
        }});
        Api::<WsgiApp>::namespaced(client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// The admin address of a ready, running pod: its IP and the port named `admin` of the proxy container.
fn scrape_target(p: &Pod) -> Option<ScrapeTarget> {
    if p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = p.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let port = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|port| port.name.as_deref() == Some(pod::ADMIN_PORT_NAME))
        .map(|port| port.container_port)
        .unwrap_or(pod::ADMIN_PORT);
    Some(ScrapeTarget {
        pod: p.name_any(),
        addr: SocketAddr::new(ip, u16::try_from(port).ok()?),
    })
}
