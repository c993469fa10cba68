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
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use transports::{Delivery, DeliveryId, Event, SourceRef};

use rdkafka::error::KafkaError;

use crate::dlq::{produce_durably, Attempt, WriteError};
use crate::fatal::Fatal;
use crate::kafka::header_str;
use crate::metrics::Metrics;

/// How far from now a parked record's times may lie before it counts as damaged.
const MAX_SKEW_MS: i64 = 366 * 24 * 3600 * 1000;

/// Attempt records kept in a parked delivery's history (the newest).
const MAX_HISTORY: usize = 20;

/// The internal topics: the retry topics with their delays, shortest first,
/// and the spill topic, where deliveries wait with no delay at all until
/// their endpoint has room (see [`crate::spill`]).
#[derive(Debug, Clone)]
pub struct Tiers {
    tiers: Vec<(Duration, String)>,
    spill: String,
}

impl Tiers {
    pub fn new(base: &str, delays: &[Duration], spill: &str) -> Tiers {
        let mut delays = delays.to_vec();
        delays.sort();
        delays.dedup();
        Tiers {
            spill: spill.to_owned(),
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

    /// The retry topics, shortest delay first.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|(_, t)| t.as_str())
    }

    /// Every internal topic the dispatcher reads back: the spill topic and
    /// the retry topics.
    pub fn internal_topics(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.spill.as_str()).chain(self.topics())
    }

    pub fn spill_topic(&self) -> &str {
        &self.spill
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

    /// The delay of an internal topic (zero for the spill topic), if
    /// `topic` is one.
    pub fn delay_of(&self, topic: &str) -> Option<Duration> {
        if topic == self.spill {
            return Some(Duration::ZERO);
        }
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
    /// Kept for records written by older versions, which parked a paused or
    /// breaker-open endpoint's deliveries again and again with doubling
    /// waits. Nothing reads it any more: such deliveries now wait under
    /// their endpoint's hold, written once. Reset by every attempt.
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
    /// For a spilled fresh delivery: the epoch of its source partition's
    /// assignment that spilled it (see [`crate::offsets::OffsetTracker::returned`]).
    pub source_epoch: Option<u64>,
}

/// Writes parked and spilled deliveries.
pub struct Parker {
    producer: FutureProducer,
    tiers: Arc<Tiers>,
    metrics: Arc<Metrics>,
    fatal: Arc<Fatal>,
}

impl Parker {
    pub fn new(
        producer: FutureProducer,
        tiers: Arc<Tiers>,
        metrics: Arc<Metrics>,
        fatal: Arc<Fatal>,
    ) -> Parker {
        Parker {
            producer,
            tiers,
            metrics,
            fatal,
        }
    }

    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// Park `delivery` to be attempted again after `wait`; returns once the
    /// broker has acknowledged it (retrying until it does). `Refused` when
    /// the retry topic refuses the record (too large): the caller must
    /// dead-letter it instead, or it would be lost. The delivery's own
    /// `not_before_ms` (a receiver's Retry-After) is never undercut.
    pub async fn park(
        &self,
        delivery: &Delivery,
        state: &RetryState,
        wait: Duration,
        reason: &'static str,
    ) -> Result<(), WriteError> {
        let now = chrono::Utc::now().timestamp_millis();
        let (delay, topic) = self.tiers.for_wait(wait);
        let not_before = state.not_before_ms.max(now + wait.as_millis() as i64);
        let headers = record_headers(
            &delivery.endpoint_id,
            delivery.id,
            &delivery.event,
            state,
            reason,
            now + delay.as_millis() as i64,
            not_before,
            now,
            None,
        );
        let key = delivery.id.to_string();
        produce_durably(
            &self.producer,
            topic,
            Some(key.as_bytes()),
            delivery.event.payload(),
            headers.iter().map(|(k, v)| (*k, v.as_slice())),
            &self.metrics.park_write_errors,
            &self.fatal,
        )
        .await?;
        Ok(())
    }

    /// Queue `delivery` for the spill topic without waiting. The record is
    /// keyed by its endpoint and its source partition: what one endpoint
    /// spills from one source partition stays in order in one spill
    /// partition (Kafka's own guarantee, carried over), and a large backlog
    /// spreads over the spill partitions. The returned future resolves with
    /// the broker's answer. `source_epoch`: the source partition's
    /// assignment that read the delivery's record, for a fresh delivery.
    pub fn spill(
        &self,
        endpoint_id: &str,
        id: DeliveryId,
        event: &Event,
        state: &RetryState,
        source_epoch: Option<u64>,
    ) -> Result<DeliveryFuture, KafkaError> {
        let now = chrono::Utc::now().timestamp_millis();
        let headers = record_headers(
            endpoint_id,
            id,
            event,
            state,
            "spill",
            now,
            now,
            now,
            source_epoch,
        );
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in &headers {
            owned = owned.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let key = format!(
            "{endpoint_id}/{}/{}",
            event.source.topic, event.source.partition
        );
        let record = FutureRecord::<[u8], [u8]>::to(self.tiers.spill_topic())
            .key(key.as_bytes())
            .payload(event.payload())
            .headers(owned);
        self.producer.send_result(record).map_err(|(e, _)| e)
    }
}

/// The `park.*` headers that carry a delivery's state in an internal-topic
/// record (whose value is the source record's value, byte for byte).
#[allow(clippy::too_many_arguments)]
fn record_headers(
    endpoint_id: &str,
    id: DeliveryId,
    event: &Event,
    state: &RetryState,
    reason: &'static str,
    due_ms: i64,
    not_before_ms: i64,
    now: i64,
    source_epoch: Option<u64>,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut headers: Vec<(&'static str, Vec<u8>)> = vec![
        ("park.endpoint_id", endpoint_id.as_bytes().to_vec()),
        ("park.delivery_id", id.to_string().into_bytes()),
        ("park.reason", reason.as_bytes().to_vec()),
        ("park.due_ms", due_ms.to_string().into_bytes()),
        ("park.not_before_ms", not_before_ms.to_string().into_bytes()),
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
        (
            "park.event_ms",
            event.timestamp_ms().to_string().into_bytes(),
        ),
        ("park.source.topic", event.source.topic.as_bytes().to_vec()),
        (
            "park.source.partition",
            event.source.partition.to_string().into_bytes(),
        ),
        (
            "park.source.offset",
            event.source.offset.to_string().into_bytes(),
        ),
    ];
    if let Some(tp) = &event.traceparent {
        headers.push(("traceparent", tp.to_vec()));
    }
    // The record's own key is the endpoint id (the partitioner's input); an
    // endpoint ordered by `key` needs the source record's.
    if let Some(key) = &event.record_key {
        headers.push(("park.record_key", key.to_vec()));
    }
    if let Some(epoch) = source_epoch {
        headers.push(("park.source.epoch", epoch.to_string().into_bytes()));
    }
    headers
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
    event.record_key = crate::kafka::header_bytes(msg, "park.record_key")
        .filter(|k| !k.is_empty())
        .map(Bytes::copy_from_slice);
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
        // Absent in records of older versions and in parked retries; a
        // damaged one only costs the check it is for.
        source_epoch: header("park.source.epoch").and_then(|e| e.parse().ok()),
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
    fn a_spilled_delivery_keeps_its_record_key_trace_context_and_source_epoch() {
        use crate::kafka::testing::{keyed_event, read_back};
        let raw = br#"{"event":"message.sent","data":{"contact_id":"c-1"}}"#;
        let mut event = keyed_event(raw);
        event.traceparent = Some(Bytes::from_static(
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ));
        let id = DeliveryId::derive(&event, "ep");
        let now = chrono::Utc::now().timestamp_millis();
        let headers = record_headers(
            "ep",
            id,
            &event,
            &RetryState::default(),
            "spill",
            now,
            now,
            now,
            Some(u64::MAX),
        );
        let msg = read_back("dispatcher.spill", Some(b"ep/events/1"), raw, &headers);
        let parked = parse(&msg, 1 << 20).unwrap();
        assert_eq!(parked.delivery_id, id);
        assert_eq!(parked.event.record_key, event.record_key);
        assert_eq!(parked.event.traceparent, event.traceparent);
        assert_eq!(parked.source_epoch, Some(u64::MAX));

        // Without a key or an epoch (a parked retry), neither is written.
        event.record_key = None;
        let headers = record_headers(
            "ep",
            id,
            &event,
            &RetryState::default(),
            "retry",
            now,
            now,
            now,
            None,
        );
        assert!(headers
            .iter()
            .all(|(k, _)| *k != "park.record_key" && *k != "park.source.epoch"));
    }

    #[test]
    fn waits_round_up_to_a_tier() {
        let t = Tiers::new(
            "dispatcher.retry",
            &[30, 5, 3600, 120, 5].map(Duration::from_secs),
            "dispatcher.spill",
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
        assert_eq!(t.delay_of("dispatcher.spill"), Some(Duration::ZERO));
        assert_eq!(
            t.for_wait(Duration::ZERO).1,
            "dispatcher.retry.5s",
            "a wait never goes to the spill topic"
        );
        assert_eq!(t.internal_topics().count(), 5);
    }
}
