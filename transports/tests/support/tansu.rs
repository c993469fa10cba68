//! A real Kafka-protocol broker for the Kafka transport's tests: `tansu`,
//! run as a child process on a free 127.0.0.1 port with in-memory storage.
//!
//! A minimal copy of the dispatcher's test starter
//! (`dispatcher/tests/support/tansu.rs`, which has the longer story of
//! tansu's quirks); `scripts/test` installs the binary and exports
//! `TANSU_BIN`. Tests skip when it is not set.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The tansu binary, when `TANSU_BIN` names an existing file.
pub fn bin() -> Option<PathBuf> {
    std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// A running tansu broker; killed when dropped.
pub struct Tansu {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl Tansu {
    /// Start tansu and wait until it answers a metadata request.
    pub fn start(bin: &Path) -> Tansu {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log_path = std::env::temp_dir().join(format!("transports-tansu-{port}.log"));
        let log = File::create(&log_path).expect("tansu log");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("NO_COLOR", "1")
            // A RUST_LOG meant for the code under test would turn tansu's
            // log into gigabytes of protocol traces (8 GB in one run).
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning tansu");
        let tansu = Tansu {
            child,
            port,
            log_path,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen: {}",
                tansu.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let probe: BaseProducer = client_config(&tansu.bootstrap())
            .create()
            .expect("metadata client");
        loop {
            match probe.client().fetch_metadata(None, Duration::from_secs(1)) {
                Ok(md) if !md.brokers().is_empty() => return tansu,
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "tansu not ready: {}",
                        tansu.log()
                    );
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Create `name` with `partitions` and wait until metadata shows them.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = client_config(&self.bootstrap())
            .create()
            .expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin
            .create_topics([&topic], &opts)
            .await
            .expect("create_topics")
        {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => panic!("creating {t} on tansu: {code}"),
            }
        }
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(md) = admin
                    .inner()
                    .fetch_metadata(Some(&name), Duration::from_secs(1))
                {
                    if md.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                    }) {
                        return;
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
            panic!("topic {name} did not appear on tansu");
        })
        .await
        .expect("waiting for the topic");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // SIGKILL: tansu ignores SIGTERM while clients are connected.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .set("socket.connection.setup.timeout.ms", "5000");
    cfg
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
