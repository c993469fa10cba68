//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
//!
//! Kept apart from delivery: it has its own listener and task, so a scrape
//! never waits on the pipeline and the pipeline never waits on a scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::lane::Control;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Set once the consumer joined its group and the pipeline runs.
    pub ready: Arc<AtomicBool>,
    /// Cleared when shutdown starts, so readiness drops at once.
    pub live: Arc<AtomicBool>,
    /// Each endpoint's pause and disable switches.
    pub endpoints: Arc<Vec<(Arc<str>, Arc<Control>)>>,
}

/// Bind the admin listener (early, so a bad address fails at start-up).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen: cannot listen on {addr}: {e}"))
}

/// Serve until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/endpoints") {
        return endpoints(state, req.method(), rest);
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

/// `GET /endpoints`: every endpoint's switches, as JSON.
/// `POST /endpoints/{id}/pause` and `POST /endpoints/{id}/resume` flip them
/// (resume also re-enables an endpoint a 410 disabled).
fn endpoints(state: &AdminState, method: &Method, rest: &str) -> Response<Full<Bytes>> {
    if rest.is_empty() || rest == "/" {
        if method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        let list: Vec<serde_json::Value> = state
            .endpoints
            .iter()
            .map(|(id, c)| serde_json::json!({ "id": &**id, "paused": c.paused(), "disabled": c.disabled() }))
            .collect();
        return json(StatusCode::OK, serde_json::json!({ "endpoints": list }));
    }
    let mut parts = rest.trim_start_matches('/').splitn(2, '/');
    let (Some(id), Some(action)) = (parts.next(), parts.next()) else {
        return text(
            StatusCode::NOT_FOUND,
            "try POST /endpoints/{id}/pause or /resume\n",
        );
    };
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let Some((id, control)) = state.endpoints.iter().find(|(e, _)| &**e == id) else {
        return text(StatusCode::NOT_FOUND, "no such endpoint\n");
    };
    match action {
        "pause" => control.pause(),
        "resume" => control.resume(),
        _ => return text(StatusCode::NOT_FOUND, "the actions are pause and resume\n"),
    }
    tracing::warn!(endpoint = %id, action, "endpoint switched through the admin API");
    json(
        StatusCode::OK,
        serde_json::json!({ "id": &**id, "paused": control.paused(), "disabled": control.disabled() }),
    )
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}
