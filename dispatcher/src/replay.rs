//! `dispatcher replay`: put dead-lettered deliveries back on their way.
//!
//! Replay reads the dead-letter topic up to where it ended when replay
//! started, picks the deliveries that match the filters, and parks each one,
//! due at once, in the shortest retry topic, with its original delivery id
//! and attempt history. The running dispatchers then deliver them like any
//! parked delivery: signed afresh, rate-limited, breaker-guarded. Replaying
//! twice (or after a crash mid-replay) sends duplicates under the same
//! delivery id, which receivers can drop.
//!
//! Records that failed to *decode* are not replayable (they would fail the
//! same way) and are only counted, as are damaged parked records. A parked
//! delivery dead-lettered because its endpoint was no longer configured
//! (`unknown_endpoint`) or deleted (`endpoint_deleted`) is a delivery all
//! the same: its `park.*` headers say which, and it is replayed once its
//! endpoint exists again. Replay sends nothing to an endpoint that neither
//! the config nor the endpoint store has (or that is disabled): the
//! dispatchers would only dead-letter it again.
//!
//! The command replays what the filters pick; the management API's
//! `POST /v1/endpoints/{id}/replay` does the same for one endpoint, with
//! the running dispatcher's own producer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::HashSet;
use transports::{Delivery, DeliveryId, Event, SourceRef};

use crate::config::{Config, KafkaConfig};
use crate::dlq::Attempt;
use crate::kafka;
use crate::metrics::Metrics;
use crate::park::{Parker, RetryState, Tiers};
use crate::store::{Follower, Store};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The dispatcher's config file (brokers, topics, endpoints).
    #[arg(long, short)]
    pub config: std::path::PathBuf,
    /// Only deliveries to this endpoint.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Only deliveries dead-lettered at or after this time: RFC 3339
    /// (`2026-05-16T12:00:00Z`) or a duration ago (`2h`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only deliveries dead-lettered before this time: RFC 3339 or a
    /// duration ago (`30m`).
    #[arg(long)]
    pub until: Option<String>,
    /// Only events of this type.
    #[arg(long)]
    pub event: Option<String>,
    /// Say what would be replayed, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Use these brokers instead of the config's `kafka.brokers`.
    #[arg(long)]
    pub brokers: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct ReplaySummary {
    pub scanned: u64,
    pub matched: u64,
    pub replayed: u64,
    /// Refused by the retry topic (too large): still only in the dead-letter topic.
    pub failed: u64,
    /// Dead letters of records, not deliveries (decode failures, damaged
    /// parked records), or whose value no longer decodes: not replayable.
    pub undecodable: u64,
    /// Matched, but for an endpoint that neither the config nor the
    /// endpoint store has (or that is disabled): left in the dead-letter
    /// topic until it exists again.
    pub not_configured: u64,
    pub by_endpoint: HashMap<String, u64>,
    pub dry_run: bool,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    /// Only deliveries to this endpoint.
    pub endpoint: Option<String>,
    /// Only those dead-lettered at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only those dead-lettered before this time (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Only events of this type.
    pub event: Option<String>,
    /// Count, change nothing.
    pub dry_run: bool,
}

/// The endpoints a replayed delivery can go to: the enabled endpoints of
/// the config file, and the endpoints of the store that the file does not
/// have (the store's records of file endpoints hold only their state). The
/// dispatchers dead-letter a delivery for any other endpoint at once.
pub fn replayable_endpoints(config: &Config, store: &Store) -> HashSet<String> {
    let in_file: HashSet<&str> = config.endpoints.iter().map(|e| e.id.as_str()).collect();
    let mut known: HashSet<String> = config
        .endpoints
        .iter()
        .filter(|e| e.enabled)
        .map(|e| e.id.clone())
        .collect();
    known.extend(
        store
            .list()
            .into_iter()
            .filter(|(id, stored)| {
                !in_file.contains(id.as_str())
                    && stored.endpoint.get("enabled") != Some(&serde_json::Value::Bool(false))
            })
            .map(|(id, _)| id),
    );
    known
}

/// `dispatcher replay`: read the config and the endpoint store, then replay.
pub async fn run(args: ReplayArgs) -> anyhow::Result<ReplaySummary> {
    let config = Config::load(&args.config)?;
    let k = &config.kafka;
    let bootstrap = args.brokers.clone().or_else(|| k.brokers.clone()).ok_or_else(|| {
        anyhow!("replay needs brokers: the config has no kafka.brokers (an embedded Kafka lives inside its dispatcher); pass --brokers")
    })?;
    let filter = ReplayFilter {
        endpoint: args.endpoint.clone(),
        since_ms: args
            .since
            .as_deref()
            .map(|t| parse_time(t).map_err(|e| anyhow!("--since {e}")))
            .transpose()?,
        until_ms: args
            .until
            .as_deref()
            .map(|t| parse_time(t).map_err(|e| anyhow!("--until {e}")))
            .transpose()?,
        event: args.event.clone(),
        dry_run: args.dry_run,
    };
    let producer: FutureProducer = kafka::producer(k, &bootstrap, config.pipeline.max_event_bytes)
        .create()
        .context("creating the replay producer")?;

    // Endpoints created through the API live in the store: read it all.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (store, _changes) = Store::new(
        k.endpoints_topic.clone(),
        producer.clone(),
        prometheus::IntCounter::new("replay_store_bad_records", "unused").expect("a valid name"),
    );
    let follower = Follower::start(
        store.clone(),
        kafka::reader(k, &bootstrap, "replay-store"),
        stop_rx,
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(300), store.caught_up())
        .await
        .map_err(|_| {
            anyhow!(
                "the endpoints topic `{}` was not read within 5 minutes",
                k.endpoints_topic
            )
        })?;
    let known = replayable_endpoints(&config, &store);
    let _ = stop.send(true);
    let _ = follower.await;
    if let Some(ep) = &args.endpoint {
        let anywhere = config.endpoints.iter().any(|e| &e.id == ep) || store.get(ep).is_some();
        if !anywhere {
            bail!(
                "--endpoint {ep}: no such endpoint in {} nor in the endpoint store",
                args.config.display()
            );
        }
    }

    let parker = Parker::new(
        producer,
        Arc::new(Tiers::new(&k.retry_topic, &k.retry_tiers, &k.spill_topic)),
        Arc::new(Metrics::new()),
        crate::fatal::Fatal::new(),
    );
    replay(
        k,
        &bootstrap,
        config.pipeline.max_event_bytes,
        &filter,
        &|id| known.contains(id),
        &parker,
    )
    .await
}

/// Replay the dead letters that match `filter` to the endpoints `known`
/// accepts, parking them with `parker`. Reads the dead-letter topic up to
/// where it ended when this started.
pub async fn replay(
    k: &KafkaConfig,
    bootstrap: &str,
    max_event_bytes: usize,
    filter: &ReplayFilter,
    known: &(dyn Fn(&str) -> bool + Sync),
    parker: &Parker,
) -> anyhow::Result<ReplaySummary> {
    // The dispatcher's own client settings (credentials, TLS) apply.
    let consumer: BaseConsumer = kafka::reader(k, bootstrap, "replay")
        .create()
        .context("creating the replay reader")?;
    let topic = k.dead_letter_topic.clone();
    let (consumer, ends) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(15))
            .with_context(|| format!("reading metadata of {topic}"))?;
        let partitions: Vec<i32> = md
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            bail!("kafka.dead_letter_topic: topic `{topic}` does not exist");
        }
        let mut ends = HashMap::new();
        let mut list = TopicPartitionList::new();
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(15))
                .with_context(|| format!("reading the end of {topic}/{p}"))?;
            if high > low {
                ends.insert(p, high);
                list.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
        }
        consumer.assign(&list)?;
        Ok((consumer, ends))
    })
    .await??;

    let mut summary = ReplaySummary {
        dry_run: filter.dry_run,
        ..Default::default()
    };
    let mut remaining = ends.clone();
    let consumer = Arc::new(consumer);
    while !remaining.is_empty() {
        let c = consumer.clone();
        let msg = tokio::task::spawn_blocking(move || {
            c.poll(Duration::from_secs(5))
                .map(|m| m.map(|m| m.detach()))
        })
        .await?;
        let msg = match msg {
            None => bail!("the dead-letter topic stopped answering before replay reached its end"),
            Some(m) => m.context("reading the dead-letter topic")?,
        };
        // Only what was there when replay started: a replayed delivery that
        // fails again at once lands behind that end, and must not be replayed
        // again in the same run.
        if ends
            .get(&msg.partition())
            .is_none_or(|end| msg.offset() >= *end)
        {
            continue;
        }
        if let Some(end) = remaining.get(&msg.partition()) {
            if msg.offset() + 1 >= *end {
                remaining.remove(&msg.partition());
            }
        }
        summary.scanned += 1;
        let letter = match read_dead_letter(&msg, max_event_bytes) {
            Ok(letter) => letter,
            Err(NotReplayable::Record) => {
                summary.undecodable += 1;
                continue;
            }
            Err(NotReplayable::Damaged(why)) => {
                tracing::warn!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    error = %why,
                    "dead letter not replayable"
                );
                summary.undecodable += 1;
                continue;
            }
        };
        let failed_at = letter.failed_at_ms.unwrap_or(0);
        if filter
            .endpoint
            .as_ref()
            .is_some_and(|e| *e != letter.endpoint_id)
            || filter
                .event
                .as_deref()
                .is_some_and(|e| e != letter.event.event_type())
            || filter.since_ms.is_some_and(|s| failed_at < s)
            || filter.until_ms.is_some_and(|u| failed_at >= u)
        {
            continue;
        }
        summary.matched += 1;
        if !known(letter.endpoint_id.as_str()) {
            summary.not_configured += 1;
            continue;
        }
        *summary
            .by_endpoint
            .entry(letter.endpoint_id.clone())
            .or_default() += 1;
        if filter.dry_run {
            continue;
        }
        let id = letter.delivery_id;
        let mut delivery =
            Delivery::new(Arc::new(letter.event), letter.endpoint_id.as_str().into());
        delivery.id = id;
        let state = RetryState {
            attempts: 0,
            first_attempt_ms: None,
            not_before_ms: 0,
            idle_parks: 0,
            history: letter.history,
        };
        match parker
            .park(&delivery, &state, Duration::ZERO, "replay")
            .await
        {
            Ok(()) => summary.replayed += 1,
            Err(crate::dlq::WriteError::Refused(e)) => {
                tracing::error!(delivery_id = %id, error = %e, "the retry topic refused a replayed delivery");
                summary.failed += 1;
            }
            Err(crate::dlq::WriteError::Fatal(e)) => {
                return Err(anyhow::anyhow!(
                    "replay stopped: writing to the retry topics failed for good: {e}"
                ));
            }
        }
    }
    Ok(summary)
}

/// A dead letter that can be put back on its way: one delivery.
#[derive(Debug)]
pub struct ReplayableLetter {
    pub endpoint_id: String,
    pub delivery_id: DeliveryId,
    /// The event, decoded again from the dead letter's value.
    pub event: Event,
    /// The attempts made before it was dead-lettered.
    pub history: Vec<Attempt>,
    /// `dlq.failed_at`, when present and readable (ms since the epoch).
    pub failed_at_ms: Option<i64>,
}

/// Why a dead letter is not replayed.
#[derive(Debug, PartialEq, Eq)]
pub enum NotReplayable {
    /// A record that never became a delivery: a decode failure, or a
    /// damaged parked record.
    Record,
    /// A delivery's dead letter whose headers or value cannot be used; says why.
    Damaged(String),
}

/// Read a dead letter's headers and value: the delivery it holds, if any.
///
/// Stage `delivery` letters carry the delivery in `dlq.*` headers. A parked
/// delivery dead-lettered as `unknown_endpoint` or `endpoint_deleted` keeps
/// the `park.*` headers it was parked with, which say the same.
pub fn read_dead_letter<M: Message>(
    msg: &M,
    max_event_bytes: usize,
) -> Result<ReplayableLetter, NotReplayable> {
    let header = |name: &str| kafka::header_str(msg, name);
    // The names of the delivery's own headers, by stage.
    let (prefix, history_header) = match (header("dlq.stage"), header("dlq.reason")) {
        (Some("delivery"), _) => ("dlq", "dlq.attempts"),
        (Some("park"), Some("unknown_endpoint" | "endpoint_deleted")) => ("park", "park.history"),
        _ => return Err(NotReplayable::Record),
    };
    let named = |field: &str| header(&format!("{prefix}.{field}"));
    let need = |field: &str| {
        named(field).ok_or_else(|| NotReplayable::Damaged(format!("no {prefix}.{field} header")))
    };
    let endpoint_id = need("endpoint_id")?.to_owned();
    let delivery_id = DeliveryId::parse(need("delivery_id")?).ok_or_else(|| {
        NotReplayable::Damaged(format!("{prefix}.delivery_id is not a delivery id"))
    })?;
    let source = SourceRef {
        topic: named("source.topic").unwrap_or_default().into(),
        partition: named("source.partition")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
        offset: named("source.offset")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0),
    };
    let event_ms = named("event_ms").and_then(|t| t.parse().ok());
    let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
    let mut event = Event::decode(payload, source, event_ms, max_event_bytes)
        .map_err(|e| NotReplayable::Damaged(format!("the value does not decode: {e}")))?;
    event.traceparent = header("traceparent").map(|t| Bytes::copy_from_slice(t.as_bytes()));
    event.record_key = kafka::header_bytes(msg, &format!("{prefix}.record_key"))
        .filter(|k| !k.is_empty())
        .map(Bytes::copy_from_slice);
    let history = header(history_header)
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    let failed_at_ms = header("dlq.failed_at")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    Ok(ReplayableLetter {
        endpoint_id,
        delivery_id,
        event,
        history,
        failed_at_ms,
    })
}

/// `--since`, `--until` (and the API's `since`, `until`): an RFC 3339
/// time, or a duration meaning that long ago; ms since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!(
            "{:?}: not an RFC 3339 time nor a duration like 2h",
            text.chars().take(64).collect::<String>()
        )
    })?;
    let ago_ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    Ok(chrono::Utc::now().timestamp_millis().saturating_sub(ago_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
    use rdkafka::Timestamp;

    const ID: &str = "6b1f3c52-9e0d-5a8b-9347-2d61c50e7f18";
    const EVENT: &[u8] = br#"{"event":"contact.created","data":{"name":"Ann"}}"#;

    fn letter(headers: &[(&str, &str)], value: &[u8]) -> OwnedMessage {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        });
        OwnedMessage::new(
            Some(value.to_vec()),
            None,
            "dispatcher.dlq".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        )
    }

    #[test]
    fn delivery_dead_letters_are_read_from_their_dlq_headers() {
        let msg = letter(
            &[
                ("dlq.stage", "delivery"),
                ("dlq.reason", "retries_exhausted"),
                ("dlq.source.topic", "events"),
                ("dlq.source.partition", "3"),
                ("dlq.source.offset", "42"),
                ("dlq.failed_at", "2026-05-16T12:00:00.000Z"),
                ("dlq.endpoint_id", "acme"),
                ("dlq.delivery_id", ID),
                ("dlq.event_ms", "1778932000000"),
                ("dlq.record_key", "c-7"),
                (
                    "dlq.attempts",
                    r#"[{"at":"2026-05-16T11:59:00.000Z","duration_ms":3,"status":503,"result":"retry"}]"#,
                ),
            ],
            EVENT,
        );
        let l = read_dead_letter(&msg, 1 << 20).unwrap();
        assert_eq!(l.endpoint_id, "acme");
        assert_eq!(l.delivery_id.to_string(), ID);
        assert_eq!(l.event.event_type(), "contact.created");
        assert_eq!(l.event.timestamp_ms(), 1_778_932_000_000);
        assert_eq!(&*l.event.source.topic, "events");
        assert_eq!((l.event.source.partition, l.event.source.offset), (3, 42));
        assert_eq!(l.history.len(), 1);
        assert_eq!(l.failed_at_ms, Some(1_778_932_800_000));
        assert_eq!(l.event.record_key.as_deref(), Some(&b"c-7"[..]));
    }

    #[test]
    fn unknown_endpoint_dead_letters_are_read_from_their_park_headers() {
        let msg = letter(
            &[
                ("dlq.stage", "park"),
                ("dlq.reason", "unknown_endpoint"),
                ("dlq.source.topic", "dispatcher.retry.5s"),
                ("dlq.failed_at", "2026-05-16T12:00:00.000Z"),
                ("park.endpoint_id", "gone"),
                ("park.delivery_id", ID),
                ("park.event_ms", "1778932000000"),
                ("park.source.topic", "events"),
                ("park.source.partition", "1"),
                ("park.source.offset", "9"),
                ("park.history", "[]"),
            ],
            EVENT,
        );
        let l = read_dead_letter(&msg, 1 << 20).unwrap();
        assert_eq!(l.endpoint_id, "gone");
        assert_eq!(l.delivery_id.to_string(), ID);
        // The original record, not the retry topic, as with any delivery.
        assert_eq!(&*l.event.source.topic, "events");
        assert_eq!(l.event.record_key, None, "it had none");
        assert_eq!((l.event.source.partition, l.event.source.offset), (1, 9));
    }

    #[test]
    fn records_and_damaged_letters_are_not_replayable() {
        for (stage, reason) in [("decode", "not_json"), ("park", "damaged"), ("", "")] {
            let msg = letter(
                &[
                    ("dlq.stage", stage),
                    ("dlq.reason", reason),
                    ("park.endpoint_id", "ep"),
                    ("park.delivery_id", ID),
                ],
                EVENT,
            );
            assert_eq!(
                read_dead_letter(&msg, 1 << 20).unwrap_err(),
                NotReplayable::Record,
                "{stage}/{reason}"
            );
        }
        let no_id = letter(
            &[("dlq.stage", "delivery"), ("dlq.endpoint_id", "acme")],
            EVENT,
        );
        assert!(matches!(
            read_dead_letter(&no_id, 1 << 20),
            Err(NotReplayable::Damaged(why)) if why.contains("dlq.delivery_id")
        ));
        let cut = letter(
            &[
                ("dlq.stage", "delivery"),
                ("dlq.endpoint_id", "acme"),
                ("dlq.delivery_id", ID),
            ],
            &EVENT[..20],
        );
        assert!(matches!(
            read_dead_letter(&cut, 1 << 20),
            Err(NotReplayable::Damaged(why)) if why.contains("decode")
        ));
    }

    #[test]
    fn times_are_rfc3339_or_durations_ago() {
        assert_eq!(
            parse_time("2026-05-16T12:00:00Z").unwrap(),
            1_778_932_800_000
        );
        let two_hours_ago = parse_time("2h").unwrap();
        let expected = chrono::Utc::now().timestamp_millis() - 7_200_000;
        assert!((two_hours_ago - expected).abs() < 5_000);
        assert!(parse_time("yesterday-ish").is_err());
    }
}
