//! The scenario runner: starts the broker, the receivers, the dead-letter
//! watcher and the dispatcher processes, drives the phases, kills what the
//! scenario says to kill, then measures the ceiling and builds the report.
//!
//! A run is bounded on every side: each phase by its events or duration,
//! each wait for deliveries by `settle_timeout`, the whole run by `timeout`;
//! when a bound is hit the run stops and reports what it saw, marked
//! incomplete. Dispatcher processes never outlive the run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use serde_yaml_ng::{Mapping, Value};
use transports::http::signing::Signer;
use transports::DeliveryId;

use crate::bare::{self, BareLoad, Prepared};
use crate::broker::{self, Broker, Topics};
use crate::deadletters::Watcher;
use crate::fleet::{BaseConfig, Fleet, Usage};
use crate::ledger::Ledger;
use crate::procstat;
use crate::produce::{self, Expectations, Plan, Produced};
use crate::report::{
    Accounting, BoundedEndpoint, Ceiling, DispatcherUsage, EndpointReport, FinalSettle,
    LoadTesterUsage, Machine, Marker, PhaseReport, Report, Sample, SpillReport, TargetResult,
};
use crate::scenario::{Endpoint, Metric, Rate, Scenario, SettleScope};
use crate::scrape::Tracker;
use crate::sink::{self, Counts, Sink, SinkEndpoint};
use crate::stats::Percentiles;
use crate::workload::{Expected, Routing, Workload};

/// Most delivery ids one run tracks (about 40 bytes each).
pub const LEDGER_CAPACITY: usize = 20_000_000;

/// How often the monitor looks at the processes and the receivers.
const TICK: Duration = Duration::from_millis(25);

/// How the run is set up, beyond the scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The `dispatcher` binary.
    pub dispatcher: PathBuf,
    /// Bootstrap servers; `None` starts the embedded Kafka.
    pub brokers: Option<String>,
    /// Where configs and logs go; default a fresh directory under the
    /// system's temporary directory, kept after the run.
    pub work_dir: Option<PathBuf>,
    /// A progress line on stderr every second.
    pub progress: bool,
    /// Keep a Prometheus `file_sd_configs` target list of the dispatchers'
    /// metrics addresses in this file, for a Prometheus watching the run.
    pub prometheus_targets: Option<PathBuf>,
}

/// What the monitor task and the phases share.
struct Live {
    sink: Arc<Sink>,
    fleet: Mutex<Option<Fleet>>,
    ledger: Arc<Ledger>,
    produced: AtomicU64,
    /// Set to stop the monitor, and any production in progress.
    stop: AtomicBool,
    /// Kills are only due while this is set.
    chaos: AtomicBool,
    kill_every: Option<Duration>,
    max_kills: Option<u64>,
    failure: Mutex<Option<String>>,
    /// The dispatcher's start: time zero of the series and of the faults.
    epoch: OnceLock<Instant>,
    first_delivery: OnceLock<Instant>,
    rss_at_first_delivery: OnceLock<u64>,
    peak_rss: AtomicU64,
    phase: Mutex<String>,
    series: Mutex<Vec<Sample>>,
    markers: Mutex<Vec<Marker>>,
    /// What the dispatchers' metrics said, added up over the run.
    metrics: Mutex<Tracker>,
    run_started: Instant,
    interval: Duration,
    progress: bool,
    /// The broker runs in this process (its CPU is sampled apart).
    broker_embedded: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Live {
    /// Seconds on the run's clock (zero at the dispatcher's start).
    fn clock(&self, at: Instant) -> f64 {
        match self.epoch.get() {
            Some(e) if at >= *e => (at - *e).as_secs_f64(),
            Some(e) => -(*e - at).as_secs_f64(),
            None => -(Instant::now() - at).as_secs_f64(),
        }
    }

    fn mark(&self, label: impl Into<String>) {
        let t = self.clock(Instant::now());
        lock(&self.markers).push(Marker {
            t_s: t,
            label: label.into(),
        });
    }

    fn fail(&self, why: String) {
        lock(&self.failure).get_or_insert(why);
        self.stop.store(true, Ordering::Relaxed);
    }

    fn check(&self) -> anyhow::Result<()> {
        match lock(&self.failure).as_ref() {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }

    fn usage(&self) -> Option<Usage> {
        lock(&self.fleet).as_ref().map(Fleet::usage)
    }

    /// Read every dispatcher's metrics once and add them to the tracker.
    async fn scrape(&self) {
        let addrs = lock(&self.fleet)
            .as_ref()
            .map(Fleet::admin_addrs)
            .unwrap_or_default();
        let mut round = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.into_iter().enumerate() {
            if let Some(s) = crate::scrape::fetch(addr).await {
                round.push((i, s));
            }
        }
        lock(&self.metrics).update(&round);
    }
}

/// Watches everything while the run goes on: samples the series, keeps the
/// RSS peak, kills dispatchers when due, notices dispatchers that died on
/// their own, prints progress.
async fn monitor(live: Arc<Live>) {
    let mut last_sample = Instant::now();
    let mut last_counts = Counts::sum(&live.sink.counts());
    let mut last_produced = 0;
    let mut last_cpu: Option<Duration> = None;
    let mut last_own_cpu = procstat::cpu(None);
    let mut last_broker_cpu = Broker::embedded_cpu(live.broker_embedded);
    let mut last_progress = Instant::now();
    let mut last_kill = Instant::now();
    let mut next_victim = 0;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !live.stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let usage = live.usage();
        if let Some(u) = usage {
            live.peak_rss.fetch_max(u.rss_bytes, Ordering::Relaxed);
        }
        let counts = Counts::sum(&live.sink.counts());
        if counts.accepted > 0 && live.first_delivery.get().is_none() {
            let _ = live.first_delivery.set(Instant::now());
            if let Some(u) = usage {
                let _ = live.rss_at_first_delivery.set(u.rss_bytes);
            }
        }

        // Processes: died on their own? due for a kill?
        {
            let mut fleet = lock(&live.fleet);
            if let Some(f) = fleet.as_mut() {
                if let Err(e) = f.check() {
                    drop(fleet);
                    live.fail(format!("{e:#}"));
                    return;
                }
                if let (Some(every), true) = (live.kill_every, live.chaos.load(Ordering::Relaxed)) {
                    let allowed = live.max_kills.is_none_or(|max| f.kills() < max);
                    if allowed
                        && last_kill.elapsed() >= every
                        && f.uptime(next_victim) >= every.min(Duration::from_secs(1))
                    {
                        let victim = next_victim;
                        next_victim = (next_victim + 1) % f.len();
                        last_kill = Instant::now();
                        let result = f.kill_and_restart(victim);
                        drop(fleet);
                        match result {
                            Ok(()) => live.mark(format!("kill -9 dispatcher {victim}")),
                            Err(e) => {
                                live.fail(format!("killing dispatcher {victim}: {e:#}"));
                                return;
                            }
                        }
                    }
                }
            }
        }

        let now = Instant::now();
        if now - last_sample >= live.interval {
            live.scrape().await;
            let (backlog, oldest) = lock(&live.metrics).backlog_now();
            let own_cpu = procstat::cpu(None);
            let own_cores = match (own_cpu, last_own_cpu) {
                (Some(c), Some(l)) => {
                    Some(c.saturating_sub(l).as_secs_f64() / (now - last_sample).as_secs_f64())
                }
                _ => None,
            };
            last_own_cpu = own_cpu;
            let broker_cpu = Broker::embedded_cpu(live.broker_embedded);
            let broker_cores = match (broker_cpu, last_broker_cpu) {
                (Some(c), Some(l)) => {
                    Some(c.saturating_sub(l).as_secs_f64() / (now - last_sample).as_secs_f64())
                }
                _ => None,
            };
            last_broker_cpu = broker_cpu;
            let dt = (now - last_sample).as_secs_f64();
            let produced = live.produced.load(Ordering::Relaxed);
            let ages = Percentiles::of(&live.sink.take_interval_ages());
            let healthy_ages = Percentiles::of(&live.sink.take_healthy_interval_ages());
            let cpu = usage.map(|u| u.cpu);
            let cores = match (cpu, last_cpu) {
                (Some(c), Some(l)) => Some(c.saturating_sub(l).as_secs_f64() / dt),
                _ => None,
            };
            lock(&live.series).push(Sample {
                t_s: live.clock(now),
                produced_per_s: produced.saturating_sub(last_produced) as f64 / dt,
                deliveries_per_s: counts.accepted.saturating_sub(last_counts.accepted) as f64 / dt,
                requests_per_s: counts.requests.saturating_sub(last_counts.requests) as f64 / dt,
                age_p50_ms: ages.map(|a| a.p50_ms),
                age_p99_ms: ages.map(|a| a.p99_ms),
                age_max_ms: ages.map(|a| a.max_ms),
                healthy_age_p99_ms: healthy_ages.map(|a| a.p99_ms),
                rss_mb: usage.map(|u| mb(u.rss_bytes)),
                cpu_cores: cores,
                loadtest_cores: own_cores,
                broker_cores,
                backlog_deliveries: usage.map(|_| backlog),
                backlog_oldest_s: usage.map(|_| oldest),
            });
            last_sample = now;
            last_counts = counts;
            last_produced = produced;
            last_cpu = cpu;
        }
        if live.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let (expected, settled) = live.ledger.progress();
            let (backlog, oldest) = lock(&live.metrics).backlog_now();
            eprintln!(
                "[{:>6.1}s] {:<10} produced {:>9} | final {:>9}/{:<9} | accepted {:>9} | backlog {:>8} (oldest {:>5.1} s) | rss {} MB",
                live.run_started.elapsed().as_secs_f64(),
                lock(&live.phase).as_str(),
                live.produced.load(Ordering::Relaxed),
                settled,
                expected,
                counts.accepted,
                backlog,
                oldest,
                usage.map_or("-".into(), |u| format!("{:.0}", mb(u.rss_bytes))),
            );
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Wait until every expected delivery is final (with `only`, every
/// delivery of the endpoints it marks), up to `deadline`. True when
/// complete.
async fn settle(
    live: &Live,
    deadline: Instant,
    poll: Duration,
    only: Option<&[bool]>,
) -> anyhow::Result<bool> {
    loop {
        live.check()?;
        let (expected, settled) = match only {
            None => live.ledger.progress(),
            Some(mask) => live
                .ledger
                .progress_of(|i| mask.get(i).copied().unwrap_or(false)),
        };
        if settled >= expected {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Produce on a blocking thread, handing the workload there and back.
async fn produce_phase(
    live: &Arc<Live>,
    bootstrap: &str,
    plan: Plan,
    workload: Workload,
    expectations: Arc<Expectations>,
) -> anyhow::Result<(Workload, Produced)> {
    let (live2, bootstrap) = (live.clone(), bootstrap.to_owned());
    let (workload, produced) = tokio::task::spawn_blocking(move || {
        let mut workload = workload;
        let r = produce::produce(
            &bootstrap,
            &plan,
            &mut workload,
            Some(expectations),
            &live2.produced,
            &live2.stop,
        );
        (workload, r)
    })
    .await
    .context("the producer thread panicked")?;
    Ok((workload, produced?))
}

/// Run `scenario` and report on it: its paired reference run first when it
/// has one (and the phases' relative rates taken from it), then the run
/// itself, then its backlog stage when it has one; targets last.
pub async fn run(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Report> {
    let mut main = scenario.clone();
    let mut reference = None;
    if let Some(spec) = &scenario.reference {
        let mut r = scenario.clone();
        r.name = format!("{}-reference", scenario.name);
        r.endpoints.retain(|e| !spec.without.contains(&e.id));
        r.reference = None;
        r.backlog = None;
        r.targets.clear();
        progress(
            opts,
            &format!("reference run without {}", spec.without.join(", ")),
        );
        let report = run_once(&r, &child_options(opts, "reference")).await?;
        // The same offered rates in both runs: relative rates come from the
        // reference's drain, the maximum without the endpoints left out.
        for phase in &mut main.phases {
            if let Rate::OfMax(_) = phase.rate {
                if let Some(rate) = report
                    .phases
                    .iter()
                    .find(|p| p.name == phase.name)
                    .and_then(|p| p.target_events_per_s)
                {
                    phase.rate = Rate::PerSecond(rate);
                }
            }
        }
        reference = Some(report);
    }
    progress(opts, "the run");
    let mut report = run_once(&main, opts).await?;
    if let Some(r) = &reference {
        for p in &mut report.phases {
            let theirs = r.phases.iter().find(|q| q.name == p.name);
            p.healthy_p99_ratio = match (p.healthy_age, theirs.and_then(|q| q.healthy_age)) {
                (Some(a), Some(b)) if b.p99_ms > 0.0 => Some(a.p99_ms / b.p99_ms),
                _ => None,
            };
        }
        report.reference = Some(Box::new(r.clone()));
    }
    if let Some(spec) = scenario.backlog.as_ref().filter(|b| b.deliveries > 0) {
        let stage = backlog_scenario(scenario, spec);
        progress(
            opts,
            &format!(
                "backlog stage: {} deliveries over {}",
                spec.deliveries,
                spec.endpoints.join(", ")
            ),
        );
        let r = run_once(&stage, &child_options(opts, "backlog")).await?;
        report.backlog = Some(Box::new(r));
    }
    report.targets = scenario
        .targets
        .iter()
        .map(|t| evaluate(t, &report))
        .collect();
    Ok(report)
}

fn progress(opts: &RunOptions, what: &str) {
    if opts.progress {
        eprintln!("loadtest: {what}");
    }
}

/// The options of one of a run's other parts: a work directory of its own.
fn child_options(opts: &RunOptions, part: &str) -> RunOptions {
    let mut o = opts.clone();
    if let Some(dir) = &opts.work_dir {
        o.work_dir = Some(dir.join(part));
    }
    // Only the run itself keeps the Prometheus targets file.
    o.prometheus_targets = None;
    o
}

/// The backlog stage of `s`: only the stage's endpoints, each subscribed to
/// every event, and enough events written before the dispatcher starts for
/// `deliveries` among them. The dispatcher reads it all, holds the backlog
/// for `hold`, then the receivers' faults end and it drains.
pub fn backlog_scenario(s: &Scenario, b: &crate::scenario::BacklogSpec) -> Scenario {
    let mut stage = s.clone();
    stage.name = format!("{}-backlog", s.name);
    stage.description = format!(
        "The backlog stage of {}: {} deliveries spread over {}.",
        s.name,
        b.deliveries,
        b.endpoints.join(", ")
    );
    stage.endpoints.retain(|e| b.endpoints.contains(&e.id));
    for e in &mut stage.endpoints {
        e.events = vec!["*".into()];
        e.filter.clear();
    }
    let n = stage.endpoints().len().max(1) as u64;
    stage.prefill = b.deliveries.div_ceil(n);
    stage.phases.clear();
    stage.kafka.partitions = b.partitions;
    stage.settle = crate::scenario::SettleSpec {
        phases: SettleScope::Healthy,
        faults_off: true,
        hold: Some(b.hold),
    };
    stage.settle_timeout = b.settle_timeout;
    stage.ceiling.enabled = false;
    stage.targets.clear();
    stage.reference = None;
    stage.backlog = None;
    stage
}

/// One run of `scenario` (no reference, no backlog stage, no targets).
async fn run_once(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Report> {
    let run_started = Instant::now();
    let own_cpu_start = procstat::cpu(None);
    let overall = run_started + scenario.timeout;
    let started_at = chrono::Utc::now();
    let run_id = format!("{}-{}", scenario.name, started_at.timestamp_millis());
    let work_dir = match &opts.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("loadtest-{run_id}")),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let mut notes = Vec::new();

    let endpoints = scenario.endpoints();
    let routes: Vec<_> = endpoints.iter().map(Endpoint::route).collect();
    let ledger = Arc::new(Ledger::new(endpoints.len(), LEDGER_CAPACITY));
    let expectations = Arc::new(Expectations::new(
        Routing::new(&routes).map_err(anyhow::Error::msg)?,
        ledger.clone(),
    ));
    let sink = Arc::new(Sink::start(
        endpoints
            .iter()
            .map(|e| SinkEndpoint {
                id: e.id.clone(),
                secrets: e.secret.iter().cloned().collect(),
                faults: e.faults.clone(),
                port: 0,
                healthy: e.healthy(),
            })
            .collect(),
        scenario.sink.threads,
        scenario.sink.listeners,
        ledger.clone(),
    )?);

    let topics = Topics::for_run(&run_id);
    let partitions = scenario.kafka.partitions;
    let broker = Broker::start(opts.brokers.as_deref(), &topics, partitions).await?;
    let bootstrap = broker.bootstrap().to_owned();
    let watcher = Watcher::start(&bootstrap, &topics.dead_letter, partitions, ledger.clone())?;

    let live = Arc::new(Live {
        sink: sink.clone(),
        fleet: Mutex::new(None),
        ledger: ledger.clone(),
        produced: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        chaos: AtomicBool::new(false),
        kill_every: scenario.dispatcher.kill_every,
        max_kills: scenario.dispatcher.max_kills,
        failure: Mutex::new(None),
        epoch: OnceLock::new(),
        first_delivery: OnceLock::new(),
        rss_at_first_delivery: OnceLock::new(),
        peak_rss: AtomicU64::new(0),
        phase: Mutex::new("prefill".into()),
        series: Mutex::new(Vec::new()),
        markers: Mutex::new(Vec::new()),
        metrics: Mutex::new(Tracker::default()),
        run_started,
        interval: scenario.interval,
        progress: opts.progress,
        broker_embedded: broker.is_embedded(),
    });
    let monitor_task = tokio::spawn(monitor(live.clone()));
    // Whatever happens below, the monitor stops and the dispatchers die.
    let setup = Setup {
        scenario,
        broker: &broker,
        opts,
        work_dir: &work_dir,
        bootstrap: &bootstrap,
        topics: &topics,
        endpoints: &endpoints,
        overall,
    };
    let outcome = drive(&setup, &live, expectations.clone()).await;
    live.stop.store(true, Ordering::Relaxed);
    let _ = monitor_task.await;
    let final_usage = lock(&live.fleet)
        .take()
        .map(|f| f.stop(Duration::from_secs(10)).1);
    let driven = outcome?;

    // Dead letters written just before the stop still have to be read.
    if ledger.progress().1 < ledger.progress().0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    watcher.stop();
    let summary = ledger.summary();
    let dispatcher_counts = sink.counts();
    // Before the ceiling's requests add to the receivers' histograms.
    let endpoint_ages: Vec<_> = (0..endpoints.len())
        .map(|i| Percentiles::of(&sink.endpoint_ages(i)))
        .collect();
    let sink_cpu_dispatcher = procstat::threads_named(sink::THREAD_NAME);

    let broker_dropped = if broker.is_embedded() {
        let (b, t) = (bootstrap.clone(), topics.source.clone());
        tokio::task::spawn_blocking(move || broker::dropped_records(&b, &t, partitions))
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    if broker_dropped.is_some_and(|d| d > 0) {
        notes.push(format!(
            "the embedded Kafka dropped {} source records before they were read (it keeps about 5 MiB per partition): losses may not be the dispatcher's; use more kafka.partitions",
            broker_dropped.unwrap_or(0)
        ));
    }
    if summary.overflow > 0 {
        notes.push(format!(
            "the ledger was full: {} ids were not tracked",
            summary.overflow
        ));
    }
    if driven.produce_failed > 0 {
        notes.push(format!(
            "the broker refused {} events; they were not expected",
            driven.produce_failed
        ));
    }
    if sink.misrouted() > 0 {
        notes.push(format!(
            "{} requests reached a shared listener for no receiver (answered 404)",
            sink.misrouted()
        ));
    }
    let own_cpu_s = match (own_cpu_start, procstat::cpu(None)) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => 0.0,
    };
    let own_window = run_started.elapsed().as_secs_f64();
    // The mock cluster's thread starts with the broker, before the run: all
    // of its time is this run's (one broker per run).
    let broker_cpu_s = Broker::embedded_cpu(broker.is_embedded()).map(|c| c.as_secs_f64());

    // What went to the spill topic, read back: written once each?
    let spilled = lock(&live.metrics).spilled();
    let spill = match (&driven.spill_topic, spilled > 0) {
        (Some(topic), true) => {
            let (b, t) = (bootstrap.clone(), topic.clone());
            let bound = overall
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(60));
            match tokio::task::spawn_blocking(move || broker::read_written(&b, &t, bound)).await {
                Ok(Ok(written)) => {
                    if written.dropped > 0 {
                        notes.push(format!(
                            "the broker had dropped {} records of the spill topic before they were read back: the spill figures are partial",
                            written.dropped
                        ));
                    }
                    Some(SpillReport {
                        spilled,
                        writes_per_delivery: (written.deliveries > 0)
                            .then(|| written.records as f64 / written.deliveries as f64),
                        written,
                    })
                }
                Ok(Err(e)) => {
                    notes.push(format!("the spill topic could not be read back: {e:#}"));
                    None
                }
                Err(e) => {
                    notes.push(format!("reading the spill topic panicked: {e}"));
                    None
                }
            }
        }
        _ => None,
    };

    // The ceiling: the same receivers, faults off, fresh accounting.
    let ceiling = if scenario.ceiling.enabled && Instant::now() < overall {
        *lock(&live.phase) = "ceiling".into();
        sink.set_faults(false);
        sink.set_ledger(Arc::new(Ledger::new(endpoints.len(), LEDGER_CAPACITY)));
        match measure_ceiling(scenario, &endpoints, &sink, &driven, overall).await {
            Ok(c) => Some(c),
            Err(e) => {
                notes.push(format!("the ceiling could not be measured: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    // Assemble.
    let dispatcher_window = driven.dispatcher_started.map_or(0.0, |s| {
        (driven.dispatcher_stopped.unwrap_or_else(Instant::now) - s).as_secs_f64()
    });
    let mut phases = driven.phases;
    let mut cpu_ratio = None;
    if let Some(c) = &ceiling {
        for (p, latency) in phases.iter_mut().zip(&c.phase_latency) {
            p.ceiling_ratio = Some(p.deliveries_per_s / c.report.deliveries_per_s);
            p.ceiling_latency = *latency;
            p.p99_ratio = match (p.age, latency) {
                (Some(a), Some(l)) if l.p99_ms > 0.0 => Some(a.p99_ms / l.p99_ms),
                _ => None,
            };
        }
    }
    let total_counts = Counts::sum(&dispatcher_counts);
    let cpu_s = final_usage.map_or(0.0, |u| u.cpu.as_secs_f64());
    let cpu_us_per_delivery =
        (total_counts.accepted > 0).then(|| cpu_s * 1e6 / total_counts.accepted as f64);
    if let (Some(d), Some(c)) = (
        cpu_us_per_delivery,
        ceiling
            .as_ref()
            .and_then(|c| c.report.client_cpu_us_per_request),
    ) {
        cpu_ratio = Some(d / c);
    }
    let peak = live.peak_rss.load(Ordering::Relaxed);
    let rss_first = live.rss_at_first_delivery.get().copied();
    let dispatcher = DispatcherUsage {
        processes: scenario.dispatcher.processes,
        starts: driven.starts,
        kills: driven.kills,
        rss_peak_mb: (peak > 0).then(|| mb(peak)),
        rss_at_first_delivery_mb: rss_first.map(mb),
        rss_growth_mb: rss_first.filter(|_| peak > 0).map(|f| mb(peak) - mb(f)),
        cpu_s,
        mean_cores: if dispatcher_window > 0.0 {
            cpu_s / dispatcher_window
        } else {
            0.0
        },
        cpu_us_per_delivery,
        sink_cpu_us_per_request: match (sink_cpu_dispatcher, total_counts.requests) {
            (Some(cpu), n) if n > 0 => Some(cpu.as_secs_f64() * 1e6 / n as f64),
            _ => None,
        },
    };
    let per_endpoint = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| EndpointReport {
            id: e.id.clone(),
            faults: e
                .faults
                .iter()
                .map(|f| {
                    format!(
                        "{}{}",
                        f.kind.name(),
                        if f.ratio < 1.0 {
                            format!(" {:.0}%", f.ratio * 100.0)
                        } else {
                            String::new()
                        }
                    )
                })
                .collect(),
            tally: summary.endpoints[i],
            receiver: dispatcher_counts[i],
            age: endpoint_ages[i],
            backlog: lock(&live.metrics).endpoint(&e.id),
            deliveries_per_s: if dispatcher_window > 0.0 {
                dispatcher_counts[i].accepted as f64 / dispatcher_window
            } else {
                0.0
            },
        })
        .collect();
    let accounting = Accounting {
        total: summary.total,
        complete: summary.total.lost == 0,
        bad_signatures: total_counts.bad_signature,
        bad_requests: total_counts.bad_request,
        overflow: summary.overflow,
        unexpected_dead_letters: summary.unexpected_dead_letters,
        broker_dropped,
    };
    let mut report = Report {
        backlog_peak: None,
        scenario: scenario.name.clone(),
        description: scenario.description.trim().to_owned(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            os: std::env::consts::OS.to_owned(),
        },
        dispatcher_binary: opts.dispatcher.display().to_string(),
        broker: opts.brokers.clone().unwrap_or_else(|| "embedded".into()),
        work_dir: work_dir.display().to_string(),
        seed: scenario.seed,
        endpoints: endpoints.len(),
        events: driven.events,
        produce_failed: driven.produce_failed,
        elapsed_s: run_started.elapsed().as_secs_f64(),
        phases,
        accounting,
        per_endpoint,
        dispatcher,
        ceiling: ceiling.map(|c| c.report),
        cpu_ratio,
        targets: Vec::new(),
        notes: [driven.notes, notes].concat(),
        series: std::mem::take(&mut *lock(&live.series)),
        markers: std::mem::take(&mut *lock(&live.markers)),
        load_tester: LoadTesterUsage {
            cpu_s: own_cpu_s,
            mean_cores: own_cpu_s / own_window.max(1e-3),
            broker_cpu_s,
            broker_mean_cores: broker_cpu_s.map(|c| c / own_window.max(1e-3)),
        },
        spill,
        final_settle: driven.final_settle,
        reference: None,
        backlog: None,
    };
    report.backlog_peak = report
        .series
        .iter()
        .filter_map(|x| x.backlog_deliveries)
        .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.max(b))));
    Ok(report)
}

/// What the dispatcher part of a run measured.
struct Driven {
    phases: Vec<PhaseReport>,
    events: u64,
    produce_failed: u64,
    starts: u64,
    kills: u64,
    dispatcher_started: Option<Instant>,
    dispatcher_stopped: Option<Instant>,
    notes: Vec<String>,
    /// Deliveries per event, per phase (to turn event rates into delivery rates).
    offered_deliveries_per_s: Vec<Option<f64>>,
    /// The dispatcher's spill topic.
    spill_topic: Option<String>,
    final_settle: Option<FinalSettle>,
}

/// What `drive` works from.
struct Setup<'a> {
    scenario: &'a Scenario,
    broker: &'a Broker,
    opts: &'a RunOptions,
    work_dir: &'a std::path::Path,
    bootstrap: &'a str,
    topics: &'a Topics,
    endpoints: &'a [Endpoint],
    overall: Instant,
}

/// The dispatcher part of a run: prefill, start, drain, phases.
async fn drive(
    setup: &Setup<'_>,
    live: &Arc<Live>,
    expectations: Arc<Expectations>,
) -> anyhow::Result<Driven> {
    let Setup {
        scenario,
        broker: _,
        opts,
        work_dir,
        bootstrap,
        topics,
        endpoints,
        overall,
    } = *setup;
    let partitions = scenario.kafka.partitions;
    let mut workload =
        Workload::with_tenants(scenario.seed, scenario.tenants).with_keys(scenario.keys);
    let mut driven = Driven {
        phases: Vec::new(),
        events: 0,
        produce_failed: 0,
        starts: 0,
        kills: 0,
        dispatcher_started: None,
        dispatcher_stopped: None,
        notes: Vec::new(),
        offered_deliveries_per_s: Vec::new(),
        spill_topic: None,
        final_settle: None,
    };
    // Which endpoints a phase waits for.
    let healthy: Vec<bool> = endpoints.iter().map(Endpoint::healthy).collect();
    let only = (scenario.settle.phases == SettleScope::Healthy).then_some(healthy.as_slice());
    let waits_for_some = only.is_none_or(|m| m.iter().any(|h| *h));
    let plan = |events: Option<u64>, duration: Option<Duration>, rate: Option<f64>| Plan {
        topic: topics.source.clone(),
        partitions,
        events,
        duration: match duration {
            // The run's own bound caps every phase.
            Some(d) => Some(d.min(overall.saturating_duration_since(Instant::now()))),
            None => Some(overall.saturating_duration_since(Instant::now())),
        },
        rate,
    };

    if scenario.prefill > 0 {
        let (w, produced) = produce_phase(
            live,
            bootstrap,
            plan(Some(scenario.prefill), None, None),
            workload,
            expectations.clone(),
        )
        .await?;
        workload = w;
        driven.events += produced.events;
        driven.produce_failed += produced.failed;
    }

    // The dispatchers. Their config goes through the dispatcher's own
    // validation first: a scenario's mistake is reported here, with its key.
    let config = dispatcher_config(
        scenario,
        live,
        bootstrap,
        topics,
        endpoints,
        setup.broker.is_embedded(),
    )?;
    let parsed =
        dispatcher::config::Config::from_yaml(&serde_yaml_ng::to_string(&config)?, &|_| None)
            .map_err(|problems| {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                anyhow::anyhow!(
                    "the generated dispatcher config is refused: {}",
                    list.join("; ")
                )
            })?;
    // The internal topics the dispatcher writes must exist (and, in the
    // embedded Kafka, be spread like the source so none overflows first).
    let tiers = dispatcher::park::Tiers::new(
        &parsed.kafka.retry_topic,
        &parsed.kafka.retry_tiers,
        &parsed.kafka.spill_topic,
    );
    setup
        .broker
        .create_topics(
            &tiers
                .internal_topics()
                .chain([parsed.kafka.endpoints_topic.as_str()])
                .collect::<Vec<_>>(),
            partitions,
        )
        .await
        .context("creating the retry, spill and endpoints topics")?;
    driven.spill_topic = Some(parsed.kafka.spill_topic.clone());
    let counts_before = live.sink.counts();
    let started = Instant::now();
    let fleet = Fleet::start(
        &opts.dispatcher,
        work_dir,
        config,
        scenario.dispatcher.processes,
        &scenario.dispatcher.log,
        opts.prometheus_targets.as_deref(),
    )?;
    *lock(&live.fleet) = Some(fleet);
    let _ = live.epoch.set(started);
    live.sink.set_epoch(started);
    live.sink.set_faults(true);
    live.chaos.store(true, Ordering::Relaxed);
    driven.dispatcher_started = Some(started);
    live.mark("dispatcher started");

    let mut max_events_per_s = None;
    if scenario.prefill > 0 && waits_for_some {
        *lock(&live.phase) = "drain".into();
        live.sink.take_phase_ages();
        let deadline = (started + scenario.settle_timeout).min(overall);
        // Fine polling: the drain's end decides its rate.
        let complete = settle(live, deadline, Duration::from_millis(2), only).await?;
        let ended = Instant::now();
        let first = live.first_delivery.get().copied().unwrap_or(ended);
        let window = ended
            .saturating_duration_since(first)
            .as_secs_f64()
            .max(1e-3);
        let delivered =
            Counts::sum(&live.sink.counts()).accepted - Counts::sum(&counts_before).accepted;
        if !complete {
            driven
                .notes
                .push("the drain did not finish within settle_timeout".into());
        }
        max_events_per_s = Some(scenario.prefill as f64 / window);
        driven.phases.push(PhaseReport {
            name: "drain".into(),
            rate: format!("backlog {}", scenario.prefill),
            offered_events_per_s: None,
            events: scenario.prefill,
            deliveries: delivered,
            elapsed_s: window,
            deliveries_per_s: delivered as f64 / window,
            ceiling_ratio: None,
            age: None, // ages of a backlog are its waiting time, not latency
            // So is its dispatch latency, as the source reads the backlog
            // far ahead of the lanes.
            dispatch_latency: None,
            ceiling_latency: None,
            p99_ratio: None,
            healthy_keep_up: None,
            first_delivery_s: Some(first.saturating_duration_since(started).as_secs_f64()),
            complete,
            target_events_per_s: None,
            healthy_pace: None,
            healthy_age: None,
            healthy_p99_ratio: None,
            bounded: Vec::new(),
        });
        // The drain's deliveries are all alike: the ceiling runs at full speed.
        driven.offered_deliveries_per_s.push(None);
    } else {
        let mut fleet = lock(&live.fleet).take().context("the fleet")?;
        let ready = fleet.wait_ready().await;
        *lock(&live.fleet) = Some(fleet);
        ready?;
    }

    for phase in &scenario.phases {
        if Instant::now() >= overall {
            driven.notes.push(format!(
                "phase {} skipped: the run's timeout passed",
                phase.name
            ));
            break;
        }
        *lock(&live.phase) = phase.name.clone();
        live.mark(format!("phase {}", phase.name));
        let rate = match phase.rate {
            Rate::Max => None,
            Rate::PerSecond(r) => Some(r),
            Rate::OfMax(share) => {
                Some(share * max_events_per_s.context("a percentage rate needs the drain's rate")?)
            }
        };
        let counts_start = live.sink.counts();
        let expected_start = expectations.per_endpoint();
        let busy = |live: &Live| -> Vec<f64> {
            (0..endpoints.len())
                .map(|i| live.sink.busy_seconds(i))
                .collect()
        };
        let busy_start = busy(live);
        let dispatch_start = lock(&live.metrics).dispatch();
        let backlog_start: Vec<f64> = {
            let m = lock(&live.metrics);
            endpoints.iter().map(|e| m.backlog_of(&e.id)).collect()
        };
        live.sink.take_phase_ages();
        let t0 = Instant::now();
        let (w, produced) = produce_phase(
            live,
            bootstrap,
            plan(phase.events, phase.duration, rate),
            workload,
            expectations.clone(),
        )
        .await?;
        // The end of production: pace and drain rates are measured up to here.
        let window = t0.elapsed().as_secs_f64().max(1e-3);
        let counts_mid = live.sink.counts();
        let expected_mid = expectations.per_endpoint();
        let busy_mid = busy(live);
        workload = w;
        driven.events += produced.events;
        driven.produce_failed += produced.failed;
        let complete = settle(
            live,
            (Instant::now() + scenario.settle_timeout).min(overall),
            Duration::from_millis(20),
            only,
        )
        .await?;
        if !complete {
            driven.notes.push(format!(
                "phase {}: deliveries were still open at settle_timeout",
                phase.name
            ));
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let counts_end = live.sink.counts();
        let expected_end = expectations.per_endpoint();
        let mut healthy_ages = crate::stats::new_histogram();
        for (i, _) in endpoints.iter().enumerate().filter(|(_, e)| e.healthy()) {
            let _ = healthy_ages.add(live.sink.endpoint_phase_ages(i));
        }
        let ages = live.sink.take_phase_ages();
        let delivered = Counts::sum(&counts_end).accepted - Counts::sum(&counts_start).accepted;
        let (mut got, mut want) = (0u64, 0u64);
        let (mut on_time, mut due) = (0u64, 0u64);
        let unique = |c: &Counts| c.accepted - c.duplicates - c.unexpected;
        for (i, _) in endpoints.iter().enumerate().filter(|(_, e)| e.healthy()) {
            got += unique(&counts_end[i]) - unique(&counts_start[i]);
            want += expected_end[i] - expected_start[i];
            on_time += unique(&counts_mid[i]).saturating_sub(unique(&counts_start[i]));
            due += expected_mid[i] - expected_start[i];
        }
        // Endpoints whose pace is bounded on purpose: how close to it they ran.
        let bounded = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.healthy())
            .filter_map(|(i, e)| {
                let sustainable = e.sustainable_per_s()?;
                let accepted = counts_mid[i]
                    .accepted
                    .saturating_sub(counts_start[i].accepted);
                let counted = accepted as f64 / window;
                let mean_in_flight = (busy_mid[i] - busy_start[i]) / window;
                // A receiver that holds each request for its latency serves
                // in-flight ÷ latency per second (Little's law): exact where
                // counting whole answers over a window is not (a 3 s
                // endpoint answers four at a time, every 3 s).
                let drain = match e.latency_s().filter(|_| e.latency_bound()) {
                    Some(latency) => mean_in_flight / latency,
                    None => counted,
                };
                let offered = (expected_mid[i] - expected_start[i]) as f64 / window;
                // What it could have been given: what was produced for it
                // and what already waited in Kafka.
                let demand = offered + backlog_start[i] / window;
                let saturated = demand >= sustainable;
                Some(BoundedEndpoint {
                    id: e.id.clone(),
                    max_in_flight: e.max_in_flight,
                    sustainable_per_s: sustainable,
                    offered_per_s: offered,
                    backlog_at_start: backlog_start[i],
                    saturated,
                    accepted,
                    window_s: window,
                    deliveries_per_s: counted,
                    drain_per_s: drain,
                    drain_ratio: drain
                        / if saturated {
                            sustainable
                        } else {
                            demand.max(1e-9)
                        },
                    mean_in_flight,
                })
            })
            .collect();
        let expected_deliveries: u64 =
            expected_end.iter().sum::<u64>() - expected_start.iter().sum::<u64>();
        driven.offered_deliveries_per_s.push(
            rate.filter(|_| produced.events > 0)
                .map(|r| r * expected_deliveries as f64 / produced.events as f64),
        );
        driven.phases.push(PhaseReport {
            name: phase.name.clone(),
            rate: match phase.rate {
                Rate::Max => "max".into(),
                Rate::PerSecond(r) => format!("{r:.0}/s"),
                Rate::OfMax(s) => format!("{:.0}%={:.0}/s", s * 100.0, rate.unwrap_or(0.0)),
            },
            offered_events_per_s: Some(produced.events_per_s),
            events: produced.events,
            deliveries: delivered,
            elapsed_s: elapsed,
            deliveries_per_s: delivered as f64 / elapsed.max(1e-3),
            ceiling_ratio: None,
            age: Percentiles::of(&ages),
            dispatch_latency: crate::scrape::dispatch_between(
                &dispatch_start,
                &lock(&live.metrics).dispatch(),
            ),
            ceiling_latency: None,
            p99_ratio: None,
            healthy_keep_up: (want > 0).then(|| got as f64 / want as f64),
            first_delivery_s: None,
            complete,
            target_events_per_s: rate,
            healthy_pace: (due > 0).then(|| on_time as f64 / due as f64),
            healthy_age: Percentiles::of(&healthy_ages),
            healthy_p99_ratio: None,
            bounded,
        });
    }

    // The endpoints the phases did not wait for catch up here.
    if only.is_some() || scenario.settle.faults_off || scenario.settle.hold.is_some() {
        if let Some(hold) = scenario.settle.hold {
            *lock(&live.phase) = "hold".into();
            let deadline = (Instant::now() + scenario.settle_timeout).min(overall);
            // The dispatcher first reads the whole source and moves what
            // its lanes cannot take to Kafka (the backlog's metric covers
            // nine tenths of what is still open), then holds it for `hold`.
            loop {
                live.check()?;
                let (expected, settled) = live.ledger.progress();
                let open = expected.saturating_sub(settled) as f64;
                let (read, waiting) = {
                    let m = lock(&live.metrics);
                    (m.consumed(&topics.source), m.backlog_now().0)
                };
                if (read >= driven.events as f64 && waiting >= 0.9 * open)
                    || Instant::now() >= deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            live.mark("backlog in Kafka");
            let until = (Instant::now() + hold).min(overall);
            while Instant::now() < until {
                live.check()?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let peak = live.peak_rss.load(Ordering::Relaxed);
        let backlog_peak = lock(&live.series)
            .iter()
            .filter_map(|x| x.backlog_deliveries)
            .fold(0.0, f64::max);
        if scenario.settle.faults_off {
            live.sink.set_faults(false);
            live.mark("faults off");
        }
        *lock(&live.phase) = "final".into();
        let t = Instant::now();
        let complete = settle(
            live,
            (t + scenario.settle_timeout).min(overall),
            Duration::from_millis(20),
            None,
        )
        .await?;
        let elapsed = t.elapsed().as_secs_f64();
        if !complete {
            driven
                .notes
                .push("deliveries were still open at the final settle_timeout".into());
        }
        driven.final_settle = Some(FinalSettle {
            faults_off: scenario.settle.faults_off,
            hold_s: scenario.settle.hold.map(|h| h.as_secs_f64()),
            rss_peak_before_mb: (peak > 0).then(|| mb(peak)),
            backlog_peak_before: backlog_peak,
            elapsed_s: elapsed,
            complete,
        });
    }
    live.scrape().await;

    live.chaos.store(false, Ordering::Relaxed);
    driven.dispatcher_stopped = Some(Instant::now());
    if let Some(f) = lock(&live.fleet).as_ref() {
        driven.starts = f.starts();
        driven.kills = f.kills();
    }
    live.check()?;
    Ok(driven)
}

/// The dispatcher config of a run: generated endpoints and topics, with
/// the scenario's own keys merged over it.
fn dispatcher_config(
    scenario: &Scenario,
    live: &Live,
    bootstrap: &str,
    topics: &Topics,
    endpoints: &[Endpoint],
    embedded: bool,
) -> anyhow::Result<Value> {
    let group = format!("{}.group", topics.source);
    let entries = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut m = Mapping::new();
            m.insert("id".into(), e.id.clone().into());
            m.insert("url".into(), live.sink.url(i).into());
            m.insert(
                "events".into(),
                Value::Sequence(e.events.iter().map(|s| s.clone().into()).collect()),
            );
            if !e.filter.is_empty() {
                m.insert("filter".into(), serde_yaml_ng::to_value(&e.filter)?);
            }
            m.insert(
                "timeout".into(),
                humantime::format_duration(e.timeout).to_string().into(),
            );
            m.insert("max_in_flight".into(), (e.max_in_flight as u64).into());
            if let Some(s) = &e.secret {
                m.insert("secret".into(), s.clone().into());
            }
            Ok((m, e.config.clone()))
        })
        .collect::<anyhow::Result<_>>()?;
    BaseConfig {
        bootstrap,
        group: &group,
        topic: &topics.source,
        dead_letter_topic: &topics.dead_letter,
        retry_topic: &topics.retry,
        embedded,
        endpoints: entries,
    }
    .to_value(&scenario.dispatcher.config)
}

/// The ceiling and the latency it reaches at each phase's rate.
struct CeilingRun {
    report: Ceiling,
    phase_latency: Vec<Option<Percentiles>>,
}

/// Requests exactly as the dispatcher sends them (same bodies, the same
/// headers, valid signatures), prepared before any clock starts.
fn prepare(
    endpoints: &[Endpoint],
    seed: u64,
    tenants: usize,
    count: usize,
    sink: &Sink,
) -> anyhow::Result<(Vec<Uri>, Vec<Prepared>)> {
    let mut routing = Routing::new(&endpoints.iter().map(Endpoint::route).collect::<Vec<_>>())
        .map_err(anyhow::Error::msg)?;
    let signers = endpoints
        .iter()
        .map(|e| e.secret.as_ref().map(|s| Signer::new(&[s])).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let urls = (0..endpoints.len())
        .map(|i| sink.url(i).parse::<Uri>().context("receiver URL"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ts = (chrono::Utc::now().timestamp()).to_string();
    let ts_value = HeaderValue::from_str(&ts)?;
    let ua = HeaderValue::from_static("loadtest-ceiling");
    let mut workload = Workload::with_tenants(seed, tenants);
    let mut out = Vec::with_capacity(count);
    let mut expected: Vec<Expected> = Vec::new();
    // Bounded: a subscription set that matches nothing would loop forever.
    for _ in 0..count.saturating_mul(4).max(1_000) {
        if out.len() >= count {
            break;
        }
        let record = workload.next_record();
        let event = record.decode().context("a seed event does not decode")?;
        routing.expected(&event, &mut expected);
        for e in &expected {
            let id = DeliveryId::derive(&event, &endpoints[e.endpoint].id).to_string();
            let body: Bytes = event.envelope(&endpoints[e.endpoint].id);
            let id_value = HeaderValue::from_str(&id)?;
            let mut headers = vec![
                (http::header::USER_AGENT, ua.clone()),
                (
                    HeaderName::from_static("x-webhook-event"),
                    HeaderValue::from_str(event.event_type())?,
                ),
                (
                    HeaderName::from_static("x-webhook-delivery-id"),
                    id_value.clone(),
                ),
                (HeaderName::from_static("webhook-id"), id_value),
                (
                    HeaderName::from_static("webhook-timestamp"),
                    ts_value.clone(),
                ),
            ];
            if let Some(signer) = &signers[e.endpoint] {
                headers.push((
                    HeaderName::from_static("webhook-signature"),
                    HeaderValue::from_str(&signer.sign(&id, &ts, &body))?,
                ));
            }
            out.push(Prepared {
                target: e.endpoint,
                body,
                headers,
            });
        }
    }
    out.truncate(count);
    Ok((urls, out))
}

/// Most requests the ceiling client keeps in flight (connections).
const MAX_CEILING_CONNECTIONS: usize = 4096;

async fn measure_ceiling(
    scenario: &Scenario,
    endpoints: &[Endpoint],
    sink: &Sink,
    driven: &Driven,
    overall: Instant,
) -> anyhow::Result<CeilingRun> {
    // Every endpoint's cap together, up to a bound: the client's and the
    // receivers' ends of each connection are both in this process, and
    // thousands of endpoints would run it out of file descriptors long
    // before they add to what the receivers can take.
    let concurrency: usize = endpoints
        .iter()
        .map(|e| e.max_in_flight)
        .sum::<usize>()
        .min(MAX_CEILING_CONNECTIONS);
    let count = scenario.ceiling.max_requests.max(1);
    let (urls, requests) = prepare(endpoints, scenario.seed, scenario.tenants, count, sink)?;
    let requests: Arc<[Prepared]> = requests.into();
    let budget = || overall.saturating_duration_since(Instant::now());

    let cpu0 = procstat::cpu(None);
    let sink0 = procstat::threads_named(sink::THREAD_NAME);
    let run = tokio::time::timeout(
        budget(),
        bare::run(
            BareLoad {
                urls: urls.clone(),
                requests: requests.clone(),
                concurrency,
                rate: None,
                pool_max_idle_per_host: None,
            },
            Arc::new(AtomicU64::new(0)),
        ),
    )
    .await
    .context("the run's timeout passed during the ceiling")??;
    let (cpu1, sink1) = (
        procstat::cpu(None),
        procstat::threads_named(sink::THREAD_NAME),
    );
    let n = run.sent as f64;
    let (client_cpu, sink_cpu) = match (cpu0, cpu1, sink0, sink1) {
        (Some(c0), Some(c1), Some(s0), Some(s1)) => {
            let sink = s1.saturating_sub(s0);
            let all = c1.saturating_sub(c0);
            (
                Some(all.saturating_sub(sink).as_secs_f64() * 1e6 / n),
                Some(sink.as_secs_f64() * 1e6 / n),
            )
        }
        _ => (None, None),
    };
    let report = Ceiling {
        requests: run.sent,
        concurrency,
        elapsed_s: run.elapsed.as_secs_f64(),
        deliveries_per_s: n / run.elapsed.as_secs_f64().max(1e-9),
        client_cpu_us_per_request: client_cpu,
        sink_cpu_us_per_request: sink_cpu,
        latency: Percentiles::of(&run.latency),
    };

    // Latency at each fixed-rate phase's delivery rate, for a while.
    let mut phase_latency = Vec::new();
    for offered in &driven.offered_deliveries_per_s {
        let Some(rate) = offered.filter(|r| *r > 0.0 && *r < report.deliveries_per_s) else {
            phase_latency.push(None);
            continue;
        };
        let n = ((rate * scenario.ceiling.latency_duration.as_secs_f64()) as usize)
            .clamp(1, requests.len());
        let run = tokio::time::timeout(
            budget(),
            bare::run(
                BareLoad {
                    urls: urls.clone(),
                    requests: requests[..n].to_vec().into(),
                    concurrency,
                    rate: Some(rate),
                    pool_max_idle_per_host: None,
                },
                Arc::new(AtomicU64::new(0)),
            ),
        )
        .await
        .context("the run's timeout passed during the ceiling")??;
        phase_latency.push(Percentiles::of(&run.latency));
    }
    Ok(CeilingRun {
        report,
        phase_latency,
    })
}

/// Measure one target against the report.
fn evaluate(t: &crate::scenario::Target, r: &Report) -> TargetResult {
    let phase = t
        .phase
        .as_ref()
        .and_then(|name| r.phases.iter().find(|p| &p.name == name));
    let a = &r.accounting.total;
    let value = match t.metric {
        Metric::CeilingRatio => phase.and_then(|p| p.ceiling_ratio),
        Metric::DeliveriesPerS => phase.map(|p| p.deliveries_per_s),
        Metric::P99AgeMs => phase.and_then(|p| p.age.map(|a| a.p99_ms)),
        Metric::P999AgeMs => phase.and_then(|p| p.age.map(|a| a.p999_ms)),
        Metric::HealthyKeepUp => phase.and_then(|p| p.healthy_keep_up),
        Metric::Losses => Some(a.lost as f64),
        Metric::UnexpectedIds => Some((a.unexpected + a.misrouted) as f64),
        Metric::Duplicates => Some(a.duplicates as f64),
        Metric::DeadLettered => Some((a.dead_lettered + a.delivered_and_dead_lettered) as f64),
        Metric::RssPeakMb => r.dispatcher.rss_peak_mb,
        Metric::RssGrowthMb => r.dispatcher.rss_growth_mb,
        Metric::HealthyPace => phase.and_then(|p| p.healthy_pace),
        Metric::HealthyP99Ratio => phase.and_then(|p| p.healthy_p99_ratio),
        Metric::DrainRatio => phase.and_then(|p| {
            p.bounded
                .iter()
                .map(|b| b.drain_ratio)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
        }),
        Metric::SpillWritesPerDelivery => [Some(r), r.backlog.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|r| r.spill.as_ref().and_then(|s| s.writes_per_delivery))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
        Metric::BacklogRssPeakMb => r
            .backlog
            .as_ref()
            .and_then(|b| b.final_settle.as_ref())
            .and_then(|f| f.rss_peak_before_mb),
        Metric::BacklogLosses => r.backlog.as_ref().map(|b| b.accounting.total.lost as f64),
    };
    let met = value.map(|v| t.min.is_none_or(|m| v >= m) && t.max.is_none_or(|m| v <= m));
    TargetResult {
        metric: t.metric.name().to_owned(),
        phase: t.phase.clone(),
        min: t.min,
        max: t.max,
        value,
        met,
    }
}
