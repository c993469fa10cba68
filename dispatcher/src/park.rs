//! Durable parking: deliveries that must wait long are written to Kafka
//! retry topics, so the source offset behind them can be committed, and come
//! back through the same consumer when they are due.
//!
//! There is one retry topic per delay *tier* (`<kafka.retry_topic>.<delay>`,
//! e.g. `dispatcher.retry.30s`). A wait is rounded up to the next tier, so
//! within a tier records become due in the order they were written: the
//! consumer holds only the head record of a tier partition that is not yet
//! due and pauses that partition until then. Memory stays one record per
//! tier partition whatever the backlog. A wait longer than the longest tier
//! goes round that tier again (`park.not_before_ms` says when it is really due).
//!
//! A parked record's value is the source record's value, byte for byte; its
//! `park.*` headers carry the delivery's state (endpoint, delivery id,
//! attempts so far, their history, first attempt time).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use transports::{Delivery, DeliveryId, Event, SourceRef};

use rdkafka::error::KafkaError;

use crate::dlq::{produce_durably, Attempt};
use crate::kafka::header_str;
use crate::metrics::Metrics;

/// How far from now a parked record's times may lie before it counts as damaged.
const MAX_SKEW_MS: i64 = 366 * 24 * 3600 * 1000;

/// Attempt records kept in a parked delivery's history (the newest).
const MAX_HISTORY: usize = 20;

/// The retry topics and their delays, shortest first.
#[derive(Debug, Clone)]
pub struct Tiers {
    tiers: Vec<(Duration, String)>,
}

impl Tiers {
    pub fn new(base: &str, delays: &[Duration]) -> Tiers {
        let mut delays = delays.to_vec();
        delays.sort();
        delays.dedup();
        Tiers {
            tiers: delays
                .into_iter()
                // `1m 30s` would not be a valid topic name: `1m30s` is.
                .map(|d| {
                    (
                        d,
                        format!("{base}.{}", humantime::format_duration(d)).replace(' ', ""),
                    )
                })
                .collect(),
        }
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|(_, t)| t.as_str())
    }

    /// The tier a wait goes to: the shortest at least as long, else the longest.
    pub fn for_wait(&self, wait: Duration) -> (Duration, &str) {
        let (d, t) = self
            .tiers
            .iter()
            .find(|(d, _)| *d >= wait)
            .or(self.tiers.last())
            .expect("config validation guarantees at least one tier");
        (*d, t)
    }

    /// The delay of a retry topic, if `topic` is one.
    pub fn delay_of(&self, topic: &str) -> Option<Duration> {
        self.tiers.iter().find(|(_, t)| t == topic).map(|(d, _)| *d)
    }
}

/// Where a delivery stands between attempts.
#[derive(Debug, Clone, Default)]
pub struct RetryState {
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt started (ms since the epoch), for `max_age`.
    pub first_attempt_ms: Option<i64>,
    /// Not to be attempted before this (ms since the epoch).
    pub not_before_ms: i64,
    /// Times in a row it was parked without an attempt (breaker open,
    /// endpoint paused): each such wait is twice the last, up to a cap, so
    /// a long outage does not rewrite the backlog every few seconds.
    pub idle_parks: u32,
    pub history: Vec<Attempt>,
}

impl RetryState {
    pub fn push(&mut self, attempt: Attempt) {
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(0);
        }
        self.history.push(attempt);
    }
}

/// A parked delivery read back from a retry topic.
pub struct Parked {
    pub endpoint_id: String,
    pub delivery_id: DeliveryId,
    /// When its tier releases it (ms since the epoch).
    pub due_ms: i64,
    pub state: RetryState,
    pub event: Event,
}

/// Writes parked deliveries.
pub struct Parker {
    producer: FutureProducer,
    tiers: Arc<Tiers>,
    metrics: Arc<Metrics>,
}

impl Parker {
    pub fn new(producer: FutureProducer, tiers: Arc<Tiers>, metrics: Arc<Metrics>) -> Parker {
        Parker {
            producer,
            tiers,
            metrics,
        }
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Park `delivery` to be attempted again after `wait`; returns once the
    /// broker has acknowledged it (retrying until it does). `Err` only when
    /// the retry topic refuses the record as too large: the caller must
    /// dead-letter it instead, or it would be lost.
    pub async fn park(
        &self,
        delivery: &Delivery,
        state: &RetryState,
        wait: Duration,
        reason: &'static str,
    ) -> Result<(), KafkaError> {
        let now = chrono::Utc::now().timestamp_millis();
        let (delay, topic) = self.tiers.for_wait(wait);
        let ev = &delivery.event;
        let mut headers: Vec<(&'static str, Vec<u8>)> = vec![
            ("park.endpoint_id", delivery.endpoint_id.as_bytes().to_vec()),
            ("park.delivery_id", delivery.id.to_string().into_bytes()),
            ("park.reason", reason.as_bytes().to_vec()),
            (
                "park.due_ms",
                (now + delay.as_millis() as i64).to_string().into_bytes(),
            ),
            (
                "park.not_before_ms",
                (now + wait.as_millis() as i64).to_string().into_bytes(),
            ),
            ("park.attempts", state.attempts.to_string().into_bytes()),
            ("park.idle_parks", state.idle_parks.to_string().into_bytes()),
            (
                "park.first_attempt_ms",
                state
                    .first_attempt_ms
                    .unwrap_or(now)
                    .to_string()
                    .into_bytes(),
            ),
            (
                "park.history",
                serde_json::to_vec(&state.history).unwrap_or_default(),
            ),
            ("park.event_ms", ev.timestamp_ms().to_string().into_bytes()),
            ("park.source.topic", ev.source.topic.as_bytes().to_vec()),
            (
                "park.source.partition",
                ev.source.partition.to_string().into_bytes(),
            ),
            (
                "park.source.offset",
                ev.source.offset.to_string().into_bytes(),
            ),
        ];
        if let Some(tp) = &ev.traceparent {
            headers.push(("traceparent", tp.to_vec()));
        }
        let key = delivery.id.to_string();
        produce_durably(
            &self.producer,
            topic,
            Some(key.as_bytes()),
            ev.payload(),
            headers.iter().map(|(k, v)| (*k, v.as_slice())),
            &self.metrics.park_write_errors,
        )
        .await?;
        self.metrics
            .parked
            .with_label_values(&[&delivery.endpoint_id, reason])
            .inc();
        Ok(())
    }
}

/// Read a parked delivery; `Err` says why the record is not one. Any
/// message will do (the property tests build their own).
pub fn parse<M: Message>(msg: &M, max_event_bytes: usize) -> Result<Parked, String> {
    let header = |name: &str| header_str(msg, name);
    let need = |name: &str| header(name).ok_or_else(|| format!("header {name} is missing"));
    let num = |name: &str| -> Result<i64, String> {
        need(name)?
            .parse::<i64>()
            .map_err(|e| format!("header {name}: {e}"))
    };
    let delivery_id = DeliveryId::parse(need("park.delivery_id")?)
        .ok_or("header park.delivery_id is not a UUID")?;
    let source = SourceRef {
        topic: need("park.source.topic")?.into(),
        partition: num("park.source.partition")? as i32,
        offset: num("park.source.offset")?,
    };
    let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
    let mut event = Event::decode(
        payload,
        source,
        Some(num("park.event_ms")?),
        max_event_bytes,
    )
    .map_err(|e| format!("parked event does not decode: {e}"))?;
    event.traceparent = header("traceparent").map(|t| Bytes::copy_from_slice(t.as_bytes()));
    let history = match header("park.history") {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| format!("header park.history: {e}"))?
        }
        None => Vec::new(),
    };
    // Times far from now or negative counts are damage, not schedules: a
    // year either side is more than any tier or Retry-After produces.
    let now = chrono::Utc::now().timestamp_millis();
    for name in ["park.due_ms", "park.not_before_ms", "park.first_attempt_ms"] {
        if (num(name)? - now).abs() > MAX_SKEW_MS {
            return Err(format!("header {name} is more than a year away from now"));
        }
    }
    let attempts = num("park.attempts")?;
    if !(0..=100_000).contains(&attempts) {
        return Err(format!(
            "header park.attempts is {attempts}, not a count of attempts"
        ));
    }
    Ok(Parked {
        endpoint_id: need("park.endpoint_id")?.to_owned(),
        delivery_id,
        due_ms: num("park.due_ms")?,
        state: RetryState {
            attempts: attempts as u32,
            first_attempt_ms: Some(num("park.first_attempt_ms")?),
            not_before_ms: num("park.not_before_ms")?,
            idle_parks: header("park.idle_parks")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            history,
        },
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_a_tier() {
        let t = Tiers::new(
            "dispatcher.retry",
            &[30, 5, 3600, 120, 5].map(Duration::from_secs),
        );
        assert_eq!(
            t.topics().collect::<Vec<_>>(),
            vec![
                "dispatcher.retry.5s",
                "dispatcher.retry.30s",
                "dispatcher.retry.2m",
                "dispatcher.retry.1h"
            ]
        );
        assert_eq!(
            t.for_wait(Duration::from_millis(10)).1,
            "dispatcher.retry.5s"
        );
        assert_eq!(t.for_wait(Duration::from_secs(5)).1, "dispatcher.retry.5s");
        assert_eq!(t.for_wait(Duration::from_secs(6)).1, "dispatcher.retry.30s");
        assert_eq!(
            t.for_wait(Duration::from_secs(4 * 3600)).1,
            "dispatcher.retry.1h",
            "the longest, again and again"
        );
        assert_eq!(
            t.delay_of("dispatcher.retry.2m"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(t.delay_of("events"), None);
    }
}
