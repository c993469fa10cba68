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

use crate::broker::Written;
use crate::ledger::Tally;
use crate::scrape::{BucketQuantiles, EndpointTotals};
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
    /// The load tester's own process (broker when embedded, producer,
    /// receivers): which side of the machine was busy.
    pub load_tester: LoadTesterUsage,
    /// Most deliveries waiting in Kafka at once, by the dispatchers' metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_peak: Option<f64>,
    /// The spill topic read back after the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill: Option<SpillReport>,
    /// The wait for every delivery after the phases, when the phases waited
    /// only for the healthy endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_settle: Option<FinalSettle>,
    /// The paired run without the endpoints `reference.without` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Box<Report>>,
    /// The backlog stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<Box<Report>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadTesterUsage {
    pub cpu_s: f64,
    pub mean_cores: f64,
    /// Of that, the embedded broker's (its thread in this process); absent
    /// with a broker given on the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_mean_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpillReport {
    /// `dispatcher_spilled_total`, every endpoint and process together.
    pub spilled: u64,
    pub written: Written,
    /// Records in the spill topic ÷ distinct deliveries in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_per_delivery: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FinalSettle {
    /// The receivers' faults were switched off first.
    pub faults_off: bool,
    /// The backlog was held this long (after the source was read) first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_s: Option<f64>,
    /// The dispatcher's peak RSS up to the final wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_peak_before_mb: Option<f64>,
    /// Most deliveries waiting in Kafka at once up to the final wait.
    pub backlog_peak_before: f64,
    pub elapsed_s: f64,
    pub complete: bool,
}

/// An endpoint whose pace is bounded on purpose (latency, rate limit), in
/// one phase: how close to that pace the dispatcher kept it.
#[derive(Debug, Clone, Serialize)]
pub struct BoundedEndpoint {
    pub id: String,
    pub max_in_flight: usize,
    /// `max_in_flight` ÷ the latency its faults add, or its rate limit.
    pub sustainable_per_s: f64,
    /// Deliveries produced for it per second during the phase.
    pub offered_per_s: f64,
    /// Its deliveries waiting in Kafka when the phase began (metrics).
    pub backlog_at_start: f64,
    /// It had more to do than it can take (offered plus its backlog).
    pub saturated: bool,
    /// Requests its receiver accepted while the phase was produced.
    pub accepted: u64,
    pub window_s: f64,
    /// `accepted` ÷ `window_s`.
    pub deliveries_per_s: f64,
    /// Its pace: for a latency-bound endpoint, requests in progress at its
    /// receiver ÷ the latency (Little's law, exact where whole answers
    /// over a window are not); for a rate-limited one, `deliveries_per_s`.
    pub drain_per_s: f64,
    /// `drain_per_s` ÷ what it can take (`sustainable_per_s`), or ÷ what
    /// it was given when that was less.
    pub drain_ratio: f64,
    /// Requests in progress at its receiver, on average.
    pub mean_in_flight: f64,
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
    /// The dispatchers' `dispatcher_dispatch_latency_seconds` over the
    /// phase (record read to 2xx): their own share of the age, to the
    /// histogram's bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_latency: Option<BucketQuantiles>,
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
    /// The rate asked for, in events per second (absent: `max`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_events_per_s: Option<f64>,
    /// Healthy endpoints' deliveries accepted while the phase was produced ÷
    /// those produced for them meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_pace: Option<f64>,
    /// End-to-end age of the healthy endpoints' deliveries of the phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_age: Option<Percentiles>,
    /// `healthy_age` p99 ÷ the reference run's, same phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_p99_ratio: Option<f64>,
    /// Endpoints bounded on purpose, and how close to their pace they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bounded: Vec<BoundedEndpoint>,
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
    /// Its backlog in Kafka, by the dispatchers' metrics.
    pub backlog: EndpointTotals,
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
    /// p99 age at the healthy endpoints alone (no faults, no rate limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy_age_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// The load tester's own process (the embedded broker included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadtest_cores: Option<f64>,
    /// The embedded broker's thread alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cores: Option<f64>,
    /// Deliveries waiting in Kafka (dispatcher metrics), all endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_deliveries: Option<f64>,
    /// How long the oldest of them had waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_oldest_s: Option<f64>,
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
    let dispatch: Vec<(&str, BucketQuantiles)> = r
        .phases
        .iter()
        .filter_map(|p| Some((p.name.as_str(), p.dispatch_latency?)))
        .collect();
    if !dispatch.is_empty() {
        let _ = writeln!(
            o,
            "dispatch latency, record read to 2xx (the dispatchers' histogram, to its bucket):"
        );
        for (phase, q) in dispatch {
            let _ = writeln!(
                o,
                "  {phase:<12} p50 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  ({} deliveries)",
                q.p50_ms, q.p99_ms, q.p999_ms, q.count
            );
        }
    }
    if let Some(c) = &r.ceiling {
        let _ = writeln!(
            o,
            "{:<12} {:>11} {:>9} {:>12.0} {:>7} (bare hyper client, {} requests at concurrency {})",
            "ceiling", "max", "-", c.deliveries_per_s, "1.00", c.requests, c.concurrency
        );
    }
    isolation_text(&mut o, r);
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
        "{:<14} {:>9} {:>9} {:>6} {:>6} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}  faults injected",
        "endpoint",
        "expected",
        "delivered",
        "dups",
        "dlq",
        "lost",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "spilled",
        "backlog",
        "oldest s"
    );
    for e in &r.per_endpoint {
        let _ = writeln!(
            o,
            "{:<14} {:>9} {:>9} {:>6} {:>6} {:>6} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>7.1}  {}",
            e.id,
            e.tally.expected,
            e.tally.delivered,
            e.tally.duplicates,
            e.tally.dead_lettered,
            e.tally.lost,
            e.deliveries_per_s,
            opt(e.age.map(|a| a.p50_ms), 1),
            opt(e.age.map(|a| a.p99_ms), 1),
            e.backlog.spilled,
            e.backlog.backlog_peak,
            e.backlog.backlog_oldest_age_max_s,
            faults_of(&e.receiver)
        );
    }
    let _ = writeln!(
        o,
        "(backlog: most deliveries waiting in Kafka at once; oldest s: the longest any waited there)"
    );
    if let Some(b) = &r.backlog {
        backlog_text(&mut o, b);
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

/// The healthy endpoints' pace and ages, against the reference run's; the
/// bounded endpoints' drain; the spill topic; the final wait.
pub(crate) fn isolation_text(o: &mut String, r: &Report) {
    let with_healthy: Vec<&PhaseReport> = r
        .phases
        .iter()
        .filter(|p| p.healthy_pace.is_some() || p.healthy_age.is_some())
        .collect();
    if !with_healthy.is_empty() {
        let _ = writeln!(o);
        let reference = r.reference.as_deref();
        let _ = writeln!(
            o,
            "healthy endpoints (no faults, no rate limit){}:",
            match reference {
                Some(_) => ", against the reference run without the others",
                None => "",
            }
        );
        let _ = writeln!(
            o,
            "  {:<12} {:>7} {:>9} {:>9} {:>10} {:>10} {:>12}",
            "phase", "pace", "p50 ms", "p99 ms", "ref pace", "ref p99", "p99 x ref"
        );
        for p in with_healthy {
            let theirs = reference.and_then(|x| x.phases.iter().find(|q| q.name == p.name));
            let _ = writeln!(
                o,
                "  {:<12} {:>7} {:>9} {:>9} {:>10} {:>10} {:>12}",
                p.name,
                opt(p.healthy_pace, 3),
                opt(p.healthy_age.map(|a| a.p50_ms), 1),
                opt(p.healthy_age.map(|a| a.p99_ms), 1),
                opt(theirs.and_then(|q| q.healthy_pace), 3),
                opt(theirs.and_then(|q| q.healthy_age.map(|a| a.p99_ms)), 1),
                opt(p.healthy_p99_ratio, 2),
            );
        }
    }
    for p in r.phases.iter().filter(|p| !p.bounded.is_empty()) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "bounded endpoints in {} ({:.0} s of production):",
            p.name,
            p.bounded.first().map_or(0.0, |b| b.window_s)
        );
        let _ = writeln!(
            o,
            "  {:<14} {:>11} {:>10} {:>10} {:>12} {:>9} {:>7} {:>16}",
            "endpoint",
            "can take/s",
            "offered/s",
            "backlog",
            "delivered/s",
            "pace/s",
            "ratio",
            "in flight (max)"
        );
        for b in &p.bounded {
            let _ = writeln!(
                o,
                "  {:<14} {:>11.2} {:>10.1} {:>10.0} {:>12.2} {:>9.2} {:>7.3} {:>10.2} ({:>3}){}",
                b.id,
                b.sustainable_per_s,
                b.offered_per_s,
                b.backlog_at_start,
                b.deliveries_per_s,
                b.drain_per_s,
                b.drain_ratio,
                b.mean_in_flight,
                b.max_in_flight,
                if b.saturated {
                    ""
                } else {
                    "  (not saturated: ratio to what it was given)"
                }
            );
        }
    }
    if let Some(s) = &r.spill {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "spill topic: {} deliveries spilled (dispatcher metrics); read back {} records of {} distinct deliveries = {} writes each{}",
            s.spilled,
            s.written.records,
            s.written.deliveries,
            opt(s.writes_per_delivery, 3),
            if s.written.dropped > 0 {
                format!(" ({} records dropped by the broker)", s.written.dropped)
            } else {
                String::new()
            }
        );
    }
    if let Some(f) = &r.final_settle {
        let _ = writeln!(
            o,
            "final wait{}{}: {:.1} s, {}; before it: RSS peak {} MB, backlog peak {:.0}",
            f.hold_s
                .map(|h| format!(" (after holding the backlog {h:.0} s)"))
                .unwrap_or_default(),
            if f.faults_off { " with faults off" } else { "" },
            f.elapsed_s,
            if f.complete { "complete" } else { "INCOMPLETE" },
            opt(f.rss_peak_before_mb, 1),
            f.backlog_peak_before
        );
    }
    let _ = writeln!(
        o,
        "load tester (broker if embedded, producer, receivers): CPU {:.1} s = {:.2} cores{}",
        r.load_tester.cpu_s,
        r.load_tester.mean_cores,
        match (r.load_tester.broker_cpu_s, r.load_tester.broker_mean_cores) {
            (Some(s), Some(c)) => format!(", of which the embedded broker {s:.1} s = {c:.2} cores"),
            _ => String::new(),
        }
    );
}

/// The backlog stage in a few lines.
pub(crate) fn backlog_text(o: &mut String, b: &Report) {
    let _ = writeln!(o);
    let _ = writeln!(o, "backlog stage: {}", b.description);
    let a = &b.accounting.total;
    let f = b.final_settle.as_ref();
    let _ = writeln!(
        o,
        "  {} deliveries expected, {} delivered, {} LOST; backlog peak {:.0} (metrics), RSS peak while holding it {} MB (at first delivery {} MB), peak overall {} MB",
        a.expected,
        a.delivered,
        a.lost,
        f.map_or(0.0, |f| f.backlog_peak_before),
        opt(f.and_then(|f| f.rss_peak_before_mb), 1),
        opt(b.dispatcher.rss_at_first_delivery_mb, 1),
        opt(b.dispatcher.rss_peak_mb, 1),
    );
    if let Some(s) = &b.spill {
        let _ = writeln!(
            o,
            "  spill topic: {} spilled, {} records of {} distinct deliveries = {} writes each",
            s.spilled,
            s.written.records,
            s.written.deliveries,
            opt(s.writes_per_delivery, 3)
        );
    }
    if let Some(f) = f {
        let _ = writeln!(
            o,
            "  drained with faults off in {:.1} s; dispatcher {:.2} cores, load tester {:.2} cores",
            f.elapsed_s, b.dispatcher.mean_cores, b.load_tester.mean_cores
        );
    }
    for n in &b.notes {
        let _ = writeln!(o, "  note: {n}");
    }
}
