//! The webhook sink: local receivers that check every request as a careful
//! customer would and count what they saw.
//!
//! Each receiver has a listener (port) of its own, unless the sink is
//! started with shared listeners: then receivers without connection-level
//! faults (`refuse`, `reset`) share that many listeners, and a request finds
//! its receiver by its path (`/webhooks/{id}`), as many webhooks of one
//! customer reach one gateway. Thousands of endpoints then need neither
//! thousands of ports nor thousands of connections more than they use.
//!
//! Per request a receiver verifies the Standard Webhooks signature and that
//! `x-webhook-delivery-id` equals `webhook-id`, checks the envelope (JSON,
//! `webhook_id` naming this endpoint, `X-Webhook-Event` matching `event`),
//! measures the end-to-end age (arrival time minus the envelope's
//! `timestamp`, which the producer set at send time), applies the endpoint's
//! faults, and records accepted delivery ids in the [`Ledger`].
//!
//! The receivers run on a runtime of their own, on threads named
//! [`THREAD_NAME`], so that they cost the same whichever client sends to
//! them (the dispatcher or the bare ceiling client) and their CPU time can
//! be told apart.

pub mod faults;
pub mod verify;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use transports::DeliveryId;

use crate::ledger::{Ledger, Receipt};
use crate::stats::{new_endpoint_histogram, new_histogram};
use crate::workload::now_us;
use faults::{Action, Fault, FaultKind};
use verify::{Signed, Verifier};

/// The name of the sink's threads (for CPU accounting).
pub const THREAD_NAME: &str = "loadtest-sink";

/// Largest request body read; the dispatcher's own limit on events is 1 MiB.
const MAX_BODY_BYTES: usize = 2 << 20;

/// How often a receiver with a `refuse` fault checks whether to close or
/// reopen its listener.
const REFUSE_POLL: Duration = Duration::from_millis(20);

/// One receiver.
#[derive(Debug, Clone)]
pub struct SinkEndpoint {
    /// The endpoint id, as in the dispatcher's config (and `webhook_id`).
    pub id: String,
    /// `whsec_` secrets to verify with; none: signatures are not checked
    /// (the delivery id is still required).
    pub secrets: Vec<String>,
    pub faults: Vec<Fault>,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Its ages also go into [`Sink::take_healthy_interval_ages`]: an
    /// endpoint with no faults and no rate limit, whose age over time shows
    /// whether the others slow it.
    pub healthy: bool,
}

/// Counters of one receiver.
#[derive(Debug, Default)]
struct Counters {
    /// Connections to its own listener (none when it shares one).
    connections: AtomicU64,
    requests: AtomicU64,
    body_bytes: AtomicU64,
    /// Answered 2xx.
    accepted: AtomicU64,
    duplicates: AtomicU64,
    unexpected: AtomicU64,
    bad_signature: AtomicU64,
    bad_request: AtomicU64,
    faults: [AtomicU64; FaultKind::ALL.len()],
}

/// A copy of one receiver's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub connections: u64,
    pub requests: u64,
    pub body_bytes: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub bad_signature: u64,
    pub bad_request: u64,
    /// Requests answered by each fault kind, in [`FaultKind::ALL`] order
    /// (`latency` counts delayed requests, whatever their answer).
    pub faults: [u64; FaultKind::ALL.len()],
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut faults = [0; FaultKind::ALL.len()];
        for (i, f) in faults.iter_mut().enumerate() {
            *f = self.faults[i].saturating_sub(earlier.faults[i]);
        }
        Counts {
            connections: self.connections.saturating_sub(earlier.connections),
            requests: self.requests.saturating_sub(earlier.requests),
            body_bytes: self.body_bytes.saturating_sub(earlier.body_bytes),
            accepted: self.accepted.saturating_sub(earlier.accepted),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            unexpected: self.unexpected.saturating_sub(earlier.unexpected),
            bad_signature: self.bad_signature.saturating_sub(earlier.bad_signature),
            bad_request: self.bad_request.saturating_sub(earlier.bad_request),
            faults,
        }
    }

    /// Sum over receivers.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Counts>) -> Counts {
        let mut t = Counts::default();
        for c in all {
            t.connections += c.connections;
            t.requests += c.requests;
            t.body_bytes += c.body_bytes;
            t.accepted += c.accepted;
            t.duplicates += c.duplicates;
            t.unexpected += c.unexpected;
            t.bad_signature += c.bad_signature;
            t.bad_request += c.bad_request;
            for (i, f) in c.faults.iter().enumerate() {
                t.faults[i] += f;
            }
        }
        t
    }
}

impl Counters {
    fn snapshot(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            connections: get(&self.connections),
            requests: get(&self.requests),
            body_bytes: get(&self.body_bytes),
            accepted: get(&self.accepted),
            duplicates: get(&self.duplicates),
            unexpected: get(&self.unexpected),
            bad_signature: get(&self.bad_signature),
            bad_request: get(&self.bad_request),
            faults: std::array::from_fn(|i| get(&self.faults[i])),
        }
    }

    fn fault(&self, kind: FaultKind) {
        self.faults[kind.index()].fetch_add(1, Ordering::Relaxed);
    }
}

struct Receiver {
    id: String,
    verifier: Option<Verifier>,
    faults: Vec<Fault>,
    counters: Counters,
    healthy: bool,
    /// End-to-end age of first acceptances, microseconds.
    ages: Mutex<Histogram<u64>>,
    /// The same since the phase began.
    phase_ages: Mutex<Histogram<u64>>,
    busy: Mutex<Busy>,
}

/// Requests in progress at a receiver, integrated over time: how many of an
/// endpoint's `max_in_flight` slots the dispatcher kept busy, on average.
#[derive(Debug)]
struct Busy {
    in_flight: u64,
    /// Request-seconds up to `since`.
    total_s: f64,
    since: Instant,
}

impl Busy {
    fn advance(&mut self, now: Instant) {
        self.total_s +=
            self.in_flight as f64 * now.saturating_duration_since(self.since).as_secs_f64();
        self.since = now;
    }
}

/// Counts a request as in progress until dropped (answered, reset, or
/// abandoned by the client).
struct InProgress<'a>(&'a Mutex<Busy>);

impl<'a> InProgress<'a> {
    fn start(busy: &'a Mutex<Busy>) -> InProgress<'a> {
        let mut b = lock(busy);
        b.advance(Instant::now());
        b.in_flight += 1;
        InProgress(busy)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        let mut b = lock(self.0);
        b.advance(Instant::now());
        b.in_flight = b.in_flight.saturating_sub(1);
    }
}

/// End-to-end ages across receivers: since the last interval sample, since
/// the phase began, and over the whole run.
struct Ages {
    interval: Histogram<u64>,
    /// The interval's ages at healthy receivers only.
    healthy_interval: Histogram<u64>,
    phase: Histogram<u64>,
    total: Histogram<u64>,
}

struct Shared {
    receivers: Vec<Receiver>,
    /// Receiver index by endpoint id, for shared listeners.
    by_id: HashMap<String, usize>,
    /// Requests to a shared listener for no known receiver.
    misrouted: AtomicU64,
    ledger: RwLock<Arc<Ledger>>,
    epoch: OnceLock<Instant>,
    faults_on: AtomicBool,
    ages: Mutex<Ages>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counting must survive a panicking request task.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Time since the epoch, when faults are on and the epoch is set.
    fn fault_clock(&self) -> Option<Duration> {
        if !self.faults_on.load(Ordering::Relaxed) {
            return None;
        }
        self.epoch.get().map(Instant::elapsed)
    }

    /// The receiver a request is for: the listener's own, or on a shared
    /// listener the one its path names.
    fn route(&self, to: Route, path: &str) -> Option<usize> {
        match to {
            Route::Own(index) => Some(index),
            Route::ByPath => path
                .strip_prefix("/webhooks/")
                .and_then(|id| self.by_id.get(id).copied()),
        }
    }

    fn record_age(&self, receiver: &Receiver, age_us: u64) {
        lock(&receiver.ages).saturating_record(age_us);
        lock(&receiver.phase_ages).saturating_record(age_us);
        let mut ages = lock(&self.ages);
        ages.interval.saturating_record(age_us);
        if receiver.healthy {
            ages.healthy_interval.saturating_record(age_us);
        }
        ages.phase.saturating_record(age_us);
        ages.total.saturating_record(age_us);
    }
}

/// Running receivers; they stop (and their thread is joined) when dropped.
pub struct Sink {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Whose requests a listener takes.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// One receiver's, with a listener of its own.
    Own(usize),
    /// Several receivers', told apart by path.
    ByPath,
}

/// The connection was reset on purpose (a fault); hyper closes it.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
struct ResetConnection;

impl Sink {
    /// Bind every receiver on 127.0.0.1 and start serving on `threads`
    /// threads of their own. With `shared_listeners` above 0, receivers
    /// without a fixed port or connection-level faults share that many
    /// listeners (see the module docs). Faults stay off until
    /// [`Sink::set_faults`] and [`Sink::set_epoch`].
    pub fn start(
        endpoints: Vec<SinkEndpoint>,
        threads: usize,
        shared_listeners: usize,
        ledger: Arc<Ledger>,
    ) -> anyhow::Result<Sink> {
        let bind = |port: u16, what: &dyn Fn() -> String| {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("binding {} on port {port}", what()))?;
            listener.set_nonblocking(true)?;
            anyhow::Ok(listener)
        };
        let mut shared_socks = Vec::with_capacity(shared_listeners);
        for i in 0..shared_listeners {
            shared_socks.push(bind(0, &|| format!("shared listener {i}"))?);
        }
        let mut listeners: Vec<(Route, std::net::TcpListener)> = Vec::new();
        let mut addrs = Vec::with_capacity(endpoints.len());
        let mut receivers = Vec::with_capacity(endpoints.len());
        let mut by_id = HashMap::new();
        let mut sharing = 0;
        for (index, ep) in endpoints.into_iter().enumerate() {
            let own = ep.port != 0
                || shared_socks.is_empty()
                || ep
                    .faults
                    .iter()
                    .any(|f| matches!(f.kind, FaultKind::Refuse | FaultKind::Reset));
            if own {
                let listener = bind(ep.port, &|| format!("the receiver of {}", ep.id))?;
                addrs.push(listener.local_addr()?);
                listeners.push((Route::Own(index), listener));
            } else {
                addrs.push(shared_socks[sharing % shared_socks.len()].local_addr()?);
                sharing += 1;
                if by_id.insert(ep.id.clone(), index).is_some() {
                    anyhow::bail!("two receivers named {}", ep.id);
                }
            }
            let verifier = if ep.secrets.is_empty() {
                None
            } else {
                Some(Verifier::new(&ep.secrets).with_context(|| format!("endpoint {}", ep.id))?)
            };
            receivers.push(Receiver {
                id: ep.id,
                verifier,
                faults: ep.faults,
                counters: Counters::default(),
                healthy: ep.healthy,
                ages: Mutex::new(new_endpoint_histogram()),
                phase_ages: Mutex::new(new_endpoint_histogram()),
                busy: Mutex::new(Busy {
                    in_flight: 0,
                    total_s: 0.0,
                    since: Instant::now(),
                }),
            });
        }
        listeners.extend(shared_socks.into_iter().map(|l| (Route::ByPath, l)));
        let shared = Arc::new(Shared {
            receivers,
            by_id,
            misrouted: AtomicU64::new(0),
            ledger: RwLock::new(ledger),
            epoch: OnceLock::new(),
            faults_on: AtomicBool::new(false),
            ages: Mutex::new(Ages {
                interval: new_histogram(),
                healthy_interval: new_histogram(),
                phase: new_histogram(),
                total: new_histogram(),
            }),
        });
        let runtime = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name(THREAD_NAME)
                .enable_all()
                .build()
        }
        .context("building the sink's runtime")?;
        let (stop, stopped) = watch::channel(false);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                runtime.block_on(async move {
                    for (route, listener) in listeners {
                        tokio::spawn(serve(
                            thread_shared.clone(),
                            route,
                            listener,
                            stopped.clone(),
                        ));
                    }
                    let mut stopped = stopped;
                    let _ = stopped.wait_for(|s| *s).await;
                });
                // Dropping the runtime here ends every connection and hung request.
            })
            .context("starting the sink thread")?;
        Ok(Sink {
            shared,
            addrs,
            stop,
            thread: Some(thread),
        })
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub fn addr(&self, endpoint: usize) -> SocketAddr {
        self.addrs[endpoint]
    }

    /// The URL the dispatcher should post endpoint `endpoint`'s deliveries to.
    pub fn url(&self, endpoint: usize) -> String {
        format!(
            "http://{}/webhooks/{}",
            self.addrs[endpoint], self.shared.receivers[endpoint].id
        )
    }

    pub fn endpoint_id(&self, endpoint: usize) -> &str {
        &self.shared.receivers[endpoint].id
    }

    /// Start the fault clock (once; later calls are ignored).
    pub fn set_epoch(&self, epoch: Instant) {
        let _ = self.shared.epoch.set(epoch);
    }

    /// Turn fault injection on or off (off for the ceiling measurement).
    pub fn set_faults(&self, on: bool) {
        self.shared.faults_on.store(on, Ordering::Relaxed);
    }

    /// Account from now on into `ledger`.
    pub fn set_ledger(&self, ledger: Arc<Ledger>) {
        *self
            .shared
            .ledger
            .write()
            .unwrap_or_else(|e| e.into_inner()) = ledger;
    }

    pub fn ledger(&self) -> Arc<Ledger> {
        self.shared
            .ledger
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every receiver's counters.
    pub fn counts(&self) -> Vec<Counts> {
        self.shared
            .receivers
            .iter()
            .map(|r| r.counters.snapshot())
            .collect()
    }

    /// Requests that reached a shared listener for no receiver of this sink.
    pub fn misrouted(&self) -> u64 {
        self.shared.misrouted.load(Ordering::Relaxed)
    }

    /// Ages recorded since the last call (for time series).
    pub fn take_interval_ages(&self) -> Histogram<u64> {
        std::mem::replace(&mut lock(&self.shared.ages).interval, new_histogram())
    }

    /// The same at healthy receivers only ([`SinkEndpoint::healthy`]).
    pub fn take_healthy_interval_ages(&self) -> Histogram<u64> {
        std::mem::replace(
            &mut lock(&self.shared.ages).healthy_interval,
            new_histogram(),
        )
    }

    /// Ages recorded since the last call (for per-phase figures); each
    /// receiver's own phase ages start again too.
    pub fn take_phase_ages(&self) -> Histogram<u64> {
        for r in &self.shared.receivers {
            *lock(&r.phase_ages) = new_endpoint_histogram();
        }
        std::mem::replace(&mut lock(&self.shared.ages).phase, new_histogram())
    }

    /// Ages of receiver `endpoint` since the last [`Sink::take_phase_ages`].
    pub fn endpoint_phase_ages(&self, endpoint: usize) -> Histogram<u64> {
        lock(&self.shared.receivers[endpoint].phase_ages).clone()
    }

    /// Request-seconds receiver `endpoint` has spent on requests so far
    /// (requests in progress count up to now). Its difference over a
    /// window, divided by the window, is the mean number of requests in
    /// progress there.
    pub fn busy_seconds(&self, endpoint: usize) -> f64 {
        let mut b = lock(&self.shared.receivers[endpoint].busy);
        b.advance(Instant::now());
        b.total_s
    }

    /// Ages over the whole run.
    pub fn total_ages(&self) -> Histogram<u64> {
        lock(&self.shared.ages).total.clone()
    }

    /// One receiver's ages over the whole run.
    pub fn endpoint_ages(&self, endpoint: usize) -> Histogram<u64> {
        lock(&self.shared.receivers[endpoint].ages).clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accept connections for `route`, closing and reopening the listener while
/// a `refuse` fault of its own receiver is active.
async fn serve(
    shared: Arc<Shared>,
    route: Route,
    listener: std::net::TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let Ok(listener) = TcpListener::from_std(listener) else {
        eprintln!("sink: cannot register the listener on {addr}");
        return;
    };
    let mut listener = Some(listener);
    let own = match route {
        Route::Own(index) => Some(&shared.receivers[index]),
        Route::ByPath => None,
    };
    let faults: &[Fault] = own.map_or(&[], |r| &r.faults);
    let can_refuse = faults.iter().any(|f| f.kind == FaultKind::Refuse);
    // An RST rather than an orderly close, as a crashed receiver gives.
    let hard_close = faults
        .iter()
        .any(|f| matches!(f.kind, FaultKind::Reset | FaultKind::Refuse));
    loop {
        if can_refuse {
            let down = shared
                .fault_clock()
                .is_some_and(|t| faults::refusing(faults, t));
            match (down, listener.is_some()) {
                (true, true) => listener = None,
                // Another process may hold the port for a moment: retry next poll.
                (false, false) => listener = TcpListener::bind(addr).await.ok(),
                _ => {}
            }
        }
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = accept(listener.as_ref()) => match accepted {
                Ok(stream) => {
                    if let Some(r) = own {
                        r.counters.connections.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = stream.set_nodelay(true);
                    if hard_close {
                        let _ = stream.set_zero_linger();
                    }
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), route, req));
                        // A client closing its connection is not news.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Out of file descriptors and the like: back off, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = tokio::time::sleep(REFUSE_POLL), if can_refuse => {}
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// The parts of the envelope a receiver checks.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    webhook_id: Cow<'a, str>,
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn handle(
    shared: Arc<Shared>,
    route: Route,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ResetConnection> {
    let Some(index) = shared.route(route, req.uri().path()) else {
        shared.misrouted.fetch_add(1, Ordering::Relaxed);
        return Ok(answer(StatusCode::NOT_FOUND, "no such receiver\n"));
    };
    let receiver = &shared.receivers[index];
    let _in_progress = InProgress::start(&receiver.busy);
    let c = &receiver.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let clock = shared.fault_clock();
    if clock.is_some_and(|t| faults::refusing(&receiver.faults, t)) {
        c.fault(FaultKind::Refuse);
        return Err(ResetConnection);
    }

    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            c.bad_request.fetch_add(1, Ordering::Relaxed);
            return Ok(answer(StatusCode::BAD_REQUEST, "unreadable body\n"));
        }
    };
    c.body_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    let now = now_us();

    // Authenticity first: a forged request is refused whatever faults say.
    let id = match Signed::from_headers(&parts.headers) {
        Ok(signed) => {
            if let Some(v) = &receiver.verifier {
                if v.verify(&signed, &body, now.div_euclid(1_000_000)).is_err() {
                    c.bad_signature.fetch_add(1, Ordering::Relaxed);
                    return Ok(answer(StatusCode::UNAUTHORIZED, "bad signature\n"));
                }
            }
            DeliveryId::parse(signed.id)
        }
        Err(_) if receiver.verifier.is_some() => {
            c.bad_signature.fetch_add(1, Ordering::Relaxed);
            return Ok(answer(StatusCode::UNAUTHORIZED, "not signed\n"));
        }
        Err(_) => parts
            .headers
            .get("x-webhook-delivery-id")
            .and_then(|v| v.to_str().ok())
            .and_then(DeliveryId::parse),
    };
    let Some(id) = id else {
        c.bad_request.fetch_add(1, Ordering::Relaxed);
        return Ok(answer(StatusCode::BAD_REQUEST, "no delivery id\n"));
    };
    let age_us = match envelope_age(&body, &parts.headers, &receiver.id, now) {
        Some(age) => age,
        None => {
            c.bad_request.fetch_add(1, Ordering::Relaxed);
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                "not a webhook envelope for this endpoint\n",
            ));
        }
    };

    let decision = match clock {
        Some(t) => faults::decide(&receiver.faults, t, rand::random::<f64>),
        None => faults::Decision {
            action: Action::Accept,
            delay: Duration::ZERO,
            fault: None,
            delayed: false,
        },
    };
    if decision.delayed {
        c.fault(FaultKind::Latency);
        tokio::time::sleep(decision.delay).await;
    }
    if let Some(kind) = decision.fault {
        c.fault(kind);
    }
    match decision.action {
        Action::Accept => {
            let receipt = shared
                .ledger
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .accepted(id, index);
            c.accepted.fetch_add(1, Ordering::Relaxed);
            match receipt {
                Receipt::Duplicate => {
                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Receipt::Unexpected => {
                    c.unexpected.fetch_add(1, Ordering::Relaxed);
                    shared.record_age(receiver, age_us);
                }
                Receipt::First | Receipt::Overflow => shared.record_age(receiver, age_us),
            }
            Ok(answer(StatusCode::OK, "{\"received\":true}"))
        }
        Action::Answer {
            status,
            retry_after_secs,
        } => {
            let mut r = answer(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "{\"error\":\"injected fault\"}",
            );
            if let Some(secs) = retry_after_secs {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Ok(r)
        }
        Action::Hang => {
            // Held until the client gives up (hyper then drops this future)
            // or the sink stops; the bound keeps a forgotten hang finite.
            tokio::time::sleep(faults::MAX_HANG).await;
            Ok(answer(StatusCode::SERVICE_UNAVAILABLE, "hung\n"))
        }
        Action::Reset => Err(ResetConnection),
    }
}

/// The end-to-end age of a delivery in microseconds, or `None` when the
/// body is not an envelope for this endpoint.
fn envelope_age(
    body: &[u8],
    headers: &http::HeaderMap,
    endpoint: &str,
    now_us: i64,
) -> Option<u64> {
    let env: Envelope<'_> = serde_json::from_slice(body).ok()?;
    if env.webhook_id != endpoint {
        return None;
    }
    if let Some(h) = headers.get("x-webhook-event") {
        if h.as_bytes() != env.event.as_bytes() {
            return None;
        }
    }
    let sent = chrono::DateTime::parse_from_rfc3339(&env.timestamp).ok()?;
    let sent_us = sent.timestamp_micros();
    // Clocks are the same on one machine; a negative age can only be a
    // timestamp from the future, which counts as zero.
    Some(u64::try_from(now_us - sent_us).unwrap_or(0))
}
