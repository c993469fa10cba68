//! OAuth2 client credentials (RFC 6749 §4.4) for HTTP endpoints: the
//! dispatcher gets an access token from the endpoint's token URL and sends
//! it as `Authorization: Bearer <token>`.
//!
//! - A token is cached until it expires and refreshed ahead of that (a
//!   quarter of its lifetime before, at most a minute), so deliveries rarely
//!   wait for one. If a refresh fails while the old token is still valid,
//!   the old one is used.
//! - One fetch at a time per endpoint: sends that find no valid token wait
//!   for the fetch under way rather than start their own.
//! - A 401 from the receiver drops that token and the send is made once
//!   more with a fresh one (the transport does that).
//! - The token request goes through the same client, so the same SSRF
//!   guard decides where it may go; a token URL over plain `http://` is
//!   refused like any other secret-bearing request.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Scheme, Uri};
use http::{Method, Request};
use http_body_util::Full;
use serde::Deserialize;
use tokio::time::Instant;

use super::{read_prefix, request_error, sanitize, ssrf, HttpClient, HttpConfigError};
use crate::Outcome;

/// Lifetime assumed when the token server does not say (`expires_in` is
/// only RECOMMENDED by RFC 6749).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Refresh this long before expiry at most.
const MAX_REFRESH_AHEAD: Duration = Duration::from_secs(60);
/// Most of a token response read.
const RESPONSE_LIMIT: usize = 64 * 1024;
/// After a failed refresh, how long the still-valid token is used before
/// the next try: the token server is not asked again on every send.
const REFRESH_RETRY: Duration = Duration::from_secs(10);

/// `oauth2:` of an HTTP endpoint.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Settings {
    /// The token endpoint (`https://auth.example.com/oauth/token`).
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Scopes asked for, sent space-separated.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// How the client authenticates: `basic` (HTTP Basic, the default that
    /// RFC 6749 requires servers to support) or `post` (in the form body).
    #[serde(default)]
    pub auth_method: AuthMethod,
}

impl fmt::Debug for OAuth2Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Settings")
            .field("token_url", &"[redacted]")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("scopes", &self.scopes)
            .field("auth_method", &self.auth_method)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    #[default]
    Basic,
    Post,
}

/// A token and when to stop using it.
struct Token {
    /// `Bearer <access token>`, marked sensitive.
    header: HeaderValue,
    /// The access token alone, to scrub from failure reasons.
    secret: Box<str>,
    refresh_at: Instant,
    expires_at: Instant,
}

/// One endpoint's token source.
pub struct OAuth2 {
    client: HttpClient,
    token_uri: Uri,
    /// The form body, built once.
    form: Bytes,
    /// `Basic ...` when the client authenticates with HTTP Basic.
    basic: Option<HeaderValue>,
    client_secret: Box<str>,
    current: Mutex<Option<Arc<Token>>>,
    /// Held while a token is fetched: the single flight.
    fetching: tokio::sync::Mutex<()>,
    /// Token requests made, for tests and metrics.
    fetches: std::sync::atomic::AtomicU64,
}

/// A token handed to one send.
#[derive(Clone)]
pub struct Bearer(Arc<Token>);

impl Bearer {
    pub fn header(&self) -> &HeaderValue {
        &self.0.header
    }
}

impl OAuth2 {
    pub fn new(settings: OAuth2Settings, client: HttpClient) -> Result<OAuth2, HttpConfigError> {
        let field = |name: &str| format!("oauth2.{name}");
        let uri: Uri = settings
            .token_url
            .parse()
            .map_err(|_| HttpConfigError::new(field("token_url"), "is not a valid URL"))?;
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        if !(https || uri.scheme() == Some(&Scheme::HTTP)) {
            return Err(HttpConfigError::new(
                field("token_url"),
                "is not an http:// or https:// URL",
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| HttpConfigError::new(field("token_url"), "has no host"))?;
        if authority.as_str().contains('@') {
            return Err(HttpConfigError::new(
                field("token_url"),
                "must not contain credentials",
            ));
        }
        if !https && !client.allow_plaintext_secrets() {
            return Err(HttpConfigError::new(
                field("token_url"),
                "is plain http://, which would send the client secret in clear: use https:// \
                 (http.allow_plaintext_secrets is for development servers)",
            ));
        }
        ssrf::check_literal_host(authority.host(), client.policy()).map_err(|refused| {
            HttpConfigError::new(
                field("token_url"),
                format!("its host is {}, which is not allowed", refused.reason),
            )
        })?;
        if settings.client_id.is_empty() {
            return Err(HttpConfigError::new(field("client_id"), "is empty"));
        }
        if settings.client_secret.is_empty() {
            return Err(HttpConfigError::new(field("client_secret"), "is empty"));
        }

        let mut form = String::from("grant_type=client_credentials");
        if !settings.scopes.is_empty() {
            form.push_str("&scope=");
            form.push_str(&form_encode(&settings.scopes.join(" ")));
        }
        let basic = match settings.auth_method {
            AuthMethod::Basic => {
                // RFC 6749 §2.3.1: each part form-encoded, then Basic.
                let pair = format!(
                    "{}:{}",
                    form_encode(&settings.client_id),
                    form_encode(&settings.client_secret)
                );
                let mut value = HeaderValue::try_from(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .map_err(|_| HttpConfigError::new(field("client_secret"), "cannot be sent"))?;
                value.set_sensitive(true);
                Some(value)
            }
            AuthMethod::Post => {
                form.push_str("&client_id=");
                form.push_str(&form_encode(&settings.client_id));
                form.push_str("&client_secret=");
                form.push_str(&form_encode(&settings.client_secret));
                None
            }
        };
        Ok(OAuth2 {
            client,
            token_uri: uri,
            form: Bytes::from(form),
            basic,
            client_secret: settings.client_secret.into(),
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetches: Default::default(),
        })
    }

    /// Token requests made so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> Option<Arc<Token>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A token good to send now, fetching one if need be, by `deadline`.
    /// On failure, the outcome to report.
    pub async fn token(&self, deadline: Instant) -> Result<Bearer, Outcome> {
        let now = Instant::now();
        if let Some(t) = self.current().filter(|t| now < t.refresh_at) {
            return Ok(Bearer(t));
        }
        let _flight = match tokio::time::timeout_at(deadline, self.fetching.lock()).await {
            Ok(guard) => guard,
            Err(_) => return Err(retry("timed out waiting for an OAuth2 token".into())),
        };
        // Someone else may have fetched while this one waited.
        let now = Instant::now();
        let held = self.current();
        if let Some(t) = held.clone().filter(|t| now < t.refresh_at) {
            return Ok(Bearer(t));
        }
        match self.fetch(deadline).await {
            Ok(token) => {
                let token = Arc::new(token);
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
                Ok(Bearer(token))
            }
            // Refreshing ahead failed, but the token still works: use it,
            // and try again a little later rather than on every send.
            Err(outcome) => match held.filter(|t| Instant::now() < t.expires_at) {
                Some(t) => {
                    tracing::warn!(reason = %reason_of(&outcome), "OAuth2 token refresh failed; using the current token until it expires");
                    let postponed = Arc::new(Token {
                        header: t.header.clone(),
                        secret: t.secret.clone(),
                        refresh_at: (Instant::now() + REFRESH_RETRY).min(t.expires_at),
                        expires_at: t.expires_at,
                    });
                    *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(postponed.clone());
                    Ok(Bearer(postponed))
                }
                None => Err(outcome),
            },
        }
    }

    /// The receiver refused `bearer` (401): never hand it out again.
    pub fn reject(&self, bearer: &Bearer) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|t| Arc::ptr_eq(t, &bearer.0)) {
            *current = None;
        }
    }

    /// Scrub the client secret and the current token from `text`.
    pub fn redact(&self, text: &str) -> String {
        // A very short secret would mangle every reason while hiding little.
        let mut out = if self.client_secret.len() >= 4 {
            text.replace(&*self.client_secret, "[redacted]")
        } else {
            text.to_owned()
        };
        if let Some(t) = self.current() {
            out = out.replace(&*t.secret, "[redacted]");
        }
        out
    }

    async fn fetch(&self, deadline: Instant) -> Result<Token, Outcome> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = Request::new(Full::new(self.form.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.token_uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(basic) = &self.basic {
            headers.insert(header::AUTHORIZATION, basic.clone());
        }
        let started = Instant::now();
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let outcome = request_error(&e);
                return Err(outcome.map_reason(|r| format!("OAuth2 token request: {r}")));
            }
            Err(_) => return Err(retry("OAuth2 token request timed out".into())),
        };
        let (parts, mut body) = response.into_parts();
        let mut bytes = Vec::new();
        let _ =
            tokio::time::timeout_at(deadline, read_prefix(&mut body, &mut bytes, RESPONSE_LIMIT))
                .await;
        if !parts.status.is_success() {
            let excerpt = sanitize(&self.redact(&String::from_utf8_lossy(&bytes)));
            return Err(retry(format!(
                "OAuth2 token request: HTTP {}: {excerpt}",
                parts.status.as_u16()
            )));
        }
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            #[serde(default)]
            token_type: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|_| {
            retry(
                "OAuth2 token request: the answer is not a token response (JSON with access_token)"
                    .into(),
            )
        })?;
        if answer
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(retry(
                "OAuth2 token request: the token is not a bearer token".into(),
            ));
        }
        let mut header =
            HeaderValue::try_from(format!("Bearer {}", answer.access_token)).map_err(|_| {
                retry("OAuth2 token request: the token is not a valid header value".into())
            })?;
        header.set_sensitive(true);
        let lifetime = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        let ahead = (lifetime / 4).min(MAX_REFRESH_AHEAD);
        Ok(Token {
            header,
            secret: answer.access_token.into(),
            refresh_at: started + lifetime - ahead,
            expires_at: started + lifetime,
        })
    }
}

impl fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2")
            .field("token_host", &self.token_uri.host().unwrap_or_default())
            .finish_non_exhaustive()
    }
}

fn retry(reason: String) -> Outcome {
    Outcome::Retry {
        status: None,
        reason,
        retry_after: None,
    }
}

fn reason_of(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Retry { reason, .. }
        | Outcome::Permanent { reason, .. }
        | Outcome::Throttled { reason, .. }
        | Outcome::Rejected { reason, .. } => reason,
        Outcome::Delivered { .. } => "",
    }
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/d:é"), "a+b%2Bc%2Fd%3A%C3%A9");
        assert_eq!(form_encode("plain-._*"), "plain-._*");
    }
}
