//! The ceiling: a plain hyper-util client POSTing prepared requests, with no
//! Kafka, routing, signing, retries or metrics, at a fixed concurrency, as
//! fast as possible or at a fixed rate.
//!
//! What it sends is prepared before the clock starts (bodies, and headers
//! such as precomputed signatures), so its figures are what this machine's
//! HTTP stack and the receivers can do: the ceiling any dispatcher is
//! measured against in the same run.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::stats::new_histogram;

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Index into [`BareLoad::urls`].
    pub target: usize,
    pub body: Bytes,
    /// Sent besides `content-type: application/json`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Prepared {
    /// A body with no extra headers.
    pub fn plain(target: usize, body: Bytes) -> Prepared {
        Prepared {
            target,
            body,
            headers: Vec::new(),
        }
    }
}

/// What the client sends, and how.
pub struct BareLoad {
    pub urls: Vec<Uri>,
    pub requests: Arc<[Prepared]>,
    pub concurrency: usize,
    /// Requests per second, or `None` for as fast as possible. With a rate,
    /// request `i` is due `i / rate` after the start and its latency counts
    /// from then, so a stall is not hidden by the requests it delayed.
    pub rate: Option<f64>,
    /// Idle connections the pool keeps per host; `None` is hyper-util's
    /// default (no limit).
    pub pool_max_idle_per_host: Option<usize>,
}

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum BareError {
    #[error("the ceiling client needs at least one URL, request and worker")]
    Empty,
    #[error("request {index} targets URL #{target}, which does not exist")]
    NoSuchTarget { index: usize, target: usize },
    #[error("building request {index}: {source}")]
    Build {
        index: usize,
        #[source]
        source: http::Error,
    },
    #[error("request {index} failed: {source}")]
    Send {
        index: usize,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the answer to request {index}: {source}")]
    Read {
        index: usize,
        #[source]
        source: hyper::Error,
    },
    #[error("request {index}: the receiver answered {status}")]
    Status {
        index: usize,
        status: http::StatusCode,
    },
    #[error("a ceiling worker panicked")]
    Panicked,
}

/// How a run went.
#[derive(Debug, Clone)]
pub struct BareRun {
    pub elapsed: Duration,
    pub sent: u64,
    /// Request latency in microseconds (from the due time with a rate).
    pub latency: Histogram<u64>,
}

/// Send every request once. `completed` counts answered requests as they
/// happen (for progress and timeout reports).
pub async fn run(load: BareLoad, completed: Arc<AtomicU64>) -> Result<BareRun, BareError> {
    if load.urls.is_empty() || load.requests.is_empty() || load.concurrency == 0 {
        return Err(BareError::Empty);
    }
    if let Some((index, p)) = load
        .requests
        .iter()
        .enumerate()
        .find(|(_, p)| p.target >= load.urls.len())
    {
        return Err(BareError::NoSuchTarget {
            index,
            target: p.target,
        });
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
    for _ in 0..load.concurrency.min(load.requests.len()) {
        let (client, load, next, completed) = (
            client.clone(),
            load.clone(),
            next.clone(),
            completed.clone(),
        );
        workers.spawn(async move {
            let mut latency = new_histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = load.requests.get(i) else {
                    return Ok(latency);
                };
                let due = match load.rate {
                    Some(rate) if rate > 0.0 => {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    _ => Instant::now(),
                };
                let mut request = Request::post(load.urls[p.target].clone())
                    .header(CONTENT_TYPE, "application/json");
                for (name, value) in &p.headers {
                    request = request.header(name, value);
                }
                let request = request
                    .body(Full::new(p.body.clone()))
                    .map_err(|source| BareError::Build { index: i, source })?;
                let response = client
                    .request(request)
                    .await
                    .map_err(|source| BareError::Send { index: i, source })?;
                let status = response.status();
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|source| BareError::Read { index: i, source })?;
                if !status.is_success() {
                    return Err(BareError::Status { index: i, status });
                }
                latency.saturating_record(due.elapsed().as_micros() as u64);
                completed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut latency = new_histogram();
    while let Some(joined) = workers.join_next().await {
        let h = joined.map_err(|_| BareError::Panicked)??;
        // Same bounds on both sides: adding cannot fail.
        let _ = latency.add(&h);
    }
    Ok(BareRun {
        elapsed: started.elapsed(),
        sent: load.requests.len() as u64,
        latency,
    })
}
