//! `kafka-vs-bare`: deliveries per second through the Kafka transport
//! against a bare rdkafka `FutureProducer` producing the same records (same
//! value, key and headers, same producer settings, same number in flight)
//! to librdkafka's mock cluster, in the same run.
//!
//! ```text
//! cargo run --release -p dispatcher-benches --bin kafka-vs-bare -- --deliveries 200000
//! ```
//!
//! The transport is built through the registry (`transport: kafka`, `key:
//! data.contact_id`) and driven as a lane drives it: `send` per delivery, a
//! window of `--in-flight` sends outstanding, each finished when the broker
//! acknowledged it. The bare producer gets its keys and headers precomputed;
//! the transport finds the key in each event's `data` and builds the headers
//! per send, which is the overhead being measured. Phases alternate (bare
//! first in odd rounds, transport first in even ones) and each uses its own
//! topic, so neither profits from the other's warm-up.

use std::collections::{BTreeMap, VecDeque};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use dispatcher_benches::workload;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::json;
use transports::http::{HttpClient, HttpClientOptions};
use transports::{BoxFuture, BuildContext, Delivery, Outcome, Registry, Transport};

const ENDPOINT_ID: &str = "bench-kafka";

#[derive(Parser, Debug)]
#[command(
    name = "kafka-vs-bare",
    about = "Kafka transport deliveries/s vs a bare rdkafka producer, on the mock cluster"
)]
struct Args {
    /// Deliveries per phase.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=5_000_000))]
    deliveries: u64,
    /// Sends outstanding at once (an endpoint's max_in_flight).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    in_flight: u64,
    /// Partitions of each target topic.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(i32).range(1..=1000))]
    partitions: i32,
    /// Rounds of (bare, transport); the ratio reported is the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Give up when one phase takes longer than this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    deliveries: u64,
    in_flight: u64,
    partitions: i32,
    mean_value_bytes: f64,
    rounds: Vec<Round>,
    /// Median over rounds of transport deliveries/s ÷ bare deliveries/s.
    median_ratio: f64,
}

#[derive(Serialize)]
struct Round {
    bare: Phase,
    transport: Phase,
    ratio: f64,
}

#[derive(Serialize, Clone, Copy)]
struct Phase {
    elapsed_s: f64,
    deliveries_per_s: f64,
    /// Process CPU (both sides of the mock broker included) per delivery.
    cpu_us_per_delivery: f64,
    /// Sends answered "queue full" and sent again.
    requeued: u64,
}

/// The producer settings the transport uses by default, for the baseline.
fn bare_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "10000")
        .set("client.id", "bench-bare");
    c
}

/// One record as the bare producer sends it, everything precomputed.
struct BareRecord {
    key: Vec<u8>,
    value: Bytes,
    event_type: String,
    delivery_id: String,
}

fn bare_records(deliveries: &[Delivery]) -> Vec<BareRecord> {
    deliveries
        .iter()
        .map(|d| {
            let data: serde_json::Value =
                serde_json::from_slice(d.event.data()).unwrap_or_default();
            let delivery_id = d.id.to_string();
            let key = data
                .get("contact_id")
                .and_then(|v| v.as_str())
                .map(|s| s.as_bytes().to_vec())
                .unwrap_or_else(|| delivery_id.as_bytes().to_vec());
            BareRecord {
                key,
                value: d.body.clone(),
                event_type: d.event.event_type().to_owned(),
                delivery_id,
            }
        })
        .collect()
}

// Both sides keep a window of outstanding sends and wait for the oldest:
// acknowledgements come back nearly in order, and an unpolled send still
// progresses (librdkafka's threads do the work), so FIFO waiting is fair to
// both and needs no extra machinery.

async fn run_bare(
    producer: &FutureProducer,
    topic: &str,
    records: &[BareRecord],
    window: usize,
) -> anyhow::Result<u64> {
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(window);
    let mut requeued = 0u64;
    for r in records {
        loop {
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: "x-webhook-event",
                    value: Some(&r.event_type),
                })
                .insert(Header {
                    key: "x-webhook-delivery-id",
                    value: Some(&r.delivery_id),
                })
                .insert(Header {
                    key: "x-webhook-id",
                    value: Some(ENDPOINT_ID),
                });
            let record = FutureRecord::to(topic)
                .payload(&r.value[..])
                .key(&r.key[..])
                .headers(headers);
            match producer.send_result(record) {
                Ok(ack) => {
                    pending.push_back(ack);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    requeued += 1;
                    settle_oldest(&mut pending).await?;
                }
                Err((e, _)) => bail!("bare producer refused a record: {e}"),
            }
        }
        while pending.len() >= window {
            settle_oldest(&mut pending).await?;
        }
    }
    while !pending.is_empty() {
        settle_oldest(&mut pending).await?;
    }
    Ok(requeued)
}

async fn settle_oldest(pending: &mut VecDeque<DeliveryFuture>) -> anyhow::Result<()> {
    match pending.pop_front() {
        None => Ok(()),
        Some(ack) => match ack.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => bail!("the broker refused a bare record: {e}"),
            Err(_) => bail!("the bare producer went away"),
        },
    }
}

async fn run_transport(
    transport: &dyn Transport,
    deliveries: &[Delivery],
    window: usize,
) -> anyhow::Result<u64> {
    let mut pending: VecDeque<BoxFuture<'_, anyhow::Result<u64>>> = VecDeque::with_capacity(window);
    let mut requeued = 0u64;
    for d in deliveries {
        pending.push_back(send_until_accepted(transport, d));
        while pending.len() >= window {
            if let Some(send) = pending.pop_front() {
                requeued += send.await?;
            }
        }
    }
    while let Some(send) = pending.pop_front() {
        requeued += send.await?;
    }
    Ok(requeued)
}

/// Like a lane: the send is issued now (the transport hands the record to
/// librdkafka inside `send`), and a retry (a full local queue) is sent again
/// after its `retry_after`.
fn send_until_accepted<'a>(
    transport: &'a dyn Transport,
    d: &'a Delivery,
) -> BoxFuture<'a, anyhow::Result<u64>> {
    let first = transport.send(d);
    Box::pin(async move {
        let mut outcome = first.await;
        let mut requeued = 0u64;
        loop {
            match outcome {
                Outcome::Delivered { .. } => return Ok(requeued),
                Outcome::Retry { retry_after, .. } if requeued < 1000 => {
                    requeued += 1;
                    tokio::time::sleep(retry_after.unwrap_or(Duration::from_millis(100))).await;
                    outcome = transport.send(d).await;
                }
                other => bail!("the transport answered {other:?}"),
            }
        }
    })
}

/// CPU time of this process so far (user + system).
fn process_cpu() -> Duration {
    loadtest::procstat::cpu(None).unwrap_or_default()
}

async fn phase<F, Fut>(n: u64, limit: Duration, run: F) -> anyhow::Result<Phase>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let cpu0 = process_cpu();
    let started = Instant::now();
    let requeued = tokio::time::timeout(limit, run())
        .await
        .context("phase timed out")??;
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    Ok(Phase {
        elapsed_s: elapsed.as_secs_f64(),
        deliveries_per_s: n as f64 / elapsed.as_secs_f64(),
        cpu_us_per_delivery: cpu.as_secs_f64() * 1e6 / n as f64,
        requeued,
    })
}

async fn run(args: Args) -> anyhow::Result<Report> {
    let mock = MockCluster::new(1).context("starting the mock cluster")?;
    let bootstrap = mock.bootstrap_servers();

    let n = args.deliveries as usize;
    let deliveries: Vec<Delivery> = workload::records(n)
        .into_iter()
        .zip(0i64..)
        .map(|(r, offset)| {
            let event = workload::decode(r.value, offset)?;
            Ok(Delivery::new(Arc::new(event), ENDPOINT_ID.into()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mean_value_bytes = deliveries.iter().map(|d| d.body.len()).sum::<usize>() as f64 / n as f64;
    let bare = bare_records(&deliveries);

    let http = HttpClient::new(HttpClientOptions {
        native_roots: false,
        ..HttpClientOptions::default()
    })?;
    let options = BTreeMap::new();
    let ctx = BuildContext {
        endpoint_id: ENDPOINT_ID,
        timeout: Duration::from_secs(10),
        http: &http,
        kafka_bootstrap: &bootstrap,
        kafka_options: &options,
        allow_private_networks: false,
        kafka_guard: Default::default(),
    };
    let registry = Registry::builtin();
    let factory = registry.get("kafka").context("kafka is built in")?;
    let window = args.in_flight as usize;

    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let bare_topic = format!("bare-{round}");
        let transport_topic = format!("transport-{round}");
        mock.create_topic(&bare_topic, args.partitions, 1)?;
        mock.create_topic(&transport_topic, args.partitions, 1)?;
        // A fresh client each phase: neither inherits the other's
        // connections or metadata.
        let producer: FutureProducer = bare_config(&bootstrap).create()?;
        let transport = factory
            .build(
                &json!({"topic": transport_topic, "key": "data.contact_id"}),
                &ctx,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        let run_bare_phase = || {
            phase(args.deliveries, args.timeout, || {
                run_bare(&producer, &bare_topic, &bare, window)
            })
        };
        let run_transport_phase = || {
            phase(args.deliveries, args.timeout, || {
                run_transport(&*transport, &deliveries, window)
            })
        };
        let (b, t) = if round % 2 == 1 {
            let b = run_bare_phase().await?;
            let t = run_transport_phase().await?;
            (b, t)
        } else {
            let t = run_transport_phase().await?;
            let b = run_bare_phase().await?;
            (b, t)
        };
        let ratio = t.deliveries_per_s / b.deliveries_per_s;
        eprintln!(
            "round {round}: bare {:.0}/s ({:.1} µs CPU), transport {:.0}/s ({:.1} µs CPU), ratio {ratio:.2}",
            b.deliveries_per_s, b.cpu_us_per_delivery, t.deliveries_per_s, t.cpu_us_per_delivery
        );
        rounds.push(Round {
            bare: b,
            transport: t,
            ratio,
        });
    }
    let mut ratios: Vec<f64> = rounds.iter().map(|r| r.ratio).collect();
    ratios.sort_by(f64::total_cmp);
    let median_ratio = ratios[ratios.len() / 2];
    Ok(Report {
        deliveries: args.deliveries,
        in_flight: args.in_flight,
        partitions: args.partitions,
        mean_value_bytes,
        rounds,
        median_ratio,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json_out = args.json;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kafka-vs-bare: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            if json_out {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                println!(
                    "{} deliveries per phase, {} in flight, {} partitions, {:.0} B mean value",
                    report.deliveries, report.in_flight, report.partitions, report.mean_value_bytes
                );
                println!("| round | bare deliveries/s | transport deliveries/s | ratio |");
                println!("|---|---:|---:|---:|");
                for (i, r) in report.rounds.iter().enumerate() {
                    println!(
                        "| {} | {:.0} | {:.0} | {:.2} |",
                        i + 1,
                        r.bare.deliveries_per_s,
                        r.transport.deliveries_per_s,
                        r.ratio
                    );
                }
                println!("median ratio transport ÷ bare: {:.2}", report.median_ratio);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kafka-vs-bare: {e:#}");
            ExitCode::FAILURE
        }
    }
}
