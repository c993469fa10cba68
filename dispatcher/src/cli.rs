//! `dispatcher endpoints ...`: the management API from the command line,
//! in the style of `kubectl apply`.
//!
//! `apply -f FILE` is declarative and idempotent: for each endpoint of the
//! file it asks the API what would change (a dry run of the same `PUT`),
//! shows it as a diff, and writes only when something changes, with
//! `If-Match` on the version it read, so a change made meanwhile by someone
//! else is refused (409) rather than overwritten. Secrets are compared by
//! the API (it alone can read them) and shown as "(secret changed)".
//! `${VAR}` in the file is replaced from the environment, as in the config.

use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

use crate::api::REQUIRED_HEADER;
use crate::config::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct EndpointsArgs {
    /// The management API's base URL (plain http: the API has no TLS of
    /// its own; reach it on loopback or through `kubectl port-forward`).
    #[arg(
        long,
        env = "DISPATCHER_API_URL",
        default_value = "http://127.0.0.1:9465",
        global = true
    )]
    pub url: String,
    /// A bearer token of `api.tokens`.
    #[arg(
        long,
        env = "DISPATCHER_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: EndpointsCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum EndpointsCommand {
    /// List endpoints (every page).
    List {
        /// Only `api` or `file` endpoints.
        #[arg(long)]
        source: Option<String>,
        /// Only endpoints that receive this event type.
        #[arg(long)]
        event: Option<String>,
        /// Only ids with this prefix.
        #[arg(long)]
        id_prefix: Option<String>,
        /// Only the endpoints of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON (one document with every endpoint) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one endpoint (secrets as hints).
    Get { id: String },
    /// Create or update the endpoints of FILE (YAML or JSON: one endpoint,
    /// a list, or `endpoints: [...]`), showing what changes.
    Apply {
        /// The file; `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete an endpoint (its pending work is dead-lettered as
    /// `endpoint_deleted`, replayable).
    Delete { id: String },
    /// Pause an endpoint (or every endpoint of a tenant) on every replica.
    Pause {
        #[arg(required_unless_present = "tenant", conflicts_with = "tenant")]
        id: Option<String>,
        /// Pause every endpoint of this tenant instead.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Resume an endpoint (or every endpoint of a tenant) on every replica.
    Resume {
        #[arg(required_unless_present = "tenant", conflicts_with = "tenant")]
        id: Option<String>,
        /// Resume every endpoint of this tenant instead.
        #[arg(long)]
        tenant: Option<String>,
        /// Also re-enable an endpoint that a 410 Gone disabled.
        #[arg(long)]
        clear_disabled: bool,
    },
}

/// A client of the management API.
pub struct ApiClient {
    base: String,
    token: String,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// An answer: status, ETag, JSON body (Null when empty).
pub struct Answer {
    pub status: StatusCode,
    pub etag: Option<String>,
    pub body: Value,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> anyhow::Result<ApiClient> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("--url {base}: the API speaks plain http (reach it on loopback or through a port-forward)");
        }
        Ok(ApiClient {
            base,
            token: token.to_owned(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Answer> {
        let uri = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(REQUIRED_HEADER, "1")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let payload = match body {
            Some(b) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .with_context(|| format!("building {method} {uri}"))?;
        let response = tokio::time::timeout(Duration::from_secs(90), self.http.request(request))
            .await
            .map_err(|_| anyhow!("{method} {uri}: no answer within 90 s"))?
            .with_context(|| format!("{method} {uri}"))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{method} {uri}: reading the answer"))?
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                json!({"error": String::from_utf8_lossy(&bytes).chars().take(500).collect::<String>()})
            })
        };
        Ok(Answer { status, etag, body })
    }
}

/// What an error answer says, with its problems one a line.
fn explain(answer: &Answer) -> String {
    let mut text = answer.body["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| answer.body.to_string());
    if let Some(problems) = answer.body["problems"].as_array() {
        for p in problems {
            text.push_str(&format!(
                "\n    {}: {}",
                p["path"].as_str().unwrap_or(""),
                p["message"].as_str().unwrap_or("")
            ));
        }
    }
    format!("{} {text}", answer.status.as_u16())
}

fn ok(answer: Answer, what: &str) -> anyhow::Result<Answer> {
    if answer.status.is_success() {
        Ok(answer)
    } else {
        bail!("{what}: {}", explain(&answer))
    }
}

fn path_id(id: &str) -> anyhow::Result<&str> {
    crate::config::check_endpoint_id(id).map_err(|e| anyhow!("{e}"))?;
    Ok(id)
}

/// Run one `dispatcher endpoints` command, printing to stdout.
pub async fn run(args: EndpointsArgs) -> anyhow::Result<()> {
    let token = args.token.clone().ok_or_else(|| {
        anyhow!("a token is needed: --token or DISPATCHER_API_TOKEN (one of the dispatcher's api.tokens)")
    })?;
    let api = ApiClient::new(&args.url, &token)?;
    let mut out = std::io::stdout().lock();
    use std::io::Write;
    match args.command {
        EndpointsCommand::List {
            source,
            event,
            id_prefix,
            tenant,
            json,
        } => {
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut query = vec![("limit".to_owned(), "1000".to_owned())];
                for (k, v) in [
                    ("source", &source),
                    ("event", &event),
                    ("id_prefix", &id_prefix),
                    ("tenant", &tenant),
                ] {
                    if let Some(v) = v {
                        query.push((k.into(), v.clone()));
                    }
                }
                if let Some(c) = &cursor {
                    query.push(("cursor".into(), c.clone()));
                }
                let q: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", encode(v)))
                    .collect();
                let answer = ok(
                    api.call(
                        Method::GET,
                        &format!("/v1/endpoints?{}", q.join("&")),
                        None,
                        &[],
                    )
                    .await?,
                    "listing endpoints",
                )?;
                if let Some(items) = answer.body["endpoints"].as_array() {
                    all.extend(items.iter().cloned());
                }
                match answer.body["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json!({"endpoints": all}))?
                )?;
            } else {
                writeln!(
                    out,
                    "{:<32} {:<6} {:<9} {:>7} {:<7} {:<8} EVENTS",
                    "ID", "SOURCE", "TRANSPORT", "VERSION", "PAUSED", "DISABLED"
                )?;
                for e in &all {
                    let events: Vec<&str> = e["endpoint"]["events"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{:<32} {:<6} {:<9} {:>7} {:<7} {:<8} {}",
                        e["id"].as_str().unwrap_or(""),
                        e["source"].as_str().unwrap_or(""),
                        e["endpoint"]["transport"].as_str().unwrap_or("http"),
                        e["version"].as_u64().unwrap_or(0),
                        e["paused"].as_bool().unwrap_or(false),
                        e["disabled"].as_bool().unwrap_or(false),
                        events.join(",")
                    )?;
                }
            }
        }
        EndpointsCommand::Get { id } => {
            let answer = ok(
                api.call(
                    Method::GET,
                    &format!("/v1/endpoints/{}", path_id(&id)?),
                    None,
                    &[],
                )
                .await?,
                &format!("endpoint {id}"),
            )?;
            writeln!(out, "{}", serde_json::to_string_pretty(&answer.body)?)?;
        }
        EndpointsCommand::Delete { id } => {
            ok(
                api.call(
                    Method::DELETE,
                    &format!("/v1/endpoints/{}", path_id(&id)?),
                    None,
                    &[],
                )
                .await?,
                &format!("deleting {id}"),
            )?;
            writeln!(out, "endpoint {id}: deleted")?;
        }
        EndpointsCommand::Pause {
            tenant: Some(t), ..
        } => {
            let answer = ok(
                api.call(
                    Method::POST,
                    &format!("/v1/tenants/{}/pause", encode(&t)),
                    None,
                    &[],
                )
                .await?,
                &format!("pausing tenant {t}"),
            )?;
            let n = answer.body["endpoints"].as_array().map_or(0, Vec::len);
            writeln!(out, "tenant {t}: {n} endpoints paused")?;
        }
        EndpointsCommand::Resume {
            tenant: Some(t),
            clear_disabled,
            ..
        } => {
            let query = if clear_disabled {
                "?clear_disabled=true"
            } else {
                ""
            };
            let answer = ok(
                api.call(
                    Method::POST,
                    &format!("/v1/tenants/{}/resume{query}", encode(&t)),
                    None,
                    &[],
                )
                .await?,
                &format!("resuming tenant {t}"),
            )?;
            let n = answer.body["endpoints"].as_array().map_or(0, Vec::len);
            writeln!(out, "tenant {t}: {n} endpoints resumed")?;
        }
        EndpointsCommand::Pause { id, .. } => {
            let id = id.unwrap_or_default();
            ok(
                api.call(
                    Method::POST,
                    &format!("/v1/endpoints/{}/pause", path_id(&id)?),
                    None,
                    &[],
                )
                .await?,
                &format!("pausing {id}"),
            )?;
            writeln!(out, "endpoint {id}: paused")?;
        }
        EndpointsCommand::Resume {
            id, clear_disabled, ..
        } => {
            let id = id.unwrap_or_default();
            let query = if clear_disabled {
                "?clear_disabled=true"
            } else {
                ""
            };
            ok(
                api.call(
                    Method::POST,
                    &format!("/v1/endpoints/{}/resume{query}", path_id(&id)?),
                    None,
                    &[],
                )
                .await?,
                &format!("resuming {id}"),
            )?;
            writeln!(out, "endpoint {id}: resumed")?;
        }
        EndpointsCommand::Apply { file, dry_run } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let endpoints = endpoints_of(&text, &file)?;
            let mut failed = 0;
            for endpoint in endpoints {
                match apply_one(&api, endpoint, dry_run).await {
                    Ok(report) => write!(out, "{report}")?,
                    Err(e) => {
                        failed += 1;
                        writeln!(out, "{e:#}")?;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} endpoint(s) of {file} not applied");
            }
        }
    }
    Ok(())
}

/// The endpoints of an apply file: one mapping, a list, or `endpoints:`.
fn endpoints_of(text: &str, file: &str) -> anyhow::Result<Vec<Map<String, Value>>> {
    let doc = Config::read_yaml_with_env(text, &|name| std::env::var(name).ok()).map_err(|p| {
        anyhow!(
            "{file}: {}",
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let items = match doc {
        Value::Object(mut map) if map.contains_key("endpoints") && !map.contains_key("id") => {
            match map.remove("endpoints") {
                Some(Value::Array(items)) => items,
                _ => bail!("{file}: `endpoints` must be a list"),
            }
        }
        Value::Object(map) => vec![Value::Object(map)],
        Value::Array(items) => items,
        _ => bail!("{file}: expected an endpoint, a list of endpoints, or `endpoints: [...]`"),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(map) if map.get("id").and_then(Value::as_str).is_some() => Ok(map),
            _ => Err(anyhow!("{file}: endpoint {i}: a mapping with an `id`")),
        })
        .collect()
}

/// Apply one endpoint: read, dry-run, show, write with If-Match.
async fn apply_one(
    api: &ApiClient,
    endpoint: Map<String, Value>,
    dry_run: bool,
) -> anyhow::Result<String> {
    let id = endpoint["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/endpoints/{}", path_id(&id)?);
    let current = api.call(Method::GET, &path, None, &[]).await?;
    let (precondition, before) = match current.status {
        StatusCode::OK => {
            if current.body["source"] == "file" {
                bail!("endpoint {id}: it is in the dispatcher's config file; change it there");
            }
            let etag = current
                .etag
                .clone()
                .ok_or_else(|| anyhow!("endpoint {id}: the API gave no ETag"))?;
            (("If-Match", etag), current.body["endpoint"].clone())
        }
        StatusCode::NOT_FOUND => (("If-None-Match", "*".to_owned()), Value::Null),
        _ => bail!("endpoint {id}: {}", explain(&current)),
    };
    let body = Value::Object(endpoint);
    let plan = api
        .call(
            Method::PUT,
            &format!("{path}?dry_run=true"),
            Some(&body),
            &[(precondition.0, precondition.1.clone())],
        )
        .await?;
    let plan = ok(plan, &format!("endpoint {id}"))?;
    let kind = plan.body["result"].as_str().unwrap_or("").to_owned();
    let mut report = String::new();
    let after = &plan.body["endpoint"]["endpoint"];
    let changes = plan.body["changes"].as_array().cloned().unwrap_or_default();
    let verb = match (kind.as_str(), dry_run) {
        ("unchanged", _) => "unchanged",
        ("created", true) => "would be created",
        ("created", false) => "created",
        (_, true) => "would be updated",
        _ => "updated",
    };
    report.push_str(&format!("endpoint {id}: {verb}\n"));
    for change in &changes {
        let at = change["path"].as_str().unwrap_or("");
        let mark = match change["kind"].as_str() {
            Some("added") => "+",
            Some("removed") => "-",
            _ => "~",
        };
        let line = if change["secret"].as_bool().unwrap_or(false) {
            format!(
                "  {mark} {at}: (secret {})\n",
                change["kind"].as_str().unwrap_or("changed")
            )
        } else {
            let old = lookup(&before, at);
            let new = lookup(after, at);
            match mark {
                "+" => format!("  + {at}: {}\n", show(new)),
                "-" => format!("  - {at}: {}\n", show(old)),
                _ => format!("  ~ {at}: {} -> {}\n", show(old), show(new)),
            }
        };
        report.push_str(&line);
    }
    if dry_run || kind == "unchanged" {
        return Ok(report);
    }
    let written = api
        .call(Method::PUT, &path, Some(&body), &[precondition])
        .await?;
    if written.status == StatusCode::CONFLICT {
        bail!(
            "endpoint {id}: changed by someone else meanwhile, nothing written; run apply again: {}",
            explain(&written)
        );
    }
    let written = ok(written, &format!("endpoint {id}"))?;
    report.push_str(&format!(
        "  version {}\n",
        written.body["endpoint"]["version"].as_u64().unwrap_or(0)
    ));
    Ok(report)
}

/// The value at a dotted path of a change (`headers.X-Tenant`, `paused`).
fn lookup<'a>(endpoint: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = endpoint;
    for part in path.split('.') {
        at = at.get(part)?;
    }
    Some(at)
}

fn show(value: Option<&Value>) -> String {
    match value {
        None => "(none)".into(),
        Some(v) => {
            let text = v.to_string();
            if text.chars().count() > 120 {
                format!("{}…", text.chars().take(120).collect::<String>())
            } else {
                text
            }
        }
    }
}

/// Percent-encode a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_files_hold_one_endpoint_a_list_or_endpoints() {
        let one = endpoints_of("id: a\nevents: ['*']\nurl: https://a.example/\n", "f").unwrap();
        assert_eq!(one.len(), 1);
        let list = endpoints_of("- id: a\n- id: b\n", "f").unwrap();
        assert_eq!(list.len(), 2);
        let wrapped = endpoints_of("endpoints:\n  - id: a\n", "f").unwrap();
        assert_eq!(wrapped[0]["id"], "a");
        assert!(endpoints_of("- events: []\n", "f").is_err());
        assert!(endpoints_of("[", "f").is_err());
    }

    #[test]
    fn paths_find_nested_values_and_queries_are_encoded() {
        let v = json!({"headers": {"X-Tenant": "a"}});
        assert_eq!(lookup(&v, "headers.X-Tenant"), Some(&json!("a")));
        assert_eq!(lookup(&v, "nope"), None);
        assert_eq!(encode("message.*"), "message.%2A");
    }
}
