//! The Kafka source: reads records, decodes and routes them, hands each
//! delivery to its endpoint's lane (or spills it when the lane does not keep
//! up), reads the internal topics back, and commits the watermark.
//!
//! The source never waits on one endpoint. Its only back-pressure is the
//! memory [`Budget`](crate::offsets::Budget): when the records and
//! deliveries held in memory reach `pipeline.memory_budget` (or
//! `pipeline.max_events_in_flight` records) the source stops taking
//! records, and goes on at three quarters. At first it only stops taking
//! them from the consumer, whose read-ahead librdkafka bounds; when the
//! budget stays full for longer (`PAUSE_CONSUMER_AFTER`), every assigned
//! partition is paused and the loop polls again, so group membership and
//! rebalances are served. A lane with no room refuses a delivery at once,
//! and the delivery is spilled (see [`crate::spill`]); and when the budget
//! has held the source back for `pipeline.spill_after`, the lanes still
//! holding fresh deliveries are made to spill, so that slow endpoints
//! cannot hold it for the others, unless most lanes are behind alike (then
//! the pause is back-pressure).
//!
//! Internal-topic partitions (retry tiers and the spill topic) are FIFO by
//! due time (see [`crate::park`]): a record read before it is due is held,
//! and its partition paused until then. A due record whose endpoint has no
//! room stays in Kafka under that endpoint's hold, and the source reads on
//! (see [`crate::backlog`]).

mod commit;
mod context;
mod stall;

pub use commit::{commit_now, Committer};
pub use context::SourceContext;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prometheus::IntCounter;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::TopicPartitionList;
use tokio::sync::watch;
use tokio_util::time::DelayQueue;
use transports::{Event, SourceRef};

use crate::dlq::{DeadLetter, DeadLetters};
use crate::endpoints::Routing;
use crate::fatal::Fatal;
use crate::kafka::{classify, Severity};
use crate::lane::{sleep_until, Evictions, Front, Job, Refused, MAX_RETRY_AFTER};
use crate::metrics::Metrics;
use crate::offsets::{OffsetTracker, PartitionOffsets, Returned, Ticket};
use crate::park::{self, Tiers};
use crate::route::Router;
use crate::spill::{self, Spill};
use crate::store::Store;
use stall::{Stall, Verdict};

pub type SourceConsumer = StreamConsumer<SourceContext>;

pub struct Source {
    pub consumer: Arc<SourceConsumer>,
    pub tracker: Arc<OffsetTracker>,
    /// The endpoints, replaced as a whole whenever they change.
    pub routing: watch::Receiver<Arc<Routing>>,
    /// The endpoint store, to tell a deleted endpoint from one never known.
    pub store: Arc<Store>,
    pub dead_letters: Arc<DeadLetters>,
    pub spill: Spill,
    pub tiers: Arc<Tiers>,
    pub evictions: Arc<Evictions>,
    pub metrics: Arc<Metrics>,
    pub fatal: Arc<Fatal>,
    /// Whether the consumer's partitions are paused for the memory budget
    /// (shared with the consumer context, which pauses newly assigned
    /// partitions to match).
    pub paused: Arc<AtomicBool>,
    /// Set by the consumer context at every rebalance.
    pub rebalanced: Arc<AtomicBool>,
    pub max_event_bytes: usize,
    pub commit_interval: Duration,
    /// How long the memory budget may hold the source back before the
    /// lanes still holding fresh deliveries are made to spill
    /// (`pipeline.spill_after`).
    pub spill_after: Duration,
    /// How many `spill_after`s lanes behind alike may hold the source
    /// (`pipeline.stall_grace`; see `source/stall.rs`).
    pub stall_grace: u32,
    /// Told when the memory budget starts and stops holding the source
    /// back, so that lanes measure how far they lag in reading time.
    pub front: Arc<Front>,
    /// Entries one partition's window may hold before that partition is
    /// paused (records read behind one that is not final yet).
    pub max_pending_per_partition: usize,
}

/// Per-topic counters, resolved once per topic rather than per record.
struct TopicCounters {
    topic: String,
    consumed: IntCounter,
    routed: IntCounter,
    unrouted: IntCounter,
}

/// A parked delivery read before its time, holding its partition.
struct Held {
    lane: usize,
    endpoint: Arc<str>,
    job: Job,
    due_ms: i64,
    /// [`park::Parked::source_epoch`].
    source_epoch: Option<u64>,
}

/// Per internal-topic partition, the records read before their time, in
/// order: one record but for the few a pause lets through before it takes
/// effect. Each list remembers the partition state it was read under.
type HeldRecords = HashMap<PartitionKey, (Arc<PartitionOffsets>, VecDeque<Held>)>;

type PartitionKey = (Arc<str>, i32);

/// How far a parked record's due time may lie beyond its tier's delay
/// (clock skew between replicas): anything later is a damaged or foreign
/// writer's, and is brought back within bounds rather than trusted.
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// How long the memory budget may hold the source back before the
/// consumer's partitions are paused. Until then the source only stops
/// taking records: librdkafka keeps reading ahead up to its own bounds
/// (`queued.min.messages`, `queued.max.messages.kbytes`), and stops there.
/// A pause throws that read-ahead away, and librdkafka's fetcher notices a
/// resume only at its next one-second tick (a resume does not wake it), so
/// pausing at every brief fill left the lanes idle for up to a second
/// each time (`docs/benchmarks.md`). Past this, the pause lets the loop
/// poll again, so that rebalances and errors are not held up for long.
const PAUSE_CONSUMER_AFTER: Duration = Duration::from_millis(500);

/// How long a consumer error that should be transient (a topic that seems
/// gone) may last before it counts as fatal.
const PERSISTENT_ERROR: Duration = Duration::from_secs(30);

/// The endpoints as the source loop uses them: the snapshot and its router.
struct Current {
    routing: Arc<Routing>,
    router: Router,
}

impl Current {
    fn new(routing: Arc<Routing>) -> Current {
        Current {
            router: Router::from_table(routing.table.clone()),
            routing,
        }
    }

    /// Take the newest snapshot, if there is one (an atomic load when not).
    fn refresh(&mut self, routing: &mut watch::Receiver<Arc<Routing>>) {
        if routing.has_changed().unwrap_or(false) {
            *self = Current::new(routing.borrow_and_update().clone());
        }
    }
}

impl Source {
    /// Run until `shutdown` turns true. The lanes are the endpoint
    /// manager's to stop, once this has returned.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut current = Current::new(self.routing.borrow_and_update().clone());
        let mut committer = Committer::default();
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counters: Vec<TopicCounters> = Vec::new();
        let mut targets: Vec<usize> = Vec::new();
        let mut held: HeldRecords = HashMap::new();
        let mut due: DelayQueue<PartitionKey> = DelayQueue::new();
        let mut overfull: HashSet<PartitionKey> = HashSet::new();
        let mut failing_since: Option<(Instant, Instant)> = None;
        let mut stall = Stall::new(self.spill_after, self.stall_grace);
        // Since when the memory budget has held the source back.
        let mut pressure: Option<tokio::time::Instant> = None;
        // Local handles: received messages borrow the consumer, not `self`.
        let consumer = self.consumer.clone();
        let evictions = self.evictions.clone();
        let budget = self.tracker.budget().clone();

        loop {
            current.refresh(&mut self.routing);
            if self.rebalanced.swap(false, Ordering::AcqRel) {
                self.after_rebalance(&mut held, &mut overfull);
            }
            self.metrics.events_in_flight.set(budget.records() as i64);
            self.metrics.memory_used.set(budget.bytes() as i64);
            self.metrics
                .parked_held
                .set(held.values().map(|(_, q)| q.len()).sum::<usize>() as i64);
            let now = tokio::time::Instant::now();
            if pressure.is_none() && budget.full() {
                pressure = Some(now);
                self.hold_back(true);
            } else if pressure.is_some() && budget.low() {
                pressure = None;
                self.hold_back(false);
                if self.paused.load(Ordering::Acquire) {
                    self.set_paused(false, &held, &overfull);
                }
            }
            // The consumer itself is paused only when the budget stays
            // full: see `PAUSE_CONSUMER_AFTER`.
            let pause_at = pressure
                .filter(|_| !self.paused.load(Ordering::Acquire))
                .map(|since| since + PAUSE_CONSUMER_AFTER);
            if pause_at.is_some_and(|at| at <= now) {
                self.metrics
                    .source_backpressure
                    .with_label_values(&["paused"])
                    .inc();
                self.set_paused(true, &held, &overfull);
            }
            let paused = self.paused.load(Ordering::Acquire);
            let pause_at = pause_at.filter(|_| !paused);
            // Held back but not paused: the records wait in librdkafka's
            // bounded read-ahead, and the loop does not take them.
            let taking = pressure.is_none() || paused;
            stall.observe(pressure.is_some(), now);
            let stall_deadline = stall.deadline();

            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = budget.drained(), if pressure.is_some() => {}
                _ = sleep_until(pause_at), if pause_at.is_some() => {}
                _ = sleep_until(stall_deadline), if stall_deadline.is_some() => {
                    self.spill_stalled(&current.routing, &mut stall).await;
                }
                done = self.spill.next_finished() => self.spill.finish(done, &current.routing),
                _ = evictions.requested() => {
                    for lane in evictions.take() {
                        self.evict(&current.routing, lane).await;
                    }
                }
                Some(expired) = due.next(), if !due.is_empty() => {
                    let key = expired.into_inner();
                    self.release_due(&current.routing, key, &mut held, &mut due, paused, &overfull);
                }
                committed = committer.finished() => committer.record(committed, &self.tracker, &self.metrics),
                _ = commit_tick.tick() => {
                    committer.start(&self.consumer, &self.tracker);
                    self.check_pending(&mut overfull, &held);
                    self.end_drained_spills(&current.routing);
                }
                // Polled while the consumer is paused too: that serves
                // rebalances and keeps the group membership; paused
                // partitions yield nothing.
                msg = consumer.recv(), if taking => match msg {
                    Ok(msg) => {
                        failing_since = None;
                        // The endpoints may have changed while this waited
                        // for the record: an endpoint the API already shows
                        // running gets every record read after that.
                        current.refresh(&mut self.routing);
                        let c = topic_counters(&mut counters, &self.metrics, msg.topic());
                        c.consumed.inc();
                        if let Some(delay) = self.tiers.delay_of(msg.topic()) {
                            self.handle_internal(&msg, delay, &current.routing, &mut held, &mut due);
                        } else {
                            self.handle(&msg, c, &mut current, &mut targets).await;
                        }
                    }
                    Err(e) => {
                        if self.consumer_error(&e, &mut failing_since) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        // What the source still holds goes back: the next owner reads it.
        drop(held);
    }

    /// A consumer error: log it, and report it as fatal when no retry can
    /// fix it. Returns true when the source must stop.
    fn consumer_error(
        &self,
        e: &KafkaError,
        failing_since: &mut Option<(Instant, Instant)>,
    ) -> bool {
        let fatal_now = match classify(e) {
            Severity::Fatal => {
                use rdkafka::types::RDKafkaErrorCode as C;
                if matches!(
                    e.rdkafka_error_code(),
                    Some(C::UnknownTopicOrPartition | C::UnknownTopic)
                ) {
                    // Also seen briefly while a new topic propagates: only
                    // an error that lasts is fatal, repeated without a
                    // quiet spell of a third of the window in between.
                    let now = Instant::now();
                    let (first, last) = failing_since.get_or_insert((now, now));
                    if now.duration_since(*last) > PERSISTENT_ERROR / 3 {
                        *first = now;
                    }
                    *last = now;
                    now.duration_since(*first) >= PERSISTENT_ERROR
                } else {
                    true
                }
            }
            _ => false,
        };
        if fatal_now {
            let detail = self
                .consumer
                .client()
                .fatal_error()
                .map(|(code, text)| format!(" ({code:?}: {text})"))
                .unwrap_or_default();
            self.fatal.trip(format!(
                "the Kafka consumer failed for good: {e}{detail} (check kafka.topics, the internal topics and the consumer's authorizations)"
            ));
            return true;
        }
        tracing::warn!(error = %e, "consumer error");
        false
    }

    async fn handle(
        &mut self,
        msg: &BorrowedMessage<'_>,
        counters: &TopicCounters,
        current: &mut Current,
        targets: &mut Vec<usize>,
    ) {
        let Some((partition, source)) = self.owned(msg) else {
            return;
        };
        let (payload, record_key) = value_and_key(msg);
        let timestamp = msg.timestamp().to_millis();

        match Event::decode(
            payload.clone(),
            source.clone(),
            timestamp,
            self.max_event_bytes,
        ) {
            Ok(mut event) => {
                event.traceparent = header(msg, "traceparent").map(Bytes::copy_from_slice);
                event.record_key = record_key;
                targets.clear();
                current
                    .router
                    .route_record(&event, msg, |i| targets.push(i));
                // The key shares the payload's allocation: both are held.
                let held = payload.len() + event.record_key.as_ref().map_or(0, |k| k.len());
                let ticket = Ticket::issue(partition, msg.offset(), targets.len(), held);
                if targets.is_empty() {
                    counters.unrouted.inc();
                    return;
                }
                counters.routed.inc();
                let event = Arc::new(event);
                for &i in targets.iter() {
                    self.deliver(
                        &current.routing,
                        i,
                        Job {
                            event: event.clone(),
                            ticket: ticket.clone(),
                            parked: None,
                        },
                    )
                    .await;
                }
            }
            Err(error) => {
                self.metrics
                    .events_invalid
                    .with_label_values(&[msg.topic(), error.code()])
                    .inc();
                tracing::warn!(
                    topic = msg.topic(), partition = msg.partition(), offset = msg.offset(),
                    %error, "invalid record; dead-lettering"
                );
                let letter = DeadLetter::invalid_record(
                    &source,
                    key(msg),
                    payload,
                    original_headers(msg),
                    &error,
                );
                self.dead_letter_record(partition, msg.offset(), letter);
            }
        }
    }

    /// Queue a fresh delivery in its lane, or spill it (after what the lane
    /// still had queued, when it asked for that: so the backlog keeps the
    /// source's order).
    async fn deliver(&mut self, routing: &Routing, i: usize, job: Job) {
        let Some(lane) = routing.lane(i) else {
            // The router routes only to lanes of this same snapshot.
            job.ticket.finish_one();
            return;
        };
        // An endpoint's first delivery makes its lane.
        let inbox = lane.inbox();
        if inbox.evict_requested() {
            self.evict(routing, i).await;
        }
        if inbox.is_spilling()
            && self
                .spill
                .may_stop(lane, &self.tracker, self.tiers.spill_topic())
        {
            tracing::debug!(endpoint = %lane.endpoint_id, "backlog drained; lane takes fresh deliveries again");
            inbox.stop_spilling();
        }
        if let Err(job) = inbox.offer(job) {
            if inbox.is_deleted() && inbox.is_closed() {
                // Its endpoint was deleted and its lane has finished, while
                // this routing snapshot still had it.
                job.dead_letter_deleted(lane.endpoint_id.clone(), &self.dead_letters);
                return;
            }
            self.evict(routing, i).await;
            self.spill.write(routing, i, job).await;
        }
    }

    /// Lanes that spill but whose backlog came back while no new event came
    /// for them (the check is otherwise made at their next delivery).
    fn end_drained_spills(&self, routing: &Routing) {
        for lane in routing.lanes.iter().flatten() {
            // A lane not made yet spills nothing.
            let Some(inbox) = lane.live() else {
                continue;
            };
            if inbox.is_spilling()
                && !inbox.evict_requested()
                && self
                    .spill
                    .may_stop(lane, &self.tracker, self.tiers.spill_topic())
            {
                inbox.stop_spilling();
            }
        }
    }

    /// The memory budget has held the source back for `spill_after`: the
    /// lanes that still hold fresh deliveries spill them, when [`Stall`]
    /// says so (a minority of the lanes, or most of them behind alike for
    /// longer than `pipeline.stall_grace` allows). Nothing was queued during
    /// the pause, so these lanes could not clear in `spill_after` what they
    /// held when it began. One of them alone may be slower than its input
    /// while no other lane starts newer work (the front cannot show it
    /// lagging); several may be slow alike on the same records, which stay
    /// in memory until all their deliveries are final, so spilling only one
    /// would free nothing. When lanes are busy alike and quick, the budget
    /// is back at its low mark long before `spill_after`.
    async fn spill_stalled(&mut self, routing: &Routing, stall: &mut Stall) {
        // Paused, disabled and deleted endpoints take nothing: no pause
        // holds them back, and they hold nothing fresh.
        let takes = |l: &&crate::lane::LaneHandle| {
            !l.control.paused()
                && !l.control.disabled()
                && !l.live().is_some_and(|i| i.is_deleted())
        };
        let lanes = routing.lanes.iter().flatten().filter(takes).count();
        let stalled: Vec<usize> = routing
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, lane)| {
                lane.as_ref()
                    .is_some_and(|l| takes(&l) && l.live().is_some_and(|i| i.has_fresh()))
            })
            .map(|(i, _)| i)
            .collect();
        let waiting = self.front.waiting();
        let verdict = stall.check(tokio::time::Instant::now(), stalled.len(), lanes, waiting);
        self.metrics
            .budget_stalls
            .with_label_values(&[verdict.label()])
            .inc();
        match verdict {
            Verdict::NothingFresh => return,
            Verdict::Wait => {
                tracing::debug!(
                    holding = stalled.len(),
                    lanes,
                    waiting,
                    "memory budget full for spill_after, with most lanes behind alike; waiting for them"
                );
                return;
            }
            Verdict::Spill => tracing::debug!(
                lanes = stalled.len(),
                waiting,
                "memory budget full for spill_after; spilling the lanes that still hold fresh deliveries"
            ),
        }
        for i in stalled {
            if let Some(inbox) = routing.lane(i).and_then(|l| l.live()) {
                inbox.request_eviction();
            }
            self.evict(routing, i).await;
        }
    }

    /// Spill what lane `i` still has queued, in order, before anything newer.
    async fn evict(&mut self, routing: &Routing, i: usize) {
        let Some(jobs) = routing
            .lane(i)
            .and_then(|l| l.live())
            .and_then(|i| i.take_evicted())
        else {
            return;
        };
        for job in jobs {
            self.spill.write(routing, i, job).await;
        }
    }

    /// A record from an internal topic: hand it to its lane when due (or
    /// leave it under the endpoint's hold), or hold it, and pause its
    /// partition, until then.
    fn handle_internal(
        &mut self,
        msg: &BorrowedMessage<'_>,
        delay: Duration,
        routing: &Routing,
        held: &mut HeldRecords,
        due: &mut DelayQueue<PartitionKey>,
    ) {
        let Some((partition, source)) = self.owned(msg) else {
            return;
        };
        partition.check_gap(msg.offset());
        let mut parked = match park::parse(msg, self.max_event_bytes) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(topic = msg.topic(), offset = msg.offset(), %error, "damaged parked record; dead-lettering");
                self.dead_letter_unusable(msg, partition, &source, "damaged", &error);
                return;
            }
        };
        let Some(lane) = routing.find(parked.endpoint_id.as_str()) else {
            // A deleted endpoint's (replayable once it exists again), or
            // one this replica never knew.
            let deleted = self.store.version(&parked.endpoint_id) > 0
                && self.store.get(&parked.endpoint_id).is_none();
            let (reason, error) = if deleted {
                (
                    "endpoint_deleted",
                    format!("endpoint {} was deleted", parked.endpoint_id),
                )
            } else {
                tracing::warn!(endpoint = %parked.endpoint_id, "parked delivery for an endpoint no longer configured; dead-lettering");
                (
                    "unknown_endpoint",
                    format!("endpoint {} is not configured", parked.endpoint_id),
                )
            };
            self.dead_letter_unusable(msg, partition, &source, reason, &error);
            return;
        };
        let endpoint: Arc<str> = match routing.lane(lane) {
            Some(l) => l.endpoint_id.clone(),
            None => parked.endpoint_id.as_str().into(),
        };
        let now = chrono::Utc::now().timestamp_millis();
        let (due_ms, not_before_ms) =
            bound_times(parked.due_ms, parked.state.not_before_ms, delay, now);
        if due_ms != parked.due_ms {
            tracing::warn!(
                topic = msg.topic(),
                offset = msg.offset(),
                due_ms = parked.due_ms,
                "parked record due too far ahead; brought back to its tier's delay"
            );
        }
        parked.due_ms = due_ms;
        parked.state.not_before_ms = not_before_ms;

        let payload_len = msg.payload_len();
        let timestamp = msg.timestamp().to_millis().unwrap_or(now);
        let parked_state = Some(Box::new((parked.delivery_id, parked.state)));
        let wait_ms = parked.due_ms - now;
        if wait_ms <= 0 {
            let Some(ticket) = partition.read_internal(msg.offset(), lane, payload_len, timestamp)
            else {
                // Its endpoint has a backlog here already: its reader
                // brings it back in turn.
                return;
            };
            match spill::returned(
                &self.tracker,
                routing,
                lane,
                parked.source_epoch,
                &parked.event,
            ) {
                Returned::Deliver => {}
                Returned::Superseded => {
                    self.metrics.spill_superseded.inc();
                    ticket.finish_one();
                    return;
                }
                // Dropped, the ticket puts it under the endpoint's hold:
                // its reader asks again.
                Returned::NotYet => return,
            }
            let job = Job {
                event: Arc::new(parked.event),
                ticket,
                parked: parked_state,
            };
            self.give_back(routing, lane, endpoint, job);
            return;
        }
        let ticket = Ticket::issue_internal(
            partition.clone(),
            msg.offset(),
            lane,
            payload_len,
            timestamp,
            true,
        );
        let key: PartitionKey = (source.topic.clone(), source.partition);
        let entry = Held {
            lane,
            endpoint,
            job: Job {
                event: Arc::new(parked.event),
                ticket,
                parked: parked_state,
            },
            due_ms: parked.due_ms,
            source_epoch: parked.source_epoch,
        };
        if let Some((p, queue)) = held.get_mut(&key) {
            if Arc::ptr_eq(p, &partition) {
                // Read after the pause was asked for: it waits behind the head.
                queue.push_back(entry);
                return;
            }
            // Held under an earlier assignment of this partition: those
            // records are the new owner's to read again.
            held.remove(&key);
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(msg.topic(), msg.partition());
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(error = %e, topic = msg.topic(), "could not pause a retry partition");
        }
        due.insert(key.clone(), Duration::from_millis(wait_ms as u64));
        held.insert(key, (partition, VecDeque::from([entry])));
    }

    /// An internal partition's head record is due: hand over every due
    /// record it holds, and let the partition go on once none is left.
    fn release_due(
        &self,
        routing: &Routing,
        key: PartitionKey,
        held: &mut HeldRecords,
        due: &mut DelayQueue<PartitionKey>,
        globally_paused: bool,
        overfull: &HashSet<PartitionKey>,
    ) {
        let Some((partition, queue)) = held.get_mut(&key) else {
            return;
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let current = self.tracker.is_current(partition);
        while queue.front().is_some_and(|h| h.due_ms <= now_ms) {
            let Some(h) = queue.pop_front() else { break };
            // Revoked (and maybe re-assigned) since: dropped, the new owner
            // reads it again.
            if current && !partition.has_open_hold(h.lane) {
                // A spilled record due ahead of this clock (another
                // replica's is ahead) is checked like one due at once.
                match spill::returned(&self.tracker, routing, h.lane, h.source_epoch, &h.job.event)
                {
                    Returned::Deliver => self.give_back(routing, h.lane, h.endpoint, h.job),
                    Returned::Superseded => {
                        self.metrics.spill_superseded.inc();
                        h.job.ticket.finish_one();
                    }
                    Returned::NotYet => drop(h.job),
                }
            }
        }
        if let Some(next) = queue.front() {
            due.insert(
                key,
                Duration::from_millis((next.due_ms - now_ms).max(1) as u64),
            );
            return;
        }
        partition.release_undecided();
        held.remove(&key);
        if current && !globally_paused && !overfull.contains(&key) {
            let mut list = TopicPartitionList::new();
            list.add_partition(&key.0, key.1);
            if let Err(e) = self.consumer.resume(&list) {
                tracing::warn!(error = %e, topic = %key.0, "could not resume a retry partition");
            }
        }
    }

    /// Hand a record read back from an internal topic to its lane. Without
    /// room it is dropped, which leaves it under the endpoint's hold; a
    /// deleted endpoint's is dead-lettered (`endpoint_deleted`).
    fn give_back(&self, routing: &Routing, lane: usize, endpoint: Arc<str>, job: Job) {
        let refused = match routing.lane(lane) {
            Some(l) => match l.inbox().give_back(job) {
                Ok(()) => return,
                Err(refused) => refused,
            },
            None => Refused::Closed(job),
        };
        match refused {
            Refused::NoRoom(job) => drop(job),
            Refused::Closed(job) => job.dead_letter_deleted(endpoint, &self.dead_letters),
        }
    }

    /// After a rebalance: forget what is held for partitions no longer
    /// ours (their records are the new owner's, their tickets give their
    /// memory back), and set every assigned partition to the state it
    /// should have (librdkafka keeps pauses across re-assignment).
    fn after_rebalance(&self, held: &mut HeldRecords, overfull: &mut HashSet<PartitionKey>) {
        held.retain(|_, (p, _)| self.tracker.is_current(p));
        overfull.retain(|(t, p)| self.tracker.partition(t, *p).is_some());
        let paused = self.paused.load(Ordering::Acquire);
        self.set_paused(paused, held, overfull);
    }

    /// Pause partitions whose windows grew past the cap (one record stuck
    /// unfinished while later ones complete); resume them at half.
    fn check_pending(&self, overfull: &mut HashSet<PartitionKey>, held: &HeldRecords) {
        let cap = self.max_pending_per_partition;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for (topic, partition, _, pending) in self.tracker.watermarks() {
            let key = (topic.clone(), partition);
            if pending > cap && overfull.insert(key.clone()) {
                tracing::warn!(topic = %topic, partition, pending, "partition window over its cap; pausing the partition");
                pause.add_partition(&topic, partition);
            } else if pending <= cap / 2
                && overfull.remove(&key)
                && !held.contains_key(&key)
                && !self.paused.load(Ordering::Acquire)
            {
                resume.add_partition(&topic, partition);
            }
        }
        if pause.count() > 0 {
            let _ = self.consumer.pause(&pause);
        }
        if resume.count() > 0 {
            let _ = self.consumer.resume(&resume);
        }
        self.metrics.partitions_over_cap.set(overfull.len() as i64);
    }

    /// An internal-topic record that cannot be used: dead-letter it whole.
    fn dead_letter_unusable(
        &self,
        msg: &BorrowedMessage<'_>,
        partition: Arc<PartitionOffsets>,
        source: &SourceRef,
        reason: &'static str,
        error: &str,
    ) {
        let value = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
        let letter = DeadLetter::unreadable(
            source,
            key(msg),
            value,
            original_headers(msg),
            "park",
            reason,
            error,
        );
        self.dead_letter_record(partition, msg.offset(), letter);
    }

    fn dead_letter_record(
        &self,
        partition: Arc<PartitionOffsets>,
        offset: i64,
        letter: DeadLetter,
    ) {
        let ticket = Ticket::issue(partition, offset, 1, letter.len());
        let dead_letters = self.dead_letters.clone();
        // Bounded: the ticket holds its record's place in the budget until
        // the dead letter is acknowledged.
        tokio::spawn(async move {
            if dead_letters.write(letter).await.is_ok() {
                ticket.finish_one();
            }
        });
    }

    /// The partition's offsets and the record's origin, if the partition is ours.
    fn owned(&self, msg: &BorrowedMessage<'_>) -> Option<(Arc<PartitionOffsets>, SourceRef)> {
        let Some(partition) = self.tracker.partition(msg.topic(), msg.partition()) else {
            // A record of a partition we no longer own: its new owner reads it.
            tracing::debug!(
                topic = msg.topic(),
                partition = msg.partition(),
                "record of a revoked partition skipped"
            );
            return None;
        };
        let source = SourceRef {
            topic: partition.topic.clone(),
            partition: msg.partition(),
            offset: msg.offset(),
        };
        Some((partition, source))
    }

    /// The memory budget starts or stops holding the source back.
    fn hold_back(&self, on: bool) {
        if on {
            tracing::debug!("memory budget reached; holding the source back");
            self.metrics
                .source_backpressure
                .with_label_values(&["held"])
                .inc();
        } else {
            tracing::debug!("memory budget below low water; reading on");
        }
        self.front.set_paused(on);
        self.metrics.source_paused.set(on as i64);
    }

    /// Pause or resume every assigned partition in the consumer; held and
    /// over-full ones stay paused either way.
    fn set_paused(&self, pause: bool, held: &HeldRecords, overfull: &HashSet<PartitionKey>) {
        self.paused.store(pause, Ordering::Release);
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment to pause or resume");
                return;
            }
        };
        let result = if pause {
            tracing::debug!("pausing the consumer");
            self.consumer.pause(&assignment)
        } else {
            tracing::debug!("resuming the consumer");
            let mut list = TopicPartitionList::new();
            let mut keep = TopicPartitionList::new();
            for e in assignment.elements() {
                let key = (Arc::<str>::from(e.topic()), e.partition());
                if held.contains_key(&key) || overfull.contains(&key) {
                    keep.add_partition(e.topic(), e.partition());
                } else {
                    list.add_partition(e.topic(), e.partition());
                }
            }
            if keep.count() > 0 {
                let _ = self.consumer.pause(&keep);
            }
            self.consumer.resume(&list)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "pause/resume failed");
        }
    }
}

/// A parked record's due and not-before times, brought within what its
/// tier's delay and the longest Retry-After can mean (plus clock skew): a
/// skewed clock or a bad writer must not hold a partition for long.
fn bound_times(due_ms: i64, not_before_ms: i64, delay: Duration, now: i64) -> (i64, i64) {
    let latest_due = now + delay.as_millis() as i64 + MAX_CLOCK_SKEW_MS;
    let latest_not_before = now + MAX_RETRY_AFTER.as_millis() as i64 + MAX_CLOCK_SKEW_MS;
    (due_ms.min(latest_due), not_before_ms.min(latest_not_before))
}

fn topic_counters<'a>(
    counters: &'a mut Vec<TopicCounters>,
    metrics: &Metrics,
    topic: &str,
) -> &'a TopicCounters {
    let i = match counters.iter().position(|c| c.topic == topic) {
        Some(i) => i,
        None => {
            counters.push(TopicCounters {
                topic: topic.to_owned(),
                consumed: metrics.events_consumed.with_label_values(&[topic]),
                routed: metrics.events_routed.with_label_values(&[topic]),
                unrouted: metrics.events_unrouted.with_label_values(&[topic]),
            });
            counters.len() - 1
        }
    };
    &counters[i]
}

fn header<'m>(msg: &'m BorrowedMessage<'_>, name: &str) -> Option<&'m [u8]> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| h.value)
}

/// A record's value, and its key when it has a non-empty one, in one
/// allocation: the key is a few bytes an endpoint ordered by `key` needs,
/// and a buffer of its own per record would cost more than the copy.
fn value_and_key(msg: &BorrowedMessage<'_>) -> (Bytes, Option<Bytes>) {
    let value = msg.payload().unwrap_or_default();
    let Some(key) = msg.key().filter(|k| !k.is_empty()) else {
        return (Bytes::copy_from_slice(value), None);
    };
    let mut both = Vec::with_capacity(value.len() + key.len());
    both.extend_from_slice(value);
    both.extend_from_slice(key);
    let both = Bytes::from(both);
    (both.slice(..value.len()), Some(both.slice(value.len()..)))
}

fn key(msg: &BorrowedMessage<'_>) -> Option<Bytes> {
    msg.key().map(Bytes::copy_from_slice)
}

fn original_headers(msg: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    msg.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_times_are_bounded_by_the_tier_and_the_longest_retry_after() {
        let now = 1_800_000_000_000;
        let day = 86_400_000;
        let tier = Duration::from_secs(5);
        // On time: unchanged.
        assert_eq!(
            bound_times(now + 5_000, now + 3_000, tier, now),
            (now + 5_000, now + 3_000)
        );
        // 30 days ahead in the 5 s tier: due within the tier and the skew.
        let (due, not_before) = bound_times(now + 30 * day, now + 30 * day, tier, now);
        assert_eq!(due, now + 5_000 + MAX_CLOCK_SKEW_MS);
        assert_eq!(
            not_before,
            now + MAX_RETRY_AFTER.as_millis() as i64 + MAX_CLOCK_SKEW_MS
        );
    }
}
