//! No endpoint can slow another: endpoints that cannot keep up (slow but
//! healthy, rate-limited) have their backlog moved to Kafka and drained at
//! their own pace, while the others go on as if they were alone. On the
//! embedded Kafka (librdkafka's mock cluster); `broker_e2e.rs` runs the
//! same shape against a real broker.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use dispatcher::app::Running;
use dispatcher::seed::SeedEvents;
use support::kafka::produce;
use support::sink::{Behaviour, Sink};
use support::{assert_one_id_per_event, config, raw_data, start, wait_until};

fn events(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut seeds = SeedEvents::new(seed);
    (0..n)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect()
}

/// Deliveries endpoint `id` wrote to the spill topic.
fn spilled_by(running: &Running, id: &str) -> u64 {
    running
        .metrics
        .endpoint_counters(id)
        .map_or(0, |c| c.spilled.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_and_a_rate_limited_endpoint_do_not_slow_the_fast_ones() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let fast = Sink::start(Behaviour::Ok).await;
    // 100 ms per answer, two at a time: 20 deliveries/s at best.
    let slow = Sink::start(Behaviour::Delay { ms: 100 }).await;
    let limited = Sink::start(Behaviour::Ok).await;
    let mut endpoints = String::new();
    for i in 0..4 {
        endpoints += &format!(
            "  - id: fast-{i}\n    url: \"{}\"\n    events: [\"*\"]\n",
            fast.url(&format!("/f{i}"))
        );
    }
    endpoints += &format!(
        "  - id: slow\n    url: \"{}\"\n    events: [\"*\"]\n    max_in_flight: 2\n",
        slow.url("/slow")
    );
    endpoints += &format!(
        "  - id: limited\n    url: \"{}\"\n    events: [\"*\"]\n    rate_limit: {{ per_second: 20 }}\n",
        limited.url("/limited")
    );
    let running = start(config(kafka.bootstrap(), "isolation", "", &endpoints)).await;

    const N: usize = 400;
    let values = events(41, N);
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    // Two bursts 3 s apart: by the second, the fast endpoints move on to
    // events newer than what the slow ones still hold, which is what makes
    // those lag the others (a wait alone, with nothing newer, is not).
    produce(kafka.bootstrap(), "events", &values[..N / 2]).await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce(kafka.bootstrap(), "events", &values[N / 2..]).await;

    wait_until(
        Duration::from_secs(60),
        "every fast endpoint got every event",
        || (0..4).all(|i| fast.data_at(&format!("/f{i}")) == produced),
    )
    .await;
    let fast_done = started.elapsed();
    // The slow endpoint needs N / 20 = 20 s for its share, the limited one
    // as long: the fast ones must not wait for either.
    assert!(
        fast_done < Duration::from_secs(8),
        "the fast endpoints took {fast_done:?}, as if they waited for the slow ones"
    );
    assert!(
        slow.count() < N && limited.count() < N,
        "the slow ones cannot be done yet ({} and {} of {N})",
        slow.count(),
        limited.count()
    );
    wait_until(
        Duration::from_secs(120),
        "the slow and the limited endpoints got every event, later",
        || slow.data_at("/slow") == produced && limited.data_at("/limited") == produced,
    )
    .await;
    for sink in [&fast, &slow, &limited] {
        assert_one_id_per_event(sink);
    }
    // Their backlogs waited in Kafka (they lagged the fast ones by more
    // than pipeline.spill_after), each delivery written there once.
    let m = running.metrics.clone();
    let spilled = |ep: &str| m.endpoint_counters(ep).map_or(0, |c| c.spilled.get()) as usize;
    assert!(spilled("slow") > 0 && spilled("limited") > 0);
    assert!(
        spilled("slow") <= N && spilled("limited") <= N,
        "a spilled delivery is written once: {} and {} writes for {N} events",
        spilled("slow"),
        spilled("limited")
    );
    running.shutdown().await.unwrap();
}

/// A backlog drain where every endpoint is as slow as the others: they wait
/// alike, none lags the rest, and nothing spills (spilling them all would
/// only copy the backlog from one topic to another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_wait_alike_in_a_backlog_drain_do_not_spill() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    // 5 ms per answer, two at a time: at most 400 deliveries/s each, so
    // the backlog takes about 5 s, well past pipeline.spill_after (2 s).
    let sink = Sink::start(Behaviour::Delay { ms: 5 }).await;
    let mut endpoints = String::new();
    for i in 0..4 {
        endpoints += &format!(
            "  - id: even-{i}\n    url: \"{}\"\n    events: [\"*\"]\n    max_in_flight: 2\n",
            sink.url(&format!("/e{i}"))
        );
    }
    const N: usize = 2000;
    let values = events(43, N);
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    produce(kafka.bootstrap(), "events", &values).await;
    // A budget the backlog cannot fill: only lagging could make them spill.
    let pipeline = "  max_events_in_flight: 100000\n";
    let running = start(config(
        kafka.bootstrap(),
        "drain-alike",
        pipeline,
        &endpoints,
    ))
    .await;
    wait_until(
        Duration::from_secs(90),
        "every endpoint got every event",
        || (0..4).all(|i| sink.data_at(&format!("/e{i}")) == produced),
    )
    .await;
    assert_one_id_per_event(&sink);
    let spilled: Vec<u64> = (0..4)
        .map(|i| spilled_by(&running, &format!("even-{i}")))
        .collect();
    assert_eq!(
        spilled,
        vec![0; 4],
        "endpoints that kept pace with each other were spilled"
    );
    running.shutdown().await.unwrap();
}

/// The same with a budget the drain fills: the source is held back again
/// and again, for longer than pipeline.spill_after each time, while every
/// lane is behind alike. That is back-pressure, not one endpoint holding up
/// the others: no stall check spills, and nearly nothing is spilled at all.
/// (Spilling every lane that held fresh work at each long pause sent 97 %
/// of the deliveries through the spill topic.)
///
/// spill_after is well above how far alike lanes drift apart on a starved
/// machine: with 300 ms, two busy loops beside this debug build made one or
/// two of the twelve lanes lag the others by 440 ms of reading time, and
/// the lag rule (rightly, for that setting) spilled up to 520 of the 4,800
/// deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_behind_alike_when_the_budget_fills_do_not_spill() {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    // 50 ms per answer, one at a time: 20 deliveries/s each, 240/s for the
    // twelve. Freeing a quarter of a 100-record budget takes about 1.25 s,
    // longer than spill_after (800 ms): each hold counts as a stall.
    let sink = Sink::start(Behaviour::Delay { ms: 50 }).await;
    let mut endpoints = String::new();
    for i in 0..12 {
        endpoints += &format!(
            "  - id: alike-{i}\n    url: \"{}\"\n    events: [\"*\"]\n    max_in_flight: 1\n",
            sink.url(&format!("/e{i}"))
        );
    }
    const N: usize = 300;
    let values = events(47, N);
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    produce(kafka.bootstrap(), "events", &values).await;
    // A grace no pause reaches: the test is about the minority rule, and a
    // loaded machine may stretch a pause past three spill_afters.
    let pipeline = "  max_events_in_flight: 100\n  spill_after: 800ms\n  stall_grace: 1000\n";
    let running = start(config(
        kafka.bootstrap(),
        "full-alike",
        pipeline,
        &endpoints,
    ))
    .await;
    wait_until(
        Duration::from_secs(120),
        "every endpoint got every event",
        || (0..12).all(|i| sink.data_at(&format!("/e{i}")) == produced),
    )
    .await;
    assert_one_id_per_event(&sink);
    let stalls = &running.metrics.budget_stalls;
    assert!(
        stalls.with_label_values(&["waited"]).get() > 0,
        "no pause outlasted spill_after: the test did not test the stall rule"
    );
    assert_eq!(
        stalls.with_label_values(&["spilled"]).get(),
        0,
        "a stall check spilled lanes that were behind alike"
    );
    let spilled: u64 = (0..12)
        .map(|i| spilled_by(&running, &format!("alike-{i}")))
        .sum();
    let deliveries = (12 * N) as u64;
    assert!(
        spilled * 10 <= deliveries,
        "{spilled} of {deliveries} deliveries spilled by endpoints behind alike"
    );
    running.shutdown().await.unwrap();
}

/// Most endpoints slow alike do not hold the others for long: three
/// endpoints rate-limited alike beside one fast one. The front is a slow
/// lane's mark (three of four), so none lags; the slow lanes are most of
/// the lanes and outnumber the waiting one, so a full budget first counts
/// as back-pressure. After three spill_afters of one pause they spill, and
/// the fast endpoint gets its events long before the slow ones are through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_slow_alike_holds_a_fast_endpoint_for_three_spill_afters_at_most() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let fast = Sink::start(Behaviour::Ok).await;
    let slow = Sink::start(Behaviour::Ok).await;
    let mut endpoints = format!(
        "  - id: fast\n    url: \"{}\"\n    events: [\"*\"]\n",
        fast.url("/fast")
    );
    for i in 0..3 {
        endpoints += &format!(
            "  - id: limited-{i}\n    url: \"{}\"\n    events: [\"*\"]\n    rate_limit: {{ per_second: 20 }}\n",
            slow.url(&format!("/s{i}"))
        );
    }
    // 600 events at 20/s take the limited endpoints 30 s; a 100-record
    // budget frees a quarter every 1.25 s at their pace, past spill_after.
    const N: usize = 600;
    let values = events(48, N);
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    let pipeline = "  max_events_in_flight: 100\n  spill_after: 300ms\n";
    let running = start(config(
        kafka.bootstrap(),
        "majority-slow",
        pipeline,
        &endpoints,
    ))
    .await;
    produce(kafka.bootstrap(), "events", &values).await;
    let started = Instant::now();
    wait_until(
        Duration::from_secs(90),
        "the fast endpoint got every event",
        || fast.data_at("/fast") == produced,
    )
    .await;
    let fast_done = started.elapsed();
    assert!(
        fast_done < Duration::from_secs(15),
        "the fast endpoint waited {fast_done:?} for the slow ones"
    );
    assert!(
        slow.count() < 3 * N / 2,
        "the limited ones cannot be through yet: {}",
        slow.count()
    );
    let spilled: u64 = (0..3)
        .map(|i| spilled_by(&running, &format!("limited-{i}")))
        .sum();
    assert!(spilled > 0, "the limited endpoints spilled nothing");
    assert!(
        running
            .metrics
            .budget_stalls
            .with_label_values(&["spilled"])
            .get()
            > 0
    );
    running.shutdown().await.unwrap();
}

/// One slow endpoint fills the memory budget while the only other endpoint
/// has nothing queued, so no other lane's progress shows it lagging: once
/// the budget has kept the source paused for pipeline.spill_after, the
/// slow lane spills, and the other endpoint's events, further on in the
/// partition, are read and delivered long before the slow one is through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_slow_endpoint_that_fills_the_budget_is_spilled_so_the_source_reads_on() {
    support::init_logging();
    let kafka = support::embedded_kafka(1);
    // 100 ms per answer, two at a time: 20 deliveries/s.
    let slow = Sink::start(Behaviour::Delay { ms: 100 }).await;
    let other = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: slow\n    url: \"{}\"\n    events: [\"message.*\"]\n    max_in_flight: 2\n  - id: other\n    url: \"{}\"\n    events: [contact.created]\n",
        slow.url("/slow"),
        other.url("/other")
    );
    const SLOW: usize = 2000;
    let mut seeds = SeedEvents::new(44);
    let now = chrono::Utc::now().timestamp_millis();
    let mut values: Vec<Vec<u8>> = (0..SLOW)
        .map(|_| seeds.event("message.sent", now).1)
        .collect();
    let theirs: Vec<Vec<u8>> = (0..3)
        .map(|_| seeds.event("contact.created", now).1)
        .collect();
    values.extend(theirs.iter().cloned());
    let slow_events: BTreeSet<String> = values[..SLOW].iter().map(|v| raw_data(v)).collect();
    let other_events: BTreeSet<String> = theirs.iter().map(|v| raw_data(v)).collect();
    // About a thousand of those records fill 1 MiB: at 20/s the slow lane
    // alone would hold the source for a minute before the other
    // endpoint's events are read.
    let pipeline = "  memory_budget: 1MiB\n  max_events_in_flight: 100000\n";
    let running = start(config(kafka.bootstrap(), "lone-slow", pipeline, &endpoints)).await;
    produce(kafka.bootstrap(), "events", &values).await;
    let started = Instant::now();
    wait_until(
        Duration::from_secs(90),
        "the other endpoint got its events",
        || other.data_at("/other") == other_events,
    )
    .await;
    let other_done = started.elapsed();
    assert!(
        other_done < Duration::from_secs(15),
        "the other endpoint waited {other_done:?} for the slow one"
    );
    assert!(
        slow.count() < SLOW / 2,
        "the slow one cannot be through yet: {}",
        slow.count()
    );
    assert!(
        running
            .metrics
            .endpoint_counters("slow")
            .expect("a running endpoint")
            .spilled
            .get()
            > 0
    );
    // The minority rule spilled it, at the first stall, not the grace.
    let stalls = &running.metrics.budget_stalls;
    assert!(stalls.with_label_values(&["spilled"]).get() > 0);
    assert_eq!(stalls.with_label_values(&["waited"]).get(), 0);
    // The slow receiver recovers: everything arrives, each id once.
    slow.set(Behaviour::Ok);
    wait_until(
        Duration::from_secs(120),
        "the slow endpoint got every event, later",
        || slow.data_at("/slow") == slow_events,
    )
    .await;
    assert_one_id_per_event(&slow);
    running.shutdown().await.unwrap();
}

/// A tenant whose four endpoints cannot keep up with its flood, and a quiet
/// tenant whose events come after the flood in the same partition. The
/// flooding tenant's lanes together may hold half the budget at most, so
/// they spill before it is full, the source reads on, and the
/// quiet tenant's events are delivered at its receiver's pace. Without the
/// tenants' shares the flood filled the budget and held the source until
/// it drained (100 s here; `spill_after` is set long so that the stall
/// fallback cannot hide it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_hold_up_a_quiet_tenant_behind_it() {
    support::init_logging();
    let kafka = support::embedded_kafka(1);
    // 100 ms per answer, two at a time: 20 deliveries/s per endpoint.
    let slow = Sink::start(Behaviour::Delay { ms: 100 }).await;
    let quiet = Sink::start(Behaviour::Ok).await;
    let mut endpoints = String::new();
    for i in 0..4 {
        endpoints += &format!(
            "  - id: flood-{i}\n    tenant: flood\n    url: \"{}\"\n    events: [\"*\"]\n    max_in_flight: 2\n",
            slow.url(&format!("/flood-{i}"))
        );
    }
    endpoints += &format!(
        "  - id: quiet\n    tenant: quiet\n    url: \"{}\"\n    events: [\"*\"]\n",
        quiet.url("/quiet")
    );
    const FLOOD: usize = 2000;
    let mut seeds = SeedEvents::new(45);
    let now = chrono::Utc::now().timestamp_millis();
    let mut of_tenant = |tenant: &str| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&seeds.event("message.sent", now).1).unwrap();
        v["data"]["whatsapp_account_id"] = serde_json::json!(tenant);
        serde_json::to_vec(&v).unwrap()
    };
    let mut values: Vec<Vec<u8>> = (0..FLOOD).map(|_| of_tenant("flood")).collect();
    let theirs: Vec<Vec<u8>> = (0..3).map(|_| of_tenant("quiet")).collect();
    values.extend(theirs.iter().cloned());
    let flood_events: BTreeSet<String> = values[..FLOOD].iter().map(|v| raw_data(v)).collect();
    let quiet_events: BTreeSet<String> = theirs.iter().map(|v| raw_data(v)).collect();
    let pipeline = "  memory_budget: 1MiB\n  max_events_in_flight: 100000\n  spill_after: 10m\n";
    let yaml = support::config_yaml(kafka.bootstrap(), "tenant-flood", pipeline, &endpoints)
        + "routing:\n  tenant_key: data.whatsapp_account_id\n";
    let config = dispatcher::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let running = start(config).await;
    produce(kafka.bootstrap(), "events", &values).await;
    let started = Instant::now();
    wait_until(
        Duration::from_secs(150),
        "the quiet tenant got its events",
        || quiet.data_at("/quiet") == quiet_events,
    )
    .await;
    let quiet_done = started.elapsed();
    assert!(
        quiet_done < Duration::from_secs(20),
        "the quiet tenant waited {quiet_done:?} for the flood"
    );
    assert!(
        slow.count() < 4 * FLOOD / 2,
        "the flood cannot be through yet: {}",
        slow.count()
    );
    let spilled: u64 = (0..4)
        .map(|i| spilled_by(&running, &format!("flood-{i}")))
        .sum();
    assert!(spilled > 0, "the flood's lanes spilled");
    // The flood's receivers speed up: everything arrives.
    slow.set(Behaviour::Ok);
    for i in 0..4 {
        let path = format!("/flood-{i}");
        wait_until(
            Duration::from_secs(120),
            "every flood endpoint got every event, later",
            || slow.data_at(&path) == flood_events,
        )
        .await;
    }
    running.shutdown().await.unwrap();
}

/// An endpoint of everything that sends one request at a time and queues
/// four in memory: it lags, and spills, as soon as its receiver is slow.
fn one_at_a_time(id: &str, url: &str) -> String {
    format!(
        "  - id: {id}\n    url: \"{url}\"\n    events: [\"*\"]\n    max_in_flight: 1\n    queue_capacity: 4\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lagging_endpoints_on_one_spill_partition_each_drain_at_their_own_pace() {
    support::init_logging();
    // One spill partition: both backlogs share it.
    let kafka =
        dispatcher::embedded::EmbeddedKafka::start(&["events", "dispatcher.dlq"], 2).unwrap();
    for tier in support::RETRY_TOPICS {
        kafka.create_topic(tier, 1).unwrap();
    }
    kafka.create_topic(support::SPILL_TOPIC, 1).unwrap();
    kafka.create_topic(support::ENDPOINTS_TOPIC, 1).unwrap();
    // About 10 deliveries/s and 1 delivery/s.
    let quick = Sink::start(Behaviour::Delay { ms: 100 }).await;
    let crawl = Sink::start(Behaviour::Delay { ms: 1000 }).await;
    let endpoints =
        one_at_a_time("quick", &quick.url("/q")) + &one_at_a_time("crawl", &crawl.url("/c"));
    let running = start(config(
        kafka.bootstrap(),
        "shared-spill",
        "  spill_after: 200ms\n",
        &endpoints,
    ))
    .await;

    const N: usize = 40;
    let values = events(42, N);
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    produce(kafka.bootstrap(), "events", &values).await;
    let started = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "the quicker endpoint drained its backlog",
        || quick.data_at("/q") == produced,
    )
    .await;
    let quick_done = started.elapsed();
    // At its own pace that is about 4 s; at the crawler's, 40 s.
    assert!(
        quick_done < Duration::from_secs(15),
        "the quicker endpoint took {quick_done:?}: held to the slower one's pace"
    );
    assert!(
        crawl.count() < N / 2,
        "the crawler cannot have had more than ~{} s worth yet ({} delivered)",
        quick_done.as_secs(),
        crawl.count()
    );
    let m = running.metrics.clone();
    assert!(m.endpoint_counters("quick").map_or(0, |c| c.spilled.get()) > 0);
    assert!(m.endpoint_counters("crawl").map_or(0, |c| c.spilled.get()) > 0);

    // The crawler recovers its pace: everything arrives, under its ids.
    crawl.set(Behaviour::Ok);
    wait_until(
        Duration::from_secs(60),
        "the crawler's backlog arrives",
        || crawl.data_at("/c") == produced,
    )
    .await;
    assert_one_id_per_event(&quick);
    assert_one_id_per_event(&crawl);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_backlog_holds_little_memory_and_starves_nothing() {
    support::init_logging();
    let kafka = support::embedded_kafka(1);
    let sink = Sink::start(Behaviour::Ok).await;
    let endpoints = format!(
        "  - id: limited\n    url: \"{}\"\n    events: [\"*\"]\n    rate_limit: {{ per_second: 100, burst: 5 }}\n    queue_capacity: 20\n",
        sink.url("/")
    );
    let running = start(config(
        kafka.bootstrap(),
        "limited-backlog",
        "  spill_after: 200ms\n",
        &endpoints,
    ))
    .await;

    const N: usize = 2000;
    let values = events(43, N);
    let order: HashMap<String, usize> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (raw_data(v), i))
        .collect();
    produce(kafka.bootstrap(), "events", &values).await;

    let m = running.metrics.clone();
    let started = Instant::now();
    let mut peak = 0i64;
    wait_until(
        Duration::from_secs(90),
        "the whole backlog delivered",
        || {
            // Past the first second (records read and not yet spilled), what
            // is held is the lane's share, not the backlog.
            if started.elapsed() > Duration::from_secs(1) {
                peak = peak.max(m.memory_used.get());
            }
            sink.count() >= N
        },
    )
    .await;
    // 2,000 events of ~600 B would be ~2 MB held; the lane's inbox holds 20
    // and the rest waits in Kafka.
    assert!(
        peak < 512 * 1024,
        "memory held peaked at {peak} bytes: the backlog was held in memory"
    );
    // One partition, so the source order is the order of `values`. No
    // delivery waits behind far newer ones: each arrives within the lane's
    // inbox and refill window of its place.
    let arrivals: Vec<usize> = sink
        .received()
        .iter()
        .map(|r| order[&raw_data(&r.body)])
        .collect();
    let worst = arrivals
        .iter()
        .enumerate()
        .map(|(rank, &i)| i.abs_diff(rank))
        .max()
        .unwrap();
    assert!(
        worst <= 20 + 32 + 8,
        "a delivery arrived {worst} places from its turn: the oldest were starved"
    );
    running.shutdown().await.unwrap();
}

/// A backlog older than the spill topic's retention loses its oldest
/// deliveries: that must be said (ERROR, `dispatcher_backlog_lost_total`),
/// and must not keep the endpoint spilling, its backlog shown, or its
/// partition's commits held for ever. The embedded broker keeps at most
/// 5 MiB per partition, which stands in for retention here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_deleted_by_retention_is_reported_lost_and_the_endpoint_flows_again() {
    use dispatcher::store::EndpointState;
    support::init_logging();
    let kafka =
        dispatcher::embedded::EmbeddedKafka::start(&["events", "dispatcher.dlq"], 4).unwrap();
    for tier in support::RETRY_TOPICS {
        kafka.create_topic(tier, 1).unwrap();
    }
    kafka.create_topic(support::SPILL_TOPIC, 1).unwrap();
    kafka.create_topic(support::ENDPOINTS_TOPIC, 1).unwrap();
    let sink = Sink::start(Behaviour::Ok).await;
    let running = start(config(kafka.bootstrap(), "retention", "", "")).await;
    let spec = serde_json::json!({"id": "away", "url": sink.url("/a"), "events": ["*"]})
        .as_object()
        .unwrap()
        .clone();
    let state = |paused| EndpointState {
        paused,
        disabled: false,
    };
    running
        .store
        .write("away", 0, Some((spec.clone(), state(true))))
        .await
        .unwrap();
    let m = running.metrics.clone();
    wait_until(Duration::from_secs(10), "the endpoint is in force", || {
        m.endpoint_counters("away").map_or(0, |c| c.paused.get()) == 1
    })
    .await;

    // 400 events of about 20 KB over four source partitions (2 MB each),
    // spilled into one partition (8 MB), of which the broker keeps the
    // last 5 MiB or so.
    const N: usize = 400;
    let mut seeds = SeedEvents::new(77);
    let padding = "x".repeat(20_000);
    let values: Vec<Vec<u8>> = (0..N)
        .map(|_| {
            let raw = seeds.next_event(chrono::Utc::now().timestamp_millis()).2;
            let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            v["data"]["padding"] = serde_json::Value::from(padding.as_str());
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    // The consumer reads the spill partition before anything is deleted
    // from it: a gap is seen against the last record read (one before the
    // first read of a partition is not: see docs/operations.md).
    let (first, rest) = values.split_at(10);
    produce(kafka.bootstrap(), "events", first).await;
    let read_back = || {
        m.events_consumed
            .with_label_values(&[support::SPILL_TOPIC])
            .get() as usize
    };
    wait_until(
        Duration::from_secs(30),
        "the first spilled records read",
        || read_back() >= first.len(),
    )
    .await;
    produce(kafka.bootstrap(), "events", rest).await;
    let spilled = || m.endpoint_counters("away").map_or(0, |c| c.spilled.get()) as usize;
    wait_until(Duration::from_secs(60), "every delivery spilled", || {
        spilled() == N
    })
    .await;

    running
        .store
        .write("away", 1, Some((spec, state(false))))
        .await
        .unwrap();
    // Lost either under the endpoint's hold (its reader never saw them) or
    // before the main reader came to them (whose, it cannot tell).
    let lost = || {
        m.endpoint_counters("away")
            .map_or(0, |c| c.backlog_lost.get()) as usize
            + m.internal_records_lost
                .with_label_values(&[support::SPILL_TOPIC])
                .get() as usize
    };
    wait_until(
        Duration::from_secs(60),
        "what is left arrives and the rest is counted lost",
        || lost() > 0 && sink.count() + lost() == N,
    )
    .await;
    assert!(
        sink.count() > 0 && lost() < N,
        "the broker kept the newest part: {} delivered, {} lost",
        sink.count(),
        lost()
    );
    wait_until(Duration::from_secs(10), "no backlog is shown", || {
        m.endpoint_counters("away").map_or(0, |c| c.backlog.get()) == 0
    })
    .await;

    // The endpoint flows again: new events are delivered, not spilled, and
    // the source partition's commits move past everything.
    let before = (sink.count(), spilled());
    let more: Vec<Vec<u8>> = (0..20)
        .map(|_| seeds.next_event(chrono::Utc::now().timestamp_millis()).2)
        .collect();
    produce(kafka.bootstrap(), "events", &more).await;
    wait_until(Duration::from_secs(30), "new events arrive", || {
        sink.count() == before.0 + 20
    })
    .await;
    assert_eq!(spilled(), before.1, "nothing more was spilled");
    running.shutdown().await.unwrap();
}

/// Lanes on demand: an endpoint holds a task only while it has work. Of
/// 100 endpoints, those that get events run until their work is final, and
/// then none runs; the next event wakes its endpoint's lane and arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_endpoints_hold_no_task_and_wake_for_new_work() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    let sink = Sink::start(Behaviour::Ok).await;
    let mut endpoints = String::new();
    for i in 0..100 {
        endpoints += &format!(
            "  - id: ep-{i}\n    tenant: t{i}\n    url: \"{}\"\n    events: [\"*\"]\n",
            sink.url(&format!("/ep-{i}"))
        );
    }
    let mut seeds = SeedEvents::new(46);
    let now = chrono::Utc::now().timestamp_millis();
    let mut of_tenant = |tenant: usize| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&seeds.event("message.sent", now).1).unwrap();
        v["data"]["whatsapp_account_id"] = serde_json::json!(format!("t{tenant}"));
        serde_json::to_vec(&v).unwrap()
    };
    let first: Vec<Vec<u8>> = (0..200).map(|i| of_tenant(i % 10)).collect();
    let yaml = support::config_yaml(kafka.bootstrap(), "idle-lanes", "", &endpoints)
        + "routing:\n  tenant_key: data.whatsapp_account_id\n";
    let config = dispatcher::config::Config::from_yaml(&yaml, &|_| None).unwrap();
    let running = start(config).await;
    let m = running.metrics.clone();
    assert_eq!(m.lane_tasks.get(), 0, "no endpoint has work yet");

    produce(kafka.bootstrap(), "events", &first).await;
    wait_until(Duration::from_secs(60), "the first events arrived", || {
        sink.count() == first.len()
    })
    .await;
    wait_until(Duration::from_secs(30), "every lane idle again", || {
        m.lane_tasks.get() == 0
    })
    .await;

    // A slow answer keeps the woken lane busy long enough to be seen.
    sink.set(Behaviour::Delay { ms: 300 });
    let later = of_tenant(57);
    produce(kafka.bootstrap(), "events", std::slice::from_ref(&later)).await;
    wait_until(Duration::from_secs(30), "the woken lane runs", || {
        m.lane_tasks.get() == 1
    })
    .await;
    wait_until(Duration::from_secs(30), "the later event arrived", || {
        sink.data_at("/ep-57") == BTreeSet::from([raw_data(&later)])
    })
    .await;
    wait_until(Duration::from_secs(30), "idle again", || {
        m.lane_tasks.get() == 0
    })
    .await;
    assert_eq!(sink.count(), first.len() + 1, "nothing else was sent");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_lagging_endpoints_than_backlog_readers_take_turns() {
    support::init_logging();
    let kafka = support::embedded_kafka(2);
    // About 10 deliveries/s each, and one backlog reader for both: each
    // backlog alone takes about 20 s to drain.
    let a = Sink::start(Behaviour::Delay { ms: 100 }).await;
    let b = Sink::start(Behaviour::Delay { ms: 100 }).await;
    let endpoints = one_at_a_time("a", &a.url("/a")) + &one_at_a_time("b", &b.url("/b"));
    let running = start(config(
        kafka.bootstrap(),
        "reader-turns",
        "  spill_after: 200ms\n  backlog_readers: 1\n",
        &endpoints,
    ))
    .await;
    const N: usize = 200;
    let values = events(43, N);
    let produced: BTreeSet<String> = values.iter().map(|v| raw_data(v)).collect();
    produce(kafka.bootstrap(), "events", &values).await;
    // Half of one backlog takes about 10 s of turns: the other endpoint,
    // waiting for the reader meanwhile, must have had turns of its own
    // (without them it had only its inbox's few).
    wait_until(
        Duration::from_secs(60),
        "one endpoint drained half its backlog",
        || a.count().max(b.count()) >= N / 2,
    )
    .await;
    let (got_a, got_b) = (a.count(), b.count());
    assert!(
        got_a.min(got_b) >= N / 8,
        "one backlog waited for the other's: a {got_a}, b {got_b} of {N}"
    );
    assert!(spilled_by(&running, "a") > 0 && spilled_by(&running, "b") > 0);

    a.set(Behaviour::Ok);
    b.set(Behaviour::Ok);
    wait_until(Duration::from_secs(60), "both backlogs arrive", || {
        a.data_at("/a") == produced && b.data_at("/b") == produced
    })
    .await;
    assert_one_id_per_event(&a);
    assert_one_id_per_event(&b);
    running.shutdown().await.unwrap();
}
