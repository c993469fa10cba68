//! The `loadtest` command: `produce`, `sink`, `run SCENARIO`, `scenarios`.
//! See `loadtest/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use loadtest::ledger::Ledger;
use loadtest::produce::{Expectations, Plan};
use loadtest::report;
use loadtest::run::{RunOptions, LEDGER_CAPACITY};
use loadtest::scenario::{Scenario, SHIPPED};
use loadtest::sink::{Sink, SinkEndpoint};
use loadtest::stats::Percentiles;
use loadtest::workload::{EndpointRoute, Routing, Workload, DEFAULT_SECRET, DEFAULT_SEED};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Load tester of the webhook dispatcher"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write seed events of every type into a Kafka topic.
    Produce(ProduceArgs),
    /// Serve webhook receivers that verify, count and inject faults.
    Sink(SinkArgs),
    /// Run a scenario: broker, dispatcher, receivers, producer, report.
    Run(RunArgs),
    /// List the shipped scenarios.
    Scenarios,
}

#[derive(Args)]
struct ProduceArgs {
    /// Bootstrap servers.
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "events")]
    topic: String,
    /// Partitions when the topic has to be created.
    #[arg(long, default_value_t = 24)]
    partitions: i32,
    /// Stop after this many events.
    #[arg(long)]
    events: Option<u64>,
    /// Stop after this long (e.g. `30s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Events per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SinkArgs {
    /// Take endpoints (ids, secrets, faults) from this scenario.
    #[arg(long, conflicts_with = "endpoints")]
    scenario: Option<String>,
    /// Or serve this many healthy endpoints `ep-0`…, subscribed to everything.
    #[arg(long, default_value_t = 4)]
    endpoints: usize,
    /// First port; endpoint i listens on port + i (0: any free ports).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Stop after this long (default: at Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Expect the deliveries of this many events of `--seed` (as `produce`
    /// writes them), so that losses can be counted.
    #[arg(long)]
    expect_events: Option<u64>,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Print a dispatcher `endpoints:` section for these receivers on stdout.
    #[arg(long)]
    print_config: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// A shipped scenario's name or a YAML file's path.
    scenario: String,
    /// The dispatcher binary (default: `dispatcher` next to this binary).
    #[arg(long, env = "LOADTEST_DISPATCHER")]
    dispatcher: Option<PathBuf>,
    /// Do not (re)build the dispatcher next to this binary when started by cargo.
    #[arg(long)]
    no_build: bool,
    /// Bootstrap servers (default: an embedded Kafka).
    #[arg(long)]
    brokers: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write the HTML report (charts over time) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Override the prefill and every phase's event count.
    #[arg(long)]
    events: Option<u64>,
    /// Override every phase's duration.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Override the kill -9 interval.
    #[arg(long, value_parser = humantime::parse_duration)]
    kill_every: Option<Duration>,
    /// Override the run's timeout.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    #[arg(long)]
    seed: Option<u64>,
    /// Skip the bare-client ceiling.
    #[arg(long)]
    no_ceiling: bool,
    /// Skip the paired reference run of a scenario that has one.
    #[arg(long)]
    no_reference: bool,
    /// Run the scenario's backlog stage with this many deliveries (0: skip it).
    #[arg(long, value_name = "DELIVERIES")]
    backlog: Option<u64>,
    /// Where dispatcher configs and logs go (default: a new temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep a Prometheus file_sd target list of the dispatchers' metrics
    /// addresses in FILE (for `file_sd_configs`), current across restarts.
    #[arg(long, value_name = "FILE")]
    prometheus_targets: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Exit with status 2 when a target is missed.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Produce(a) => produce(a).await.map(|()| ExitCode::SUCCESS),
            Command::Sink(a) => sink(a).await.map(|()| ExitCode::SUCCESS),
            Command::Run(a) => run(a).await,
            Command::Scenarios => {
                for (name, _) in SHIPPED {
                    let s = Scenario::load(name)?;
                    println!(
                        "{name:<10} {}",
                        s.description
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Do not wait for whatever a failed run left blocked.
            std::process::exit(1);
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = Scenario::load(&a.scenario)?;
    if let Some(n) = a.events {
        if scenario.prefill > 0 {
            scenario.prefill = n;
        }
        for p in &mut scenario.phases {
            p.events = Some(n);
        }
    }
    if let Some(d) = a.duration {
        for p in &mut scenario.phases {
            p.duration = Some(d);
        }
    }
    if let Some(k) = a.kill_every {
        scenario.dispatcher.kill_every = Some(k);
    }
    if let Some(t) = a.timeout {
        scenario.timeout = t;
    }
    if let Some(s) = a.seed {
        scenario.seed = s;
    }
    if a.no_ceiling {
        scenario.ceiling.enabled = false;
    }
    if a.no_reference {
        scenario.reference = None;
    }
    if let Some(n) = a.backlog {
        match &mut scenario.backlog {
            Some(b) => b.deliveries = n,
            None if n == 0 => {}
            None => bail!(
                "--backlog: scenario {} has no `backlog` section (which endpoints hold it)",
                scenario.name
            ),
        }
    }
    scenario.check().map_err(|p| {
        anyhow::anyhow!(
            "scenario {} after overrides: {}",
            scenario.name,
            p.join("; ")
        )
    })?;
    // Rebuild only when cargo started us: then the sibling binary is
    // cargo's to keep fresh, and cargo is at hand.
    let build = !a.no_build && std::env::var_os("CARGO").is_some();
    let dispatcher = loadtest::fleet::locate_dispatcher(a.dispatcher.as_deref(), build)?;
    let opts = RunOptions {
        dispatcher,
        brokers: a.brokers,
        work_dir: a.work_dir,
        progress: !a.quiet,
        prometheus_targets: a.prometheus_targets,
    };
    let r = loadtest::run::run(&scenario, &opts).await?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", report::text(&r));
    }
    if let Some(path) = &a.html {
        std::fs::write(path, report::html::render(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    Ok(if a.check && r.missed_targets() > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn produce(a: ProduceArgs) -> anyhow::Result<()> {
    if a.events.is_none() && a.duration.is_none() {
        bail!("give --events, --duration or both: a production always ends by itself");
    }
    loadtest::broker::create_topics(&a.brokers, &[&a.topic], a.partitions).await?;
    let partitions = {
        let (b, t) = (a.brokers.clone(), a.topic.clone());
        tokio::task::spawn_blocking(move || loadtest::broker::partitions_of(&b, &t)).await??
    };
    let plan = Plan {
        topic: a.topic.clone(),
        partitions,
        events: a.events,
        duration: a.duration,
        rate: a.rate,
    };
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let counter = counter.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = counter.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>6.1}s] produced {n} events ({}/s)",
                    started.elapsed().as_secs_f64(),
                    n - last
                );
                last = n;
            }
        })
    };
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let (brokers, seed) = (a.brokers.clone(), a.seed);
    let produced = tokio::task::spawn_blocking(move || {
        let mut w = Workload::new(seed);
        loadtest::produce::produce(&brokers, &plan, &mut w, None, &counter, &stop)
    })
    .await??;
    ticker.abort();
    stopper.abort();
    #[derive(Serialize)]
    struct Out<'a> {
        topic: &'a str,
        seed: u64,
        #[serde(flatten)]
        produced: loadtest::produce::Produced,
    }
    let out = Out {
        topic: &a.topic,
        seed: a.seed,
        produced,
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "{} events written to {} in {:.1} s ({:.0}/s), {} refused; seed {} (a sink checks them with --expect-events {} --seed {})",
            produced.events,
            a.topic,
            produced.elapsed_s,
            produced.events_per_s,
            produced.failed,
            a.seed,
            produced.events,
            a.seed
        );
    }
    Ok(())
}

async fn sink(a: SinkArgs) -> anyhow::Result<()> {
    let endpoints: Vec<(
        EndpointRoute,
        Option<String>,
        Vec<loadtest::sink::faults::Fault>,
    )> = match &a.scenario {
        Some(name) => Scenario::load(name)?
            .endpoints()
            .into_iter()
            .map(|e| (e.route(), e.secret.clone(), e.faults.clone()))
            .collect(),
        None => (0..a.endpoints)
            .map(|i| {
                (
                    EndpointRoute {
                        id: format!("ep-{i}"),
                        events: vec!["*".into()],
                        filter: Default::default(),
                        tenant: None,
                    },
                    Some(DEFAULT_SECRET.to_owned()),
                    Vec::new(),
                )
            })
            .collect(),
    };
    let ledger = Arc::new(Ledger::new(endpoints.len(), LEDGER_CAPACITY));
    if let Some(n) = a.expect_events {
        let routes: Vec<_> = endpoints.iter().map(|(r, _, _)| r.clone()).collect();
        let ex = Expectations::new(
            Routing::new(&routes).map_err(anyhow::Error::msg)?,
            ledger.clone(),
        );
        let mut w = Workload::new(a.seed);
        for _ in 0..n {
            ex.register(&w.next_record());
        }
    }
    let sink = Sink::start(
        endpoints
            .iter()
            .enumerate()
            .map(|(i, (r, secret, faults))| SinkEndpoint {
                id: r.id.clone(),
                secrets: secret.iter().cloned().collect(),
                faults: faults.clone(),
                port: if a.port == 0 { 0 } else { a.port + i as u16 },
                healthy: faults.is_empty(),
            })
            .collect(),
        1,
        0,
        ledger.clone(),
    )?;
    sink.set_epoch(Instant::now());
    sink.set_faults(true);
    for (i, (r, _, _)) in endpoints.iter().enumerate() {
        eprintln!("{:<14} {}", r.id, sink.url(i));
    }
    if a.print_config {
        println!("endpoints:");
        for (i, (r, secret, _)) in endpoints.iter().enumerate() {
            println!(
                "  - id: {}\n    url: \"{}\"\n    events: {:?}",
                r.id,
                sink.url(i),
                r.events
            );
            if let Some(s) = secret {
                println!("    secret: \"{s}\"");
            }
        }
    }
    eprintln!(
        "serving; stop with Ctrl-C{}",
        a.duration
            .map(|d| format!(" or after {}", humantime::format_duration(d)))
            .unwrap_or_default()
    );
    let started = Instant::now();
    match a.duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?,
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = ledger.summary();
    let counts = sink.counts();
    #[derive(Serialize)]
    struct Endpoint<'a> {
        id: &'a str,
        #[serde(flatten)]
        receiver: loadtest::sink::Counts,
        tally: loadtest::ledger::Tally,
        age: Option<Percentiles>,
    }
    #[derive(Serialize)]
    struct Out<'a> {
        elapsed_s: f64,
        expectations: bool,
        total: loadtest::ledger::Tally,
        age: Option<Percentiles>,
        endpoints: Vec<Endpoint<'a>>,
    }
    let out = Out {
        elapsed_s: elapsed,
        expectations: a.expect_events.is_some(),
        total: summary.total,
        age: Percentiles::of(&sink.total_ages()),
        endpoints: endpoints
            .iter()
            .enumerate()
            .map(|(i, (r, _, _))| Endpoint {
                id: &r.id,
                receiver: counts[i],
                tally: summary.endpoints[i],
                age: Percentiles::of(&sink.endpoint_ages(i)),
            })
            .collect(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "{:<14} {:>9} {:>9} {:>6} {:>9} {:>6} {:>8} {:>8}",
            "endpoint", "requests", "accepted", "dups", "bad sig", "lost", "p50 ms", "p99 ms"
        );
        for e in &out.endpoints {
            println!(
                "{:<14} {:>9} {:>9} {:>6} {:>9} {:>6} {:>8} {:>8}",
                e.id,
                e.receiver.requests,
                e.receiver.accepted,
                e.receiver.duplicates,
                e.receiver.bad_signature,
                if out.expectations {
                    e.tally.lost.to_string()
                } else {
                    "-".into()
                },
                e.age.map_or("-".into(), |a| format!("{:.1}", a.p50_ms)),
                e.age.map_or("-".into(), |a| format!("{:.1}", a.p99_ms)),
            );
        }
    }
    Ok(())
}
