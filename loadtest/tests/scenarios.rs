//! Short runs of the shipped `baseline` and `crash` scenarios against the
//! real `dispatcher` binary: nothing may be lost, and every delivery must
//! carry the delivery id its (event, endpoint) was given.
//!
//! The binary is found as the `loadtest` command finds it: next to this
//! test's executable, (re)built first with `cargo build -p dispatcher` for
//! the same profile (a no-op when `cargo test --workspace` built it already),
//! so a test never runs a stale dispatcher. `LOADTEST_DISPATCHER` overrides.

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
