//! Ordered delivery per key (`ordering: {key: data.contact_id}`): every
//! contact's events reach the receiver in the source's order, through
//! failed attempts, a receiver's hiccup, kill -9 and a rebalance, while
//! different contacts go in parallel.
//!
//! Each contact goes through one of the seed lifecycles
//! (`transports::seed::LIFECYCLES`); every event carries its step in
//! `data.seq`. The check: per contact, the deliveries the receiver accepted
//! (2xx), each counted the first time its delivery id came, have steps
//! 0, 1, 2, ... in that order. A later copy of an id it had already
//! accepted is a duplicate, which the contract allows; an older event
//! first accepted after a newer one is the failure.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use dispatcher::config::Config;
use dispatcher::route::EventPattern;
use dispatcher::seed::{SeedEvents, LIFECYCLES};
use support::kafka::produce_keyed;
use support::sink::{Behaviour, Sink};
use support::{api, api_at, config_yaml, free_port, metric, start, wait_until, Child};

/// A record value with its key.
type Keyed = (String, Vec<u8>);

/// `contacts` contacts, interleaved step by step (every contact's first
/// event, then every second one, ...), keyed by contact; and each
/// contact's number of events. Event ids are unique per `prefix` (the
/// delivery id derives from them).
fn lifecycles(contacts: usize, prefix: &str) -> (Vec<Keyed>, BTreeMap<String, usize>) {
    let seed = prefix
        .bytes()
        .fold(15u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut seeds = SeedEvents::new(seed);
    let now = chrono::Utc::now().timestamp_millis();
    let names: Vec<String> = (0..contacts).map(|c| format!("{prefix}-{c}")).collect();
    let steps = |c: usize| LIFECYCLES[c % LIFECYCLES.len()];
    let longest = LIFECYCLES.iter().map(|l| l.len()).max().unwrap();
    let mut records = Vec::new();
    for step in 0..longest {
        for (c, name) in names.iter().enumerate() {
            if let Some(ty) = steps(c).get(step) {
                let (_, value) = seeds.contact_event(ty, name, step, now);
                records.push((name.clone(), value));
            }
        }
    }
    let counts = names
        .iter()
        .enumerate()
        .map(|(c, name)| (name.clone(), steps(c).len()))
        .collect();
    (records, counts)
}

/// Per contact, the steps of the deliveries `sink` accepted on `path`, each
/// delivery id counted the first time it came.
fn first_seen(sink: &Sink, path: &str) -> BTreeMap<String, Vec<u64>> {
    let mut seen = HashSet::new();
    let mut steps: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in sink.received().iter().filter(|r| r.path == path) {
        let id = r.header("x-webhook-delivery-id").unwrap().to_owned();
        if !seen.insert(id) {
            continue;
        }
        let body = r.json();
        let contact = body["data"]["contact_id"].as_str().unwrap().to_owned();
        steps
            .entry(contact)
            .or_default()
            .push(body["data"]["seq"].as_u64().unwrap());
    }
    steps
}

/// Contacts whose steps did not come in order, with what came.
fn out_of_order(steps: &BTreeMap<String, Vec<u64>>) -> Vec<(&String, &Vec<u64>)> {
    steps
        .iter()
        .filter(|(_, s)| s.iter().enumerate().any(|(i, &step)| step != i as u64))
        .collect()
}

/// Every contact's events came to `path` in order; `when` says after what.
fn assert_in_order(sink: &Sink, path: &str, when: &str) {
    let steps = first_seen(sink, path);
    let wrong = out_of_order(&steps);
    assert!(
        wrong.is_empty(),
        "{} of {} contacts out of order {when}, e.g. {:?}",
        wrong.len(),
        steps.len(),
        &wrong[..wrong.len().min(3)]
    );
}

fn complete(sink: &Sink, path: &str, counts: &BTreeMap<String, usize>) -> bool {
    let steps = first_seen(sink, path);
    counts
        .iter()
        .all(|(c, n)| steps.get(c).map_or(0, Vec::len) >= *n)
}

fn ordered_endpoint(id: &str, url: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    url: \"{url}\"\n    events: [\"*\"]\n    max_in_flight: 64\n    retry:\n      schedule: [500ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s]\n{extra}"
    )
}

const ORDERING: &str = "    ordering:\n      key: data.contact_id\n";
/// The same, ordered by the Kafka record key: the tests' producer keys
/// each record by its contact.
const BY_RECORD_KEY: &str = "    ordering:\n      key: key\n";

/// The tests' config text, with retry waits over 50 ms meant for the retry
/// topics: an ordered endpoint must keep them in memory all the same (a
/// parked delivery would come back after the ones behind it).
fn yaml(bootstrap: &str, group: &str, endpoints: &str) -> String {
    config_yaml(bootstrap, group, "  shutdown_grace: 5s\n", endpoints)
        .replace("in_memory_retry_max: 1s", "in_memory_retry_max: 50ms")
}

fn config(bootstrap: &str, group: &str, endpoints: &str) -> Config {
    Config::from_yaml(&yaml(bootstrap, group, endpoints), &|_| None).expect("test config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_contact_is_delivered_in_order_through_failed_first_attempts_and_contacts_go_in_parallel(
) {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    // A receiver that takes 10 ms per request and fails 1 in 5 first
    // attempts with a 503; the same receiver, unordered, shows that the
    // check below sees disorder when there is some.
    let sink = Sink::start(Behaviour::FailFirst {
        one_in: 5,
        delay_ms: 10,
    })
    .await;
    let control = Sink::start(Behaviour::FailFirst {
        one_in: 5,
        delay_ms: 10,
    })
    .await;
    let by_key = Sink::start(Behaviour::FailFirst {
        one_in: 5,
        delay_ms: 10,
    })
    .await;
    let endpoints = ordered_endpoint("ordered", &sink.url("/ordered"), ORDERING)
        + &ordered_endpoint("unordered", &control.url("/unordered"), "")
        + &ordered_endpoint("by-key", &by_key.url("/by-key"), BY_RECORD_KEY);
    let running = start(config(kafka.bootstrap(), "ordering", &endpoints)).await;

    let (records, counts) = lifecycles(1000, "contact");
    let started = Instant::now();
    produce_keyed(kafka.bootstrap(), "events", &records).await;
    wait_until(
        Duration::from_secs(120),
        "every event of every contact",
        || sink.count() >= records.len() && complete(&sink, "/ordered", &counts),
    )
    .await;
    let took = started.elapsed();
    wait_until(Duration::from_secs(120), "every event, unordered", || {
        control.count() >= records.len() && complete(&control, "/unordered", &counts)
    })
    .await;
    wait_until(
        Duration::from_secs(120),
        "every event, ordered by record key",
        || by_key.count() >= records.len() && complete(&by_key, "/by-key", &counts),
    )
    .await;

    assert_in_order(&sink, "/ordered", "through failed first attempts");
    assert_in_order(&by_key, "/by-key", "ordered by the record key");
    let control_steps = first_seen(&control, "/unordered");
    assert!(
        !out_of_order(&control_steps).is_empty(),
        "an unordered endpoint with failed first attempts should show disorder: the check would not see it"
    );
    // Retries happened, and the contacts went in parallel: far more than
    // one request at a time, and in far less time than one after another.
    let attempts = sink.attempts();
    assert!(
        attempts > records.len() + records.len() / 10,
        "{attempts} attempts for {} events",
        records.len()
    );
    assert!(
        sink.most_in_flight() >= 16,
        "at most {} requests at once",
        sink.most_in_flight()
    );
    let serial = Duration::from_millis(10 * attempts as u64);
    assert!(
        took < serial / 4,
        "took {took:?}; one request after another would take {serial:?}"
    );
    let text = support::admin(running.admin_addr, "GET", "/metrics")
        .await
        .1;
    assert!(text.contains("dispatcher_endpoint_blocked_keys{endpoint=\"ordered\"} 0"));
    assert!(
        !text.contains("dispatcher_endpoint_blocked_keys{endpoint=\"unordered\"}"),
        "an unordered endpoint has no key series"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_blocked_by_a_receiver_hiccup_does_not_delay_the_other_keys() {
    // Every request about contact `stuck-0` fails for 5 s; the rest are
    // answered at once. Retries enough to outlast the hiccup: 20 waits of
    // up to 1 s each (full jitter), 10 s on average.
    let (kafka, sink, running) =
        with_a_stuck_contact("hiccup", 5_000, &(retrying(20, "1s") + ORDERING)).await;

    let (stuck, stuck_counts) = lifecycles(1, "stuck");
    let (others, other_counts) = lifecycles(300, "contact");
    // The stuck contact's events first, the others' right behind them.
    let records: Vec<_> = stuck.into_iter().chain(others).collect();
    produce_keyed(kafka.bootstrap(), "events", &records).await;

    wait_until(
        Duration::from_secs(60),
        "the other contacts' events",
        || complete(&sink, "/ordered", &other_counts),
    )
    .await;
    // All of them while the stuck contact still waits: it is blocked, and
    // counted so.
    let steps = first_seen(&sink, "/ordered");
    assert!(
        !steps.contains_key("stuck-0"),
        "the hiccup was over before the others were done: {:?}",
        steps.get("stuck-0")
    );
    let text = support::admin(running.admin_addr, "GET", "/metrics")
        .await
        .1;
    assert_eq!(
        metric(
            &text,
            "dispatcher_endpoint_blocked_keys{endpoint=\"ordered\"}"
        ),
        1.0,
        "{text}"
    );

    wait_until(
        Duration::from_secs(60),
        "the stuck contact's events",
        || complete(&sink, "/ordered", &stuck_counts),
    )
    .await;
    assert_in_order(&sink, "/ordered", "through the hiccup");
    running.shutdown().await.unwrap();
}

/// `retry:` of an endpoint: `n` waits of up to `wait`.
fn retrying(n: usize, wait: &str) -> String {
    format!(
        "    retry:\n      schedule: [{}]\n",
        vec![wait; n].join(", ")
    )
}

/// A receiver that fails every request about contact `stuck-0` for
/// `hiccup_ms` from the first one (and answers the rest at once), and a
/// dispatcher in group `group` with one endpoint on it, `ordered`, whose
/// further keys are `endpoint` (YAML lines).
async fn with_a_stuck_contact(
    group: &str,
    hiccup_ms: u64,
    endpoint: &str,
) -> (
    dispatcher::embedded::EmbeddedKafka,
    Sink,
    dispatcher::app::Running,
) {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::Hiccup {
        needle: "stuck-0",
        ms: hiccup_ms,
    })
    .await;
    let endpoints = format!(
        "  - id: ordered\n    url: \"{}\"\n    events: [\"*\"]\n{endpoint}",
        sink.url("/ordered")
    );
    let running = start(config(kafka.bootstrap(), group, &endpoints)).await;
    (kafka, sink, running)
}

/// The config text of a dispatcher binary for the ordered endpoint, at 8
/// requests at a time (a run lasts long enough to crash or rebalance in).
fn child_config(bootstrap: &str, group: &str, sink: &Sink) -> String {
    yaml(
        bootstrap,
        group,
        &ordered_endpoint("ordered", &sink.url("/ordered"), ORDERING)
            .replace("max_in_flight: 64", "max_in_flight: 8"),
    )
}

/// What a test of dispatcher binaries runs against: a broker in this
/// process (it survives a dispatcher's death), a receiver that takes
/// `delay_ms` per request and fails 1 in 5 first attempts, 1,000 contacts'
/// events produced, and the first dispatcher, `first`, once it has made
/// 1,500 deliveries.
struct ChildRun {
    kafka: dispatcher::embedded::EmbeddedKafka,
    sink: Sink,
    dir: tempfile::TempDir,
    yaml: String,
    counts: BTreeMap<String, usize>,
    first: Child,
}

async fn child_run(group: &str, delay_ms: u64) -> ChildRun {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::FailFirst {
        one_in: 5,
        delay_ms,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = child_config(kafka.bootstrap(), group, &sink);
    let (records, counts) = lifecycles(1000, "contact");
    produce_keyed(kafka.bootstrap(), "events", &records).await;
    let first = Child::spawn(dir.path(), "first", &yaml, free_port());
    wait_until(Duration::from_secs(60), "a first part delivered", || {
        sink.count() >= 1500
    })
    .await;
    ChildRun {
        kafka,
        sink,
        dir,
        yaml,
        counts,
        first,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_keeps_each_contact_in_order() {
    let ChildRun {
        kafka: _kafka,
        sink,
        dir,
        yaml,
        counts,
        first,
    } = child_run("ordering-kill", 1).await;
    drop(first); // SIGKILL
    let before = sink.count();
    assert!(
        !complete(&sink, "/ordered", &counts),
        "everything was delivered before the kill"
    );

    let _second = Child::spawn(dir.path(), "second", &yaml, free_port());
    wait_until(
        Duration::from_secs(120),
        "every event after the restart",
        || complete(&sink, "/ordered", &counts),
    )
    .await;
    assert_in_order(
        &sink,
        "/ordered",
        &format!("after kill -9 (at {before} deliveries)"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_mid_run_keeps_each_contact_in_order() {
    // 20 ms a request, 8 at a time: the run lasts long enough for a
    // second replica to join the group in the middle of it.
    let ChildRun {
        kafka: _kafka,
        sink,
        dir,
        yaml,
        counts,
        first: _first,
    } = child_run("ordering-rebalance", 20).await;
    // A second replica joins the group: the partitions are shared out
    // again while the first one has deliveries under way.
    let b = Child::spawn(dir.path(), "b", &yaml, free_port());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = b.metrics().await;
        let share = text
            .lines()
            .find_map(|l| l.strip_prefix("dispatcher_rate_limit_share "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if share.is_some_and(|s| s > 0.0 && s < 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second replica got no partition: {share:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_join = sink.count();
    assert!(
        !complete(&sink, "/ordered", &counts),
        "everything was delivered before the second replica had partitions"
    );
    wait_until(
        Duration::from_secs(120),
        "every event after the rebalance",
        || complete(&sink, "/ordered", &counts),
    )
    .await;
    assert_in_order(
        &sink,
        "/ordered",
        &format!("after a rebalance (at {at_join} deliveries)"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_paused_with_its_head_in_memory_gets_the_events_spilled_meanwhile_after_it() {
    paused_with_a_blocked_key("pause-ordered", ORDERING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ordered_by_the_record_key_which_spilled_deliveries_carry() {
    // The spill record's own key is the endpoint's: the source record's
    // travels in a header.
    paused_with_a_blocked_key("pause-by-key", BY_RECORD_KEY).await;
}

/// Contact `stuck-0` fails for 8 s; its first event blocks its key. The
/// endpoint is paused, its later events are spilled meanwhile, and it is
/// resumed while the key is still blocked: the spilled events come back
/// and must join the key's chain, behind its head.
async fn paused_with_a_blocked_key(group: &str, ordering: &str) {
    let (kafka, sink, running) =
        with_a_stuck_contact(group, 8_000, &(retrying(40, "500ms") + ordering)).await;
    let (mut stuck, stuck_counts) = lifecycles(1, "stuck");
    let later = stuck.split_off(5);
    let (others, other_counts) = lifecycles(50, "contact");
    let records: Vec<_> = stuck.into_iter().chain(others).collect();
    produce_keyed(kafka.bootstrap(), "events", &records).await;
    wait_until(
        Duration::from_secs(60),
        "the other contacts' events",
        || complete(&sink, "/ordered", &other_counts),
    )
    .await;
    assert!(!first_seen(&sink, "/ordered").contains_key("stuck-0"));

    // Paused with the key blocked: its first five events stay in memory;
    // its last five, produced during the pause, are spilled.
    let (status, body) = api(&running, "POST", "/endpoints/ordered/pause").await;
    assert_eq!(status, 200, "{body}");
    produce_keyed(kafka.bootstrap(), "events", &later).await;
    let admin = running.admin_addr;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = support::admin(admin, "GET", "/metrics").await.1;
        if metric(&text, "dispatcher_spilled_total{endpoint=\"ordered\"}") >= 5.0 {
            assert!(
                text.contains("dispatcher_endpoint_blocked_keys{endpoint=\"ordered\"} 1"),
                "the head waits in memory through the pause: {text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing spilled while paused: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Resumed within the hiccup: the spilled events come back while the
    // head still fails, and wait behind it.
    let (status, body) = api(&running, "POST", "/endpoints/ordered/resume").await;
    assert_eq!(status, 200, "{body}");
    wait_until(
        Duration::from_secs(60),
        "the stuck contact's events",
        || complete(&sink, "/ordered", &stuck_counts),
    )
    .await;
    assert_in_order(&sink, "/ordered", "through the pause");
    running.shutdown().await.unwrap();
}

/// Waits until `child`'s metric `series` is at least `at_least`.
async fn child_metric_reaches(child: &Child, series: &str, at_least: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = child.metrics().await;
        if metric(&text, series) >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {series} stayed below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_blocked_key_and_its_later_events_spilled_keeps_the_key_in_order() {
    let crash = blocked_spilled_and_killed("spill-kill", "[\"*\"]").await;
    wait_until(
        Duration::from_secs(60),
        "the stuck contact's events",
        || complete(&crash.sink, "/ordered", &crash.counts),
    )
    .await;
    assert_in_order(&crash.sink, "/ordered", "after kill -9 with spilled events");
    let text = crash.second.metrics().await;
    assert_eq!(
        metric(&text, "dispatcher_spill_superseded_total"),
        crash.spilled_before as f64,
        "the first dispatcher's spilled copies are left final: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spilled_copy_the_new_routing_no_longer_sends_is_delivered_all_the_same() {
    // The same crash, but the endpoint no longer subscribes to the
    // message events when the second dispatcher reads them again: their
    // spilled copies are the only ones left, and must not be dropped.
    let crash =
        blocked_spilled_and_killed("spill-kill-rerouted", "[\"contact.*\", \"conversation.*\"]")
            .await;
    let spilled_messages: Vec<u64> = (3..9).collect();
    wait_until(
        Duration::from_secs(60),
        "the spilled message events",
        || {
            let seen = first_seen(&crash.sink, "/ordered");
            let steps = seen.get("stuck-0").cloned().unwrap_or_default();
            spilled_messages.iter().all(|s| steps.contains(s)) && steps.contains(&9)
        },
    )
    .await;
    let text = crash.second.metrics().await;
    assert_eq!(
        metric(&text, "dispatcher_spill_superseded_total"),
        1.0,
        "only conversation.closed, routed again, is left to its new copy: {text}"
    );
}

/// What [`blocked_spilled_and_killed`] leaves running.
struct Crashed {
    _kafka: dispatcher::embedded::EmbeddedKafka,
    sink: Sink,
    second: Child,
    counts: BTreeMap<String, usize>,
    /// The first dispatcher's spilled deliveries.
    spilled_before: usize,
    _dir: tempfile::TempDir,
}

/// The crash the spill topic alone would get wrong: contact `stuck-0`'s
/// first event waits for a retry in memory (its partition's commit behind
/// it) while its events from the fourth on, produced during a pause, are
/// spilled. kill -9; the receiver is healthy again; a second dispatcher,
/// whose endpoint subscribes to `events` (YAML list), reads the key's
/// events again from the source. The pause, kept in the endpoint store,
/// holds its deliveries in the spill topic behind the first one's until it
/// is resumed: then both sets come back in the order they were written,
/// the old copies first. Returns once it is resumed.
async fn blocked_spilled_and_killed(group: &str, events: &str) -> Crashed {
    support::init_logging();
    let kafka = support::embedded_kafka(4);
    let sink = Sink::start(Behaviour::Hiccup {
        needle: "stuck-0",
        ms: 600_000,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = |events: &str, api_port: u16| {
        let endpoint = format!(
            "  - id: ordered\n    url: \"{}\"\n    events: {events}\n{}{BY_RECORD_KEY}",
            sink.url("/ordered"),
            retrying(300, "200ms"),
        );
        yaml(kafka.bootstrap(), group, &endpoint).replace(
            "api:\n  listen: \"127.0.0.1:0\"",
            &format!("api:\n  listen: \"127.0.0.1:{api_port}\""),
        )
    };
    let (mut stuck, counts) = lifecycles(1, "stuck");
    let later = stuck.split_off(3);
    let blocked = "dispatcher_endpoint_blocked_keys{endpoint=\"ordered\"}";
    let spilled = "dispatcher_spilled_total{endpoint=\"ordered\"}";

    let api_port = free_port();
    let first = Child::spawn(
        dir.path(),
        "first",
        &config("[\"*\"]", api_port),
        free_port(),
    );
    produce_keyed(kafka.bootstrap(), "events", &stuck).await;
    child_metric_reaches(&first, blocked, 1.0, "the key's head waits for a retry").await;
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], api_port));
    let (status, body) = api_at(api, "POST", "/endpoints/ordered/pause").await;
    assert_eq!(status, 200, "{body}");
    produce_keyed(kafka.bootstrap(), "events", &later).await;
    let spilled_before = later.len();
    child_metric_reaches(
        &first,
        spilled,
        spilled_before as f64,
        "the later events spilled",
    )
    .await;
    drop(first); // SIGKILL

    sink.set(Behaviour::Ok);
    let api_port = free_port();
    let second = Child::spawn(dir.path(), "second", &config(events, api_port), free_port());
    // Every event of the key the second one routes is read again, spilled.
    let config = Config::from_yaml(&config(events, api_port), &|_| None).expect("test config");
    let patterns: Vec<EventPattern> = config.endpoints[0]
        .events
        .iter()
        .map(|p| EventPattern::parse(p).expect("a pattern"))
        .collect();
    let routed = LIFECYCLES[0]
        .iter()
        .filter(|ty| patterns.iter().any(|p| p.matches(ty)))
        .count();
    child_metric_reaches(
        &second,
        spilled,
        routed as f64,
        "the key read again, spilled",
    )
    .await;
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], api_port));
    let (status, body) = api_at(api, "POST", "/endpoints/ordered/resume").await;
    assert_eq!(status, 200, "{body}");
    Crashed {
        _kafka: kafka,
        sink,
        second,
        counts,
        spilled_before,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_past_max_age_takes_the_events_held_behind_it_along_with_dead_letter_rest() {
    // Contact `stuck-0` fails far longer than its retry.max_age (2 s), and
    // has attempts enough to reach it first: 40 waits of up to 200 ms.
    let endpoint = retrying(40, "200ms")
        + "      max_age: 2s\n    ordering:\n      key: data.contact_id\n      on_expired: dead_letter_rest\n";
    let (kafka, sink, running) = with_a_stuck_contact("rest-ordered", 600_000, &endpoint).await;
    let (stuck, _) = lifecycles(1, "stuck");
    let (others, other_counts) = lifecycles(20, "contact");
    let stuck_events = stuck.len();
    let records: Vec<_> = stuck.into_iter().chain(others).collect();
    produce_keyed(kafka.bootstrap(), "events", &records).await;

    // The stuck contact's first event expires; the events held behind it
    // (the lane took them all: they were read at once) go with it.
    let letters = support::kafka::read_all(
        kafka.bootstrap(),
        "dispatcher.dlq",
        stuck_events,
        Duration::from_secs(60),
    );
    let reasons: Vec<_> = letters
        .iter()
        .map(|l| support::kafka::header(l, "dlq.reason").unwrap_or("?"))
        .collect();
    assert_eq!(reasons.len(), stuck_events, "{reasons:?}");
    assert_eq!(
        reasons.iter().filter(|r| **r == "expired").count(),
        1,
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "ordering_head_dead_lettered")
            .count(),
        stuck_events - 1,
        "{reasons:?}"
    );
    // None of them reached the receiver; the other contacts did, in order.
    wait_until(
        Duration::from_secs(30),
        "the other contacts' events",
        || complete(&sink, "/ordered", &other_counts),
    )
    .await;
    let steps = first_seen(&sink, "/ordered");
    assert!(!steps.contains_key("stuck-0"), "{:?}", steps.get("stuck-0"));
    assert_in_order(&sink, "/ordered", "beside the dead-lettered key");
    running.shutdown().await.unwrap();
}
