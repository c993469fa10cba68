//! The dead-letter topic: where records and deliveries go when they cannot
//! be delivered, with the reason and enough context to replay them.
//!
//! A dead letter's value is always the source record's value, byte for byte;
//! everything else travels in `dlq.*` headers (see `docs/architecture.md`).
//! A write counts as final only once the broker acknowledged it; until then
//! it is retried, because the source offset behind it waits for it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use transports::{model::format_rfc3339_ms, Delivery, EventError, SourceRef};

use crate::fatal::Fatal;
use crate::kafka::{classify, Severity};
use crate::metrics::Metrics;

/// What is kept of a dead letter's value when the topic refuses the whole
/// record as too large; the original stays in the source topic.
const TRUNCATED_VALUE_BYTES: usize = 64 * 1024;

/// One send attempt, as recorded in the `dlq.attempts` header.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Attempt {
    /// RFC 3339 time the attempt started.
    pub at: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub result: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A record ready to be written to the dead-letter topic.
pub struct DeadLetter {
    key: Option<Bytes>,
    value: Bytes,
    headers: Vec<(Cow<'static, str>, Vec<u8>)>,
    /// Set once the value had to be cut to fit the topic.
    original_len: Option<usize>,
    stage: &'static str,
    reason: &'static str,
}

impl DeadLetter {
    /// Bytes of its value (what it holds in memory until written).
    pub fn len(&self) -> usize {
        self.value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// A record that could not be decoded. Its original headers are kept.
    pub fn invalid_record(
        source: &SourceRef,
        key: Option<Bytes>,
        value: Bytes,
        original_headers: Vec<(String, Vec<u8>)>,
        error: &EventError,
    ) -> DeadLetter {
        let message = error.to_string();
        DeadLetter::unreadable(
            source,
            key,
            value,
            original_headers,
            "decode",
            error.code(),
            &message,
        )
    }

    /// A record that cannot be processed at `stage` (decode, or a parked
    /// record that is damaged or names an endpoint no longer configured).
    pub fn unreadable(
        source: &SourceRef,
        key: Option<Bytes>,
        value: Bytes,
        original_headers: Vec<(String, Vec<u8>)>,
        stage: &'static str,
        reason: &'static str,
        error: &str,
    ) -> DeadLetter {
        let mut headers = common_headers(source, stage, reason);
        headers.push(("dlq.error".into(), error.as_bytes().to_vec()));
        headers.extend(
            original_headers
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k), v)),
        );
        DeadLetter {
            key,
            value,
            headers,
            original_len: None,
            stage,
            reason,
        }
    }

    /// A delivery that will not succeed: permanent failure or retries spent.
    /// `sent` is what the transport rendered and the receiver refused, when
    /// that differs from the envelope (a Slack message).
    pub fn failed_delivery(
        delivery: &Delivery,
        reason: &'static str,
        error: &str,
        attempts: &[Attempt],
        sent: Option<&[u8]>,
    ) -> DeadLetter {
        let ev = &delivery.event;
        let mut headers = common_headers(&ev.source, "delivery", reason);
        headers.push(("dlq.error".into(), error.as_bytes().to_vec()));
        headers.push((
            "dlq.endpoint_id".into(),
            delivery.endpoint_id.as_bytes().to_vec(),
        ));
        headers.push((
            "dlq.delivery_id".into(),
            delivery.id.to_string().into_bytes(),
        ));
        headers.push(("dlq.event_type".into(), ev.event_type().as_bytes().to_vec()));
        // Replay re-decodes the value; an event without its own timestamp
        // must get back the one it had.
        headers.push((
            "dlq.event_ms".into(),
            ev.timestamp_ms().to_string().into_bytes(),
        ));
        headers.push((
            "dlq.attempts".into(),
            serde_json::to_vec(attempts).unwrap_or_default(),
        ));
        if let Some(sent) = sent {
            headers.push(("dlq.sent".into(), sent.to_vec()));
        }
        if let Some(tp) = &ev.traceparent {
            headers.push(("traceparent".into(), tp.to_vec()));
        }
        // Keyed by the delivery id; a replay to an endpoint ordered by `key`
        // needs the source record's.
        if let Some(key) = &ev.record_key {
            headers.push(("dlq.record_key".into(), key.to_vec()));
        }
        DeadLetter {
            key: Some(Bytes::from(delivery.id.to_string())),
            value: ev.payload().clone(),
            headers,
            original_len: None,
            stage: "delivery",
            reason,
        }
    }
}

fn common_headers(
    source: &SourceRef,
    stage: &'static str,
    reason: &'static str,
) -> Vec<(Cow<'static, str>, Vec<u8>)> {
    let now = format_rfc3339_ms(chrono::Utc::now().timestamp_millis());
    vec![
        ("dlq.stage".into(), stage.as_bytes().to_vec()),
        ("dlq.reason".into(), reason.as_bytes().to_vec()),
        ("dlq.source.topic".into(), source.topic.as_bytes().to_vec()),
        (
            "dlq.source.partition".into(),
            source.partition.to_string().into_bytes(),
        ),
        (
            "dlq.source.offset".into(),
            source.offset.to_string().into_bytes(),
        ),
        ("dlq.failed_at".into(), now.into_bytes()),
    ]
}

/// Writer of dead letters; cheap to share.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    metrics: Arc<Metrics>,
    fatal: Arc<Fatal>,
}

/// A write that will not happen: the process is stopping (the reason went
/// to [`Fatal`]). Whatever waited for the write stays unfinished, so its
/// record is read again after the restart.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the dispatcher is stopping")]
pub struct Stopping;

impl DeadLetters {
    pub fn new(
        producer: FutureProducer,
        topic: String,
        metrics: Arc<Metrics>,
        fatal: Arc<Fatal>,
    ) -> DeadLetters {
        DeadLetters {
            producer,
            topic,
            metrics,
            fatal,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Write `letter` and wait for the broker's acknowledgement, retrying
    /// for as long as it takes. Only a refusal for size changes the record:
    /// its value is cut, and marked so. `Err` when the dead-letter topic
    /// refuses us for good: the process stops.
    pub async fn write(&self, mut letter: DeadLetter) -> Result<(), Stopping> {
        loop {
            let original_len = letter.original_len.map(|n| n.to_string());
            let truncated = original_len
                .as_deref()
                .map(|n| ("dlq.truncated_from_bytes", n.as_bytes()));
            let headers = letter
                .headers
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_slice()))
                .chain(truncated);
            match produce_durably(
                &self.producer,
                &self.topic,
                letter.key.as_deref(),
                &letter.value,
                headers,
                &self.metrics.dead_letter_errors,
                &self.fatal,
            )
            .await
            {
                Ok(()) => {
                    self.metrics
                        .dead_letters
                        .with_label_values(&[letter.stage, letter.reason])
                        .inc();
                    return Ok(());
                }
                Err(WriteError::Fatal(_)) => return Err(Stopping),
                Err(WriteError::Refused(e))
                    if e.rdkafka_error_code() != Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
                {
                    self.fatal.trip(format!(
                        "the dead-letter topic `{}` refuses a record for good: {e}",
                        self.topic
                    ));
                    return Err(Stopping);
                }
                Err(WriteError::Refused(_)) => {
                    // Too large for the topic. Keep as much of the head as it
                    // takes, down to nothing: the headers alone still say what
                    // and where it was, and the original stays in the source.
                    let original = letter.original_len.unwrap_or(letter.value.len());
                    let keep = match letter.value.len() {
                        0 => {
                            // Even without a value: the headers themselves are
                            // too large (a record's own, a rendered payload,
                            // a long record key). Keep only the dispatcher's
                            // short ones.
                            tracing::error!(topic = %self.topic, "dead letter refused as too large without a value; keeping only its dlq.* headers");
                            letter
                                .headers
                                .retain(|(k, v)| k.starts_with("dlq.") && v.len() <= 4096);
                            0
                        }
                        n if n > TRUNCATED_VALUE_BYTES => TRUNCATED_VALUE_BYTES,
                        n if n > 1024 => n / 4,
                        _ => 0,
                    };
                    tracing::warn!(
                        topic = %self.topic,
                        size = original,
                        keep,
                        "dead letter too large for the topic; keeping only the head of its value"
                    );
                    letter.original_len = Some(original);
                    letter.value = letter.value.slice(..keep);
                }
            }
        }
    }
}

/// Why [`produce_durably`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The topic refuses this one record for good (too large, invalid):
    /// the caller writes it elsewhere or cuts it.
    #[error("the topic refuses the record: {0}")]
    Refused(KafkaError),
    /// Kafka refuses us for good (authorization, a deleted topic, a fatal
    /// producer error): reported to [`Fatal`], the process stops.
    #[error("stopping: {0}")]
    Fatal(KafkaError),
}

/// Produce one record and wait for the broker's acknowledgement, retrying
/// transient failures with a capped backoff for as long as it takes,
/// because a source offset waits behind it. What no retry can fix is
/// returned (see [`WriteError`]).
#[allow(clippy::too_many_arguments)]
pub async fn produce_durably<'h>(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: impl Iterator<Item = (&'h str, &'h [u8])> + Clone,
    errors: &prometheus::IntCounter,
    fatal: &Fatal,
) -> Result<(), WriteError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers.clone() {
            owned = owned.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(value)
            .headers(owned);
        if let Some(k) = key {
            record = record.key(k);
        }
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => return Ok(()),
            Err((e, _)) => match classify(&e) {
                Severity::Permanent => return Err(WriteError::Refused(e)),
                Severity::Fatal => {
                    fatal.trip(format!("writing to `{topic}` failed for good: {e}"));
                    return Err(WriteError::Fatal(e));
                }
                Severity::Transient => {
                    errors.inc();
                    tracing::error!(topic, error = %e, "writing to Kafka failed; retrying");
                    if fatal.is_tripped() {
                        return Err(WriteError::Fatal(e));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::testing::{keyed_event, read_back};
    use transports::DeliveryId;

    #[test]
    fn a_delivery_dead_letter_keeps_the_record_key_for_replay() {
        let event = keyed_event(br#"{"event":"message.read","data":{"contact_id":"c-1"}}"#);
        let delivery = Delivery {
            id: DeliveryId::derive(&event, "ep"),
            event: Arc::new(event),
            endpoint_id: "ep".into(),
            body: Bytes::new(),
            attempt: 3,
        };
        let letter = DeadLetter::failed_delivery(&delivery, "expired", "HTTP 503", &[], None);
        let msg = read_back(
            "dispatcher.dlq",
            letter.key.as_deref(),
            &letter.value,
            &letter.headers,
        );
        let replayable = crate::replay::read_dead_letter(&msg, 1 << 20).unwrap();
        assert_eq!(replayable.delivery_id, delivery.id);
        assert_eq!(
            replayable.event.record_key, delivery.event.record_key,
            "an endpoint ordered by `key` orders the replayed delivery by it"
        );
    }
}
