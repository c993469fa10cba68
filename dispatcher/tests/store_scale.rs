//! The endpoint store at scale: a dispatcher starts from a topic holding
//! 10,000 endpoints of 100 tenants and routes an event of every tenant to
//! exactly its subscribers; and (ignored, benchmarks) the same from 100,000
//! endpoints of 1,000 tenants on a real broker, how many writes per second
//! the management API takes, and how long a change takes to apply on two
//! replicas.
//!
//! Routing is asserted; the figures (times, memory) go to
//! docs/benchmarks.md and are printed, never asserted:
//!
//! ```text
//! cargo test --release -p dispatcher --test store_scale -- --include-ignored --nocapture
//! ```

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use support::{config, wait_until, API_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENDPOINTS: usize = 10_000;

// The dispatcher binary's allocator and options, so that the memory
// figures are the ones it would show.
dispatcher::use_jemalloc!();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_starts_from_a_store_of_ten_thousand_endpoints() {
    support::init_logging();
    let kafka = support::embedded_kafka(1);
    start_from_a_store(kafka.bootstrap(), ENDPOINTS, "embedded Kafka").await;
}

/// The same at 100,000 endpoints (`STORE_ENDPOINTS` to change it), on a
/// real broker: the embedded one keeps at most 5 MiB per partition, less
/// than such a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it in release, see docs/benchmarks.md"]
async fn start_up_from_a_large_store_on_a_real_broker() {
    support::init_logging();
    let Some(broker) = support::tansu::dispatcher_broker(1).await else {
        return;
    };
    let n = std::env::var("STORE_ENDPOINTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    start_from_a_store(&broker.bootstrap(), n, "tansu").await;
}

/// Event types the stored endpoints subscribe to, one each (and `*` or
/// `message.*` for some).
const TYPES: [&str; 6] = [
    "contact.created",
    "message.received",
    "message.sent",
    "conversation.opened",
    "conversation.closed",
    "campaign.completed",
];

/// Endpoints per tenant in the store.
const PER_TENANT: usize = 100;

/// Stored endpoint `i`: its tenant and its one event pattern.
fn stored(i: usize, tenants: usize) -> (String, &'static str) {
    // Its place among its tenant's endpoints (i % tenants is the tenant).
    let k = i / tenants;
    let pattern = match k % 5 {
        0 => "*",
        1 => "message.*",
        _ => TYPES[k % TYPES.len()],
    };
    (format!("waba-{:04}", i % tenants), pattern)
}

fn matches(pattern: &str, event_type: &str) -> bool {
    pattern == "*"
        || pattern == event_type
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| event_type.starts_with(prefix))
}

/// Writes `n` endpoints of `n / 100` tenants straight into the store's
/// topic, starts a dispatcher on it, checks it read them all and prints
/// how long it took and what the idle endpoints cost; then an event for
/// every tenant reaches exactly that tenant's subscribers.
async fn start_from_a_store(bootstrap: &str, n: usize, broker: &str) {
    let sink = support::sink::Sink::start(support::sink::Behaviour::Ok).await;
    let tenants = (n / PER_TENANT).max(1);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let written = Instant::now();
    // In slices, so librdkafka's local queue (100,000 records) never fills.
    for first in (0..n).step_by(10_000) {
        let sends = (first..n.min(first + 10_000)).map(|i| {
            let producer = &producer;
            let sink = &sink;
            async move {
                let id = format!("tenant-{i:06}");
                let (tenant, pattern) = stored(i, tenants);
                let value = serde_json::json!({
                    "version": 1,
                    "endpoint": {
                        "id": id,
                        "url": sink.url(&format!("/{i}")),
                        "events": [pattern],
                        "tenant": tenant,
                    },
                    "state": {"paused": false, "disabled": false},
                })
                .to_string();
                let headers = OwnedHeaders::new().insert(Header {
                    key: dispatcher::store::VERSION_HEADER,
                    value: Some("1"),
                });
                producer
                    .send(
                        FutureRecord::to(support::ENDPOINTS_TOPIC)
                            .key(&id)
                            .payload(&value)
                            .headers(headers),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
        });
        futures::future::join_all(sends).await;
    }
    let write_s = written.elapsed().as_secs_f64();
    drop(producer);
    let rss_before = rss_mib();

    let started = Instant::now();
    let yaml = support::config_yaml(bootstrap, "scale", "", "")
        + "routing:\n  tenant_key: data.whatsapp_account_id\n";
    let cfg = dispatcher::config::Config::from_yaml(&yaml, &|_| None).expect("a valid config");
    let running = dispatcher::app::start(cfg)
        .await
        .expect("the dispatcher starts");
    let caught_up_s = started.elapsed().as_secs_f64();
    let mut busiest = 0;
    wait_until(Duration::from_secs(120), "ready", || {
        busiest = busiest.max(running.metrics.lane_tasks.get());
        running.ready.load(Ordering::Acquire)
    })
    .await;
    for _ in 0..100 {
        busiest = busiest.max(running.metrics.lane_tasks.get());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready_s = started.elapsed().as_secs_f64();
    // Counted, not listed: expanding every endpoint here would be part of
    // the RSS measured below.
    assert_eq!(running.store.len(), n);
    assert_eq!(running.metrics.store_endpoints.get(), n as i64);
    assert_eq!(running.metrics.store_bad_records.get(), 0);
    // Idle: nothing was produced, so no lane has work, and none runs a
    // task, not even for a moment; and no stored endpoint is applied twice
    // (a version read again changes only the state, if anything).
    assert_eq!(
        busiest, 0,
        "lanes ran tasks after start-up with nothing to do"
    );
    let updated = running
        .metrics
        .endpoint_changes
        .with_label_values(&["updated"])
        .get();
    assert_eq!(
        updated, 0,
        "a stored endpoint was applied again as an update at start-up"
    );
    // Nor has any allocated its counters, scraped or not: they are made by
    // the first count.
    assert!(running.metrics.render().contains("dispatcher_lane_tasks"));
    let allocated = (0..n)
        .step_by((n / 100).max(1))
        .filter(|i| {
            running
                .metrics
                .endpoint_counters(&format!("tenant-{i:06}"))
                .expect("every endpoint is registered")
                .allocated()
        })
        .count();
    assert_eq!(allocated, 0, "idle endpoints allocated their counters");
    // Nor made their lanes: that waits for their first delivery.
    assert_eq!(
        running.metrics.lanes_made.get(),
        0,
        "idle endpoints made lanes"
    );
    let rss_after = rss_mib();
    println!(
        "store of {n} endpoints on {broker}: written in {write_s:.1} s; start() returned (store read, endpoints in force) after {caught_up_s:.1} s; ready after {ready_s:.1} s; RSS {rss_after} MiB, {rss_before} MiB before start(): {:.1} KB per idle endpoint",
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / n as f64
    );

    // An event for every tenant (and one for a tenant nobody has) reaches
    // exactly the tenant's endpoints whose pattern takes it. In waves, so
    // that the sends in flight at once stay within this process's file
    // descriptors (each is two: the client's end and the sink's).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut seed = dispatcher::seed::SeedEvents::new(12);
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    let delivered = |sink: &support::sink::Sink| -> BTreeSet<(String, String)> {
        sink.received()
            .iter()
            .filter_map(|r| {
                let event: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                Some((event["data"]["marker"].as_str()?.to_owned(), r.path.clone()))
            })
            .collect()
    };
    // By tenant number (`None`: a tenant nobody has).
    let accounts: Vec<Option<usize>> = (0..tenants).map(Some).chain([None]).collect();
    let routed = Instant::now();
    for wave in accounts.chunks(100) {
        for &t in wave {
            let account = t.map_or_else(|| "waba-nobody".to_owned(), |t| format!("waba-{t:04}"));
            let event_type = TYPES[t.unwrap_or(0) % TYPES.len()];
            let (_, raw) = seed.event(event_type, chrono::Utc::now().timestamp_millis());
            let mut event: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            event["data"]["whatsapp_account_id"] = account.as_str().into();
            // One event per tenant: its account names it.
            event["data"]["marker"] = account.as_str().into();
            let value = serde_json::to_vec(&event).unwrap();
            producer
                .send(
                    FutureRecord::to("events").key(&account).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            // Tenant t's endpoints are t, t + tenants, t + 2 tenants, ...
            let Some(t) = t else { continue };
            expected.extend(
                (t..n)
                    .step_by(tenants)
                    .filter(|&i| matches(stored(i, tenants).1, event_type))
                    .map(|i| (account.clone(), format!("/{i}"))),
            );
        }
        let wave_sent = Instant::now();
        while delivered(&sink).len() < expected.len() {
            assert!(
                wave_sent.elapsed() < Duration::from_secs(120),
                "a wave of events did not reach its subscribers: {} of {} deliveries after 120 s",
                delivered(&sink).len(),
                expected.len(),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A moment for anything sent where it should not have been.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = delivered(&sink);
    let missing = expected.difference(&got).count();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(
        missing == 0 && extra.is_empty(),
        "{missing} of {} deliveries missing; sent where not subscribed: {extra:?}",
        expected.len()
    );
    println!(
        "{} events over {tenants} tenants: {} deliveries, each to exactly its subscribers, in {:.1} s; {} lanes made",
        accounts.len(),
        expected.len(),
        routed.elapsed().as_secs_f64(),
        running.metrics.lanes_made.get()
    );
    running.shutdown().await.unwrap();
}

/// This process's resident memory, from /proc (0 where there is none).
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// One PUT with a fresh connection: its status.
async fn put(addr: SocketAddr, id: &str, body: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "PUT /v1/endpoints/{id} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-dispatcher-api: 1\r\nauthorization: Bearer {API_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// API write throughput: WRITES creates, CLIENTS at a time, each waiting
/// for its answer (which comes after Kafka's acknowledgement and this
/// replica's read-back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it in release, see docs/benchmarks.md"]
async fn api_write_throughput() {
    const WRITES: usize = 2_000;
    let clients: usize = std::env::var("CLIENTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(8);
    support::init_logging();
    let kafka = support::embedded_kafka(1);
    let bootstrap = kafka.bootstrap().to_owned();
    let running = support::start(config(&bootstrap, "api-bench", "", "")).await;
    let addr = running.api_addr.unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..clients).map(|_| {
        let next = next.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= WRITES {
                    return latencies;
                }
                let id = format!("bench-{i:05}");
                let body = format!(
                    "{{\"url\": \"https://hooks.example/{i}\", \"events\": [\"message.*\"]}}"
                );
                let t = Instant::now();
                assert_eq!(put(addr, &id, &body).await, 201);
                latencies.push(t.elapsed());
            }
        })
    });
    let mut latencies: Vec<Duration> = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "API writes: {WRITES} creates, {clients} clients: {:.0} writes/s; latency p50 {:?}, p99 {:?}",
        WRITES as f64 / elapsed,
        p(0.50),
        p(0.99)
    );
    running.shutdown().await.unwrap();
}

/// Change-to-effect latency across two replicas on a real broker: an
/// endpoint is paused and resumed CHANGES times, each change made through
/// one replica's API in turn, and timed from the request until both
/// replicas' lanes have applied it (their `dispatcher_endpoint_paused`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it in release, see docs/benchmarks.md"]
async fn change_to_effect_across_two_replicas() {
    const CHANGES: usize = 200;
    support::init_logging();
    let Some(broker) = support::tansu::dispatcher_broker(2).await else {
        return;
    };
    let endpoints = "  - id: probe\n    url: \"http://127.0.0.1:9/\"\n    events: [\"*\"]\n";
    let cfg = || config(&broker.bootstrap(), "effect", "", endpoints);
    let a = support::start(cfg()).await;
    let b = support::start(cfg()).await;
    let paused = |r: &dispatcher::app::Running| {
        r.metrics
            .endpoint_counters("probe")
            .map_or(0, |c| c.paused.get())
    };
    let (mut acked, mut applied) = (Vec::new(), Vec::new());
    for i in 0..CHANGES {
        let (via, action, want) = if i % 2 == 0 {
            (&a, "pause", 1)
        } else {
            (&b, "resume", 0)
        };
        let t = Instant::now();
        let (status, body) =
            support::api(via, "POST", &format!("/v1/endpoints/probe/{action}")).await;
        assert_eq!(status, 200, "{action}: {body}");
        acked.push(t.elapsed());
        while paused(&a) != want || paused(&b) != want {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "change {i} never applied"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        applied.push(t.elapsed());
    }
    acked.sort();
    applied.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    println!(
        "change to effect on both replicas (tansu), {CHANGES} changes: p50 {:?}, p99 {:?}, max {:?}; API answered after p50 {:?}, p99 {:?}",
        p(&applied, 0.5),
        p(&applied, 0.99),
        applied[applied.len() - 1],
        p(&acked, 0.5),
        p(&acked, 0.99)
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
