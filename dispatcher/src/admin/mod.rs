//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, read-only.
//!
//! Kept apart from delivery: it has its own listener and task, so a scrape
//! never waits on the pipeline and the pipeline never waits on a scrape.
//! What changes the dispatcher (pause, resume) is on the authenticated
//! management API (`crate::api`), never here: this port is for Prometheus
//! and the kubelet, which have no token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::server::{self, Limits};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Set once the consumer joined its group and the pipeline runs.
    pub ready: Arc<AtomicBool>,
    /// Cleared when shutdown starts, so readiness drops at once.
    pub live: Arc<AtomicBool>,
}

/// Bind the admin listener (early, so a bad address fails at start-up).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen: cannot listen on {addr}: {e}"))
}

/// Serve until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: watch::Receiver<bool>) {
    serve_with(listener, state, Limits::default(), shutdown).await
}

/// [`serve`] with other limits (tests use short ones).
pub async fn serve_with(
    listener: TcpListener,
    state: AdminState,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            // HEAD /metrics stays in `route`: no body, nothing to render.
            if req.uri().path() == "/metrics" && req.method() == Method::GET {
                return Ok::<_, Infallible>(metrics(state.metrics).await);
            }
            Ok(route(&state, req))
        }
    });
    server::serve(listener, service, limits, "admin", shutdown).await;
}

/// The scrape, rendered on a blocking thread: with many endpoints it walks
/// every one of them, which is no work for a runtime worker.
async fn metrics(metrics: Arc<Metrics>) -> Response<Full<Bytes>> {
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(text) => Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(text)))
            .unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the metrics failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering the metrics failed\n",
            )
        }
    }
}

fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/endpoints" || path.starts_with("/endpoints/") {
        return text(
            StatusCode::NOT_FOUND,
            "the endpoint API moved to the management listener (api.listen, with a token)\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match path {
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(state.metrics.render())))
            .unwrap_or_default(),
        // Alive as long as this answers: failing liveness during a drain
        // would only get the pod killed before it has committed.
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) && state.live.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}
