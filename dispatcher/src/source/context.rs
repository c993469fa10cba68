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
        // From the tracker, not `consumer.assignment()`: this runs inside
        // librdkafka's close too, after the unassign, and a group that has
        // finished closing drops a request for its assignment unanswered,
        // which would block the process's exit forever.
        self.metrics
            .assigned_partitions
            .set(self.tracker.assigned() as i64);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use rdkafka::consumer::{Consumer, StreamConsumer};

    use super::SourceContext;
    use crate::config::KafkaConfig;
    use crate::embedded::EmbeddedKafka;
    use crate::metrics::Metrics;
    use crate::offsets::{Budget, HoldIndex, OffsetTracker};

    /// A consumer closing while it owns partitions serves its last revoke
    /// inside librdkafka's close. The callbacks must not wait there on the
    /// group coordinator's queue, which may never answer: that deadlocked
    /// the process's exit.
    #[test]
    fn a_consumer_closing_while_assigned_never_hangs() {
        for round in 0..10 {
            let broker_gone = round % 2 == 1;
            let kafka = EmbeddedKafka::start(&["events"], 4).expect("embedded Kafka");
            let bootstrap = kafka.bootstrap().to_owned();
            let (assigned_tx, assigned_rx) = std::sync::mpsc::channel();
            let (gone_tx, gone_rx) = std::sync::mpsc::channel::<()>();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let entered = runtime.enter();
                let (holds, _woken) = HoldIndex::new();
                let ready = Arc::new(AtomicBool::new(false));
                let metrics = Arc::new(Metrics::new());
                let context = SourceContext {
                    tracker: Arc::new(OffsetTracker::new(
                        Arc::new(Budget::new(1000, 1 << 20)),
                        holds,
                    )),
                    paused: Arc::new(AtomicBool::new(false)),
                    ready: ready.clone(),
                    metrics: metrics.clone(),
                    rebalanced: Arc::new(AtomicBool::new(false)),
                };
                let kafka_config = KafkaConfig {
                    group_id: format!("closing-{round}"),
                    ..KafkaConfig::default()
                };
                let consumer: Arc<StreamConsumer<SourceContext>> = Arc::new(
                    crate::kafka::consumer(&kafka_config, &bootstrap)
                        .create_with_context(context)
                        .expect("consumer"),
                );
                consumer.subscribe(&["events"]).expect("subscribe");
                let reading = consumer.clone();
                let task = runtime.spawn(async move {
                    loop {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(50), reading.recv()).await;
                    }
                });
                while !ready.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = assigned_tx.send(metrics.assigned_partitions.get());
                let _ = gone_rx.recv();
                drop(consumer);
                drop(task);
                drop(entered);
                drop(runtime);
                let _ = done_tx.send(());
            });
            let assigned = assigned_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the consumer joined its group");
            assert_eq!(assigned, 4, "the gauge counts the assigned partitions");
            if broker_gone {
                drop(kafka);
                let _ = gone_tx.send(());
            } else {
                let _ = gone_tx.send(());
                let _ = done_rx.recv_timeout(Duration::from_secs(60));
                drop(kafka);
                continue;
            }
            done_rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("round {round}: closing the consumer hung"));
        }
    }
}
