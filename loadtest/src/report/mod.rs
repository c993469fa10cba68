//! The report of a run: what was measured (the types, serialised as the
//! `--json` output), the text table for a terminal, and (in [`html`]) a
//! self-contained HTML page with throughput, age and resource charts.
//!
//! Ratios to the ceiling come first wherever both sides exist: absolute
//! figures on a shared 2-core machine move by a third with its other load,
//! ratios measured in the same run much less.

pub mod html;

use std::fmt::Write as _;

use serde::Serialize;

use crate::ledger::Tally;
use crate::sink::faults::FaultKind;
use crate::sink::Counts;
use crate::stats::Percentiles;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    /// RFC 3339 time the run started.
    pub started_at: String,
    pub machine: Machine,
    pub dispatcher_binary: String,
    /// `embedded` or the bootstrap servers given.
    pub broker: String,
    /// Where the dispatcher configs and logs are.
    pub work_dir: String,
    pub seed: u64,
    pub endpoints: usize,
    /// Events the broker acknowledged.
    pub events: u64,
    pub produce_failed: u64,
    pub elapsed_s: f64,
    pub phases: Vec<PhaseReport>,
    pub accounting: Accounting,
    pub per_endpoint: Vec<EndpointReport>,
    pub dispatcher: DispatcherUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<Ceiling>,
    /// Dispatcher CPU per delivery ÷ the ceiling client's CPU per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ratio: Option<f64>,
    pub targets: Vec<TargetResult>,
    pub notes: Vec<String>,
    pub series: Vec<Sample>,
    pub markers: Vec<Marker>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub os: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// As the scenario wrote it (`max`, `1000/s`, `50% of max`).
    pub rate: String,
    /// Events per second produced (absent for the drain, produced before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_events_per_s: Option<f64>,
    pub events: u64,
    /// Requests the receivers accepted (2xx) during the phase.
    pub deliveries: u64,
    pub elapsed_s: f64,
    pub deliveries_per_s: f64,
    /// `deliveries_per_s` ÷ the ceiling's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_ratio: Option<f64>,
    /// End-to-end age of the deliveries first accepted during the phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<Percentiles>,
    /// The ceiling client's latency at this phase's delivery rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_latency: Option<Percentiles>,
    /// p99 age ÷ the ceiling client's p99 latency at the same rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ratio: Option<f64>,
    /// Healthy endpoints' deliveries ÷ what was produced for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_keep_up: Option<f64>,
    /// Drain only: from the dispatcher's start to its first delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_delivery_s: Option<f64>,
    /// Every delivery expected so far was final when the phase ended.
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Accounting {
    #[serde(flatten)]
    pub total: Tally,
    /// Every expected delivery was delivered or dead-lettered.
    pub complete: bool,
    pub bad_signatures: u64,
    pub bad_requests: u64,
    /// Ids the ledger could not track (it was full).
    pub overflow: u64,
    pub unexpected_dead_letters: u64,
    /// Source records the broker dropped before they were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_dropped: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    pub id: String,
    pub faults: Vec<String>,
    pub tally: Tally,
    /// What the receiver saw over the dispatcher's part of the run.
    pub receiver: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<Percentiles>,
    /// Deliveries accepted per second while the dispatcher ran.
    pub deliveries_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DispatcherUsage {
    pub processes: usize,
    pub starts: u64,
    pub kills: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_peak_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_at_first_delivery_mb: Option<f64>,
    /// Peak minus the RSS at the first delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_growth_mb: Option<f64>,
    pub cpu_s: f64,
    /// Mean cores used while it ran.
    pub mean_cores: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_delivery: Option<f64>,
    /// The receivers' CPU per request while the dispatcher sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink_cpu_us_per_request: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub requests: u64,
    pub concurrency: usize,
    pub elapsed_s: f64,
    pub deliveries_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_us_per_request: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink_cpu_us_per_request: Option<f64>,
    /// Latency at saturation (queueing at full concurrency dominates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub metric: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Absent when the run could not measure it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// One time-series point; rates are over the interval that ends at `t_s`.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the dispatcher started (negative: before, prefill).
    pub t_s: f64,
    pub produced_per_s: f64,
    pub deliveries_per_s: f64,
    /// Every request the receivers got, faults included.
    pub requests_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_max_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
}

/// Something that happened at a moment: a phase began, a process was killed.
#[derive(Debug, Clone, Serialize)]
pub struct Marker {
    pub t_s: f64,
    pub label: String,
}

impl Report {
    /// Targets that were measured and missed.
    pub fn missed_targets(&self) -> usize {
        self.targets.iter().filter(|t| t.met == Some(false)).count()
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn faults_of(c: &Counts) -> String {
    let parts: Vec<String> = FaultKind::ALL
        .iter()
        .filter(|k| c.faults[k.index()] > 0)
        .map(|k| format!("{} {}", k.name(), c.faults[k.index()]))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// The report as text for a terminal.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "scenario {}: {} events, {} endpoints, {} dispatcher process{} ({} start{}, {} kill -9), {:.1} s",
        r.scenario,
        r.events,
        r.endpoints,
        r.dispatcher.processes,
        if r.dispatcher.processes == 1 { "" } else { "es" },
        r.dispatcher.starts,
        if r.dispatcher.starts == 1 { "" } else { "s" },
        r.dispatcher.kills,
        r.elapsed_s
    );
    let _ = writeln!(o, "{}", r.description);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<12} {:>11} {:>9} {:>12} {:>7} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8}",
        "phase",
        "rate",
        "events",
        "deliveries/s",
        "xceil",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "ceil p99",
        "keepup",
        "complete"
    );
    for p in &r.phases {
        let _ = writeln!(
            o,
            "{:<12} {:>11} {:>9} {:>12.0} {:>7} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8}",
            p.name,
            p.rate,
            p.events,
            p.deliveries_per_s,
            opt(p.ceiling_ratio, 2),
            opt(p.age.map(|a| a.p50_ms), 1),
            opt(p.age.map(|a| a.p99_ms), 1),
            opt(p.age.map(|a| a.p999_ms), 1),
            opt(p.ceiling_latency.map(|a| a.p99_ms), 1),
            opt(p.healthy_keep_up, 3),
            if p.complete { "yes" } else { "NO" }
        );
    }
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            o,
            "{:<12} {:>11} {:>9} {:>12.0} {:>7} (bare hyper client, {} requests at concurrency {})",
            "ceiling", "max", "-", c.deliveries_per_s, "1.00", c.requests, c.concurrency
        );
    }
    let a = &r.accounting;
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "deliveries: {} expected, {} delivered, {} duplicates, {} dead-lettered, {} LOST, {} under unexpected ids, {} misrouted{}",
        a.total.expected,
        a.total.delivered,
        a.total.duplicates,
        a.total.dead_lettered,
        a.total.lost,
        a.total.unexpected,
        a.total.misrouted,
        if a.complete { "" } else { " (incomplete when the run ended)" }
    );
    let _ = writeln!(
        o,
        "receivers: {} bad signatures, {} bad requests",
        a.bad_signatures, a.bad_requests
    );
    let d = &r.dispatcher;
    let _ = writeln!(
        o,
        "dispatcher: RSS peak {} MB (at first delivery {} MB, growth {} MB), CPU {:.1} s = {:.2} cores, {} us/delivery{}; receivers {} us/request",
        opt(d.rss_peak_mb, 1),
        opt(d.rss_at_first_delivery_mb, 1),
        opt(d.rss_growth_mb, 1),
        d.cpu_s,
        d.mean_cores,
        opt(d.cpu_us_per_delivery, 1),
        match (r.cpu_ratio, &r.ceiling) {
            (Some(x), Some(c)) => format!(
                " (ceiling client {} us/request: x{x:.2})",
                opt(c.client_cpu_us_per_request, 1)
            ),
            _ => String::new(),
        },
        opt(d.sink_cpu_us_per_request, 1),
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<14} {:>9} {:>9} {:>6} {:>6} {:>6} {:>10} {:>8} {:>8}  faults injected",
        "endpoint", "expected", "delivered", "dups", "dlq", "lost", "deliv/s", "p50 ms", "p99 ms"
    );
    for e in &r.per_endpoint {
        let _ = writeln!(
            o,
            "{:<14} {:>9} {:>9} {:>6} {:>6} {:>6} {:>10.0} {:>8} {:>8}  {}",
            e.id,
            e.tally.expected,
            e.tally.delivered,
            e.tally.duplicates,
            e.tally.dead_lettered,
            e.tally.lost,
            e.deliveries_per_s,
            opt(e.age.map(|a| a.p50_ms), 1),
            opt(e.age.map(|a| a.p99_ms), 1),
            faults_of(&e.receiver)
        );
    }
    if !r.targets.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "targets:");
        for t in &r.targets {
            let bound = match (t.min, t.max) {
                (Some(min), Some(max)) => format!("{min} to {max}"),
                (Some(min), None) => format!(">= {min}"),
                (None, Some(max)) => format!("<= {max}"),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                o,
                "  {:<6} {}{} {} (measured {})",
                match t.met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "n/a",
                },
                t.metric,
                t.phase
                    .as_ref()
                    .map(|p| format!("[{p}]"))
                    .unwrap_or_default(),
                bound,
                opt(t.value, 3)
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(o, "note: {n}");
    }
    let _ = writeln!(o, "dispatcher logs and configs: {}", r.work_dir);
    o
}
