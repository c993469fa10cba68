//! The management API on `api.listen`: endpoints as data. Create, change,
//! pause, resume and delete endpoints (`/v1/endpoints`, see
//! [`endpoints`]), all through the endpoint store, so a change applies on
//! every replica and survives restarts; and it is apart from
//! `admin.listen`, which only shows the dispatcher (metrics, probes).
//!
//! It is off unless at least one token is configured, and every request must
//! pass three checks, in this order:
//!
//! 1. **Host**: an IP literal, `localhost`, or a name in `api.allowed_hosts`.
//!    A web page that rebinds its own name to 127.0.0.1 (DNS rebinding)
//!    still sends its own name as Host, and is refused.
//! 2. **`X-Dispatcher-Api` header**, any value. A browser cannot send a
//!    custom header cross-origin without a CORS preflight, which this server
//!    never grants, so a web page cannot forge a request (CSRF), not even to
//!    `localhost` or a port-forward.
//! 3. **`Authorization: Bearer <token>`**, compared in constant time with
//!    every configured token (as SHA-256 digests, so the time does not
//!    depend on the length either).
//!
//! Bodies are bounded ([`MAX_BODY_BYTES`]); the OpenAPI document
//! ([`openapi`]) is served at `GET /v1/openapi.json` and kept in
//! `docs/openapi.json`.

pub mod endpoints;
pub mod model;
pub mod openapi;
pub mod server;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use transports::Registry;

use crate::config::{Config, Problem};
use crate::endpoints::Routing;
use crate::metrics::Metrics;
use crate::park::Parker;
use crate::store::Store;
use server::{Limits, Peer};

/// The largest request body: an endpoint with TLS material and templates
/// fits many times over; more is refused with 413 before it is read.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The header every request must carry (any value): see the module docs.
pub const REQUIRED_HEADER: &str = "x-dispatcher-api";

/// Shortest token accepted: 32 characters (`openssl rand -hex 32` gives 64).
pub const MIN_TOKEN_LEN: usize = 32;

/// The `api` section of the config.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where the management API listens, once a token is configured.
    pub listen: SocketAddr,
    /// Bearer tokens (`${VAR}` references, so they come from a Secret).
    pub tokens: Vec<String>,
    /// A file with more tokens, one a line (`#` starts a comment).
    pub tokens_file: Option<PathBuf>,
    /// Host names (without port) requests may name besides IP literals and
    /// `localhost`, such as a Service's DNS name.
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
            tokens: Vec::new(),
            tokens_file: None,
            allowed_hosts: Vec::new(),
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("tokens_file", &self.tokens_file)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl ApiConfig {
    /// Every configured token: `tokens`, then those of `tokens_file`.
    /// Errors name the key and the position, never a token.
    pub fn load_tokens(&self) -> Result<Vec<String>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut tokens = Vec::new();
        for (i, token) in self.tokens.iter().enumerate() {
            match check_token(token) {
                Ok(()) => tokens.push(token.clone()),
                Err(e) => problems.push(Problem::new(format!("api.tokens[{i}]"), e)),
            }
        }
        if let Some(path) = &self.tokens_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    for (n, line) in text.lines().enumerate() {
                        let line = line.trim();
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        match check_token(line) {
                            Ok(()) => tokens.push(line.to_owned()),
                            Err(e) => problems.push(Problem::new(
                                "api.tokens_file",
                                format!("{}: line {}: {e}", path.display(), n + 1),
                            )),
                        }
                    }
                }
                Err(e) => problems.push(Problem::new(
                    "api.tokens_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
            }
        }
        if problems.is_empty() {
            Ok(tokens)
        } else {
            Err(problems)
        }
    }

    /// Whether the API is on: at least one token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.tokens_file.is_some()
    }

    /// Validation, for `Config::check`.
    pub fn check(&self, problems: &mut Vec<Problem>) {
        if let Err(mut found) = self.load_tokens() {
            problems.append(&mut found);
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            let ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            if !ok {
                problems.push(Problem::new(
                    format!("api.allowed_hosts[{i}]"),
                    "a host name without port (letters, digits, `.` and `-`)",
                ));
            }
        }
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "a token has at least {MIN_TOKEN_LEN} characters (generate one with `openssl rand -hex 32`)"
        ));
    }
    if token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("a token is printable ASCII without spaces".into());
    }
    Ok(())
}

/// What the API works on.
pub struct ApiContext {
    /// The endpoint store: every write goes through it.
    pub store: Arc<Store>,
    /// The endpoints this replica runs (for stats, and to know a deleted
    /// endpoint's lane still drains).
    pub routing: watch::Receiver<Arc<Routing>>,
    /// The config: its file endpoints (read-only here), the validation of
    /// endpoints, the keys that seal secrets.
    pub config: Arc<Config>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// What replay needs; `None` where it is not offered.
    pub replay: Option<ReplayContext>,
}

/// The running dispatcher's brokers and parker, which replay writes with.
#[derive(Clone)]
pub struct ReplayContext {
    pub bootstrap: String,
    pub parker: Arc<Parker>,
}

/// What the API serves from, shared by every request.
#[derive(Clone)]
pub struct ApiState {
    ctx: Arc<ApiContext>,
    auth: Arc<Auth>,
}

struct Auth {
    /// SHA-256 of each token.
    digests: Vec<[u8; 32]>,
    allowed_hosts: Vec<String>,
}

impl ApiState {
    pub fn new(ctx: ApiContext, tokens: &[String], allowed_hosts: &[String]) -> ApiState {
        ApiState {
            ctx: Arc::new(ctx),
            auth: Arc::new(Auth {
                digests: tokens.iter().map(|t| digest(t.as_bytes())).collect(),
                allowed_hosts: allowed_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            }),
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Bind the API listener (early, so a bad address fails at start-up).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("api.listen: cannot listen on {addr}: {e}"))
}

/// Serve the API until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let service = hyper_util::service::TowerToHyperService::new(router(state));
    server::serve(listener, service, limits, "api", shutdown).await;
}

/// The routes, behind the guard.
pub fn router(state: ApiState) -> Router {
    use endpoints as e;
    Router::new()
        .route("/v1/endpoints", get(e::list).post(e::create))
        .route(
            "/v1/endpoints/{id}",
            get(e::get_one)
                .put(e::put)
                .patch(e::patch)
                .delete(e::delete),
        )
        .route("/v1/endpoints/{id}/pause", post(e::pause))
        .route("/v1/endpoints/{id}/resume", post(e::resume))
        .route("/v1/endpoints/{id}/rotate-secret", post(e::rotate_secret))
        .route("/v1/endpoints/{id}/replay", post(e::replay))
        .route("/v1/endpoints/{id}/stats", get(e::stats))
        .route("/v1/tenants/{tenant}/pause", post(e::tenant_pause))
        .route("/v1/tenants/{tenant}/resume", post(e::tenant_resume))
        .route("/v1/openapi.json", get(e::openapi))
        // The unversioned routes, as aliases on top of the store.
        .route("/endpoints", get(e::legacy_list))
        .route("/endpoints/{id}", get(e::legacy_one))
        .route("/endpoints/{id}/pause", post(e::legacy_pause))
        .route("/endpoints/{id}/resume", post(e::legacy_resume))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Host, custom header and token checks: see the module docs.
async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if !host_allowed(headers, &state.auth.allowed_hosts) {
        return error(
            StatusCode::FORBIDDEN,
            "Host not allowed: use an IP address, localhost or a name in api.allowed_hosts",
        );
    }
    if !headers.contains_key(REQUIRED_HEADER) {
        return error(
            StatusCode::FORBIDDEN,
            "the X-Dispatcher-Api header is required",
        );
    }
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token.trim())
    else {
        return unauthorized(&request);
    };
    let presented = digest(token.as_bytes());
    // Every digest is compared, whichever matches, so the time taken does
    // not tell which token (if any) is close.
    let matched = state
        .auth
        .digests
        .iter()
        .fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&presented));
    if !bool::from(matched) {
        return unauthorized(&request);
    }
    next.run(request).await
}

fn unauthorized(request: &Request) -> Response {
    let peer = request.extensions().get::<Peer>().map(|p| p.0);
    tracing::warn!(
        peer = ?peer,
        method = %request.method(),
        path = request.uri().path(),
        "management API request without a valid token"
    );
    let mut response = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// An IP literal, `localhost`, or an allowed name; the port is ignored.
fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((inner, _)) => return inner.parse::<IpAddr>().is_ok(),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host.as_str(),
        }
    };
    name.parse::<IpAddr>().is_ok() || name == "localhost" || allowed.iter().any(|a| a == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, value.parse().unwrap());
        h
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_listed() {
        let allowed = vec!["dispatcher-api.ops.svc".to_owned()];
        for ok in [
            "127.0.0.1:9465",
            "127.0.0.1",
            "[::1]:9465",
            "10.1.2.3:9465",
            "localhost:19465",
            "LOCALHOST",
            "dispatcher-api.ops.svc:9465",
        ] {
            assert!(host_allowed(&hosts(ok), &allowed), "{ok}");
        }
        for bad in [
            "evil.example:9465",
            "evil.example",
            "127.0.0.1.nip.io:9465",
            "localhost.evil.example",
            "[::1",
            "",
        ] {
            assert!(!host_allowed(&hosts(bad), &allowed), "{bad}");
        }
        assert!(!host_allowed(&HeaderMap::new(), &allowed));
    }

    #[test]
    fn short_or_odd_tokens_are_refused_without_being_shown() {
        let config = ApiConfig {
            tokens: vec![
                "short-secret".into(),
                "x".repeat(32),
                format!("{} y", "z".repeat(32)),
            ],
            ..ApiConfig::default()
        };
        let problems = config.load_tokens().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].path, "api.tokens[0]");
        assert_eq!(problems[1].path, "api.tokens[2]");
        let text = format!("{problems:?} {config:?}");
        assert!(
            !text.contains("short-secret") && !text.contains("zzzz"),
            "{text}"
        );
    }
}
