//! Shared test support: real HTTP receivers, Kafka helpers, dispatcher configs.
#![allow(dead_code)] // each test binary uses a different part

pub mod kafka;
pub mod sink;
pub mod tansu;

use std::time::{Duration, Instant};

use dispatcher::app::{self, Running};
use dispatcher::config::Config;
use serde_json::value::RawValue;

pub const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const SECRET_B: &str = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=";

/// Poll `check` until it holds or `timeout` passes; the bound only guards
/// against a hang, the assertion is on the state reached.
pub async fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Test log output, once per binary (`RUST_LOG=debug` to see more).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Config text for the given brokers, pipeline keys and endpoint list.
pub fn config_yaml(bootstrap: &str, group: &str, pipeline: &str, endpoints: &str) -> String {
    format!(
        r#"
kafka:
  brokers: "{bootstrap}"
  group_id: {group}
  topics: [events]
  options:
    session.timeout.ms: 6000
    heartbeat.interval.ms: 500
admin:
  listen: "127.0.0.1:0"
http:
  allow_private_networks: true
pipeline:
  commit_interval: 100ms
  retry_backoff: 20ms
{pipeline}
endpoints:
{endpoints}
"#
    )
}

/// The same, through the real config parser.
pub fn config(bootstrap: &str, group: &str, pipeline: &str, endpoints: &str) -> Config {
    let yaml = config_yaml(bootstrap, group, pipeline, endpoints);
    Config::from_yaml(&yaml, &|_| None)
        .unwrap_or_else(|p| panic!("test config invalid: {p:?}\n{yaml}"))
}

pub async fn start(config: Config) -> Running {
    let running = app::start(config).await.expect("dispatcher starts");
    wait_until(Duration::from_secs(30), "consumer joined its group", || {
        running.ready.load(std::sync::atomic::Ordering::Acquire)
    })
    .await;
    running
}

/// The raw `data` text of a JSON document.
pub fn raw_data(doc: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct D<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    serde_json::from_slice::<D>(doc)
        .expect("has data")
        .data
        .get()
        .to_owned()
}

pub fn verify_signature(secret: &str, r: &sink::Received) {
    standardwebhooks::Webhook::new(secret)
        .expect("secret")
        .verify(&r.body, &r.headers)
        .unwrap_or_else(|e| panic!("signature rejected by the standardwebhooks crate: {e:?}"));
}
