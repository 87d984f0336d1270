//! The pod scraper against real HTTP servers on loopback: answering, hung, refusing and broken pods.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use kubewsgi::autoscaler::{Error, PodSample, ScrapeTarget, Scraper};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A metrics page as the proxy's `prometheus-client` registry encodes it.
fn metrics_page(queue: i64, inflight: i64, capacity: i64, max_capacity: Option<i64>) -> String {
    let mut registry = Registry::default();
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    registry.register("kubewsgi_queue_depth", "Waiting requests", gauge(queue));
    registry.register(
        "kubewsgi_inflight_requests",
        "Running requests",
        gauge(inflight),
    );
    registry.register("kubewsgi_worker_capacity", "Worker slots", gauge(capacity));
    if let Some(m) = max_capacity {
        registry.register("kubewsgi_worker_max_capacity", "Max worker slots", gauge(m));
    }
    let mut out = String::new();
    encode(&mut out, &registry).unwrap();
    out
}

/// Serves `body` with `status` on every request until the test's runtime ends.
async fn serve(status: StatusCode, body: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A pod that accepts connections (the kernel does) but never answers.
async fn hung() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// An address nothing listens on any more.
async fn refused() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn target(pod: &str, addr: SocketAddr) -> ScrapeTarget {
    ScrapeTarget {
        pod: pod.into(),
        addr,
    }
}

#[tokio::test]
async fn answering_pods_are_read_and_the_others_left_out() {
    let a = serve(StatusCode::OK, metrics_page(3, 1, 4, Some(8))).await;
    let b = serve(StatusCode::OK, metrics_page(0, 2, 2, None)).await;
    let (_hold, stuck) = hung().await;
    let gone = refused().await;
    let broken = serve(StatusCode::INTERNAL_SERVER_ERROR, "oops".into()).await;
    let other = serve(StatusCode::OK, "# HELP x\nx 1\n".into()).await;
    let targets = [
        target("a", a),
        target("stuck", stuck),
        target("b", b),
        target("gone", gone),
        target("broken", broken),
        target("other", other),
    ];
    let mut samples = Scraper::new()
        .scrape_pods(&targets, Duration::from_secs(2))
        .await;
    samples.sort_by(|x, y| x.pod.cmp(&y.pod));
    assert_eq!(
        samples,
        vec![
            PodSample {
                pod: "a".into(),
                queue_depth: 3.0,
                inflight: 1.0,
                capacity: 4.0,
                max_capacity: 8.0
            },
            // No max capacity exported: the current capacity stands in.
            PodSample {
                pod: "b".into(),
                queue_depth: 0.0,
                inflight: 2.0,
                capacity: 2.0,
                max_capacity: 2.0
            },
        ]
    );
}

#[tokio::test]
async fn hung_pods_are_scraped_concurrently_within_the_timeout() {
    let mut holds = Vec::new();
    let mut targets = Vec::new();
    for i in 0..5 {
        let (l, addr) = hung().await;
        holds.push(l);
        targets.push(target(&format!("stuck-{i}"), addr));
    }
    let good = serve(StatusCode::OK, metrics_page(1, 1, 1, None)).await;
    targets.push(target("good", good));
    let started = Instant::now();
    let samples = Scraper::new()
        .scrape_pods(&targets, Duration::from_secs(2))
        .await;
    let took = started.elapsed();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].pod, "good");
    // One after another would take at least 10 s; together they take about one timeout.
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[tokio::test]
async fn each_failure_has_its_own_error() {
    let scraper = Scraper::new();
    let t = Duration::from_secs(1);
    let (_hold, stuck) = hung().await;
    assert!(matches!(
        scraper.scrape_pod(&target("s", stuck), t).await,
        Err(Error::Timeout(_))
    ));
    let gone = refused().await;
    match scraper.scrape_pod(&target("g", gone), t).await {
        Err(Error::Http(msg)) => assert!(msg.to_lowercase().contains("refused"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let broken = serve(StatusCode::SERVICE_UNAVAILABLE, String::new()).await;
    assert!(matches!(
        scraper.scrape_pod(&target("b", broken), t).await,
        Err(Error::Status(503))
    ));
    let other = serve(StatusCode::OK, "kubewsgi_queue_depth 1\n".into()).await;
    assert!(matches!(
        scraper.scrape_pod(&target("o", other), t).await,
        Err(Error::MissingMetric("kubewsgi_inflight_requests"))
    ));
    let bad = serve(StatusCode::OK, "kubewsgi_queue_depth one\n".into()).await;
    assert!(matches!(
        scraper.scrape_pod(&target("x", bad), t).await,
        Err(Error::Parse { line: 1, .. })
    ));
}

#[tokio::test]
async fn a_scraper_serves_many_ticks() {
    let a = serve(StatusCode::OK, metrics_page(2, 2, 4, None)).await;
    let scraper = Scraper::new();
    for _ in 0..20 {
        let s = scraper
            .scrape_pods(&[target("a", a)], Duration::from_secs(2))
            .await;
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].queue_depth, 2.0);
    }
}
