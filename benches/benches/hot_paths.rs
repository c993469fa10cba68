//! The per-event and per-delivery work of the dispatcher, one function at a
//! time: decode a record, build an envelope, derive a delivery id, route
//! against many subscriptions (and build the routing table), sign a body,
//! render a Slack message.
//!
//! ```text
//! cargo bench -p dispatcher-benches
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use dispatcher::route::{LinearRouter, RouteTable, Router, Subscriber};
use dispatcher::seed::EVENT_TYPES;
use dispatcher_benches::workload::{self, SECRET};
use transports::http::signing::Signer;
use transports::slack::render;
use transports::{Delivery, DeliveryId, Event};

const ENDPOINT_ID: &str = "acme-crm";

fn received() -> Event {
    workload::sample_event("message.received").expect("seed message.received decodes")
}

fn decode(c: &mut Criterion) {
    let payload = received().payload().clone();
    let source = workload::source_ref(0);
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("message.received", |b| {
        b.iter(|| {
            Event::decode(black_box(payload.clone()), source.clone(), None, usize::MAX)
                .expect("decodes")
        })
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let event = received();
    c.bench_function("envelope", |b| {
        b.iter(|| black_box(&event).envelope(black_box(ENDPOINT_ID)))
    });
}

fn delivery_id(c: &mut Criterion) {
    let event = received();
    c.bench_function("delivery_id", |b| {
        b.iter(|| DeliveryId::derive(black_box(&event), black_box(ENDPOINT_ID)))
    });
}

/// Subscription counts of the routing benchmarks.
const ROUTE_SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn route(c: &mut Criterion<ThreadCpuTime>) {
    // One event of every type, routed in turn: the per-type candidate cache
    // is warm after the first round, as in a long-running dispatcher, so
    // what is measured is the walk over candidates and their filters.
    let events: Vec<Event> = EVENT_TYPES
        .iter()
        .map(|ty| workload::sample_event(ty).expect("seed events decode"))
        .collect();
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    for n in [10, 1_000, 100_000] {
        let mut router = Router::new(workload::subscriptions(n));
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let event = &events[next % events.len()];
                next = next.wrapping_add(1);
                let mut matched = 0usize;
                router.route(black_box(event), |i| matched = matched.wrapping_add(i));
                matched
            })
        });
    }
    // A multi-tenant platform: ENDPOINTS_PER_TENANT endpoints per tenant
    // (100,000 endpoints: 10,000 tenants) plus a few platform-wide ones,
    // events of every type spread over the tenants, each event's tenant
    // read from `data.whatsapp_account_id`. What is measured is what one
    // event costs as the tenants (and endpoints) grow: reading `data` once,
    // the lookups, and the event's own subscribers.
    for n in ROUTE_SIZES {
        let (events, subscribers) = tenant_workload(n);
        let table = RouteTable::build(Some(workload::tenant_key()), subscribers);
        let mut router = Router::from_table(Arc::new(table));
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("tenant_key", n), &n, |b, _| {
            b.iter(|| {
                let event = &events[next % events.len()];
                next = next.wrapping_add(1);
                let mut matched = 0usize;
                router.route(black_box(event), |i| matched = matched.wrapping_add(i));
                matched
            })
        });
    }
    group.finish();
}

/// The events and endpoints of the tenant benchmarks at `n` endpoints.
fn tenant_workload(n: usize) -> (Vec<Event>, Vec<Subscriber>) {
    let tenants = (n - workload::UNTENANTED) / workload::ENDPOINTS_PER_TENANT;
    let events = workload::tenant_events(1_200, tenants).expect("seed events decode");
    (events, workload::tenant_subscribers(n))
}

/// The naive scan the index replaced, on the same workloads: every
/// endpoint's tenant, patterns and filter checked against every event
/// (the reference router the index is tested against).
fn route_linear(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("route_linear");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for n in ROUTE_SIZES {
        let (events, subscribers) = tenant_workload(n);
        let router = LinearRouter::new(Some(workload::tenant_key()), subscribers);
        let mut next = 0usize;
        group.bench_with_input(BenchmarkId::new("tenant_key", n), &n, |b, _| {
            b.iter(|| {
                let event = &events[next % events.len()];
                next = next.wrapping_add(1);
                let mut matched = 0usize;
                router.route(black_box(event), &(), |i| matched = matched.wrapping_add(i));
                matched
            })
        });
    }
    group.finish();
}

/// Building the routing table from 100,000 endpoints over 10,000 tenants:
/// what a change of endpoints costs when the table is rebuilt whole.
fn route_table(c: &mut Criterion<ThreadCpuTime>) {
    let subscribers = workload::tenant_subscribers(100_000);
    let mut group = c.benchmark_group("route_table");
    group.sample_size(10);
    group.bench_function("build/100000", |b| {
        b.iter_batched(
            || subscribers.clone(),
            |s| RouteTable::build(Some(workload::tenant_key()), s),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn sign(c: &mut Criterion) {
    let signer = Signer::new(&[SECRET]).expect("the example secret is valid");
    // A message.received envelope is about 370 bytes: pad it with spaces to
    // 600, a typical webhook body, and a size that stays put when seeds change.
    let mut body = received().envelope(ENDPOINT_ID).to_vec();
    body.resize(600, b' ');
    let body = Bytes::from(body);
    let msg_id = DeliveryId::derive(&received(), ENDPOINT_ID).to_string();
    let mut group = c.benchmark_group("sign");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("600B", |b| {
        b.iter(|| {
            signer.sign(
                black_box(&msg_id),
                black_box("1767225600"),
                black_box(&body),
            )
        })
    });
    group.finish();
}

fn render_slack(c: &mut Criterion) {
    // Slack sends at most one message a second per webhook, so rendering is
    // never the bottleneck; this keeps an eye on its cost per message all
    // the same (it parses `data` into a tree, unlike the HTTP hot path).
    let deliveries: Vec<Delivery> = EVENT_TYPES
        .iter()
        .map(|ty| {
            let event = workload::sample_event(ty).expect("seed events decode");
            Delivery::new(Arc::new(event), ENDPOINT_ID.into())
        })
        .collect();
    let mut group = c.benchmark_group("render_slack");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message.received", |b| {
        b.iter(|| render::render(black_box(&deliveries[0]), None))
    });
    let mut next = 0usize;
    group.bench_function("every_type", |b| {
        b.iter(|| {
            let d = &deliveries[next % deliveries.len()];
            next = next.wrapping_add(1);
            render::render(black_box(d), None)
        })
    });
    group.finish();
}

/// The per-send check of an endpoint's rate limit (a governor token
/// bucket), with a limit high enough that it always admits.
fn rate_limit_check(c: &mut Criterion) {
    let quota = governor::Quota::per_second(std::num::NonZeroU32::new(1_000_000_000).unwrap());
    let limiter = governor::RateLimiter::direct(quota);
    c.bench_function("rate_limit_check", |b| {
        b.iter(|| black_box(limiter.check().is_ok()))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// Time on the benchmark thread's CPU clock rather than the wall clock.
///
/// The routing figures are compared against a per-event budget (2 µs at
/// 100,000 endpoints) on machines shared with builds: the wall clock also
/// counts the time the thread waits for a core, which there can double or
/// triple a figure; CPU time counts the work the routing does.
struct ThreadCpuTime;

/// Only lends its nanosecond formatting.
static WALL_TIME: WallTime = WallTime;

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, started: Duration) -> Duration {
        thread_cpu_time().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL_TIME.formatter()
    }
}

fn cpu_config() -> Criterion<ThreadCpuTime> {
    config().with_measurement(ThreadCpuTime)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = decode, envelope, delivery_id, sign, render_slack, rate_limit_check
}
criterion_group! {
    name = routing;
    config = cpu_config();
    targets = route, route_linear, route_table
}
criterion_main!(hot_paths, routing);
