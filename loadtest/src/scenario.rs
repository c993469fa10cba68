//! Scenarios: what a `run` does, as a YAML file. The shipped ones live in
//! `loadtest/scenarios/` and are compiled in, so `loadtest run baseline`
//! works from any directory; any other file is named by its path.
//!
//! A scenario names the endpoints (subscriptions, in-flight caps, faults),
//! how many dispatcher processes run and whether they are killed, what is
//! produced (a backlog before the dispatcher starts, then timed phases at
//! fixed or relative rates), how long a run may take, and the targets the
//! report checks. `loadtest/README.md` documents every key.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use dispatcher::config::FilterValue;
use serde::{Deserialize, Deserializer};
use serde_yaml_ng::Mapping;

use crate::sink::faults::{Fault, FaultKind};
use crate::workload::{EndpointRoute, Routing, DEFAULT_SECRET, DEFAULT_SEED};

/// The shipped scenarios: (name, YAML).
pub const SHIPPED: &[(&str, &str)] = &[
    ("baseline", include_str!("../scenarios/baseline.yaml")),
    ("one-slow", include_str!("../scenarios/one-slow.yaml")),
    ("outage", include_str!("../scenarios/outage.yaml")),
    ("storm", include_str!("../scenarios/storm.yaml")),
    ("crash", include_str!("../scenarios/crash.yaml")),
    ("scale", include_str!("../scenarios/scale.yaml")),
    ("backlog", include_str!("../scenarios/backlog.yaml")),
    ("slow-mix", include_str!("../scenarios/slow-mix.yaml")),
    ("ordered", include_str!("../scenarios/ordered.yaml")),
    (
        "many-tenants",
        include_str!("../scenarios/many-tenants.yaml"),
    ),
];

/// Most endpoints a scenario may have.
pub const MAX_ENDPOINTS: usize = 10_000;
/// Most endpoints with a listener of their own (a port, and in a drain as
/// many connections as its `max_in_flight`): beyond that, `sink.listeners`.
pub const MAX_OWN_LISTENERS: usize = 1000;
/// Most dispatcher processes a scenario may start.
pub const MAX_PROCESSES: usize = 8;

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(
        "no scenario named `{name}` (shipped: {}; or give a path to a .yaml file)",
        shipped_names()
    )]
    Unknown { name: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {name}: {message}")]
    Parse { name: String, message: String },
    #[error("scenario {name}: {}", problems.join("; "))]
    Invalid { name: String, problems: Vec<String> },
}

fn shipped_names() -> String {
    SHIPPED
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of the generated events.
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub kafka: KafkaSpec,
    #[serde(default)]
    pub dispatcher: DispatcherSpec,
    #[serde(default)]
    pub sink: SinkSpec,
    pub endpoints: Vec<EndpointSpec>,
    /// Events written before the dispatcher starts; draining them is the
    /// `drain` phase, which measures the maximum delivery rate.
    #[serde(default)]
    pub prefill: u64,
    /// Phases produced while the dispatcher runs, in order.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// After a phase's production ends (for `drain`: after the dispatcher
    /// starts), how long to wait for every delivery to become final.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle_timeout: Duration,
    /// Bound on the whole run; past it the run stops and reports what it saw.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub ceiling: CeilingSpec,
    /// Seconds between time-series samples.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default)]
    pub targets: Vec<Target>,
    /// How phases end and how the run waits at its end.
    #[serde(default)]
    pub settle: SettleSpec,
    /// Run the same scenario first without some endpoints, to compare the
    /// healthy endpoints' pace and ages with and without them.
    #[serde(default)]
    pub reference: Option<ReferenceSpec>,
    /// After the run, a separate bounded stage: a large backlog spread over
    /// some endpoints, to measure the dispatcher's memory while it waits.
    #[serde(default)]
    pub backlog: Option<BacklogSpec>,
    /// Spread events and endpoints over this many tenants (`t-0000` …):
    /// each event's `data.whatsapp_account_id` names one, in turn, and the
    /// endpoints of a `count` take them in turn too. Needs
    /// `dispatcher.config.routing.tenant_key: data.whatsapp_account_id`.
    /// 0: no tenants.
    #[serde(default)]
    pub tenants: usize,
    /// Each event's `data.contact_id` names one of this many contacts
    /// (`c-00000` …), in turn, and each contact's events go to one
    /// partition: the workload of an endpoint with `ordering: {key:
    /// data.contact_id}`. 0: the seeds' own contact ids, round-robin over
    /// the partitions.
    #[serde(default)]
    pub keys: usize,
}

/// Which deliveries a phase waits for, and what the run does before its
/// final wait.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettleSpec {
    /// `all` (default): each phase waits for every delivery to be final.
    /// `healthy`: only for the healthy endpoints' (no faults, no rate
    /// limit); the others catch up in the background, and the run waits
    /// for every delivery once, after the last phase.
    pub phases: SettleScope,
    /// Switch the receivers' faults off before that final wait, so that
    /// endpoints that were slow on purpose drain their backlog at full
    /// speed (figures about them come from the phases, before).
    pub faults_off: bool,
    /// Once the source has been read to its end (after the phases) and
    /// nine tenths of what is still open waits in Kafka, keep the
    /// dispatcher running this long before the final wait: time to watch
    /// it hold a backlog.
    #[serde(with = "humantime_serde")]
    pub hold: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleScope {
    #[default]
    All,
    Healthy,
}

/// The paired run without some endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    /// Endpoint ids as the scenario writes them (before `count` expands them).
    pub without: Vec<String>,
}

/// The backlog stage: `deliveries` spread evenly over `endpoints`, each
/// subscribed to every event for the stage, written before the dispatcher
/// starts; the receivers keep their faults while the dispatcher reads the
/// whole backlog and for `hold` more, then drop them so it drains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BacklogSpec {
    /// Deliveries in the backlog (0: no stage).
    pub deliveries: u64,
    /// Endpoint ids as the scenario writes them.
    pub endpoints: Vec<String>,
    /// Partitions of the stage's topics (more partitions keep each under
    /// the embedded Kafka's 5 MiB per partition).
    #[serde(default = "default_backlog_partitions")]
    pub partitions: i32,
    #[serde(default = "default_hold", with = "humantime_serde")]
    pub hold: Duration,
    /// Bound on the stage's waits (reading the backlog, draining it).
    #[serde(default = "default_backlog_settle", with = "humantime_serde")]
    pub settle_timeout: Duration,
}

fn default_backlog_partitions() -> i32 {
    256
}
fn default_hold() -> Duration {
    Duration::from_secs(20)
}
fn default_backlog_settle() -> Duration {
    Duration::from_secs(600)
}

fn default_seed() -> u64 {
    DEFAULT_SEED
}
fn default_settle() -> Duration {
    Duration::from_secs(120)
}
fn default_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSpec {
    /// Partitions of the run's topics.
    pub partitions: i32,
}

impl Default for KafkaSpec {
    fn default() -> Self {
        KafkaSpec { partitions: 24 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherSpec {
    /// Dispatcher processes in one consumer group.
    pub processes: usize,
    /// `RUST_LOG` of the dispatcher processes (their logs go to files).
    pub log: String,
    /// Kill -9 a dispatcher (in turn) this long after it started, and start
    /// it again at once.
    #[serde(with = "humantime_serde")]
    pub kill_every: Option<Duration>,
    /// At most this many kills (default: no limit).
    pub max_kills: Option<u64>,
    /// Merged into the generated dispatcher config (deep merge; the
    /// scenario's keys win): pipeline tuning, Kafka options, new features.
    pub config: Mapping,
}

impl Default for DispatcherSpec {
    fn default() -> Self {
        DispatcherSpec {
            processes: 1,
            log: "warn".into(),
            kill_every: None,
            max_kills: None,
            config: Mapping::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkSpec {
    /// Threads serving the receivers.
    pub threads: usize,
    /// Listeners shared by the receivers without connection-level faults
    /// (`refuse`, `reset`), which tell requests apart by path; 0: each
    /// receiver listens on a port of its own.
    pub listeners: usize,
}

impl Default for SinkSpec {
    fn default() -> Self {
        SinkSpec {
            threads: 1,
            listeners: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub id: String,
    /// This many endpoints `<id>-0` … `<id>-<count-1>`, alike.
    #[serde(default)]
    pub count: Option<usize>,
    #[serde(default = "everything")]
    pub events: Vec<String>,
    #[serde(default)]
    pub filter: BTreeMap<String, FilterValue>,
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_endpoint_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `whsec_` secret; default the Standard Webhooks example secret.
    /// `none` sends unsigned (the receiver then skips verification).
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Merged into this endpoint's entry of the dispatcher config.
    #[serde(default)]
    pub config: Mapping,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}
fn default_in_flight() -> usize {
    32
}
fn default_endpoint_timeout() -> Duration {
    Duration::from_secs(10)
}

/// An endpoint after `count` is expanded.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    /// Its tenant, when the scenario has `tenants`.
    pub tenant: Option<String>,
    pub events: Vec<String>,
    pub filter: BTreeMap<String, FilterValue>,
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub secret: Option<String>,
    pub faults: Vec<Fault>,
    pub config: Mapping,
}

impl Endpoint {
    pub fn route(&self) -> EndpointRoute {
        EndpointRoute {
            id: self.id.clone(),
            events: self.events.clone(),
            filter: self.filter.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// Healthy: no faults at all and no rate limit, so it can take
    /// whatever it is sent.
    pub fn healthy(&self) -> bool {
        self.faults.is_empty() && self.rate_limit().is_none()
    }

    /// `rate_limit.per_second` of its dispatcher config, if any.
    pub fn rate_limit(&self) -> Option<f64> {
        self.config
            .get("rate_limit")?
            .get("per_second")?
            .as_f64()
            .filter(|r| *r > 0.0)
    }

    /// The deliveries per second it can take at most: `max_in_flight` over
    /// the latency its faults add (each weighted by its ratio), or its rate
    /// limit, whichever is lower. `None` when neither bounds it.
    pub fn sustainable_per_s(&self) -> Option<f64> {
        let by_latency = self.latency_s().map(|l| self.max_in_flight as f64 / l);
        match (by_latency, self.rate_limit()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The mean latency its faults add to an answer, if any.
    pub fn latency_s(&self) -> Option<f64> {
        let latency: f64 = self
            .faults
            .iter()
            .filter(|f| f.kind == FaultKind::Latency)
            .map(|f| f.latency.unwrap_or_default().as_secs_f64() * f.ratio)
            .sum();
        (latency > 0.0).then_some(latency)
    }

    /// Its pace is bounded by its latency (rather than by a rate limit).
    pub fn latency_bound(&self) -> bool {
        match (self.latency_s(), self.rate_limit()) {
            (Some(l), Some(r)) => self.max_in_flight as f64 / l <= r,
            (l, _) => l.is_some(),
        }
    }
}

/// A phase's production rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// As fast as the broker takes events.
    Max,
    /// Events per second.
    PerSecond(f64),
    /// This share of the `drain` phase's event rate (needs a prefill).
    OfMax(f64),
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "rate is `max`, events per second, or a percentage such as `50%`",
            )
        };
        match Raw::deserialize(d)? {
            Raw::Number(n) if n > 0.0 && n.is_finite() => Ok(Rate::PerSecond(n)),
            Raw::Text(t) if t == "max" => Ok(Rate::Max),
            Raw::Text(t) => match t.strip_suffix('%').map(|p| p.trim().parse::<f64>()) {
                Some(Ok(p)) if p > 0.0 && p <= 1000.0 => Ok(Rate::OfMax(p / 100.0)),
                _ => t
                    .parse::<f64>()
                    .ok()
                    .filter(|n| *n > 0.0 && n.is_finite())
                    .map(Rate::PerSecond)
                    .ok_or_else(bad),
            },
            Raw::Number(_) => Err(bad()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub rate: Rate,
    #[serde(default)]
    pub events: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CeilingSpec {
    pub enabled: bool,
    /// Requests the ceiling client sends to measure its rate.
    pub max_requests: usize,
    /// How long it runs at each fixed-rate phase's rate, for latency.
    #[serde(with = "humantime_serde")]
    pub latency_duration: Duration,
}

impl Default for CeilingSpec {
    fn default() -> Self {
        CeilingSpec {
            enabled: true,
            max_requests: 200_000,
            latency_duration: Duration::from_secs(5),
        }
    }
}

/// What a target measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// A phase's deliveries/s ÷ the ceiling's.
    CeilingRatio,
    DeliveriesPerS,
    P99AgeMs,
    P999AgeMs,
    /// Expected deliveries never accepted and never dead-lettered.
    Losses,
    /// Deliveries accepted under ids nothing expected (unstable ids).
    UnexpectedIds,
    Duplicates,
    DeadLettered,
    /// In a phase: healthy endpoints' deliveries ÷ what was produced for them.
    HealthyKeepUp,
    RssPeakMb,
    /// Peak RSS minus the RSS when the first delivery arrived.
    RssGrowthMb,
    /// In a phase: healthy endpoints' deliveries accepted while it was
    /// produced ÷ those produced for them meanwhile.
    HealthyPace,
    /// In a phase: the healthy endpoints' p99 age ÷ theirs in the same
    /// phase of the reference run (without the endpoints it leaves out).
    HealthyP99Ratio,
    /// In a phase: the lowest, over the endpoints with a bounded pace
    /// (latency faults, rate limit), of deliveries per second ÷ that pace.
    DrainRatio,
    /// Records written to the spill topic ÷ distinct deliveries in it.
    SpillWritesPerDelivery,
    /// The backlog stage's peak RSS before its receivers' faults ended.
    BacklogRssPeakMb,
    /// The backlog stage's lost deliveries.
    BacklogLosses,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub metric: Metric,
    /// The phase it applies to (phase metrics only).
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

impl Metric {
    /// The name scenarios use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::CeilingRatio => "ceiling_ratio",
            Metric::DeliveriesPerS => "deliveries_per_s",
            Metric::P99AgeMs => "p99_age_ms",
            Metric::P999AgeMs => "p999_age_ms",
            Metric::Losses => "losses",
            Metric::UnexpectedIds => "unexpected_ids",
            Metric::Duplicates => "duplicates",
            Metric::DeadLettered => "dead_lettered",
            Metric::HealthyKeepUp => "healthy_keep_up",
            Metric::RssPeakMb => "rss_peak_mb",
            Metric::RssGrowthMb => "rss_growth_mb",
            Metric::HealthyPace => "healthy_pace",
            Metric::HealthyP99Ratio => "healthy_p99_ratio",
            Metric::DrainRatio => "drain_ratio",
            Metric::SpillWritesPerDelivery => "spill_writes_per_delivery",
            Metric::BacklogRssPeakMb => "backlog_rss_peak_mb",
            Metric::BacklogLosses => "backlog_losses",
        }
    }

    pub fn per_phase(self) -> bool {
        matches!(
            self,
            Metric::CeilingRatio
                | Metric::DeliveriesPerS
                | Metric::P99AgeMs
                | Metric::P999AgeMs
                | Metric::HealthyKeepUp
                | Metric::HealthyPace
                | Metric::HealthyP99Ratio
                | Metric::DrainRatio
        )
    }
}

impl Scenario {
    /// A shipped scenario by name, or a file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        let path = Path::new(name_or_path);
        let looks_like_file = name_or_path.ends_with(".yaml")
            || name_or_path.ends_with(".yml")
            || name_or_path.contains('/');
        if looks_like_file || path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
                path: name_or_path.to_owned(),
                source,
            })?;
            return Scenario::from_yaml(name_or_path, &text);
        }
        let (_, text) = SHIPPED
            .iter()
            .find(|(n, _)| *n == name_or_path)
            .ok_or_else(|| ScenarioError::Unknown {
                name: name_or_path.to_owned(),
            })?;
        Scenario::from_yaml(name_or_path, text)
    }

    /// Parse and check; `origin` names the text in errors.
    pub fn from_yaml(origin: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario =
            serde_yaml_ng::from_str(text).map_err(|e| ScenarioError::Parse {
                name: origin.to_owned(),
                message: e.to_string(),
            })?;
        scenario
            .check()
            .map_err(|problems| ScenarioError::Invalid {
                name: origin.to_owned(),
                problems,
            })?;
        Ok(scenario)
    }

    /// Endpoints with `count` expanded.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for spec in &self.endpoints {
            let ids: Vec<String> = match spec.count {
                None => vec![spec.id.clone()],
                Some(n) => (0..n).map(|k| format!("{}-{k}", spec.id)).collect(),
            };
            for (k, id) in ids.into_iter().enumerate() {
                let tenant =
                    (self.tenants > 0).then(|| crate::workload::tenant_name(k % self.tenants));
                let mut config = spec.config.clone();
                if let Some(t) = &tenant {
                    config.insert("tenant".into(), t.as_str().into());
                }
                out.push(Endpoint {
                    id,
                    tenant,
                    events: spec.events.clone(),
                    filter: spec.filter.clone(),
                    max_in_flight: spec.max_in_flight,
                    timeout: spec.timeout,
                    secret: match spec.secret.as_deref() {
                        None => Some(DEFAULT_SECRET.to_owned()),
                        Some("none") => None,
                        Some(s) => Some(s.to_owned()),
                    },
                    faults: spec.faults.clone(),
                    config,
                });
            }
        }
        out
    }

    /// Every problem, so that a scenario author fixes them in one go.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !ok_name(&self.name) {
            problems.push(format!(
                "name `{}`: 1 to 64 of A-Z a-z 0-9 . _ -",
                self.name
            ));
        }
        if !(1..=1000).contains(&self.kafka.partitions) {
            problems.push("kafka.partitions: 1 to 1000".into());
        }
        if !(1..=MAX_PROCESSES).contains(&self.dispatcher.processes) {
            problems.push(format!("dispatcher.processes: 1 to {MAX_PROCESSES}"));
        }
        if self
            .dispatcher
            .kill_every
            .is_some_and(|d| d < Duration::from_millis(100))
        {
            problems.push("dispatcher.kill_every: at least 100ms".into());
        }
        if !(1..=16).contains(&self.sink.threads) {
            problems.push("sink.threads: 1 to 16".into());
        }
        if self.interval < Duration::from_millis(50) {
            problems.push("interval: at least 50ms".into());
        }
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            problems.push("endpoints: at least one".into());
        }
        if endpoints.len() > MAX_ENDPOINTS {
            problems.push(format!("endpoints: at most {MAX_ENDPOINTS}"));
        }
        if self.sink.listeners > 64 {
            problems.push("sink.listeners: 0 to 64".into());
        }
        let own_listeners = if self.sink.listeners == 0 {
            endpoints.len()
        } else {
            endpoints
                .iter()
                .filter(|e| {
                    e.faults
                        .iter()
                        .any(|f| matches!(f.kind, FaultKind::Refuse | FaultKind::Reset))
                })
                .count()
        };
        if own_listeners > MAX_OWN_LISTENERS {
            problems.push(format!(
                "{own_listeners} receivers would listen on ports of their own (at most {MAX_OWN_LISTENERS}): set sink.listeners to share a few"
            ));
        }
        let mut seen = HashSet::new();
        for (i, ep) in endpoints.iter().enumerate() {
            if let Err(e) = dispatcher::config::check_endpoint_id(&ep.id) {
                problems.push(format!("endpoint {i}: {e}"));
            } else if !seen.insert(ep.id.as_str()) {
                problems.push(format!("endpoint id `{}` is used twice", ep.id));
            }
            if !(1..=10_000).contains(&ep.max_in_flight) {
                problems.push(format!("endpoint {}: max_in_flight 1 to 10000", ep.id));
            }
            if let Some(s) = &ep.secret {
                if crate::sink::verify::Verifier::new(&[s]).is_err() {
                    problems.push(format!(
                        "endpoint {}: secret is not whsec_<base64> (or `none`)",
                        ep.id
                    ));
                }
            }
            for (j, f) in ep.faults.iter().enumerate() {
                if let Err(e) = f.check() {
                    problems.push(format!("endpoint {} fault {j}: {e}", ep.id));
                }
            }
        }
        if let Err(e) = Routing::new(&endpoints.iter().map(Endpoint::route).collect::<Vec<_>>()) {
            problems.push(e);
        }
        if self.tenants > 0 {
            let key = self
                .dispatcher
                .config
                .get("routing")
                .and_then(|r| r.get("tenant_key"))
                .and_then(|k| k.as_str());
            if key != Some(crate::workload::TENANT_KEY) {
                problems.push(format!(
                    "tenants: needs dispatcher.config.routing.tenant_key: {}",
                    crate::workload::TENANT_KEY
                ));
            }
        }
        let spec_ids: HashSet<&str> = self.endpoints.iter().map(|e| e.id.as_str()).collect();
        if let Some(r) = &self.reference {
            for id in &r.without {
                if !spec_ids.contains(id.as_str()) {
                    problems.push(format!("reference.without: no endpoint `{id}`"));
                }
            }
            if r.without.len() >= self.endpoints.len() {
                problems.push("reference.without: must leave at least one endpoint".into());
            }
        }
        if let Some(b) = &self.backlog {
            if b.endpoints.is_empty() {
                problems.push("backlog.endpoints: at least one".into());
            }
            for id in &b.endpoints {
                if !spec_ids.contains(id.as_str()) {
                    problems.push(format!("backlog.endpoints: no endpoint `{id}`"));
                }
            }
            if !(1..=1000).contains(&b.partitions) {
                problems.push("backlog.partitions: 1 to 1000".into());
            }
            if b.deliveries > crate::run::LEDGER_CAPACITY as u64 / 2 {
                problems.push(format!(
                    "backlog.deliveries: at most {}",
                    crate::run::LEDGER_CAPACITY / 2
                ));
            }
        }
        if self.prefill == 0 && self.phases.is_empty() {
            problems.push("nothing to produce: set prefill, phases, or both".into());
        }
        let mut names: HashSet<&str> = HashSet::new();
        if self.prefill > 0 {
            names.insert("drain");
        }
        for p in &self.phases {
            if !names.insert(p.name.as_str()) {
                problems.push(format!(
                    "phase name `{}` is used twice (`drain` is the prefill's)",
                    p.name
                ));
            }
            if p.events.is_none() && p.duration.is_none() {
                problems.push(format!("phase {}: give events, duration or both", p.name));
            }
            if matches!(p.rate, Rate::OfMax(_)) && self.prefill == 0 {
                problems.push(format!(
                    "phase {}: a percentage rate needs a prefill (its drain measures the maximum)",
                    p.name
                ));
            }
        }
        for t in &self.targets {
            match (&t.phase, t.metric.per_phase()) {
                (Some(p), true) if !names.contains(p.as_str()) => {
                    problems.push(format!("target {}: no phase named `{p}`", t.metric.name()))
                }
                (None, true) => problems.push(format!("target {}: needs a phase", t.metric.name())),
                (Some(_), false) => problems.push(format!(
                    "target {}: applies to the whole run, not a phase",
                    t.metric.name()
                )),
                _ => {}
            }
            if t.min.is_none() && t.max.is_none() {
                problems.push(format!("target {}: give min, max or both", t.metric.name()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_loads() {
        for (name, _) in SHIPPED {
            let s = Scenario::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&s.name, name);
            assert!(!s.description.is_empty(), "{name} has no description");
        }
    }

    #[test]
    fn tenants_spread_over_the_endpoints_and_need_the_tenant_key() {
        let s = Scenario::load("many-tenants").unwrap();
        let eps = s.endpoints();
        assert_eq!(eps.len(), 10_000);
        assert_eq!(eps[0].tenant.as_deref(), Some("t-0000"));
        assert_eq!(eps[1001].tenant.as_deref(), Some("t-0001"));
        assert_eq!(
            eps[1001].config.get("tenant").and_then(|t| t.as_str()),
            Some("t-0001"),
            "the dispatcher config names it too"
        );
        let bad = Scenario::from_yaml(
            "t",
            "name: t\ntenants: 3\nendpoints:\n  - {id: ep, count: 3}\nprefill: 10\n",
        )
        .expect_err("a scenario with tenants and no tenant key");
        assert!(bad.to_string().contains("routing.tenant_key"), "{bad}");
    }

    #[test]
    fn expands_counts_and_reads_rates() {
        let s = Scenario::from_yaml(
            "t",
            r#"
name: t
endpoints:
  - {id: ep, count: 3}
  - {id: plain, secret: none, events: ["message.*"]}
prefill: 10
phases:
  - {name: a, rate: 50%, duration: 1s}
  - {name: b, rate: 250, events: 10}
  - {name: c, rate: max, events: 10}
"#,
        )
        .unwrap();
        let eps = s.endpoints();
        assert_eq!(
            eps.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["ep-0", "ep-1", "ep-2", "plain"]
        );
        assert_eq!(eps[3].secret, None);
        assert_eq!(eps[0].secret.as_deref(), Some(DEFAULT_SECRET));
        let rates: Vec<Rate> = s.phases.iter().map(|p| p.rate).collect();
        assert_eq!(rates, [Rate::OfMax(0.5), Rate::PerSecond(250.0), Rate::Max]);
    }

    #[test]
    fn lists_every_problem() {
        let err = Scenario::from_yaml(
            "t",
            r#"
name: "bad name"
endpoints:
  - {id: a, faults: [{kind: latency}]}
  - {id: a}
phases:
  - {name: x, rate: 50%}
targets:
  - {metric: losses, phase: x, max: 0}
  - {metric: p99_age_ms, max: 20}
"#,
        )
        .unwrap_err();
        let ScenarioError::Invalid { problems, .. } = err else {
            panic!("{err}")
        };
        let text = problems.join("\n");
        for expected in [
            "name `bad name`",
            "fault 0: a latency fault needs",
            "`a` is used twice",
            "phase x: give events",
            "a percentage rate needs a prefill",
            "applies to the whole run",
            "needs a phase",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(matches!(
            Scenario::load("nope"),
            Err(ScenarioError::Unknown { .. })
        ));
        assert!(Scenario::from_yaml("t", "name: t\nendpoints: []\nsurprise: 1\n").is_err());
    }
}
