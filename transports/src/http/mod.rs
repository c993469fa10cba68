//! The HTTP webhook transport.
//!
//! [`HttpTransport`] turns one [`Delivery`] into one `POST` to one endpoint,
//! in the wire format of `DESIGN.md` ("HTTP webhook wire format"), and
//! classifies what came back into an [`Outcome`]. It owns the endpoint's
//! settings (URL, secrets, timeout, static headers), validated once at
//! construction into ready-to-send header values. What to do with an outcome
//! (retry, park, disable) is the dispatcher's policy, not decided here.
//!
//! Submodules:
//! - [`client`]: the shared connection pool ([`HttpClient`]);
//! - [`signing`]: Standard Webhooks signatures;
//! - [`ssrf`]: which addresses may be reached.
//!
//! Headers of every request:
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | `application/json` |
//! | `User-Agent` | `webhook-dispatcher/<version>` |
//! | `X-Webhook-Event` | the event type |
//! | `X-Webhook-Delivery-Id` | the stable delivery id |
//! | `X-Webhook-Secret` | `shared_secret`, or the first secret when `send_secret_header` and it is not a `whsec_` signing key |
//! | `webhook-id`, `webhook-timestamp`, `webhook-signature` | Standard Webhooks, when a `whsec_` secret exists |
//! | `traceparent` | the event's W3C trace context, when it has one |
//! | configured `headers` | verbatim |
//! | `Authorization` | `Bearer <token>` from the endpoint's OAuth2 token URL, when `oauth2` is set |

pub mod client;
pub mod oauth2;
pub mod signing;
pub mod ssrf;
pub mod tls;

pub use client::{HttpClient, HttpClientError, HttpClientOptions};
pub use oauth2::{AuthMethod, OAuth2Settings};
pub use tls::EndpointTls;

use std::error::Error as StdError;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Scheme, Uri};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::{BoxFuture, Delivery, Event, Outcome, Transport};
use signing::{Signer, SigningKey, SECRET_PREFIX};
use ssrf::{RefusedAddress, ResolveError};

/// The default bound on one send, as the seeds promise receivers (10 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest accepted timeout: far beyond any sensible webhook, and low
/// enough that deadlines computed from it can never overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Most of a non-2xx body read for the failure reason.
const ERROR_BODY_LIMIT: usize = 4 * 1024;
/// Most of a 2xx body read (and dropped) so that the connection can go back
/// to the pool; past this the connection is closed instead.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Longest body or `Location` excerpt in a reason, in characters.
const EXCERPT_CHARS: usize = 200;

const USER_AGENT: &str = concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION"));

static X_WEBHOOK_EVENT: HeaderName = HeaderName::from_static("x-webhook-event");
static X_WEBHOOK_DELIVERY_ID: HeaderName = HeaderName::from_static("x-webhook-delivery-id");
static X_WEBHOOK_SECRET: HeaderName = HeaderName::from_static("x-webhook-secret");
static WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
static WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
static WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Headers a configuration may not set: the ones this transport writes, and
/// the ones that frame the message or the connection.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "x-webhook-event",
    "x-webhook-delivery-id",
    "x-webhook-secret",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// One HTTP endpoint's settings, as the dispatcher's config provides them.
#[derive(Clone)]
pub struct HttpEndpointConfig {
    /// `http://` or `https://` URL, without credentials.
    pub url: String,
    /// Active secrets, newest first. `whsec_<base64>` ones sign requests
    /// (Standard Webhooks); the first one, whatever its form, is what
    /// `X-Webhook-Secret` carries.
    pub secrets: Vec<String>,
    /// Send the first secret verbatim as `X-Webhook-Secret`, as the seeds'
    /// receivers check it. Refused when that secret is a `whsec_` signing
    /// key: anyone who sees the header could then forge signatures.
    pub send_secret_header: bool,
    /// A shared secret for `X-Webhook-Secret`, separate from the signing
    /// keys: what to use when a receiver checks both.
    pub shared_secret: Option<String>,
    /// Bound on one whole exchange: connect, send, response, body.
    pub timeout: Duration,
    /// Static extra headers, sent verbatim on every request.
    pub headers: Vec<(String, String)>,
    /// The endpoint's own TLS: a private CA, a client certificate (mTLS).
    pub tls: Option<EndpointTls>,
    /// OAuth2 client credentials: a bearer token on every request.
    pub oauth2: Option<OAuth2Settings>,
}

impl Default for HttpEndpointConfig {
    fn default() -> Self {
        HttpEndpointConfig {
            url: String::new(),
            secrets: Vec::new(),
            send_secret_header: false,
            shared_secret: None,
            timeout: DEFAULT_TIMEOUT,
            headers: Vec::new(),
            tls: None,
            oauth2: None,
        }
    }
}

impl fmt::Debug for HttpEndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs can carry tokens and header values credentials: show shapes only.
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpEndpointConfig")
            .field("url", &"[redacted]")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("send_secret_header", &self.send_secret_header)
            .field(
                "shared_secret",
                &self.shared_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("timeout", &self.timeout)
            .field("headers", &header_names)
            .field("tls", &self.tls)
            .field("oauth2", &self.oauth2)
            .finish()
    }
}

/// An invalid endpoint setting: `field` is `url`, `timeout`, `secrets[i]`
/// (0-based) or `headers.<Name>`; `reason` says what is wrong without
/// repeating secret or header values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct HttpConfigError {
    pub field: String,
    pub reason: String,
}

impl HttpConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> HttpConfigError {
        HttpConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Sends deliveries to one HTTP endpoint. Cheap to share behind an `Arc`.
pub struct HttpTransport {
    client: HttpClient,
    uri: Uri,
    timeout: Duration,
    /// Headers identical on every request, built once.
    fixed_headers: Box<[(HeaderName, HeaderValue)]>,
    /// Present when at least one `whsec_` secret exists.
    signer: Option<Signer>,
    /// Secret texts scrubbed from every failure reason (a receiver may echo
    /// a header back in its error body).
    redactions: Box<[Box<str>]>,
    /// The endpoint's token source, with `oauth2`.
    oauth2: Option<oauth2::OAuth2>,
}

impl HttpTransport {
    /// Validate `config` and prepare everything that does not change per send.
    pub fn new(
        config: HttpEndpointConfig,
        client: HttpClient,
    ) -> Result<HttpTransport, HttpConfigError> {
        let uri = validate_url(&config.url, &client)?;
        if config.timeout.is_zero() || config.timeout > MAX_TIMEOUT {
            return Err(HttpConfigError::new(
                "timeout",
                format!("must be greater than zero and at most {MAX_TIMEOUT:?}"),
            ));
        }

        let mut keys = Vec::new();
        let mut redactions: Vec<Box<str>> = Vec::new();
        for (index, secret) in config.secrets.iter().enumerate() {
            let field = || format!("secrets[{index}]");
            if secret.is_empty() {
                return Err(HttpConfigError::new(field(), "is empty"));
            }
            if let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) {
                let key = SigningKey::from_whsec(secret).map_err(|e| {
                    HttpConfigError::new(field(), format!("is not whsec_<base64>: {e}"))
                })?;
                keys.push(key);
                // The key part alone also covers echoes of the full secret.
                redactions.push(encoded.into());
            } else {
                redactions.push(secret.as_str().into());
            }
        }
        let signer = (!keys.is_empty()).then(|| Signer::from_keys(keys));

        let mut fixed = vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::USER_AGENT, HeaderValue::from_static(USER_AGENT)),
        ];
        let header_secret = match (&config.shared_secret, config.send_secret_header) {
            (Some(shared), _) => {
                if shared.is_empty() {
                    return Err(HttpConfigError::new("shared_secret", "is empty"));
                }
                if shared.starts_with(SECRET_PREFIX) {
                    return Err(HttpConfigError::new(
                        "shared_secret",
                        "is a whsec_ signing key: sent in a header, it would let anyone who sees \
                         the header forge signatures; use a separate value",
                    ));
                }
                redactions.push(shared.as_str().into());
                Some(("shared_secret", shared.as_str()))
            }
            (None, true) => match config.secrets.first() {
                Some(first) if first.starts_with(SECRET_PREFIX) => {
                    return Err(HttpConfigError::new(
                        "send_secret_header",
                        "would send the whsec_ signing key itself in X-Webhook-Secret, letting \
                         anyone who sees the header forge signatures; set `shared_secret` to a \
                         separate value for the header instead",
                    ))
                }
                Some(first) => Some(("secrets[0]", first.as_str())),
                None => None,
            },
            (None, false) => None,
        };
        if let Some((field, secret)) = header_secret {
            if uri.scheme() == Some(&Scheme::HTTP) && !client.allow_plaintext_secrets() {
                return Err(HttpConfigError::new(
                    "url",
                    "is plain http://, which would send X-Webhook-Secret in clear: use https:// \
                     (http.allow_plaintext_secrets is for development receivers)",
                ));
            }
            let mut value = HeaderValue::from_str(secret).map_err(|_| {
                HttpConfigError::new(
                    field,
                    "cannot be sent as X-Webhook-Secret: contains characters not allowed in a header",
                )
            })?;
            // Keeps it out of HTTP/2 header compression tables and Debug output.
            value.set_sensitive(true);
            fixed.push((X_WEBHOOK_SECRET.clone(), value));
        }
        for (name, value) in &config.headers {
            fixed.push(validate_header(name, value)?);
            // Configured values are credentials often enough (Authorization,
            // API keys) that a receiver echoing one back must not put it in
            // a log or a dead letter. The credential after a scheme
            // (`Bearer <token>`) is redacted on its own too, since echoes
            // often quote only the token.
            redactions.extend(header_redactions(value));
        }

        let oauth2 = match config.oauth2 {
            None => None,
            Some(settings) => {
                if config
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                {
                    return Err(HttpConfigError::new(
                        "headers.Authorization",
                        "is set by oauth2: configure one or the other",
                    ));
                }
                if uri.scheme() == Some(&Scheme::HTTP) && !client.allow_plaintext_secrets() {
                    return Err(HttpConfigError::new(
                        "url",
                        "is plain http://, which would send the OAuth2 token in clear: use https:// \
                         (http.allow_plaintext_secrets is for development receivers)",
                    ));
                }
                // The token server is not the receiver: it gets the shared
                // client's TLS, not the endpoint's private CA.
                Some(oauth2::OAuth2::new(settings, client.clone())?)
            }
        };
        let client = match &config.tls {
            Some(tls) => {
                if uri.scheme() != Some(&Scheme::HTTPS) {
                    return Err(HttpConfigError::new("tls", "is for https:// URLs only"));
                }
                client.for_tls(tls)?
            }
            None => client,
        };
        // Longest first, so a value is not left half-scrubbed by a part of it.
        redactions.sort_by_key(|r| std::cmp::Reverse(r.len()));
        Ok(HttpTransport {
            client,
            uri,
            timeout: config.timeout,
            fixed_headers: fixed.into_boxed_slice(),
            signer,
            redactions: redactions.into_boxed_slice(),
            oauth2,
        })
    }

    /// The bound on one send.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The request for one attempt. Per-send work is limited to what varies:
    /// the ids, the timestamp and the signature over them.
    fn build_request(&self, delivery: &Delivery) -> Result<Request<Full<Bytes>>, &'static str> {
        let mut request = Request::new(Full::new(delivery.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();

        let headers = request.headers_mut();
        headers.reserve(self.fixed_headers.len() + 7);
        for (name, value) in self.fixed_headers.iter() {
            headers.append(name.clone(), value.clone());
        }

        let event_type = shared_header_value(&delivery.event, delivery.event.event_type())
            .ok_or("the event type is not a valid header value")?;
        headers.insert(X_WEBHOOK_EVENT.clone(), event_type);

        let mut id_buf = [0u8; 36];
        let id = delivery.id.encode(&mut id_buf);
        let id_value =
            HeaderValue::from_str(id).map_err(|_| "the delivery id is not a valid header value")?;
        headers.insert(X_WEBHOOK_DELIVERY_ID.clone(), id_value.clone());

        if let Some(signer) = &self.signer {
            // Signed at send time so that every attempt carries a fresh timestamp.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let timestamp = HeaderValue::from(now);
            let timestamp_text = timestamp.to_str().unwrap_or_default();
            let signature = signer.sign(id, timestamp_text, &delivery.body);
            let signature = HeaderValue::try_from(signature)
                .map_err(|_| "the signature is not a valid header value")?;
            headers.insert(WEBHOOK_ID.clone(), id_value);
            headers.insert(WEBHOOK_TIMESTAMP.clone(), timestamp);
            headers.insert(WEBHOOK_SIGNATURE.clone(), signature);
        }

        if let Some(traceparent) = &delivery.event.traceparent {
            // A malformed trace context is the producer's problem; the
            // delivery goes out without it rather than not at all.
            if let Ok(value) = HeaderValue::from_maybe_shared(traceparent.clone()) {
                headers.insert(TRACEPARENT.clone(), value);
            }
        }
        Ok(request)
    }

    async fn send_once(&self, delivery: &Delivery) -> Outcome {
        let deadline = tokio::time::Instant::now() + self.timeout;
        // With OAuth2, a 401 may only mean the token was revoked or expired
        // early: one more try with a fresh token, never more.
        let mut refreshed = false;
        loop {
            let mut request = match self.build_request(delivery) {
                Ok(request) => request,
                Err(reason) => {
                    return Outcome::Permanent {
                        status: None,
                        reason: reason.to_owned(),
                        disable_endpoint: false,
                    }
                }
            };
            let bearer = match &self.oauth2 {
                None => None,
                Some(oauth2) => match oauth2.token(deadline).await {
                    Ok(bearer) => {
                        request
                            .headers_mut()
                            .insert(header::AUTHORIZATION, bearer.header().clone());
                        Some(bearer)
                    }
                    Err(outcome) => return self.scrub(outcome),
                },
            };
            let outcome = self.exchange(request, deadline).await;
            if let (Some(oauth2), Some(bearer)) = (&self.oauth2, &bearer) {
                if outcome.status() == Some(401) {
                    oauth2.reject(bearer);
                    if !refreshed {
                        refreshed = true;
                        continue;
                    }
                }
            }
            return outcome;
        }
    }

    /// One request and its classified answer, by `deadline`.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        deadline: tokio::time::Instant,
    ) -> Outcome {
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return self.scrub(request_error(&error)),
            Err(_) => {
                return Outcome::Retry {
                    status: None,
                    reason: format!("timed out after {:?}", self.timeout),
                    retry_after: None,
                }
            }
        };

        let (parts, mut body) = response.into_parts();
        if parts.status.is_success() {
            // The receiver has accepted; the body only matters for reusing
            // the connection, so its read is bounded and its outcome ignored.
            let _ = tokio::time::timeout_at(deadline, drain(&mut body, DRAIN_LIMIT)).await;
            return Outcome::Delivered {
                status: Some(parts.status.as_u16()),
            };
        }

        let mut excerpt = Vec::new();
        // A body that stalls past the deadline still leaves the status (and
        // whatever arrived) to classify by.
        let _ = tokio::time::timeout_at(
            deadline,
            read_prefix(&mut body, &mut excerpt, ERROR_BODY_LIMIT),
        )
        .await;
        let body_text = self.redact(&String::from_utf8_lossy(&excerpt));
        let outcome =
            classify_response(parts.status, &parts.headers, &body_text, SystemTime::now());
        self.scrub(outcome)
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in self.redactions.iter() {
            if out.contains(&**secret) {
                out = out.replace(&**secret, "[redacted]");
            }
        }
        match &self.oauth2 {
            Some(oauth2) => oauth2.redact(&out),
            None => out,
        }
    }

    /// Token requests made for this endpoint (OAuth2), for tests.
    pub fn oauth2_fetches(&self) -> Option<u64> {
        self.oauth2.as_ref().map(|o| o.fetches())
    }

    /// Remove secrets from an outcome's reason, whatever put them there.
    fn scrub(&self, outcome: Outcome) -> Outcome {
        outcome.map_reason(|reason| self.redact(&reason))
    }
}

impl Transport for HttpTransport {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(self.send_once(delivery))
    }

    /// Connections stay in the shared client (an endpoint's own `tls`
    /// client too: it is cached by identity), so only an OAuth2 token
    /// would be lost.
    fn rebuilt_cheaply(&self) -> bool {
        self.oauth2.is_none()
    }
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("host", &self.uri.host().unwrap_or_default())
            .field("timeout", &self.timeout)
            .field("signing_keys", &self.signer.as_ref().map_or(0, Signer::len))
            .finish_non_exhaustive()
    }
}

/// What of a configured header value to scrub from failure reasons. Very
/// short values (`1`, `on`) are left alone: scrubbing them would mangle
/// every reason while hiding nothing worth hiding.
fn header_redactions(value: &str) -> Vec<Box<str>> {
    const MIN: usize = 4;
    let mut out = Vec::new();
    let value = value.trim();
    if value.len() >= MIN {
        out.push(value.into());
    }
    if let Some((_, credential)) = value.split_once(' ') {
        let credential = credential.trim();
        if credential.len() >= MIN {
            out.push(credential.into());
        }
    }
    out
}

/// Parse and check the endpoint URL. Literal IP hosts are checked here
/// because hyper-util's connector never passes them to the resolver; the
/// URL is fixed for the transport's life, so once is enough.
fn validate_url(url: &str, client: &HttpClient) -> Result<Uri, HttpConfigError> {
    let err = |reason: String| HttpConfigError::new("url", reason);
    // The URL itself is never echoed: it may carry a token in its path.
    let uri: Uri = url
        .parse()
        .map_err(|e| err(format!("not a valid URL: {e}")))?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
        Some(s) => return Err(err(format!("scheme {s:?} is not http or https"))),
        None => return Err(err("not an absolute http:// or https:// URL".into())),
    }
    let authority = uri.authority().ok_or_else(|| err("has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(err(
            "credentials in the URL are not supported; use headers.Authorization".into(),
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(err("has no host".into()));
    }
    ssrf::check_literal_host(host, client.policy()).map_err(|refused| {
        err(format!(
            "host {host} is {}, which is not allowed",
            refused.reason
        ))
    })?;
    Ok(uri)
}

fn validate_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), HttpConfigError> {
    let field = || format!("headers.{}", name.escape_debug());
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| HttpConfigError::new(field(), "is not a valid header name"))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(HttpConfigError::new(
            field(),
            "is set by the dispatcher and cannot be configured",
        ));
    }
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        HttpConfigError::new(field(), "value contains characters not allowed in a header")
    })?;
    // Configured values are often credentials (Authorization, API keys).
    value.set_sensitive(true);
    Ok((parsed, value))
}

/// A header value that shares the event's record bytes when `text` is a
/// slice of them (it is, for the event type), else a copy.
fn shared_header_value(event: &Event, text: &str) -> Option<HeaderValue> {
    let payload = event.payload();
    let base = payload.as_ptr() as usize;
    let start = text.as_ptr() as usize;
    if start >= base && start + text.len() <= base + payload.len() {
        let offset = start - base;
        HeaderValue::from_maybe_shared(payload.slice(offset..offset + text.len())).ok()
    } else {
        HeaderValue::from_str(text).ok()
    }
}

/// Read and drop up to `limit` bytes of body; true when it ended in time.
async fn drain(body: &mut Incoming, limit: usize) -> bool {
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len();
                    if seen > limit {
                        return false;
                    }
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Append up to `limit` bytes of body to `out`; stop at the limit, at the
/// end, or on an error (what arrived so far stays in `out`).
async fn read_prefix(body: &mut Incoming, out: &mut Vec<u8>, limit: usize) {
    while out.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = limit - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => return,
        }
    }
}

/// Classify a response that is not a 2xx. `body` is an already-redacted
/// excerpt source; `now` anchors HTTP-date `Retry-After` values.
fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    now: SystemTime,
) -> Outcome {
    let code = status.as_u16();
    if status.is_redirection() {
        let target = headers
            .get(header::LOCATION)
            .map(|v| sanitize(&String::from_utf8_lossy(v.as_bytes())));
        return Outcome::Permanent {
            status: Some(code),
            reason: match target {
                Some(target) if !target.is_empty() => {
                    format!("redirect not followed: Location {target}")
                }
                _ => "redirect not followed: no Location".to_owned(),
            },
            disable_endpoint: false,
        };
    }

    let reason = status_reason(status, body);
    match code {
        200..=299 => Outcome::Delivered { status: Some(code) },
        410 => Outcome::Permanent {
            status: Some(code),
            reason,
            disable_endpoint: true,
        },
        // A request to slow down, not a failure (Standard Webhooks: honour
        // Retry-After on 429, 502, 503 and 504): the endpoint waits as a
        // whole, no attempt is spent, the breaker does not count it.
        429 => Outcome::Throttled {
            status: Some(code),
            reason,
            retry_after: retry_after(headers, now).unwrap_or(DEFAULT_THROTTLE_WAIT),
        },
        502..=504 if retry_after(headers, now).is_some() => Outcome::Throttled {
            status: Some(code),
            reason,
            retry_after: retry_after(headers, now).unwrap_or(DEFAULT_THROTTLE_WAIT),
        },
        408 | 500..=599 => Outcome::Retry {
            status: Some(code),
            reason,
            retry_after: retry_after(headers, now),
        },
        400..=499 => Outcome::Permanent {
            status: Some(code),
            reason,
            disable_endpoint: false,
        },
        // 1xx that hyper passed on, or codes outside the defined classes.
        _ => Outcome::Retry {
            status: Some(code),
            reason,
            retry_after: None,
        },
    }
}

/// `HTTP 503 Service Unavailable: <excerpt>`.
fn status_reason(status: StatusCode, body: &str) -> String {
    let mut reason = format!("HTTP {}", status.as_u16());
    if let Some(text) = status.canonical_reason() {
        reason.push(' ');
        reason.push_str(text);
    }
    let excerpt = sanitize(body);
    if !excerpt.is_empty() {
        reason.push_str(": ");
        reason.push_str(&excerpt);
    }
    reason
}

/// How long a 429 without `Retry-After` makes the endpoint wait. Short: the
/// lane also lowers its concurrency on every such answer, which is what
/// finds the receiver's pace.
pub const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);

fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|v| parse_retry_after(v, now))
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3). A date
/// in the past means "now"; anything unparseable is ignored.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A single-line excerpt of at most [`EXCERPT_CHARS`] characters: control
/// and invisible formatting characters removed, whitespace collapsed, so a
/// receiver cannot forge log lines or hide text.
fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(EXCERPT_CHARS * 2));
    let mut count = 0usize;
    let mut pending_space = false;
    for c in text.chars() {
        if is_invisible(c) {
            continue;
        }
        if c.is_whitespace() || c.is_control() {
            pending_space = count > 0;
            continue;
        }
        let needed = if pending_space { 2 } else { 1 };
        if count + needed > EXCERPT_CHARS {
            // Replace the last character with an ellipsis: still ≤ the limit.
            out.pop();
            out.push('…');
            return out;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
        count += needed;
    }
    out
}

/// Zero-width and bidirectional formatting characters.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Classify a failure to get a response at all.
pub(crate) fn request_error(error: &hyper_util::client::legacy::Error) -> Outcome {
    if let Some(refused) = find_refusal(error) {
        return Outcome::Permanent {
            status: None,
            reason: format!("refused by the SSRF guard: {refused}"),
            disable_endpoint: false,
        };
    }
    Outcome::Retry {
        status: None,
        reason: sanitize(&error_chain(error)),
        retry_after: None,
    }
}

fn find_refusal<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e RefusedAddress> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<RefusedAddress>() {
            return Some(refused);
        }
        if let Some(ResolveError::Refused(refused)) = e.downcast_ref::<ResolveError>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

/// `outer: cause: root cause`, skipping levels that only repeat their cause.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests;
