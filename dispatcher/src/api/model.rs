//! What the management API takes and gives, as JSON, with the schemas of
//! the OpenAPI document (`docs/openapi.json`).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// An endpoint as the API shows it: where it comes from, its version (the
/// `ETag`), its state, and the endpoint itself with every secret replaced
/// by `{"hint": "..."}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointView {
    pub id: String,
    /// `api`: created through the API, in the endpoint store. `file`: from
    /// the config file, read-only here but for pause and resume.
    pub source: Source,
    /// The store version (also the `ETag`); 0 for a file endpoint whose
    /// state was never changed.
    pub version: u64,
    /// When this version was written (RFC 3339), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// Nothing is sent; deliveries wait in Kafka until resumed. On every
    /// replica, across restarts.
    pub paused: bool,
    /// The receiver answered 410 Gone: deliveries are dead-lettered until
    /// resumed with `clear_disabled=true`.
    pub disabled: bool,
    /// The endpoint, with the same fields as in the YAML file; secrets show
    /// as `{"hint": "whsec_…LaSw"}`. Sending a hint back keeps the secret.
    #[schema(value_type = Object)]
    pub endpoint: serde_json::Map<String, serde_json::Value>,
    /// The ids of the keys its secrets are encrypted with in the store
    /// (after a key rotation, `PATCH {}` encrypts them with the new key).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sealed_with: Vec<String>,
    /// Why this replica does not run the stored endpoint, if it does not
    /// (it cannot be decrypted, or no longer passes validation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Api,
    File,
}

/// One thing wrong with a request's endpoint, at its key path (relative to
/// the endpoint: `url`, `retry.schedule`, `headers.Authorization`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProblemView {
    pub path: String,
    pub message: String,
}

impl From<&crate::config::Problem> for ProblemView {
    fn from(p: &crate::config::Problem) -> Self {
        ProblemView {
            path: p.path.clone(),
            message: p.message.clone(),
        }
    }
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// The problems of an endpoint that did not pass validation (422).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemView>,
    /// The endpoint's version now, on a conflict (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// A page of endpoints.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointList {
    pub endpoints: Vec<EndpointView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Filters and paging of `GET /v1/endpoints`. Endpoints come in id order.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Endpoints per page, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// Where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
    /// Only ids starting with this.
    pub id_prefix: Option<String>,
    /// Only endpoints from `api` or from the `file`.
    pub source: Option<Source>,
    /// Only endpoints of this transport (`http`, `kafka`, `slack`, ...).
    pub transport: Option<String>,
    /// Only endpoints that receive events of this type (their `events`
    /// match it).
    pub event: Option<String>,
    /// Only paused (`true`) or unpaused (`false`) endpoints.
    pub paused: Option<bool>,
    /// Only disabled (`true`) or enabled (`false`) endpoints.
    pub disabled: Option<bool>,
    /// Only the endpoints of this tenant.
    pub tenant: Option<String>,
}

/// What pausing or resuming a tenant did, endpoint by endpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantResult {
    pub tenant: String,
    /// The tenant's endpoints now in the state asked for, in id order.
    pub endpoints: Vec<EndpointView>,
    /// The tenant's endpoints whose state could not be written (try
    /// again: pausing and resuming twice is harmless).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<TenantFailure>,
    /// When some failed: which, in one sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One endpoint a tenant's pause or resume did not switch.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantFailure {
    pub id: String,
    pub error: String,
}

/// `?dry_run=true` on a write: check and show what would change, write
/// nothing.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    /// Validate and compare only; nothing is written.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST .../resume?clear_disabled=true`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResumeQuery {
    /// Also re-enable an endpoint that a 410 Gone disabled. Without it, a
    /// disabled endpoint answers 409 and stays as it is.
    #[serde(default)]
    pub clear_disabled: bool,
}

/// What a write did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WriteResult {
    /// `created`, `updated`, `unchanged` (nothing written), or with
    /// `dry_run`, what would happen.
    pub result: WriteKind,
    /// The keys that change (secrets are named, never shown).
    pub changes: Vec<Change>,
    pub endpoint: EndpointView,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    Created,
    Updated,
    Unchanged,
}

/// One changed key of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// The key path (`url`, `headers.X-Tenant`, `paused`).
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub kind: String,
    /// A secret: its value is not shown.
    pub secret: bool,
}

/// The body of `POST /v1/endpoints/{id}/rotate-secret` (optional).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// The new signing secret (`whsec_` and base64); generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// Keep signing with the previous secrets too (default), so receivers
    /// can switch over; end the rotation later with
    /// `PATCH {"secrets": []}` or a rotation with `keep_previous: false`.
    #[serde(default = "default_true")]
    pub keep_previous: bool,
}

impl Default for RotateRequest {
    fn default() -> Self {
        RotateRequest {
            secret: None,
            keep_previous: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// The answer to a rotation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RotateResult {
    /// The new signing secret, in clear, when the dispatcher generated it:
    /// the only answer that ever shows a secret. Hand it to the receiver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub endpoint: EndpointView,
}

/// The body of `POST /v1/endpoints/{id}/replay` (optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Only deliveries dead-lettered at or after this: RFC 3339 or a
    /// duration ago (`2h`).
    #[serde(default)]
    pub since: Option<String>,
    /// Only deliveries dead-lettered before this: RFC 3339 or a duration
    /// ago.
    #[serde(default)]
    pub until: Option<String>,
    /// Only events of this type.
    #[serde(default)]
    pub event: Option<String>,
    /// Count only; replay nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayResult {
    /// `done`, or `running` when the replay outlasted the request (it goes
    /// on; its summary is logged).
    pub status: String,
    pub scanned: u64,
    pub matched: u64,
    pub replayed: u64,
    /// Refused by the retry topic (too large).
    pub failed: u64,
    /// Dead letters that are not deliveries, or damaged.
    pub undecodable: u64,
    pub dry_run: bool,
}

/// What this replica knows of an endpoint's traffic: counters since this
/// process started and gauges now. Other replicas have their own; sum them
/// in Prometheus for the whole.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EndpointStats {
    pub id: String,
    /// Always `this replica`: these numbers are one process's.
    pub scope: String,
    /// This replica's name (`HOSTNAME`, the pod name on Kubernetes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Whether this replica runs a lane for it.
    pub running: bool,
    pub paused: bool,
    pub disabled: bool,
    /// Deliveries by outcome since this process started.
    pub deliveries: Outcomes,
    /// Send attempts by result since this process started.
    pub attempts: Attempts,
    /// Answers asking to slow down (429, 503 with Retry-After).
    pub throttled: u64,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    /// Deliveries waiting in memory.
    pub queue_depth: i64,
    /// Sends under way.
    pub in_flight: i64,
    /// The in-flight limit now (max_in_flight, or the adaptive limit).
    pub concurrency_limit: i64,
    /// Deliveries waiting in Kafka (spilled, due retries) for room, in the
    /// partitions this replica owns.
    pub backlog: i64,
    /// How long the oldest of them has waited, in seconds.
    pub backlog_oldest_age_seconds: f64,
    /// Fresh deliveries go to the spill topic (it does not keep up).
    pub spilling: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Outcomes {
    pub delivered: u64,
    pub dead_lettered: u64,
    pub retried: u64,
    pub parked: u64,
    pub deduplicated: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Attempts {
    pub delivered: u64,
    pub retry: u64,
    pub permanent: u64,
}

/// An endpoint's switches, as the unversioned routes (`/endpoints...`)
/// have always shown them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LegacyState {
    pub id: String,
    pub paused: bool,
    pub disabled: bool,
}

/// `GET /endpoints`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LegacyList {
    pub endpoints: Vec<LegacyState>,
}

/// An endpoint in a request: the same fields as an endpoint of the YAML
/// file (`docs/configuration.md`), JSON instead of YAML and without
/// `${VAR}`. Only the common fields are listed here; every transport adds
/// its own (`url`, `secret`, `headers`, `topic`, ...), checked exactly as
/// `dispatcher validate` checks the file. A secret may be given as the
/// `{"hint": ...}` object a GET showed, to keep the stored value.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)] // documentation only: requests are read as JSON maps
pub struct EndpointSpec {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`; optional where the path names it.
    pub id: Option<String>,
    /// `http` (default), `kafka`, `slack`.
    pub transport: Option<String>,
    /// Event types, exact or wildcard (`message.*`, `*`).
    pub events: Vec<String>,
    /// Conditions on data fields: a value, a list (any of), or operators
    /// (`$in`, `$neq`, `$exists`, `$gt`/`$gte`/`$lt`/`$lte`, `$prefix`),
    /// combined with `$and`/`$or` (see docs/configuration.md).
    #[schema(value_type = Object)]
    pub filter: Option<serde_json::Value>,
    /// The tenant (customer) the endpoint belongs to: it receives only that
    /// tenant's events (found with `routing.tenant_key`). Unset: every
    /// tenant's, and those of none.
    pub tenant: Option<String>,
    /// `http`: the receiver's URL. `slack`: the incoming-webhook URL (secret).
    pub url: Option<String>,
    /// `http`: the Standard Webhooks signing secret (`whsec_...`), secret.
    pub secret: Option<String>,
    /// Start (or set) paused: maps to the endpoint's state.
    pub paused: Option<bool>,
}
