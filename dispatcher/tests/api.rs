//! The management API and the admin listener under attack, over real
//! sockets on 127.0.0.1: unauthenticated and forged (CSRF, DNS rebinding)
//! mutations, slow-header connections, connection floods.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dispatcher::admin::{self, AdminState};
use dispatcher::api::server::Limits;
use dispatcher::api::{self, ApiContext, ApiState};
use dispatcher::config::Config;
use dispatcher::embedded::EmbeddedKafka;
use dispatcher::endpoints::Routing;
use dispatcher::metrics::Metrics;
use dispatcher::store::{Follower, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TOKEN: &str = "0123456789abcdef0123456789abcdef-api-token";
const OTHER_TOKEN: &str = "fedcba9876543210fedcba9876543210-old-token";

/// The API alone, over an endpoint store in an embedded Kafka, with one
/// endpoint from the config file.
struct Api {
    addr: SocketAddr,
    store: Arc<Store>,
    _stop: watch::Sender<bool>,
    _kafka: EmbeddedKafka,
}

impl Api {
    fn paused(&self) -> bool {
        self.store.get("acme-crm").is_some_and(|s| s.state.paused)
    }
}

async fn start_api(limits: Limits) -> Api {
    let kafka = support::embedded_kafka(1);
    let config = Config::from_yaml(
        &format!(
            "kafka:\n  brokers: \"{}\"\nendpoints:\n  - id: acme-crm\n    url: https://acme.example/hook\n    events: [\"*\"]\n",
            kafka.bootstrap()
        ),
        &|_| None,
    )
    .unwrap();
    let k = &config.kafka;
    let producer = dispatcher::kafka::producer(k, kafka.bootstrap(), 1 << 20)
        .create()
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let (store, _changes) = Store::new(
        k.endpoints_topic.clone(),
        producer,
        metrics.store_bad_records.clone(),
    );
    let (stop, stop_rx) = watch::channel(false);
    Follower::start(
        store.clone(),
        dispatcher::kafka::reader(k, kafka.bootstrap(), "store"),
        stop_rx.clone(),
    )
    .await
    .unwrap();
    store.caught_up().await;
    let (_, routing) = watch::channel(Arc::new(Routing::empty()));
    let state = ApiState::new(
        ApiContext {
            store: store.clone(),
            routing,
            config: Arc::new(config),
            registry: transports::Registry::builtin(),
            metrics,
            replay: None,
        },
        &[OTHER_TOKEN.to_owned(), TOKEN.to_owned()],
        &["dispatcher-api.ops.svc".to_owned()],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve(listener, state, limits, stop_rx));
    Api {
        addr,
        store,
        _stop: stop,
        _kafka: kafka,
    }
}

async fn start_admin(limits: Limits) -> (SocketAddr, watch::Sender<bool>) {
    let state = AdminState {
        metrics: Arc::new(Metrics::new()),
        ready: Arc::new(AtomicBool::new(true)),
        live: Arc::new(AtomicBool::new(true)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(admin::serve_with(listener, state, limits, stop_rx));
    (addr, stop)
}

/// Send `head` (request line and headers, without the blank line) and read
/// the answer: (status, body).
async fn send(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("an answer")
    .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, body.to_owned())
}

fn authorized(method: &str, path: &str, addr: SocketAddr) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nx-dispatcher-api: 1\r\nauthorization: Bearer {TOKEN}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_with_a_token_pauses_and_resumes() {
    let api = start_api(Limits::default()).await;
    let (status, body) = send(
        api.addr,
        &authorized("POST", "/endpoints/acme-crm/pause", api.addr),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(api.paused());
    let (status, body) = send(api.addr, &authorized("GET", "/endpoints", api.addr)).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"endpoints": [{"id": "acme-crm", "paused": true, "disabled": false}]})
    );
    // Any of the configured tokens works (rotation), under a listed Host too.
    let head = format!(
        "POST /endpoints/acme-crm/resume HTTP/1.1\r\nhost: dispatcher-api.ops.svc:9465\r\nx-dispatcher-api: 1\r\nauthorization: bearer {OTHER_TOKEN}"
    );
    let (status, body) = send(api.addr, &head).await;
    assert_eq!(status, 200, "{body}");
    assert!(!api.paused());
    let (status, _) = send(
        api.addr,
        &authorized("POST", "/endpoints/nope/pause", api.addr),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        api.addr,
        &authorized("GET", "/endpoints/acme-crm/pause", api.addr),
    )
    .await;
    assert_eq!(status, 405);
}

/// Finding 1 of the security review: any pod could pause every endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_without_a_valid_token_is_refused() {
    let api = start_api(Limits::default()).await;
    let base = format!(
        "POST /endpoints/acme-crm/pause HTTP/1.1\r\nhost: {}\r\nx-dispatcher-api: 1",
        api.addr
    );
    for auth in [
        String::new(),
        "\r\nauthorization: Bearer ".to_owned(),
        "\r\nauthorization: Bearer wrong-token-wrong-token-wrong-token".to_owned(),
        format!("\r\nauthorization: Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("\r\nauthorization: Bearer {TOKEN}x"),
        format!("\r\nauthorization: Basic {TOKEN}"),
        format!("\r\nauthorization: {TOKEN}"),
    ] {
        let (status, body) = send(api.addr, &format!("{base}{auth}")).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(!api.paused(), "{auth:?} paused the endpoint");
    }
    // Reading is guarded too: the list of endpoints is the list of customers.
    let head = format!(
        "GET /endpoints HTTP/1.1\r\nhost: {}\r\nx-dispatcher-api: 1",
        api.addr
    );
    assert_eq!(send(api.addr, &head).await.0, 401);
}

/// Finding 1: a web page can make a browser send a body-less POST to
/// `localhost` or a port-forward (CSRF), or rebind its own name to
/// 127.0.0.1 and then talk to the port as same-origin (DNS rebinding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_browser_requests_are_refused() {
    let api = start_api(Limits::default()).await;
    // The form post a page can send without a preflight: no custom header
    // (a page cannot add one, nor Authorization, without a CORS preflight,
    // which this server never grants), even if it somehow had the token.
    let csrf = format!(
        "POST /endpoints/acme-crm/pause HTTP/1.1\r\nhost: {}\r\norigin: http://evil.example\r\ncontent-type: application/x-www-form-urlencoded\r\nauthorization: Bearer {TOKEN}",
        api.addr
    );
    let (status, body) = send(api.addr, &csrf).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-Dispatcher-Api"), "{body}");
    assert!(!api.paused());

    // The preflight gets no CORS grant.
    let preflight = format!(
        "OPTIONS /endpoints/acme-crm/pause HTTP/1.1\r\nhost: {}\r\norigin: http://evil.example\r\naccess-control-request-method: POST\r\naccess-control-request-headers: x-dispatcher-api, authorization",
        api.addr
    );
    let mut stream = TcpStream::connect(api.addr).await.unwrap();
    stream
        .write_all(format!("{preflight}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        !answer.to_lowercase().contains("access-control-allow"),
        "{answer}"
    );

    // DNS rebinding: everything right but the Host, which names the page's site.
    for host in [
        "evil.example",
        "evil.example:9465",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
    ] {
        let rebound = format!(
            "POST /endpoints/acme-crm/pause HTTP/1.1\r\nhost: {host}\r\nx-dispatcher-api: 1\r\nauthorization: Bearer {TOKEN}"
        );
        let (status, body) = send(api.addr, &rebound).await;
        assert_eq!(status, 403, "{host}: {body}");
        assert!(!api.paused(), "{host}");
    }
}

/// A connection that sends part of its headers and then nothing (slowloris)
/// is closed once the header read timeout passes, on both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_connections_are_closed() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let api = start_api(limits).await;
    let (admin_addr, _stop) = start_admin(limits).await;
    for addr in [api.addr, admin_addr] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        // Without the timeout the server would wait for the rest for ever.
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the server closes a connection that stalls in its headers");
        // A reset (an error) is a close too.
        if let Ok(n) = read {
            assert!(
                n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

/// Connections beyond the cap are closed at once, and the listener serves
/// again as soon as the flood stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed() {
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let (addr, _stop) = start_admin(limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A byte, so that the server has surely accepted this one.
        stream.write_all(b"G").await.unwrap();
        held.push(stream);
    }
    // Let the server take the four before the fifth comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
        .await
        .expect("the fifth connection is closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    drop(held);
    // Until the server has seen the four go, a new connection is still one
    // too many and is reset: that is an attempt to repeat, not a failure.
    let mut answered = false;
    for _ in 0..250 {
        let attempt = async {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            Some(response.starts_with("HTTP/1.1 200"))
        };
        if tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .ok()
            .flatten()
            == Some(true)
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "the listener serves again once the flood is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_no_longer_switches_endpoints() {
    let (addr, _stop) = start_admin(Limits::default()).await;
    let (status, body) = send(
        addr,
        "POST /endpoints/acme-crm/pause HTTP/1.1\r\nhost: 127.0.0.1",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("api.listen"), "{body}");
    assert_eq!(
        send(addr, "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1")
            .await
            .0,
        200
    );
    assert_eq!(
        send(addr, "GET /metrics HTTP/1.1\r\nhost: any.name")
            .await
            .0,
        200
    );
}
