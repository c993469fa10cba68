//! Shared test support: real HTTP receivers, Kafka helpers, dispatcher configs.
#![allow(dead_code)] // each test binary uses a different part

pub mod kafka;
pub mod sink;
pub mod tansu;

use std::time::{Duration, Instant};

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
