//! The Kafka source: reads records, decodes and routes them, hands each
//! delivery to its endpoint's lane, and commits the watermark.
//!
//! Back-pressure: when the records in flight reach
//! `pipeline.max_events_in_flight` every assigned partition is paused, and
//! resumed at three quarters of it. The loop keeps polling while paused, so
//! group membership and rebalances are served and memory does not grow.

mod context;

pub use context::SourceContext;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::watch;
use transports::{Event, SourceRef};

use crate::dlq::{DeadLetter, DeadLetters};
use crate::lane::{Job, LaneSender};
use crate::metrics::Metrics;
use crate::offsets::{OffsetTracker, Ticket};
use crate::route::Router;

pub type SourceConsumer = StreamConsumer<SourceContext>;

pub struct Source {
    pub consumer: Arc<SourceConsumer>,
    pub tracker: Arc<OffsetTracker>,
    pub router: Router,
    pub lanes: Vec<LaneSender>,
    pub dead_letters: Arc<DeadLetters>,
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

impl Source {
    /// Run until `shutdown` turns true. Returns with the lanes' senders
    /// dropped, so the lanes drain and end.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let high = self.max_in_flight;
        let low = high * 3 / 4;
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counters: Vec<TopicCounters> = Vec::new();
        let mut targets: Vec<usize> = Vec::new();
        // A local handle: received messages borrow it, not `self`.
        let consumer = self.consumer.clone();

        loop {
            let in_flight = self.tracker.in_flight().get();
            self.metrics.events_in_flight.set(in_flight as i64);
            let paused = self.paused.load(Ordering::Acquire);
            if !paused && in_flight >= high {
                self.set_paused(true);
            } else if paused && in_flight <= low {
                self.set_paused(false);
            }
            let paused = self.paused.load(Ordering::Acquire);

            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = self.tracker.in_flight().drained(), if paused => {}
                _ = commit_tick.tick() => self.commit(CommitMode::Async),
                // Polled while paused too: that serves rebalances and keeps
                // the group membership; paused partitions yield nothing.
                msg = consumer.recv() => match msg {
                    Ok(msg) => {
                        let c = topic_counters(&mut counters, &self.metrics, msg.topic());
                        self.handle(&msg, c, &mut targets).await;
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
        counters.consumed.inc();
        let Some(partition) = self.tracker.partition(msg.topic(), msg.partition()) else {
            // A record of a partition we no longer own: its new owner reads it.
            tracing::debug!(
                topic = msg.topic(),
                partition = msg.partition(),
                "record of a revoked partition skipped"
            );
            return;
        };
        let source = SourceRef {
            topic: partition.topic.clone(),
            partition: msg.partition(),
            offset: msg.offset(),
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
                    };
                    self.lanes[i].send(job).await;
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
                let original_headers = msg
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                let key = msg.key().map(Bytes::copy_from_slice);
                let letter =
                    DeadLetter::invalid_record(&source, key, payload, original_headers, &error);
                let ticket = Ticket::issue(partition, msg.offset(), 1);
                let dead_letters = self.dead_letters.clone();
                // Bounded like every record: it holds an in-flight place
                // until the dead letter is acknowledged.
                tokio::spawn(async move {
                    dead_letters.write(letter).await;
                    ticket.finish_one();
                });
            }
        }
    }

    fn set_paused(&self, pause: bool) {
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
            self.consumer.resume(&assignment)
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
