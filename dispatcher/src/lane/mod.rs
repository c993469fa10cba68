//! One endpoint's lane: its inbox, rate limit, concurrency limit, circuit
//! breaker and retries — everything that makes an endpoint an isolated,
//! well-behaved consumer of its own deliveries.
//!
//! Every endpoint has its own lane, made at its first work (see
//! [`LaneHandle`]: until then it is its settings and switches) and run by a
//! task of its own while it has work (see [`Runner`]: an idle lane holds no
//! task), so a slow, throttled or dead endpoint only ever waits on itself.
//! Nothing upstream waits on a lane:
//! its [`Inbox`] refuses what it has no room for, and the refused work stays
//! in Kafka (fresh deliveries are spilled by the source, see
//! [`crate::spill`]; returned ones stay under their endpoint's hold, see
//! [`crate::offsets`]). A lane that cannot keep up therefore turns into a
//! backlog in Kafka, drained at the lane's own pace, and never into a wait
//! for anyone else.
//!
//! A delivery leaves the lane *final* for its source record — delivered,
//! dead-lettered, or durably parked — and only then releases its share of
//! the record's [`Ticket`]. Deliveries the lane gives back without a send
//! are dropped: their tickets put them back where they came from.
//!
//! The order of checks before a send: disabled (dead-letter), expired
//! (dead-letter), not yet due (wait), already delivered (drop), the rate
//! limit (before anything leaves the queue), the in-flight limit, the
//! circuit breaker. While the endpoint is paused or its breaker is open the
//! lane accepts nothing: it asks the source to spill what it has queued,
//! gives returned deliveries back, and parks (once) the retries whose wait
//! ends meanwhile. When it can send again, its backlog comes back by itself.

mod breaker;
mod concurrency;
mod connect;
pub mod dedup;
mod front;
mod handle;
mod inbox;
mod interned;
mod order;
mod retry;
mod runner;

pub use breaker::{BreakerConfig, State as BreakerState};
pub use concurrency::Concurrency;
pub use connect::{Connect, LaneTransport};
pub use dedup::Dedup;
pub use front::Front;
pub use handle::{create, LaneCore, LaneHandle};
pub use inbox::{Evictions, Inbox, Refused, Shares};
pub use interned::Interned;
pub use order::{KeyOrdering, OnExpired, OrderingConfig};
pub use retry::{RetryConfig, MAX_RETRY_AFTER};
pub use runner::{Exit, Runner, Started};

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::time::DelayQueue;
use transports::{
    model::format_rfc3339_ms, BoxFuture, Delivery, DeliveryId, Event, Outcome, Transport,
};

use crate::dlq::{Attempt, DeadLetter, DeadLetters, WriteError};
use crate::metrics::EndpointMetrics;
use crate::offsets::{Budget, HoldIndex, Ticket};
use crate::park::{Parker, RetryState};
use breaker::{Admit, Breaker};
use concurrency::Signal;
use order::{Key, Sequencer, NO_KEY};
use runner::Waker;

/// `rate_limit:` of an endpoint: a global limit, shared out over replicas.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// One event for one endpoint; `parked` is set when it comes back from an
/// internal topic with its delivery id and history.
pub struct Job {
    pub event: Arc<Event>,
    pub ticket: Arc<Ticket>,
    pub parked: Option<Box<(DeliveryId, RetryState)>>,
}

impl Job {
    /// A delivery of a deleted endpoint that a lane can no longer take: to
    /// the dead-letter topic as a delivery (reason `endpoint_deleted`), so
    /// a replay finds it once the endpoint exists again. Its record is
    /// final once the letter is written.
    pub fn dead_letter_deleted(self, endpoint: Arc<str>, dead_letters: &Arc<DeadLetters>) {
        let (id, state) = match self.parked {
            Some(p) => *p,
            None => (
                DeliveryId::derive(&self.event, &endpoint),
                RetryState::default(),
            ),
        };
        let delivery = transports::Delivery {
            event: self.event,
            endpoint_id: endpoint,
            id,
            body: bytes::Bytes::new(),
            attempt: state.attempts + 1,
        };
        let letter = DeadLetter::failed_delivery(
            &delivery,
            "endpoint_deleted",
            "the endpoint was deleted",
            &state.history,
            None,
        );
        let dead_letters = dead_letters.clone();
        let ticket = self.ticket;
        tokio::spawn(async move {
            if dead_letters.write(letter).await.is_ok() {
                ticket.finish_one();
            }
        });
    }
}

/// Pause and disable switches, shared with the admin API.
#[derive(Default)]
pub struct Control {
    paused: AtomicBool,
    disabled: AtomicBool,
    /// Its lane was closed before it was made (shutdown): it is made
    /// closed, if ever (see [`LaneCore::close`]).
    closed: AtomicBool,
    changed: Notify,
    /// Its lane may have no task: a change starts one.
    waker: Waker,
    /// Changes of the endpoint not yet applied by the lane (a channel
    /// would hold a block of slots for every idle endpoint).
    updates: Mutex<Vec<LaneUpdate>>,
}

impl Control {
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }
    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }
    /// Set both switches at once, as the endpoint store says (callers go
    /// through [`LaneCore::set_switches`]).
    fn set(&self, paused: bool, disabled: bool) {
        let before = (self.paused(), self.disabled());
        self.paused.store(paused, Ordering::Release);
        self.disabled.store(disabled, Ordering::Release);
        if before != (paused, disabled) {
            self.changed.notify_one();
            self.waker.wake();
        }
    }
    fn disable(&self) {
        self.disabled.store(true, Ordering::Release);
    }
    /// Hand the lane a change of its endpoint; it applies it at its next
    /// look at its work (callers go through [`LaneCore::update`], which
    /// knows whether the lane was made).
    fn update(&self, update: LaneUpdate) {
        self.pending_updates().push(update);
        self.changed.notify_one();
        self.waker.wake();
    }
    fn pending_updates(&self) -> MutexGuard<'_, Vec<LaneUpdate>> {
        self.updates.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything a lane is configured with.
pub struct LaneSettings {
    pub endpoint_id: Arc<str>,
    pub index: usize,
    pub transport: LaneTransport,
    /// Shared by the lanes whose policies are alike (see [`Interned`]).
    pub retry: Arc<RetryConfig>,
    pub breaker: Arc<BreakerConfig>,
    pub max_in_flight: usize,
    pub adaptive_concurrency: bool,
    /// Boxed: few endpoints have one, and an idle endpoint's settings
    /// must fit their allocation (see `handle.rs`).
    pub rate_limit: Option<Box<RateLimitConfig>>,
    pub queue_capacity: usize,
    pub paused: bool,
    /// Its tenant: whose share of the memory budget its inbox counts in.
    pub tenant: Option<Arc<str>>,
    /// Ordered per key (`ordering:`), or not.
    pub ordering: Option<Arc<KeyOrdering>>,
}

/// What a lane is given besides its settings.
struct LaneDeps {
    pub shared: Arc<LaneShared>,
    /// This replica's share of every rate limit (a receiver of its own:
    /// each lane notices a change by itself).
    pub share: watch::Receiver<f64>,
    pub metrics: EndpointMetrics,
}

/// What every lane uses alike: the shared services and the pipeline's
/// settings, held once for all of them (a replica may have 100,000 lanes).
pub struct LaneShared {
    /// This replica's share of every rate limit; each lane holds a
    /// receiver of its own, cloned from this one.
    pub share: watch::Receiver<f64>,
    pub parker: Arc<Parker>,
    pub dead_letters: Arc<DeadLetters>,
    pub dedup: Dedup,
    /// Sends in flight hold their request body: charged while they run.
    pub budget: Arc<Budget>,
    /// Where the lane asks the source to spill its queue.
    pub evictions: Arc<Evictions>,
    /// How much of the memory budget each lane may queue.
    pub shares: Arc<Shares>,
    /// Where the lane's holds are: a deleted endpoint's lane lives until
    /// they are drained.
    pub holds: Arc<HoldIndex>,
    /// Told the lane's index when its endpoint disables itself (a 410), so
    /// the state is kept in the endpoint store.
    pub disabled: Option<mpsc::UnboundedSender<usize>>,
    /// Told of every task started for the lane (see [`Runner`]).
    pub started: mpsc::UnboundedSender<Started>,
    /// `dispatcher_lanes_made`: lanes alive that were made (see
    /// [`LaneHandle`]).
    pub lanes_made: prometheus::IntGauge,
    /// Waits up to this long are kept in memory; longer ones are parked.
    pub in_memory_max: Duration,
    /// How long a paused endpoint's retries wait in the retry topics before
    /// they look again.
    pub paused_recheck: Duration,
    /// A lane whose oldest fresh delivery is this far behind the lanes'
    /// front (see [`Front`]) does not keep up: what it has queued, and
    /// what follows, is spilled.
    pub spill_after: Duration,
}

/// A change to a running lane, from the endpoints it serves.
pub enum LaneUpdate {
    /// The endpoint changed: its new settings (with the same transport, or
    /// a new one when its connection settings changed; sends in flight
    /// finish on the one they started with).
    Settings(Box<LaneSettings>),
    /// The endpoint was deleted: everything the lane holds or gets back
    /// from Kafka is dead-lettered (`endpoint_deleted`, replayable), and the
    /// lane ends once none of its work is left anywhere.
    Delete,
}

/// A delivery between attempts. Its body is built per send, so a queued or
/// waiting delivery costs a few pointers, not a copy of the event.
struct Item {
    event: Arc<Event>,
    id: DeliveryId,
    ticket: Arc<Ticket>,
    state: RetryState,
    /// Its key on an ordered endpoint (see [`Sequencer`]); [`NO_KEY`] on
    /// any other.
    key: Key,
}

/// A finished send, to act on.
struct Sent {
    item: Item,
    outcome: Outcome,
    took: Duration,
    charged: usize,
}

/// A finished piece of the lane's work.
enum Done {
    Sent(Sent),
    /// A park or dead-letter write ended; when it made its delivery final,
    /// the delivery's key on an ordered endpoint (else [`NO_KEY`]), whose
    /// next delivery may go now.
    Wrote(Key),
}

struct Lane {
    s: LaneSettings,
    d: LaneDeps,
    control: Arc<Control>,
    inbox: Arc<Inbox>,
    breaker: Breaker,
    concurrency: Concurrency,
    /// Boxed: most endpoints have none, and a resting lane should not
    /// carry its 72 bytes.
    limiter: Option<Box<DefaultDirectRateLimiter>>,
    /// Sends in flight.
    sends: usize,
    /// Park and dead-letter writes in flight.
    writes: usize,
    /// In-memory retries whose wait ended.
    ready: VecDeque<Item>,
    /// Deliveries waiting in memory for their next attempt; none while
    /// none waits (an empty queue holds a few kilobytes of timer wheel),
    /// and boxed, so that a resting lane does not carry its 192 bytes.
    waiting: Option<Box<DelayQueue<Item>>>,
    /// Until when a rate limit or a receiver's throttle holds sends back.
    blocked_until: Option<tokio::time::Instant>,
    picks: u64,
    /// Its transport while it has work (see [`LaneTransport`]).
    connection: Option<Arc<dyn Transport>>,
    /// Its endpoint was deleted.
    deleting: bool,
    /// When to look again whether the oldest fresh delivery lags.
    lag_check: Option<tokio::time::Instant>,
    /// An ordered endpoint's keys under way (see [`Sequencer`]).
    order: Option<Box<Sequencer>>,
}

/// Park and dead-letter writes one lane may have in flight: beyond this it
/// takes no more work until some finish, so a dead endpoint's dead letters
/// cannot pile up in memory.
const MAX_WRITES: usize = 64;

/// How often, at least, a lane whose oldest delivery has waited
/// `spill_after` looks again at whether it lags the others (while they
/// wait alike, it does not): a tenth of `spill_after`, not under this.
const LAG_CHECK: Duration = Duration::from_millis(100);

impl Lane {
    /// A lane, with no task yet: its [`Runner`] starts one whenever it has
    /// work, until its inbox is closed and everything it holds is final
    /// (or, for a deleted endpoint, nothing of its work is left). Made by
    /// its handle at its first work (see [`LaneHandle`]).
    fn new(s: LaneSettings, d: LaneDeps, control: Arc<Control>, inbox: Arc<Inbox>) -> Lane {
        let share = *d.share.borrow();
        Lane {
            deleting: false,
            lag_check: None,
            order: s
                .ordering
                .as_ref()
                .map(|o| Box::new(Sequencer::new((**o).clone()))),
            breaker: Breaker::new(s.breaker.clone(), Instant::now()),
            concurrency: Concurrency::new(s.max_in_flight, s.adaptive_concurrency),
            limiter: s.rate_limit.as_ref().map(|r| limiter(r, share)),
            s,
            d,
            control,
            inbox,
            sends: 0,
            writes: 0,
            ready: VecDeque::new(),
            waiting: None,
            blocked_until: None,
            picks: 0,
            connection: None,
        }
    }
}

/// Returned deliveries a lane queues: enough to keep every send busy twice
/// over.
fn returned_cap(max_in_flight: usize) -> usize {
    (max_in_flight * 2).max(16)
}

impl LaneSettings {
    fn circuit_breaker_changed(&self, old: &LaneSettings) -> bool {
        self.breaker != old.breaker
    }
}

/// A limiter for this replica's share of `config`.
fn limiter(config: &RateLimitConfig, share: f64) -> Box<DefaultDirectRateLimiter> {
    let rate = (config.per_second * share).max(0.001);
    let burst = config
        .burst
        .unwrap_or(config.per_second.ceil().max(1.0) as u32) as f64
        * share;
    let burst = NonZeroU32::new(burst.floor().max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    Box::new(RateLimiter::direct(quota))
}

/// Where the next delivery comes from.
enum Pick {
    Ready,
    Inbox { prefer_returned: bool },
}

impl Lane {
    /// Run until the lane has nothing to do ([`Exit::Idle`]: it may end
    /// its task) or is done for good. `woken` is cleared before each look
    /// at the work, so the runner knows whether a wake came after it.
    async fn run_until_idle(&mut self, woken: &AtomicBool) -> Exit {
        let mut work: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        let mut share_open = true;
        let control = self.control.clone();
        let inbox = self.inbox.clone();
        let mut linger = tokio::time::interval(Duration::from_millis(500));
        // The replica's share of the rate limit may have moved while the
        // lane had no task.
        if self.d.share.has_changed().unwrap_or(false) {
            let share = *self.d.share.borrow_and_update();
            if let Some(r) = &self.s.rate_limit {
                self.limiter = Some(limiter(r, share));
            }
        }
        loop {
            woken.store(false, Ordering::SeqCst);
            // Whatever a waker stored before its wake is seen below (see
            // `Runner::wake`).
            std::sync::atomic::fence(Ordering::SeqCst);
            let updates = std::mem::take(&mut *control.pending_updates());
            for update in updates {
                self.update(update);
            }
            let now = Instant::now();
            if inbox.is_closed() {
                self.let_go_held();
            }
            if control.disabled() && self.order.is_some() {
                // What waits is dead-lettered at once, not after its wait.
                self.flush_waiting();
            }
            self.refresh_accepting(now, &mut work);
            self.pump(&mut work);
            self.d
                .metrics
                .queue_depth
                .set((inbox.len() + self.held()) as i64);
            self.blocked_metrics(now);
            self.d.metrics.spilling.set(inbox.is_spilling() as i64);
            self.d.metrics.paused.set(control.paused() as i64);
            self.d.metrics.disabled.set(control.disabled() as i64);
            let idle = inbox.is_empty()
                && work.is_empty()
                && self.waiting_len() == 0
                && self.ready.is_empty()
                && self.held() == 0;
            if idle && inbox.is_closed() {
                return Exit::Done;
            }
            // Nothing to do, and nothing to watch for: no open breaker to
            // come out of (the lane must accept again by itself when it may
            // half-open), no deletion to finish. A pause ends with a resume,
            // and an update comes with a wake.
            let can_rest = inbox.is_accepting()
                || (control.paused() && matches!(self.breaker.peek(now), Admit::Yes));
            if idle && !self.deleting && can_rest {
                // An idle lane keeps no buffers: queues that once held a
                // burst keep its capacity otherwise.
                self.waiting = None;
                self.ready = VecDeque::new();
                self.connection = None;
                inbox.release_buffers();
                return Exit::Idle;
            }
            if idle
                && self.deleting
                && self
                    .d
                    .shared
                    .holds
                    .lanes()
                    .iter()
                    .all(|&l| l != self.s.index)
            {
                // Nothing of a deleted endpoint's work is left here or under
                // a hold: from now on what comes back is refused as dead.
                inbox.close();
                continue;
            }
            let can_take = self.blocked_until.is_none()
                && self.sends < self.concurrency.limit()
                && self.writes < MAX_WRITES;
            let blocked = self.blocked_until;
            // When the breaker may half-open: then the lane accepts again.
            let reopen = match self.breaker.peek(now) {
                Admit::No(wait) => Some(tokio::time::Instant::now() + wait),
                Admit::Yes => None,
            };
            // Whether the oldest fresh delivery lags the other lanes by
            // `spill_after` (see `Front`), and if not yet, when to look
            // again: once it has waited that long, then every
            // `lag_check_every`. The instant is kept across passes, so that
            // other wake-ups do not keep putting the look off.
            let spill_after = self.d.shared.spill_after;
            let too_old = match inbox.oldest_fresh_and_lag() {
                Some(_) if inbox.evict_requested() => None,
                Some((_, lag)) if lag >= spill_after => {
                    tracing::debug!(endpoint = %self.s.endpoint_id, "lane lags the others; spilling its queue");
                    inbox.request_eviction();
                    None
                }
                Some((waited, _)) => {
                    let wait = spill_after
                        .checked_sub(waited)
                        .unwrap_or((spill_after / 10).max(LAG_CHECK));
                    Some(
                        *self
                            .lag_check
                            .get_or_insert(tokio::time::Instant::now() + wait),
                    )
                }
                None => None,
            };
            if too_old.is_none() {
                self.lag_check = None;
            }
            tokio::select! {
                biased;
                // Looked at again at the top of the loop.
                _ = control.changed.notified() => {}
                Some(done) = work.next(), if !work.is_empty() => self.finish(done, &mut work),
                Some(expired) = expired(&mut self.waiting), if self.waiting_len() > 0 => {
                    if let Some(order) = &mut self.order {
                        order.waits.remove(&expired.key());
                    }
                    self.ready.push_back(expired.into_inner());
                }
                _ = sleep_until(blocked), if blocked.is_some() => self.blocked_until = None,
                _ = sleep_until(reopen), if reopen.is_some() => {}
                // Looked at again at the top of the loop.
                _ = sleep_until(too_old), if too_old.is_some() => self.lag_check = None,
                _ = inbox.notified(), if can_take => {}
                // A deleted endpoint's lane looks again for what is left.
                _ = linger.tick(), if self.deleting => {}
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

    fn waiting_len(&self) -> usize {
        self.waiting.as_ref().map_or(0, |w| w.len())
    }

    /// Deliveries of an ordered endpoint held behind their key's head.
    fn held(&self) -> usize {
        self.order.as_ref().map_or(0, |o| o.held())
    }

    /// `dispatcher_endpoint_blocked_keys` and the start of the longest
    /// wait among them (looked for at most once a second: it is a walk
    /// over the keys under way).
    fn blocked_metrics(&mut self, now: Instant) {
        let Some(order) = &mut self.order else {
            return;
        };
        let blocked = order.blocked();
        self.d.metrics.blocked_keys.set(blocked as i64);
        if blocked == 0 {
            self.d.metrics.blocked_since_ms.set(0);
            order.age_check = None;
            order.blocked_seen = 0;
            return;
        }
        // Again when a key was freed (it may have been the oldest), else at
        // most once a second.
        let freed = blocked < order.blocked_seen;
        order.blocked_seen = blocked;
        if !freed && order.age_check.is_some_and(|at| now < at) {
            return;
        }
        order.age_check = Some(now + Duration::from_secs(1));
        if let Some(since) = order.oldest_blocked() {
            let ms = chrono::Utc::now().timestamp_millis()
                - now.saturating_duration_since(since).as_millis() as i64;
            self.d.metrics.blocked_since_ms.set(ms.max(1));
        }
    }

    /// Apply a change of the endpoint.
    fn update(&mut self, update: LaneUpdate) {
        match update {
            LaneUpdate::Delete => {
                tracing::info!(endpoint = %self.s.endpoint_id, "endpoint deleted: dead-lettering what is left of its work");
                self.deleting = true;
                // Retries waiting in memory are dead-lettered now.
                self.flush_waiting();
                self.inbox.mark_deleted();
            }
            LaneUpdate::Settings(new) => {
                let s = &self.s;
                if new.circuit_breaker_changed(s) {
                    self.breaker = Breaker::new(new.breaker.clone(), Instant::now());
                    self.d
                        .metrics
                        .breaker_state
                        .set(self.breaker.state().gauge());
                }
                if new.max_in_flight != s.max_in_flight
                    || new.adaptive_concurrency != s.adaptive_concurrency
                {
                    self.concurrency =
                        Concurrency::new(new.max_in_flight, new.adaptive_concurrency);
                    self.d
                        .metrics
                        .concurrency_limit()
                        .set(self.concurrency.limit() as i64);
                }
                if new.rate_limit != s.rate_limit {
                    let share = *self.d.share.borrow();
                    self.limiter = new.rate_limit.as_ref().map(|r| limiter(r, share));
                    self.blocked_until = None;
                }
                self.inbox
                    .set_caps(new.queue_capacity, returned_cap(new.max_in_flight));
                if new.tenant != s.tenant {
                    self.inbox
                        .set_tenant(self.d.shared.shares.tenant(new.tenant.as_deref()));
                }
                self.reorder(new.ordering.as_deref());
                let (index, id) = (self.s.index, self.s.endpoint_id.clone());
                // Sends in flight finish on the transport they started with.
                self.connection = None;
                self.s = *new;
                // Its identity is the lane's, whatever the update says.
                self.s.index = index;
                self.s.endpoint_id = id;
                tracing::info!(endpoint = %self.s.endpoint_id, "endpoint changed; applied in place");
            }
        }
    }

    /// The endpoint's ordering changed. A new key applies to the
    /// deliveries taken from now on; without one, what waited behind its
    /// key goes on at once.
    fn reorder(&mut self, ordering: Option<&KeyOrdering>) {
        match (&mut self.order, ordering) {
            (Some(order), Some(new)) if order.ordering() != new => order.set_ordering(new.clone()),
            (Some(_), None) => {
                if let Some(order) = self.order.take() {
                    self.ready.extend(order.into_followers());
                }
                self.d.metrics.blocked_keys.set(0);
                self.d.metrics.blocked_since_ms.set(0);
            }
            (None, Some(new)) => self.order = Some(Box::new(Sequencer::new(new.clone()))),
            _ => {}
        }
    }

    /// The lane accepts work while it can send: not paused, breaker not
    /// open. When it stops, what it queued goes back to Kafka.
    fn refresh_accepting(
        &mut self,
        now: Instant,
        work: &mut FuturesUnordered<BoxFuture<'static, Done>>,
    ) {
        // A deleted endpoint's lane takes everything, to dead-letter it.
        let can_send = self.deleting
            || (!self.control.paused() && matches!(self.breaker.peek(now), Admit::Yes));
        let was = self.inbox.is_accepting();
        if can_send == was {
            if !can_send {
                self.park_ready(work);
            }
            return;
        }
        self.inbox.set_accepting(can_send);
        if can_send {
            return;
        }
        // Fresh deliveries go to the spill topic (the source writes them, in
        // order); returned ones are dropped, which puts them back under
        // their holds: nothing is written twice.
        self.inbox.request_eviction();
        drop(self.inbox.take_returned());
        self.park_ready(work);
    }

    /// The inbox is closed (shutdown): an ordered lane lets go of what it
    /// has not started, queued or held (its sends under way end). Its
    /// records are not final, so the partitions' next owner reads them
    /// again, in order; a returned one goes back under its hold. Nothing of
    /// a key may be sent once an earlier one of it was let go, so the inbox
    /// goes too.
    fn let_go_held(&mut self) {
        let Some(order) = &mut self.order else {
            return;
        };
        self.ready.clear();
        self.waiting = None;
        order.waits.clear();
        drop(order.take_all());
        drop(self.inbox.drain_all());
    }

    /// Its endpoint is deleted or disabled: every retry an ordered lane
    /// still has waiting is due now, to be dead-lettered (its waits may be
    /// hours long).
    fn flush_waiting(&mut self) {
        let Some(waiting) = &mut self.waiting else {
            return;
        };
        // An unordered lane's waits are short: they end by themselves.
        if let Some(order) = &mut self.order {
            for at in order.waits.drain() {
                self.ready.push_back(waiting.remove(&at).into_inner());
            }
        }
    }

    /// Retries whose wait ended while the lane cannot send: park them, once.
    /// An ordered lane keeps them: each is its key's head, and what follows
    /// it, in memory or spilled since, must not be sent before it (see
    /// [`Sequencer`]).
    fn park_ready(&mut self, work: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        while self.writes < MAX_WRITES && self.order.is_none() {
            let Some(item) = self.ready.pop_front() else {
                return;
            };
            let (wait, reason) = match self.breaker.peek(Instant::now()) {
                Admit::No(wait) => (wait, "breaker_open"),
                Admit::Yes => (self.d.shared.paused_recheck, "paused"),
            };
            self.push_write(work, self.park(item, wait, reason));
        }
    }

    fn push_write(
        &mut self,
        work: &mut FuturesUnordered<BoxFuture<'static, Done>>,
        write: BoxFuture<'static, Done>,
    ) {
        self.writes += 1;
        work.push(write);
    }

    fn item(&self, job: Job) -> Item {
        let key = self.order.as_ref().map_or(NO_KEY, |o| o.key_of(&job.event));
        match job.parked {
            Some(parked) => {
                let (id, state) = *parked;
                Item {
                    event: job.event,
                    id,
                    ticket: job.ticket,
                    state,
                    key,
                }
            }
            None => Item {
                id: DeliveryId::derive(&job.event, &self.s.endpoint_id),
                event: job.event,
                ticket: job.ticket,
                state: RetryState::default(),
                key,
            },
        }
    }

    /// An ordered lane's next delivery to start: a head that is ready (a
    /// retry whose wait ended, or the next of a key whose head is final),
    /// else the first delivery in the inbox whose key has nothing under
    /// way. Returned deliveries go before fresh ones: they are older (a
    /// spilled backlog comes back before fresh deliveries go to the inbox
    /// again, see [`crate::spill`]). Deliveries of keys under way join
    /// their key's chain on the way, while the lane has room for them.
    fn next_head(&mut self) -> Option<Item> {
        if let Some(item) = self.ready.pop_front() {
            return Some(item);
        }
        let room = order::room(self.s.max_in_flight);
        loop {
            if self.held() + self.waiting_len() >= room {
                return None;
            }
            let job = self.inbox.pop(true)?;
            let item = self.item(job);
            if let Some(head) = self.order.as_mut()?.admit(item) {
                return Some(head);
            }
        }
    }

    /// `key`'s head is final, or has left the lane: the next delivery of
    /// its key, if one waits, is ready to go.
    fn settled(&mut self, key: Key) {
        if let Some(next) = self.order.as_mut().and_then(|o| o.settle(key)) {
            self.ready.push_back(next);
        }
    }

    /// Take a token of the rate limit, if it has one: else the lane waits
    /// until the next is due (counted).
    fn take_token(&mut self) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        match limiter.check() {
            Ok(()) => true,
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                self.d.metrics.rate_limit_waits.inc();
                self.blocked_until = Some(tokio::time::Instant::now() + wait);
                false
            }
        }
    }

    /// Where the next delivery comes from, if any is waiting. Old work
    /// (retries whose wait ended, deliveries back from Kafka) gets one turn
    /// in four, so neither old nor new work starves the other.
    fn pick(&mut self) -> Option<Pick> {
        self.picks += 1;
        let old_first = self.picks % 4 == 0;
        let inbox_has = !self.inbox.is_empty();
        match (old_first, self.ready.is_empty(), inbox_has) {
            (true, false, _) => Some(Pick::Ready),
            (_, _, true) => Some(Pick::Inbox {
                prefer_returned: old_first,
            }),
            (_, false, false) => Some(Pick::Ready),
            (_, true, false) => None,
        }
    }

    /// Start every send that may start now.
    fn pump(&mut self, work: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        while self.blocked_until.is_none()
            && self.sends < self.concurrency.limit()
            && self.writes < MAX_WRITES
        {
            if !self.inbox.is_accepting() {
                // Paused or breaker open: nothing is taken (retries that
                // come due are parked by refresh_accepting). At shutdown
                // what is still queued is let go: its records are read
                // again after the restart.
                if self.inbox.is_closed() {
                    drop(self.inbox.drain_all());
                }
                return;
            }
            if self.order.is_some() {
                let Some(head) = self.next_head() else {
                    return;
                };
                if !self.take_token() {
                    // Still its key's head: the first to go at the next
                    // token.
                    self.ready.push_front(head);
                    return;
                }
                self.start(head, work);
                continue;
            }
            let Some(pick) = self.pick() else {
                return;
            };
            // The rate limit is checked before anything leaves the queue,
            // so a limited lane holds no more than its queue.
            if !self.take_token() {
                return;
            }
            let item = match pick {
                Pick::Ready => self.ready.pop_front(),
                Pick::Inbox { prefer_returned } => {
                    self.inbox.pop(prefer_returned).map(|job| self.item(job))
                }
            };
            let Some(item) = item else {
                continue;
            };
            self.start(item, work);
        }
    }

    /// Check one delivery and send it, or decide what else becomes of it.
    fn start(&mut self, mut item: Item, work: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        if self.deleting {
            self.give_up(
                item,
                "endpoint_deleted",
                "the endpoint was deleted".into(),
                None,
                work,
            );
            return;
        }
        if self.control.disabled() {
            self.give_up(
                item,
                "endpoint_disabled",
                "the endpoint answered 410 Gone and is disabled".into(),
                None,
                work,
            );
            return;
        }
        let first = *item.state.first_attempt_ms.get_or_insert(now_ms);
        if Duration::from_millis((now_ms - first).max(0) as u64) >= self.s.retry.max_age {
            self.give_up(
                item,
                "expired",
                "still undelivered after retry.max_age".into(),
                None,
                work,
            );
            return;
        }
        if item.state.not_before_ms > now_ms {
            // Came back from the longest tier before its time.
            let wait = Duration::from_millis((item.state.not_before_ms - now_ms) as u64);
            self.wait_or_park(item, wait, "not_due", work);
            return;
        }
        if self.d.shared.dedup.contains(&item.id) {
            self.d.metrics.deduplicated.inc();
            item.ticket.finish_one();
            self.settled(item.key);
            return;
        }
        let before = self.breaker.state().gauge();
        let admit = self.breaker.admit(Instant::now());
        if self.breaker.state().gauge() != before {
            self.breaker_changed(self.breaker.state());
        }
        if let Admit::No(wait) = admit {
            // Half-open and its probes are out: their answers decide.
            self.ready.push_front(item);
            self.blocked_until = Some(tokio::time::Instant::now() + wait);
            return;
        }
        item.state.idle_parks = 0;
        let delivery = Delivery {
            event: item.event.clone(),
            endpoint_id: self.s.endpoint_id.clone(),
            id: item.id,
            body: item.event.envelope(&self.s.endpoint_id),
            attempt: item.state.attempts + 1,
        };
        let charged = delivery.body.len();
        self.d.shared.budget.charge(0, charged);
        self.sends += 1;
        self.d.metrics.in_flight.inc();
        let transport = self.transport();
        work.push(Box::pin(async move {
            let started = Instant::now();
            // A transport must not panic; if one does, the delivery is a
            // failed attempt like any other and the lane lives on.
            let outcome = match transport {
                Ok(transport) => AssertUnwindSafe(transport.send(&delivery))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Outcome::Retry {
                        status: None,
                        reason: format!("the transport panicked: {}", panic_text(&panic)),
                        retry_after: None,
                    }),
                Err(reason) => Outcome::Retry {
                    status: None,
                    reason: format!("the transport could not be built: {reason}"),
                    retry_after: None,
                },
            };
            Done::Sent(Sent {
                item,
                outcome,
                took: started.elapsed(),
                charged,
            })
        }));
    }

    /// The transport to send with, built if the lane has none yet.
    fn transport(&mut self) -> Result<Arc<dyn Transport>, String> {
        if let Some(t) = &self.connection {
            return Ok(t.clone());
        }
        let t = self.s.transport.connect()?;
        self.connection = Some(t.clone());
        Ok(t)
    }

    /// Keep a delivery in memory for a short wait, or park it for a long one.
    fn wait_or_park(
        &mut self,
        item: Item,
        wait: Duration,
        reason: &'static str,
        work: &mut FuturesUnordered<BoxFuture<'static, Done>>,
    ) {
        // In-memory waits are bounded: beyond a few per in-flight place they
        // go to the retry topic too.
        // An ordered lane keeps every wait in memory (its keys hold their
        // place: see `Sequencer`); it takes nothing new while too many do.
        if let Some(order) = &mut self.order {
            order.block(item.key, Instant::now());
        }
        if self.order.is_some()
            || (wait <= self.d.shared.in_memory_max
                && self.waiting_len() < self.s.max_in_flight * 4)
        {
            self.d.metrics.retried.inc();
            let at = self
                .waiting
                .get_or_insert_with(Box::default)
                .insert(item, wait);
            if let Some(order) = &mut self.order {
                order.waits.insert(at);
            }
        } else {
            let write = self.park(item, wait, reason);
            self.push_write(work, write);
        }
    }

    /// Act on a finished piece of work.
    fn finish(&mut self, done: Done, work: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        let Sent {
            mut item,
            outcome,
            took,
            charged,
        } = match done {
            Done::Sent(sent) => sent,
            Done::Wrote(key) => {
                self.writes -= 1;
                self.settled(key);
                return;
            }
        };
        self.d.shared.budget.release(0, charged);
        let in_flight_before = self.sends;
        self.sends -= 1;
        self.d.metrics.in_flight.dec();
        self.d.metrics.attempt_duration.observe(took.as_secs_f64());
        let now = Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis();
        item.state.attempts += 1;

        let signal = match &outcome {
            Outcome::Delivered { .. } => Some((true, Signal::Ok)),
            Outcome::Retry { .. } => Some((false, Signal::Overload)),
            // The endpoint answered, and clearly: not a sign of ill health.
            Outcome::Permanent { .. } | Outcome::Rejected { .. } => Some((true, Signal::Neutral)),
            // It is up and asking us to slow down: the lane does, and the
            // breaker does not count it either way.
            Outcome::Throttled { .. } => None,
        };
        match signal {
            Some((healthy, signal)) => {
                if let Some(state) = self.breaker.record(healthy, now) {
                    self.breaker_changed(state);
                }
                self.concurrency.record(signal, took, in_flight_before, now);
            }
            None => {
                self.breaker.record_neutral();
                self.concurrency
                    .record(Signal::Throttled, took, in_flight_before, now);
            }
        }
        self.d
            .metrics
            .concurrency_limit()
            .set(self.concurrency.limit() as i64);

        match outcome {
            Outcome::Delivered { .. } => {
                self.d.metrics.attempt_delivered.inc();
                self.d.metrics.delivered.inc();
                let age_ms = now_ms - item.event.timestamp_ms();
                self.d
                    .metrics
                    .event_age
                    .observe(age_ms.max(0) as f64 / 1000.0);
                self.d
                    .metrics
                    .dispatch_latency
                    .observe(item.ticket.read_at().elapsed().as_secs_f64());
                self.d.shared.dedup.insert(item.id);
                item.ticket.finish_one();
                self.settled(item.key);
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
                match self.s.retry.next_wait(item.state.attempts, retry_after) {
                    _ if self.deleting => {
                        self.give_up(item, "endpoint_deleted", reason, None, work);
                    }
                    _ if age >= self.s.retry.max_age => {
                        self.give_up(item, "expired", reason, None, work);
                    }
                    None => {
                        tracing::warn!(
                            endpoint = %self.s.endpoint_id, delivery_id = %item.id,
                            attempts = item.state.attempts, error = %reason, "retries exhausted; dead-lettering"
                        );
                        self.give_up(item, "retries_exhausted", reason, None, work);
                    }
                    Some(wait) => {
                        item.state.not_before_ms = now_ms + wait.as_millis() as i64;
                        self.wait_or_park(item, wait, "retry", work);
                    }
                }
            }
            Outcome::Throttled {
                status,
                reason,
                retry_after,
            } => {
                // Not a failed attempt: the receiver only asked us to wait.
                // The whole endpoint waits, not just this delivery.
                self.d.metrics.attempt_retry.inc();
                self.d.metrics.throttled.inc();
                item.state.attempts -= 1;
                item.state
                    .push(attempt(now_ms, took, status, "throttled", &reason));
                let wait = retry_after.min(MAX_RETRY_AFTER);
                let until = tokio::time::Instant::now() + wait;
                if self.blocked_until.is_none_or(|b| b < until) {
                    self.blocked_until = Some(until);
                }
                let first = item.state.first_attempt_ms.unwrap_or(now_ms);
                if self.deleting {
                    self.give_up(item, "endpoint_deleted", reason, None, work);
                    return;
                }
                if Duration::from_millis((now_ms - first).max(0) as u64) >= self.s.retry.max_age {
                    self.give_up(item, "expired", reason, None, work);
                    return;
                }
                item.state.not_before_ms = item
                    .state
                    .not_before_ms
                    .max(now_ms + wait.as_millis() as i64);
                self.wait_or_park(item, wait, "throttled", work);
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
                    endpoint = %self.s.endpoint_id, delivery_id = %item.id, error = %reason,
                    "payload rejected by the receiver; dead-lettering with what was sent"
                );
                self.give_up(item, "rejected_payload", reason, Some(sent), work);
            }
            Outcome::Permanent {
                status,
                reason,
                disable_endpoint,
            } => {
                self.d.metrics.attempt_permanent.inc();
                item.state
                    .push(attempt(now_ms, took, status, "permanent", &reason));
                let code = if disable_endpoint {
                    if !self.control.disabled() {
                        tracing::error!(
                            endpoint = %self.s.endpoint_id, error = %reason,
                            "ENDPOINT DISABLED: it said it wants no more deliveries (HTTP 410, or Slack's channel_not_found, channel_is_archived, no_service, 403); its deliveries are dead-lettered until it is enabled again (POST /endpoints/{}/resume?clear_disabled=true on the management API)",
                            self.s.endpoint_id
                        );
                    }
                    if !self.control.disabled() {
                        if let Some(tx) = &self.d.shared.disabled {
                            let _ = tx.send(self.s.index);
                        }
                    }
                    self.control.disable();
                    self.d.metrics.disabled.set(1);
                    "endpoint_gone"
                } else {
                    tracing::warn!(
                        endpoint = %self.s.endpoint_id, delivery_id = %item.id, error = %reason,
                        "permanent failure; dead-lettering"
                    );
                    "permanent_failure"
                };
                self.give_up(item, code, reason, None, work);
            }
        }
    }

    /// The delivery as the park and dead-letter writers see it (no body:
    /// they carry the event's own bytes).
    fn bare(&self, item: &Item) -> Delivery {
        Delivery {
            event: item.event.clone(),
            endpoint_id: self.s.endpoint_id.clone(),
            id: item.id,
            body: bytes::Bytes::new(),
            attempt: item.state.attempts + 1,
        }
    }

    fn park(&self, item: Item, wait: Duration, reason: &'static str) -> BoxFuture<'static, Done> {
        let parker = self.d.shared.parker.clone();
        let metrics = self.d.metrics.clone();
        let dead_letters = self.d.shared.dead_letters.clone();
        let delivery = self.bare(&item);
        Box::pin(async move {
            let mut state = item.state;
            let now_ms = chrono::Utc::now().timestamp_millis();
            state.not_before_ms = state.not_before_ms.max(now_ms + wait.as_millis() as i64);
            match parker.park(&delivery, &state, wait, reason).await {
                Ok(()) => {
                    metrics.parked.inc();
                    if let Some(by_reason) = metrics.parked_for(reason) {
                        by_reason.inc();
                    }
                }
                Err(WriteError::Refused(e)) => {
                    // The retry topic refuses it (too large): dead-letter
                    // rather than lose it.
                    tracing::error!(delivery_id = %delivery.id, error = %e, "cannot park; dead-lettering");
                    let error = format!("the retry topic refused the record: {e}");
                    let letter = DeadLetter::failed_delivery(
                        &delivery,
                        "unparkable",
                        &error,
                        &state.history,
                        None,
                    );
                    if dead_letters.write(letter).await.is_err() {
                        return Done::Wrote(NO_KEY);
                    }
                    metrics.dead_lettered.inc();
                }
                // Stopping: left unfinished, read again after the restart.
                Err(WriteError::Fatal(_)) => return Done::Wrote(NO_KEY),
            }
            item.ticket.finish_one();
            // Only unordered lanes park: no key waits on it.
            Done::Wrote(NO_KEY)
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
        let dead_letters = self.d.shared.dead_letters.clone();
        let metrics = self.d.metrics.clone();
        let delivery = self.bare(&item);
        Box::pin(async move {
            let letter = DeadLetter::failed_delivery(
                &delivery,
                code,
                &error,
                &item.state.history,
                sent.as_deref(),
            );
            // Its key's next delivery goes once this one is final, not
            // before: were the write lost in a crash, it would be read
            // again, and must not come after the next one.
            match dead_letters.write(letter).await {
                Ok(_) => {
                    metrics.dead_lettered.inc();
                    item.ticket.finish_one();
                    Done::Wrote(item.key)
                }
                // Stopping: left unfinished, read again after the restart.
                Err(_) => Done::Wrote(NO_KEY),
            }
        })
    }

    /// Dead-letter `item` (keeping `sent`, what a transport rendered, when
    /// given). On an ordered endpoint its key moves on once the letter is
    /// written; a head given up
    /// after its retries takes the deliveries held behind it along when
    /// `ordering.on_expired` is `dead_letter_rest`.
    fn give_up(
        &mut self,
        item: Item,
        code: &'static str,
        error: String,
        sent: Option<bytes::Bytes>,
        work: &mut FuturesUnordered<BoxFuture<'static, Done>>,
    ) {
        let key = item.key;
        let write = self.dead_letter_with(item, code, error, sent);
        let rest_too = matches!(code, "expired" | "retries_exhausted")
            && self
                .order
                .as_ref()
                .is_some_and(|o| o.ordering().on_expired == OnExpired::DeadLetterRest);
        let rest = match rest_too {
            true => self
                .order
                .as_mut()
                .map(|o| o.take_followers(key))
                .unwrap_or_default(),
            false => Default::default(),
        };
        if rest.is_empty() {
            self.push_write(work, write);
            return;
        }
        // The head's letter, then its followers', one after another: the
        // key is free only once all of them are written (each letter's
        // future says its key when it was).
        let error = format!(
            "an earlier delivery of its key was dead-lettered ({code}), and ordering.on_expired is dead_letter_rest"
        );
        let letters: Vec<_> = rest
            .into_iter()
            .map(|f| self.dead_letter(f, "ordering_head_dead_lettered", error.clone()))
            .collect();
        self.push_write(
            work,
            Box::pin(async move {
                let mut written = matches!(write.await, Done::Wrote(k) if k == key);
                for letter in letters {
                    written &= matches!(letter.await, Done::Wrote(k) if k == key);
                }
                Done::Wrote(if written { key } else { NO_KEY })
            }),
        );
    }

    fn breaker_changed(&mut self, state: BreakerState) {
        self.d.metrics.breaker_state.set(state.gauge());
        self.d.metrics.breaker_transition(state.name());
        match state {
            BreakerState::Open { .. } => tracing::warn!(
                endpoint = %self.s.endpoint_id, open_for_s = self.s.breaker.open_for.as_secs_f64(),
                "circuit breaker opened: the endpoint's deliveries wait in Kafka until it half-opens"
            ),
            _ => {
                tracing::info!(endpoint = %self.s.endpoint_id, state = state.name(), "circuit breaker changed state")
            }
        }
    }
}

/// The next in-memory retry whose wait ended.
async fn expired(
    waiting: &mut Option<Box<DelayQueue<Item>>>,
) -> Option<tokio_util::time::delay_queue::Expired<Item>> {
    match waiting {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    // A panic message may quote anything: keep it to a line's worth.
    text.chars().take(200).collect()
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
