//! Concurrent scrapes of the pods' admin `/metrics`, each bounded by a short timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{Instrument, debug, info_span, warn};

use super::decide::PodSample;
use super::exposition::parse_gauges;
use super::{Error, Result};

/// A metrics page larger than this is not the proxy's; refuse it rather than buffer it.
const MAX_BODY: usize = 1 << 20;

/// A ready pod to scrape: its name and its admin address (`http://ADDR/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTarget {
    pub pod: String,
    pub addr: SocketAddr,
}

/// An HTTP client for scraping, keeping one idle connection per pod between ticks.
#[derive(Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Scraper {
    fn default() -> Self {
        Self::new()
    }
}

impl Scraper {
    /// A scraper with its own connection pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        Self { client }
    }

    /// Scrapes every target at once; pods that fail or exceed `timeout` are left out (and logged).
    pub async fn scrape_pods(&self, targets: &[ScrapeTarget], timeout: Duration) -> Vec<PodSample> {
        let scrapes = targets.iter().map(|t| async move {
            let span = info_span!("scrape", pod = %t.pod, addr = %t.addr);
            match self.scrape_pod(t, timeout).instrument(span).await {
                Ok(sample) => Some(sample),
                Err(err) => {
                    warn!(pod = %t.pod, addr = %t.addr, error = %err, "pod left out of this tick");
                    None
                }
            }
        });
        join_all(scrapes).await.into_iter().flatten().collect()
    }

    /// Scrapes one pod within `timeout` (connect, response and body together).
    pub async fn scrape_pod(&self, target: &ScrapeTarget, timeout: Duration) -> Result<PodSample> {
        let text = tokio::time::timeout(timeout, self.fetch(target.addr))
            .await
            .map_err(|_| Error::Timeout(timeout))??;
        let g = parse_gauges(&text)?;
        debug!(
            queue_depth = g.queue_depth,
            inflight = g.inflight,
            capacity = g.capacity,
            "scraped"
        );
        Ok(PodSample {
            pod: target.pod.clone(),
            queue_depth: g.queue_depth,
            inflight: g.inflight,
            capacity: g.capacity,
            max_capacity: g.max_capacity.unwrap_or(g.capacity),
        })
    }

    async fn fetch(&self, addr: SocketAddr) -> Result<String> {
        let uri: http::Uri = format!("http://{addr}/metrics")
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::Http(e.to_string()))?;
        let resp = self
            .client
            .get(uri)
            .await
            .map_err(|e| Error::Http(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::Status(status.as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| Error::Http(format!("reading the body: {e}")))?
            .to_bytes();
        String::from_utf8(body.to_vec())
            .map_err(|_| Error::Http("metrics page is not UTF-8".into()))
    }
}

/// Scrapes `targets` with a one-off [`Scraper`]; keep a [`Scraper`] to reuse connections.
pub async fn scrape_pods(targets: &[ScrapeTarget], timeout: Duration) -> Vec<PodSample> {
    Scraper::new().scrape_pods(targets, timeout).await
}

/// hyper-util's error says only "client error (Connect)"; the cause says what happened.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
