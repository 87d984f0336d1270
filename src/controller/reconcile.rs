//! One reconcile of a WsgiApp: apply its objects, delete the ones it no longer needs, update status.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Span, debug, field, info, instrument};

use super::metrics::{Metrics, ResultLabels};
use super::{Error, Result, labels, objects, scale, status};
use crate::crd::{DEGRADED, READY, WsgiApp};

/// Field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "kubewsgi";

/// Shared state of the reconciler.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on WsgiApps.
    pub recorder: Recorder,
    /// Image of the proxy container unless the WsgiApp names one.
    pub proxy_image: String,
    /// Requeue interval of a WsgiApp whose reconcile succeeded.
    pub resync: Duration,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per WsgiApp, for the error backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

/// What applying an object did.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Created,
    Changed,
    Unchanged,
}

/// Reconciles one WsgiApp.
#[instrument(skip_all, fields(namespace = field::Empty, name = %app.name_any(), generation = field::Empty))]
pub async fn reconcile(app: Arc<WsgiApp>, ctx: Arc<Context>) -> Result<Action> {
    let start = Instant::now();
    let result = reconcile_inner(&app, &ctx).await;
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels { result: outcome })
        .inc();
    match &result {
        Ok(_) => {
            ctx.failures
                .lock()
                .expect("failure map lock")
                .remove(&key(&app));
        }
        Err(e) => report_failure(&app, &ctx, e).await,
    }
    result
}

/// Says where the user looks (`Degraded` = `ReconcileFailed`, and a Warning event) why the API
/// server refused what the controller applies: such a refusal does not go away by retrying.
/// Errors that do (a conflict, throttling, an API server restarting) are only retried.
async fn report_failure(app: &WsgiApp, ctx: &Context, error: &Error) {
    let Error::Kube(kube::Error::Api(s)) = error else {
        return;
    };
    if matches!(s.code, 404 | 409 | 429 | 503 | 504) {
        return;
    }
    let Some(ns) = app.namespace() else { return };
    let message = error.to_string();
    let Some(conditions) = status::reconcile_failed(app, &message, Timestamp::now()) else {
        return;
    };
    let patch = serde_json::json!({ "status": { "conditions": conditions } });
    let api = Api::<WsgiApp>::namespaced(ctx.client.clone(), &ns);
    if let Err(e) = api
        .patch_status(
            &app.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(error = %e, "cannot record the failure in the status");
    }
    publish(
        ctx,
        app,
        EventType::Warning,
        status::RECONCILE_FAILED,
        message,
    )
    .await;
}

/// Requeues a failed WsgiApp with exponential backoff (1 s doubling to 5 min).
pub fn error_policy(app: Arc<WsgiApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.inc();
    let mut failures = ctx.failures.lock().expect("failure map lock");
    let n = failures.entry(key(&app)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(9)).min(Duration::from_secs(300));
    tracing::warn!(namespace = app.namespace().unwrap_or_default(), name = %app.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn key(app: &WsgiApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

async fn reconcile_inner(app: &WsgiApp, ctx: &Context) -> Result<Action> {
    let ns = app
        .namespace()
        .ok_or_else(|| Error::Invalid("WsgiApp without a namespace".into()))?;
    let span = Span::current();
    span.record("namespace", ns.as_str());
    span.record("generation", app.metadata.generation.unwrap_or(0));
    if app.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    let name = app.name_any();
    let client = &ctx.client;

    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    if scale::builtin_owns_replicas(app) {
        scale::hand_over_replicas(&deployments, app).await?;
    }
    let deployment = objects::deployment(app, &ctx.proxy_image);
    let (deployment, what) = apply(&deployments, &name, &deployment).await?;
    note(ctx, app, "Deployment", what).await;
    let (_, what) = apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &name,
        &objects::service(app),
    )
    .await?;
    note(ctx, app, "Service", what).await;
    ensure(
        ctx,
        app,
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        "PodDisruptionBudget",
        objects::pdb(app),
    )
    .await?;
    ensure(
        ctx,
        app,
        &Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns),
        "HorizontalPodAutoscaler",
        scale::hpa(app),
    )
    .await?;

    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&labels::selector_string(&name)))
        .await?
        .items;
    let new = status::compute(app, &deployment, &pods, Timestamp::now());
    // The builtin autoscaler's fields go once it no longer scales this app.
    let leftovers = !scale::builtin_owns_replicas(app) && status::has_autoscaler_fields(app);
    if !new.matches(app) || leftovers {
        let api = Api::<WsgiApp>::namespaced(client.clone(), &ns);
        let mut patch = serde_json::json!({ "status": new });
        if leftovers {
            for field in status::AUTOSCALER_FIELDS {
                patch["status"][field] = serde_json::Value::Null;
            }
        }
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Deleted while this reconcile ran: garbage collection takes the owned objects.
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
        debug!("status updated");
        status_events(ctx, app, &new).await;
    }
    Ok(Action::requeue(ctx.resync))
}

/// Server-side applies `obj` (forcing, so edits by others to fields the operator owns are undone).
async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<(K, Applied)>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let before = api.get_opt(name).await?;
    let after = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    let what = match before {
        None => Applied::Created,
        // Generation counts spec changes only, so status updates by other controllers are not ours.
        Some(b) if b.meta().generation != after.meta().generation => Applied::Changed,
        Some(b)
            if b.meta().generation.is_none()
                && b.resource_version() != after.resource_version() =>
        {
            Applied::Changed
        }
        Some(_) => Applied::Unchanged,
    };
    Ok((after, what))
}

/// Applies `desired` when it is `Some`, else deletes the object of that kind named like the WsgiApp
/// if the WsgiApp controls it.
async fn ensure<K>(
    ctx: &Context,
    app: &WsgiApp,
    api: &Api<K>,
    kind: &str,
    desired: Option<K>,
) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = app.name_any();
    if let Some(obj) = desired {
        let (_, what) = apply(api, &name, &obj).await?;
        note(ctx, app, kind, what).await;
        return Ok(());
    }
    let Some(existing) = api.get_opt(&name).await? else {
        return Ok(());
    };
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == app.uid().as_ref());
    if ours {
        api.delete(&name, &DeleteParams::default()).await?;
        publish(
            ctx,
            app,
            EventType::Normal,
            &format!("{kind}Deleted"),
            format!("deleted {kind} {name}: no longer needed"),
        )
        .await;
    }
    Ok(())
}

async fn note(ctx: &Context, app: &WsgiApp, kind: &str, what: Applied) {
    let name = app.name_any();
    match what {
        Applied::Created => {
            publish(
                ctx,
                app,
                EventType::Normal,
                &format!("{kind}Created"),
                format!("created {kind} {name}"),
            )
            .await
        }
        Applied::Changed => {
            publish(
                ctx,
                app,
                EventType::Normal,
                &format!("{kind}Updated"),
                format!("updated {kind} {name}"),
            )
            .await
        }
        Applied::Unchanged => {}
    }
}

/// Events for changes of the Ready and Degraded conditions.
async fn status_events(ctx: &Context, app: &WsgiApp, new: &status::OwnedStatus) {
    let old = app.status.clone().unwrap_or_default();
    for c in &new.conditions {
        let before = old.condition(&c.type_);
        if before.map(|b| (&b.status, &b.reason)) == Some((&c.status, &c.reason)) {
            continue;
        }
        let warning = c.type_ == DEGRADED && c.status == "True";
        if c.type_ == READY || warning {
            let ty = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let note = if c.message.is_empty() {
                c.reason.clone()
            } else {
                c.message.clone()
            };
            publish(ctx, app, ty, &c.reason, note).await;
        }
    }
}

async fn publish(ctx: &Context, app: &WsgiApp, type_: EventType, reason: &str, note: String) {
    info!(reason, note = %note, "event");
    let ev = Event {
        type_,
        reason: reason.chars().take(128).collect(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are best effort: failing to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&ev, &app.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an event failed");
    }
}
