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
//! same way) and are only counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use transports::{Delivery, DeliveryId, Event, SourceRef};

use crate::config::Config;
use crate::dlq::Attempt;
use crate::kafka;
use crate::metrics::Metrics;
use crate::park::{Parker, RetryState, Tiers};

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
    /// Dead letters of records, not deliveries (decode or park stage): not replayable.
    pub undecodable: u64,
    pub by_endpoint: HashMap<String, u64>,
    pub dry_run: bool,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ReplaySummary> {
    let config = Config::load(&args.config)?;
    let k = &config.kafka;
    let bootstrap = args.brokers.clone().or_else(|| k.brokers.clone()).ok_or_else(|| {
        anyhow!("replay needs brokers: the config has no kafka.brokers (an embedded Kafka lives inside its dispatcher); pass --brokers")
    })?;
    let since_ms = args.since.as_deref().map(parse_since).transpose()?;
    if let Some(ep) = &args.endpoint {
        if !config.endpoints.iter().any(|e| &e.id == ep) {
            bail!(
                "--endpoint {ep}: no such endpoint in {}",
                args.config.display()
            );
        }
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{}.replay", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
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

    let metrics = Arc::new(Metrics::new());
    let producer: FutureProducer = kafka::producer(k, &bootstrap, config.pipeline.max_event_bytes)
        .create()
        .context("creating the replay producer")?;
    let fatal = crate::fatal::Fatal::new();
    let parker = Parker::new(
        producer,
        Arc::new(Tiers::new(&k.retry_topic, &k.retry_tiers, &k.spill_topic)),
        metrics,
        fatal,
    );

    let mut summary = ReplaySummary {
        dry_run: args.dry_run,
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
        let header = |name: &str| kafka::header_str(&msg, name);
        if header("dlq.stage") != Some("delivery") {
            summary.undecodable += 1;
            continue;
        }
        let endpoint = header("dlq.endpoint_id").unwrap_or_default().to_owned();
        let event_type = header("dlq.event_type").unwrap_or_default();
        let failed_at_ms = header("dlq.failed_at")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        if args.endpoint.as_ref().is_some_and(|e| *e != endpoint)
            || args.event.as_deref().is_some_and(|e| e != event_type)
            || since_ms.is_some_and(|s| failed_at_ms < s)
        {
            continue;
        }
        summary.matched += 1;
        *summary.by_endpoint.entry(endpoint.clone()).or_default() += 1;
        if args.dry_run {
            continue;
        }
        let Some(id) = header("dlq.delivery_id").and_then(DeliveryId::parse) else {
            tracing::warn!(
                offset = msg.offset(),
                "dead letter without a delivery id; skipped"
            );
            continue;
        };
        let source = SourceRef {
            topic: header("dlq.source.topic").unwrap_or_default().into(),
            partition: header("dlq.source.partition")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            offset: header("dlq.source.offset")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
        };
        let event_ms = header("dlq.event_ms").and_then(|t| t.parse().ok());
        let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
        let mut event = match Event::decode(
            payload,
            source,
            event_ms,
            config.pipeline.max_event_bytes,
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(offset = msg.offset(), error = %e, "dead letter's value does not decode; skipped");
                continue;
            }
        };
        event.traceparent = header("traceparent").map(|t| Bytes::copy_from_slice(t.as_bytes()));
        let history: Vec<Attempt> = header("dlq.attempts")
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or_default();
        let mut delivery = Delivery::new(Arc::new(event), endpoint.as_str().into());
        delivery.id = id;
        let state = RetryState {
            attempts: 0,
            first_attempt_ms: None,
            not_before_ms: 0,
            idle_parks: 0,
            history,
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

/// `--since`: an RFC 3339 time, or a duration meaning that long ago.
fn parse_since(text: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| anyhow!("--since {text:?}: not an RFC 3339 time nor a duration like 2h"))?;
    Ok(chrono::Utc::now().timestamp_millis() - ago.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_durations() {
        assert_eq!(
            parse_since("2026-05-16T12:00:00Z").unwrap(),
            1_778_932_800_000
        );
        let two_hours_ago = parse_since("2h").unwrap();
        let expected = chrono::Utc::now().timestamp_millis() - 7_200_000;
        assert!((two_hours_ago - expected).abs() < 5_000);
        assert!(parse_since("yesterday-ish").is_err());
    }
}
