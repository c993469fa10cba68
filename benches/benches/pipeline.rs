//! The whole in-process pipeline with a null transport: embedded Kafka,
//! consumer, decode, route, lanes, offsets — everything but the network.
//! Each iteration pre-fills a fresh topic (not timed), then times the
//! dispatcher from start until every delivery is final.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dispatcher::config::{Config, EndpointConfig};
use dispatcher_benches::fanout::{prefill, start_kafka, SOURCE_TOPIC};
use dispatcher_benches::workload::records;
use transports::{
    BoxFuture, BuildContext, Delivery, Outcome, Registry, SettingsError, Transport,
    TransportFactory,
};

const EVENTS: usize = 5_000;
const FAN_OUT: usize = 4;
const PARTITIONS: i32 = 8;

/// Accepts every delivery at once and counts it.
struct Null(Arc<AtomicU64>);

impl Transport for Null {
    fn kind(&self) -> &'static str {
        "null"
    }
    fn send<'a>(&'a self, _delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(Outcome::Delivered { status: None }))
    }
}

struct NullFactory(Arc<AtomicU64>);

impl TransportFactory for NullFactory {
    fn type_name(&self) -> &'static str {
        "null"
    }
    fn build(
        &self,
        _: &serde_json::Value,
        _: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError> {
        Ok(Arc::new(Null(self.0.clone())))
    }
}

/// One run: a fresh broker and backlog, then the timed drain.
async fn run_once(events: &[dispatcher_benches::workload::Record]) -> Duration {
    let kafka = start_kafka(PARTITIONS).expect("embedded Kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let batch = events.to_vec();
    tokio::task::spawn_blocking(move || {
        prefill(&bootstrap, PARTITIONS, &batch, Duration::from_secs(60))
    })
    .await
    .expect("prefill task")
    .expect("prefill");

    let delivered = Arc::new(AtomicU64::new(0));
    let mut registry = Registry::builtin();
    registry.register(Box::new(NullFactory(delivered.clone())));
    let mut config = Config::default();
    config.kafka.brokers = Some(kafka.bootstrap().to_owned());
    config.kafka.topics = vec![SOURCE_TOPIC.to_owned()];
    config.kafka.group_id = "pipeline-bench".into();
    config.admin.listen = ([127, 0, 0, 1], 0).into();
    config.endpoints = (0..FAN_OUT)
        .map(|i| EndpointConfig {
            id: format!("null-{i}"),
            transport: "null".into(),
            events: vec!["*".into()],
            ..Default::default()
        })
        .collect();

    let started = Instant::now();
    let running = dispatcher::app::start_with(config, &registry)
        .await
        .expect("dispatcher starts");
    let want = (events.len() * FAN_OUT) as u64;
    while delivered.load(Ordering::Relaxed) < want {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the pipeline stalled"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    running.shutdown().await.expect("clean shutdown");
    took
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let events = records(EVENTS);
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements((EVENTS * FAN_OUT) as u64));
    group.bench_function("null_transport_5k_events_x4", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(run_once(&events))).sum())
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
