//! The Slack transport: `transport: slack` posts each delivery as a
//! readable message to a Slack incoming webhook, following Slack's rules.
//!
//! This module owns the endpoint's settings ([`SlackSettings`]: the webhook
//! URL, a secret, and an optional [`template`]), the request, and the
//! classification of Slack's answers. Rendering is in [`render`], the
//! per-URL pace in [`pace`].
//!
//! | Slack answers | outcome |
//! |---|---|
//! | 2xx | delivered |
//! | 429 | throttled: wait `Retry-After` (1 s when absent) without spending an attempt; the URL's gate closes meanwhile, then restarts its pace |
//! | 400 (`invalid_payload`, `invalid_blocks`, ...), 413 | rejected: dead-lettered with the rendered message |
//! | 403 (`invalid_token`, `action_prohibited`, ...), 404 (`channel_not_found`, `no_service`, ...), 410 (`channel_is_archived`) | permanent, **endpoint disabled** |
//! | other 4xx, 3xx (not followed) | permanent |
//! | 5xx, timeouts, connection errors | retry |
//!
//! The URL is the webhook's only credential: it never appears in logs,
//! `Debug` output, failure reasons or configuration errors. It must be
//! `https://hooks.slack.com/...` (or GovSlack's `hooks.slack-gov.com`),
//! unless the deployment allows private networks (development and tests
//! against a local fake Slack), where any http(s) URL the SSRF guard allows
//! is accepted. Requests go through the shared [`HttpClient`], so the SSRF
//! guard applies either way.

pub mod pace;
pub mod render;
pub mod template;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Scheme, Uri};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer};

use crate::http::{ssrf, HttpClient};
use crate::registry::{parse_settings, BuildContext, SettingsError, TransportFactory};
use crate::{BoxFuture, Delivery, Outcome, Transport};
use pace::Gate;
pub use template::{Template, TemplateSettings};

/// Hosts of Slack's incoming webhooks (commercial and GovSlack).
const SLACK_HOSTS: &[&str] = &["hooks.slack.com", "hooks.slack-gov.com"];
/// Paths of Slack's webhook kinds (app webhooks, workflow webhooks).
const SLACK_PATHS: &[&str] = &["/services/", "/workflows/", "/triggers/"];
/// Wait when a 429 carries no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most of Slack's answer read: its bodies are short error codes.
const BODY_LIMIT: usize = 1024;
/// Longest error code quoted in a reason.
const CODE_CHARS: usize = 80;

const USER_AGENT: &str = concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION"));

/// The settings of `transport: slack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// The incoming-webhook URL (a secret).
    pub url: SecretUrl,
    /// Replaces the built-in rendering (see [`template`]).
    #[serde(default)]
    pub template: Option<TemplateSettings>,
}

/// A URL that is a credential: `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(pub String);

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretUrl, D::Error> {
        // serde's own messages for a string never quote the value.
        String::deserialize(d).map(SecretUrl)
    }
}

/// `transport: slack`.
pub struct SlackFactory;

impl TransportFactory for SlackFactory {
    fn type_name(&self) -> &'static str {
        "slack"
    }

    fn build(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError> {
        let settings: SlackSettings = parse_settings(settings)?;
        Ok(Arc::new(SlackTransport::new(settings, ctx)?))
    }

    fn validate(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<(), SettingsError> {
        // Everything but taking a share of the URL's gate.
        let settings: SlackSettings = parse_settings(settings)?;
        validate_url(&settings.url.0, ctx)?;
        settings
            .template
            .as_ref()
            .map(Template::parse)
            .transpose()
            .map_err(|(field, reason)| SettingsError::new(field, reason))?;
        Ok(())
    }
}

/// Posts one endpoint's deliveries to one Slack webhook.
pub struct SlackTransport {
    client: HttpClient,
    uri: Uri,
    gate: Arc<Gate>,
    template: Option<Template>,
    timeout: Duration,
    /// The URL's path (the webhook token), scrubbed from every reason.
    secret_path: Box<str>,
}

impl SlackTransport {
    pub fn new(
        settings: SlackSettings,
        ctx: &BuildContext<'_>,
    ) -> Result<SlackTransport, SettingsError> {
        let uri = validate_url(&settings.url.0, ctx)?;
        let template = settings
            .template
            .as_ref()
            .map(Template::parse)
            .transpose()
            .map_err(|(field, reason)| SettingsError::new(field, reason))?;
        let secret_path: Box<str> = uri.path().into();
        Ok(SlackTransport {
            client: ctx.http.clone(),
            gate: pace::gate_for(&uri.to_string()),
            uri,
            template,
            timeout: ctx.timeout,
            secret_path,
        })
    }

    /// The message this transport sends for `delivery`.
    pub fn render(&self, delivery: &Delivery) -> Bytes {
        render::render(delivery, self.template.as_ref())
    }

    async fn send_once(&self, delivery: &Delivery) -> Outcome {
        let start = tokio::time::Instant::now();
        let deadline = start + self.timeout;
        // At most half the timeout waiting for a slot: the other half is
        // for Slack to answer. Past it, wait outside, as throttled.
        if let Err(no) = self.gate.acquire(start + self.timeout / 2).await {
            return Outcome::Throttled {
                status: None,
                reason: "Slack allows 1 message a second per webhook URL: waiting for a slot"
                    .into(),
                retry_after: no.retry_after,
            };
        }

        let body = self.render(delivery);
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));

        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return self.scrub(crate::http::request_error(&error)),
            Err(_) => {
                return Outcome::Retry {
                    status: None,
                    reason: format!("Slack did not answer within {:?}", self.timeout),
                    retry_after: None,
                }
            }
        };
        let (parts, mut body_in) = response.into_parts();
        let mut excerpt = Vec::new();
        // A stalled body still leaves the status to classify by.
        let _ = tokio::time::timeout_at(deadline, read_prefix(&mut body_in, &mut excerpt)).await;
        let code = error_code(&String::from_utf8_lossy(&excerpt));
        let outcome = classify(
            parts.status,
            parts.headers.get(header::RETRY_AFTER),
            &code,
            body,
        );
        match &outcome {
            Outcome::Throttled { retry_after, .. } => self.gate.close_for(*retry_after),
            Outcome::Permanent {
                reason,
                disable_endpoint: true,
                ..
            } => tracing::error!(
                endpoint = %delivery.endpoint_id, status = parts.status.as_u16(), error = %reason,
                "SLACK WEBHOOK REFUSED: the endpoint must be disabled until its URL is fixed"
            ),
            _ => {}
        }
        self.scrub(outcome)
    }

    /// Remove the webhook token from a reason, whatever put it there.
    fn scrub(&self, outcome: Outcome) -> Outcome {
        outcome.map_reason(|reason| {
            if self.secret_path.len() > 1 && reason.contains(&*self.secret_path) {
                reason.replace(&*self.secret_path, "/[redacted]")
            } else {
                reason
            }
        })
    }
}

impl Transport for SlackTransport {
    fn kind(&self) -> &'static str {
        "slack"
    }

    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        Box::pin(self.send_once(delivery))
    }
}

impl fmt::Debug for SlackTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackTransport")
            .field("host", &self.uri.host().unwrap_or_default())
            .field("url", &"[redacted]")
            .field("template", &self.template.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Check the webhook URL. Reasons never quote it: it is the credential.
fn validate_url(url: &str, ctx: &BuildContext<'_>) -> Result<Uri, SettingsError> {
    let err = |reason: &str| SettingsError::new("url", reason);
    let uri: Uri = url.trim().parse().map_err(|_| err("is not a valid URL"))?;
    let https = uri.scheme() == Some(&Scheme::HTTPS);
    let http = uri.scheme() == Some(&Scheme::HTTP);
    let authority = uri
        .authority()
        .ok_or_else(|| err("is not an absolute https:// URL"))?;
    if authority.as_str().contains('@') {
        return Err(err("must not contain credentials"));
    }
    let host = authority.host().to_ascii_lowercase();
    if ctx.allow_private_networks {
        // A development deployment: a local fake Slack over plain http.
        if !(https || http) {
            return Err(err("must be an http:// or https:// URL"));
        }
    } else {
        if !https {
            return Err(err(
                "must be an https:// URL (Slack webhooks are https only)",
            ));
        }
        if !SLACK_HOSTS.contains(&host.as_str()) || authority.port().is_some() {
            return Err(err(
                "must be a Slack incoming-webhook URL, https://hooks.slack.com/services/...",
            ));
        }
        if !SLACK_PATHS.iter().any(|p| uri.path().starts_with(p)) {
            return Err(err(
                "is not a Slack webhook path (https://hooks.slack.com/services/...)",
            ));
        }
    }
    ssrf::check_literal_host(&host, ctx.http.policy()).map_err(|refused| {
        SettingsError::new(
            "url",
            format!("its host is {}, which is not allowed", refused.reason),
        )
    })?;
    Ok(uri)
}

/// Classify Slack's answer. `code` is the sanitised body (`channel_not_found`).
fn classify(
    status: StatusCode,
    retry_after: Option<&HeaderValue>,
    code: &str,
    sent: Bytes,
) -> Outcome {
    let n = status.as_u16();
    let said = if code.is_empty() {
        format!("HTTP {n}")
    } else {
        format!("{code} (HTTP {n})")
    };
    match n {
        200..=299 => Outcome::Delivered { status: Some(n) },
        429 => Outcome::Throttled {
            status: Some(n),
            reason: format!("Slack rate limit: {said}"),
            retry_after: retry_after
                .and_then(|v| crate::http::parse_retry_after(v, SystemTime::now()))
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_RETRY_AFTER),
        },
        400 | 413 => Outcome::Rejected {
            status: Some(n),
            reason: format!("Slack refused the message as invalid: {said}"),
            sent,
        },
        403 | 404 | 410 => Outcome::Permanent {
            status: Some(n),
            reason: format!(
                "Slack webhook no longer accepts messages: {said}: {}; the endpoint is disabled \
                 until its URL is fixed and it is resumed",
                explain(code, n)
            ),
            disable_endpoint: true,
        },
        300..=399 => Outcome::Permanent {
            status: Some(n),
            reason: format!("Slack answered a redirect, not followed: {said}"),
            disable_endpoint: false,
        },
        400..=499 => Outcome::Permanent {
            status: Some(n),
            reason: format!("Slack refused the request: {said}"),
            disable_endpoint: false,
        },
        _ => Outcome::Retry {
            status: Some(n),
            reason: format!("Slack failed: {said}"),
            retry_after: retry_after
                .and_then(|v| crate::http::parse_retry_after(v, SystemTime::now())),
        },
    }
}

/// What a disabling answer means, for whoever reads the log.
fn explain(code: &str, status: u16) -> &'static str {
    match code {
        "channel_not_found" => "the channel was deleted or the app removed from it",
        "channel_is_archived" => "the channel is archived",
        "no_service" | "no_service_id" => "the webhook was revoked or its app uninstalled",
        "no_team" | "team_disabled" => "the workspace is gone or disabled",
        "invalid_token" => "the webhook's token is no longer valid",
        "action_prohibited" => "a workspace admin has restricted posting",
        "posting_to_general_channel_denied" => "only admins may post to this channel",
        "user_not_found" => "the user the webhook posts to is gone",
        _ => match status {
            403 => "Slack forbids posting with this webhook",
            410 => "the webhook's channel is gone",
            _ => "the webhook does not exist",
        },
    }
}

/// Slack's bodies are short codes (`invalid_payload`): keep only what looks
/// like one, so a reason can carry neither markup nor control characters.
fn error_code(body: &str) -> String {
    body.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ' ' | '.' | ':'))
        .take(CODE_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

async fn read_prefix(body: &mut Incoming, out: &mut Vec<u8>) {
    while out.len() < BODY_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = BODY_LIMIT - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpClientOptions;
    use std::collections::BTreeMap;

    fn with_ctx<R>(allow_private: bool, f: impl FnOnce(&BuildContext<'_>) -> R) -> R {
        let http = HttpClient::new(HttpClientOptions {
            allow_private_networks: allow_private,
            native_roots: false,
            ..HttpClientOptions::default()
        })
        .unwrap();
        let options = BTreeMap::new();
        let ctx = BuildContext {
            endpoint_id: "ops-slack",
            timeout: Duration::from_secs(5),
            http: &http,
            kafka_bootstrap: "",
            kafka_options: &options,
            allow_private_networks: allow_private,
            kafka_guard: Default::default(),
        };
        f(&ctx)
    }

    const HOOK: &str = "https://hooks.slack.com/services/T000/B000/SECRETTOKEN";

    #[test]
    fn urls_must_be_slack_webhooks_and_are_never_echoed() {
        with_ctx(false, |ctx| {
            SlackFactory
                .validate(&serde_json::json!({"url": HOOK}), ctx)
                .unwrap();
            let cases = [
                ("http://hooks.slack.com/services/T/B/SECRETTOKEN", "https"),
                (
                    "https://example.com/services/T/B/SECRETTOKEN",
                    "Slack incoming-webhook",
                ),
                (
                    "https://hooks.slack.com:8443/services/T/B/SECRETTOKEN",
                    "Slack incoming-webhook",
                ),
                ("https://hooks.slack.com/api/SECRETTOKEN", "webhook path"),
                (
                    "https://u:SECRETTOKEN@hooks.slack.com/services/T/B/x",
                    "credentials",
                ),
                ("not a url SECRETTOKEN", "not a valid URL"),
                ("/services/SECRETTOKEN", "absolute"),
            ];
            for (url, reason) in cases {
                let err = SlackFactory
                    .validate(&serde_json::json!({"url": url}), ctx)
                    .unwrap_err();
                assert_eq!(err.field, "url", "{url}");
                assert!(err.reason.contains(reason), "{url}: {err}");
                assert!(!err.to_string().contains("SECRETTOKEN"), "{err}");
            }
            let err = SlackFactory
                .validate(&serde_json::json!({"url": HOOK, "channel": "#x"}), ctx)
                .unwrap_err();
            assert_eq!(err.field, "channel");
            let err = SlackFactory
                .validate(
                    &serde_json::json!({"url": HOOK, "template": {"text": "{{x}}"}}),
                    ctx,
                )
                .unwrap_err();
            assert_eq!(err.field, "template.text");
            let err = SlackFactory
                .validate(
                    &serde_json::json!({"url": HOOK, "template": {"txt": "a"}}),
                    ctx,
                )
                .unwrap_err();
            assert_eq!(err.field, "template.txt");
        });
        // A development deployment may use a local fake Slack; metadata
        // addresses stay refused.
        with_ctx(true, |ctx| {
            let local = serde_json::json!({"url": "http://127.0.0.1:9/services/T/B/x"});
            SlackFactory.validate(&local, ctx).unwrap();
            let metadata = serde_json::json!({"url": "http://169.254.169.254/services/T/B/x"});
            let err = SlackFactory.validate(&metadata, ctx).unwrap_err();
            assert!(err.reason.contains("metadata"), "{err}");
        });
    }

    #[test]
    fn debug_output_hides_the_url() {
        with_ctx(false, |ctx| {
            let settings: SlackSettings =
                parse_settings(&serde_json::json!({"url": HOOK})).unwrap();
            assert!(!format!("{settings:?}").contains("SECRETTOKEN"));
            let t = SlackTransport::new(settings, ctx).unwrap();
            let text = format!("{t:?}");
            assert!(text.contains("hooks.slack.com"), "{text}");
            assert!(!text.contains("SECRETTOKEN"), "{text}");
        });
    }

    #[test]
    fn classification_of_slack_answers() {
        let sent = Bytes::from_static(b"{\"text\":\"x\"}");
        let c = |status: u16, code: &str| {
            classify(
                StatusCode::from_u16(status).unwrap(),
                None,
                code,
                sent.clone(),
            )
        };
        assert_eq!(c(200, "ok"), Outcome::Delivered { status: Some(200) });
        assert!(matches!(
            c(429, ""),
            Outcome::Throttled { retry_after, .. } if retry_after == DEFAULT_RETRY_AFTER
        ));
        let seven = HeaderValue::from_static("7");
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(&seven), "", sent.clone()),
            Outcome::Throttled { retry_after, .. } if retry_after == Duration::from_secs(7)
        ));
        match c(400, "invalid_payload") {
            Outcome::Rejected {
                sent: s, reason, ..
            } => {
                assert_eq!(s, sent);
                assert!(reason.contains("invalid_payload"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        for (status, code) in [
            (404, "channel_not_found"),
            (404, "no_service"),
            (410, "channel_is_archived"),
            (403, "invalid_token"),
            (403, ""),
        ] {
            match c(status, code) {
                Outcome::Permanent {
                    disable_endpoint: true,
                    reason,
                    ..
                } => assert!(reason.contains("disabled"), "{reason}"),
                other => panic!("{status} {code}: {other:?}"),
            }
        }
        assert_eq!(c(401, "").label(), "permanent");
        assert_eq!(c(302, "").label(), "permanent");
        assert_eq!(c(500, "rollup_error").label(), "retry");
        assert_eq!(c(503, "").label(), "retry");
    }

    #[test]
    fn error_codes_are_sanitised() {
        assert_eq!(error_code("channel_not_found\n"), "channel_not_found");
        assert_eq!(error_code("<script>\u{1b}[31mx"), "script31mx");
        assert_eq!(error_code(&"a".repeat(500)).len(), CODE_CHARS);
    }
}
