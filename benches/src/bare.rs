//! The baseline: a plain hyper-util legacy client POSTing prepared bodies,
//! with no Kafka, routing, signing or retries, at a fixed concurrency.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What the baseline sends, and how many requests at once.
pub struct BareLoad {
    /// Body `i` goes to `urls[i % urls.len()]`.
    pub urls: Vec<Uri>,
    pub bodies: Arc<[Bytes]>,
    pub concurrency: usize,
    /// Idle connections the pool keeps per host; `None` is hyper-util's
    /// default (no limit). The dispatcher's client keeps 32
    /// (`HttpClientOptions::pool_max_idle_per_host`), shared by every
    /// endpoint on the same host: set 32 here to see what that costs.
    pub pool_max_idle_per_host: Option<usize>,
}

/// Send every body once and return how long it took. `completed` counts
/// answered requests as they happen (for progress and timeout reports).
pub async fn run(load: BareLoad, completed: Arc<AtomicU64>) -> anyhow::Result<Duration> {
    if load.urls.is_empty() || load.concurrency == 0 {
        bail!("the baseline needs at least one URL and a concurrency of at least 1");
    }
    let mut connector = HttpConnector::new();
    // As the dispatcher's connector: no Nagle delay on small requests.
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if let Some(max) = load.pool_max_idle_per_host {
        builder.pool_max_idle_per_host(max);
    }
    let client: Client<_, Full<Bytes>> = builder.build(connector);

    let load = Arc::new(load);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..load.concurrency {
        let (client, load, next, completed) = (
            client.clone(),
            load.clone(),
            next.clone(),
            completed.clone(),
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = load.bodies.get(i) else {
                    return anyhow::Ok(());
                };
                let request = Request::post(load.urls[i % load.urls.len()].clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))
                    .context("building a request")?;
                let response = client
                    .request(request)
                    .await
                    .with_context(|| format!("request {i} failed"))?;
                let status = response.status();
                response
                    .into_body()
                    .collect()
                    .await
                    .with_context(|| format!("reading the answer to request {i}"))?;
                if !status.is_success() {
                    bail!("request {i}: the sink answered {status}");
                }
                completed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a baseline worker panicked")??;
    }
    Ok(started.elapsed())
}
