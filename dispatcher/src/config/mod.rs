//! The configuration file: its types, defaults, loading and validation.
//!
//! Loading never stops at the first mistake: every section and every endpoint
//! is read on its own, so `dispatcher validate` can list all problems at once,
//! each with the key path where it lies (`endpoints[2].timeout: ...`).
//! The key names are a user-facing contract: add keys, never rename them.

mod env;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use transports::{BuildContext, Registry};

use crate::lane::{BreakerConfig, RateLimitConfig, RetryConfig};
use crate::route::{EventPattern, Filter, Tenant, TenantKey};

/// The whole configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub admin: AdminConfig,
    /// The management API (pause, resume): off unless a token is configured.
    pub api: crate::api::ApiConfig,
    pub http: HttpConfig,
    pub pipeline: PipelineConfig,
    /// Keys that encrypt endpoints' secrets in the endpoint store.
    pub secrets: crate::secrets::SecretsConfig,
    pub routing: RoutingConfig,
    /// How many endpoints have series of their own on `/metrics`.
    pub metrics: crate::metrics::MetricsConfig,
    pub endpoints: Vec<EndpointConfig>,
}

/// How events find their endpoints beyond event types and filters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Where an event's tenant is: `data.<field>`, `header:<name>` or
    /// `key` (see [`TenantKey`]). Unset: no event has a tenant.
    pub tenant_key: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers; when absent an embedded broker is started.
    pub brokers: Option<String>,
    pub group_id: String,
    pub topics: Vec<String>,
    /// librdkafka properties passed through to every client.
    pub options: BTreeMap<String, Scalar>,
    pub dead_letter_topic: String,
    /// Base name of the retry topics: one per delay tier, `<retry_topic>.<delay>`.
    pub retry_topic: String,
    /// The delay tiers of the retry topics. A wait is rounded up to a tier.
    #[serde(with = "duration_list")]
    pub retry_tiers: Vec<Duration>,
    /// Where the backlog of an endpoint that does not keep up waits, keyed
    /// by endpoint, until its lane has room.
    pub spill_topic: String,
    /// The endpoint store: a compacted topic of endpoints, keyed by id, that
    /// every replica follows (see `dispatcher::store`).
    pub endpoints_topic: String,
    /// Create the dispatcher's own topics (dead-letter, retry tiers, spill,
    /// endpoints) at start-up when they are missing.
    pub create_topics: bool,
    /// How those topics are created.
    pub internal_topics: crate::topics::TopicSettings,
    /// The spill and endpoints topics, which no endpoint may write to (kept
    /// here so a transport's guard can borrow them).
    #[serde(skip)]
    pub own_topics: Vec<String>,
    /// Partitions per topic created in the embedded broker.
    pub embedded_partitions: i32,
    /// `host:port` of brokers a Kafka endpoint may name in its `brokers`
    /// (`*.domain:port` for a domain). Empty: none may.
    pub allowed_endpoint_brokers: Vec<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            group_id: "dispatcher".into(),
            topics: vec!["events".into()],
            options: BTreeMap::new(),
            dead_letter_topic: "dispatcher.dlq".into(),
            retry_topic: "dispatcher.retry".into(),
            retry_tiers: [5, 30, 120, 600, 3600, 4 * 3600]
                .map(Duration::from_secs)
                .to_vec(),
            spill_topic: "dispatcher.spill".into(),
            endpoints_topic: "dispatcher.endpoints".into(),
            own_topics: Vec::new(),
            create_topics: true,
            internal_topics: crate::topics::TopicSettings::default(),
            embedded_partitions: 6,
            allowed_endpoint_brokers: Vec::new(),
        }
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Option values may be credentials (sasl.password): names only.
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("retry_topic", &self.retry_topic)
            .field("retry_tiers", &self.retry_tiers)
            .field("embedded_partitions", &self.embedded_partitions)
            .field("allowed_endpoint_brokers", &self.allowed_endpoint_brokers)
            .finish()
    }
}

/// A YAML scalar given for a librdkafka option (`linger.ms: 5` and
/// `linger.ms: "5"` mean the same thing).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl Serialize for Scalar {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Scalar(s)),
            Value::Number(n) => Ok(Scalar(n.to_string())),
            Value::Bool(b) => Ok(Scalar(b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected a string, number or boolean, found {}",
                kind_of(&other)
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Deprecated alias: allow every non-public address but link-local and
    /// metadata ones. Prefer `allowed_networks`.
    pub allow_private_networks: bool,
    /// Non-public networks (CIDR) endpoints may be on.
    pub allowed_networks: Vec<String>,
    /// Development only: let secrets (X-Webhook-Secret, OAuth2) go over
    /// plain http://.
    pub allow_plaintext_secrets: bool,
}

impl HttpConfig {
    /// `allowed_networks`, parsed (entries that do not parse were reported
    /// by validation and are left out).
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        self.allowed_networks
            .iter()
            .filter_map(|n| parse_network(n).ok())
            .collect()
    }

    /// The shared HTTP client's address and secret settings.
    pub fn client_options(&self) -> transports::http::HttpClientOptions {
        transports::http::HttpClientOptions {
            allow_private_networks: self.allow_private_networks,
            allowed_networks: self.networks(),
            allow_plaintext_secrets: self.allow_plaintext_secrets,
            ..Default::default()
        }
    }
}

/// A CIDR (`10.20.0.0/16`) or a single address (`10.20.0.5`).
fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("`{text}` is not a network (write a CIDR such as 10.20.0.0/16)"))
}

/// Tuning of the pipeline as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Events read but not yet final (all deliveries done). Past this the
    /// consumer pauses; it resumes at three quarters.
    pub max_events_in_flight: usize,
    /// Bytes of records and deliveries held in memory (and request bodies
    /// in flight). Past this the consumer pauses; it resumes at three
    /// quarters. The source's only back-pressure: no endpoint makes it wait.
    pub memory_budget: bytesize::ByteSize,
    /// An endpoint whose oldest queued fresh delivery is this far behind
    /// what most endpoints have started (see `lane::Front`) does not keep
    /// up: its queue and what follows go to the spill topic until its
    /// backlog is drained.
    /// Also how long a full memory budget may keep the source paused
    /// before the endpoints still holding fresh deliveries spill them,
    /// when they are a minority, or after `stall_grace` times this long
    /// (see `Source::spill_stalled`).
    #[serde(with = "humantime_serde")]
    pub spill_after: Duration,
    /// How many `spill_after`s the lanes holding fresh deliveries may hold
    /// the source paused while most lanes are behind alike, before they
    /// spill anyway: in one pause, or added up over pauses while other
    /// lanes keep up and wait (see `Source::spill_stalled`).
    pub stall_grace: u32,
    /// Consumers open at once to bring endpoints' backlogs back from Kafka.
    pub backlog_readers: usize,
    /// Records one partition may hold behind one that is not final before
    /// that partition is paused.
    pub max_pending_per_partition: usize,
    /// Records larger than this go to the dead-letter topic.
    pub max_event_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How long shutdown waits for in-flight deliveries before it commits
    /// what is final and exits; unfinished events are re-read by the next
    /// owner of their partition.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Waits before a retry up to this long are kept in memory; longer ones
    /// are parked in a retry topic.
    #[serde(with = "humantime_serde")]
    pub in_memory_retry_max: Duration,
    /// How long a retry of a paused endpoint, whose in-memory wait ended
    /// during the pause, is parked in a retry topic (once); after that it
    /// waits under the endpoint's hold until the resume.
    #[serde(with = "humantime_serde")]
    pub paused_recheck: Duration,
    pub dedup: DedupConfig,
}

/// The cache of recently delivered ids that suppresses re-sends of records
/// this replica reads again (after a rebalance hands a partition back, or a
/// replay). It lives in memory: a restart starts it empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    pub max_entries: u64,
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            // ~100 bytes an entry: 100k ids cost about 10 MB.
            max_entries: 100_000,
            ttl: Duration::from_secs(3600),
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_events_in_flight: 10_000,
            memory_budget: bytesize::ByteSize::mib(128),
            spill_after: Duration::from_secs(2),
            stall_grace: 3,
            backlog_readers: 16,
            max_pending_per_partition: 1_000_000,
            max_event_bytes: 1 << 20,
            commit_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(25),
            in_memory_retry_max: Duration::from_secs(10),
            paused_recheck: Duration::from_secs(30),
            dedup: DedupConfig::default(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub id: String,
    #[serde(default = "default_transport")]
    pub transport: String,
    pub events: Vec<String>,
    #[serde(default)]
    pub filter: BTreeMap<String, FilterValue>,
    /// The tenant (customer) this endpoint belongs to: it receives only
    /// events of that tenant (found with `routing.tenant_key`). Unset: the
    /// endpoint receives events of every tenant, and of none.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Start paused: nothing is sent, and the endpoint's deliveries wait in
    /// Kafka (spilled, or under its hold) until it is resumed through the
    /// management API.
    #[serde(default)]
    pub paused: bool,
    /// Find the sustainable concurrency (AIMD), up to `max_in_flight`.
    #[serde(default)]
    pub adaptive_concurrency: bool,
    /// A global rate limit; each replica enforces its share.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Deliveries waiting for this endpoint in memory at most (its share of
    /// `pipeline.memory_budget` may stop it sooner); beyond, its backlog
    /// waits in the spill topic.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Deliveries of one key (a field of `data`) in the source's order, one
    /// at a time; unset: unordered.
    #[serde(default)]
    pub ordering: Option<crate::lane::OrderingConfig>,
    /// `detailed`: series of its own on `/metrics` even when the replica
    /// runs too many endpoints to give every one (see `metrics:`).
    #[serde(default)]
    pub metrics: crate::metrics::EndpointDetail,
    /// The transport's own keys (`url` and `secret` for http, `topic` for
    /// kafka, ...): every key that is not one of the above. Checked by the
    /// transport's factory, which names any key it does not know.
    #[serde(skip)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The endpoint as written in the file (after `${VAR}`), as JSON: what
    /// the management API shows of a file endpoint, its secrets hinted.
    #[serde(skip)]
    pub source: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The transport's keys hold secrets (secret, headers, a Slack URL):
        // their names only.
        f.debug_struct("EndpointConfig")
            .field("id", &self.id)
            .field("transport", &self.transport)
            .field("events", &self.events)
            .field("filter", &self.filter)
            .field("tenant", &self.tenant)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("enabled", &self.enabled)
            .field("paused", &self.paused)
            .field("queue_capacity", &self.queue_capacity)
            .field("ordering", &self.ordering)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The endpoint keys every transport shares; all others are the transport's.
const ENDPOINT_KEYS: &[&str] = &[
    "id",
    "transport",
    "events",
    "filter",
    "tenant",
    "timeout",
    "max_in_flight",
    "enabled",
    "paused",
    "adaptive_concurrency",
    "rate_limit",
    "circuit_breaker",
    "retry",
    "queue_capacity",
    "ordering",
    "metrics",
];

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            id: String::new(),
            transport: default_transport(),
            events: Vec::new(),
            filter: BTreeMap::new(),
            tenant: None,
            timeout: default_timeout(),
            max_in_flight: default_max_in_flight(),
            enabled: true,
            paused: false,
            adaptive_concurrency: false,
            rate_limit: None,
            circuit_breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            queue_capacity: default_queue_capacity(),
            ordering: None,
            metrics: crate::metrics::EndpointDetail::Auto,
            settings: serde_json::Map::new(),
            source: serde_json::Map::new(),
        }
    }
}

fn default_queue_capacity() -> usize {
    10_000
}

/// `humantime_serde` for a list of durations.
pub(crate) mod duration_list {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| {
                humantime::parse_duration(t).map_err(|_| {
                    serde::de::Error::invalid_value(
                        serde::de::Unexpected::Str(t),
                        &"a duration such as 500ms, 30s or 2m",
                    )
                })
            })
            .collect()
    }
}

impl EndpointConfig {
    /// The transport's settings as the JSON object its factory reads.
    pub fn settings_value(&self) -> serde_json::Value {
        serde_json::Value::Object(self.settings.clone())
    }
}

/// The shared endpoint key `key` is probably a misspelling of.
fn near_miss(key: &str) -> Option<&'static str> {
    ENDPOINT_KEYS
        .iter()
        .copied()
        .find(|known| *known != key && edit_distance(key, known) <= 2.min(known.len() / 3).max(1))
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Split one endpoint's mapping into the shared keys (parsed here) and the
/// transport's own (kept for its factory).
fn parse_endpoint(item: Value, path: &str, problems: &mut Vec<Problem>) -> Option<EndpointConfig> {
    let key_path = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    let Value::Mapping(map) = item else {
        problems.push(Problem::new(
            path,
            format!("expected a mapping, found {}", kind_of(&item)),
        ));
        return None;
    };
    let source = match serde_json::to_value(&map) {
        Ok(serde_json::Value::Object(source)) => source,
        _ => serde_json::Map::new(),
    };
    let (shared, own): (serde_yaml_ng::Mapping, serde_yaml_ng::Mapping) = map
        .into_iter()
        .partition(|(k, _)| k.as_str().is_some_and(|k| ENDPOINT_KEYS.contains(&k)));
    // A misspelt shared key would otherwise reach the transport as one of
    // its own keys (or hide behind "missing field"): name it here.
    let own: Vec<(Value, Value)> = own
        .into_iter()
        .filter(|(k, _)| match k.as_str().and_then(near_miss) {
            Some(meant) => {
                let key = k.as_str().unwrap_or_default();
                problems.push(Problem::new(
                    key_path(key),
                    format!("unknown key (did you mean `{meant}`?)"),
                ));
                false
            }
            None => true,
        })
        .collect();
    let mut endpoint = parse::<EndpointConfig>(Value::Mapping(shared), path, problems)?;
    endpoint.source = source;
    for (k, v) in own {
        let key = k
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{k:?}"));
        match serde_json::to_value(&v) {
            Ok(json) => {
                endpoint.settings.insert(key, json);
            }
            Err(e) => problems.push(Problem::new(
                key_path(&key),
                format!("not representable: {e}"),
            )),
        }
    }
    Some(endpoint)
}

/// A filter value as written: one scalar, a list meaning "any of", or a
/// mapping of operators (`{$gte: 100}`); the operand of `$and` and `$or`
/// is a list of filters. What it means, and what is wrong with it (with
/// its key path), is [`Filter::parse`]'s business: here it is only read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FilterValue {
    One(Scalar),
    AnyOf(Vec<Scalar>),
    /// Operators and their operands, or one filter of an `$and` / `$or`.
    Map(BTreeMap<String, FilterValue>),
    /// A list holding more than scalars: the filters of `$and` / `$or`.
    List(Vec<FilterValue>),
}

impl<'de> Deserialize<'de> for FilterValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FilterValue::from_json(serde_json::Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl FilterValue {
    fn from_json(value: serde_json::Value) -> Result<FilterValue, String> {
        use serde_json::Value as J;
        let scalar = |v: &J| match v {
            J::String(s) => Some(Scalar(s.clone())),
            J::Number(n) => Some(Scalar(n.to_string())),
            J::Bool(b) => Some(Scalar(b.to_string())),
            _ => None,
        };
        match value {
            J::Null => {
                Err("expected a string, number, boolean, list or mapping, found nothing".into())
            }
            J::Array(items) => match items.iter().map(scalar).collect::<Option<Vec<_>>>() {
                Some(list) => Ok(FilterValue::AnyOf(list)),
                None => items
                    .into_iter()
                    .map(FilterValue::from_json)
                    .collect::<Result<_, _>>()
                    .map(FilterValue::List),
            },
            J::Object(map) => map
                .into_iter()
                .map(|(k, v)| FilterValue::from_json(v).map(|v| (k, v)))
                .collect::<Result<_, _>>()
                .map(FilterValue::Map),
            J::String(s) => Ok(FilterValue::One(Scalar(s))),
            J::Number(n) => Ok(FilterValue::One(Scalar(n.to_string()))),
            J::Bool(b) => Ok(FilterValue::One(Scalar(b.to_string()))),
        }
    }
}

fn default_transport() -> String {
    "http".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_in_flight() -> usize {
    32
}
fn default_true() -> bool {
    true
}

/// One thing wrong with a config, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Read, interpolate and validate a config file (built-in transports).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &Registry::builtin())
    }

    /// Read, interpolate and validate a config file, with the transports of `registry`.
    pub fn load_with(path: &Path, registry: &Registry) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem::new("", format!("cannot read the file: {e}"))],
        })?;
        Config::from_yaml_with(&text, &|name| std::env::var(name).ok(), registry).map_err(
            |problems| ConfigError {
                file: path.to_owned(),
                problems,
            },
        )
    }

    /// Parse and validate YAML text, resolving `${VAR}` with `lookup`.
    pub fn from_yaml(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<Problem>> {
        Config::from_yaml_with(text, lookup, &Registry::builtin())
    }

    /// The same, with the transports of `registry`.
    pub fn from_yaml_with(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        registry: &Registry,
    ) -> Result<Config, Vec<Problem>> {
        let mut root: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            vec![Problem::new("", format!("not valid YAML{at}: {e}"))]
        })?;
        let mut problems = Vec::new();
        env::interpolate(&mut root, "", lookup, &mut problems);

        let mut map = match root {
            Value::Mapping(m) => m,
            Value::Null => Default::default(),
            other => {
                return Err(vec![Problem::new(
                    "",
                    format!(
                        "expected a mapping at the top level, found {}",
                        kind_of(&other)
                    ),
                )])
            }
        };

        // Where each parsed endpoint stood in the file, for problem paths.
        let mut positions = Vec::new();
        let mut config = Config {
            kafka: section(&mut map, "kafka", &mut problems),
            admin: section(&mut map, "admin", &mut problems),
            api: section(&mut map, "api", &mut problems),
            http: section(&mut map, "http", &mut problems),
            pipeline: section(&mut map, "pipeline", &mut problems),
            secrets: section(&mut map, "secrets", &mut problems),
            routing: section(&mut map, "routing", &mut problems),
            metrics: section(&mut map, "metrics", &mut problems),
            endpoints: Vec::new(),
        };
        config.secrets.load(&mut problems);
        config.kafka.own_topics = vec![
            config.kafka.spill_topic.clone(),
            config.kafka.endpoints_topic.clone(),
        ];
        // No endpoints in the file is fine: they may all live in the
        // endpoint store (kafka.endpoints_topic).
        match map.remove("endpoints") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(ep) =
                        parse_endpoint(item, &format!("endpoints[{i}]"), &mut problems)
                    {
                        config.endpoints.push(ep);
                        positions.push(i);
                    }
                }
            }
            Some(other) => problems.push(Problem::new(
                "endpoints",
                format!("expected a list, found {}", kind_of(&other)),
            )),
        }
        for (key, _) in map {
            let key = key
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{key:?}"));
            problems.push(Problem::new(
                key,
                "unknown key (expected one of kafka, admin, api, http, pipeline, secrets, routing, metrics, endpoints)",
            ));
        }

        config.check(&positions, registry, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Checks that need more than one value's type.
    fn check(&self, positions: &[usize], registry: &Registry, problems: &mut Vec<Problem>) {
        let k = &self.kafka;
        if k.group_id.trim().is_empty() {
            problems.push(Problem::new("kafka.group_id", "must not be empty"));
        }
        if k.topics.is_empty() {
            problems.push(Problem::new("kafka.topics", "at least one topic is needed"));
        }
        for (i, t) in k.topics.iter().enumerate() {
            if let Err(e) = check_topic_name(t) {
                problems.push(Problem::new(format!("kafka.topics[{i}]"), e));
            }
        }
        for (key, name) in [
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
            ("kafka.retry_topic", &k.retry_topic),
            ("kafka.spill_topic", &k.spill_topic),
            ("kafka.endpoints_topic", &k.endpoints_topic),
        ] {
            if let Err(e) = check_topic_name(name) {
                problems.push(Problem::new(key, e));
            } else if k.topics.contains(name) {
                problems.push(Problem::new(
                    key,
                    format!("`{name}` is also a source topic"),
                ));
            }
        }
        let tiers = crate::park::Tiers::new(&k.retry_topic, &k.retry_tiers, &k.spill_topic);
        if k.endpoints_topic == k.spill_topic
            || k.endpoints_topic == k.dead_letter_topic
            || tiers.topics().any(|t| t == k.endpoints_topic)
        {
            problems.push(Problem::new(
                "kafka.endpoints_topic",
                format!(
                    "`{}` is already the dead-letter, spill or a retry topic",
                    k.endpoints_topic
                ),
            ));
        }
        if k.spill_topic == k.dead_letter_topic || tiers.topics().any(|t| t == k.spill_topic) {
            problems.push(Problem::new(
                "kafka.spill_topic",
                format!(
                    "`{}` is already the dead-letter topic or a retry topic",
                    k.spill_topic
                ),
            ));
        }
        if let Some(b) = &k.brokers {
            if b.trim().is_empty() {
                problems.push(Problem::new(
                    "kafka.brokers",
                    "must not be empty (leave it out to use the embedded broker)",
                ));
            }
        }
        let t = &k.internal_topics;
        if !(1..=10_000).contains(&t.partitions) || !(1..=10_000).contains(&t.spill_partitions) {
            problems.push(Problem::new(
                "kafka.internal_topics",
                "partitions and spill_partitions must be between 1 and 10000",
            ));
        }
        if t.replication_factor == 0 || t.replication_factor < -1 {
            problems.push(Problem::new(
                "kafka.internal_topics.replication_factor",
                "must be at least 1, or -1 for the broker's default",
            ));
        }
        if !(1..=1000).contains(&k.embedded_partitions) {
            problems.push(Problem::new(
                "kafka.embedded_partitions",
                "must be between 1 and 1000",
            ));
        }
        for (opt, value) in &k.options {
            let path = format!("kafka.options.{opt}");
            match opt.as_str() {
                "enable.auto.commit" | "enable.auto.offset.store" if value.0 != "false" => problems
                    .push(Problem::new(
                        path,
                        "the dispatcher commits offsets itself; this must stay false",
                    )),
                "bootstrap.servers" | "group.id" => problems.push(Problem::new(
                    path,
                    "set kafka.brokers / kafka.group_id instead",
                )),
                name if transports::kafka::NEVER_ALLOWED_OPTIONS.contains(&name) => {
                    problems.push(Problem::new(
                        path,
                        "is refused: setting it makes librdkafka load code or run a command",
                    ))
                }
                _ => {}
            }
        }

        for (i, broker) in k.allowed_endpoint_brokers.iter().enumerate() {
            let ok = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                problems.push(Problem::new(
                    format!("kafka.allowed_endpoint_brokers[{i}]"),
                    "write host:port (or *.domain:port)",
                ));
            }
        }
        for (i, network) in self.http.allowed_networks.iter().enumerate() {
            if let Err(e) = parse_network(network) {
                problems.push(Problem::new(format!("http.allowed_networks[{i}]"), e));
            }
        }
        self.api.check(problems);

        let p = &self.pipeline;
        if p.max_events_in_flight < 4 {
            problems.push(Problem::new(
                "pipeline.max_events_in_flight",
                "must be at least 4",
            ));
        }
        if p.memory_budget.as_u64() < 1 << 20 {
            problems.push(Problem::new(
                "pipeline.memory_budget",
                "must be at least 1MiB",
            ));
        }
        if !(1..=1000).contains(&p.stall_grace) {
            problems.push(Problem::new(
                "pipeline.stall_grace",
                "must be between 1 and 1000",
            ));
        }
        if p.spill_after.is_zero() || p.spill_after > Duration::from_secs(600) {
            problems.push(Problem::new(
                "pipeline.spill_after",
                "must be between 1ms and 10m",
            ));
        }
        if !(1..=1024).contains(&p.backlog_readers) {
            problems.push(Problem::new(
                "pipeline.backlog_readers",
                "must be between 1 and 1024",
            ));
        }
        if p.max_pending_per_partition < 1000 {
            problems.push(Problem::new(
                "pipeline.max_pending_per_partition",
                "must be at least 1000",
            ));
        }
        if p.max_event_bytes < 64 {
            problems.push(Problem::new(
                "pipeline.max_event_bytes",
                "must be at least 64",
            ));
        }
        if p.commit_interval.is_zero() {
            problems.push(Problem::new(
                "pipeline.commit_interval",
                "must be more than zero",
            ));
        }
        if p.dedup.max_entries == 0 || p.dedup.ttl.is_zero() {
            problems.push(Problem::new(
                "pipeline.dedup",
                "max_entries and ttl must be more than zero",
            ));
        }
        if k.retry_tiers.is_empty() {
            problems.push(Problem::new(
                "kafka.retry_tiers",
                "at least one delay tier is needed",
            ));
        }
        for topic in tiers.topics() {
            if let Err(e) = check_topic_name(topic) {
                problems.push(Problem::new(
                    "kafka.retry_tiers",
                    format!("makes a bad retry topic name: {e}"),
                ));
            }
        }
        if k.retry_tiers.iter().any(|d| d.is_zero()) {
            problems.push(Problem::new(
                "kafka.retry_tiers",
                "every tier must be longer than zero",
            ));
        }

        if !self.endpoints.is_empty() && self.endpoints.iter().all(|e| !e.enabled) {
            problems.push(Problem::new(
                "endpoints",
                "every endpoint is disabled: the dispatcher would commit past every event without delivering it",
            ));
        }
        if self.metrics.linger < Duration::from_secs(60) {
            problems.push(Problem::new(
                "metrics.linger",
                "must be at least 1m: shorter, a troubled endpoint's series may last a single scrape, too few for rate()",
            ));
        }
        if self.metrics.endpoint_series_max > 100_000 {
            problems.push(Problem::new(
                "metrics.endpoint_series_max",
                "must be at most 100000: each endpoint shown costs ~50 series",
            ));
        }
        if let Some(key) = &self.routing.tenant_key {
            if let Err(e) = TenantKey::parse(key) {
                problems.push(Problem::new("routing.tenant_key", e));
            }
        }
        let mut seen = HashSet::new();
        let mut http_client = None;
        for (ep, &i) in self.endpoints.iter().zip(positions) {
            let base = format!("endpoints[{i}].");
            if let Err(e) = check_endpoint_id(&ep.id) {
                problems.push(Problem::new(format!("{base}id"), e));
            } else if !seen.insert(ep.id.as_str()) {
                problems.push(Problem::new(
                    format!("{base}id"),
                    format!("`{}` is used by another endpoint", ep.id),
                ));
            }
            self.check_endpoint(ep, &base, registry, &mut http_client, problems);
        }
    }

    /// Checks of one endpoint that need more than its values' types; its
    /// problems' paths start with `base` (`endpoints[3].`, or nothing).
    fn check_endpoint(
        &self,
        ep: &EndpointConfig,
        base: &str,
        registry: &Registry,
        http_client: &mut Option<Result<transports::http::HttpClient, String>>,
        problems: &mut Vec<Problem>,
    ) {
        let at = |key: &str| format!("{base}{key}");
        if ep.events.is_empty() {
            problems.push(Problem::new(
                at("events"),
                "subscribe to at least one event type (\"*\" for all)",
            ));
        }
        for (j, pat) in ep.events.iter().enumerate() {
            if let Err(e) = EventPattern::parse(pat) {
                problems.push(Problem::new(format!("{base}events[{j}]"), e));
            }
        }
        if let Err((key, e)) = Filter::parse(&ep.filter) {
            problems.push(Problem::new(format!("{base}filter.{key}"), e));
        }
        if let Some(tenant) = &ep.tenant {
            if let Err(e) = Tenant::new(tenant) {
                problems.push(Problem::new(at("tenant"), e));
            } else if self.routing.tenant_key.is_none() {
                problems.push(Problem::new(
                    at("tenant"),
                    "is set but routing.tenant_key is not: no event would have a tenant, so this endpoint would receive nothing",
                ));
            }
        }
        if ep.timeout.is_zero() || ep.timeout > Duration::from_secs(300) {
            problems.push(Problem::new(at("timeout"), "must be between 1ms and 5m"));
        }
        if !(1..=10_000).contains(&ep.max_in_flight) {
            problems.push(Problem::new(
                at("max_in_flight"),
                "must be between 1 and 10000",
            ));
        }
        if !(1..=1_000_000).contains(&ep.queue_capacity) {
            problems.push(Problem::new(
                at("queue_capacity"),
                "must be between 1 and 1000000",
            ));
        }
        if let Some(ordering) = &ep.ordering {
            if let Err(e) = crate::lane::KeyOrdering::parse(ordering) {
                problems.push(Problem::new(at("ordering.key"), e));
            }
        }
        if let Some(r) = &ep.rate_limit {
            if !(r.per_second > 0.0 && r.per_second.is_finite()) {
                problems.push(Problem::new(
                    at("rate_limit.per_second"),
                    "must be more than zero",
                ));
            }
            if r.burst == Some(0) {
                problems.push(Problem::new(at("rate_limit.burst"), "must be at least 1"));
            }
        }
        let b = &ep.circuit_breaker;
        if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
            problems.push(Problem::new(
                at("circuit_breaker.failure_ratio"),
                "must be in (0, 1]",
            ));
        }
        if b.min_requests == 0 || b.half_open_probes == 0 {
            problems.push(Problem::new(
                at("circuit_breaker"),
                "min_requests and half_open_probes must be at least 1",
            ));
        }
        if b.window.is_zero() || b.open_for.is_zero() {
            problems.push(Problem::new(
                at("circuit_breaker"),
                "window and open_for must be longer than zero",
            ));
        }
        if ep.retry.schedule.iter().any(|d| d.is_zero()) {
            problems.push(Problem::new(
                at("retry.schedule"),
                "every wait must be longer than zero",
            ));
        }
        if ep.retry.max_age.is_zero() {
            problems.push(Problem::new(
                at("retry.max_age"),
                "must be longer than zero",
            ));
        }
        match registry.get(&ep.transport) {
            None => problems.push(Problem::new(
                at("transport"),
                format!(
                    "unknown transport `{}` (known: {})",
                    ep.transport,
                    registry.names().join(", ")
                ),
            )),
            Some(factory) => {
                let client = http_client.get_or_insert_with(|| {
                    transports::http::HttpClient::new(transports::http::HttpClientOptions {
                        // Validation sends nothing, and loading the
                        // system's roots costs milliseconds per config.
                        native_roots: false,
                        ..self.http.client_options()
                    })
                    .map_err(|e| e.to_string())
                });
                match client {
                    Ok(client) => {
                        let options = self.kafka.option_strings();
                        let ctx = self.build_context(&ep.id, ep.timeout, client, &options);
                        if let Err(e) = factory.validate(&ep.settings_value(), &ctx) {
                            let path = if e.field.is_empty() {
                                base.trim_end_matches('.').to_owned()
                            } else {
                                at(&e.field)
                            };
                            problems.push(Problem::new(path, e.reason));
                        }
                    }
                    Err(e) => problems.push(Problem::new("http", e.clone())),
                }
            }
        }
    }

    /// An endpoint given as JSON (the endpoint store's and the management
    /// API's form: the same fields as a YAML endpoint, no `${VAR}`), read
    /// and checked exactly as `dispatcher validate` checks one in the file,
    /// against this config. Problems name keys relative to the endpoint.
    pub fn endpoint_from_json(
        &self,
        json: &serde_json::Map<String, serde_json::Value>,
        registry: &Registry,
    ) -> Result<EndpointConfig, Vec<Problem>> {
        let mut problems = Vec::new();
        let value = match serde_yaml_ng::to_value(json) {
            Ok(v) => v,
            Err(e) => return Err(vec![Problem::new("", format!("not an endpoint: {e}"))]),
        };
        let Some(ep) = parse_endpoint(value, "", &mut problems) else {
            return Err(problems);
        };
        if let Err(e) = check_endpoint_id(&ep.id) {
            problems.push(Problem::new("id", e));
        }
        self.check_endpoint(&ep, "", registry, &mut None, &mut problems);
        if problems.is_empty() {
            Ok(ep)
        } else {
            Err(problems)
        }
    }

    /// Read YAML text (or JSON, which is YAML) with `${VAR}` replaced as in
    /// the config file: what `dispatcher endpoints apply` reads.
    pub fn read_yaml_with_env(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<serde_json::Value, Vec<Problem>> {
        let mut root: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            vec![Problem::new("", format!("not valid YAML{at}: {e}"))]
        })?;
        let mut problems = Vec::new();
        env::interpolate(&mut root, "", lookup, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        serde_json::to_value(&root)
            .map_err(|e| vec![Problem::new("", format!("not representable as JSON: {e}"))])
    }

    /// What a transport factory needs to validate or build an endpoint.
    pub fn build_context<'a>(
        &'a self,
        endpoint_id: &'a str,
        timeout: Duration,
        http: &'a transports::http::HttpClient,
        kafka_options: &'a BTreeMap<String, String>,
    ) -> BuildContext<'a> {
        BuildContext {
            endpoint_id,
            timeout,
            http,
            // Validation never connects; the embedded broker's address is
            // only known once it runs, and app::start passes that one.
            kafka_bootstrap: self.kafka.brokers.as_deref().unwrap_or("127.0.0.1:9092"),
            kafka_options,
            allow_private_networks: self.http.allow_private_networks,
            kafka_guard: transports::kafka::KafkaGuard {
                source_topics: &self.kafka.topics,
                dead_letter_topic: &self.kafka.dead_letter_topic,
                retry_topic: &self.kafka.retry_topic,
                other_topics: &self.kafka.own_topics,
                allowed_brokers: &self.kafka.allowed_endpoint_brokers,
            },
        }
    }
}

impl KafkaConfig {
    /// `kafka.options` as librdkafka strings.
    pub fn option_strings(&self) -> BTreeMap<String, String> {
        self.options
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect()
    }
}

/// Take and parse one top-level section, recording problems under its name.
fn section<T: DeserializeOwned + Default>(
    map: &mut serde_yaml_ng::Mapping,
    key: &str,
    problems: &mut Vec<Problem>,
) -> T {
    match map.remove(key) {
        None | Some(Value::Null) => T::default(),
        Some(v) => parse(v, key, problems).unwrap_or_default(),
    }
}

/// Deserialize `value`, turning the first error into a problem at its full
/// path. Values take the type of the field they fill and errors never quote
/// a value (see `transports::de`): a config holds secrets.
fn parse<T: DeserializeOwned>(value: Value, base: &str, problems: &mut Vec<Problem>) -> Option<T> {
    let json = match serde_json::to_value(&value) {
        Ok(json) => json,
        Err(e) => {
            problems.push(Problem::new(base, format!("not representable: {e}")));
            return None;
        }
    };
    match transports::de::from_value::<T>(json) {
        Ok(v) => Some(v),
        Err((inner, error)) => {
            let path = match inner.as_str() {
                "." | "" => base.to_owned(),
                p if p.starts_with('[') || base.is_empty() => format!("{base}{p}"),
                p => format!("{base}.{p}"),
            };
            problems.push(Problem::new(path, error.to_string()));
            None
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err("a topic name has 1 to 249 characters".into());
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid topic name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!("`{name}` may only contain A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// Endpoint ids appear in metrics labels, delivery ids and the JSON
/// envelope, so they are kept to characters that need no escaping anywhere.
pub fn check_endpoint_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not a valid id (1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests;
