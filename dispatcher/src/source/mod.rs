//! The Kafka source: reads records, decodes and routes them, hands each
//! delivery to its endpoint's lane, reads parked deliveries back from the
//! retry topics when they are due, and commits the watermark.
//!
//! Back-pressure: when the records in flight reach
//! `pipeline.max_events_in_flight` every assigned partition is paused, and
//! resumed at three quarters of it. The loop keeps polling while paused, so
//! group membership and rebalances are served and memory does not grow.
//! The source never waits long on one endpoint: a lane whose queue stays
//! full is congested, and its deliveries are parked instead (see
//! [`LaneHandle::offer`]).
//!
//! Retry-topic partitions are FIFO by due time (see [`crate::park`]): a
//! record read before it is due is held, alone, and its partition paused
//! until then.

mod context;

pub use context::SourceContext;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prometheus::IntCounter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::TopicPartitionList;
use tokio::sync::watch;
use tokio_util::time::DelayQueue;
use transports::{Delivery, Event, SourceRef};

use crate::dlq::{DeadLetter, DeadLetters};
use crate::lane::{Job, LaneHandle};
use crate::metrics::Metrics;
use crate::offsets::{OffsetTracker, Ticket};
use crate::park::{self, Parker, RetryState};
use crate::route::Router;

pub type SourceConsumer = StreamConsumer<SourceContext>;

pub struct Source {
    pub consumer: Arc<SourceConsumer>,
    pub tracker: Arc<OffsetTracker>,
    pub router: Router,
    pub lanes: Vec<LaneHandle>,
    pub dead_letters: Arc<DeadLetters>,
    pub parker: Arc<Parker>,
    pub metrics: Arc<Metrics>,
    pub paused: Arc<AtomicBool>,
    pub max_in_flight: usize,
    pub max_event_bytes: usize,
    pub commit_interval: Duration,
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
    job: Job,
    due_ms: i64,
}

/// Per retry partition, the records read before their time, in order. It is
/// one record but for the few a pause lets through before it takes effect.
type HeldRecords = HashMap<PartitionKey, std::collections::VecDeque<Held>>;

type PartitionKey = (Arc<str>, i32);

/// Longest a held parked record waits for its due time (a day: far beyond
/// the longest retry tier).
const MAX_HOLD_MS: i64 = 24 * 3600 * 1000;

impl Source {
    /// Run until `shutdown` turns true. Returns with the lanes' handles
    /// dropped, so the lanes drain and end.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let high = self.max_in_flight;
        let low = high * 3 / 4;
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counters: Vec<TopicCounters> = Vec::new();
        let mut targets: Vec<usize> = Vec::new();
        let mut held: HeldRecords = HashMap::new();
        let mut due: DelayQueue<PartitionKey> = DelayQueue::new();
        let lane_index: HashMap<Arc<str>, usize> = self
            .lanes
            .iter()
            .enumerate()
            .map(|(i, l)| (l.endpoint_id.clone(), i))
            .collect();
        // A local handle: received messages borrow it, not `self`.
        let consumer = self.consumer.clone();

        loop {
            let in_flight = self.tracker.in_flight().get();
            self.metrics.events_in_flight.set(in_flight as i64);
            self.metrics
                .parked_held
                .set(held.values().map(|q| q.len()).sum::<usize>() as i64);
            let paused = self.paused.load(Ordering::Acquire);
            if !paused && in_flight >= high {
                self.set_paused(true, &held);
            } else if paused && in_flight <= low {
                self.set_paused(false, &held);
            }
            let paused = self.paused.load(Ordering::Acquire);

            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = self.tracker.in_flight().drained(), if paused => {}
                Some(expired) = due.next(), if !due.is_empty() => {
                    let key = expired.into_inner();
                    self.release_due(key, &mut held, &mut due, paused);
                }
                _ = commit_tick.tick() => self.commit(CommitMode::Async),
                // Polled while paused too: that serves rebalances and keeps
                // the group membership; paused partitions yield nothing.
                msg = consumer.recv() => match msg {
                    Ok(msg) => {
                        let c = topic_counters(&mut counters, &self.metrics, msg.topic());
                        c.consumed.inc();
                        if self.parker.tiers().delay_of(msg.topic()).is_some() {
                            self.handle_parked(&msg, &lane_index, &mut held, &mut due);
                        } else {
                            self.handle(&msg, c, &mut targets).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.lanes.clear();
    }

    async fn handle(
        &mut self,
        msg: &BorrowedMessage<'_>,
        counters: &TopicCounters,
        targets: &mut Vec<usize>,
    ) {
        let Some((partition, source)) = self.owned(msg) else {
            return;
        };
        let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
        let timestamp = msg.timestamp().to_millis();

        match Event::decode(
            payload.clone(),
            source.clone(),
            timestamp,
            self.max_event_bytes,
        ) {
            Ok(mut event) => {
                event.traceparent = header(msg, "traceparent").map(Bytes::copy_from_slice);
                targets.clear();
                self.router.route(&event, |i| targets.push(i));
                let ticket = Ticket::issue(partition, msg.offset(), targets.len());
                if targets.is_empty() {
                    counters.unrouted.inc();
                    return;
                }
                counters.routed.inc();
                let event = Arc::new(event);
                for &i in targets.iter() {
                    let job = Job {
                        event: event.clone(),
                        ticket: ticket.clone(),
                        parked: None,
                    };
                    if let Err(job) = self.lanes[i].offer(job).await {
                        self.park_now(i, job, "queue_full");
                    }
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

    /// A record from a retry topic: hand it to its lane when due, or hold it
    /// (and pause its partition) until then.
    fn handle_parked(
        &mut self,
        msg: &BorrowedMessage<'_>,
        lane_index: &HashMap<Arc<str>, usize>,
        held: &mut HeldRecords,
        due: &mut DelayQueue<PartitionKey>,
    ) {
        let Some((partition, source)) = self.owned(msg) else {
            return;
        };
        let parked = match park::parse(msg, self.max_event_bytes) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(topic = msg.topic(), offset = msg.offset(), %error, "damaged parked record; dead-lettering");
                self.dead_letter_unusable(msg, partition, &source, "damaged", &error);
                return;
            }
        };
        let Some(&lane) = lane_index.get(parked.endpoint_id.as_str()) else {
            tracing::warn!(endpoint = %parked.endpoint_id, "parked delivery for an endpoint no longer configured; dead-lettering");
            let error = format!("endpoint {} is not configured", parked.endpoint_id);
            self.dead_letter_unusable(msg, partition, &source, "unknown_endpoint", &error);
            return;
        };
        let ticket = Ticket::issue(partition, msg.offset(), 1);
        let job = Job {
            event: Arc::new(parked.event),
            ticket,
            parked: Some(Box::new((parked.delivery_id, parked.state))),
        };
        let wait_ms = parked.due_ms - chrono::Utc::now().timestamp_millis();
        if wait_ms <= 0 {
            self.give_back(lane, job);
            return;
        }
        let key: PartitionKey = (source.topic.clone(), source.partition);
        let entry = Held {
            lane,
            job,
            due_ms: parked.due_ms,
        };
        if let Some(queue) = held.get_mut(&key) {
            let current = queue.front().is_some_and(|h| {
                Arc::ptr_eq(h.job.ticket.partition(), entry.job.ticket.partition())
            });
            if current {
                // Read after the pause was asked for: it waits behind the head.
                queue.push_back(entry);
                return;
            }
            // Held under an earlier assignment of this partition: those
            // records are the new owner's to read again (they are not
            // committed); start afresh with this one.
            held.remove(&key);
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(msg.topic(), msg.partition());
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(error = %e, topic = msg.topic(), "could not pause a retry partition");
        }
        // park::parse bounds due times; the clamp keeps the timer wheel safe
        // whatever happens to the clock.
        due.insert(
            key.clone(),
            Duration::from_millis(wait_ms.min(MAX_HOLD_MS) as u64),
        );
        held.insert(key, std::collections::VecDeque::from([entry]));
    }

    /// A retry partition's head record is due: hand over every due record
    /// it holds, and let the partition go on once none is left waiting.
    fn release_due(
        &self,
        key: PartitionKey,
        held: &mut HeldRecords,
        due: &mut DelayQueue<PartitionKey>,
        globally_paused: bool,
    ) {
        let Some(queue) = held.get_mut(&key) else {
            return;
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        while queue.front().is_some_and(|h| h.due_ms <= now_ms) {
            let Some(h) = queue.pop_front() else { break };
            // Revoked (and maybe re-assigned) since: the new owner reads it again.
            let still_ours = self
                .tracker
                .partition(&key.0, key.1)
                .is_some_and(|p| Arc::ptr_eq(&p, h.job.ticket.partition()));
            if still_ours {
                self.give_back(h.lane, h.job);
            }
        }
        if let Some(next) = queue.front() {
            due.insert(
                key,
                Duration::from_millis((next.due_ms - now_ms).max(1) as u64),
            );
            return;
        }
        held.remove(&key);
        if !globally_paused && self.tracker.partition(&key.0, key.1).is_some() {
            let mut list = TopicPartitionList::new();
            list.add_partition(&key.0, key.1);
            if let Err(e) = self.consumer.resume(&list) {
                tracing::warn!(error = %e, topic = %key.0, "could not resume a retry partition");
            }
        }
    }

    fn give_back(&self, lane: usize, job: Job) {
        if let Err(job) = self.lanes[lane].give_back(job) {
            self.park_now(lane, job, "queue_full");
        }
    }

    /// Park a delivery straight from the source (its lane cannot take it).
    fn park_now(&self, lane: usize, job: Job, reason: &'static str) {
        let parker = self.parker.clone();
        let dead_letters = self.dead_letters.clone();
        let handle = self.lanes[lane].clone();
        // Bounded like every record: it holds its in-flight place until the
        // parked copy is acknowledged.
        tokio::spawn(async move {
            let (delivery, state) = match job.parked {
                Some(p) => {
                    let (id, state) = *p;
                    let mut d = Delivery::new(job.event, handle.endpoint_id.clone());
                    d.id = id;
                    (d, state)
                }
                None => (
                    Delivery::new(job.event, handle.endpoint_id.clone()),
                    RetryState::default(),
                ),
            };
            // The shortest tier: a full queue is a short-lived condition.
            match parker.park(&delivery, &state, Duration::ZERO, reason).await {
                Ok(()) => handle.parked.inc(),
                Err(e) => {
                    let error = format!("the retry topic refused the record: {e}");
                    let letter = DeadLetter::failed_delivery(
                        &delivery,
                        "unparkable",
                        &error,
                        &state.history,
                        None,
                    );
                    dead_letters.write(letter).await;
                    handle.dead_lettered.inc();
                }
            }
            job.ticket.finish_one();
        });
    }

    /// A retry-topic record that cannot be used: dead-letter it whole.
    fn dead_letter_unusable(
        &self,
        msg: &BorrowedMessage<'_>,
        partition: Arc<crate::offsets::PartitionOffsets>,
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
        partition: Arc<crate::offsets::PartitionOffsets>,
        offset: i64,
        letter: DeadLetter,
    ) {
        let ticket = Ticket::issue(partition, offset, 1);
        let dead_letters = self.dead_letters.clone();
        tokio::spawn(async move {
            dead_letters.write(letter).await;
            ticket.finish_one();
        });
    }

    /// The partition's offsets and the record's origin, if the partition is ours.
    fn owned(
        &self,
        msg: &BorrowedMessage<'_>,
    ) -> Option<(Arc<crate::offsets::PartitionOffsets>, SourceRef)> {
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

    /// Pause or resume every assigned partition; held retry partitions stay
    /// paused until their record is due.
    fn set_paused(&self, pause: bool, held: &HeldRecords) {
        self.paused.store(pause, Ordering::Release);
        self.metrics.source_paused.set(pause as i64);
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment to pause or resume");
                return;
            }
        };
        let result = if pause {
            tracing::debug!("in-flight limit reached; pausing the source");
            self.consumer.pause(&assignment)
        } else {
            tracing::debug!("in-flight below low water; resuming the source");
            let holding: HashSet<(&str, i32)> =
                held.keys().map(|(t, p)| (t.as_ref(), *p)).collect();
            let mut list = TopicPartitionList::new();
            for e in assignment.elements() {
                if !holding.contains(&(e.topic(), e.partition())) {
                    list.add_partition(e.topic(), e.partition());
                }
            }
            self.consumer.resume(&list)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, pause, "pause/resume failed");
        }
    }

    /// Commit every watermark that moved.
    pub fn commit(&self, mode: CommitMode) {
        commit(&self.consumer, &self.tracker, &self.metrics, mode);
    }
}

/// Commit every watermark that moved since the last commit.
pub fn commit(
    consumer: &SourceConsumer,
    tracker: &OffsetTracker,
    metrics: &Metrics,
    mode: CommitMode,
) {
    let moved = tracker.take_commits();
    if moved.is_empty() {
        return;
    }
    match consumer.commit(&context::to_list(&moved), mode) {
        Ok(()) => {
            metrics.commits.with_label_values(&["ok"]).inc();
            context::record_committed(metrics, &moved);
        }
        Err(e) => {
            // Harmless but for duplicates: a later commit carries the same
            // or a higher watermark.
            metrics.commits.with_label_values(&["error"]).inc();
            tracing::warn!(error = %e, "offset commit failed");
        }
    }
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
