//! `fanout-vs-bare`: deliveries per second through the real dispatcher
//! (embedded Kafka, fan-out 1:4, signing on) against a bare hyper client
//! sending the same bodies to the same local sink at the same concurrency.
//!
//! ```text
//! cargo run --release -p dispatcher-benches --bin fanout-vs-bare -- --events 50000
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use dispatcher::embedded::EmbeddedKafka;
use dispatcher_benches::sink::{self, Sink, SinkCounts};
use dispatcher_benches::{fanout, workload};
use hyper::Uri;
use loadtest::bare;
use loadtest::procstat;
use serde::Serialize;
use tokio::time::timeout_at;

// The allocator and options of the `dispatcher` binary (see
// `dispatcher::alloc`), so that the dispatcher measured here allocates as
// the one users run; the bare client in the same process gets the same.
dispatcher::use_jemalloc!();

/// Endpoints of the fan-out: every event goes to each of them.
const ENDPOINTS: usize = 4;

#[derive(Parser, Debug)]
#[command(
    name = "fanout-vs-bare",
    about = "Dispatcher deliveries/s (embedded Kafka, fan-out 1:4, signed) vs a bare hyper client"
)]
struct Args {
    /// Seed events pre-filled into the source topic (each makes 4 deliveries).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    events: u64,
    /// max_in_flight of each endpoint; the baseline uses 4 times this.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Partitions of the source topic.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(i32).range(1..=1000))]
    partitions: i32,
    /// Give up, and exit non-zero, when the whole run takes longer than this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Idle connections the baseline's pool keeps per host (default: no
    /// limit, hyper-util's default). A small cap shows what closing and
    /// reopening idle connections costs.
    #[arg(long)]
    bare_pool_max_idle: Option<usize>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    events: u64,
    endpoints: usize,
    partitions: i32,
    concurrency_per_endpoint: u64,
    total_concurrency: u64,
    deliveries: u64,
    mean_body_bytes: f64,
    /// The baseline pool's idle cap per host (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    bare_pool_max_idle_per_host: Option<usize>,
    dispatcher: Phase,
    bare: Phase,
    /// dispatcher deliveries/s ÷ bare deliveries/s.
    ratio: f64,
}

#[derive(Serialize)]
struct Phase {
    elapsed_s: f64,
    deliveries_per_s: f64,
    /// Dispatcher only: start until the first delivery (group join, fetch).
    #[serde(skip_serializing_if = "Option::is_none")]
    first_delivery_s: Option<f64>,
    /// Dispatcher only: deliveries/s counted from the first delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    after_first_delivery_per_s: Option<f64>,
    /// Dispatcher only: how full its lanes and queues were.
    #[serde(skip_serializing_if = "Option::is_none")]
    occupancy: Option<fanout::Occupancy>,
    sink: SinkCounts,
    /// CPU time over the phase (Linux only).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<PhaseCpu>,
}

/// CPU time spent during one phase.
#[derive(Serialize, Clone, Copy)]
struct PhaseCpu {
    /// The whole process: client side, sink and (dispatcher phase) the
    /// embedded broker, whose share is small.
    process_s: f64,
    /// The sink's thread alone.
    sink_s: f64,
    /// Everything but the sink, per delivery, in microseconds.
    client_us_per_delivery: f64,
    /// The sink, per request, in microseconds.
    sink_us_per_request: f64,
}

/// What is measured around a phase: sink counters and CPU clocks.
#[derive(Clone, Copy)]
struct Meter {
    sink: SinkCounts,
    process: Option<Duration>,
    sink_thread: Option<Duration>,
}

impl Meter {
    fn read(sink: &Sink) -> Meter {
        Meter {
            sink: sink.stats().snapshot(),
            process: procstat::cpu(None),
            sink_thread: procstat::threads_named(sink::THREAD_NAME),
        }
    }

    /// Sink counts and CPU use between `self` (the start) and now.
    fn finish(self, sink: &Sink, deliveries: u64) -> (SinkCounts, Option<PhaseCpu>) {
        let now = Meter::read(sink);
        let cpu = match (self.process, now.process, self.sink_thread, now.sink_thread) {
            (Some(p0), Some(p1), Some(s0), Some(s1)) => {
                let (process, sink) = (p1.saturating_sub(p0), s1.saturating_sub(s0));
                let per = |d: Duration| d.as_secs_f64() * 1e6 / deliveries as f64;
                Some(PhaseCpu {
                    process_s: process.as_secs_f64(),
                    sink_s: sink.as_secs_f64(),
                    client_us_per_delivery: per(process.saturating_sub(sink)),
                    sink_us_per_request: per(sink),
                })
            }
            _ => None,
        };
        (now.sink.since(self.sink), cpu)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The same runtime as the dispatcher binary: multi-threaded, one worker per core.
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
    // Owned here, not in `run`: when a phase fails, the dispatcher it
    // abandoned keeps running until exit, and must not lose its broker.
    let mut kafka = None;
    match runtime.block_on(run(&args, &mut kafka)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: encoding the report: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print_table(&report);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            // Exit now: dropping the runtime would wait for whatever the
            // failed phase left blocked (a producer flush, a stuck consumer).
            std::process::exit(1);
        }
    }
}

async fn run(args: &Args, kafka: &mut Option<EmbeddedKafka>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let timed_out = |what: &str| {
        anyhow::anyhow!(
            "timed out after {} during {what} (--timeout)",
            humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
        )
    };
    let events = usize::try_from(args.events).context("--events")?;
    let max_in_flight = usize::try_from(args.concurrency).context("--concurrency")?;
    let deliveries = args.events * ENDPOINTS as u64;

    let records: Arc<[workload::Record]> = workload::records(events).into();
    let ids = fanout::endpoint_ids(ENDPOINTS);
    let bodies: Arc<[Bytes]> = workload::envelopes(&records, &ids)?.into();
    let body_bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();

    let sink = Sink::start()?;
    let bootstrap = kafka
        .insert(fanout::start_kafka(args.partitions)?)
        .bootstrap()
        .to_owned();
    eprintln!(
        "pre-filling {} events over {} partitions (embedded Kafka at {bootstrap})",
        args.events, args.partitions
    );
    let prefill = {
        let (bootstrap, records) = (bootstrap.clone(), records.clone());
        let (partitions, timeout) = (args.partitions, args.timeout);
        tokio::task::spawn_blocking(move || {
            fanout::prefill(&bootstrap, partitions, &records, timeout)
        })
    };
    timeout_at(deadline, prefill)
        .await
        .map_err(|_| timed_out("the pre-fill"))?
        .context("the pre-fill task panicked")??;

    // (a) The dispatcher.
    eprintln!(
        "dispatcher: {} deliveries, {ENDPOINTS} endpoints x max_in_flight {max_in_flight}, sink {}",
        deliveries,
        sink.addr()
    );
    let meter = Meter::read(&sink);
    let delivered = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress("dispatcher", delivered.clone(), deliveries);
    let config = fanout::config(&bootstrap, &sink, &ids, max_in_flight);
    let outcome = timeout_at(deadline, fanout::run(config, deliveries, delivered.clone())).await;
    progress.abort();
    let dispatcher_run = outcome.map_err(|_| {
        timed_out(&format!(
            "the dispatcher run ({} of {deliveries} delivered)",
            delivered.load(Ordering::Relaxed)
        ))
    })??;
    let (dispatcher_sink, dispatcher_cpu) = meter.finish(&sink, deliveries);
    // The broker's threads would otherwise share the CPU with the baseline.
    drop(kafka.take());

    // (b) The bare client: same bodies, same sink, same total concurrency.
    let total_concurrency = args.concurrency * ENDPOINTS as u64;
    eprintln!("bare hyper client: {deliveries} requests at concurrency {total_concurrency}");
    let urls = ids
        .iter()
        .map(|id| {
            sink.url(&fanout::endpoint_path(id))
                .parse::<Uri>()
                .context("sink URL")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let meter = Meter::read(&sink);
    let completed = Arc::new(AtomicU64::new(0));
    let progress = spawn_progress("bare", completed.clone(), deliveries);
    // Body `i` goes to URL `i % urls`, as the dispatcher's endpoints share them.
    let requests: Arc<[bare::Prepared]> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| bare::Prepared::plain(i % urls.len(), body.clone()))
        .collect();
    let load = bare::BareLoad {
        urls,
        requests,
        concurrency: max_in_flight * ENDPOINTS,
        rate: None,
        pool_max_idle_per_host: args.bare_pool_max_idle,
    };
    let outcome = timeout_at(deadline, bare::run(load, completed.clone())).await;
    progress.abort();
    let bare_elapsed = outcome
        .map_err(|_| {
            timed_out(&format!(
                "the bare run ({} of {deliveries} answered)",
                completed.load(Ordering::Relaxed)
            ))
        })??
        .elapsed;
    let (bare_sink, bare_cpu) = meter.finish(&sink, deliveries);

    for (name, counts) in [("dispatcher", dispatcher_sink), ("bare", bare_sink)] {
        if counts.requests < deliveries {
            bail!(
                "{name}: the sink saw {} requests, {deliveries} expected",
                counts.requests
            );
        }
    }
    if dispatcher_sink.body_bytes != bare_sink.body_bytes {
        eprintln!(
            "note: body bytes differ (dispatcher {}, bare {}): retries or different envelopes",
            dispatcher_sink.body_bytes, bare_sink.body_bytes
        );
    }

    let rate = |elapsed: Duration| deliveries as f64 / elapsed.as_secs_f64();
    let dispatcher = Phase {
        elapsed_s: dispatcher_run.elapsed.as_secs_f64(),
        deliveries_per_s: rate(dispatcher_run.elapsed),
        first_delivery_s: Some(dispatcher_run.first_delivery.as_secs_f64()),
        after_first_delivery_per_s: Some(rate(
            dispatcher_run.elapsed - dispatcher_run.first_delivery,
        )),
        occupancy: Some(dispatcher_run.occupancy),
        sink: dispatcher_sink,
        cpu: dispatcher_cpu,
    };
    let bare = Phase {
        elapsed_s: bare_elapsed.as_secs_f64(),
        deliveries_per_s: rate(bare_elapsed),
        first_delivery_s: None,
        after_first_delivery_per_s: None,
        occupancy: None,
        sink: bare_sink,
        cpu: bare_cpu,
    };
    Ok(Report {
        events: args.events,
        endpoints: ENDPOINTS,
        partitions: args.partitions,
        concurrency_per_endpoint: args.concurrency,
        total_concurrency,
        deliveries,
        mean_body_bytes: body_bytes as f64 / deliveries as f64,
        bare_pool_max_idle_per_host: args.bare_pool_max_idle,
        ratio: dispatcher.deliveries_per_s / bare.deliveries_per_s,
        dispatcher,
        bare,
    })
}

/// Print `label: done/total` to stderr once a second until aborted.
fn spawn_progress(
    label: &'static str,
    done: Arc<AtomicU64>,
    total: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "  [{label} {:>5.1}s] {n}/{total}",
                started.elapsed().as_secs_f64()
            );
        }
    })
}

fn print_table(r: &Report) {
    println!();
    println!(
        "{} events x {} endpoints = {} deliveries, mean body {:.0} B, concurrency {} x {} = {}, {} partitions",
        r.events,
        r.endpoints,
        r.deliveries,
        r.mean_body_bytes,
        r.endpoints,
        r.concurrency_per_endpoint,
        r.total_concurrency,
        r.partitions
    );
    if let Some(max) = r.bare_pool_max_idle_per_host {
        println!("bare hyper client pool: at most {max} idle connections per host");
    }
    println!();
    println!(
        "{:<12} {:>10} {:>13} {:>10} {:>11} {:>14} {:>12}",
        "", "elapsed s", "deliveries/s", "sink reqs", "sink conns", "cpu us/deliv", "sink us/req"
    );
    for (name, p) in [("dispatcher", &r.dispatcher), ("bare hyper", &r.bare)] {
        let cpu = |f: fn(&PhaseCpu) -> f64| {
            p.cpu
                .as_ref()
                .map_or("-".to_owned(), |c| format!("{:.1}", f(c)))
        };
        println!(
            "{:<12} {:>10.2} {:>13.0} {:>10} {:>11} {:>14} {:>12}",
            name,
            p.elapsed_s,
            p.deliveries_per_s,
            p.sink.requests,
            p.sink.connections,
            cpu(|c| c.client_us_per_delivery),
            cpu(|c| c.sink_us_per_request),
        );
    }
    println!();
    println!("ratio dispatcher / bare: {:.2}", r.ratio);
    if r.dispatcher.elapsed_s.min(r.bare.elapsed_s) < 1.0 {
        println!("note: a phase took under a second; start-up and 10 ms CPU ticks dominate (use more --events)");
    }
    if let (Some(first), Some(after)) = (
        r.dispatcher.first_delivery_s,
        r.dispatcher.after_first_delivery_per_s,
    ) {
        println!(
            "dispatcher: first delivery {first:.2} s after start; {after:.0} deliveries/s from then on"
        );
    }
    if let Some(o) = &r.dispatcher.occupancy {
        println!(
            "dispatcher pipeline: lanes {:.0}% busy, {:.0} deliveries queued on average, source paused {:.0}% of the time",
            o.lanes_busy * 100.0,
            o.mean_queued,
            o.source_paused * 100.0
        );
    }
}
