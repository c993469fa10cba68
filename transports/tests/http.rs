//! The HTTP transport against real servers on 127.0.0.1: hyper 1.x servers
//! (HTTP/1.1 and, over TLS, HTTP/2) for well-behaved receivers, raw TCP
//! sockets for misbehaving ones. No client is mocked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use transports::http::{HttpClient, HttpClientOptions, HttpEndpointConfig, HttpTransport};
use transports::{Delivery, Event, Outcome, SourceRef, Transport};

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_c2Vjb25kLWtleS1ieXRlcy0xMjM0NTY3ODkw";
/// What `X-Webhook-Secret` carries: never a signing key.
const SHARED: &str = "shared-secret-for-the-header";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    method: http::Method,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A hyper server (HTTP/1.1 and HTTP/2, optionally over TLS) that records
/// every request and answers with `handler`. Stops when dropped.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(handler: Handler, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn({
            let seen = seen.clone();
            let connections = connections.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn({
                        let seen = seen.clone();
                        let handler = handler.clone();
                        move |req: Request<Incoming>| {
                            let seen = seen.clone();
                            let handler = handler.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let request = Seen {
                                    path: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    method: parts.method,
                                    version: parts.version,
                                    headers: parts.headers,
                                    body,
                                };
                                let response = handler(&request);
                                seen.lock().unwrap().push(request);
                                Ok::<_, Infallible>(response)
                            }
                        }
                    });
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    let _ =
                                        builder.serve_connection(TokioIo::new(tls), service).await;
                                }
                            }
                            None => {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
            }
        });
        Server {
            addr,
            seen,
            connections,
            task,
        }
    }

    async fn http(
        handler: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Server {
        Server::start(Arc::new(handler), None).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// A TCP server that reads one request per connection, answers it with
/// `response` (raw bytes, possibly a truncated message) and then holds the
/// connection open without sending another byte. An empty `response` makes
/// a server that never answers.
async fn raw_server(response: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            read_request(&mut stream).await;
            let _ = stream.write_all(response).await;
            held.push(stream);
        }
    });
    (addr, task)
}

/// Read one HTTP/1.1 request with a `content-length` body (what the
/// transport sends), so that the answer comes after it as a client expects.
async fn read_request(stream: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn client_with(
    allow_private_networks: bool,
    extra_roots: Vec<CertificateDer<'static>>,
) -> HttpClient {
    HttpClient::new(HttpClientOptions {
        allow_private_networks,
        // These receivers are plain http on 127.0.0.1.
        allow_plaintext_secrets: true,
        native_roots: false,
        extra_roots,
        connect_timeout: Duration::from_secs(2),
        ..HttpClientOptions::default()
    })
    .unwrap()
}

fn client() -> HttpClient {
    client_with(true, Vec::new())
}

fn endpoint(url: String, secrets: &[&str]) -> HttpEndpointConfig {
    HttpEndpointConfig {
        url,
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        send_secret_header: false,
        shared_secret: Some(SHARED.into()),
        timeout: Duration::from_secs(5),
        ..HttpEndpointConfig::default()
    }
}

fn transport(config: HttpEndpointConfig) -> HttpTransport {
    HttpTransport::new(config, client()).unwrap()
}

fn delivery() -> Delivery {
    let raw = r#"{"event":"message.received","timestamp":"2026-05-16T12:00:00.000Z","id":"evt-42","data":{"message_id":"wamid.X","text":"héllo \"quoted\"","n":1.50}}"#;
    let mut event = Event::decode(
        Bytes::from_static(raw.as_bytes()),
        SourceRef {
            topic: "events".into(),
            partition: 1,
            offset: 99,
        },
        None,
        1 << 20,
    )
    .unwrap();
    event.traceparent = Some(Bytes::from_static(TRACEPARENT.as_bytes()));
    Delivery::new(
        Arc::new(event),
        "f47ac10b-58cc-4372-a567-0e02b2c3d479".into(),
    )
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

fn verify(secret: &str, seen: &Seen) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&seen.body, &seen.headers)
}

#[tokio::test]
async fn delivers_with_every_header_and_the_exact_body() {
    let server = Server::http(|_| respond(200, &[], "ok")).await;
    let mut config = endpoint(server.url("/hooks/in?tenant=acme"), &[SECRET_A]);
    config.headers = vec![("X-Tenant".into(), "acme".into())];
    let transport = transport(config);
    assert_eq!(transport.kind(), "http");
    let delivery = delivery();

    let outcome = transport.send(&delivery).await;

    assert_eq!(outcome, Outcome::Delivered { status: Some(200) });
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.path, "/hooks/in?tenant=acme");
    assert_eq!(
        req.version,
        Version::HTTP_11,
        "plain http stays on HTTP/1.1"
    );
    assert_eq!(req.body, delivery.body, "body must be byte-identical");
    let id = delivery.id.to_string();
    assert_eq!(header(req, "content-type"), Some("application/json"));
    assert_eq!(
        header(req, "user-agent"),
        Some(concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(header(req, "x-webhook-event"), Some("message.received"));
    assert_eq!(header(req, "x-webhook-delivery-id"), Some(id.as_str()));
    assert_eq!(header(req, "x-webhook-secret"), Some(SHARED));
    assert_eq!(header(req, "webhook-id"), Some(id.as_str()));
    assert!(header(req, "webhook-timestamp").is_some());
    assert!(header(req, "webhook-signature").is_some_and(|s| s.starts_with("v1,")));
    assert_eq!(header(req, "traceparent"), Some(TRACEPARENT));
    assert_eq!(header(req, "x-tenant"), Some("acme"));

    verify(SECRET_A, req).expect("the official library accepts our signature");
    assert!(
        verify(SECRET_B, req).is_err(),
        "a different secret must not verify"
    );
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_and_each_verifies() {
    let server = Server::http(|_| respond(204, &[], "")).await;
    let transport = transport(endpoint(server.url("/"), &[SECRET_A, SECRET_B]));

    assert_eq!(
        transport.send(&delivery()).await,
        Outcome::Delivered { status: Some(204) }
    );

    let req = &server.seen()[0];
    let signature = header(req, "webhook-signature").unwrap();
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    verify(SECRET_A, req).expect("new secret verifies");
    verify(SECRET_B, req).expect("old secret verifies");
    // The shared secret, not a signing key, is the one sent verbatim.
    assert_eq!(header(req, "x-webhook-secret"), Some(SHARED));
}

#[tokio::test]
async fn secret_header_is_absent_when_disabled() {
    let server = Server::http(|_| respond(200, &[], "")).await;
    let mut config = endpoint(server.url("/"), &[SECRET_A]);
    config.shared_secret = None;

    assert!(matches!(
        transport(config).send(&delivery()).await,
        Outcome::Delivered { .. }
    ));

    let req = &server.seen()[0];
    assert_eq!(header(req, "x-webhook-secret"), None);
    verify(SECRET_A, req).expect("still signed");
}

#[tokio::test]
async fn server_error_is_retried_with_a_body_excerpt() {
    let server = Server::http(|_| respond(500, &[], "database\ndown")).await;
    let outcome = transport(endpoint(server.url("/"), &[]))
        .send(&delivery())
        .await;
    assert_eq!(
        outcome,
        Outcome::Retry {
            status: Some(500),
            reason: "HTTP 500 Internal Server Error: database down".into(),
            retry_after: None,
        }
    );
}

#[tokio::test]
async fn echoed_secrets_are_redacted_from_reasons() {
    let server = Server::http(|req| {
        let secret = req.headers["x-webhook-secret"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        respond(401, &[], &format!("bad secret {secret}"))
    })
    .await;
    let outcome = transport(endpoint(server.url("/"), &[SECRET_A]))
        .send(&delivery())
        .await;
    let Outcome::Permanent { status, reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(status, Some(401));
    assert!(!reason.contains(SHARED), "{reason}");
    assert!(reason.contains("[redacted]"), "{reason}");
}

/// Finding 6 of the security review: a receiver whose 401 body echoes the
/// configured `Authorization` header put the token in the failure reason,
/// and so in log lines and the dead letter's `dlq.error` and `dlq.attempts`.
#[tokio::test]
async fn echoed_configured_headers_are_redacted_from_reasons() {
    let server = Server::http(|req| {
        let auth = req.headers["authorization"].to_str().unwrap_or_default().to_owned();
        let key = req.headers["x-api-key"].to_str().unwrap_or_default().to_owned();
        let token = auth.split(' ').nth(1).unwrap_or_default().to_owned();
        respond(
            401,
            &[],
            &format!("{{\"error\":\"bad credentials\",\"got\":\"{auth}\",\"token\":\"{token}\",\"key\":\"{key}\"}}"),
        )
    })
    .await;
    let mut config = endpoint(server.url("/"), &[]);
    config.headers = vec![
        (
            "Authorization".into(),
            "Bearer eyJhbGciOi.topsecret-token".into(),
        ),
        ("X-Api-Key".into(), "ak_live_0123456789".into()),
    ];
    let outcome = transport(config).send(&delivery()).await;
    let Outcome::Permanent { status, reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(status, Some(401));
    assert!(reason.contains("bad credentials"), "{reason}");
    for secret in ["topsecret-token", "eyJhbGciOi", "ak_live_0123456789"] {
        assert!(!reason.contains(secret), "{secret} in {reason}");
    }
}

#[tokio::test]
async fn too_many_requests_and_retry_after_throttle() {
    let server = Server::http(|_| respond(429, &[("retry-after", "3")], "slow down")).await;
    let outcome = transport(endpoint(server.url("/"), &[]))
        .send(&delivery())
        .await;
    assert_eq!(
        outcome,
        Outcome::Throttled {
            status: Some(429),
            reason: "HTTP 429 Too Many Requests: slow down".into(),
            retry_after: Duration::from_secs(3),
        }
    );

    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    let server = Server::http(move |_| respond(503, &[("retry-after", &date)], "")).await;
    let outcome = transport(endpoint(server.url("/"), &[]))
        .send(&delivery())
        .await;
    let Outcome::Throttled {
        status: Some(503),
        retry_after: after,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        after > Duration::from_secs(50) && after <= Duration::from_secs(60),
        "{after:?}"
    );
}

#[tokio::test]
async fn gone_asks_to_disable_the_endpoint() {
    let server = Server::http(|_| respond(410, &[], "")).await;
    let outcome = transport(endpoint(server.url("/"), &[]))
        .send(&delivery())
        .await;
    assert_eq!(
        outcome,
        Outcome::Permanent {
            status: Some(410),
            reason: "HTTP 410 Gone".into(),
            disable_endpoint: true,
        }
    );
}

#[tokio::test]
async fn bad_request_is_permanent() {
    let server = Server::http(|_| respond(400, &[], r#"{"error":"invalid payload"}"#)).await;
    let outcome = transport(endpoint(server.url("/"), &[]))
        .send(&delivery())
        .await;
    assert_eq!(
        outcome,
        Outcome::Permanent {
            status: Some(400),
            reason: r#"HTTP 400 Bad Request: {"error":"invalid payload"}"#.into(),
            disable_endpoint: false,
        }
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = Server::http(|req| match req.path.as_str() {
        "/start" => respond(301, &[("location", "/target")], ""),
        _ => respond(200, &[], ""),
    })
    .await;
    let outcome = transport(endpoint(server.url("/start"), &[]))
        .send(&delivery())
        .await;
    assert_eq!(
        outcome,
        Outcome::Permanent {
            status: Some(301),
            reason: "redirect not followed: Location /target".into(),
            disable_endpoint: false,
        }
    );
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/start"], "the redirect target must never be hit");
}

#[tokio::test]
async fn silent_server_times_out_as_retry() {
    let (addr, _task) = raw_server(b"").await;
    let mut config = endpoint(format!("http://{addr}/"), &[]);
    config.timeout = Duration::from_millis(300);

    let started = Instant::now();
    let outcome = transport(config).send(&delivery()).await;

    assert_eq!(
        outcome,
        Outcome::Retry {
            status: None,
            reason: "timed out after 300ms".into(),
            retry_after: None,
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stalled_error_body_still_classifies_by_status() {
    let (addr, _task) = raw_server(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 1000\r\nretry-after: 7\r\n\r\nbusy",
    )
    .await;
    let mut config = endpoint(format!("http://{addr}/"), &[]);
    config.timeout = Duration::from_millis(300);

    let outcome = transport(config).send(&delivery()).await;

    assert_eq!(
        outcome,
        Outcome::Throttled {
            status: Some(503),
            reason: "HTTP 503 Service Unavailable: busy".into(),
            retry_after: Duration::from_secs(7),
        }
    );
}

#[tokio::test]
async fn stalled_success_body_is_still_delivered() {
    let (addr, _task) = raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nok").await;
    let mut config = endpoint(format!("http://{addr}/"), &[]);
    config.timeout = Duration::from_millis(300);
    assert_eq!(
        transport(config).send(&delivery()).await,
        Outcome::Delivered { status: Some(200) }
    );
}

#[tokio::test]
async fn large_error_body_is_not_read_whole() {
    // 8 KiB arrive, the rest never does: only the bounded prefix is awaited,
    // so the outcome comes long before the 5 s timeout.
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let response = RESPONSE.get_or_init(|| {
        let mut r =
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 10000000\r\n\r\n".to_vec();
        r.extend(std::iter::repeat_n(b'x', 8 * 1024));
        r
    });
    let (addr, _task) = raw_server(response).await;

    let started = Instant::now();
    let outcome = transport(endpoint(format!("http://{addr}/"), &[]))
        .send(&delivery())
        .await;

    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let Outcome::Retry { status, reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(status, Some(500));
    let excerpt = reason
        .strip_prefix("HTTP 500 Internal Server Error: ")
        .unwrap();
    assert_eq!(excerpt.chars().count(), 200);
}

#[tokio::test]
async fn refused_connection_is_retried() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let outcome = transport(endpoint(format!("http://{addr}/"), &[]))
        .send(&delivery())
        .await;
    let Outcome::Retry {
        status: None,
        reason,
        retry_after: None,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("onnect"), "{reason}");
}

#[tokio::test]
async fn ssrf_guard_refuses_loopback_without_connecting() {
    let server = Server::http(|_| respond(200, &[], "")).await;
    let guarded = client_with(false, Vec::new());

    // An IP literal never reaches the resolver, so it is refused up front.
    let err = HttpTransport::new(endpoint(server.url("/"), &[]), guarded.clone()).unwrap_err();
    assert_eq!(err.field, "url");
    assert!(err.reason.contains("loopback"), "{err}");

    // A name is refused when it resolves, and the send fails for good.
    let url = format!("http://localhost:{}/", server.addr.port());
    let transport = HttpTransport::new(endpoint(url, &[]), guarded).unwrap();
    let outcome = transport.send(&delivery()).await;
    let Outcome::Permanent {
        status: None,
        reason,
        disable_endpoint: false,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("localhost resolves to"), "{reason}");
    assert!(reason.contains("loopback"), "{reason}");

    assert_eq!(
        server.connections(),
        0,
        "no connection may reach the server"
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused() {
    let server = Server::http(|_| respond(200, &[], "ok")).await;
    let transport = transport(endpoint(server.url("/"), &[SECRET_A]));
    for _ in 0..3 {
        assert!(matches!(
            transport.send(&delivery()).await,
            Outcome::Delivered { .. }
        ));
    }
    assert_eq!(server.seen().len(), 3);
    assert_eq!(server.connections(), 1);
}

/// A self-signed certificate for 127.0.0.1 and localhost, and a server
/// config offering h2 and http/1.1 by ALPN.
fn tls_server_config() -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (cert, Arc::new(config))
}

#[tokio::test]
async fn http2_is_negotiated_over_tls() {
    let (cert, tls) = tls_server_config();
    let server = Server::start(Arc::new(|_: &Seen| respond(200, &[], "ok")), Some(tls)).await;
    let client = client_with(true, vec![cert]);
    let url = format!("https://127.0.0.1:{}/tls", server.addr.port());
    let transport = HttpTransport::new(endpoint(url, &[SECRET_A]), client).unwrap();
    let delivery = delivery();

    for _ in 0..2 {
        assert_eq!(
            transport.send(&delivery).await,
            Outcome::Delivered { status: Some(200) }
        );
    }

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    for req in &seen {
        assert_eq!(req.version, Version::HTTP_2);
        assert_eq!(req.body, delivery.body);
        verify(SECRET_A, req).expect("signature verifies over HTTP/2 too");
    }
    assert_eq!(
        server.connections(),
        1,
        "HTTP/2 multiplexes on one connection"
    );
}

#[tokio::test]
async fn untrusted_certificate_is_retried_with_the_cause() {
    let (_cert, tls) = tls_server_config();
    let server = Server::start(Arc::new(|_: &Seen| respond(200, &[], "ok")), Some(tls)).await;
    let url = format!("https://127.0.0.1:{}/", server.addr.port());
    let outcome = transport(endpoint(url, &[])).send(&delivery()).await;
    let Outcome::Retry {
        status: None,
        reason,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert!(server.seen().is_empty());
}
