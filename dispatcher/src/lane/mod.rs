//! One endpoint's lane: its queue, rate limit, concurrency limit, circuit
//! breaker and retries — everything that makes an endpoint an isolated,
//! well-behaved consumer of its own deliveries.
//!
//! Every endpoint has its own lane task, so a slow, throttled or dead
//! endpoint only ever waits on itself. Nothing here blocks the source: jobs
//! are offered with `try_send`, and a full queue sends the delivery to a
//! retry topic instead (see [`crate::park`]). A delivery leaves the lane
//! *final* for its source record — delivered, dead-lettered, or durably
//! parked — and only then releases its share of the record's [`Ticket`].
//!
//! The order of checks before a send: paused or disabled (park or
//! dead-letter), not yet due (wait), already delivered (drop), in-flight
//! limit and rate limit (wait here), circuit breaker (park while open).

mod breaker;
mod concurrency;
mod retry;

pub use breaker::{BreakerConfig, State as BreakerState};
pub use concurrency::Concurrency;
pub use retry::{RetryConfig, MAX_RETRY_AFTER};

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::time::DelayQueue;
use transports::{
    model::format_rfc3339_ms, BoxFuture, Delivery, DeliveryId, Event, Outcome, Transport,
};

use crate::dlq::{Attempt, DeadLetter, DeadLetters};
use crate::metrics::EndpointMetrics;
use crate::offsets::Ticket;
use crate::park::{Parker, RetryState};
use breaker::{Admit, Breaker};

/// How long the source waits for a place in a full lane queue before it
/// takes the endpoint for slower than the rest and parks its deliveries.
pub const CONGESTION_WAIT: Duration = Duration::from_millis(250);

/// Longest wait of a delivery parked again and again without an attempt.
const MAX_IDLE_PARK: Duration = Duration::from_secs(600);
use concurrency::Signal;

/// `rate_limit:` of an endpoint: a global limit, shared out over replicas.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Recently completed delivery ids, shared by all lanes: a re-read after a
/// restart or rebalance does not send again what this replica delivered.
pub type Dedup = moka::sync::Cache<DeliveryId, ()>;

/// One event for one endpoint; `parked` is set when it comes back from a
/// retry topic with its delivery id and history.
pub struct Job {
    pub event: Arc<Event>,
    pub ticket: Arc<Ticket>,
    pub parked: Option<Box<(DeliveryId, RetryState)>>,
}

/// Pause and disable switches, shared with the admin API.
#[derive(Default)]
pub struct Control {
    paused: AtomicBool,
    disabled: AtomicBool,
    changed: Notify,
}

impl Control {
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }
    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }
    /// Pause: deliveries are parked until resumed.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
        self.changed.notify_one();
    }
    /// Resume a paused endpoint, and re-enable one that a 410 disabled.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.disabled.store(false, Ordering::Release);
        self.changed.notify_one();
    }
    fn disable(&self) {
        self.disabled.store(true, Ordering::Release);
    }
}

/// The router's and the parked-record reader's handle on a lane.
#[derive(Clone)]
pub struct LaneHandle {
    pub endpoint_id: Arc<str>,
    pub control: Arc<Control>,
    fresh: mpsc::Sender<Job>,
    returned: mpsc::Sender<Job>,
    queue_depth: prometheus::IntGauge,
    /// Set when the queue stayed full for a whole [`CONGESTION_WAIT`].
    congested: Arc<AtomicBool>,
    /// For deliveries the source parks or dead-letters on the lane's behalf.
    pub parked: prometheus::IntCounter,
    pub dead_lettered: prometheus::IntCounter,
}

impl LaneHandle {
    /// Queue a fresh job. A full queue usually only means the endpoint is
    /// busy like every other one (a backlog draining): then this waits, up
    /// to [`CONGESTION_WAIT`], for a place, which is back-pressure on the
    /// source. If no place frees up in that time the endpoint is slower than
    /// the rest: the lane is marked congested and the job is given back to
    /// be parked, and so is every further one until the queue has drained to
    /// half, so one slow endpoint never holds the source for more than that.
    pub async fn offer(&self, job: Job) -> Result<(), Job> {
        let job = match self.fresh.try_send(job) {
            Ok(()) => {
                self.queue_depth.inc();
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(job)) => return Err(job),
            Err(mpsc::error::TrySendError::Full(job)) => job,
        };
        if self.congested.load(Ordering::Acquire) {
            if self.fresh.capacity() * 2 < self.fresh.max_capacity() {
                return Err(job);
            }
            self.congested.store(false, Ordering::Release);
        }
        match tokio::time::timeout(CONGESTION_WAIT, self.fresh.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(job);
                self.queue_depth.inc();
                Ok(())
            }
            Ok(Err(_)) => Err(job),
            Err(_) => {
                tracing::debug!(endpoint = %self.endpoint_id, "lane congested; parking its new deliveries");
                self.congested.store(true, Ordering::Release);
                Err(job)
            }
        }
    }

    /// Hand back a parked job that is due; `Err` when the lane cannot take
    /// it now (the caller parks it again).
    pub fn give_back(&self, job: Job) -> Result<(), Job> {
        self.returned.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
        })
    }
}

/// Everything a lane is configured with.
pub struct LaneSettings {
    pub endpoint_id: Arc<str>,
    pub transport: Arc<dyn Transport>,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub max_in_flight: usize,
    pub adaptive_concurrency: bool,
    pub rate_limit: Option<RateLimitConfig>,
    pub queue_capacity: usize,
    /// Waits up to this long are kept in memory; longer ones are parked.
    pub in_memory_max: Duration,
    /// How long a paused endpoint's deliveries are parked before they look again.
    pub paused_recheck: Duration,
    pub paused: bool,
}

/// Shared services a lane uses.
pub struct LaneDeps {
    pub parker: Arc<Parker>,
    pub dead_letters: Arc<DeadLetters>,
    pub dedup: Dedup,
    /// This replica's share of every rate limit.
    pub share: watch::Receiver<f64>,
    pub metrics: EndpointMetrics,
}

/// A delivery between attempts.
struct Item {
    delivery: Delivery,
    ticket: Arc<Ticket>,
    state: RetryState,
}

/// A finished send, to act on. Parking and dead-letter work finish with
/// `None`: nothing more to do.
struct Sent {
    item: Item,
    outcome: Outcome,
    took: Duration,
}

type Done = Option<Sent>;

struct Lane {
    s: LaneSettings,
    d: LaneDeps,
    control: Arc<Control>,
    breaker: Breaker,
    concurrency: Concurrency,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Sends in flight (parking and dead-letter writes are not sends).
    sends: usize,
    /// Deliveries ready to go: waits that ended and parked ones handed back.
    ready: VecDeque<Item>,
    /// Deliveries waiting in memory for their next attempt.
    waiting: DelayQueue<Item>,
    /// Until when a rate limit holds sends back.
    blocked_until: Option<tokio::time::Instant>,
    picks: u64,
}

/// Start a lane task; it ends once both queues are closed and drained.
pub fn spawn(settings: LaneSettings, deps: LaneDeps) -> (LaneHandle, tokio::task::JoinHandle<()>) {
    let (fresh_tx, fresh_rx) = mpsc::channel(settings.queue_capacity.max(1));
    let (returned_tx, returned_rx) = mpsc::channel(settings.queue_capacity.max(1));
    let control = Arc::new(Control::default());
    if settings.paused {
        control.paused.store(true, Ordering::Release);
    }
    let handle = LaneHandle {
        endpoint_id: settings.endpoint_id.clone(),
        control: control.clone(),
        fresh: fresh_tx,
        returned: returned_tx,
        queue_depth: deps.metrics.queue_depth.clone(),
        congested: Arc::new(AtomicBool::new(false)),
        parked: deps.metrics.parked.clone(),
        dead_lettered: deps.metrics.dead_lettered.clone(),
    };
    let share = *deps.share.borrow();
    let lane = Lane {
        breaker: Breaker::new(settings.breaker.clone(), Instant::now()),
        concurrency: Concurrency::new(settings.max_in_flight, settings.adaptive_concurrency),
        limiter: settings.rate_limit.as_ref().map(|r| limiter(r, share)),
        s: settings,
        d: deps,
        control,
        sends: 0,
        ready: VecDeque::new(),
        waiting: DelayQueue::new(),
        blocked_until: None,
        picks: 0,
    };
    lane.d
        .metrics
        .concurrency_limit
        .set(lane.concurrency.limit() as i64);
    lane.d.metrics.paused.set(lane.control.paused() as i64);
    (handle, tokio::spawn(lane.run(fresh_rx, returned_rx)))
}

/// A limiter for this replica's share of `config`.
fn limiter(config: &RateLimitConfig, share: f64) -> DefaultDirectRateLimiter {
    let rate = (config.per_second * share).max(0.001);
    let burst = config
        .burst
        .unwrap_or(config.per_second.ceil().max(1.0) as u32) as f64
        * share;
    let burst = NonZeroU32::new(burst.floor().max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct(quota)
}

impl Lane {
    async fn run(mut self, mut fresh: mpsc::Receiver<Job>, mut returned: mpsc::Receiver<Job>) {
        let mut work: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        let (mut fresh_open, mut returned_open, mut share_open) = (true, true, true);
        let control = self.control.clone();
        loop {
            self.pump(&mut fresh, &mut work);
            if !fresh_open
                && !returned_open
                && work.is_empty()
                && self.waiting.is_empty()
                && self.ready.is_empty()
            {
                break;
            }
            let can_take = self.ready.is_empty() && self.blocked_until.is_none() && self.has_room();
            let blocked = self.blocked_until;
            tokio::select! {
                biased;
                _ = control.changed.notified() => {
                    self.d.metrics.paused.set(self.control.paused() as i64);
                    self.d.metrics.disabled.set(self.control.disabled() as i64);
                }
                Some(done) = work.next(), if !work.is_empty() => self.finish(done, &mut work),
                Some(expired) = self.waiting.next(), if !self.waiting.is_empty() => {
                    self.ready.push_back(expired.into_inner());
                }
                _ = tokio::time::sleep_until(blocked.unwrap_or_else(tokio::time::Instant::now)), if blocked.is_some() => {
                    self.blocked_until = None;
                }
                // Bounded like the fresh queue: when `ready` is full, handed-
                // back deliveries stay in the channel, and once that is full
                // too the source parks them again.
                job = returned.recv(), if returned_open && self.ready.len() < self.s.queue_capacity => match job {
                    Some(job) => {
                        let item = self.item(job);
                        self.ready.push_back(item);
                    }
                    None => returned_open = false,
                },
                job = fresh.recv(), if fresh_open && can_take => match job {
                    Some(job) => {
                        self.d.metrics.queue_depth.dec();
                        let item = self.item(job);
                        self.ready.push_back(item);
                    }
                    None => fresh_open = false,
                },
                changed = self.d.share.changed(), if share_open => match changed {
                    Ok(()) => {
                        let share = *self.d.share.borrow_and_update();
                        if let Some(r) = &self.s.rate_limit {
                            self.limiter = Some(limiter(r, share));
                        }
                    }
                    Err(_) => share_open = false,
                },
            }
        }
    }

    fn item(&self, job: Job) -> Item {
        match job.parked {
            Some(parked) => {
                let (id, state) = *parked;
                let mut delivery = Delivery::new(job.event, self.s.endpoint_id.clone());
                delivery.id = id;
                delivery.attempt = state.attempts + 1;
                Item {
                    delivery,
                    ticket: job.ticket,
                    state,
                }
            }
            None => Item {
                delivery: Delivery::new(job.event, self.s.endpoint_id.clone()),
                ticket: job.ticket,
                state: RetryState::default(),
            },
        }
    }

    fn has_room(&self) -> bool {
        self.sends < self.concurrency.limit()
    }

    /// The next delivery to consider. Retries and fresh deliveries take
    /// turns, fresh ones three times out of four, so a wave of old retries
    /// cannot starve new events (nor the reverse).
    fn next(&mut self, fresh: &mut mpsc::Receiver<Job>) -> Option<Item> {
        self.picks += 1;
        let prefer_ready = self.picks % 4 == 0;
        if prefer_ready {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
        }
        // Take a fresh one only when it can be sent now: one taken and put
        // back would leave the fresh queue looking roomier than it is, and
        // the congestion check would never see it full.
        let fresh_job = if self.has_room() {
            fresh.try_recv().ok()
        } else {
            None
        };
        match fresh_job.ok_or(()) {
            Ok(job) => {
                self.d.metrics.queue_depth.dec();
                Some(self.item(job))
            }
            Err(_) => self.ready.pop_front(),
        }
    }

    /// Start every delivery that may start now.
    fn pump(
        &mut self,
        fresh: &mut mpsc::Receiver<Job>,
        work: &mut FuturesUnordered<BoxFuture<'static, Done>>,
    ) {
        while self.blocked_until.is_none() {
            let Some(mut item) = self.next(fresh) else {
                return;
            };
            let now_ms = chrono::Utc::now().timestamp_millis();

            if self.control.disabled() {
                work.push(self.dead_letter(
                    item,
                    "endpoint_disabled",
                    "the endpoint answered 410 Gone and is disabled".into(),
                ));
                continue;
            }
            if self.control.paused() {
                let base = self.s.paused_recheck;
                work.push(self.park_idle(item, base, "paused", now_ms));
                continue;
            }
            if item.state.not_before_ms > now_ms {
                // Came back from the longest tier before its time.
                let wait = Duration::from_millis((item.state.not_before_ms - now_ms) as u64);
                if wait <= self.s.in_memory_max {
                    self.waiting.insert(item, wait);
                } else {
                    work.push(self.park(item, wait, "not_due"));
                }
                continue;
            }
            if self.d.dedup.contains_key(&item.delivery.id) {
                self.d.metrics.deduplicated.inc();
                item.ticket.finish_one();
                continue;
            }
            // An open breaker parks before anything else is spent on the
            // delivery (a rate-limit token, an in-flight place).
            if let Admit::No(wait) = self.breaker.peek(Instant::now()) {
                work.push(self.park_idle(item, wait, "breaker_open", now_ms));
                continue;
            }
            if !self.has_room() {
                self.ready.push_front(item);
                return;
            }
            if let Some(limiter) = &self.limiter {
                if let Err(not_until) = limiter.check() {
                    let wait = not_until.wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    ));
                    self.d.metrics.rate_limit_waits.inc();
                    self.blocked_until = Some(tokio::time::Instant::now() + wait);
                    self.ready.push_front(item);
                    return;
                }
            }
            let before = self.breaker.state().gauge();
            let admit = self.breaker.admit(Instant::now());
            if self.breaker.state().gauge() != before {
                self.breaker_changed(self.breaker.state());
            }
            if let Admit::No(wait) = admit {
                work.push(self.park_idle(item, wait, "breaker_open", now_ms));
                continue;
            }
            item.state.idle_parks = 0;
            item.state.first_attempt_ms.get_or_insert(now_ms);
            item.delivery.attempt = item.state.attempts + 1;
            self.sends += 1;
            self.d.metrics.in_flight.inc();
            let transport = self.s.transport.clone();
            work.push(Box::pin(async move {
                let started = Instant::now();
                let outcome = transport.send(&item.delivery).await;
                Some(Sent {
                    item,
                    outcome,
                    took: started.elapsed(),
                })
            }));
        }
    }

    /// Act on a finished piece of work.
    fn finish(&mut self, done: Done, work: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        let Some(Sent {
            mut item,
            outcome,
            took,
        }) = done
        else {
            return;
        };
        let in_flight_before = self.sends;
        self.sends -= 1;
        self.d.metrics.in_flight.dec();
        self.d.metrics.attempt_duration.observe(took.as_secs_f64());
        let now = Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis();
        item.state.attempts += 1;

        let (healthy, signal) = match &outcome {
            Outcome::Delivered { .. } => (true, Signal::Ok),
            Outcome::Retry { .. } => (false, Signal::Overload),
            // The endpoint answered, and clearly: not a sign of ill health.
            Outcome::Permanent { .. } | Outcome::Rejected { .. } => (true, Signal::Neutral),
            // It is up and asking for a pause: slow down, but it is not failing.
            Outcome::Throttled { .. } => (true, Signal::Overload),
        };
        if let Some(state) = self.breaker.record(healthy, now) {
            self.breaker_changed(state);
        }
        self.concurrency.record(signal, took, in_flight_before, now);
        self.d
            .metrics
            .concurrency_limit
            .set(self.concurrency.limit() as i64);

        match outcome {
            Outcome::Delivered { .. } => {
                self.d.metrics.attempt_delivered.inc();
                self.d.metrics.delivered.inc();
                let age_ms = now_ms - item.delivery.event.timestamp_ms();
                self.d
                    .metrics
                    .event_age
                    .observe(age_ms.max(0) as f64 / 1000.0);
                self.d.dedup.insert(item.delivery.id, ());
                item.ticket.finish_one();
            }
            Outcome::Retry {
                status,
                reason,
                retry_after,
            } => {
                self.d.metrics.attempt_retry.inc();
                item.state
                    .push(attempt(now_ms, took, status, "retry", &reason));
                let age = Duration::from_millis(
                    (now_ms - item.state.first_attempt_ms.unwrap_or(now_ms)).max(0) as u64,
                );
                let next = self.s.retry.next_wait(item.state.attempts, retry_after);
                match next {
                    _ if age >= self.s.retry.max_age => {
                        work.push(self.dead_letter(item, "expired", reason));
                    }
                    None => {
                        tracing::warn!(
                            endpoint = %self.s.endpoint_id, delivery_id = %item.delivery.id,
                            attempts = item.state.attempts, error = %reason, "retries exhausted; dead-lettering"
                        );
                        work.push(self.dead_letter(item, "retries_exhausted", reason));
                    }
                    Some(wait) => {
                        item.state.not_before_ms = now_ms + wait.as_millis() as i64;
                        // In-memory waits are bounded: beyond a few per
                        // in-flight place they go to the retry topic too.
                        if wait <= self.s.in_memory_max
                            && self.waiting.len() < self.s.max_in_flight * 4
                        {
                            self.d.metrics.retried.inc();
                            self.waiting.insert(item, wait);
                        } else {
                            work.push(self.park(item, wait, "retry"));
                        }
                    }
                }
            }
            Outcome::Throttled {
                status,
                reason,
                retry_after,
            } => {
                // Not a failed attempt: the receiver only asked us to wait.
                self.d.metrics.attempt_retry.inc();
                item.state.attempts -= 1;
                item.state
                    .push(attempt(now_ms, took, status, "throttled", &reason));
                let wait = retry_after.min(MAX_RETRY_AFTER);
                let first = item.state.first_attempt_ms.unwrap_or(now_ms);
                if Duration::from_millis((now_ms - first).max(0) as u64) >= self.s.retry.max_age {
                    work.push(self.dead_letter(item, "expired", reason));
                    return;
                }
                item.state.not_before_ms = now_ms + wait.as_millis() as i64;
                if wait <= self.s.in_memory_max && self.waiting.len() < self.s.max_in_flight * 4 {
                    self.d.metrics.retried.inc();
                    self.waiting.insert(item, wait);
                } else {
                    work.push(self.park(item, wait, "throttled"));
                }
            }
            Outcome::Rejected {
                status,
                reason,
                sent,
            } => {
                self.d.metrics.attempt_permanent.inc();
                item.state
                    .push(attempt(now_ms, took, status, "rejected", &reason));
                tracing::warn!(
                    endpoint = %self.s.endpoint_id, delivery_id = %item.delivery.id, error = %reason,
                    "payload rejected by the receiver; dead-lettering with what was sent"
                );
                work.push(self.dead_letter_with(item, "rejected_payload", reason, Some(sent)));
            }
            Outcome::Permanent {
                status,
                reason,
                disable_endpoint,
            } => {
                self.d.metrics.attempt_permanent.inc();
                item.state
                    .push(attempt(now_ms, took, status, "permanent", &reason));
                if disable_endpoint {
                    if !self.control.disabled() {
                        tracing::error!(
                            endpoint = %self.s.endpoint_id, error = %reason,
                            "ENDPOINT DISABLED: it said it wants no more deliveries (HTTP 410, or Slack's channel_not_found, channel_is_archived, no_service, 403); its deliveries are dead-lettered until it is resumed (POST /endpoints/{}/resume)",
                            self.s.endpoint_id
                        );
                    }
                    self.control.disable();
                    self.d.metrics.disabled.set(1);
                    work.push(self.dead_letter(item, "endpoint_gone", reason));
                } else {
                    tracing::warn!(
                        endpoint = %self.s.endpoint_id, delivery_id = %item.delivery.id, error = %reason,
                        "permanent failure; dead-lettering"
                    );
                    work.push(self.dead_letter(item, "permanent_failure", reason));
                }
            }
        }
    }

    /// Park a delivery that was not attempted (breaker open, endpoint
    /// paused): each time in a row it waits twice as long, up to
    /// [`MAX_IDLE_PARK`], and it expires after `retry.max_age` like any other.
    fn park_idle(
        &self,
        mut item: Item,
        base: Duration,
        reason: &'static str,
        now_ms: i64,
    ) -> BoxFuture<'static, Done> {
        let first = *item.state.first_attempt_ms.get_or_insert(now_ms);
        if Duration::from_millis((now_ms - first).max(0) as u64) >= self.s.retry.max_age {
            return self.dead_letter(
                item,
                "expired",
                format!("still undelivered after retry.max_age ({reason})"),
            );
        }
        let grown = base
            .saturating_mul(1 << item.state.idle_parks.min(16))
            .min(MAX_IDLE_PARK);
        item.state.idle_parks = item.state.idle_parks.saturating_add(1);
        self.park(item, grown.max(base.min(MAX_IDLE_PARK)), reason)
    }

    fn park(&self, item: Item, wait: Duration, reason: &'static str) -> BoxFuture<'static, Done> {
        let parker = self.d.parker.clone();
        let counter = self.d.metrics.parked.clone();
        let dead_letters = self.d.dead_letters.clone();
        let dead_lettered = self.d.metrics.dead_lettered.clone();
        Box::pin(async move {
            let mut state = item.state;
            let now_ms = chrono::Utc::now().timestamp_millis();
            state.not_before_ms = state.not_before_ms.max(now_ms + wait.as_millis() as i64);
            match parker.park(&item.delivery, &state, wait, reason).await {
                Ok(()) => counter.inc(),
                Err(e) => {
                    // The retry topic refuses it as too large: dead-letter
                    // rather than lose it.
                    tracing::error!(delivery_id = %item.delivery.id, error = %e, "cannot park; dead-lettering");
                    let error = format!("the retry topic refused the record: {e}");
                    let letter = DeadLetter::failed_delivery(
                        &item.delivery,
                        "unparkable",
                        &error,
                        &state.history,
                        None,
                    );
                    dead_letters.write(letter).await;
                    dead_lettered.inc();
                }
            }
            item.ticket.finish_one();
            None
        })
    }

    fn dead_letter(
        &self,
        item: Item,
        code: &'static str,
        error: String,
    ) -> BoxFuture<'static, Done> {
        self.dead_letter_with(item, code, error, None)
    }

    /// Dead-letter, keeping `sent` (what a transport rendered) when given.
    fn dead_letter_with(
        &self,
        item: Item,
        code: &'static str,
        error: String,
        sent: Option<bytes::Bytes>,
    ) -> BoxFuture<'static, Done> {
        let dead_letters = self.d.dead_letters.clone();
        let counter = self.d.metrics.dead_lettered.clone();
        Box::pin(async move {
            let letter = DeadLetter::failed_delivery(
                &item.delivery,
                code,
                &error,
                &item.state.history,
                sent.as_deref(),
            );
            dead_letters.write(letter).await;
            counter.inc();
            item.ticket.finish_one();
            None
        })
    }

    fn breaker_changed(&mut self, state: BreakerState) {
        self.d.metrics.breaker_state.set(state.gauge());
        self.d
            .metrics
            .breaker_transitions
            .with_label_values(&[&self.s.endpoint_id, state.name()])
            .inc();
        match state {
            BreakerState::Open { .. } => tracing::warn!(
                endpoint = %self.s.endpoint_id, open_for_s = self.s.breaker.open_for.as_secs_f64(),
                "circuit breaker opened: deliveries are parked until it half-opens"
            ),
            _ => {
                tracing::info!(endpoint = %self.s.endpoint_id, state = state.name(), "circuit breaker changed state")
            }
        }
    }
}

fn attempt(
    at_ms: i64,
    took: Duration,
    status: Option<u16>,
    result: &'static str,
    error: &str,
) -> Attempt {
    Attempt {
        at: format_rfc3339_ms(at_ms),
        duration_ms: took.as_millis() as u64,
        status,
        result: result.into(),
        error: Some(error.to_owned()),
    }
}
