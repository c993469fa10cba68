//! `dispatcher demo`: the whole pipeline on one machine with nothing
//! installed — embedded Kafka, a producer of seed events of every type,
//! four local webhook receivers (one slow, one flaky), live progress and a
//! final summary.
//!
//! Each receiver measures the end-to-end age of what it accepts (arrival
//! minus the event's `timestamp`), so the progress lines and the summary
//! show, per endpoint, whether it is real-time or behind; next to it, from
//! the dispatcher's own metrics, the backlog a lagging endpoint has in
//! Kafka (spilled, brought back, waiting, and the oldest wait).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use serde::Serialize;
use tokio::net::TcpListener;
use transports::{Event, SourceRef};

use crate::config::{Config, EndpointConfig, FilterValue, Scalar};
use crate::metrics::EndpointCounters;
use crate::route::{EventPattern, Filter, Router, Subscription};
use crate::seed::SeedEvents;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How many events to produce.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Events per second to produce (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Print the final summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Give up (and exit non-zero) after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// How one demo receiver behaves.
#[derive(Debug, Clone, Copy, Serialize)]
struct Behaviour {
    delay_ms: u64,
    /// One request in `fail_every` answers 503 (0: never).
    fail_every: u64,
}

struct Receiver {
    id: &'static str,
    behaviour: Behaviour,
    stats: Arc<ReceiverStats>,
}

#[derive(Default)]
struct ReceiverStats {
    requests: AtomicU64,
    unique: Mutex<HashSet<String>>,
    /// End-to-end age (event timestamp to arrival), microseconds.
    age_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// The same, since the last progress line.
    recent_age_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl ReceiverStats {
    /// The ages since the last call (for a progress line).
    fn take_recent(&self) -> Option<hdrhistogram::Histogram<u64>> {
        let mut recent = self.recent_age_us.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = recent.as_ref().map(|h| {
            let mut empty = h.clone();
            empty.reset();
            empty
        });
        std::mem::replace(&mut *recent, fresh)
    }
}

#[derive(Serialize)]
struct EndpointSummary {
    id: &'static str,
    subscribed_to: Vec<String>,
    behaviour: Behaviour,
    expected: u64,
    delivered: u64,
    dead_lettered: u64,
    received_unique: usize,
    requests: u64,
    /// End-to-end age of what this endpoint's receiver accepted.
    age_ms: Percentiles,
    /// Its backlog in Kafka, by the dispatcher's metrics.
    backlog: BacklogSummary,
}

#[derive(Serialize, Default, Clone, Copy)]
struct BacklogSummary {
    /// Deliveries written to the spill topic (`dispatcher_spilled_total`).
    spilled: u64,
    /// Brought back to the endpoint (`dispatcher_backlog_drained_total`).
    drained: u64,
    /// Most waiting in Kafka at once (`dispatcher_endpoint_backlog_deliveries`).
    peak: u64,
    /// The longest the oldest waited (`dispatcher_endpoint_backlog_oldest_age_seconds`).
    oldest_age_max_s: f64,
}

impl BacklogSummary {
    /// The metrics now; `peak` and `oldest_age_max_s` are what waits now.
    fn now(m: &crate::metrics::Metrics, id: &str) -> BacklogSummary {
        let Some(c) = m.endpoint_counters(id) else {
            return BacklogSummary::default();
        };
        BacklogSummary {
            spilled: c.spilled.get(),
            drained: c.backlog_drained.get(),
            peak: c.backlog.get().max(0) as u64,
            oldest_age_max_s: c.backlog_age.get(),
        }
    }

    /// Keep the peaks of `self` and `now`, and `now`'s counters.
    fn update(&mut self, now: BacklogSummary) {
        *self = BacklogSummary {
            peak: self.peak.max(now.peak),
            oldest_age_max_s: self.oldest_age_max_s.max(now.oldest_age_max_s),
            ..now
        };
    }
}

#[derive(Serialize)]
struct Summary {
    events: u64,
    deliveries: u64,
    delivered: u64,
    dead_lettered: u64,
    retries: u64,
    complete: bool,
    elapsed_s: f64,
    events_per_s: f64,
    deliveries_per_s: f64,
    latency_ms: Percentiles,
    endpoints: Vec<EndpointSummary>,
}

#[derive(Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Of a histogram of microseconds, in milliseconds.
    fn of(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: h.max() as f64 / 1000.0,
        }
    }
}

/// An age for people: milliseconds below ten seconds, then seconds.
fn age_text(ms: f64) -> String {
    if ms < 10_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // (id, subscriptions, behaviour, filter: (field, any of values))
    type Spec = (
        &'static str,
        &'static [&'static str],
        Behaviour,
        Option<(&'static str, &'static [&'static str])>,
    );
    let specs: [Spec; 4] = [
        (
            "crm",
            &["message.*"],
            Behaviour {
                delay_ms: 0,
                fail_every: 20,
            },
            None,
        ),
        (
            "analytics",
            &["*"],
            Behaviour {
                delay_ms: 0,
                fail_every: 0,
            },
            None,
        ),
        (
            "support-desk",
            &["conversation.*", "transfer.created", "message.received"],
            Behaviour {
                delay_ms: 0,
                fail_every: 0,
            },
            Some(("data.whatsapp_account_id", &["acct-1", "acct-2"])),
        ),
        (
            "archive-slow",
            &["*"],
            Behaviour {
                delay_ms: 100,
                fail_every: 0,
            },
            None,
        ),
    ];

    let mut receivers = Vec::new();
    let mut config = Config::default();
    // The receivers are on this machine.
    config.http.allowed_networks = vec!["127.0.0.0/8".into()];
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.kafka.embedded_partitions = 12;
    // The embedded Kafka answers a waiting fetch only when fetch.wait.max.ms
    // ends (500 ms by default), not when records arrive as a real broker
    // does: every age would include that wait. The load tester does the same.
    config
        .kafka
        .options
        .insert("fetch.wait.max.ms".into(), Scalar("10".into()));
    for (id, events, behaviour, filter) in specs {
        let stats = Arc::new(ReceiverStats::default());
        let addr = start_receiver(behaviour, stats.clone()).await?;
        receivers.push(Receiver {
            id,
            behaviour,
            stats,
        });
        let settings = serde_json::json!({
            "url": format!("http://{addr}/webhooks/{id}"),
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        });
        config.endpoints.push(EndpointConfig {
            id: id.into(),
            transport: "http".into(),
            settings: settings.as_object().cloned().unwrap_or_default(),
            events: events.iter().map(|s| s.to_string()).collect(),
            filter: filter
                .map(|(k, vals)| {
                    let list = vals.iter().map(|v| Scalar(v.to_string())).collect();
                    [(k.to_string(), FilterValue::AnyOf(list))]
                        .into_iter()
                        .collect()
                })
                .unwrap_or_default(),
            timeout: Duration::from_secs(10),
            max_in_flight: if behaviour.delay_ms > 0 { 64 } else { 32 },
            enabled: true,
            // Quick retries, so the flaky receiver's 503s resolve within the demo.
            retry: crate::lane::RetryConfig {
                schedule: [100, 500, 1000, 2000].map(Duration::from_millis).to_vec(),
                ..Default::default()
            },
            ..Default::default()
        });
    }

    let mut router = Router::new(
        config
            .endpoints
            .iter()
            .map(|ep| Subscription {
                patterns: ep
                    .events
                    .iter()
                    .filter_map(|e| EventPattern::parse(e).ok())
                    .collect(),
                filter: Filter::parse(&ep.filter).unwrap_or_default(),
            })
            .collect(),
    );

    let running = crate::app::start(config.clone()).await?;
    eprintln!(
        "demo: embedded Kafka at {}, metrics at http://{}/metrics, {} receivers",
        running.bootstrap,
        running.admin_addr,
        receivers.len()
    );
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &running.bootstrap)
        .set("linger.ms", "5")
        .create()
        .context("creating the demo producer")?;

    let started = Instant::now();
    let mut expected = vec![0u64; receivers.len()];
    let mut seeds = SeedEvents::new(0x5eed);
    let topic = config.kafka.topics[0].clone();
    let m = running.metrics.clone();
    let count = |id: &str, of: fn(&EndpointCounters) -> u64| -> u64 {
        m.endpoint_counters(id).map_or(0, |c| of(&c))
    };
    let endpoint_total = |of: fn(&EndpointCounters) -> u64| -> u64 {
        receivers.iter().map(|r| count(r.id, of)).sum()
    };
    let mut produced = 0u64;
    let mut backlogs = vec![BacklogSummary::default(); receivers.len()];
    let mut last_report = Instant::now();
    let mut complete = false;
    loop {
        // Produce in slices so progress keeps printing during production.
        let slice_end = Instant::now() + Duration::from_millis(50);
        while produced < args.events && Instant::now() < slice_end {
            if let Some(rate) = args.rate {
                if produced as f64 >= rate as f64 * started.elapsed().as_secs_f64() {
                    break;
                }
            }
            let now = chrono::Utc::now().timestamp_millis();
            let (_, id, value) = seeds.next_event(now);
            let src = SourceRef {
                topic: topic.as_str().into(),
                partition: 0,
                offset: 0,
            };
            if let Ok(ev) = Event::decode(Bytes::from(value.clone()), src, None, usize::MAX) {
                router.route(&ev, |i| expected[i] += 1);
            }
            let mut record = BaseRecord::<str, [u8]>::to(&topic)
                .key(id.as_str())
                .payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            produced += 1;
        }
        tokio::time::sleep(Duration::from_millis(if produced < args.events {
            1
        } else {
            50
        }))
        .await;

        for (b, r) in backlogs.iter_mut().zip(&receivers) {
            b.update(BacklogSummary::now(&m, r.id));
        }
        let want: u64 = expected.iter().sum();
        let done =
            endpoint_total(|c| c.delivered.get()) + endpoint_total(|c| c.dead_lettered.get());
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "[{:>5.1}s] produced {produced}/{} | consumed {} | deliveries {done}/{want} | dead-lettered {} | in flight {} | {:.0} deliveries/s",
                started.elapsed().as_secs_f64(),
                args.events,
                m.events_consumed.with_label_values(&[&topic]).get(),
                endpoint_total(|c| c.dead_lettered.get()),
                m.events_in_flight.get(),
                done as f64 / started.elapsed().as_secs_f64()
            );
            for line in endpoint_progress(&receivers, &m) {
                eprintln!("        {line}");
            }
        }
        if produced >= args.events && done >= want {
            complete = true;
            break;
        }
        if started.elapsed() > args.timeout {
            eprintln!("demo: timed out after {:?}", args.timeout);
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = producer.flush(Duration::from_secs(5));
    // Before the embedded broker goes away with the dispatcher.
    drop(producer);

    let mut all_ages = hdrhistogram::Histogram::<u64>::new(3).context("histogram")?;
    let mut endpoints = Vec::new();
    for (r, spec) in receivers.iter().zip(&config.endpoints) {
        let ages = r
            .stats
            .age_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(hdrhistogram::Histogram::new(3).context("histogram")?);
        let _ = all_ages.add(&ages);
        endpoints.push(EndpointSummary {
            id: r.id,
            subscribed_to: spec.events.clone(),
            behaviour: r.behaviour,
            expected: expected[endpoints.len()],
            delivered: count(r.id, |c| c.delivered.get()),
            dead_lettered: count(r.id, |c| c.dead_lettered.get()),
            received_unique: r
                .stats
                .unique
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            requests: r.stats.requests.load(Ordering::Relaxed),
            age_ms: Percentiles::of(&ages),
            backlog: {
                let mut b = backlogs[endpoints.len()];
                b.update(BacklogSummary::now(&m, r.id));
                b
            },
        });
    }
    let retries = endpoint_total(|c| c.attempt_retry.get());
    let summary = Summary {
        events: produced,
        deliveries: expected.iter().sum(),
        delivered: endpoint_total(|c| c.delivered.get()),
        dead_lettered: endpoint_total(|c| c.dead_lettered.get()),
        retries,
        complete,
        elapsed_s: elapsed,
        events_per_s: produced as f64 / elapsed,
        deliveries_per_s: endpoint_total(|c| c.delivered.get()) as f64 / elapsed,
        latency_ms: Percentiles::of(&all_ages),
        endpoints,
    };
    running.shutdown().await?;

    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    if complete {
        Ok(())
    } else {
        anyhow::bail!(
            "the demo did not finish: {} of {} deliveries final",
            summary.delivered + summary.dead_lettered,
            summary.deliveries
        )
    }
}

fn print_summary(s: &Summary) {
    println!();
    println!("events            {}", s.events);
    println!(
        "deliveries        {} expected, {} delivered, {} dead-lettered, {} retries",
        s.deliveries, s.delivered, s.dead_lettered, s.retries
    );
    println!(
        "elapsed           {:.2} s  ({:.0} events/s, {:.0} deliveries/s)",
        s.elapsed_s, s.events_per_s, s.deliveries_per_s
    );
    println!(
        "end-to-end age    p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.latency_ms.p50, s.latency_ms.p90, s.latency_ms.p99, s.latency_ms.max
    );
    println!();
    println!(
        "{:<14} {:<48} {:>9} {:>9} {:>6} {:>9}",
        "endpoint", "subscribed to", "expected", "delivered", "dlq", "requests"
    );
    for e in &s.endpoints {
        println!(
            "{:<14} {:<48} {:>9} {:>9} {:>6} {:>9}",
            e.id,
            e.subscribed_to.join(", "),
            e.expected,
            e.delivered,
            e.dead_lettered,
            e.requests
        );
    }
    println!();
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "end-to-end age",
        "p50",
        "p90",
        "p99",
        "max",
        "spilled",
        "back",
        "most waiting",
        "oldest wait"
    );
    for e in &s.endpoints {
        println!(
            "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10.1} s",
            e.id,
            age_text(e.age_ms.p50),
            age_text(e.age_ms.p90),
            age_text(e.age_ms.p99),
            age_text(e.age_ms.max),
            e.backlog.spilled,
            e.backlog.drained,
            e.backlog.peak,
            e.backlog.oldest_age_max_s
        );
    }
    println!("(spilled: written to Kafka because the endpoint did not keep up; back: brought back from there)");
}

/// Each endpoint's p99 age over the last second, on one line; then a line
/// for each endpoint with a backlog in Kafka: how much waits there, since
/// when, and how much went there and came back.
fn endpoint_progress(receivers: &[Receiver], m: &crate::metrics::Metrics) -> Vec<String> {
    let ages = receivers
        .iter()
        .map(|r| {
            let age = match r.stats.take_recent() {
                Some(h) if !h.is_empty() => {
                    format!("p99 age {}", age_text(Percentiles::of(&h).p99))
                }
                _ => "no deliveries".to_owned(),
            };
            format!("{} {age}", r.id)
        })
        .collect::<Vec<_>>()
        .join(" | ");
    let mut lines = vec![ages];
    for r in receivers {
        let b = BacklogSummary::now(m, r.id);
        if b.spilled > 0 || b.peak > 0 {
            lines.push(format!(
                "{}: backlog in Kafka {} (oldest {:.1} s); {} spilled, {} back",
                r.id, b.peak, b.oldest_age_max_s, b.spilled, b.drained
            ));
        }
    }
    lines
}

/// A local webhook receiver with the given behaviour.
async fn start_receiver(
    behaviour: Behaviour,
    stats: Arc<ReceiverStats>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    *stats.age_us.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(hdrhistogram::Histogram::new(3)?);
    *stats
        .recent_age_us
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(hdrhistogram::Histogram::new(3)?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stats = stats.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| receive(req, behaviour, stats.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn receive(
    req: Request<Incoming>,
    behaviour: Behaviour,
    stats: Arc<ReceiverStats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let delivery_id = req
        .headers()
        .get("x-webhook-delivery-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if behaviour.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.delay_ms)).await;
    }
    if behaviour.fail_every > 0 && n % behaviour.fail_every == 0 {
        let mut r = Response::new(Full::new(Bytes::from_static(b"try again")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(r);
    }
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        timestamp: &'a str,
    }
    if let Ok(env) = serde_json::from_slice::<Envelope<'_>>(&body) {
        if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(env.timestamp) {
            let age = (chrono::Utc::now() - ts.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0);
            for ages in [&stats.age_us, &stats.recent_age_us] {
                if let Some(h) = ages.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    let _ = h.record(age.max(0) as u64);
                }
            }
        }
    }
    stats
        .unique
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(delivery_id);
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"received\":true}",
    ))))
}
