//! The control socket: `GET /stats` JSON for the proxy (admission capacity) and for people.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::Result;
use super::master::SharedStats;

/// Serves the control socket on the current runtime.
pub fn serve(listener: std::os::unix::net::UnixListener, stats: SharedStats) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let stats = stats.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, stats.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

async fn answer(
    req: Request<Incoming>,
    stats: SharedStats,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => {
            let s = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (StatusCode::OK, serde_json::to_vec(&s).unwrap_or_default())
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, b"{\"ok\":true}".to_vec()),
        _ => (StatusCode::NOT_FOUND, b"{\"error\":\"not found\"}".to_vec()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
