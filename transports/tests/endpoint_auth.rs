//! Endpoint authentication against real servers on 127.0.0.1: mTLS with a
//! rustls server that requires a client certificate, a private CA per
//! endpoint, and OAuth2 client credentials with a real token server.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use transports::http::{
    EndpointTls, HttpClient, HttpClientOptions, HttpEndpointConfig, HttpTransport, OAuth2Settings,
};
use transports::{Delivery, Event, Outcome, SourceRef, Transport};

/// A CA and what it signed, as PEM.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        pem("CERTIFICATE", self.cert.der())
    }

    /// A leaf for `names` (server) or a client certificate named `cn`.
    fn issue(&self, names: &[&str], cn: &str, client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if client {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (
            pem("CERTIFICATE", cert.der()),
            pem("PRIVATE KEY", &key.serialize_der()),
        )
    }
}

/// PEM text of DER bytes (rcgen's own PEM output is a feature not built here).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// One request as a TLS server saw it: which connection, which client
/// certificate (its DER), which Authorization.
#[derive(Debug, Clone)]
struct Seen {
    connection: usize,
    client_cert: Option<Vec<u8>>,
    authorization: Option<String>,
}

/// A hyper server over rustls on 127.0.0.1 that records what it saw and
/// answers with `handler`. Stops when dropped.
struct TlsServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Handler = Arc<dyn Fn(&Seen) -> u16 + Send + Sync>;

impl TlsServer {
    /// `client_ca`: require a client certificate issued by it.
    async fn start(server_ca: &Ca, client_ca: Option<&Ca>, handler: Handler) -> TlsServer {
        let (cert_pem, key_pem) = server_ca.issue(&["127.0.0.1"], "receiver", false);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.cert.der().clone()).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                certs(&cert_pem),
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let seen = seen.clone();
                    let handler = handler.clone();
                    let connection = connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let client_cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.to_vec());
                        let service = service_fn(move |req: Request<Incoming>| {
                            let seen = seen.clone();
                            let handler = handler.clone();
                            let client_cert = client_cert.clone();
                            async move {
                                let request = Seen {
                                    connection,
                                    client_cert,
                                    authorization: req
                                        .headers()
                                        .get("authorization")
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned),
                                };
                                let _ = req.into_body().collect().await;
                                let status = handler(&request);
                                seen.lock().unwrap().push(request);
                                let mut response = Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });
        TlsServer { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hook", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn client() -> HttpClient {
    HttpClient::new(HttpClientOptions {
        allowed_networks: vec!["127.0.0.0/8".parse().unwrap()],
        // The OAuth2 token server below is plain http on 127.0.0.1.
        allow_plaintext_secrets: true,
        native_roots: false,
        connect_timeout: Duration::from_secs(2),
        ..HttpClientOptions::default()
    })
    .unwrap()
}

fn delivery() -> Delivery {
    let event = Event::decode(
        Bytes::from_static(br#"{"event":"message.sent","id":"e-1","data":{}}"#),
        SourceRef {
            topic: "events".into(),
            partition: 0,
            offset: 1,
        },
        None,
        1 << 20,
    )
    .unwrap();
    Delivery::new(Arc::new(event), "acme".into())
}

fn endpoint(url: String, tls: Option<EndpointTls>) -> HttpEndpointConfig {
    HttpEndpointConfig {
        url,
        timeout: Duration::from_secs(5),
        tls,
        ..HttpEndpointConfig::default()
    }
}

fn ok(_: &Seen) -> u16 {
    200
}

#[tokio::test]
async fn mtls_presents_the_endpoints_client_certificate() {
    let server_ca = Ca::new("receiver CA");
    let client_ca = Ca::new("dispatcher clients CA");
    let server = TlsServer::start(&server_ca, Some(&client_ca), Arc::new(ok)).await;
    let (cert, key) = client_ca.issue(&[], "acme-client", true);
    let tls = EndpointTls {
        ca: Some(server_ca.pem()),
        client_cert: Some(cert.clone()),
        client_key: Some(key),
    };
    let transport = HttpTransport::new(endpoint(server.url(), Some(tls)), client()).unwrap();

    assert_eq!(
        transport.send(&delivery()).await,
        Outcome::Delivered { status: Some(200) }
    );
    let seen = server.seen();
    assert_eq!(seen[0].client_cert.as_deref(), Some(&*certs(&cert)[0]));

    // Without a client certificate the server refuses the handshake.
    let anonymous = HttpTransport::new(
        endpoint(
            server.url(),
            Some(EndpointTls {
                ca: Some(server_ca.pem()),
                ..EndpointTls::default()
            }),
        ),
        client(),
    )
    .unwrap();
    let outcome = anonymous.send(&delivery()).await;
    assert_eq!(outcome.label(), "retry", "{outcome:?}");
    assert_eq!(server.seen().len(), 1, "no request got through");
}

/// Two endpoints on one host with different certificates: each request
/// carries its own endpoint's identity, so a pooled connection is never
/// shared between identities.
#[tokio::test]
async fn two_identities_on_one_host_never_share_a_connection() {
    let server_ca = Ca::new("receiver CA");
    let client_ca = Ca::new("dispatcher clients CA");
    let server = TlsServer::start(&server_ca, Some(&client_ca), Arc::new(ok)).await;
    let shared = client();
    let mut transports = Vec::new();
    let mut ders = Vec::new();
    for name in ["tenant-a", "tenant-b"] {
        let (cert, key) = client_ca.issue(&[], name, true);
        ders.push(certs(&cert)[0].to_vec());
        let tls = EndpointTls {
            ca: Some(server_ca.pem()),
            client_cert: Some(cert),
            client_key: Some(key),
        };
        transports
            .push(HttpTransport::new(endpoint(server.url(), Some(tls)), shared.clone()).unwrap());
    }
    // Interleaved, sequential: the pool has an idle connection to this host
    // each time, and must still not hand tenant-a's to tenant-b.
    let mut expected = Vec::new();
    for round in 0..4 {
        for (i, t) in transports.iter().enumerate() {
            assert!(
                matches!(t.send(&delivery()).await, Outcome::Delivered { .. }),
                "round {round}"
            );
            expected.push(i);
        }
    }
    let seen = server.seen();
    assert_eq!(seen.len(), expected.len());
    let mut identity_of_connection = std::collections::HashMap::new();
    for (request, &i) in seen.iter().zip(&expected) {
        assert_eq!(
            request.client_cert.as_deref(),
            Some(&*ders[i]),
            "request of endpoint {i}"
        );
        let previous = identity_of_connection.insert(request.connection, i);
        assert!(
            previous.is_none_or(|p| p == i),
            "connection {} used by two identities",
            request.connection
        );
    }
    // Connections are still reused within one identity.
    let connections: HashSet<usize> = seen.iter().map(|s| s.connection).collect();
    assert_eq!(
        connections.len(),
        2,
        "one pooled connection per identity: {seen:?}"
    );
}

#[tokio::test]
async fn a_private_ca_is_trusted_for_its_endpoint_only() {
    let private_ca = Ca::new("private CA");
    let server = TlsServer::start(&private_ca, None, Arc::new(ok)).await;
    let trusting = HttpTransport::new(
        endpoint(
            server.url(),
            Some(EndpointTls {
                ca: Some(private_ca.pem()),
                ..EndpointTls::default()
            }),
        ),
        client(),
    )
    .unwrap();
    assert!(matches!(
        trusting.send(&delivery()).await,
        Outcome::Delivered { .. }
    ));

    // The default roots do not include it, nor does another CA.
    let plain = HttpTransport::new(endpoint(server.url(), None), client()).unwrap();
    let outcome = plain.send(&delivery()).await;
    assert_eq!(outcome.label(), "retry");
    let other = HttpTransport::new(
        endpoint(
            server.url(),
            Some(EndpointTls {
                ca: Some(Ca::new("other CA").pem()),
                ..EndpointTls::default()
            }),
        ),
        client(),
    )
    .unwrap();
    let outcome = other.send(&delivery()).await;
    let Outcome::Retry { reason, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
}

#[tokio::test]
async fn tls_settings_errors_name_the_key_without_quoting_pem() {
    let ca = Ca::new("ca");
    let (cert, key) = ca.issue(&[], "c", true);
    let (_, other_key) = ca.issue(&[], "d", true);
    let cases = [
        (
            EndpointTls {
                ca: Some("garbage".into()),
                ..EndpointTls::default()
            },
            "tls.ca",
        ),
        (
            EndpointTls {
                client_cert: Some(cert.clone()),
                ..EndpointTls::default()
            },
            "tls.client_key",
        ),
        (
            EndpointTls {
                client_key: Some(key.clone()),
                ..EndpointTls::default()
            },
            "tls.client_cert",
        ),
        (
            EndpointTls {
                client_cert: Some(cert.clone()),
                client_key: Some("not a key".into()),
                ..EndpointTls::default()
            },
            "tls.client_key",
        ),
        (
            EndpointTls {
                client_cert: Some(cert.clone()),
                client_key: Some(other_key),
                ..EndpointTls::default()
            },
            "tls.client_key",
        ),
    ];
    for (tls, field) in cases {
        let err = HttpTransport::new(endpoint("https://127.0.0.1:1/".into(), Some(tls)), client())
            .unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(!err.reason.contains("BEGIN"), "{err}");
    }
    let err = HttpTransport::new(
        endpoint(
            "http://127.0.0.1:1/".into(),
            Some(EndpointTls {
                ca: Some(ca.pem()),
                ..EndpointTls::default()
            }),
        ),
        client(),
    )
    .unwrap_err();
    assert_eq!(err.field, "tls");
}

/// A client-credentials token server on 127.0.0.1: checks the client's
/// Basic credentials and issues `tok-1`, `tok-2`, ... valid for
/// `lifetime_s` seconds.
struct TokenServer {
    addr: SocketAddr,
    issued: Arc<AtomicU64>,
    forms: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenServer {
    async fn start(lifetime_s: u64) -> TokenServer {
        use base64::Engine as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issued = Arc::new(AtomicU64::new(0));
        let lifetime = Arc::new(AtomicU64::new(lifetime_s));
        let forms = Arc::new(Mutex::new(Vec::new()));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("dispatcher:s3cret%2Fvalue")
        );
        let task = tokio::spawn({
            let (issued, lifetime, forms) = (issued.clone(), lifetime.clone(), forms.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (issued, lifetime, forms, expected) = (
                        issued.clone(),
                        lifetime.clone(),
                        forms.clone(),
                        expected.clone(),
                    );
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (issued, lifetime, forms, expected) = (
                            issued.clone(),
                            lifetime.clone(),
                            forms.clone(),
                            expected.clone(),
                        );
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            forms
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                            let (status, body) = if auth != expected {
                                (401, r#"{"error":"invalid_client"}"#.to_owned())
                            } else {
                                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                                (
                                    200,
                                    format!(
                                        r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{}}}"#,
                                        lifetime.load(Ordering::SeqCst)
                                    ),
                                )
                            };
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        TokenServer {
            addr,
            issued,
            forms,
            task,
        }
    }

    fn settings(&self) -> OAuth2Settings {
        OAuth2Settings {
            token_url: format!("http://{}/oauth/token", self.addr),
            client_id: "dispatcher".into(),
            client_secret: "s3cret/value".into(),
            scopes: vec!["webhooks.write".into(), "events".into()],
            auth_method: Default::default(),
        }
    }

    fn issued(&self) -> u64 {
        self.issued.load(Ordering::SeqCst)
    }
}

/// A receiver that accepts only the tokens in `valid`.
async fn receiver(valid: Arc<Mutex<HashSet<String>>>) -> TlsServer {
    let ca = RECEIVER_CA.get_or_init(|| Ca::new("receiver CA"));
    TlsServer::start(
        ca,
        None,
        Arc::new(move |seen: &Seen| {
            let token = seen
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "));
            match token {
                Some(t) if valid.lock().unwrap().contains(t) => 200,
                _ => 401,
            }
        }),
    )
    .await
}

static RECEIVER_CA: std::sync::OnceLock<Ca> = std::sync::OnceLock::new();

fn oauth_endpoint(url: String, oauth2: OAuth2Settings) -> HttpEndpointConfig {
    HttpEndpointConfig {
        oauth2: Some(oauth2),
        ..endpoint(
            url,
            Some(EndpointTls {
                ca: Some(RECEIVER_CA.get().unwrap().pem()),
                ..EndpointTls::default()
            }),
        )
    }
}

#[tokio::test]
async fn oauth2_tokens_are_cached_then_refreshed_when_they_expire() {
    let tokens = TokenServer::start(3600).await;
    let valid = Arc::new(Mutex::new(HashSet::from([
        "tok-1".to_owned(),
        "tok-2".to_owned(),
    ])));
    let server = receiver(valid).await;
    let transport =
        HttpTransport::new(oauth_endpoint(server.url(), tokens.settings()), client()).unwrap();

    for _ in 0..5 {
        assert_eq!(
            transport.send(&delivery()).await,
            Outcome::Delivered { status: Some(200) }
        );
    }
    assert_eq!(tokens.issued(), 1, "one token for five sends");
    let form = tokens.forms.lock().unwrap()[0].clone();
    assert_eq!(
        form,
        "grant_type=client_credentials&scope=webhooks.write+events"
    );
    assert!(server
        .seen()
        .iter()
        .all(|s| s.authorization.as_deref() == Some("Bearer tok-1")));

    // A token that lives two seconds is used until it is about to expire
    // (refreshed at 1.5 s), then replaced.
    let short = TokenServer::start(2).await;
    let transport =
        HttpTransport::new(oauth_endpoint(server.url(), short.settings()), client()).unwrap();
    assert!(matches!(
        transport.send(&delivery()).await,
        Outcome::Delivered { .. }
    ));
    assert!(matches!(
        transport.send(&delivery()).await,
        Outcome::Delivered { .. }
    ));
    assert_eq!(short.issued(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(matches!(
        transport.send(&delivery()).await,
        Outcome::Delivered { .. }
    ));
    assert_eq!(short.issued(), 2, "a new token once the first expired");
    assert_eq!(
        server.seen().last().unwrap().authorization.as_deref(),
        Some("Bearer tok-2")
    );
}

#[tokio::test]
async fn a_401_gets_one_fresh_token_and_one_retry() {
    let tokens = TokenServer::start(3600).await;
    let valid = Arc::new(Mutex::new(HashSet::from(["tok-1".to_owned()])));
    let server = receiver(valid.clone()).await;
    let transport =
        HttpTransport::new(oauth_endpoint(server.url(), tokens.settings()), client()).unwrap();
    assert!(matches!(
        transport.send(&delivery()).await,
        Outcome::Delivered { .. }
    ));

    // The receiver revokes tok-1 and accepts tok-2: the next send gets a
    // 401, fetches tok-2 and succeeds, within one send.
    *valid.lock().unwrap() = HashSet::from(["tok-2".to_owned()]);
    assert_eq!(
        transport.send(&delivery()).await,
        Outcome::Delivered { status: Some(200) }
    );
    assert_eq!(tokens.issued(), 2);
    let seen: Vec<_> = server
        .seen()
        .into_iter()
        .map(|s| s.authorization.unwrap())
        .collect();
    assert_eq!(seen, ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]);

    // A receiver that refuses every token: one refresh, then the 401 stands.
    valid.lock().unwrap().clear();
    let outcome = transport.send(&delivery()).await;
    assert_eq!(outcome.status(), Some(401), "{outcome:?}");
    assert_eq!(tokens.issued(), 3, "exactly one more token, no loop");
    let Outcome::Permanent { reason, .. } = outcome else {
        panic!()
    };
    assert!(!reason.contains("tok-"), "{reason}");
}

#[tokio::test]
async fn a_refused_client_is_a_retry_that_names_no_secret() {
    let tokens = TokenServer::start(3600).await;
    let server = receiver(Arc::new(Mutex::new(HashSet::new()))).await;
    let mut settings = tokens.settings();
    settings.client_secret = "wrong-secret-value".into();
    let transport = HttpTransport::new(oauth_endpoint(server.url(), settings), client()).unwrap();
    let outcome = transport.send(&delivery()).await;
    let Outcome::Retry { reason, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("OAuth2 token request: HTTP 401"),
        "{reason}"
    );
    assert!(!reason.contains("wrong-secret"), "{reason}");
    assert!(server.seen().is_empty(), "nothing sent without a token");
}

/// The token URL is checked by the same SSRF guard as endpoint URLs, and
/// plain http is refused for it as for any secret.
#[tokio::test]
async fn the_token_url_goes_through_the_ssrf_guard() {
    let strict = HttpClient::new(HttpClientOptions {
        native_roots: false,
        ..HttpClientOptions::default()
    })
    .unwrap();
    let settings = |url: &str| OAuth2Settings {
        token_url: url.into(),
        client_id: "id".into(),
        client_secret: "secret".into(),
        scopes: Vec::new(),
        auth_method: Default::default(),
    };
    for (url, words) in [
        ("https://169.254.169.254/token", "metadata"),
        ("https://[fd00:ec2::254]/token", "metadata"),
        ("https://10.0.0.5/token", "private"),
        ("http://auth.example/token", "plain http"),
    ] {
        let config = HttpEndpointConfig {
            oauth2: Some(settings(url)),
            ..endpoint("https://hooks.example/in".into(), None)
        };
        let err = HttpTransport::new(config, strict.clone()).unwrap_err();
        assert_eq!(err.field, "oauth2.token_url", "{url}");
        assert!(err.reason.contains(words), "{url}: {err}");
    }
    // A name is checked when it resolves: `localhost` is loopback.
    let config = HttpEndpointConfig {
        oauth2: Some(settings("https://localhost:1/token")),
        ..endpoint("https://8.8.8.8/in".into(), None)
    };
    let transport = HttpTransport::new(config, strict).unwrap();
    let outcome = transport.send(&delivery()).await;
    let reason = format!("{outcome:?}");
    assert!(reason.contains("SSRF"), "{reason}");
}
