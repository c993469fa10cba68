//! Short runs of the shipped `baseline`, `crash` and `slow-mix` scenarios
//! against the real `dispatcher` binary: nothing may be lost, every
//! delivery must carry the delivery id its (event, endpoint) was given, and
//! slow endpoints must not hold the fast ones back.
//!
//! The binary is found as the `loadtest` command finds it: next to this
//! test's executable, (re)built first with `cargo build -p dispatcher` for
//! the same profile, so a test never runs a stale dispatcher.
//! `LOADTEST_DISPATCHER` overrides: `scripts/test` sets it to the binary
//! `cargo test --workspace` has just built, because `-p dispatcher` resolves
//! features differently and would build most dependencies a second time.

use std::sync::OnceLock;
use std::time::Duration;

use loadtest::report::Report;
use loadtest::run::{run, RunOptions};
use loadtest::scenario::{Rate, Scenario};

fn options(name: &str) -> RunOptions {
    static BINARY: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dispatcher = BINARY
        .get_or_init(|| {
            loadtest::fleet::locate_dispatcher(None, true).expect("a dispatcher binary to test")
        })
        .clone();
    let work_dir =
        std::env::temp_dir().join(format!("loadtest-test-{name}-{}", std::process::id()));
    RunOptions {
        dispatcher,
        brokers: None,
        work_dir: Some(work_dir),
        progress: false,
        prometheus_targets: None,
    }
}

fn assert_nothing_lost(r: &Report) {
    let a = &r.accounting;
    let summary = loadtest::report::text(r);
    assert!(a.total.expected > 0, "{summary}");
    assert_eq!(a.total.lost, 0, "losses:\n{summary}");
    assert_eq!(
        a.total.unexpected, 0,
        "deliveries under unexpected ids:\n{summary}"
    );
    assert_eq!(a.total.misrouted, 0, "{summary}");
    assert_eq!(a.bad_signatures, 0, "{summary}");
    assert_eq!(a.bad_requests, 0, "{summary}");
    assert_eq!(
        a.total.dead_lettered, 0,
        "the receivers are healthy:\n{summary}"
    );
    assert_eq!(a.total.delivered, a.total.expected, "{summary}");
    assert_eq!(r.produce_failed, 0, "{summary}");
    assert!(r.phases.iter().all(|p| p.complete), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_baseline_loses_nothing() {
    let mut s = Scenario::load("baseline").unwrap();
    s.prefill = 2_000;
    s.phases[0].duration = Some(Duration::from_secs(2));
    s.settle_timeout = Duration::from_secs(40);
    s.timeout = Duration::from_secs(90);
    s.ceiling.max_requests = 2_000;
    s.ceiling.latency_duration = Duration::from_millis(500);
    s.interval = Duration::from_millis(250);
    s.check().unwrap();

    let r = run(&s, &options("baseline")).await.unwrap();
    assert_nothing_lost(&r);
    assert_eq!(r.accounting.total.expected, 4 * r.events);
    assert!(r.events > 2_000, "the half-rate phase produced too");
    let drain = &r.phases[0];
    assert_eq!(drain.name, "drain");
    assert!(drain.deliveries_per_s > 0.0 && drain.ceiling_ratio.is_some());
    let half = &r.phases[1];
    assert!(half.age.is_some() && half.ceiling_latency.is_some());
    assert!(r.ceiling.as_ref().is_some_and(|c| c.deliveries_per_s > 0.0));
    assert!(r.dispatcher.rss_peak_mb.is_some_and(|m| m > 1.0));
    assert!(r.dispatcher.cpu_s > 0.0);
    assert!(!r.series.is_empty());
    // The embedded broker's thread worked for the run, and is part of the
    // load tester's own CPU.
    let broker_cpu = r
        .load_tester
        .broker_cpu_s
        .expect("the embedded broker's CPU");
    assert!(
        broker_cpu > 0.0 && broker_cpu <= r.load_tester.cpu_s + 0.05,
        "{:?}",
        r.load_tester
    );
    assert!(r.series.iter().any(|x| x.broker_cores.is_some()));
    // Targets are reported, not asserted: a debug build on a shared
    // machine says nothing about them. They must have been measured.
    assert!(
        r.targets.iter().all(|t| t.value.is_some()),
        "{:?}",
        r.targets
    );
    let html = loadtest::report::html::render(&r).unwrap();
    assert!(html.contains("<svg") && html.contains("deliveries accepted"));
    serde_json::to_string(&r).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_crash_run_loses_nothing() {
    let mut s = Scenario::load("crash").unwrap();
    s.phases[0].rate = Rate::PerSecond(500.0);
    s.phases[0].events = Some(2_000);
    s.phases[0].duration = Some(Duration::from_secs(10));
    s.dispatcher.kill_every = Some(Duration::from_millis(1500));
    s.dispatcher.max_kills = Some(2);
    s.settle_timeout = Duration::from_secs(40);
    s.timeout = Duration::from_secs(90);
    s.ceiling.enabled = false;
    s.interval = Duration::from_millis(250);
    s.check().unwrap();

    let r = run(&s, &options("crash")).await.unwrap();
    assert!(
        r.dispatcher.kills >= 1,
        "no kill landed: {}",
        loadtest::report::text(&r)
    );
    assert_eq!(r.dispatcher.starts, r.dispatcher.kills + 1);
    assert_nothing_lost(&r);
    // Redelivery after a kill is allowed (at least once), under the same
    // delivery id: an id change would show as unexpected above.
    eprintln!(
        "{} deliveries, {} duplicates after {} kills",
        r.accounting.total.delivered, r.accounting.total.duplicates, r.dispatcher.kills
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_slow_mix_keeps_the_fast_endpoints_pace_and_loses_nothing() {
    let mut s = Scenario::load("slow-mix").unwrap();
    // No paired run and no backlog stage here: the benchmark has them
    // (docs/benchmarks.md). A small fixed rate that a debug build on a
    // loaded machine keeps up with, so that the pace says something about
    // isolation and not about the machine.
    s.reference = None;
    s.backlog = None;
    s.prefill = 0;
    s.phases[0].rate = Rate::PerSecond(150.0);
    s.phases[0].duration = Some(Duration::from_secs(6));
    s.settle_timeout = Duration::from_secs(60);
    s.timeout = Duration::from_secs(120);
    s.interval = Duration::from_millis(250);
    s.check().unwrap();

    let r = run(&s, &options("slow-mix")).await.unwrap();
    let summary = loadtest::report::text(&r);
    let a = &r.accounting;
    assert!(a.total.expected > 0, "{summary}");
    assert_eq!(a.total.lost, 0, "losses:\n{summary}");
    assert_eq!(a.total.unexpected + a.total.misrouted, 0, "{summary}");
    assert_eq!(a.total.dead_lettered, 0, "{summary}");
    assert_eq!(a.bad_signatures + a.bad_requests, 0, "{summary}");
    assert!(
        r.final_settle.as_ref().is_some_and(|f| f.complete),
        "{summary}"
    );

    let steady = &r.phases[0];
    assert_eq!(steady.name, "steady");
    // The fast endpoints kept up while the slow ones fell behind: their
    // deliveries arrived while the phase was still being produced.
    let pace = steady.healthy_pace.expect("the pace was measured");
    assert!(
        pace >= 0.9,
        "fast endpoints lost their pace ({pace:.3}):\n{summary}"
    );
    assert!(steady.complete, "{summary}");
    // The slow endpoints did fall behind: a backlog went to Kafka, each
    // delivery written there once, and came back.
    let spill = r.spill.as_ref().expect("something was spilled");
    assert!(
        spill.spilled > 0 && spill.written.deliveries > 0,
        "{summary}"
    );
    assert!(
        spill.writes_per_delivery.is_some_and(|w| w <= 1.1),
        "spilled deliveries were written again and again:\n{summary}"
    );
    let slow_3s = r.per_endpoint.iter().find(|e| e.id == "slow-3s").unwrap();
    assert!(slow_3s.backlog.spilled > 0, "{summary}");
    assert_eq!(slow_3s.tally.delivered, slow_3s.tally.expected, "{summary}");
    assert_eq!(steady.bounded.len(), 5, "{summary}");
    serde_json::to_string(&r).unwrap();
    loadtest::report::html::render(&r).unwrap();
}
