//! One endpoint's lane: its queue, its cap on sends in flight, and the
//! retries of its deliveries.
//!
//! Every endpoint has its own lane task, so a slow or dead endpoint fills
//! only its own in-flight slots; the others keep their pace. A delivery is
//! *final* when it is delivered or its dead letter is acknowledged; only
//! then does it release its share of the record's [`Ticket`].

mod retry;

pub use retry::RetryPolicy;

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use transports::{model::format_rfc3339_ms, Delivery, Event, Outcome, Transport};

use crate::dlq::{Attempt, DeadLetter, DeadLetters};
use crate::metrics::EndpointMetrics;
use crate::offsets::Ticket;

/// One event for one endpoint.
pub struct Job {
    pub event: Arc<Event>,
    pub ticket: Arc<Ticket>,
}

/// The sending side of a lane, held by the router.
#[derive(Clone)]
pub struct LaneSender {
    tx: mpsc::Sender<Job>,
    queue_depth: prometheus::IntGauge,
}

impl LaneSender {
    /// Queue a job. The queue is sized so that this does not wait in
    /// practice (the source's in-flight budget bounds every queue), but if
    /// it is ever full it waits rather than drops.
    pub async fn send(&self, job: Job) {
        self.queue_depth.inc();
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                if self.tx.send(job).await.is_err() {
                    self.queue_depth.dec();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.queue_depth.dec(),
        }
    }
}

/// Everything a lane needs to deliver to its endpoint.
pub struct Lane {
    pub endpoint_id: Arc<str>,
    pub transport: Arc<dyn Transport>,
    pub policy: RetryPolicy,
    pub max_in_flight: usize,
    pub dead_letters: Arc<DeadLetters>,
    pub metrics: EndpointMetrics,
}

impl Lane {
    /// Start the lane's task; it ends when every sender is dropped and its
    /// queue and in-flight deliveries are done.
    pub fn spawn(self, queue_capacity: usize) -> (LaneSender, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let sender = LaneSender {
            tx,
            queue_depth: self.metrics.queue_depth.clone(),
        };
        (sender, tokio::spawn(self.run(rx)))
    }

    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let lane = Arc::new(self);
        let mut in_flight = FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                job = rx.recv(), if open && in_flight.len() < lane.max_in_flight => match job {
                    Some(job) => {
                        lane.metrics.queue_depth.dec();
                        lane.metrics.in_flight.inc();
                        in_flight.push(lane.clone().deliver(job));
                    }
                    None => open = false,
                },
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {
                    lane.metrics.in_flight.dec();
                }
                else => break,
            }
        }
    }

    /// Attempt one delivery until it is final.
    async fn deliver(self: Arc<Self>, job: Job) {
        let mut delivery = Delivery::new(job.event, self.endpoint_id.clone());
        // Only failures are recorded: a success ends the delivery, so the
        // history is only ever needed (and only then allocated) for a dead letter.
        let mut failures: Vec<Attempt> = Vec::new();
        loop {
            let started_ms = chrono::Utc::now().timestamp_millis();
            let started = Instant::now();
            let outcome = self.transport.send(&delivery).await;
            let took = started.elapsed();
            self.metrics.attempt_duration.observe(took.as_secs_f64());
            match outcome {
                Outcome::Delivered { .. } => {
                    self.metrics.attempt_delivered.inc();
                    self.metrics.delivered.inc();
                    let age_ms =
                        chrono::Utc::now().timestamp_millis() - delivery.event.timestamp_ms();
                    self.metrics
                        .event_age
                        .observe(age_ms.max(0) as f64 / 1000.0);
                    break;
                }
                Outcome::Retry {
                    status,
                    reason,
                    retry_after,
                } => {
                    self.metrics.attempt_retry.inc();
                    failures.push(attempt(started_ms, took, status, "retry", &reason));
                    if delivery.attempt >= self.policy.max_attempts {
                        tracing::warn!(
                            endpoint = %self.endpoint_id, delivery_id = %delivery.id, attempts = delivery.attempt,
                            error = %reason, "retries exhausted; dead-lettering"
                        );
                        self.dead_letter(&delivery, "retries_exhausted", &reason, &failures)
                            .await;
                        break;
                    }
                    let wait = self.policy.wait_before(delivery.attempt + 1, retry_after);
                    tracing::debug!(
                        endpoint = %self.endpoint_id, delivery_id = %delivery.id, attempt = delivery.attempt,
                        error = %reason, wait_ms = wait.as_millis() as u64, "attempt failed; will retry"
                    );
                    tokio::time::sleep(wait).await;
                    delivery.attempt += 1;
                }
                Outcome::Permanent {
                    status,
                    reason,
                    disable_endpoint,
                } => {
                    self.metrics.attempt_permanent.inc();
                    failures.push(attempt(started_ms, took, status, "permanent", &reason));
                    let code = if disable_endpoint {
                        tracing::error!(
                            endpoint = %self.endpoint_id, error = %reason,
                            "endpoint says it is gone (410); its deliveries are dead-lettered"
                        );
                        "endpoint_gone"
                    } else {
                        tracing::warn!(
                            endpoint = %self.endpoint_id, delivery_id = %delivery.id, error = %reason,
                            "permanent failure; dead-lettering"
                        );
                        "permanent_failure"
                    };
                    self.dead_letter(&delivery, code, &reason, &failures).await;
                    break;
                }
            }
        }
        job.ticket.finish_one();
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        code: &'static str,
        reason: &str,
        attempts: &[Attempt],
    ) {
        self.dead_letters
            .write(DeadLetter::failed_delivery(
                delivery, code, reason, attempts,
            ))
            .await;
        self.metrics.dead_lettered.inc();
    }
}

fn attempt(
    started_ms: i64,
    took: std::time::Duration,
    status: Option<u16>,
    result: &'static str,
    error: &str,
) -> Attempt {
    Attempt {
        at: format_rfc3339_ms(started_ms),
        duration_ms: took.as_millis() as u64,
        status,
        result,
        error: Some(error.to_owned()),
    }
}
