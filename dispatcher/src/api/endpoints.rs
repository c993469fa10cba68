//! The routes of `/v1/endpoints`, and the unversioned `/endpoints` routes
//! kept as aliases, all on top of the endpoint store.
//!
//! A write goes: parse (400 for malformed JSON, 413 past the body limit,
//! 415 for another content type) → build the whole endpoint (a PATCH is a
//! JSON Merge Patch over the stored one; `{"hint": ...}` keeps a stored
//! secret) → check it exactly as `dispatcher validate` does (422 with the
//! key paths) → compare with what is stored (nothing written when it is
//! the same) → seal its secrets →
//! [`Store::write`](crate::store::Store::write), compare-and-set on the
//! version (409 on a stale `If-Match` or a lost race), which answers only
//! once Kafka acknowledged the record and this replica read it back.
//! Nothing is written before every check passed.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Map, Value};

use super::model::*;
use super::server::Peer;
use super::ApiState;
use crate::config::{EndpointConfig, Problem};
use crate::route::EventPattern;
use crate::secrets::{self, Keyring};
use crate::store::{EndpointState, StoredEndpoint, WriteError};

/// Writes that lose a race without `If-Match` are tried again this often:
/// the caller asked for "this change to whatever is current".
const RETRIES: usize = 3;

/// How long a write's answer waits for the change to be in force here.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// How long `replay` answers within; a longer one goes on in the background.
const REPLAY_ANSWER_WITHIN: Duration = Duration::from_secs(40);

/// An error answer: a status and [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                problems: Vec::new(),
                current_version: None,
            },
            retry_after: None,
        }
    }

    fn invalid(problems: &[Problem]) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the endpoint is not valid: {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
        e.body.problems = problems.iter().map(ProblemView::from).collect();
        e
    }

    fn conflict(error: impl Into<String>, current: u64) -> ApiError {
        let mut e = ApiError::new(StatusCode::CONFLICT, error);
        e.body.current_version = Some(current);
        e
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no endpoint `{id}`"))
    }

    fn read_only(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("endpoint `{id}` comes from the config file: change it there (only pause and resume work here)"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::Conflict { current } => ApiError::conflict(
                format!("the endpoint changed meanwhile (it is at version {current}): read it again and retry"),
                current,
            ),
            WriteError::Kafka(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the endpoints topic did not take the write, nothing changed: {e}"),
            ),
            WriteError::NotReadBack(wait) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("Kafka took the write but this replica did not read it back within {wait:?}: it may still apply; GET the endpoint to see"),
            ),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

fn with_etag(status: StatusCode, version: u64, body: impl serde::Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    response
}

/// `If-Match`: `*`, or the version as a (quoted, possibly weak) entity tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precondition {
    Exists,
    Version(u64),
}

fn if_match(headers: &HeaderMap) -> ApiResult<Option<Precondition>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(Some(Precondition::Exists));
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse()
        .map(|v| Some(Precondition::Version(v)))
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "If-Match must be an ETag this API gave (a version such as \"3\") or *",
            )
        })
}

fn check_precondition(pre: Option<Precondition>, exists: bool, version: u64) -> ApiResult<()> {
    match pre {
        Some(Precondition::Exists) if !exists => Err(ApiError::conflict(
            "If-Match: * but the endpoint does not exist",
            version,
        )),
        Some(Precondition::Version(v)) if v != version || !exists => Err(ApiError::conflict(
            format!("stale If-Match: the endpoint is at version {version}, not {v}; read it again"),
            version,
        )),
        _ => Ok(()),
    }
}

fn if_none_match_any(headers: &HeaderMap) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*")
}

/// A request body as JSON: `None` when empty and `required` is false.
fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    required: bool,
) -> ApiResult<Option<Value>> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        ApiError::new(
            status,
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the body is larger than {} bytes", super::MAX_BODY_BYTES)
            } else {
                format!("the body could not be read: {rejection}")
            },
        )
    })?;
    if body.is_empty() {
        return if required {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "a JSON body is required",
            ))
        } else {
            Ok(None)
        };
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send JSON with Content-Type: application/json",
        ));
    }
    serde_json::from_slice::<Value>(&body)
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
}

/// A small typed body (rotate, replay): errors name the key, never a value.
fn typed_body<T: serde::de::DeserializeOwned + Default>(value: Option<Value>) -> ApiResult<T> {
    match value {
        None => Ok(T::default()),
        Some(v) => transports::de::from_value::<T>(v).map_err(|(path, e)| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{}: {e}", path.trim_start_matches('.')),
            )
        }),
    }
}

fn object(value: Value) -> ApiResult<Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "an endpoint is a JSON object",
        )),
    }
}

impl ApiState {
    fn file_endpoint(&self, id: &str) -> Option<&EndpointConfig> {
        self.ctx.config.endpoints.iter().find(|e| e.id == id)
    }

    fn keyring(&self) -> &Keyring {
        &self.ctx.config.secrets.keyring
    }

    /// The view of a file endpoint, with its stored state.
    fn file_view(&self, ep: &EndpointConfig, stored: Option<&StoredEndpoint>) -> EndpointView {
        let mut endpoint = ep.source.clone();
        secrets::hint_endpoint(&mut endpoint);
        let state = stored.map(|s| s.state).unwrap_or(EndpointState {
            paused: ep.paused,
            disabled: false,
        });
        EndpointView {
            id: ep.id.clone(),
            source: Source::File,
            version: stored.map_or_else(|| self.ctx.store.version(&ep.id), |s| s.version),
            updated_at: stored.and_then(|s| s.updated_at.clone()),
            paused: state.paused,
            disabled: state.disabled,
            endpoint,
            sealed_with: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The view of a stored endpoint: opened, secrets hinted.
    fn store_view(&self, id: &str, stored: &StoredEndpoint) -> EndpointView {
        let (endpoint, problems) = match self.keyring().open_endpoint(id, &stored.endpoint) {
            Ok(mut plain) => {
                secrets::hint_endpoint(&mut plain);
                (plain, Vec::new())
            }
            Err(problems) => (
                hide_sealed(&stored.endpoint),
                problems.iter().map(ProblemView::from).collect(),
            ),
        };
        let mut sealed_with: Vec<String> =
            Keyring::sealed_with(&stored.endpoint).into_iter().collect();
        sealed_with.sort();
        EndpointView {
            id: id.to_owned(),
            source: Source::Api,
            version: stored.version,
            updated_at: stored.updated_at.clone(),
            paused: stored.state.paused,
            disabled: stored.state.disabled,
            endpoint,
            sealed_with,
            problems,
        }
    }

    fn view(&self, id: &str) -> Option<EndpointView> {
        let stored = self.ctx.store.get(id);
        match self.file_endpoint(id) {
            Some(ep) => Some(self.file_view(ep, stored.as_ref())),
            None => stored.map(|s| self.store_view(id, &s)),
        }
    }

    /// Every endpoint id with its source, in id order.
    fn all(&self) -> BTreeMap<String, (Source, Option<StoredEndpoint>)> {
        let mut all: BTreeMap<String, (Source, Option<StoredEndpoint>)> = self
            .ctx
            .config
            .endpoints
            .iter()
            .map(|e| (e.id.clone(), (Source::File, None)))
            .collect();
        for (id, stored) in self.ctx.store.list() {
            match all.get_mut(&id) {
                // A file endpoint's record holds only its state.
                Some((Source::File, slot)) => *slot = Some(stored),
                _ => {
                    all.insert(id, (Source::Api, Some(stored)));
                }
            }
        }
        all
    }

    /// A receiver of this replica's routing snapshots, marked as having
    /// seen the current one: take it before a write, then
    /// [`ApiState::applied_here`] after.
    fn routing_mark(
        &self,
    ) -> tokio::sync::watch::Receiver<std::sync::Arc<crate::endpoints::Routing>> {
        let mut rx = self.ctx.routing.clone();
        rx.borrow_and_update();
        rx
    }

    /// Wait (a few seconds at most) until this replica's endpoint manager
    /// has applied what the store just read back, so that a 2xx means the
    /// change is in force here: an event produced after a create's answer
    /// goes to the new endpoint. The manager publishes a new snapshot after
    /// every batch of changes it applies; `present` is whether the id
    /// should then have a live lane (None: no such check).
    async fn applied_here(
        &self,
        mut rx: tokio::sync::watch::Receiver<std::sync::Arc<crate::endpoints::Routing>>,
        id: &str,
        present: Option<bool>,
    ) {
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        loop {
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                tracing::debug!(endpoint = %id, "the change is not in force on this replica yet; answering anyway");
                return;
            }
            let routing = rx.borrow_and_update().clone();
            let live = routing
                .find(id)
                .is_some_and(|i| routing.lane(i).is_some() && routing.routes_to(i));
            match present {
                Some(want) if want != live => continue,
                _ => return,
            }
        }
    }

    /// Whether this replica still drains the lane of a deleted endpoint.
    fn draining(&self, id: &str) -> bool {
        self.ctx.store.get(id).is_none() && self.ctx.routing.borrow().find(id).is_some()
    }
}

/// A stored endpoint whose values did not open: sealed values shown as a
/// hint that says so, nothing else changed.
fn hide_sealed(stored: &Map<String, Value>) -> Map<String, Value> {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) if map.contains_key(secrets::SEALED) => {
                let mut hint = Map::new();
                hint.insert(
                    secrets::HINT.into(),
                    Value::String("… (cannot be decrypted)".into()),
                );
                *value = Value::Object(hint);
            }
            Value::Object(map) => map.values_mut().for_each(walk),
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut copy = Value::Object(stored.clone());
    walk(&mut copy);
    match copy {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// RFC 7396 JSON Merge Patch: objects merge, `null` removes, anything else
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(changes) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in changes {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The keys that differ between two plaintext endpoints (objects compared
/// key by key, lists as a whole), secrets marked.
pub fn changes(old: &Map<String, Value>, new: &Map<String, Value>) -> Vec<Change> {
    let mut secret_paths = HashSet::new();
    for map in [old, new] {
        let mut copy = map.clone();
        secrets::visit_secrets(&mut copy, &mut |path, _| {
            secret_paths.insert(path);
        });
    }
    // `=path`: that very key is a secret; `path`: it is or holds one.
    let is_secret = |path: &str| {
        if let Some(exact) = path.strip_prefix('=') {
            return secret_paths.contains(exact);
        }
        secret_paths.iter().any(|p| {
            p == path
                || p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    };
    fn walk(
        old: &Map<String, Value>,
        new: &Map<String, Value>,
        prefix: &str,
        is_secret: &dyn Fn(&str) -> bool,
        out: &mut Vec<Change>,
    ) {
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for key in keys {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let kind = match (old.get(key), new.get(key)) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                // Into objects, down to the secrets (the key of a secret
                // that is an object as a whole is compared as a whole).
                (Some(Value::Object(a)), Some(Value::Object(b)))
                    if !is_secret(&format!("={path}")) =>
                {
                    walk(a, b, &path, is_secret, out);
                    continue;
                }
                (Some(a), Some(b)) if a != b => "changed",
                _ => continue,
            };
            out.push(Change {
                secret: is_secret(&path),
                path,
                kind: kind.into(),
            });
        }
    }
    let mut out = Vec::new();
    walk(old, new, "", &is_secret, &mut out);
    out
}

/// How a write builds the new endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// POST: a new endpoint; refused when the id exists.
    Create,
    /// PUT: the whole endpoint, created or replaced.
    Replace,
    /// PATCH: a merge patch over the stored endpoint.
    Patch,
}

/// What a write needs besides the body.
struct WriteRequest<'a> {
    id: &'a str,
    mode: Mode,
    body: Map<String, Value>,
    precondition: Option<Precondition>,
    create_only: bool,
    dry_run: bool,
    peer: Option<std::net::SocketAddr>,
}

/// A write's outcome: the answer's status and body.
struct Written {
    status: StatusCode,
    result: WriteResult,
    version: u64,
}

impl ApiState {
    /// Build, check, seal and write one endpoint (see the module docs).
    async fn write_endpoint(&self, req: WriteRequest<'_>) -> ApiResult<Written> {
        let id = req.id;
        if self.file_endpoint(id).is_some() {
            return Err(ApiError::read_only(id));
        }
        if let Some(at) = secrets::find_sealed(&Value::Object(req.body.clone()), "") {
            return Err(ApiError::invalid(&[Problem::new(
                at,
                "`$encrypted` is the store's own form of a secret; send the secret itself",
            )]));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let store = &self.ctx.store;
            let current = store.get(id);
            let version = store.version(id);
            check_precondition(req.precondition, current.is_some(), version)?;
            if current.is_some() && (req.mode == Mode::Create || req.create_only) {
                return Err(ApiError::conflict(
                    format!("endpoint `{id}` exists already"),
                    version,
                ));
            }
            if current.is_none() && req.mode == Mode::Patch {
                return Err(ApiError::not_found(id));
            }
            let current_plain = match &current {
                None => None,
                Some(stored) => match self.keyring().open_endpoint(id, &stored.endpoint) {
                    Ok(plain) => Some(plain),
                    // A whole new endpoint replaces what cannot be opened;
                    // a patch cannot apply to it.
                    Err(_) if req.mode == Mode::Replace => None,
                    Err(problems) => {
                        return Err(ApiError::conflict(
                            format!(
                                "the stored endpoint cannot be decrypted ({}): PUT a whole endpoint to replace it",
                                problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                            ),
                            version,
                        ))
                    }
                },
            };
            let mut candidate = match req.mode {
                Mode::Patch => {
                    let mut merged = Value::Object(current_plain.clone().unwrap_or_default());
                    merge_patch(&mut merged, &Value::Object(req.body.clone()));
                    object(merged)?
                }
                Mode::Create | Mode::Replace => req.body.clone(),
            };
            match candidate.get("id") {
                None => {
                    candidate.insert("id".into(), Value::String(id.to_owned()));
                }
                Some(Value::String(given)) if given == id => {}
                Some(_) => {
                    return Err(ApiError::invalid(&[Problem::new(
                        "id",
                        format!(
                            "must be `{id}`, the id in the path (an endpoint cannot be renamed)"
                        ),
                    )]))
                }
            }
            // `paused` is state, kept apart from the endpoint in the store.
            let paused = match candidate.remove("paused") {
                None => None,
                Some(Value::Bool(b)) => Some(b),
                Some(_) => {
                    return Err(ApiError::invalid(&[Problem::new(
                        "paused",
                        "expected a boolean",
                    )]))
                }
            };
            secrets::keep_hinted(&mut candidate, current_plain.as_ref())
                .map_err(|p| ApiError::invalid(&p))?;
            self.ctx
                .config
                .endpoint_from_json(&candidate, &self.ctx.registry)
                .map_err(|p| ApiError::invalid(&p))?;

            let old_state = current.as_ref().map(|c| c.state).unwrap_or_default();
            let state = EndpointState {
                paused: paused.unwrap_or(old_state.paused),
                ..old_state
            };
            let mut diff = changes(&current_plain.clone().unwrap_or_default(), &candidate);
            if current.is_some() && state.paused != old_state.paused {
                diff.push(Change {
                    path: "paused".into(),
                    kind: "changed".into(),
                    secret: false,
                });
            }
            // A record sealed with a key that no longer seals is written
            // again as it is: what a key rotation needs (`PATCH {}`).
            let sealing = self.keyring().sealing_key_id();
            let old_keys = current.as_ref().is_some_and(|c| {
                Keyring::sealed_with(&c.endpoint)
                    .iter()
                    .any(|k| Some(k.as_str()) != sealing)
            });
            let kind = match (&current, diff.is_empty() && !old_keys) {
                (None, _) => WriteKind::Created,
                (Some(_), true) => WriteKind::Unchanged,
                (Some(_), false) => WriteKind::Updated,
            };
            let mut has_secrets = false;
            secrets::visit_secrets(&mut candidate.clone(), &mut |_, v| {
                has_secrets |= v.is_string();
            });
            let view = |version: u64, updated_at: Option<String>| {
                let mut shown = candidate.clone();
                secrets::hint_endpoint(&mut shown);
                EndpointView {
                    id: id.to_owned(),
                    source: Source::Api,
                    version,
                    updated_at,
                    paused: state.paused,
                    disabled: state.disabled,
                    endpoint: shown,
                    sealed_with: self
                        .keyring()
                        .sealing_key_id()
                        .into_iter()
                        .map(str::to_owned)
                        .filter(|_| has_secrets)
                        .collect(),
                    problems: Vec::new(),
                }
            };
            if req.dry_run || kind == WriteKind::Unchanged {
                return Ok(Written {
                    status: StatusCode::OK,
                    result: WriteResult {
                        result: kind,
                        changes: diff,
                        endpoint: view(version, current.and_then(|c| c.updated_at)),
                    },
                    version,
                });
            }
            if current.is_none() && self.draining(id) {
                let mut e = ApiError::conflict(
                    format!("endpoint `{id}` was deleted and this replica still dead-letters its pending work; try again in a moment"),
                    version,
                );
                e.retry_after = Some(1);
                return Err(e);
            }
            let mut sealed = candidate.clone();
            self.keyring()
                .seal_endpoint(id, &mut sealed)
                .map_err(|p| ApiError::invalid(&p))?;
            let mark = self.routing_mark();
            match store.write(id, version, Some((sealed, state))).await {
                Ok(new_version) => {
                    self.applied_here(mark, id, (kind == WriteKind::Created).then_some(true))
                        .await;
                    tracing::info!(endpoint = %id, version = new_version, action = ?kind, peer = ?req.peer, "endpoint written through the management API");
                    return Ok(Written {
                        status: if kind == WriteKind::Created {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        },
                        result: WriteResult {
                            result: kind,
                            changes: diff,
                            endpoint: view(new_version, store.get(id).and_then(|s| s.updated_at)),
                        },
                        version: new_version,
                    });
                }
                Err(WriteError::Conflict { .. })
                    if req.precondition.is_none() && attempt < RETRIES =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Change an endpoint's state (pause, resume) through the store: a file
    /// endpoint's record holds only its id and state.
    async fn set_state(
        &self,
        id: &str,
        precondition: Option<Precondition>,
        change: &(dyn Fn(EndpointState) -> ApiResult<EndpointState> + Sync),
        action: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> ApiResult<EndpointView> {
        let file = self.file_endpoint(id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let store = &self.ctx.store;
            let stored = store.get(id);
            let version = store.version(id);
            let (endpoint, state) = match (&stored, file) {
                (Some(s), _) => (s.endpoint.clone(), s.state),
                (None, Some(ep)) => {
                    let mut only_id = Map::new();
                    only_id.insert("id".into(), Value::String(id.to_owned()));
                    (
                        only_id,
                        EndpointState {
                            paused: ep.paused,
                            disabled: false,
                        },
                    )
                }
                (None, None) => return Err(ApiError::not_found(id)),
            };
            check_precondition(precondition, true, version)?;
            let new_state = change(state)?;
            if new_state != state {
                let mark = self.routing_mark();
                match store.write(id, version, Some((endpoint, new_state))).await {
                    Ok(v) => {
                        self.applied_here(mark, id, None).await;
                        tracing::warn!(endpoint = %id, action, version = v, peer = ?peer, "endpoint switched through the management API");
                    }
                    Err(WriteError::Conflict { .. })
                        if precondition.is_none() && attempt < RETRIES =>
                    {
                        continue
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            return self.view(id).ok_or_else(|| ApiError::not_found(id));
        }
    }
}

impl ApiState {
    /// Switch every endpoint of `tenant` with `change`, one after the
    /// other; an endpoint that fails does not stop the others.
    async fn set_tenant_state(
        &self,
        tenant: &str,
        change: &(dyn Fn(EndpointState) -> ApiResult<EndpointState> + Sync),
        action: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> ApiResult<Response> {
        if let Err(e) = crate::route::Tenant::new(tenant) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("tenant: {e}"),
            ));
        }
        let ids: Vec<String> = self
            .all()
            .into_keys()
            .filter(|id| {
                self.view(id)
                    .is_some_and(|v| tenant_of(&v.endpoint) == Some(tenant))
            })
            .collect();
        if ids.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no endpoint has tenant `{tenant}`"),
            ));
        }
        let mut endpoints = Vec::with_capacity(ids.len());
        let mut failed = Vec::new();
        let mut status = StatusCode::OK;
        for id in ids {
            match self.set_state(&id, None, change, action, peer).await {
                Ok(view) => endpoints.push(view),
                Err(e) => {
                    if status == StatusCode::OK {
                        status = e.status;
                    }
                    failed.push(TenantFailure {
                        id,
                        error: e.body.error,
                    });
                }
            }
        }
        tracing::warn!(%tenant, action, switched = endpoints.len(), failed = failed.len(), peer = ?peer, "tenant switched through the management API");
        let error = (!failed.is_empty()).then(|| {
            let each: Vec<String> = failed
                .iter()
                .map(|f| format!("{}: {}", f.id, f.error))
                .collect();
            format!(
                "{} of the {} endpoints of tenant `{tenant}` were not switched (try again): {}",
                failed.len(),
                failed.len() + endpoints.len(),
                each.join("; ")
            )
        });
        Ok((
            status,
            Json(TenantResult {
                tenant: tenant.to_owned(),
                endpoints,
                failed,
                error,
            }),
        )
            .into_response())
    }
}

fn pause_state(state: EndpointState) -> ApiResult<EndpointState> {
    Ok(EndpointState {
        paused: true,
        ..state
    })
}

fn resume_state(clear_disabled: bool) -> impl Fn(EndpointState) -> ApiResult<EndpointState> + Sync {
    move |state| {
        if state.disabled && !clear_disabled {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the endpoint is disabled (its receiver answered 410 Gone); resume with ?clear_disabled=true to send to it again",
            ));
        }
        Ok(EndpointState {
            paused: false,
            disabled: false,
        })
    }
}

fn peer_of(peer: &Option<Extension<Peer>>) -> Option<std::net::SocketAddr> {
    peer.as_ref().map(|p| p.0 .0)
}

fn written(w: Written) -> Response {
    with_etag(w.status, w.version, w.result)
}

/// Create an endpoint.
#[utoipa::path(
    post, path = "/v1/endpoints", tag = "endpoints",
    request_body(content = EndpointSpec, description = "The endpoint, with its `id`"),
    params(WriteQuery),
    responses(
        (status = 201, description = "Created: Kafka acknowledged it and this replica applies it", body = WriteResult, headers(("ETag" = String, description = "The new version"))),
        (status = 200, description = "With `dry_run`: what would be created", body = WriteResult),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "The id exists (in the store or in the config file)", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Not a valid endpoint: the problems, by key path", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    Query(query): Query<WriteQuery>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = object(json_body(&headers, body, true)?.unwrap_or_default())?;
    let id = match body.get("id") {
        Some(Value::String(id)) => id.clone(),
        _ => {
            return Err(ApiError::invalid(&[Problem::new(
                "id",
                "a new endpoint needs an `id` (a string)",
            )]))
        }
    };
    if let Err(e) = crate::config::check_endpoint_id(&id) {
        return Err(ApiError::invalid(&[Problem::new("id", e)]));
    }
    if state.file_endpoint(&id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("endpoint `{id}` exists in the config file: choose another id"),
        ));
    }
    let w = state
        .write_endpoint(WriteRequest {
            id: &id,
            mode: Mode::Create,
            body,
            precondition: None,
            create_only: true,
            dry_run: query.dry_run,
            peer: peer_of(&peer),
        })
        .await?;
    let mut response = written(w);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/endpoints/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// List endpoints, in id order, a page at a time.
#[utoipa::path(
    get, path = "/v1/endpoints", tag = "endpoints",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of endpoints", body = EndpointList),
        (status = 400, description = "A bad filter or cursor", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<EndpointList>> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "limit: between 1 and 1000",
        ));
    }
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let event = q.event.clone();
    if event
        .as_deref()
        .is_some_and(|e| e.is_empty() || e.len() > 256)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "event: an event type of 1 to 256 characters",
        ));
    }
    let mut endpoints = Vec::new();
    let mut next_cursor = None;
    let all = state.all();
    let range = match &after {
        Some(after) => {
            all.range::<String, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
        }
        None => all.range::<String, _>(..),
    };
    for (id, (source, stored)) in range {
        if q.id_prefix.as_deref().is_some_and(|p| !id.starts_with(p))
            || q.source.is_some_and(|s| s != *source)
        {
            continue;
        }
        let view = match source {
            Source::File => match state.file_endpoint(id) {
                Some(ep) => state.file_view(ep, stored.as_ref()),
                None => continue,
            },
            Source::Api => match stored {
                Some(s) => state.store_view(id, s),
                None => continue,
            },
        };
        if q.paused.is_some_and(|p| p != view.paused)
            || q.disabled.is_some_and(|d| d != view.disabled)
            || q.transport.as_deref().is_some_and(|t| {
                view.endpoint
                    .get("transport")
                    .and_then(Value::as_str)
                    .unwrap_or("http")
                    != t
            })
            || event
                .as_deref()
                .is_some_and(|e| !subscribes(&view.endpoint, e))
            || q.tenant
                .as_deref()
                .is_some_and(|t| tenant_of(&view.endpoint) != Some(t))
        {
            continue;
        }
        if endpoints.len() == limit {
            next_cursor = endpoints
                .last()
                .map(|v: &EndpointView| encode_cursor(&v.id));
            break;
        }
        endpoints.push(view);
    }
    Ok(Json(EndpointList {
        endpoints,
        next_cursor,
    }))
}

/// An endpoint's `tenant`, if it has one.
fn tenant_of(endpoint: &Map<String, Value>) -> Option<&str> {
    endpoint.get("tenant").and_then(Value::as_str)
}

/// Whether an endpoint's `events` take events of type `event`.
fn subscribes(endpoint: &Map<String, Value>, event: &str) -> bool {
    endpoint
        .get("events")
        .and_then(Value::as_array)
        .is_some_and(|events| {
            events
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|p| EventPattern::parse(p).ok())
                .any(|p| p.matches(event))
        })
}

/// Cursors are the last id of a page, opaque to clients (base64url).
fn encode_cursor(id: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

fn decode_cursor(cursor: &str) -> ApiResult<String> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "cursor: not a cursor this API gave",
            )
        })
}

/// One endpoint.
#[utoipa::path(
    get, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint id")),
    responses(
        (status = 200, description = "The endpoint, secrets as hints", body = EndpointView, headers(("ETag" = String, description = "Its version, for If-Match"))),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn get_one(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult<Response> {
    let view = state.view(&id).ok_or_else(|| ApiError::not_found(&id))?;
    Ok(with_etag(StatusCode::OK, view.version, view))
}

/// Create or replace an endpoint with a whole one.
#[utoipa::path(
    put, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(
        ("id" = String, Path, description = "The endpoint id"),
        ("If-Match" = Option<String>, Header, description = "Write only if the endpoint is at this version (its ETag); `*`: only if it exists"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: create only, never replace"),
        WriteQuery,
    ),
    request_body(content = EndpointSpec, description = "The whole endpoint; `{\"hint\": ...}` keeps a stored secret"),
    responses(
        (status = 201, description = "Created", body = WriteResult, headers(("ETag" = String))),
        (status = 200, description = "Replaced, unchanged (nothing written), or the dry run", body = WriteResult, headers(("ETag" = String))),
        (status = 400, description = "Malformed JSON or If-Match", body = ErrorBody),
        (status = 409, description = "Stale If-Match, a lost race, or a file endpoint", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Not a valid endpoint", body = ErrorBody),
        (status = 503, description = "Kafka did not take the write; nothing changed", body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<WriteQuery>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let precondition = if_match(&headers)?;
    let body = object(json_body(&headers, body, true)?.unwrap_or_default())?;
    if let Err(e) = crate::config::check_endpoint_id(&id) {
        return Err(ApiError::invalid(&[Problem::new("id", e)]));
    }
    let w = state
        .write_endpoint(WriteRequest {
            id: &id,
            mode: Mode::Replace,
            body,
            precondition,
            create_only: if_none_match_any(&headers),
            dry_run: query.dry_run,
            peer: peer_of(&peer),
        })
        .await?;
    Ok(written(w))
}

/// Change some keys of an endpoint (JSON Merge Patch, RFC 7396).
#[utoipa::path(
    patch, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(
        ("id" = String, Path, description = "The endpoint id"),
        ("If-Match" = Option<String>, Header, description = "Write only if the endpoint is at this version (its ETag)"),
        WriteQuery,
    ),
    request_body(content = Object, content_type = "application/merge-patch+json", description = "Keys to set; `null` removes a key"),
    responses(
        (status = 200, description = "Updated, unchanged, or the dry run", body = WriteResult, headers(("ETag" = String))),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "Stale If-Match, a lost race, or a file endpoint", body = ErrorBody),
        (status = 422, description = "The result is not a valid endpoint", body = ErrorBody),
    )
)]
pub async fn patch(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<WriteQuery>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let precondition = if_match(&headers)?;
    let body = object(json_body(&headers, body, true)?.unwrap_or_default())?;
    if state.file_endpoint(&id).is_none() && state.ctx.store.get(&id).is_none() {
        return Err(ApiError::not_found(&id));
    }
    let w = state
        .write_endpoint(WriteRequest {
            id: &id,
            mode: Mode::Patch,
            body,
            precondition,
            create_only: false,
            dry_run: query.dry_run,
            peer: peer_of(&peer),
        })
        .await?;
    Ok(written(w))
}

/// Delete an endpoint: its pending work is dead-lettered as
/// `endpoint_deleted` (replayable once it exists again).
#[utoipa::path(
    delete, path = "/v1/endpoints/{id}", tag = "endpoints",
    params(
        ("id" = String, Path, description = "The endpoint id"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the endpoint is at this version"),
    ),
    responses(
        (status = 204, description = "Deleted: Kafka acknowledged the tombstone"),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "Stale If-Match, or a file endpoint", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let precondition = if_match(&headers)?;
    if state.file_endpoint(&id).is_some() {
        return Err(ApiError::read_only(&id));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let store = &state.ctx.store;
        if store.get(&id).is_none() {
            return Err(ApiError::not_found(&id));
        }
        let version = store.version(&id);
        check_precondition(precondition, true, version)?;
        let mark = state.routing_mark();
        match store.write(&id, version, None).await {
            Ok(v) => {
                state.applied_here(mark, &id, None).await;
                tracing::warn!(endpoint = %id, version = v, peer = ?peer_of(&peer), "endpoint deleted through the management API");
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            Err(WriteError::Conflict { .. }) if precondition.is_none() && attempt < RETRIES => {
                continue
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Pause an endpoint on every replica, across restarts.
#[utoipa::path(
    post, path = "/v1/endpoints/{id}/pause", tag = "endpoints",
    params(
        ("id" = String, Path, description = "The endpoint id"),
        ("If-Match" = Option<String>, Header, description = "Only if the endpoint is at this version"),
    ),
    responses(
        (status = 200, description = "Paused (or already)", body = EndpointView, headers(("ETag" = String))),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "Stale If-Match", body = ErrorBody),
    )
)]
pub async fn pause(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let precondition = if_match(&headers)?;
    let view = state
        .set_state(&id, precondition, &pause_state, "pause", peer_of(&peer))
        .await?;
    Ok(with_etag(StatusCode::OK, view.version, view))
}

/// Resume an endpoint on every replica.
#[utoipa::path(
    post, path = "/v1/endpoints/{id}/resume", tag = "endpoints",
    params(
        ("id" = String, Path, description = "The endpoint id"),
        ("If-Match" = Option<String>, Header, description = "Only if the endpoint is at this version"),
        ResumeQuery,
    ),
    responses(
        (status = 200, description = "Resumed (or already running)", body = EndpointView, headers(("ETag" = String))),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "Disabled by a 410 (add clear_disabled=true), or a stale If-Match", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<ResumeQuery>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let precondition = if_match(&headers)?;
    let action = if query.clear_disabled {
        "resume+clear_disabled"
    } else {
        "resume"
    };
    let view = state
        .set_state(
            &id,
            precondition,
            &resume_state(query.clear_disabled),
            action,
            peer_of(&peer),
        )
        .await?;
    Ok(with_etag(StatusCode::OK, view.version, view))
}

/// Pause every endpoint of a tenant, on every replica, across restarts.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/pause", tag = "tenants",
    params(("tenant" = String, Path, description = "The tenant, as in the endpoints' `tenant`")),
    responses(
        (status = 200, description = "Every endpoint of the tenant is paused (or already was)", body = TenantResult),
        (status = 400, description = "Not a tenant (1 to 256 bytes, no control characters)", body = ErrorBody),
        (status = 404, description = "No endpoint has this tenant", body = ErrorBody),
        (status = 503, description = "Some endpoints' state could not be written: see `failed` (the status is the first failure's; 409 or 504 too)", body = TenantResult),
    )
)]
pub async fn tenant_pause(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    peer: Option<Extension<Peer>>,
) -> ApiResult<Response> {
    state
        .set_tenant_state(&tenant, &pause_state, "tenant pause", peer_of(&peer))
        .await
}

/// Resume every endpoint of a tenant. An endpoint that a 410 Gone disabled
/// is unpaused but stays disabled, unless `clear_disabled=true`.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/resume", tag = "tenants",
    params(
        ("tenant" = String, Path, description = "The tenant, as in the endpoints' `tenant`"),
        ResumeQuery,
    ),
    responses(
        (status = 200, description = "Every endpoint of the tenant is resumed (a disabled one unpaused but still disabled, without clear_disabled)", body = TenantResult),
        (status = 400, description = "Not a tenant (1 to 256 bytes, no control characters)", body = ErrorBody),
        (status = 404, description = "No endpoint has this tenant", body = ErrorBody),
        (status = 503, description = "Some endpoints' state could not be written: see `failed` (the status is the first failure's; 409 or 504 too)", body = TenantResult),
    )
)]
pub async fn tenant_resume(
    State(state): State<ApiState>,
    Path(tenant): Path<String>,
    Query(query): Query<ResumeQuery>,
    peer: Option<Extension<Peer>>,
) -> ApiResult<Response> {
    let clear_disabled = query.clear_disabled;
    let change = move |state: EndpointState| -> ApiResult<EndpointState> {
        Ok(EndpointState {
            paused: false,
            disabled: state.disabled && !clear_disabled,
        })
    };
    let action = if clear_disabled {
        "tenant resume+clear_disabled"
    } else {
        "tenant resume"
    };
    state
        .set_tenant_state(&tenant, &change, action, peer_of(&peer))
        .await
}

/// Start a signing-secret rotation: a new `whsec_` secret signs first, the
/// previous ones keep signing (Standard Webhooks sends every signature)
/// until the rotation is ended.
#[utoipa::path(
    post, path = "/v1/endpoints/{id}/rotate-secret", tag = "endpoints",
    params(
        ("id" = String, Path, description = "The endpoint id"),
        ("If-Match" = Option<String>, Header, description = "Only if the endpoint is at this version"),
    ),
    request_body(content = Option<RotateRequest>, description = "Optional"),
    responses(
        (status = 200, description = "Rotated; the generated secret is in the answer, once", body = RotateResult, headers(("ETag" = String))),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "A file endpoint, a stale If-Match, or not an http endpoint", body = ErrorBody),
        (status = 422, description = "The given secret is not valid", body = ErrorBody),
    )
)]
pub async fn rotate_secret(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let precondition = if_match(&headers)?;
    let request: RotateRequest = typed_body(json_body(&headers, body, false)?)?;
    if state.file_endpoint(&id).is_some() {
        return Err(ApiError::read_only(&id));
    }
    let stored = state
        .ctx
        .store
        .get(&id)
        .ok_or_else(|| ApiError::not_found(&id))?;
    let current = state
        .keyring()
        .open_endpoint(&id, &stored.endpoint)
        .map_err(|p| {
            ApiError::conflict(
                format!(
                    "the stored endpoint cannot be decrypted: {}",
                    p.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                stored.version,
            )
        })?;
    if current
        .get("transport")
        .and_then(Value::as_str)
        .unwrap_or("http")
        != "http"
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "only http endpoints have signing secrets",
        ));
    }
    let generated = request.secret.is_none();
    let new_secret = request
        .secret
        .clone()
        .unwrap_or_else(secrets::new_signing_secret);
    let mut endpoint = current.clone();
    let mut previous: Vec<Value> = Vec::new();
    if request.keep_previous {
        for v in current.get("secret").into_iter().chain(
            current
                .get("secrets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        ) {
            if v.as_str() != Some(new_secret.as_str()) && !previous.contains(v) {
                previous.push(v.clone());
            }
        }
    }
    endpoint.insert("secret".into(), Value::String(new_secret.clone()));
    if previous.is_empty() {
        endpoint.remove("secrets");
    } else {
        endpoint.insert("secrets".into(), Value::Array(previous));
    }
    let w = state
        .write_endpoint(WriteRequest {
            id: &id,
            mode: Mode::Replace,
            body: endpoint,
            // Compare-and-set on what was read: a rotation never applies to
            // an endpoint it did not see.
            precondition: Some(precondition.unwrap_or(Precondition::Version(stored.version))),
            create_only: false,
            dry_run: false,
            peer: peer_of(&peer),
        })
        .await?;
    tracing::warn!(endpoint = %id, version = w.version, peer = ?peer_of(&peer), "signing secret rotated through the management API");
    Ok(with_etag(
        StatusCode::OK,
        w.version,
        RotateResult {
            secret: generated.then_some(new_secret),
            endpoint: w.result.endpoint,
        },
    ))
}

/// Replay an endpoint's dead letters, under their original delivery ids.
#[utoipa::path(
    post, path = "/v1/endpoints/{id}/replay", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint id")),
    request_body(content = Option<ReplayRequest>, description = "Filters; optional"),
    responses(
        (status = 200, description = "Replayed (or counted, with dry_run)", body = ReplayResult),
        (status = 202, description = "Still running after 40 s; it goes on and logs its summary", body = ReplayResult),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 422, description = "A bad filter", body = ErrorBody),
        (status = 503, description = "The dead-letter topic could not be read", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: ReplayRequest = typed_body(json_body(&headers, body, false)?)?;
    if state.view(&id).is_none() {
        return Err(ApiError::not_found(&id));
    }
    let Some(replay) = state.ctx.replay.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "replay is not available on this listener",
        ));
    };
    let time = |key: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| {
                crate::replay::parse_time(t).map_err(|e| {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{key}: {e}"))
                })
            })
            .transpose()
    };
    let filter = crate::replay::ReplayFilter {
        endpoint: Some(id.clone()),
        since_ms: time("since", &request.since)?,
        until_ms: time("until", &request.until)?,
        event: request.event.clone(),
        dry_run: request.dry_run,
    };
    let known = crate::replay::replayable_endpoints(&state.ctx.config, &state.ctx.store);
    let kafka = state.ctx.config.kafka.clone();
    let max_event_bytes = state.ctx.config.pipeline.max_event_bytes;
    tracing::warn!(endpoint = %id, dry_run = request.dry_run, peer = ?peer_of(&peer), "replay started through the management API");
    let mut task = tokio::spawn(async move {
        crate::replay::replay(
            &kafka,
            &replay.bootstrap,
            max_event_bytes,
            &filter,
            &|e| known.contains(e),
            &replay.parker,
        )
        .await
    });
    let answer = |status: &str, s: &crate::replay::ReplaySummary| ReplayResult {
        status: status.into(),
        scanned: s.scanned,
        matched: s.matched,
        replayed: s.replayed,
        failed: s.failed,
        undecodable: s.undecodable,
        dry_run: s.dry_run,
    };
    match tokio::time::timeout(REPLAY_ANSWER_WITHIN, &mut task).await {
        Ok(Ok(Ok(summary))) => {
            tracing::info!(endpoint = %id, replayed = summary.replayed, matched = summary.matched, "replay done");
            Ok((StatusCode::OK, Json(answer("done", &summary))).into_response())
        }
        Ok(Ok(Err(e))) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("replay failed: {e:#}"),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("replay failed: {e}"),
        )),
        Err(_) => {
            let endpoint = id.clone();
            tokio::spawn(async move {
                match task.await {
                    Ok(Ok(s)) => {
                        tracing::info!(endpoint = %endpoint, scanned = s.scanned, matched = s.matched, replayed = s.replayed, failed = s.failed, "replay done")
                    }
                    Ok(Err(e)) => {
                        tracing::error!(endpoint = %endpoint, error = %format!("{e:#}"), "replay failed")
                    }
                    Err(e) => tracing::error!(endpoint = %endpoint, error = %e, "replay failed"),
                }
            });
            Ok((
                StatusCode::ACCEPTED,
                Json(answer("running", &crate::replay::ReplaySummary::default())),
            )
                .into_response())
        }
    }
}

/// This replica's numbers for one endpoint.
#[utoipa::path(
    get, path = "/v1/endpoints/{id}/stats", tag = "endpoints",
    params(("id" = String, Path, description = "The endpoint id")),
    responses(
        (status = 200, description = "This replica's counters and gauges", body = EndpointStats),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn stats(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointStats>> {
    let view = state.view(&id).ok_or_else(|| ApiError::not_found(&id))?;
    let routing = state.ctx.routing.borrow().clone();
    let lane = routing.find(&id).and_then(|i| routing.lane(i));
    let metrics = lane.map(|l| &l.metrics);
    // Read without allocating an idle endpoint's counters.
    let m = metrics.map(|m| m.peek());
    let count = |f: &dyn Fn(&crate::metrics::EndpointCounters) -> u64| m.map_or(0, f);
    let gauge = |f: &dyn Fn(&crate::metrics::EndpointCounters) -> i64| m.map_or(0, f);
    Ok(Json(EndpointStats {
        id: id.clone(),
        scope: "this replica".into(),
        replica: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
        running: lane.is_some(),
        paused: view.paused,
        disabled: view.disabled,
        deliveries: Outcomes {
            delivered: count(&|m| m.delivered.get()),
            dead_lettered: count(&|m| m.dead_lettered.get()),
            retried: count(&|m| m.retried.get()),
            parked: count(&|m| m.parked.get()),
            deduplicated: count(&|m| m.deduplicated.get()),
        },
        attempts: Attempts {
            delivered: count(&|m| m.attempt_delivered.get()),
            retry: count(&|m| m.attempt_retry.get()),
            permanent: count(&|m| m.attempt_permanent.get()),
        },
        throttled: count(&|m| m.throttled.get()),
        breaker: match gauge(&|m| m.breaker_state.get()) {
            1 => "open",
            2 => "half_open",
            _ => "closed",
        }
        .into(),
        queue_depth: gauge(&|m| m.queue_depth.get()),
        in_flight: gauge(&|m| m.in_flight.get()),
        concurrency_limit: metrics.map_or(0, |m| m.concurrency_limit().get()),
        backlog: gauge(&|m| m.backlog.get()),
        backlog_oldest_age_seconds: m.map_or(0.0, |m| m.backlog_age.get()),
        spilling: gauge(&|m| m.spilling.get()) != 0,
    }))
}

/// The document of this API.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This API's OpenAPI document", body = Object))
)]
pub async fn openapi() -> Response {
    let mut response = super::openapi::document().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// The unversioned routes, kept for scripts written against them; they act
// on the store like the v1 routes.

fn legacy(view: &EndpointView) -> LegacyState {
    LegacyState {
        id: view.id.clone(),
        paused: view.paused,
        disabled: view.disabled,
    }
}

/// Every endpoint in force (enabled) and its switches. Use `/v1/endpoints`.
#[utoipa::path(
    get, path = "/endpoints", tag = "unversioned",
    responses((status = 200, description = "Every enabled endpoint's switches", body = LegacyList))
)]
pub async fn legacy_list(State(state): State<ApiState>) -> Json<LegacyList> {
    let mut endpoints = Vec::new();
    for (id, (source, stored)) in state.all() {
        let view = match source {
            Source::File => match state.file_endpoint(&id) {
                Some(ep) if ep.enabled => state.file_view(ep, stored.as_ref()),
                _ => continue,
            },
            Source::Api => match &stored {
                Some(s) => state.store_view(&id, s),
                None => continue,
            },
        };
        endpoints.push(legacy(&view));
    }
    Json(LegacyList { endpoints })
}

/// One endpoint's switches. Use `/v1/endpoints/{id}`.
#[utoipa::path(
    get, path = "/endpoints/{id}", tag = "unversioned",
    params(("id" = String, Path, description = "The endpoint id")),
    responses(
        (status = 200, description = "Its switches", body = LegacyState),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn legacy_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<LegacyState>> {
    let view = state.view(&id).ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(legacy(&view)))
}

/// Pause: the same as `POST /v1/endpoints/{id}/pause`.
#[utoipa::path(
    post, path = "/endpoints/{id}/pause", tag = "unversioned",
    params(("id" = String, Path, description = "The endpoint id")),
    responses(
        (status = 200, description = "Paused", body = LegacyState),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    )
)]
pub async fn legacy_pause(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    peer: Option<Extension<Peer>>,
) -> ApiResult<Json<LegacyState>> {
    let view = state
        .set_state(&id, None, &pause_state, "pause", peer_of(&peer))
        .await?;
    Ok(Json(legacy(&view)))
}

/// Resume: the same as `POST /v1/endpoints/{id}/resume`.
#[utoipa::path(
    post, path = "/endpoints/{id}/resume", tag = "unversioned",
    params(("id" = String, Path, description = "The endpoint id"), ResumeQuery),
    responses(
        (status = 200, description = "Resumed", body = LegacyState),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 409, description = "Disabled by a 410: add clear_disabled=true", body = ErrorBody),
    )
)]
pub async fn legacy_resume(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<ResumeQuery>,
    peer: Option<Extension<Peer>>,
) -> ApiResult<Json<LegacyState>> {
    let action = if query.clear_disabled {
        "resume+clear_disabled"
    } else {
        "resume"
    };
    let view = state
        .set_state(
            &id,
            None,
            &resume_state(query.clear_disabled),
            action,
            peer_of(&peer),
        )
        .await?;
    Ok(Json(legacy(&view)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1]});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null, "h": 1}, "l": [2, 3]}),
        );
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e", "h": 1}, "l": [2, 3]}));
    }

    #[test]
    fn changes_name_secret_keys_without_values() {
        let old = obj(
            json!({"id": "a", "url": "https://x.example/", "secret": "whsec_one", "headers": {"X-Tenant": "a", "Authorization": "Bearer 1"}}),
        );
        let new = obj(
            json!({"id": "a", "url": "https://y.example/", "secret": "whsec_two", "headers": {"X-Tenant": "b", "Authorization": "Bearer 1"}, "events": ["*"]}),
        );
        let got = changes(&old, &new);
        let summary: Vec<(String, String, bool)> = got
            .into_iter()
            .map(|c| (c.path, c.kind, c.secret))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("events".into(), "added".into(), false),
                ("headers.X-Tenant".into(), "changed".into(), false),
                ("secret".into(), "changed".into(), true),
                ("url".into(), "changed".into(), false),
            ]
        );
        assert!(changes(&old, &old).is_empty());
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor("acme-7")).unwrap(), "acme-7");
        assert!(decode_cursor("!!!").is_err());
    }

    #[test]
    fn if_match_takes_etags_and_star() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h).unwrap(), None);
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"7\""));
        assert_eq!(if_match(&h).unwrap(), Some(Precondition::Version(7)));
        h.insert(header::IF_MATCH, HeaderValue::from_static("W/\"7\""));
        assert_eq!(if_match(&h).unwrap(), Some(Precondition::Version(7)));
        h.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(if_match(&h).unwrap(), Some(Precondition::Exists));
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"x\""));
        assert!(if_match(&h).is_err());
    }
}
