//! The plugin point: transport factories and the registry that finds them by
//! their `transport:` type name.
//!
//! This module owns three things:
//! - the [`TransportFactory`] trait: one per transport type, it validates an
//!   endpoint's transport-specific settings (a JSON object) and builds a
//!   [`Transport`] from them;
//! - the [`Registry`] of factories, with [`Registry::builtin`] holding
//!   `http`, `kafka` and `slack`;
//! - [`BuildContext`], what the dispatcher lends every factory (the shared
//!   HTTP client, its own Kafka cluster, the endpoint's id and timeout), and
//!   [`parse_settings`], the strict settings parser factories share.
//!
//! Adding a transport is one module with a factory plus one
//! [`Registry::register`] call; nothing in the dispatcher changes. See
//! `docs/transports.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::http::{HttpClient, HttpEndpointConfig, HttpTransport};
use crate::Transport;

/// A problem with an endpoint's transport settings.
///
/// `field` is the key relative to the transport's settings, as the user
/// wrote it (`topic`, `options.acks`, `secrets[1]`); the dispatcher prefixes
/// it with the endpoint's path. `reason` says what is wrong and never repeats
/// a secret (URLs of secret-bearing transports included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingsError {
    pub field: String,
    pub reason: String,
}

impl SettingsError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> SettingsError {
        SettingsError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// What the dispatcher provides to every factory when it builds or checks
/// one endpoint's transport.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// The endpoint's configured id (`webhook_id` in envelopes).
    pub endpoint_id: &'a str,
    /// The endpoint's bound on one send (`endpoints[].timeout`).
    pub timeout: Duration,
    /// The process-wide HTTP client (pool, TLS, SSRF guard). Transports that
    /// speak HTTP clone it rather than make their own.
    pub http: &'a HttpClient,
    /// `bootstrap.servers` of the dispatcher's own Kafka cluster.
    pub kafka_bootstrap: &'a str,
    /// The dispatcher's `kafka.options` (credentials, TLS, ...), for
    /// transports that produce to the same cluster.
    pub kafka_options: &'a BTreeMap<String, String>,
    /// `http.allow_private_networks`: a development and test deployment.
    pub allow_private_networks: bool,
    /// What a Kafka endpoint may not write to or connect to.
    pub kafka_guard: crate::kafka::KafkaGuard<'a>,
}

impl fmt::Debug for BuildContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // kafka_options may hold credentials (sasl.password): names only.
        f.debug_struct("BuildContext")
            .field("endpoint_id", &self.endpoint_id)
            .field("timeout", &self.timeout)
            .field("kafka_bootstrap", &self.kafka_bootstrap)
            .field(
                "kafka_options",
                &self.kafka_options.keys().collect::<Vec<_>>(),
            )
            .field("allow_private_networks", &self.allow_private_networks)
            .field("kafka_guard", &self.kafka_guard)
            .finish_non_exhaustive()
    }
}

/// One transport type: validates settings and builds transports.
///
/// `settings` is the JSON object of the endpoint's transport-specific keys
/// (everything but the dispatcher's own endpoint keys such as `id`,
/// `events`, `timeout`). Validation must be strict: an unknown key is an
/// error, so a typo never silently falls back to a default.
pub trait TransportFactory: Send + Sync + 'static {
    /// The `transport:` value this factory answers to.
    fn type_name(&self) -> &'static str;

    /// Build a ready transport for one endpoint. May start background work
    /// (a Kafka producer connects here); must not block for long.
    fn build(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError>;

    /// Check `settings` as [`build`](Self::build) would, without opening
    /// connections or starting anything (`dispatcher validate`).
    ///
    /// The default builds and drops the transport, which is right for
    /// transports whose construction is pure (HTTP, Slack); a factory whose
    /// `build` connects must override it.
    fn validate(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<(), SettingsError> {
        self.build(settings, ctx).map(drop)
    }
}

/// The transport types an endpoint may name, by type name. Cheap to clone:
/// the dispatcher keeps one for endpoints added while it runs.
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<&'static str, std::sync::Arc<dyn TransportFactory>>,
}

impl Registry {
    /// A registry with no transport at all.
    pub fn empty() -> Registry {
        Registry {
            factories: BTreeMap::new(),
        }
    }

    /// The built-in transports: `http`, `kafka`, `slack`.
    pub fn builtin() -> Registry {
        let mut registry = Registry::empty();
        registry.register(Box::new(HttpFactory));
        registry.register(Box::new(crate::kafka::KafkaFactory));
        registry.register(Box::new(crate::slack::SlackFactory));
        registry
    }

    /// Add a factory under its type name. A factory already registered under
    /// that name is replaced and returned (so a deployment can swap a
    /// built-in for its own).
    pub fn register(
        &mut self,
        factory: Box<dyn TransportFactory>,
    ) -> Option<std::sync::Arc<dyn TransportFactory>> {
        self.factories
            .insert(factory.type_name(), std::sync::Arc::from(factory))
    }

    /// The factory for `type_name`, if registered.
    pub fn get(&self, type_name: &str) -> Option<&dyn TransportFactory> {
        self.factories.get(type_name).map(|f| &**f)
    }

    /// Every registered type name, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.factories.keys().copied().collect()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Registry").field(&self.names()).finish()
    }
}

/// Deserialize a factory's settings struct from `settings`, naming the key
/// at fault on error (`options.acks`, `secrets[1]`; an unknown key or a
/// missing one by its own name). Put `#[serde(deny_unknown_fields)]` on the
/// struct so that a misspelt key is an error, not a silent default.
pub fn parse_settings<T: DeserializeOwned>(
    settings: &serde_json::Value,
) -> Result<T, SettingsError> {
    if !settings.is_object() {
        // serde would read a list as a struct's fields in order.
        return Err(SettingsError::new(
            "",
            "transport settings must be a mapping of keys to values",
        ));
    }
    crate::de::from_value::<T>(settings.clone()).map_err(|(path, error)| {
        let reason = error.to_string();
        let mut field = if path == "." { String::new() } else { path };
        // serde reports a missing field at the level of the object that
        // should hold it; name the key itself, which is what the user must
        // add. (An unknown key is already the last part of the path.)
        if let Some(name) = reason
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(name);
        }
        SettingsError { field, reason }
    })
}

/// The settings of `transport: http`: exactly the endpoint's HTTP keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub url: String,
    /// The first (newest) secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// Further secrets, all signing (rotation).
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub send_secret_header: bool,
    /// The value of `X-Webhook-Secret`, apart from the signing keys.
    #[serde(default)]
    pub shared_secret: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Names of `headers` whose values are secret (API keys): the endpoint
    /// store keeps them encrypted and the management API shows a hint only.
    /// `Authorization` and `Proxy-Authorization` are secret without being
    /// listed. Sending is unchanged: every header value is redacted from
    /// failure reasons anyway.
    #[serde(default)]
    pub secret_headers: Vec<String>,
    /// The endpoint's own TLS (private CA, client certificate).
    #[serde(default)]
    pub tls: Option<crate::http::EndpointTls>,
    /// OAuth2 client credentials.
    #[serde(default)]
    pub oauth2: Option<crate::http::OAuth2Settings>,
}

impl fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSettings")
            .field("url", &"[redacted]")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("send_secret_header", &self.send_secret_header)
            .field(
                "shared_secret",
                &self.shared_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("secret_headers", &self.secret_headers)
            .field("tls", &self.tls)
            .field("oauth2", &self.oauth2)
            .finish()
    }
}

impl HttpSettings {
    /// The transport's configuration: `secret` first, then `secrets`.
    pub fn into_config(self, timeout: Duration) -> HttpEndpointConfig {
        HttpEndpointConfig {
            url: self.url,
            secrets: self.secret.into_iter().chain(self.secrets).collect(),
            send_secret_header: self.send_secret_header,
            shared_secret: self.shared_secret,
            timeout,
            headers: self.headers.into_iter().collect(),
            tls: self.tls,
            oauth2: self.oauth2,
        }
    }
}

/// `transport: http` (the default): see [`crate::http`].
pub struct HttpFactory;

impl TransportFactory for HttpFactory {
    fn type_name(&self) -> &'static str {
        "http"
    }

    fn build(
        &self,
        settings: &serde_json::Value,
        ctx: &BuildContext<'_>,
    ) -> Result<Arc<dyn Transport>, SettingsError> {
        let settings: HttpSettings = parse_settings(settings)?;
        for (i, name) in settings.secret_headers.iter().enumerate() {
            if !settings
                .headers
                .keys()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                return Err(SettingsError::new(
                    format!("secret_headers[{i}]"),
                    "names no header of `headers`",
                ));
            }
        }
        let has_secret = settings.secret.is_some();
        let transport = HttpTransport::new(settings.into_config(ctx.timeout), ctx.http.clone())
            .map_err(|e| SettingsError::new(user_secret_field(&e.field, has_secret), e.reason))?;
        Ok(Arc::new(transport))
    }
}

/// The transport sees `secret` and `secrets` as one list: map its
/// `secrets[i]` back to the key the user wrote.
fn user_secret_field(field: &str, has_secret: bool) -> String {
    let index = field
        .strip_prefix("secrets[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|i| i.parse::<usize>().ok());
    match (index, has_secret) {
        (Some(0), true) => "secret".to_owned(),
        (Some(i), true) => format!("secrets[{}]", i - 1),
        _ => field.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpClientOptions;
    use serde_json::json;

    fn client() -> HttpClient {
        HttpClient::new(HttpClientOptions {
            native_roots: false,
            ..HttpClientOptions::default()
        })
        .unwrap()
    }

    fn with_ctx<R>(f: impl FnOnce(&BuildContext<'_>) -> R) -> R {
        let http = client();
        let options = BTreeMap::new();
        let ctx = BuildContext {
            endpoint_id: "acme",
            timeout: Duration::from_secs(5),
            http: &http,
            kafka_bootstrap: "127.0.0.1:1",
            kafka_options: &options,
            allow_private_networks: false,
            kafka_guard: Default::default(),
        };
        f(&ctx)
    }

    #[test]
    fn builtin_registers_three_transports() {
        let registry = Registry::builtin();
        assert_eq!(registry.names(), vec!["http", "kafka", "slack"]);
        assert!(registry.get("http").is_some());
        assert!(registry.get("smtp").is_none());
        assert_eq!(
            format!("{registry:?}"),
            r#"Registry(["http", "kafka", "slack"])"#
        );
    }

    #[test]
    fn register_replaces_and_returns_the_previous_factory() {
        let mut registry = Registry::builtin();
        let previous = registry.register(Box::new(HttpFactory));
        assert_eq!(previous.map(|f| f.type_name()), Some("http"));
        assert_eq!(registry.names().len(), 3);
        assert!(Registry::empty().names().is_empty());
    }

    #[test]
    fn http_settings_build_a_transport() {
        with_ctx(|ctx| {
            let settings = json!({
                "url": "https://hooks.example.com/in",
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "secrets": ["plain-old"],
                "shared_secret": "a-shared-value",
                "headers": {"Authorization": "Bearer x"},
            });
            let t = HttpFactory.build(&settings, ctx).unwrap();
            assert_eq!(t.kind(), "http");
            HttpFactory.validate(&settings, ctx).unwrap();
        });
    }

    #[test]
    fn http_errors_name_the_key_the_user_wrote() {
        with_ctx(|ctx| {
            let cases = [
                (json!({}), "url", "missing field `url`"),
                (
                    json!({"url": "https://h.example", "tiemout": 1}),
                    "tiemout",
                    "unknown field",
                ),
                (json!({"url": 7}), "url", "invalid type"),
                (
                    json!({"url": "ftp://h.example/"}),
                    "url",
                    "not http or https",
                ),
                (
                    json!({"url": "https://h.example", "secret": "whsec_!!"}),
                    "secret",
                    "whsec_",
                ),
                (
                    json!({"url": "https://h.example", "secret": "a", "secrets": ["b", "whsec_!!"]}),
                    "secrets[1]",
                    "whsec_",
                ),
                (
                    json!({"url": "https://h.example", "secrets": ["whsec_!!"]}),
                    "secrets[0]",
                    "whsec_",
                ),
                (
                    json!({"url": "https://h.example", "headers": {"Host": "x"}}),
                    "headers.Host",
                    "set by the dispatcher",
                ),
                (
                    json!({"url": "https://h.example", "headers": {"X": 5}}),
                    "headers.X",
                    "invalid type",
                ),
            ];
            for (settings, field, reason) in cases {
                let err = HttpFactory.validate(&settings, ctx).unwrap_err();
                assert_eq!(err.field, field, "{settings}: {err}");
                assert!(err.reason.contains(reason), "{settings}: {err}");
            }
        });
    }

    #[test]
    fn unknown_nested_keys_are_named_with_their_path() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            a: u32,
        }
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            inner: Inner,
        }
        let err = parse_settings::<Outer>(&json!({"inner": {"a": 1, "b": 2}})).unwrap_err();
        assert_eq!(err.field, "inner.b");
        let err = parse_settings::<Outer>(&json!({"inner": {"a": "x"}})).unwrap_err();
        assert_eq!(err.field, "inner.a");
        let err = parse_settings::<Outer>(&json!([1])).unwrap_err();
        assert_eq!(err.field, "");
        assert!(err.reason.contains("mapping"), "{err}");
    }
}
