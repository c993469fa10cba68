//! The Kafka transport: `transport: kafka` produces each delivery as one
//! record to a topic, on the dispatcher's own cluster or another one.
//!
//! This module owns the endpoint's producer (one librdkafka
//! `FutureProducer` per transport instance, so batching and compression
//! happen in librdkafka), its settings ([`KafkaSettings`]), the record
//! layout, and the classification of broker answers into [`Outcome`]s.
//!
//! The record:
//!
//! | part | value |
//! |---|---|
//! | value | the envelope, exactly the body an HTTP endpoint gets |
//! | key | the `key` field of `data` (e.g. `data.contact_id`); the delivery id when no `key` is set or the field is missing or `null` |
//! | header `x-webhook-event` | the event type |
//! | header `x-webhook-delivery-id` | the delivery id |
//! | header `x-webhook-id` | the endpoint id |
//! | header `traceparent` | the event's W3C trace context, when it has one |
//!
//! A delivery is [`Outcome::Delivered`] only once the broker has
//! acknowledged it (`acks=all` unless overridden).
//!
//! Order: sends are handed to librdkafka synchronously inside
//! [`Transport::send`], so sends issued in order are queued in order, and
//! with `enable.idempotence` (the default) librdkafka keeps that order per
//! partition across its own internal retries. Records of one key go to one
//! partition, so one key's records arrive in the order they were sent. What
//! can reorder them is a delivery that *fails* (message timeout, broker
//! error) and is retried by the dispatcher after later ones succeeded; an
//! endpoint that needs strict per-key order even across failures should use
//! `max_in_flight: 1`.

mod key;

pub use key::KeyPath;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::registry::{parse_settings, BuildContext, SettingsError, TransportFactory};
use crate::{BoxFuture, Delivery, Outcome, Transport};

/// Producer settings the transport starts from; `options` override them.
pub const DEFAULT_OPTIONS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
];

/// Longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// `options` the transport sets itself or cannot work with, with a better
/// reason than "not allowed".
const REFUSED_OPTIONS: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `brokers` instead"),
    ("metadata.broker.list", "set `brokers` instead"),
    (
        "transactional.id",
        "transactions are not supported: each delivery is acknowledged on its own",
    ),
];

/// The producer properties an endpoint may set: tuning, and the
/// credentials of another cluster given inline. Everything else is refused,
/// because librdkafka properties reach far beyond producing: some load code
/// (`plugin.library.paths` is `dlopen()`ed as soon as it is set, so even
/// `dispatcher validate` would run it; `ssl.engine.location`), some run a
/// command (`sasl.kerberos.kinit.cmd`), some read local files
/// (`ssl.*.location`) or fetch URLs (`sasl.oauthbearer.token.endpoint.url`),
/// and some turn a guard off (`enable.ssl.certificate.verification`).
pub const ENDPOINT_OPTIONS: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "compression.type",
    "compression.codec",
    "compression.level",
    "linger.ms",
    "queue.buffering.max.ms",
    "batch.size",
    "batch.num.messages",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "request.timeout.ms",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "message.send.max.retries",
    "retries",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "message.max.bytes",
    "partitioner",
    "sticky.partitioning.linger.ms",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
];

/// Allowed options that only some values of are safe: (name, allowed
/// values, compared without case, why).
const RESTRICTED_VALUES: &[(&str, &[&str], &str)] = &[
    (
        "enable.ssl.certificate.verification",
        &["true"],
        "may only be true: an endpoint cannot turn certificate checks off",
    ),
    (
        "ssl.endpoint.identification.algorithm",
        &["https"],
        "may only be https: an endpoint cannot turn host name checks off",
    ),
    (
        "sasl.mechanism",
        &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        "may be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (GSSAPI runs a kinit command, OAUTHBEARER fetches URLs)",
    ),
    (
        "sasl.mechanisms",
        &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        "may be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (GSSAPI runs a kinit command, OAUTHBEARER fetches URLs)",
    ),
];

/// librdkafka properties the dispatcher refuses in its own `kafka.options`
/// too, because setting them runs code or a command: no deployment needs
/// them, and `dispatcher validate` of an untrusted file must stay harmless.
pub const NEVER_ALLOWED_OPTIONS: &[&str] = &[
    "plugin.library.paths",
    "ssl.engine.location",
    "sasl.kerberos.kinit.cmd",
];

/// What a Kafka endpoint may not write to or connect to: the dispatcher's
/// own topics (a delivery produced to the source topic would be read and
/// delivered again, forever; one produced to the dead-letter or a retry
/// topic would be taken for the dispatcher's own), and brokers the operator
/// did not list. Empty (the default), it guards nothing but Kafka's
/// internal `__` topics.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaGuard<'a> {
    /// The source topics.
    pub source_topics: &'a [String],
    /// The dead-letter topic.
    pub dead_letter_topic: &'a str,
    /// The retry topics' base name: every `<retry_topic>.<anything>` is refused.
    pub retry_topic: &'a str,
    /// Further reserved topics (an endpoint store, ...).
    pub other_topics: &'a [String],
    /// `host:port` entries an endpoint's `brokers` may name; `*.domain:port`
    /// matches any host under `domain`. Empty: no endpoint may name brokers.
    pub allowed_brokers: &'a [String],
}

impl KafkaGuard<'_> {
    /// Why `topic` may not be produced to, if it may not.
    pub fn refuse_topic(&self, topic: &str) -> Option<String> {
        if topic.starts_with("__") {
            return Some("is a Kafka internal topic".into());
        }
        if self.source_topics.iter().any(|t| t == topic) {
            return Some(
                "is a source topic of the dispatcher: every delivery would be read and delivered again, without end"
                    .into(),
            );
        }
        if !self.dead_letter_topic.is_empty() && topic == self.dead_letter_topic {
            return Some("is the dispatcher's dead-letter topic".into());
        }
        if !self.retry_topic.is_empty()
            && (topic == self.retry_topic
                || topic
                    .strip_prefix(self.retry_topic)
                    .is_some_and(|rest| rest.starts_with('.')))
        {
            return Some("is one of the dispatcher's retry topics".into());
        }
        if self.other_topics.iter().any(|t| t == topic) {
            return Some("is one of the dispatcher's own topics".into());
        }
        None
    }

    /// Whether the operator allowed `broker` (`host:port`).
    pub fn allows_broker(&self, broker: &str) -> bool {
        let Some((host, port)) = broker.rsplit_once(':') else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.allowed_brokers.iter().any(|entry| {
            let Some((pattern, allowed_port)) = entry.rsplit_once(':') else {
                return false;
            };
            if allowed_port != port {
                return false;
            }
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == pattern,
            }
        })
    }
}

/// librdkafka's aliases, alias first: a user's alias replaces our default
/// under the canonical name (two spellings in one config would be applied
/// in hash order, so either could win).
const ALIASES: &[(&str, &str)] = &[
    ("queue.buffering.max.ms", "linger.ms"),
    ("request.required.acks", "acks"),
    ("compression.codec", "compression.type"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
    ("metadata.broker.list", "bootstrap.servers"),
];

fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, canonical)| canonical)
}

/// Prefixes and names of the dispatcher's `kafka.options` that a Kafka
/// endpoint on the same cluster inherits: what it takes to reach and
/// authenticate to that cluster, not how the dispatcher tunes its clients.
const INHERITED_PREFIXES: &[&str] = &["security.", "sasl.", "ssl.", "ssl_", "socket."];
/// (`enable.ssl.certificate.verification` is not inherited: an endpoint's
/// producer always checks certificates, whatever the dispatcher's own
/// clients were told.)
const INHERITED_NAMES: &[&str] = &[
    "client.dns.lookup",
    "broker.address.family",
    "api.version.request",
    "broker.version.fallback",
    "connections.max.idle.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
];

/// The settings of `transport: kafka`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// The topic every delivery is produced to.
    pub topic: String,
    /// Another cluster's bootstrap servers (a `host:port` string, comma
    /// separated, or a list). Default: the dispatcher's own cluster.
    #[serde(default)]
    pub brokers: Option<Brokers>,
    /// librdkafka producer properties; they override [`DEFAULT_OPTIONS`].
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
    /// The record key: a field path below `data` (`data.contact_id`).
    #[serde(default)]
    pub key: Option<String>,
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Option values may be credentials (sasl.password): names only.
        f.debug_struct("KafkaSettings")
            .field("topic", &self.topic)
            .field("brokers", &self.brokers)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("key", &self.key)
            .finish()
    }
}

/// `brokers`: `"a:9092,b:9092"` or `["a:9092", "b:9092"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokers(pub Vec<String>);

impl<'de> Deserialize<'de> for Brokers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Brokers, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Brokers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a `host:port` string (comma separated) or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Brokers, E> {
                Ok(Brokers(
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                ))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Brokers, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s.trim().to_owned());
                }
                Ok(Brokers(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A librdkafka property value: a string, number or boolean, kept as the
/// text librdkafka takes.
#[derive(Clone, PartialEq, Eq)]
pub struct OptionValue(pub String);

impl fmt::Debug for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[value]")
    }
}

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OptionValue, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = OptionValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OptionValue, E> {
                Ok(OptionValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Everything `build` and `validate` share: the checked settings.
struct Prepared {
    config: ClientConfig,
    topic: String,
    key: Option<KeyPath>,
}

/// Check `settings` and assemble the producer configuration, without
/// creating a client.
fn prepare(
    settings: &serde_json::Value,
    ctx: &BuildContext<'_>,
) -> Result<Prepared, SettingsError> {
    let s: KafkaSettings = parse_settings(settings)?;
    check_topic(&s.topic).map_err(|reason| SettingsError::new("topic", reason))?;
    if let Some(why) = ctx.kafka_guard.refuse_topic(&s.topic) {
        return Err(SettingsError::new("topic", format!("`{}` {why}", s.topic)));
    }
    let key = s
        .key
        .as_deref()
        .map(KeyPath::parse)
        .transpose()
        .map_err(|reason| SettingsError::new("key", reason))?;

    let mut config = ClientConfig::new();
    for (name, value) in DEFAULT_OPTIONS {
        config.set(*name, *value);
    }
    // librdkafka's own give-up time is the endpoint's timeout, so a record
    // that fails is reported before the dispatcher retries it (no copy is
    // left queued behind the retry).
    config.set(
        "message.timeout.ms",
        ctx.timeout.as_millis().max(1).to_string(),
    );
    config.set(
        "client.id",
        format!("webhook-dispatcher-{}", ctx.endpoint_id),
    );

    match &s.brokers {
        Some(Brokers(list)) => {
            if list.is_empty() || list.iter().any(|b| b.is_empty()) {
                return Err(SettingsError::new(
                    "brokers",
                    "list at least one `host:port`, without empty entries",
                ));
            }
            // librdkafka resolves and connects by itself, out of reach of
            // the HTTP transport's address checks: so the operator names
            // the clusters endpoints may reach, and nothing else goes.
            for (i, broker) in list.iter().enumerate() {
                if !ctx.kafka_guard.allows_broker(broker) {
                    let field = match s.brokers.as_ref() {
                        Some(Brokers(l)) if l.len() > 1 => format!("brokers[{i}]"),
                        _ => "brokers".to_owned(),
                    };
                    return Err(SettingsError::new(
                        field,
                        if ctx.kafka_guard.allowed_brokers.is_empty() {
                            "endpoints may not name brokers: the operator lists the clusters they may reach in kafka.allowed_endpoint_brokers".to_owned()
                        } else {
                            format!("`{broker}` is not in kafka.allowed_endpoint_brokers")
                        },
                    ));
                }
            }
            config.set("bootstrap.servers", list.join(","));
        }
        None => {
            if ctx.kafka_bootstrap.is_empty() {
                return Err(SettingsError::new(
                    "brokers",
                    "required: the dispatcher has no Kafka cluster of its own to default to",
                ));
            }
            config.set("bootstrap.servers", ctx.kafka_bootstrap);
            for (name, value) in ctx.kafka_options {
                if is_inherited(name) {
                    config.set(name, value);
                }
            }
        }
    }

    // Canonical property name -> the name the user wrote, for error fields.
    let mut written: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, OptionValue(value)) in &s.options {
        let field = || format!("options.{name}");
        if let Some((_, why)) = REFUSED_OPTIONS.iter().find(|(n, _)| n == name) {
            return Err(SettingsError::new(field(), *why));
        }
        if !ENDPOINT_OPTIONS.contains(&name.as_str()) {
            return Err(SettingsError::new(
                field(),
                "is not an option an endpoint may set: tuning (acks, compression.type, linger.ms, \
                 batch.size, ...) and inline credentials of another cluster (security.protocol, \
                 sasl.*, ssl.*.pem) are; see docs/transports.md",
            ));
        }
        if let Some((_, allowed, why)) = RESTRICTED_VALUES.iter().find(|(n, _, _)| n == name) {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(value.trim())) {
                return Err(SettingsError::new(field(), *why));
            }
        }
        let key = canonical(name);
        if let Some(other) = written.insert(key, name) {
            return Err(SettingsError::new(
                field(),
                format!("is another name for `{other}`, also set: keep one"),
            ));
        }
        if key == "message.timeout.ms" {
            let ms: u64 = value.parse().map_err(|_| {
                SettingsError::new(field(), "must be a whole number of milliseconds")
            })?;
            if ms == 0 || u128::from(ms) > ctx.timeout.as_millis() {
                return Err(SettingsError::new(
                    field(),
                    format!(
                        "must be between 1 and the endpoint's timeout ({} ms): a delivery must \
                         be settled within it; raise the endpoint's `timeout` instead",
                        ctx.timeout.as_millis()
                    ),
                ));
            }
        }
        config.set(key, value);
    }

    check_combination(&config, &written, ctx.timeout)?;

    // librdkafka checks every property name and value here, without
    // creating a client or opening a connection.
    config.create_native_config().map_err(|e| match e {
        KafkaError::ClientConfig(_, description, name, _) => {
            let field = match written.get(name.as_str()) {
                Some(user) => format!("options.{user}"),
                None => "options".to_owned(),
            };
            // librdkafka's description does not quote the value.
            SettingsError::new(field, description)
        }
        other => SettingsError::new("options", other.to_string()),
    })?;

    Ok(Prepared {
        config,
        topic: s.topic,
        key,
    })
}

/// Conflicts librdkafka only reports when the client is created: caught
/// here so that `dispatcher validate` reports them too.
fn check_combination(
    config: &ClientConfig,
    written: &BTreeMap<&str, &str>,
    timeout: Duration,
) -> Result<(), SettingsError> {
    let field = |name: &str| match written.get(name) {
        Some(user) => format!("options.{user}"),
        None => "options".to_owned(),
    };
    let idempotent = config
        .get("enable.idempotence")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if idempotent {
        let acks = config.get("acks").unwrap_or("all");
        if !matches!(acks, "all" | "-1") {
            return Err(SettingsError::new(
                field("acks"),
                "enable.idempotence (on by default) needs acks=all; set enable.idempotence: false as well to use other acks",
            ));
        }
        if let Some(n) = config
            .get("max.in.flight.requests.per.connection")
            .and_then(|v| v.parse::<u32>().ok())
        {
            if n > 5 {
                return Err(SettingsError::new(
                    field("max.in.flight.requests.per.connection"),
                    "enable.idempotence (on by default) allows at most 5",
                ));
            }
        }
    }
    if let Some(linger) = config.get("linger.ms").and_then(|v| v.parse::<f64>().ok()) {
        if linger >= timeout.as_millis() as f64 {
            return Err(SettingsError::new(
                field("linger.ms"),
                format!(
                    "must be shorter than the endpoint's timeout ({} ms)",
                    timeout.as_millis()
                ),
            ));
        }
    }
    Ok(())
}

fn is_inherited(name: &str) -> bool {
    INHERITED_PREFIXES.iter().any(|p| name.starts_with(p)) || INHERITED_NAMES.contains(&name)
}

/// Kafka's topic name rules: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.`/`..`.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
        return Err(format!("must be 1 to {MAX_TOPIC_LEN} characters"));
    }
    if topic == "." || topic == ".." {
        return Err("`.` and `..` are not topic names".into());
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may only contain a-z A-Z 0-9 . _ -".into());
    }
    Ok(())
}

/// `transport: kafka`.
pub struct KafkaFactory;

impl TransportFactory for KafkaFactory {
    fn type_name(&self) -> &'static str {
        "kafka"
    }

    fn build(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError> {
        Ok(Arc::new(KafkaTransport::new(settings, ctx)?))
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<(), SettingsError> {
        prepare(settings, ctx).map(drop)
    }
}

static X_WEBHOOK_EVENT: &str = "x-webhook-event";
static X_WEBHOOK_DELIVERY_ID: &str = "x-webhook-delivery-id";
static X_WEBHOOK_ID: &str = "x-webhook-id";
static TRACEPARENT: &str = "traceparent";

/// Produces one endpoint's deliveries to one topic. Cheap to share behind
/// an `Arc`; the producer's background threads stop when it is dropped.
pub struct KafkaTransport {
    producer: FutureProducer,
    topic: String,
    key: Option<KeyPath>,
    timeout: Duration,
}

impl KafkaTransport {
    /// Check `settings` and create the producer. librdkafka connects in the
    /// background; this does not wait for the cluster.
    pub fn new(
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<KafkaTransport, SettingsError> {
        let prepared = prepare(settings, ctx)?;
        let producer: FutureProducer = prepared
            .config
            .create()
            .map_err(|e| SettingsError::new("options", e.to_string()))?;
        Ok(KafkaTransport {
            producer,
            topic: prepared.topic,
            key: prepared.key,
            timeout: ctx.timeout,
        })
    }

    /// The topic deliveries go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The producer, for tests and tools that need its client (metadata,
    /// the mock cluster).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Hand the record to librdkafka now (not at the first poll), so that
    /// sends keep the order in which they were issued.
    fn enqueue(&self, delivery: &Delivery) -> Result<DeliveryFuture, Outcome> {
        let mut id_buf = [0u8; 36];
        let id = delivery.id.encode(&mut id_buf);
        let event_type = delivery.event.event_type();

        let mut headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: X_WEBHOOK_EVENT,
                value: Some(event_type),
            })
            .insert(Header {
                key: X_WEBHOOK_DELIVERY_ID,
                value: Some(id),
            })
            .insert(Header {
                key: X_WEBHOOK_ID,
                value: Some(&*delivery.endpoint_id),
            });
        if let Some(traceparent) = &delivery.event.traceparent {
            headers = headers.insert(Header {
                key: TRACEPARENT,
                value: Some(&traceparent[..]),
            });
        }

        let field = self
            .key
            .as_ref()
            .and_then(|path| path.extract(delivery.event.data()));
        let key: &[u8] = match &field {
            Some(k) => k,
            None => id.as_bytes(),
        };
        let record = FutureRecord::to(&self.topic)
            .payload(&delivery.body[..])
            .key(key)
            .headers(headers);
        self.producer
            .send_result(record)
            .map_err(|(error, _)| classify(&error))
    }

    async fn settle(&self, ack: DeliveryFuture) -> Outcome {
        match tokio::time::timeout(self.timeout, ack).await {
            Ok(Ok(Ok(_))) => Outcome::Delivered { status: None },
            Ok(Ok(Err((error, _)))) => classify(&error),
            Ok(Err(_canceled)) => Outcome::Retry {
                status: None,
                reason: "the producer was closed before the broker answered".into(),
                retry_after: None,
            },
            Err(_) => Outcome::Retry {
                status: None,
                reason: format!(
                    "no acknowledgement from the broker within {:?}",
                    self.timeout
                ),
                retry_after: None,
            },
        }
    }
}

impl Transport for KafkaTransport {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        let enqueued = self.enqueue(delivery);
        Box::pin(async move {
            match enqueued {
                Ok(ack) => self.settle(ack).await,
                Err(outcome) => outcome,
            }
        })
    }
}

impl fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Errors after which sending the same record again cannot succeed.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | InvalidMessageSize
            | MessageBatchTooLarge
            | InvalidRecord
            | UnsupportedForMessageFormat
            | UnknownTopicOrPartition
            | UnknownTopic
            | UnknownPartition
            | UnknownTopicId
            | InvalidTopic
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | InvalidRequiredAcks
            | PolicyViolation
    )
}

/// Classify a produce failure. Everything not known to be permanent is
/// retried: a full local queue, timeouts, leader changes, brokers down.
fn classify(error: &KafkaError) -> Outcome {
    let code = error.rdkafka_error_code();
    let reason = match code {
        Some(code) => format!("Kafka: {code} ({})", code as i32),
        None => format!("Kafka: {error}"),
    };
    match code {
        Some(code) if is_permanent(code) => Outcome::Permanent {
            status: None,
            reason,
            disable_endpoint: false,
        },
        Some(RDKafkaErrorCode::QueueFull) => Outcome::Retry {
            status: None,
            reason,
            // The queue drains as the broker acknowledges: a short pause
            // is enough, and longer would only add latency.
            retry_after: Some(Duration::from_millis(100)),
        },
        _ => Outcome::Retry {
            status: None,
            reason,
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HttpClient, HttpClientOptions};
    use serde_json::json;

    fn with_ctx<R>(options: &[(&str, &str)], f: impl FnOnce(&BuildContext<'_>) -> R) -> R {
        let http = HttpClient::new(HttpClientOptions {
            native_roots: false,
            ..HttpClientOptions::default()
        })
        .unwrap();
        let options: BTreeMap<String, String> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ctx = BuildContext {
            endpoint_id: "to-kafka",
            timeout: Duration::from_secs(10),
            http: &http,
            kafka_bootstrap: "127.0.0.1:9092",
            kafka_options: &options,
            allow_private_networks: false,
            kafka_guard: KafkaGuard {
                source_topics: &SOURCE,
                dead_letter_topic: "dispatcher.dlq",
                retry_topic: "dispatcher.retry",
                other_topics: &[],
                allowed_brokers: &ALLOWED,
            },
        };
        f(&ctx)
    }

    static SOURCE: [String; 0] = [];
    static ALLOWED: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        vec![
            "b1:9092".into(),
            "b2:9092".into(),
            "*.kafka.example:9093".into(),
        ]
    });

    fn prepared(settings: serde_json::Value) -> Result<Prepared, SettingsError> {
        with_ctx(&[("sasl.password", "pw"), ("linger.ms", "50")], |ctx| {
            prepare(&settings, ctx)
        })
    }

    #[test]
    fn defaults_then_inherited_connection_settings_then_options() {
        let p = prepared(json!({
            "topic": "crm.events",
            "key": "data.contact_id",
            "options": {"linger.ms": 20, "enable.idempotence": true, "batch.size": "100000"},
        }))
        .unwrap();
        let c = &p.config;
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("batch.size"), Some("100000"));
        assert_eq!(c.get("message.timeout.ms"), Some("10000"));
        assert_eq!(
            c.get("sasl.password"),
            Some("pw"),
            "credentials are inherited"
        );
        assert_eq!(c.get("client.id"), Some("webhook-dispatcher-to-kafka"));
        assert_eq!(p.key.unwrap().to_string(), "data.contact_id");

        // Another cluster inherits nothing from the dispatcher's.
        let p = prepared(json!({"topic": "t", "brokers": ["b1:9092", " b2:9092"]})).unwrap();
        assert_eq!(p.config.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(p.config.get("sasl.password"), None);
        assert_eq!(p.config.get("linger.ms"), Some("5"));
        let p = prepared(json!({"topic": "t", "brokers": "b1:9092,b2:9092"})).unwrap();
        assert_eq!(p.config.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (json!({}), "topic", "missing field"),
            (
                json!({"topic": "t", "partition": 1}),
                "partition",
                "unknown field",
            ),
            (json!({"topic": ""}), "topic", "1 to 249"),
            (json!({"topic": "a b"}), "topic", "a-z"),
            (json!({"topic": ".."}), "topic", "not topic names"),
            (
                json!({"topic": "t", "key": "contact_id"}),
                "key",
                "below data",
            ),
            (
                json!({"topic": "t", "brokers": []}),
                "brokers",
                "at least one",
            ),
            (
                json!({"topic": "t", "brokers": 9092}),
                "brokers",
                "host:port",
            ),
            (
                json!({"topic": "t", "options": {"acks": null}}),
                "options.acks",
                "string, number or boolean",
            ),
            (
                json!({"topic": "t", "options": {"acks": 1}}),
                "options.acks",
                "acks=all",
            ),
            (
                json!({"topic": "t", "options": {"no.such.property": 1}}),
                "options.no.such.property",
                "not an option an endpoint may set",
            ),
            (
                json!({"topic": "t", "options": {"compression.type": "brotli"}}),
                "options.compression.type",
                "Invalid value",
            ),
            (
                json!({"topic": "t", "options": {"bootstrap.servers": "x:1"}}),
                "options.bootstrap.servers",
                "brokers",
            ),
            (
                json!({"topic": "t", "options": {"transactional.id": "x"}}),
                "options.transactional.id",
                "not supported",
            ),
            (
                json!({"topic": "t", "options": {"message.timeout.ms": 60000}}),
                "options.message.timeout.ms",
                "timeout",
            ),
            (
                json!({"topic": "t", "options": {"linger.ms": 20000}}),
                "options.linger.ms",
                "shorter",
            ),
            (
                json!({"topic": "t", "options": {"max.in.flight.requests.per.connection": 10}}),
                "options.max.in.flight.requests.per.connection",
                "at most 5",
            ),
        ];
        for (settings, field, reason) in cases {
            let err = prepared(settings.clone()).map(drop).unwrap_err();
            assert_eq!(err.field, field, "{settings}: {err}");
            assert!(err.reason.contains(reason), "{settings}: {err}");
        }
        let err = prepared(
            json!({"topic": "t", "options": {"linger.ms": 1, "queue.buffering.max.ms": 2}}),
        )
        .map(drop)
        .unwrap_err();
        assert!(err.reason.contains("another name"), "{err}");
        // An alias replaces the default rather than racing it.
        let p = prepared(json!({"topic": "t", "options": {"queue.buffering.max.ms": 40}})).unwrap();
        assert_eq!(p.config.get("linger.ms"), Some("40"));
        assert_eq!(p.config.get("queue.buffering.max.ms"), None);
        let err = prepared(json!({"topic": "t", "options": {"request.required.acks": 0}}))
            .map(drop)
            .unwrap_err();
        assert_eq!(err.field, "options.request.required.acks");
        // Without idempotence, other acks are fine.
        prepared(json!({"topic": "t", "options": {"acks": 1, "enable.idempotence": false}}))
            .unwrap();
    }

    /// Finding 2 of the security review: `plugin.library.paths` was handed
    /// to librdkafka, which `dlopen()`s it as soon as it is set, so even
    /// `dispatcher validate` of an untrusted config ran code. The marker
    /// library below would be loaded by librdkafka if the option got through;
    /// the refusal must come before librdkafka sees the option.
    #[test]
    fn code_loading_and_guard_lowering_options_are_refused() {
        let marker = std::env::temp_dir().join(format!("no-such-plugin-{}.so", std::process::id()));
        let cases = [
            (
                "plugin.library.paths",
                marker.display().to_string(),
                "not an option",
            ),
            (
                "ssl.engine.location",
                "/tmp/engine.so".into(),
                "not an option",
            ),
            (
                "sasl.kerberos.kinit.cmd",
                "touch /tmp/pwned".into(),
                "not an option",
            ),
            ("ssl.ca.location", "/etc/shadow".into(), "not an option"),
            (
                "ssl.key.location",
                "/var/run/secrets/key".into(),
                "not an option",
            ),
            (
                "sasl.oauthbearer.token.endpoint.url",
                "http://169.254.169.254/".into(),
                "not an option",
            ),
            (
                "enable.ssl.certificate.verification",
                "false".into(),
                "may only be true",
            ),
            (
                "ssl.endpoint.identification.algorithm",
                "none".into(),
                "may only be https",
            ),
            ("sasl.mechanisms", "GSSAPI".into(), "PLAIN"),
            ("client.id", "spoofed".into(), "not an option"),
        ];
        for (name, value, words) in cases {
            let err = prepared(json!({"topic": "t", "options": {name: value}}))
                .map(drop)
                .unwrap_err();
            assert_eq!(err.field, format!("options.{name}"));
            assert!(err.reason.contains(words), "{name}: {err}");
            assert!(
                !err.reason.to_lowercase().contains("plugin"),
                "refused before librdkafka tried to load it: {err}"
            );
        }
        // Inline credentials of another cluster are fine.
        prepared(json!({"topic": "t", "brokers": "b1:9092", "options": {
            "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": "u", "sasl.password": "p", "enable.ssl.certificate.verification": true,
        }}))
        .unwrap();
    }

    /// Finding 2: an endpoint producing to the source topic makes an
    /// endless feedback loop; to the dead-letter or retry topics, it forges
    /// the dispatcher's own records.
    #[test]
    fn the_dispatchers_own_topics_are_refused() {
        let source = vec!["events".to_owned(), "events.eu".to_owned()];
        let http = HttpClient::new(HttpClientOptions {
            native_roots: false,
            ..HttpClientOptions::default()
        })
        .unwrap();
        let options = BTreeMap::new();
        let ctx = BuildContext {
            endpoint_id: "loop",
            timeout: Duration::from_secs(10),
            http: &http,
            kafka_bootstrap: "127.0.0.1:9092",
            kafka_options: &options,
            allow_private_networks: false,
            kafka_guard: KafkaGuard {
                source_topics: &source,
                dead_letter_topic: "dispatcher.dlq",
                retry_topic: "dispatcher.retry",
                other_topics: &[],
                allowed_brokers: &[],
            },
        };
        for (topic, words) in [
            ("events", "source topic"),
            ("events.eu", "source topic"),
            ("dispatcher.dlq", "dead-letter"),
            ("dispatcher.retry.5s", "retry"),
            ("dispatcher.retry.4h", "retry"),
            ("dispatcher.retry.any", "retry"),
            ("__consumer_offsets", "internal"),
        ] {
            let err = KafkaFactory
                .validate(&json!({"topic": topic}), &ctx)
                .unwrap_err();
            assert_eq!(err.field, "topic");
            assert!(err.reason.contains(words), "{topic}: {err}");
        }
        KafkaFactory
            .validate(&json!({"topic": "crm.events"}), &ctx)
            .unwrap();
        KafkaFactory
            .validate(&json!({"topic": "dispatcher.retryx"}), &ctx)
            .unwrap();
        // Other brokers: none unless the operator lists them.
        let err = KafkaFactory
            .validate(&json!({"topic": "t", "brokers": "10.0.0.5:9092"}), &ctx)
            .unwrap_err();
        assert_eq!(err.field, "brokers");
        assert!(err.reason.contains("allowed_endpoint_brokers"), "{err}");
    }

    #[test]
    fn brokers_must_be_on_the_operators_list() {
        for ok in [
            "b1:9092",
            "B2:9092",
            "k1.kafka.example:9093",
            "a.b.kafka.example:9093",
        ] {
            prepared(json!({"topic": "t", "brokers": ok})).unwrap();
        }
        for bad in [
            "b1:9093",
            "b3:9092",
            "kafka.example:9093",
            "evilkafka.example:9093",
            "169.254.169.254:80",
            "b1",
        ] {
            let err = prepared(json!({"topic": "t", "brokers": bad}))
                .map(drop)
                .unwrap_err();
            assert_eq!(err.field, "brokers", "{bad}");
        }
        let err = prepared(json!({"topic": "t", "brokers": ["b1:9092", "evil:9092"]}))
            .map(drop)
            .unwrap_err();
        assert_eq!(err.field, "brokers[1]");
    }

    #[test]
    fn option_values_are_not_shown_in_debug() {
        let s: KafkaSettings =
            parse_settings(&json!({"topic": "t", "options": {"sasl.password": "hunter2"}}))
                .unwrap();
        let text = format!("{s:?}");
        assert!(text.contains("sasl.password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn validate_needs_no_cluster_and_no_default_without_one() {
        with_ctx(&[], |ctx| {
            KafkaFactory.validate(&json!({"topic": "t"}), ctx).unwrap();
            let mut no_cluster = *ctx;
            no_cluster.kafka_bootstrap = "";
            let err = KafkaFactory
                .validate(&json!({"topic": "t"}), &no_cluster)
                .unwrap_err();
            assert_eq!(err.field, "brokers");
        });
    }

    #[test]
    fn classification() {
        let permanent = [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidTopic,
        ];
        for code in permanent {
            let outcome = classify(&KafkaError::MessageProduction(code));
            assert_eq!(outcome.label(), "permanent", "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::BrokerNotAvailable,
            RDKafkaErrorCode::Authentication,
        ] {
            let outcome = classify(&KafkaError::MessageProduction(code));
            assert_eq!(outcome.label(), "retry", "{code:?}");
        }
        let full = classify(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull));
        assert!(matches!(
            full,
            Outcome::Retry { retry_after: Some(d), .. } if d == Duration::from_millis(100)
        ));
    }
}
