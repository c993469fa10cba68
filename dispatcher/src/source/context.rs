//! The consumer's context: what happens at rebalances.
//!
//! On revoke, the final positions of the partitions being taken away are
//! committed synchronously before the new owner can start (all of them,
//! moved or not: an earlier commit may have failed), so hand-over
//! re-reads as little as possible and never skips anything. On assign, each
//! partition starts a fresh watermark, and is paused at once if the source is
//! under back-pressure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::metrics::Metrics;
use crate::offsets::OffsetTracker;

pub struct SourceContext {
    pub tracker: Arc<OffsetTracker>,
    pub paused: Arc<AtomicBool>,
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Tells the source loop to drop what it holds for partitions it lost.
    pub rebalanced: Arc<AtomicBool>,
}

impl ClientContext for SourceContext {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry the
    /// consumer lag per partition, measured against the committed offset.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag is
                // -1 until the partition's end and commit are known.
                if *partition < 0 || !p.desired || p.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic.as_str(), partition.to_string().as_str()])
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                let finals = self
                    .tracker
                    .revoke(list.elements().iter().map(|e| (e.topic(), e.partition())));
                self.rebalanced.store(true, Ordering::Release);
                tracing::info!(partitions = list.count(), "partitions revoked");
                // Their lag is the new owner's to report now.
                for e in list.elements() {
                    let partition = e.partition().to_string();
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[e.topic(), partition.as_str()]);
                }
                if !finals.is_empty() {
                    let commits = to_list(&finals);
                    match consumer.commit(&commits, CommitMode::Sync) {
                        Ok(()) => {
                            self.metrics.commits.with_label_values(&["ok"]).inc();
                            record_committed(&self.metrics, &finals);
                        }
                        Err(e) => {
                            // The new owner re-reads from the last committed
                            // offset: duplicates (same delivery ids), no loss.
                            self.metrics.commits.with_label_values(&["error"]).inc();
                            tracing::warn!(error = %e, "commit on revoke failed");
                        }
                    }
                }
            }
            Rebalance::Assign(list) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.tracker
                    .assign(list.elements().iter().map(|e| (e.topic(), e.partition())));
                self.rebalanced.store(true, Ordering::Release);
                tracing::info!(partitions = list.count(), "partitions assigned");
            }
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // librdkafka keeps an application pause across unassign and
            // re-assign, so a partition that comes back must be set to the
            // source's state explicitly, one way or the other.
            if list.count() > 0 {
                let result = if self.paused.load(Ordering::Acquire) {
                    consumer.pause(list)
                } else {
                    consumer.resume(list)
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "could not set newly assigned partitions' pause state");
                }
            }
            // Joining the group is what readiness means, even with zero
            // partitions: a replica beyond the partition count is healthy.
            self.ready.store(true, Ordering::Release);
        }
        if let Ok(assigned) = consumer.assignment() {
            self.metrics
                .assigned_partitions
                .set(assigned.count() as i64);
        }
    }
}

/// A list of (topic, partition, offset) as librdkafka wants it.
pub fn to_list(offsets: &[(Arc<str>, i32, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (topic, partition, offset) in offsets {
        // Only fails for an invalid offset, which a watermark never is.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    list
}

pub fn record_committed(metrics: &Metrics, offsets: &[(Arc<str>, i32, i64)]) {
    for (topic, partition, offset) in offsets {
        metrics
            .committed_offset
            .with_label_values(&[topic.as_ref(), partition.to_string().as_str()])
            .set(*offset);
    }
}
