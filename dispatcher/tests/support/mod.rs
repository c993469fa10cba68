//! Shared test support: real HTTP receivers, Kafka helpers, dispatcher configs.
#![allow(dead_code)] // each test binary uses a different part

pub mod kafka;
pub mod sink;
pub mod tansu;

use std::time::{Duration, Instant};

use dispatcher::app::{self, Running};
use dispatcher::config::Config;
use serde_json::value::RawValue;

/// The retry topics of the test config's `kafka.retry_tiers`.
pub const RETRY_TOPICS: &[&str] = &["dispatcher.retry.500ms", "dispatcher.retry.2s"];

/// The spill topic (the default `kafka.spill_topic`) and its partitions in
/// the tests' brokers.
pub const SPILL_TOPIC: &str = "dispatcher.spill";
pub const SPILL_PARTITIONS: i32 = 4;

/// The endpoint store's topic (the default `kafka.endpoints_topic`).
pub const ENDPOINTS_TOPIC: &str = "dispatcher.endpoints";

/// An embedded Kafka with the test config's topics, `events` with `partitions`.
pub fn embedded_kafka(partitions: i32) -> dispatcher::embedded::EmbeddedKafka {
    let kafka =
        dispatcher::embedded::EmbeddedKafka::start(&["events", "dispatcher.dlq"], partitions)
            .expect("embedded Kafka");
    for tier in RETRY_TOPICS {
        kafka.create_topic(tier, 2).expect("retry topic");
    }
    kafka
        .create_topic(SPILL_TOPIC, SPILL_PARTITIONS)
        .expect("spill topic");
    kafka
        .create_topic(ENDPOINTS_TOPIC, 2)
        .expect("endpoints topic");
    kafka
}

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
  retry_tiers: [500ms, 2s]
  options:
    session.timeout.ms: 6000
    heartbeat.interval.ms: 500
    statistics.interval.ms: 500
admin:
  listen: "127.0.0.1:0"
api:
  listen: "127.0.0.1:0"
  tokens: ["{API_TOKEN}"]
http:
  allowed_networks: ["127.0.0.0/8"]
  allow_plaintext_secrets: true
pipeline:
  commit_interval: 100ms
  in_memory_retry_max: 1s
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

/// The management API token of [`config_yaml`].
pub const API_TOKEN: &str = "test-token-0123456789abcdef0123456789abcdef";

/// One authenticated request to the management API: (status, body).
pub async fn api(running: &Running, method: &str, path: &str) -> (u16, String) {
    api_at(
        running.api_addr.expect("the management API is on"),
        method,
        path,
    )
    .await
}

/// The same, to the management API at `addr` (a dispatcher binary's).
pub async fn api_at(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    raw_request(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-dispatcher-api: 1\r\nauthorization: Bearer {API_TOKEN}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
    )
    .await
}

/// Send `request` as it is and read the answer until the server closes:
/// (status, body).
pub async fn raw_request(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("server reachable");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// One plain HTTP/1.1 request to the admin server: (status, body).
pub async fn admin(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin server reachable");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// The value of one sample in Prometheus text, e.g.
/// `metric(&text, "dispatcher_parked_total{endpoint=\"a\",reason=\"retry\"}")`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A free port on 127.0.0.1 (bound, then released for a child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The dispatcher binary run as a child with `config_text`, its admin server
/// on `admin_port`, its log in `log`. Killed (SIGKILL) when dropped.
pub struct Child {
    pub process: std::process::Child,
    pub admin: std::net::SocketAddr,
}

impl Child {
    pub fn spawn(dir: &std::path::Path, name: &str, config_text: &str, admin_port: u16) -> Child {
        let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin_port));
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            // The first `listen` is admin's (the API's stays on port 0).
            config_text.replacen(
                "listen: \"127.0.0.1:0\"",
                &format!("listen: \"{admin}\""),
                1,
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the dispatcher binary");
        Child { process, admin }
    }

    /// Its current metrics text ("" while it is not up).
    pub async fn metrics(&self) -> String {
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(self.admin),
        )
        .await
        {
            Ok(Ok(_)) => admin(self.admin, "GET", "/metrics").await.1,
            _ => String::new(),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Every event a sink received came under one delivery id per endpoint
/// path, however many times it came (duplicates are allowed, new ids not).
pub fn assert_one_id_per_event(sink: &sink::Sink) {
    let mut ids: std::collections::HashMap<(String, String), std::collections::HashSet<String>> =
        std::collections::HashMap::new();
    for r in sink.received() {
        ids.entry((raw_data(&r.body), r.path.clone()))
            .or_default()
            .insert(
                r.header("x-webhook-delivery-id")
                    .expect("delivery id header")
                    .to_owned(),
            );
    }
    for (event, set) in &ids {
        assert_eq!(
            set.len(),
            1,
            "{event:?} was delivered under several ids: {set:?}"
        );
    }
}
