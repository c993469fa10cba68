//! The dead-letter watcher: tails the run's dead-letter topic and tells the
//! [`Ledger`] which delivery ids the dispatcher gave up on, from the
//! `dlq.delivery_id` header of each dead letter. A dead letter is a final
//! outcome the dispatcher owns up to, so it is not a loss; the report shows
//! it apart from both deliveries and losses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use transports::DeliveryId;

use crate::ledger::Ledger;

/// A running watcher; [`Watcher::stop`] ends it.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Read every partition of `topic` from the beginning, on a thread.
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        ledger: Arc<Ledger>,
    ) -> anyhow::Result<Watcher> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            // Partitions are assigned by hand; the group only names the client.
            .set("group.id", format!("{topic}.watcher"))
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create()
            .context("creating the dead-letter watcher")?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .context("assigning the dead-letter partitions")?;
        }
        consumer
            .assign(&assignment)
            .context("assigning the dead-letter partitions")?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let (thread_stop, thread_seen) = (stop.clone(), seen.clone());
        let thread = std::thread::Builder::new()
            .name("loadtest-dlq".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    thread_seen.fetch_add(1, Ordering::Relaxed);
                    let id = message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|h| h.key == "dlq.delivery_id")
                            .and_then(|h| h.value)
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(DeliveryId::parse)
                    });
                    // Invalid records (stage `decode`) carry no delivery id.
                    if let Some(id) = id {
                        ledger.dead_lettered(id);
                    }
                }
            })
            .context("starting the dead-letter watcher")?;
        Ok(Watcher {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    /// Dead letters read so far (of every kind).
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.halt();
    }
}
