//! The dispatcher's own topics: the dead-letter topic, the retry tiers, the
//! spill topic and the endpoints topic. `dispatcher topics create|check`
//! creates or checks them through Kafka's admin API, and so does start-up
//! when `kafka.create_topics` is on (the default, as Kafka Connect and
//! Kafka Streams do for theirs). The source topics are the producers'
//! business: the dispatcher never creates them.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;

use crate::config::Config;
use crate::park::Tiers;

/// `kafka.internal_topics`: how the dispatcher creates its own topics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    /// Partitions of the dead-letter topic, the retry tiers and the
    /// endpoints topic.
    pub partitions: i32,
    /// Partitions of the spill topic: backlogs spread over them, and each
    /// lagging endpoint that shares one reads it once more.
    pub spill_partitions: i32,
    /// Replicas of each partition; -1 takes the broker's default.
    pub replication_factor: i32,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            partitions: 6,
            spill_partitions: 24,
            replication_factor: -1,
        }
    }
}

/// One of the dispatcher's own topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnTopic {
    pub name: String,
    pub partitions: i32,
    /// Compacted (the endpoints topic): only the newest record of a key
    /// matters.
    pub compacted: bool,
    /// What it is for, and the config key that names it.
    pub role: &'static str,
}

/// Every topic the dispatcher writes and expects to exist.
pub fn own_topics(config: &Config) -> Vec<OwnTopic> {
    let k = &config.kafka;
    let s = &k.internal_topics;
    let tiers = Tiers::new(&k.retry_topic, &k.retry_tiers, &k.spill_topic);
    let mut topics = vec![
        OwnTopic {
            name: k.dead_letter_topic.clone(),
            partitions: s.partitions,
            compacted: false,
            role: "kafka.dead_letter_topic",
        },
        OwnTopic {
            name: k.spill_topic.clone(),
            partitions: s.spill_partitions,
            compacted: false,
            role: "kafka.spill_topic",
        },
        OwnTopic {
            name: k.endpoints_topic.clone(),
            partitions: s.partitions,
            compacted: true,
            role: "kafka.endpoints_topic",
        },
    ];
    topics.extend(tiers.topics().map(|t| OwnTopic {
        name: t.to_owned(),
        partitions: s.partitions,
        compacted: false,
        role: "kafka.retry_topic (with kafka.retry_tiers)",
    }));
    topics
}

fn admin(config: &Config, bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    crate::kafka::admin(&config.kafka, bootstrap)
        .create()
        .context("creating a Kafka admin client (check kafka.options)")
}

/// The names of the cluster's topics (one blocking metadata request, off
/// the runtime, with a client of its own).
async fn existing(config: &Config, bootstrap: &str) -> anyhow::Result<rdkafka::metadata::Metadata> {
    let client_config = crate::kafka::admin(&config.kafka, bootstrap);
    tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        let client: rdkafka::producer::BaseProducer = client_config.create()?;
        client
            .client()
            .fetch_metadata(None, Duration::from_secs(15))
    })
    .await?
    .context("reading the cluster's metadata (are the brokers reachable?)")
}

/// Create whichever of the dispatcher's topics do not exist yet; returns
/// the names it created. Asks the cluster to create only what is missing,
/// so a cluster that has them all needs no `CreateTopics` permission.
pub async fn create_missing(config: &Config, bootstrap: &str) -> anyhow::Result<Vec<String>> {
    let metadata = existing(config, bootstrap).await?;
    let wanted: Vec<OwnTopic> = own_topics(config)
        .into_iter()
        .filter(|t| {
            !metadata
                .topics()
                .iter()
                .any(|m| m.name() == t.name && m.error().is_none())
        })
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let admin = admin(config, bootstrap)?;
    let replication = config.kafka.internal_topics.replication_factor;
    let new: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|t| {
            let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication));
            if t.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results =
        tokio::time::timeout(Duration::from_secs(45), admin.create_topics(&new, &options))
            .await
            .map_err(|_| anyhow::anyhow!("creating the dispatcher's topics timed out"))?
            .context("creating the dispatcher's topics")?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                let role = wanted
                    .iter()
                    .find(|t| t.name == name)
                    .map_or("", |t| t.role);
                anyhow::bail!("{role}: cannot create topic `{name}`: {code}");
            }
        }
    }
    Ok(created)
}

/// What is wrong with the dispatcher's topics, one line each (empty: all
/// is well).
pub async fn check(config: &Config, bootstrap: &str) -> anyhow::Result<Vec<String>> {
    let admin = admin(config, bootstrap)?;
    let wanted = own_topics(config);
    let mut problems = Vec::new();
    let metadata = existing(config, bootstrap).await?;
    for t in &wanted {
        match metadata.topics().iter().find(|m| m.name() == t.name) {
            None => problems.push(format!("{}: topic `{}` does not exist", t.role, t.name)),
            Some(m) if m.error().is_some() => problems.push(format!(
                "{}: topic `{}` is not usable: {:?}",
                t.role,
                t.name,
                m.error()
            )),
            Some(_) => {}
        }
    }
    let compacted: Vec<&OwnTopic> = wanted
        .iter()
        .filter(|t| t.compacted && !problems.iter().any(|p| p.contains(&t.name)))
        .collect();
    if !compacted.is_empty() {
        let specs: Vec<ResourceSpecifier<'_>> = compacted
            .iter()
            .map(|t| ResourceSpecifier::Topic(&t.name))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
        match admin.describe_configs(&specs, &options).await {
            Ok(results) => {
                for (t, result) in compacted.iter().zip(results) {
                    let policy = result
                        .ok()
                        .and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()));
                    if let Some(policy) = policy {
                        if !policy.split(',').any(|p| p.trim() == "compact") {
                            problems.push(format!(
                                "{}: topic `{}` has cleanup.policy={policy}; it must be compacted",
                                t.role, t.name
                            ));
                        }
                    }
                }
            }
            // Not every Kafka-compatible broker describes configs: say so,
            // but do not call the topics wrong for it.
            Err(e) => tracing::warn!(error = %e, "cannot read the endpoints topic's configuration"),
        }
    }
    Ok(problems)
}
