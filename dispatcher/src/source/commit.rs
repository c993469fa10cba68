//! Periodic commits of the watermark, confirmed by the broker.
//!
//! A position counts as committed only once the broker said so: rdkafka
//! never reports the outcome of an asynchronous commit (upstream issue
//! rust-rdkafka#856), so commits are synchronous, run off the source's task
//! one at a time, and a failed one is simply offered again at the next
//! tick. At revoke and at shutdown the current final positions are
//! committed whether or not they moved.

use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use tokio::task::JoinHandle;

use super::context::{record_committed, to_list};
use super::SourceConsumer;
use crate::metrics::Metrics;
use crate::offsets::OffsetTracker;

type Positions = Vec<(Arc<str>, i32, i64)>;

/// At most one commit in flight.
#[derive(Default)]
pub struct Committer {
    running: Option<JoinHandle<(Positions, KafkaResult<()>)>>,
}

impl Committer {
    /// Commit every position the broker has not confirmed, unless a commit
    /// is still running.
    pub fn start(&mut self, consumer: &Arc<SourceConsumer>, tracker: &OffsetTracker) {
        if self.running.is_some() {
            return;
        }
        let positions = tracker.commit_candidates();
        if positions.is_empty() {
            return;
        }
        let consumer = consumer.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            let result = consumer.commit(&to_list(&positions), CommitMode::Sync);
            (positions, result)
        }));
    }

    /// Resolves when the running commit finished; pending while none runs.
    pub async fn finished(&mut self) -> Option<(Positions, KafkaResult<()>)> {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let done = running.await;
        self.running = None;
        done.ok()
    }

    pub fn record(
        &mut self,
        done: Option<(Positions, KafkaResult<()>)>,
        tracker: &OffsetTracker,
        metrics: &Metrics,
    ) {
        match done {
            Some((positions, Ok(()))) => {
                metrics.commits.with_label_values(&["ok"]).inc();
                tracker.confirm(&positions);
                record_committed(metrics, &positions);
            }
            Some((_, Err(e))) => {
                // Offered again at the next tick (the positions stay
                // unconfirmed): nothing is lost, at worst re-read.
                metrics.commits.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "offset commit failed; retrying at the next tick");
            }
            None => {
                metrics.commits.with_label_values(&["error"]).inc();
                tracing::warn!("offset commit task failed; retrying at the next tick");
            }
        }
    }
}

/// Commit every assigned partition's current position now, synchronously
/// (shutdown): whether or not it moved, so a position an earlier failed
/// commit left behind is written too.
pub fn commit_now(consumer: &SourceConsumer, tracker: &OffsetTracker, metrics: &Metrics) {
    let positions = tracker.positions();
    if positions.is_empty() {
        return;
    }
    match consumer.commit(&to_list(&positions), CommitMode::Sync) {
        Ok(()) => {
            metrics.commits.with_label_values(&["ok"]).inc();
            tracker.confirm(&positions);
            record_committed(metrics, &positions);
        }
        Err(e) => {
            metrics.commits.with_label_values(&["error"]).inc();
            tracing::warn!(error = %e, "final offset commit failed; the next owner re-reads from the last committed position");
        }
    }
}
