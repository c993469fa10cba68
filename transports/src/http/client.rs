//! The shared HTTP client every HTTP endpoint sends through.
//!
//! This module owns connection management: one hyper-util connection pool
//! (keep-alive, HTTP/2 multiplexing where the server negotiates it by ALPN),
//! TLS with rustls on the `ring` provider, and the SSRF guard wired in as the
//! connector's DNS resolver. It does not own per-endpoint settings (URL,
//! secrets, timeout): those live in [`super::HttpTransport`], which holds a
//! clone of the client. Cloning is cheap (the pool is shared).
//!
//! Redirects are never followed: hyper's client does not, and nothing here
//! adds it, so a 3xx reaches the transport as a plain response.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ipnet::IpNet;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::ssrf::{AddressPolicy, GuardedResolver};
use super::tls::EndpointTls;
use super::HttpConfigError;

/// The connector stack: TCP (with the guarded resolver), then TLS for https.
type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;

/// One connection pool with its TLS configuration.
type Pool = Client<Connector, Full<Bytes>>;

/// Settings of the shared client; see [`HttpClientOptions::default`].
#[derive(Clone)]
pub struct HttpClientOptions {
    /// Allow endpoints on every non-public address but link-local and
    /// metadata ones (deprecated: list networks in `allowed_networks`).
    /// Off by default: endpoint URLs come from customers.
    pub allow_private_networks: bool,
    /// Non-public networks endpoints may be on (`10.20.0.0/16`). Link-local
    /// and metadata addresses stay refused whatever is listed.
    pub allowed_networks: Vec<IpNet>,
    /// Let secrets (`X-Webhook-Secret`, OAuth2 tokens) go over plain
    /// `http://`: for development receivers only.
    pub allow_plaintext_secrets: bool,
    /// Bound on establishing one TCP connection (per address tried).
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// How many idle connections are kept per host (HTTP/1.1; one HTTP/2
    /// connection carries many requests at once).
    pub pool_max_idle_per_host: usize,
    /// TCP keep-alive probes on open connections, to notice dead peers.
    pub tcp_keepalive: Option<Duration>,
    /// Trust the operating system's root certificates.
    pub native_roots: bool,
    /// Further trusted roots (a private CA, or a test server's certificate).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for HttpClientOptions {
    fn default() -> Self {
        HttpClientOptions {
            allow_private_networks: false,
            allowed_networks: Vec::new(),
            allow_plaintext_secrets: false,
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 32,
            tcp_keepalive: Some(Duration::from_secs(60)),
            native_roots: true,
            extra_roots: Vec::new(),
        }
    }
}

impl fmt::Debug for HttpClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClientOptions")
            .field("allow_private_networks", &self.allow_private_networks)
            .field("allowed_networks", &self.allowed_networks)
            .field("allow_plaintext_secrets", &self.allow_plaintext_secrets)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("native_roots", &self.native_roots)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

/// Why the shared client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("extra_roots[{index}] is not a usable root certificate: {source}")]
    ExtraRoot {
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration failed: {0}")]
    Tls(#[source] rustls::Error),
}

/// One shared, cheaply clonable HTTP(S) client for all HTTP endpoints.
///
/// Endpoints with their own TLS (a private CA, a client certificate) use
/// [`HttpClient::for_tls`]: a client with the same settings and SSRF guard
/// but its own connection pool, one per distinct identity.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
    policy: AddressPolicy,
    allow_private_networks: bool,
    allow_plaintext_secrets: bool,
    shared: Arc<Shared>,
}

/// What the clients derived from one [`HttpClient::new`] share.
struct Shared {
    options: HttpClientOptions,
    /// The roots of the default TLS configuration.
    roots: RootCertStore,
    /// Derived clients by identity digest: endpoints with the same identity
    /// share a pool, endpoints with different ones never do.
    by_identity: Mutex<HashMap<[u8; 32], Pool>>,
}

impl HttpClient {
    /// Build the client: TLS roots, connector and pool.
    pub fn new(options: HttpClientOptions) -> Result<HttpClient, HttpClientError> {
        let policy = if options.allow_private_networks {
            AddressPolicy::allowing_all()
        } else {
            AddressPolicy::allowing(options.allowed_networks.iter().copied())
        };
        let roots = root_store(&options)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(HttpClientError::Tls)?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let inner = build_client(&options, &policy, tls);
        Ok(HttpClient {
            inner,
            allow_private_networks: options.allow_private_networks,
            allow_plaintext_secrets: options.allow_plaintext_secrets,
            policy,
            shared: Arc::new(Shared {
                options,
                roots,
                by_identity: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// This client with an endpoint's own TLS: its CA instead of the
    /// default roots, its client certificate. Same address policy, timeouts
    /// and pool settings; a pool of its own per identity.
    pub fn for_tls(&self, tls: &EndpointTls) -> Result<HttpClient, HttpConfigError> {
        let key = tls.identity();
        let mut cache = self
            .shared
            .by_identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let inner = match cache.get(&key) {
            Some(inner) => inner.clone(),
            None => {
                let config = tls.client_config(&self.shared.roots)?;
                let inner = build_client(&self.shared.options, &self.policy, config);
                cache.insert(key, inner.clone());
                inner
            }
        };
        Ok(HttpClient {
            inner,
            ..self.clone()
        })
    }

    /// Whether the deprecated switch that opens every non-public address is on.
    pub fn allow_private_networks(&self) -> bool {
        self.allow_private_networks
    }

    /// Whether secrets may be sent over plain `http://` (development only).
    pub fn allow_plaintext_secrets(&self) -> bool {
        self.allow_plaintext_secrets
    }

    /// Which addresses may be reached.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    pub(crate) fn request(&self, request: http::Request<Full<Bytes>>) -> ResponseFuture {
        self.inner.request(request)
    }
}

/// The connector stack and pool around one TLS configuration.
fn build_client(
    options: &HttpClientOptions,
    policy: &AddressPolicy,
    tls: ClientConfig,
) -> Client<Connector, Full<Bytes>> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone()));
    // The TLS layer above handles `https`; this layer must let it through.
    http.enforce_http(false);
    http.set_connect_timeout(Some(options.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(options.tcp_keepalive);

    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        // Sets ALPN to h2 + http/1.1; plain http stays on HTTP/1.1.
        .enable_http2()
        .wrap_connector(http);

    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(options.pool_idle_timeout)
        .pool_max_idle_per_host(options.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The default trusted roots: the system's (when asked) and the extra ones.
/// The rustls configurations built on them use the `ring` provider chosen
/// explicitly, so the process-wide default provider (if any) does not matter.
fn root_store(options: &HttpClientOptions) -> Result<RootCertStore, HttpClientError> {
    let mut roots = RootCertStore::empty();
    if options.native_roots {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "could not load some native root certificates");
        }
        // Some system bundles carry certificates webpki cannot parse; skip
        // those rather than fail, as rustls-native-certs advises.
        let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
        tracing::debug!(added, ignored, "loaded native root certificates");
    }
    for (index, cert) in options.extra_roots.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|source| HttpClientError::ExtraRoot { index, source })?;
    }
    // Without native roots asked for (validation, which sends nothing:
    // the API checks every endpoint written with such a client), an empty
    // store is expected and not worth a line per check.
    if roots.is_empty() && options.native_roots {
        // Not fatal: plain-http endpoints still work; https ones will fail
        // with a certificate error that names the cause.
        tracing::warn!("no trusted root certificates: https endpoints cannot be verified");
    }
    Ok(roots)
}
