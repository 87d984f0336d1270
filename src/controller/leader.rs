//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
//! take the Lease when it is free or its holder stopped renewing, renew it periodically, and give up
//! leadership when renewing fails for longer than the lease duration.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::{Instant, sleep};
use tracing::{info, warn};

use super::Result;

/// How long a holder's Lease is valid without renewal.
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, and a candidate retries.
const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// One candidate for the Lease `name`.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// The holder's record as last seen, and when it was first seen: expiry is judged by the local
    /// clock since that moment, never by comparing clocks of different machines.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    /// A candidate `identity` for the Lease `name` of `api`'s namespace.
    pub fn new(api: Api<Lease>, name: String, identity: String) -> Self {
        Self {
            api,
            name,
            identity,
            observed: None,
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self) -> Result<()> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => warn!(lease = %self.name, error = %e, "leader election attempt failed"),
            }
            sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews the Lease until a renewal has not succeeded for the lease duration; returns then,
    /// when another candidate may already have taken over.
    pub async fn hold(&mut self) {
        let mut last_renewal = Instant::now();
        loop {
            sleep(RETRY_PERIOD).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "another replica took the lease");
                    return;
                }
                Err(e) => warn!(lease = %self.name, error = %e, "renewing the lease failed"),
            }
            // Stop before the lease runs out, so two leaders never act at once.
            if last_renewal.elapsed() + RETRY_PERIOD >= LEASE_DURATION {
                warn!(lease = %self.name, "could not renew the lease in time");
                return;
            }
        }
    }

    /// Hands the Lease over at shutdown so a standby replica takes over without waiting for expiry.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        info!(lease = %self.name, "released the lease");
        Ok(())
    }

    /// One round: creates, takes over or renews the Lease; `Ok(false)` when someone else holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let duration = LEASE_DURATION.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_false(
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| true),
            );
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(&self.identity);
        if !mine && holder.is_some() && !self.expired(spec) {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now);
        // The Lease carries its resourceVersion, so a concurrent writer makes this a 409.
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| true),
        )
    }

    /// Whether the other holder's record has stayed unchanged for longer than its lease duration.
    fn expired(&mut self, spec: &LeaseSpec) -> bool {
        let record = format!("{:?}/{:?}", spec.holder_identity, spec.renew_time);
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        match &self.observed {
            Some((seen, since)) if *seen == record => since.elapsed() > duration,
            _ => {
                self.observed = Some((record, Instant::now()));
                false
            }
        }
    }
}

fn conflict_is_false(r: kube::Result<bool>) -> Result<bool> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        other => Ok(other?),
    }
}
